//! Checkpoints of the SQLite store's WAL on a thread of their own (`sqlite-checkpoint`), so the
//! committer never stalls for the copy.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, on the
//! committer: every write queued behind that batch waits for the whole copy. Here the writer's
//! connection has `wal_autocheckpoint = 0`; after each commit the committer reads how many
//! frames the WAL holds (the WAL-index header, one `pread`, no lock) and, when the WAL has grown
//! by the threshold since it last did so, wakes this thread without waiting for it.
//!
//! The WAL must stay bounded, and SQLite restarts it from its first frame only when the writer
//! begins a transaction while every frame is copied back (`nBackfill == mxFrame`) and no reader
//! still uses it; it does so whichever connection checkpointed. A PASSIVE checkpoint never
//! blocks the writer, so under a steady load frames arrive while it copies and it never reaches
//! the end: on its own it would let the WAL grow for ever. So this thread copies what it sees
//! in one pass, syncs the database file, and then asks the committer to copy what arrived
//! meanwhile itself, between two batches, where nothing can be appended: that pass reaches the
//! end and the next batch restarts the WAL. Only that short pass (what arrived during one
//! pass, and a database sync that flushes only that) pauses the commits. Frames a reader on an
//! older snapshot still needs stay; the committer tries again after its next few batches (a
//! point read holds its snapshot for microseconds), then leaves them to the next wake, as
//! SQLite's own automatic checkpoint would.
//!
//! Durability is unchanged: the syncer's `fdatasync` of the WAL still makes a commit durable; a
//! checkpoint copies only committed frames. With `synchronous` NORMAL (the writer) or FULL (this
//! thread's connection) SQLite syncs the WAL before it copies frames into the database, and it
//! syncs the database before recording the WAL as fully copied, which is what allows a restart
//! to overwrite it (`walCheckpoint` in `sqlite3.c`: `CKPT_SYNC_FLAGS` are zero only at
//! `synchronous=OFF`).
//!
//! Failures never stop the store: a failed checkpoint is logged and retried at the next wake;
//! a WAL index this cannot read hands checkpoints back to SQLite (`wal_autocheckpoint` on the
//! writer), as before this thread existed.

use super::super::{StoreError, StoreResult};
use rusqlite::Connection;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Batches after which the committer tries again to reach the WAL's end when readers held
/// frames back; each try costs the commits two syncs.
const FINISH_TRIES: u32 = 4;

/// The committer's side: watches the WAL after each commit, wakes the checkpoint thread and
/// finishes its checkpoints.
pub struct Checkpointer {
    /// WAL frames between two wakes.
    every: u32,
    /// `None` once checkpoints were handed back to SQLite.
    index: Option<WalIndex>,
    mark: Mark,
    /// `None` once dropping: the thread ends when its sender goes.
    wake: Option<SyncSender<()>>,
    /// Set by the thread when the committer should copy the last frames.
    finish: Arc<AtomicBool>,
    /// Tries left to reach the WAL's end.
    tries: u32,
    thread: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
}

impl Checkpointer {
    /// Starts the checkpoint thread with its own connection to the database at `db` and turns
    /// the writer's automatic checkpoint off (on again at `every` pages if the WAL index
    /// cannot be read).
    pub fn start(db: &Path, writer: &Connection, every: u32) -> StoreResult<Self> {
        let conn = Connection::open(db).map_err(super::db)?;
        super::configure(&conn)?;
        let (wake, woken) = sync_channel(1);
        let finish = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let thread = {
            let (finish, progress) = (Arc::clone(&finish), Arc::clone(&progress));
            let db = db.to_path_buf();
            std::thread::Builder::new()
                .name("sqlite-checkpoint".into())
                .spawn(move || checkpoint_on_wake(&conn, &db, &woken, &finish, &progress))
                .map_err(|e| StoreError::Database(format!("starting the checkpoint thread: {e}")))?
        };
        let mut me = Self {
            every: every.max(1),
            index: None,
            mark: Mark::default(),
            wake: Some(wake),
            finish,
            tries: 0,
            thread: Some(thread),
            progress,
        };
        match WalIndex::open(db) {
            Ok(index) => {
                writer
                    .pragma_update(None, "wal_autocheckpoint", 0)
                    .map_err(super::db)?;
                me.index = Some(index);
            }
            Err(e) => me.hand_back(writer, &e.to_string()),
        }
        Ok(me)
    }

