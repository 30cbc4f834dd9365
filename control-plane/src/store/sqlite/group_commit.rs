//! Group commit of the SQLite store: every write goes through one queue to a committer thread
//! of its own, which commits everything queued in one transaction (one fsync with
//! `synchronous=FULL`) and then answers each caller.
//!
//! Callers wait without holding a thread when they are async tasks ([`Writer::write_async`]: a
//! `tokio` oneshot that the committer fills), or block when they are threads already
//! ([`Writer::write`]). Either way nobody is answered before the commit holding its write is
//! durable. A dedicated committer, rather than whichever caller got the connection first,
//! is what lets an async caller queue a write without a blocking-pool thread parked on it.
//!
//! Each write runs under its own savepoint inside the batch, so one write failing (a unique
//! conflict, a lost compare-and-set) rolls back only that write; the batch and every other
//! caller's write are unaffected. Writes run one after another on one connection, in queue
//! order: a compare-and-set in a batch sees the writes before it, as it would alone.

use super::super::{StoreError, StoreResult};
use rusqlite::Connection;
use std::future::Future;
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Writes per transaction at most: a burst is split so no commit grows without bound.
const MAX_BATCH: usize = 256;

/// One queued write and the caller waiting for it.
trait Pending: Send {
    /// Runs the write under its own savepoint, inside the batch's transaction.
    fn apply(&mut self, conn: &Connection);
    /// Tells the caller, once the batch committed (`Ok`) or failed to.
    fn finish(self: Box<Self>, committed: Result<(), &str>);
}

/// How the caller waits for its answer.
enum Reply<T> {
    /// A thread blocked on it (the blocking pool, startup, tests).
    Thread(std::sync::mpsc::SyncSender<StoreResult<T>>),
    /// An async task awaiting it.
    Task(tokio::sync::oneshot::Sender<StoreResult<T>>),
}

impl<T> Reply<T> {
    fn send(self, result: StoreResult<T>) {
        // A receiver that went away only means its caller gave up.
        match self {
            Self::Thread(s) => {
                let _ = s.send(result);
            }
            Self::Task(s) => {
                let _ = s.send(result);
            }
        }
    }
}

struct Write<T, F> {
    op: Option<F>,
    result: Option<StoreResult<T>>,
    done: Reply<T>,
}

impl<T, F> Pending for Write<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn apply(&mut self, conn: &Connection) {
        let Some(op) = self.op.take() else {
            return;
        };
        self.result = Some(in_savepoint(conn, op).map_err(super::db));
    }

    fn finish(self: Box<Self>, committed: Result<(), &str>) {
        let result = match (committed, self.result) {
            (Ok(()), Some(r)) => r,
            (Ok(()), None) => Err(StoreError::Database(
                "the write was not applied: its batch's transaction ended early".into(),
            )),
            (Err(e), _) => Err(StoreError::Database(e.to_string())),
        };
        self.done.send(result);
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    op: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached("SAVEPOINT write")?.execute([])?;
    match op(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE write")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO write")?.execute([])?;
            conn.prepare_cached("RELEASE write")?.execute([])?;
            Err(e)
        }
    }
}

fn dropped() -> StoreError {
    StoreError::Database("the write was dropped without an answer".into())
}

/// The SQLite store's writer: its one connection and the committer thread that owns the
/// turn to use it for writes.
pub struct Writer {
    conn: Arc<Mutex<Connection>>,
    /// `None` once dropping: the committer ends when the last sender goes.
    jobs: Option<Sender<Box<dyn Pending>>>,
    committer: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn new(conn: Connection) -> StoreResult<Self> {
        let conn = Arc::new(Mutex::new(conn));
        let (jobs, queue) = channel();
        let shared = Arc::clone(&conn);
        let committer = std::thread::Builder::new()
            .name("sqlite-commit".into())
            .spawn(move || commit_queued(&shared, &queue))
            .map_err(|e| StoreError::Database(format!("starting the committer thread: {e}")))?;
        Ok(Self {
            conn,
            jobs: Some(jobs),
            committer: Some(committer),
        })
    }

    /// Runs `f` on the connection directly, between batches (reads, when there is no
    /// separate reader).
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Database("connection mutex poisoned".into()))?;
        f(&conn).map_err(super::db)
    }

    fn queue<T, F>(&self, op: F, done: Reply<T>) -> StoreResult<()>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let job = Box::new(Write {
            op: Some(op),
            result: None,
            done,
        });
        self.jobs
            .as_ref()
            .ok_or_else(dropped)?
            .send(job)
            .map_err(|_| StoreError::Database("the committer thread has ended".into()))
    }

    /// Queues `op` and blocks until the batch holding it is durable.
    pub fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (done, answer) = sync_channel(1);
        self.queue(op, Reply::Thread(done))?;
        answer.recv().map_err(|_| dropped())?
    }

    /// Queues `op` now; the future resolves once the batch holding it is durable. Awaiting it
    /// holds no thread.
    pub fn write_async<T, F>(&self, op: F) -> impl Future<Output = StoreResult<T>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (done, answer) = tokio::sync::oneshot::channel();
        let queued = self.queue(op, Reply::Task(done));
        async move {
            queued?;
            answer.await.map_err(|_| dropped())?
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the committer once it has committed what was queued; joining
        // it closes the connection before a reopen of the same file.
        self.jobs = None;
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

/// The committer thread: takes whatever is queued (waiting when nothing is) and commits it as
/// one batch, until the writer is dropped.
fn commit_queued(conn: &Mutex<Connection>, queue: &Receiver<Box<dyn Pending>>) {
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        match conn.lock() {
            Ok(conn) => commit(&conn, batch),
            Err(_) => {
                for p in batch {
                    p.finish(Err("connection mutex poisoned"));
                }
            }
        }
    }
}

