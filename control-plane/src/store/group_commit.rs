//! Group commit, the part both stores share: callers queue their writes, and whoever holds the
//! connection commits everything queued in one transaction (one WAL flush or fsync). Under
//! load many requests share a commit; alone, a caller commits just its own write. Nobody
//! returns before the commit that holds its write is durable.
//!
//! What a batch is and how it commits belongs to each store (the PostgreSQL token batch is one
//! multi-row `INSERT`). The SQLite store no longer uses this caller-commits scheme: its writes
//! go to a committer thread of their own (`sqlite/group_commit.rs`), so that async callers can
//! await them without a thread. The invariant kept here: a batch's callers are answered while its committer still holds the
//! connection, so a caller that gets the connection and has no answer yet finds its own job
//! still queued.

use super::{StoreError, StoreResult};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, TryRecvError};

pub struct GroupCommit<C, J> {
    conn: Mutex<C>,
    queue: Mutex<Vec<J>>,
}

fn poisoned(what: &str) -> StoreError {
    StoreError::Database(format!("{what} mutex poisoned"))
}

/// The answer, if it came: a dropped sender means the committer lost the job.
fn answered<T>(answer: &Receiver<StoreResult<T>>) -> Option<StoreResult<T>> {
    match answer.try_recv() {
        Ok(r) => Some(r),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Disconnected) => Some(Err(StoreError::Database(
            "the write was dropped without an answer".into(),
        ))),
    }
}

impl<C, J> GroupCommit<C, J> {
    pub fn new(conn: C) -> Self {
        Self {
            conn: Mutex::new(conn),
            queue: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on the connection directly, between batches.
    pub fn with<T>(&self, f: impl FnOnce(&mut C) -> T) -> StoreResult<T> {
        let mut conn = self.conn.lock().map_err(|_| poisoned("connection"))?;
        Ok(f(&mut conn))
    }

    /// How many jobs wait for a commit (not counting the batch being committed).
    pub fn queued(&self) -> usize {
        self.queue.lock().map_or(0, |q| q.len())
    }

    /// Queues `job` and returns what `answer` receives once the batch holding it committed.
    /// `commit` is given the connection and every job queued; it must answer each of them
    /// before it returns.
    pub fn submit<T>(
        &self,
        job: J,
        answer: &Receiver<StoreResult<T>>,
        commit: impl Fn(&mut C, Vec<J>),
    ) -> StoreResult<T> {
        self.queue
            .lock()
            .map_err(|_| poisoned("write queue"))?
            .push(job);
        loop {
            if let Some(r) = answered(answer) {
                return r;
            }
            let mut conn = self.conn.lock().map_err(|_| poisoned("connection"))?;
            // Committed by the previous holder while we waited for the connection?
            if let Some(r) = answered(answer) {
                return r;
            }
            let batch =
                std::mem::take(&mut *self.queue.lock().map_err(|_| poisoned("write queue"))?);
            if batch.is_empty() {
                // Cannot happen while `commit` answers every job: fail rather than spin.
                return Err(StoreError::Database(
                    "the write left the queue unanswered".into(),
                ));
            }
            commit(&mut conn, batch);
        }
    }
}
