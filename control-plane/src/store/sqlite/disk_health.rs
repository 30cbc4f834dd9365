//! Whether the disk under the database takes writes. A full, read-only or failing disk makes
//! every write fail the same way until someone frees space or repairs it; the operator needs
//! to hear that once, clearly, and hear when it is over, not read one error per request.

use super::super::StoreError;
use std::sync::atomic::{AtomicBool, Ordering};

/// What SQLite says (its fixed `sqlite3_errstr` texts) when the disk, not the statement, is
/// at fault: `SQLITE_FULL`, `SQLITE_IOERR`, `SQLITE_READONLY`, `SQLITE_CANTOPEN` (a journal
/// it cannot create); and what the group commit tells the other writes of a batch whose
/// transaction SQLite rolled back by itself (it does so on a full disk or an I/O error, not on
/// a failing statement, which only undoes its own savepoint).
const DISK_ERRORS: &[&str] = &[
    "database or disk is full",
    "disk I/O error",
    "attempt to write a readonly database",
    "unable to open database file",
    "rolled back by the database",
    "its batch's transaction ended early",
];

fn is_disk_error(message: &str) -> bool {
    DISK_ERRORS.iter().any(|e| message.contains(e))
}

#[derive(Debug, Default)]
pub struct DiskHealth {
    refusing: AtomicBool,
}

impl DiskHealth {
    /// Passes a write's outcome on, turning a disk error into [`StoreError::Unwritable`] and
    /// logging the first one of a run and the first success after it.
    pub fn observe<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        match outcome {
            Err(StoreError::Database(message)) if is_disk_error(&message) => {
                if !self.refusing.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        error = %message,
                        "data directory refuses writes (disk full, read-only or failing): \
                         writes answer 503 until it takes them again, reads go on"
                    );
                }
                Err(StoreError::Unwritable(message))
            }
            Ok(v) => {
                if self.refusing.swap(false, Ordering::AcqRel) {
                    tracing::info!("data directory takes writes again");
                }
                Ok(v)
            }
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Result<(), StoreError> {
        Err(StoreError::Database("database or disk is full".into()))
    }

    #[test]
    fn disk_errors_become_unwritable_and_others_pass() {
        let h = DiskHealth::default();
        assert!(matches!(h.observe(full()), Err(StoreError::Unwritable(_))));
        assert!(h.refusing.load(Ordering::Acquire));
        let other = h.observe::<()>(Err(StoreError::Database("UNIQUE constraint failed".into())));
        assert!(matches!(other, Err(StoreError::Database(_))));
        assert!(
            h.refusing.load(Ordering::Acquire),
            "a statement error is no recovery"
        );
        assert!(matches!(h.observe(Ok(1)), Ok(1)));
        assert!(!h.refusing.load(Ordering::Acquire));
    }
}
