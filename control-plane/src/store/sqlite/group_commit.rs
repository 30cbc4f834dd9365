//! Group commit of the SQLite store: every write goes through one queue to a committer thread
//! of its own, which commits everything queued in one transaction (one fsync with
//! `synchronous=FULL`) and then answers each caller.
//!
//! Callers wait without holding a thread when they are async tasks ([`Writer::write_async`]: a
//! `tokio` oneshot that the committer fills), or block when they are threads already
//! ([`Writer::write`]). A dedicated committer, rather than whichever caller got the connection
//! first, is what lets an async caller queue a write without a blocking-pool thread parked on
//! it.
//!
//! Commit, then sync: on a file database the connection commits with `synchronous=NORMAL`
//! (the WAL is written, not flushed) and a syncer thread of its own makes committed batches
//! durable with one `fdatasync` of the WAL for every batch committed since its last one, while
//! the committer goes on with the next batch. A durable write (every write, unless its caller
//! said otherwise) is answered only after that flush, as with `synchronous=FULL`. A lossy
//! write ([`Durability::Lossy`]: a step whose loss in a power cut only makes the user start
//! over, see `flow.rs`) is answered once committed: visible to every reader, safe from a
//! crash of the process (the kernel has it), and durable with the next flush. WAL order makes
//! a flush cover every commit before it, so a lossy write is never lost while a later durable
//! one survives.
//!
//! Each write runs under its own savepoint inside the batch, so one write failing (a unique
//! conflict, a lost compare-and-set) rolls back only that write; the batch and every other
//! caller's write are unaffected. Writes run one after another on one connection, in queue
//! order: a compare-and-set in a batch sees the writes before it, as it would alone.
//!
//! After each batch the committer tells the checkpointer how far the WAL has grown, and
//! copies the last frames of its checkpoints itself (`checkpointer.rs` says why).

use super::super::{Durability, StoreError, StoreResult};
use super::checkpointer::Checkpointer;
use rusqlite::Connection;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Writes per transaction at most: a burst is split so no commit grows without bound.
const MAX_BATCH: usize = 256;

/// One queued write and the caller waiting for it.
trait Pending: Send {
    /// Whether its caller waits for the flush after the commit.
    fn durable(&self) -> bool;
    /// Runs the write under its own savepoint, inside the batch's transaction.
    fn apply(&mut self, conn: &Connection);
    /// Runs the write's [`AfterCommit`] hook, once its batch committed.
    fn committed(&mut self);
    /// Tells the caller, once the batch committed (`Ok`) or failed to.
    fn finish(self: Box<Self>, committed: Result<(), &StoreError>);
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

/// What a write does once its batch committed, given the write's own (successful) result:
/// it runs on the committer thread, in the batch's order, before the next batch starts, so
/// that what it keeps in memory follows the database's committed state write by write (a
/// failed write or batch runs none).
pub type AfterCommit<T> = Box<dyn FnOnce(&T) + Send>;

struct Write<T, F> {
    op: Option<F>,
    result: Option<StoreResult<T>>,
    after: Option<AfterCommit<T>>,
    done: Reply<T>,
    durability: Durability,
}

impl<T, F> Pending for Write<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn durable(&self) -> bool {
        self.durability == Durability::Durable
    }

    fn apply(&mut self, conn: &Connection) {
        let Some(op) = self.op.take() else {
            return;
        };
        self.result = Some(in_savepoint(conn, op).map_err(super::db));
    }

    fn committed(&mut self) {
        if let (Some(Ok(value)), Some(after)) = (&self.result, self.after.take()) {
            after(value);
        }
    }