    /// Checkpoints completed by the thread.
    #[cfg(test)]
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Called by the committer after each batch, outside any transaction.
    pub fn after_commit(&mut self, writer: &Connection) {
        if self.finish.swap(false, Ordering::AcqRel) {
            self.tries = FINISH_TRIES;
        }
        if self.tries > 0 {
            self.tries = if finish(writer) { 0 } else { self.tries - 1 };
        }
        let Some(index) = &self.index else {
            return;
        };
        match index.header() {
            Ok(Some(now)) => {
                if self.mark.passed(now, self.every) {
                    self.wake_thread(writer);
                }
            }
            Ok(None) => self.hand_back(writer, "the WAL index has a format this does not know"),
            Err(e) => self.hand_back(writer, &e.to_string()),
        }
    }

    fn wake_thread(&mut self, writer: &Connection) {
        let Some(wake) = &self.wake else {
            return;
        };
        // Full: a wake is pending already, and one checkpoint covers both.
        match wake.try_send(()) {
            Ok(()) => {
                self.progress.woken.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                self.hand_back(writer, "the checkpoint thread has ended");
            }
        }
    }

    /// SQLite checkpoints in the writer's commits again, as before this thread existed.
    fn hand_back(&mut self, writer: &Connection, why: &str) {
        self.index = None;
        let auto = writer.pragma_update(None, "wal_autocheckpoint", self.every);
        tracing::warn!(
            reason = why,
            restored = auto.is_ok(),
            "WAL checkpoints run in the commits again"
        );
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The committer's pass: copies the frames that arrived during the thread's pass, which
/// reaches the WAL's end since nothing is appended meanwhile, unless readers hold frames.
/// Whether it reached the end.
fn finish(writer: &Connection) -> bool {
    let started = std::time::Instant::now();
    match passive(writer) {
        Ok(p) => {
            tracing::debug!(
                frames = p.frames,
                copied = p.copied,
                micros = started.elapsed().as_micros(),
                "WAL checkpoint finished by the committer"
            );
            !p.busy && p.copied == p.frames
        }
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed; retried at the next one");
            false
        }
    }
}

/// Wakes of the thread and checkpoints it completed, for whoever needs to wait for one.
#[derive(Debug, Default)]
pub struct Progress {
    woken: AtomicU64,
    completed: Mutex<u64>,
    changed: Condvar,
}

impl Progress {
    fn record(&self) {
        if let Ok(mut n) = self.completed.lock() {
            *n += 1;
            self.changed.notify_all();
        }
    }

    #[cfg(test)]
    pub fn woken(&self) -> u64 {
        self.woken.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn completed(&self) -> u64 {
        self.completed.lock().map_or(0, |n| *n)
    }

    /// Waits until more than `n` checkpoints completed; false at the deadline.
    #[cfg(test)]
    pub fn wait_past(&self, n: u64, deadline: std::time::Duration) -> bool {
        let Ok(guard) = self.completed.lock() else {
            return false;
        };
        self.changed
            .wait_timeout_while(guard, deadline, |done| *done <= n)
            .is_ok_and(|(done, _)| *done > n)
    }
}

/// The checkpoint thread: one pass per wake, until the store is dropped.
fn checkpoint_on_wake(
    conn: &Connection,
    db: &Path,
    woken: &Receiver<()>,
    finish: &AtomicBool,
    progress: &Progress,
) {
    let mut db_file = None;
    while woken.recv().is_ok() {
        let started = std::time::Instant::now();
        match passive(conn) {
            Ok(Pass { busy: true, .. }) => {
                tracing::debug!("WAL checkpoint held by another one; retried at the next wake");
            }
            Ok(pass) => {
                // A pass that does not reach the WAL's end leaves its pages unsynced, for the
                // pass that does (the committer's) to flush: flushing them here keeps that
                // off the commits.
                if let Err(e) = sync(&mut db_file, db) {
                    tracing::warn!(path = %db.display(), error = %e, "syncing the database");
                }
                finish.store(true, Ordering::Release);
                tracing::debug!(
                    frames = pass.frames,
                    copied = pass.copied,
                    micros = started.elapsed().as_micros(),
                    "WAL checkpoint copied; the committer finishes it"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; retried at the next one");
            }
        }
        progress.record();
    }
}

/// What `PRAGMA wal_checkpoint` answers.
struct Pass {
    /// Another checkpoint held the lock.
    busy: bool,
    /// Frames in the WAL when the pass began (-1 outside WAL mode).
    frames: i64,
    /// Frames copied back into the database, by this pass or before.
    copied: i64,
}

fn passive(conn: &Connection) -> Result<Pass, StoreError> {
    conn.prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok(Pass {
                    busy: r.get::<_, i64>(0)? != 0,
                    frames: r.get(1)?,
                    copied: r.get(2)?,
                })
            })
        })
        .map_err(super::db)
}