fn commit(conn: &Connection, mut batch: Vec<Box<dyn Pending>>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = conn
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
    {
        let e = e.to_string();
        for p in batch {
            p.finish(Err(&e));
        }
        return;
    }
    for p in &mut batch {
        // SQLite rolls back the whole transaction on some errors (disk full, I/O): the
        // writes after that must not run outside it, each committing on its own.
        if conn.is_autocommit() {
            break;
        }
        p.apply(conn);
    }
    let outcome = if conn.is_autocommit() {
        Err("the batch's transaction was rolled back by the database".to_string())
    } else {
        conn.prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(|e| {
                if !conn.is_autocommit() {
                    // Leave no half-open transaction to the next batch.
                    let _ = conn.execute_batch("ROLLBACK");
                }
                e.to_string()
            })
    };
    for p in batch {
        p.finish(outcome.as_ref().map(|_| ()).map_err(String::as_str));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY NOT NULL, v INTEGER NOT NULL)")
            .unwrap();
        c
    }

    type Rx<T> = Receiver<StoreResult<T>>;

    fn job<T: Send + 'static>(
        op: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> (Box<dyn Pending>, Rx<T>) {
        let (done, rx) = sync_channel(1);
        let w = Write {
            op: Some(op),
            result: None,
            done: Reply::Thread(done),
        };
        (Box::new(w), rx)
    }

    fn insert(k: &'static str, v: i64) -> impl FnOnce(&Connection) -> rusqlite::Result<usize> {
        move |c| {
            c.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                rusqlite::params![k, v],
            )
        }
    }

    fn value(c: &Connection, k: &str) -> Option<i64> {
        c.query_row("SELECT v FROM t WHERE k = ?1", [k], |r| r.get(0))
            .ok()
    }

    #[test]
    fn a_failing_write_is_rolled_back_alone() {
        let c = conn();
        let (a, ra) = job(insert("a", 1));
        // Two statements, the second failing: the first must not survive either.
        let (b, rb) = job(|c| {
            c.execute("INSERT INTO t (k, v) VALUES ('b', 2)", [])?;
            c.execute("INSERT INTO t (k, v) VALUES ('a', 9)", [])
        });
        let (d, rd) = job(insert("d", 4));
        commit(&c, vec![a, b, d]);
        assert_eq!(ra.try_recv().unwrap().unwrap(), 1);
        assert!(
            matches!(rb.try_recv().unwrap(), Err(StoreError::Database(m)) if m.contains("UNIQUE"))
        );
        assert_eq!(rd.try_recv().unwrap().unwrap(), 1);
        assert_eq!(value(&c, "a"), Some(1));
        assert_eq!(value(&c, "b"), None, "the failed write left nothing");
        assert_eq!(value(&c, "d"), Some(4));
        assert!(c.is_autocommit(), "no transaction is left open");
    }

    #[test]
    fn writes_of_a_batch_see_the_ones_before_them() {
        let c = conn();
        c.execute("INSERT INTO t (k, v) VALUES ('x', 0)", [])
            .unwrap();
        // Two compare-and-sets from stage 0 in one batch: exactly the first wins.
        let cas =
            || |c: &Connection| c.execute("UPDATE t SET v = v + 1 WHERE k = 'x' AND v = 0", []);
        let (first, r1) = job(cas());
        let (second, r2) = job(cas());
        commit(&c, vec![first, second]);
        assert_eq!(r1.try_recv().unwrap().unwrap(), 1);
        assert_eq!(r2.try_recv().unwrap().unwrap(), 0);
        assert_eq!(value(&c, "x"), Some(1));
    }

    #[test]
    fn a_failed_commit_fails_every_caller() {
        let c = conn();
        // A deferred foreign key only fails at COMMIT, after every write was applied.
        c.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE child (k TEXT REFERENCES t(k) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        let (a, ra) = job(insert("a", 1));
        let (b, rb) = job(|c| c.execute("INSERT INTO child (k) VALUES ('nobody')", []));
        commit(&c, vec![a, b]);
        assert!(
            ra.try_recv().unwrap().is_err(),
            "acknowledged but not committed"
        );
        assert!(rb.try_recv().unwrap().is_err());
        assert_eq!(value(&c, "a"), None);
        assert!(c.is_autocommit());
    }

    #[test]
    fn concurrent_writers_all_get_their_own_answer() {
        let w = std::sync::Arc::new(Writer::new(conn()).unwrap());
        let threads: Vec<_> = (0..8i64)
            .map(|t| {
                let w = std::sync::Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..50i64 {
                        let k = format!("{t}-{i}");
                        let n = w
                            .write(move |c| {
                                c.execute(
                                    "INSERT INTO t (k, v) VALUES (?1, ?2)",
                                    rusqlite::params![k, i],
                                )
                            })
                            .unwrap();
                        assert_eq!(n, 1);
                        // A duplicate fails for its caller only.
                        let dup = format!("{t}-{i}");
                        assert!(
                            w.write(
                                move |c| c.execute("INSERT INTO t (k, v) VALUES (?1, 0)", [dup])
                            )
                            .is_err()
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n: i64 = w
            .with(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 400);
    }
}