    fn finish(self: Box<Self>, committed: Result<(), &StoreError>) {
        let result = match (committed, self.result) {
            (Ok(()), Some(r)) => r,
            // Only a transaction the database rolled back itself (a disk error) ends early.
            (Ok(()), None) => Err(StoreError::Disk(
                "the write was not applied: its batch's transaction ended early".into(),
            )),
            (Err(e), _) => Err(e.clone()),
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

/// Where the syncer flushes: the database's WAL file and the directory holding it.
pub struct WalFiles {
    pub wal: PathBuf,
    pub dir: PathBuf,
}

impl Writer {
    /// A writer for `conn`; with `wal`, commits are made durable by the syncer (the
    /// connection must be in WAL mode), else by each commit itself (`synchronous` as set).
    /// With `checkpointer`, the committer tells it how the WAL grows and finishes its
    /// checkpoints; it ends with the committer.
    pub fn new(
        conn: Connection,
        wal: Option<WalFiles>,
        checkpointer: Option<Checkpointer>,
    ) -> StoreResult<Self> {
        if wal.is_some() {
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(super::db)?;
        }
        let conn = Arc::new(Mutex::new(conn));
        let (jobs, queue) = channel();
        let shared = Arc::clone(&conn);
        let committer = std::thread::Builder::new()
            .name("sqlite-commit".into())
            .spawn(move || {
                let mut checkpointer = checkpointer;
                let syncer = wal.map(Syncer::start).transpose();
                match syncer {
                    Ok(syncer) => {
                        commit_queued(&shared, &queue, syncer.as_ref(), checkpointer.as_mut())
                    }
                    Err(e) => fail_queued(&queue, &e),
                }
            })
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

    fn queue<T, F>(
        &self,
        op: F,
        after: Option<AfterCommit<T>>,
        done: Reply<T>,
        durability: Durability,
    ) -> StoreResult<()>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let job = Box::new(Write {
            op: Some(op),
            result: None,
            after,
            done,
            durability,
        });
        self.jobs
            .as_ref()
            .ok_or_else(dropped)?
            .send(job)
            .map_err(|_| StoreError::Database("the committer thread has ended".into()))
    }

    /// Queues `op` and blocks until the batch holding it is durable.
    #[cfg(test)]
    pub fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write_then(op, None)
    }

    /// [`Writer::write`] with a hook run once the batch committed (see [`AfterCommit`]).
    pub fn write_then<T, F>(&self, op: F, after: Option<AfterCommit<T>>) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (done, answer) = sync_channel(1);
        self.queue(op, after, Reply::Thread(done), Durability::Durable)?;
        answer.recv().map_err(|_| dropped())?
    }

    /// Queues `op` now; the future resolves once the batch holding it is committed and, if
    /// `durability` says so, flushed. Awaiting it holds no thread.
    pub fn write_async<T, F>(
        &self,
        op: F,
        durability: Durability,
        after: Option<AfterCommit<T>>,
    ) -> impl Future<Output = StoreResult<T>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (done, answer) = tokio::sync::oneshot::channel();
        let queued = self.queue(op, after, Reply::Task(done), durability);
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
fn commit_queued(
    conn: &Mutex<Connection>,
    queue: &Receiver<Box<dyn Pending>>,
    syncer: Option<&Syncer>,
    mut checkpointer: Option<&mut Checkpointer>,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        match conn.lock() {
            Ok(conn) => {
                commit(&conn, batch, syncer);
                if let Some(c) = checkpointer.as_deref_mut() {
                    c.after_commit(&conn);
                }
            }
            Err(_) => {
                let poisoned = StoreError::Database("connection mutex poisoned".into());
                for p in batch {
                    p.finish(Err(&poisoned));
                }
            }
        }
    }
}

/// Answers every write with `error` (no syncer could start: no write can be made durable).
fn fail_queued(queue: &Receiver<Box<dyn Pending>>, error: &StoreError) {
    while let Ok(p) = queue.recv() {
        p.finish(Err(error));
    }
}

/// The syncer thread and the queue of committed durable writes waiting for its next flush.
struct Syncer {
    /// `None` once dropping: the syncer ends when the last sender goes.
    waiting: Option<Sender<Vec<Box<dyn Pending>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(files: WalFiles) -> StoreResult<Self> {
        let (waiting, queue) = channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-sync".into())
            .spawn(move || sync_queued(&files, &queue))
            .map_err(|e| StoreError::Database(format!("starting the syncer thread: {e}")))?;
        Ok(Self {
            waiting: Some(waiting),
            thread: Some(thread),
        })
    }