fn sync(file: &mut Option<File>, path: &Path) -> std::io::Result<()> {
    if file.is_none() {
        *file = Some(File::open(path)?);
    }
    match file {
        Some(f) => f.sync_data(),
        None => Ok(()),
    }
}

/// The WAL-index file (`<db>-shm`) the committer reads the WAL's frame count from.
struct WalIndex {
    shm: File,
}

/// The fields of the WAL-index header this reads (<https://www.sqlite.org/walformat.html>,
/// "The WAL-Index Header"): a format every SQLite since 3.7.0 shares with the others on the
/// same database, so it does not change under us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// `mxFrame`: frames in the WAL.
    frames: u32,
    /// `aSalt`: changes whenever the WAL restarts from its first frame.
    salt: [u8; 8],
}

/// `iVersion` of the WAL-index format this knows.
const WAL_INDEX_VERSION: u32 = 3_007_000;

impl WalIndex {
    fn open(db: &Path) -> std::io::Result<Self> {
        let mut shm = db.as_os_str().to_owned();
        shm.push("-shm");
        Ok(Self {
            shm: File::open(PathBuf::from(shm))?,
        })
    }

    /// The header's first copy; only the writer changes it, so read by the committer between
    /// two batches it is stable.
    fn header(&self) -> std::io::Result<Option<Header>> {
        let mut bytes = [0u8; 40];
        read_at(&self.shm, &mut bytes)?;
        Ok(Header::parse(&bytes))
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, 0)
}

#[cfg(not(unix))]
fn read_at(mut file: &File, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(buf)
}

impl Header {
    /// `None` unless it is an initialised header of the format this knows (native byte
    /// order, as SQLite writes it).
    fn parse(b: &[u8; 40]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if u32_at(0) != WAL_INDEX_VERSION || b[12] != 1 {
            return None;
        }
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&b[32..40]);
        Some(Self {
            frames: u32_at(16),
            salt,
        })
    }
}

/// Where the WAL stood when the thread was last woken.
#[derive(Debug, Default)]
struct Mark {
    frames: u32,
    salt: [u8; 8],
}

impl Mark {
    /// Whether the WAL grew by `every` frames since the mark; moves the mark when it did.
    fn passed(&mut self, now: Header, every: u32) -> bool {
        if now.salt != self.salt {
            // A restarted WAL (or the first look): its frames count from its start.
            self.salt = now.salt;
            self.frames = 0;
        }
        if now.frames.saturating_sub(self.frames) >= every {
            self.frames = now.frames;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::*;
    use crate::store::{Store, StoredClient};
    use std::time::Duration;

    /// WAL pages between checkpoints in these tests: a few dozen client rows.
    const PAGES: u32 = 32;
    /// Generous: a loaded CI machine, never a sleep.
    const DEADLINE: Duration = Duration::from_secs(60);

    /// A client row of most of a page, so each insert appends a few WAL frames.
    fn client(id: &str) -> StoredClient {
        StoredClient {
            client_id: id.into(),
            json: format!(r#"{{"client_id":"{id}","pad":"{}"}}"#, "x".repeat(3000)),
            secret_hash: None,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn frames(dir: &Path) -> u32 {
        let index = WalIndex::open(&dir.join("portcullis.sqlite")).unwrap();
        index.header().unwrap().unwrap().frames
    }

    /// Writes one row at a time until the committer woke the checkpoint thread (at most one
    /// row past it: the answer can come before the committer looks at the WAL), then waits
    /// for that checkpoint without writing.
    fn write_a_threshold(s: &SqliteStore, progress: &Progress, round: usize) -> usize {
        let (woken, completed) = (progress.woken(), progress.completed());
        let mut rows = 0;
        while progress.woken() == woken {
            s.insert_client(&client(&format!("{round}-{rows}")))
                .unwrap();
            rows += 1;
            assert!(rows < 10 * PAGES as usize, "round {round}: never woken");
        }
        assert!(
            progress.wait_past(completed, DEADLINE),
            "round {round}: no checkpoint"
        );
        rows
    }

    /// A pass copies every frame no reader still needs; the committer's pass reaches the
    /// WAL's end once the reader is gone, and the next write restarts the WAL.
    #[test]
    fn a_pass_copies_what_no_reader_needs_and_the_committer_reaches_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.sqlite");
        let w = Connection::open(&path).unwrap();
        w.pragma_update(None, "journal_mode", "WAL").unwrap();
        w.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        w.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
        let write = |n: usize| {
            for _ in 0..n {
                w.execute("INSERT INTO t VALUES (?1)", ["x".repeat(3000)])
                    .unwrap();
            }
        };
        write(40);
        let c = Connection::open(&path).unwrap();
        let all = passive(&c).unwrap();
        assert!(!all.busy && all.frames >= 40 && all.copied == all.frames);

        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        write(1);
        let _: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        write(10);
        let held = passive(&c).unwrap();
        assert!(held.frames - held.copied >= 10, "frames held by the reader");
        assert!(!finish(&w), "the reader still holds them");
        reader.execute_batch("COMMIT").unwrap();

        write(10);
        assert!(frames(dir.path()) > 20);
        assert!(finish(&w));
        write(1);
        // One row's frames: its page, the table's root and the page count's.
        assert!(
            frames(dir.path()) <= 5,
            "the WAL restarted after the last pass"
        );
    }

    /// A WAL index this cannot read (another format, a short file) gives the checkpoints
    /// back to SQLite's automatic checkpoint rather than letting the WAL grow unwatched.
    #[test]
    fn an_unreadable_wal_index_hands_checkpoints_back_to_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.sqlite");
        let auto = |c: &Connection| -> i64 {
            c.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
                .unwrap()
        };
        for junk in [vec![0xffu8; 64], vec![0u8; 8]] {
            let w = Connection::open(&path).unwrap();
            w.pragma_update(None, "journal_mode", "WAL").unwrap();
            w.execute_batch("CREATE TABLE IF NOT EXISTS t (v TEXT); INSERT INTO t VALUES ('x')")
                .unwrap();
            let mut cp = Checkpointer::start(&path, &w, 77).unwrap();
            assert_eq!(auto(&w), 0);
            cp.after_commit(&w);
            assert!(cp.index.is_some(), "SQLite's own index is read");

            let other = dir.path().join("other-shm");
            std::fs::write(&other, &junk).unwrap();
            cp.index = Some(WalIndex {
                shm: File::open(&other).unwrap(),
            });
            cp.after_commit(&w);
            assert!(cp.index.is_none());
            assert_eq!(auto(&w), 77, "SQLite checkpoints at the same threshold");
        }
    }

    #[test]
    fn the_writer_leaves_checkpoints_to_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let pages: i64 = s
            .writer
            .with(|c| c.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0)))
            .unwrap();
        assert_eq!(pages, 0);
        assert!(s.checkpoints.is_some());
        // No WAL in memory: no thread.
        assert!(SqliteStore::in_memory().unwrap().checkpoints.is_none());
    }