    /// Hands committed durable writes over to the next flush.
    fn after_flush(&self, committed: Vec<Box<dyn Pending>>) {
        let stopped = || StoreError::Database("the syncer has stopped".into());
        let Some(waiting) = &self.waiting else {
            return fail_all(committed, &stopped());
        };
        if let Err(std::sync::mpsc::SendError(committed)) = waiting.send(committed) {
            fail_all(committed, &stopped());
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.waiting = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fail_all(batch: Vec<Box<dyn Pending>>, error: &StoreError) {
    for p in batch {
        p.finish(Err(error));
    }
}

/// The syncer thread: one flush of the WAL for every durable write committed since the last
/// one, then their answers.
fn sync_queued(files: &WalFiles, queue: &Receiver<Vec<Box<dyn Pending>>>) {
    let mut wal = None;
    while let Ok(mut committed) = queue.recv() {
        for more in queue.try_iter() {
            committed.extend(more);
        }
        // Worded as SQLite words its own I/O errors, for the operator reading the log.
        let outcome = flush(&mut wal, files).map_err(|e| {
            StoreError::Disk(format!(
                "disk I/O error: flushing {}: {e}",
                files.wal.display()
            ))
        });
        for p in committed {
            p.finish(outcome.as_ref().map(|_| ()));
        }
    }
}

/// `fdatasync` of the WAL, as SQLite does at each commit with `synchronous=FULL`. The file is
/// opened at the first flush (a commit created it by then), with one sync of the directory
/// so the WAL's own entry survives a power cut.
fn flush(wal: &mut Option<File>, files: &WalFiles) -> std::io::Result<()> {
    if wal.is_none() {
        let file = File::open(&files.wal)?;
        File::open(&files.dir)?.sync_all()?;
        *wal = Some(file);
    }
    match wal {
        Some(f) => f.sync_data(),
        None => Ok(()),
    }
}

/// The WAL of the database at `path` (the file SQLite names `<db>-wal`).
pub fn wal_files(path: &Path) -> WalFiles {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    WalFiles {
        wal: PathBuf::from(wal),
        dir: path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    }
}

/// Commits `batch` in one transaction and answers it: everyone when the commit failed; lossy
/// writes now and durable ones after the syncer's next flush when it succeeded (all now
/// without a syncer: the commit itself was the flush).
fn commit(conn: &Connection, mut batch: Vec<Box<dyn Pending>>, syncer: Option<&Syncer>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = conn
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
    {
        return fail_all(batch, &super::db(e));
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
        // SQLite ends the transaction itself only on a disk error (full, I/O); a failing
        // statement undoes just its own savepoint.
        Err(StoreError::Disk(
            "the batch's transaction was rolled back by the database".into(),
        ))
    } else {
        conn.prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(|e| {
                if !conn.is_autocommit() {
                    // Leave no half-open transaction to the next batch.
                    let _ = conn.execute_batch("ROLLBACK");
                }
                super::db(e)
            })
    };
    if let Err(e) = outcome {
        return fail_all(batch, &e);
    }
    for p in &mut batch {
        p.committed();
    }
    let Some(syncer) = syncer else {
        for p in batch {
            p.finish(Ok(()));
        }
        return;
    };
    let (durable, lossy): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.durable());
    for p in lossy {
        p.finish(Ok(()));
    }
    if !durable.is_empty() {
        syncer.after_flush(durable);
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
            after: None,
            done: Reply::Thread(done),
            durability: Durability::Durable,
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

    /// A job whose hook records `name` in `seen` once its batch committed.
    fn job_then<T: Send + 'static>(
        op: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        seen: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) -> Box<dyn Pending> {
        let (done, _rx) = sync_channel(1);
        let seen = Arc::clone(seen);
        Box::new(Write {
            op: Some(op),
            result: None,
            after: Some(Box::new(move |_: &T| seen.lock().unwrap().push(name))),
            done: Reply::Thread(done),
            durability: Durability::Durable,
        })
    }

    #[test]
    fn hooks_run_after_the_commit_in_order_for_the_writes_that_succeeded() {
        let c = conn();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let batch = vec![
            job_then(insert("b", 1), &seen, "b"),
            job_then(insert("b", 2), &seen, "duplicate"),
            job_then(insert("a", 1), &seen, "a"),
        ];
        commit(&c, batch, None);
        assert_eq!(*seen.lock().unwrap(), ["b", "a"]);

        // A batch that fails at COMMIT runs none.
        c.execute_batch(
            "CREATE TABLE child (k TEXT REFERENCES t(k) DEFERRABLE INITIALLY DEFERRED);
             PRAGMA foreign_keys = ON;",
        )
        .unwrap();
        let batch = vec![
            job_then(insert("c", 1), &seen, "c"),
            job_then(
                |c: &Connection| c.execute("INSERT INTO child (k) VALUES ('nobody')", []),
                &seen,
                "child",
            ),
        ];
        commit(&c, batch, None);
        assert_eq!(*seen.lock().unwrap(), ["b", "a"]);
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
        commit(&c, vec![a, b, d], None);
        assert_eq!(ra.try_recv().unwrap().unwrap(), 1);
        assert!(
            matches!(rb.try_recv().unwrap(), Err(StoreError::Conflict(m)) if m.contains("UNIQUE"))
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
        commit(&c, vec![first, second], None);
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
        commit(&c, vec![a, b], None);
        assert!(
            ra.try_recv().unwrap().is_err(),
            "acknowledged but not committed"
        );
        // A constraint is the statement's fault, not the disk's.
        let b = rb.try_recv().unwrap();
        assert!(
            matches!(&b, Err(StoreError::Database(m)) if m.contains("FOREIGN KEY")),
            "{b:?}"
        );
        assert_eq!(value(&c, "a"), None);
        assert!(c.is_autocommit());
    }

    /// A batch whose transaction ended before its COMMIT (SQLite does that itself only on a
    /// disk error; here a write ends it) answers every write with a disk error, and the
    /// writes after the end are not run outside the transaction.
    #[test]
    fn a_batch_whose_transaction_ended_early_is_a_disk_error() {
        let c = conn();
        let (a, ra) = job(insert("a", 1));
        let (b, rb) = job(|c| c.execute_batch("ROLLBACK"));
        let (d, rd) = job(insert("d", 4));
        commit(&c, vec![a, b, d], None);
        for r in [ra.try_recv().unwrap(), rd.try_recv().unwrap().map(|_| 0)] {
            assert!(
                matches!(&r, Err(StoreError::Disk(m)) if m.contains("rolled back by the database")),
                "{r:?}"
            );
        }
        assert!(matches!(rb.try_recv().unwrap(), Err(StoreError::Disk(_))));
        assert_eq!(value(&c, "a"), None);
        assert_eq!(value(&c, "d"), None, "not committed on its own");
    }

    /// SQLite's own disk error inside a batch (`SQLITE_FULL`, on which it rolls the whole
    /// transaction back) answers as a disk error; the next batch starts afresh.
    #[test]
    fn a_write_that_fills_the_database_is_a_disk_error() {
        let c = conn();
        c.execute_batch("PRAGMA max_page_count = 3").unwrap();
        let w = Writer::new(c, None, None).unwrap();
        let r = w.write(|c| c.execute("INSERT INTO t (k, v) VALUES (hex(zeroblob(65536)), 1)", []));
        assert!(matches!(&r, Err(StoreError::Disk(_))), "{r:?}");
        assert_eq!(
            w.write(insert("small", 1)).unwrap(),
            1,
            "a small write still fits"
        );
    }

    #[test]
    fn concurrent_writers_all_get_their_own_answer() {
        let w = std::sync::Arc::new(Writer::new(conn(), None, None).unwrap());
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

    #[tokio::test]
    async fn durable_writes_wait_for_the_flush_and_lossy_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db.sqlite");
        let c = Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY NOT NULL, v INTEGER NOT NULL)")
            .unwrap();
        // A WAL that cannot be opened: every flush fails, so only an answer that waited for
        // one can fail.
        let unflushable = WalFiles {
            wal: tmp.path().join("missing").join("db.sqlite-wal"),
            dir: tmp.path().to_path_buf(),
        };
        let w = Writer::new(c, Some(unflushable), None).unwrap();
        let lossy = w.write_async(insert("a", 1), Durability::Lossy, None).await;
        assert_eq!(lossy.unwrap(), 1, "answered once committed");
        let durable = w
            .write_async(insert("b", 2), Durability::Durable, None)
            .await;
        assert!(
            matches!(&durable, Err(StoreError::Disk(m)) if m.contains("db.sqlite-wal")),
            "{durable:?}"
        );
        assert!(
            w.write(insert("c", 3)).is_err(),
            "the blocking API is durable"
        );
        assert_eq!(w.with(|c| Ok(value(c, "a"))).unwrap(), Some(1));

        // With the real WAL, both kinds are answered and everything is on disk after a reopen.
        drop(w);
        let c = Connection::open(&db).unwrap();
        let w = Writer::new(c, Some(super::wal_files(&db)), None).unwrap();
        let writes: Vec<_> = (0..64i64)
            .map(|i| {
                let d = if i % 2 == 0 {
                    Durability::Durable
                } else {
                    Durability::Lossy
                };
                w.write_async(
                    move |c| {
                        c.execute(
                            "INSERT INTO t (k, v) VALUES (?1, ?2)",
                            rusqlite::params![format!("k{i}"), i],
                        )
                    },
                    d,
                    None,
                )
            })
            .collect();
        // Every write was queued when its future was made: awaiting them in turn still lets
        // them share batches.
        for (i, write) in writes.into_iter().enumerate() {
            assert_eq!(write.await.unwrap(), 1, "write {i}");
        }
        drop(w);
        let c = Connection::open(&db).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM t WHERE k LIKE 'k%'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 64);
    }
}