    /// Past each threshold the thread checkpoints and the WAL starts again from its first
    /// frame, so writing ten thresholds' worth leaves a WAL file of about one; dropping the
    /// store ends the thread and keeps every row.
    #[test]
    fn checkpoints_keep_the_wal_bounded_and_end_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_checkpointing(dir.path(), PAGES).unwrap();
        let progress = Arc::clone(s.checkpoints.as_ref().unwrap());
        let wal = dir.path().join("portcullis.sqlite-wal");
        let mut rows = 0;
        for round in 0..10 {
            rows += write_a_threshold(&s, &progress, round);
        }
        let page: u64 = s
            .writer
            .with(|c| c.pragma_query_value(None, "page_size", |r| r.get(0)))
            .unwrap();
        // The WAL file never shrinks: its length is the most frames it ever held (a 32-byte
        // header, then a 24-byte header and a page per frame).
        let most = (std::fs::metadata(&wal).unwrap().len() - 32) / (page + 24);
        assert!(
            most <= 3 * u64::from(PAGES),
            "{most} frames for {rows} rows: the WAL did not restart"
        );

        drop(s);
        assert_eq!(Arc::strong_count(&progress), 1, "the thread has ended");
        let s = SqliteStore::open(dir.path()).unwrap();
        let all = s
            .list_clients(None, 1000, &crate::store::ClientFilter::default())
            .unwrap();
        assert_eq!(all.len(), rows);
    }

    /// A reader on an old snapshot keeps its frames in the WAL: the checkpoint copies what
    /// it can and the WAL does not restart; the next threshold after the reader ends retries
    /// and the WAL starts again.
    #[test]
    fn a_checkpoint_held_back_by_a_reader_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_checkpointing(dir.path(), PAGES).unwrap();
        let progress = Arc::clone(s.checkpoints.as_ref().unwrap());
        write_a_threshold(&s, &progress, 0);
        s.insert_client(&client("restart")).unwrap();
        let reader = Connection::open(dir.path().join("portcullis.sqlite")).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT COUNT(*) FROM clients", [], |r| r.get(0))
            .unwrap();
        let before = frames(dir.path());
        for round in 1..4 {
            write_a_threshold(&s, &progress, round);
        }
        let held = frames(dir.path());
        assert!(
            held > before + 2 * PAGES,
            "{before} -> {held}: the WAL restarted"
        );
        // The snapshot is intact while it is held.
        let still: i64 = reader
            .query_row("SELECT COUNT(*) FROM clients", [], |r| r.get(0))
            .unwrap();
        assert_eq!(still, seen);

        reader.execute_batch("COMMIT").unwrap();
        write_a_threshold(&s, &progress, 4);
        s.insert_client(&client("after")).unwrap();
        s.insert_client(&client("after-2")).unwrap();
        let after = frames(dir.path());
        assert!(after < PAGES, "{held} -> {after}: the WAL did not restart");
    }

    fn header(version: u32, init: u8, frames: u32, salt: u8) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0..4].copy_from_slice(&version.to_ne_bytes());
        b[12] = init;
        b[16..20].copy_from_slice(&frames.to_ne_bytes());
        b[32..40].copy_from_slice(&[salt; 8]);
        b
    }

    #[test]
    fn only_an_initialised_header_of_the_known_format_is_read() {
        let h = Header::parse(&header(WAL_INDEX_VERSION, 1, 77, 5)).unwrap();
        assert_eq!(
            h,
            Header {
                frames: 77,
                salt: [5; 8]
            }
        );
        assert_eq!(
            Header::parse(&header(WAL_INDEX_VERSION + 1, 1, 77, 5)),
            None
        );
        assert_eq!(Header::parse(&header(WAL_INDEX_VERSION, 0, 77, 5)), None);
        assert_eq!(Header::parse(&[0xff; 40]), None);
    }

    #[test]
    fn the_thread_is_woken_every_threshold_and_counting_restarts_with_the_wal() {
        let mut m = Mark::default();
        let at = |frames, salt| Header {
            frames,
            salt: [salt; 8],
        };
        assert!(!m.passed(at(99, 1), 100));
        assert!(m.passed(at(100, 1), 100));
        assert!(!m.passed(at(150, 1), 100), "counted from the last wake");
        assert!(m.passed(at(230, 1), 100));
        // Restarted: 50 frames of a new WAL are 50, not fewer than the mark.
        assert!(!m.passed(at(50, 2), 100));
        assert!(m.passed(at(120, 2), 100));
        // A WAL left over from before this process counts in full at the first look.
        let mut fresh = Mark::default();
        assert!(fresh.passed(at(5000, 9), 100));
    }
}
