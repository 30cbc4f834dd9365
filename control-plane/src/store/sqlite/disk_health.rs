//! Whether the disk under the database takes writes. A full, read-only or failing disk makes
//! every write fail the same way until someone frees space or repairs it; the operator needs
//! to hear that once, clearly, and hear when it is over, not read one error per request.

use super::super::StoreError;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct DiskHealth {
    refusing: AtomicBool,
}

impl DiskHealth {
    /// Passes a write's outcome on, turning a disk error ([`StoreError::Disk`]: what the store
    /// made of SQLite's result codes and of a batch rolled back by them) into
    /// [`StoreError::Unwritable`] and logging the first one of a run and the first success
    /// after it.
    pub fn observe<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        match outcome {
            Err(StoreError::Disk(message)) => {
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
    use super::super::db;
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn full() -> Result<(), StoreError> {
        Err(StoreError::Disk("database or disk is full".into()))
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

    fn observed(e: rusqlite::Error) -> (StoreError, bool) {
        let h = DiskHealth::default();
        let Err(e) = h.observe::<()>(Err(db(e))) else {
            unreachable!("an error stays an error")
        };
        (e, h.refusing.load(Ordering::Acquire))
    }

    /// SQLite's real errors, sorted by their result code: a statement error that merely
    /// reads like a disk error (the names in it are the caller's) is no disk error.
    #[test]
    fn sqlite_result_codes_decide_not_error_texts() {
        let c = Connection::open_in_memory().unwrap();
        for hostile in [
            "INSERT INTO \"database or disk is full\" VALUES (1)",
            "INSERT INTO \"disk I/O error; unable to open database file\" VALUES (1)",
            "SELECT \"attempt to write a readonly database\"",
        ] {
            let e = c.execute(hostile, []).unwrap_err();
            let (e, refusing) = observed(e);
            assert!(matches!(&e, StoreError::Database(_)), "{hostile}: {e:?}");
            assert!(!refusing, "{hostile}");
        }

        // Full: the database may not grow past its current pages.
        c.execute_batch("CREATE TABLE t (v BLOB); PRAGMA max_page_count = 2;")
            .unwrap();
        let e = c
            .execute("INSERT INTO t (v) VALUES (zeroblob(65536))", [])
            .unwrap_err();
        assert_eq!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull));
        let (e, refusing) = observed(e);
        assert!(
            matches!(&e, StoreError::Unwritable(m) if m.contains("full")),
            "{e:?}"
        );
        assert!(refusing);

        // Read-only, and a file that cannot be opened (its directory is gone).
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (v INTEGER)")
            .unwrap();
        let ro = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let e = ro.execute("INSERT INTO t (v) VALUES (1)", []).unwrap_err();
        assert!(matches!(observed(e), (StoreError::Unwritable(_), true)));
        let e = Connection::open(tmp.path().join("gone").join("db.sqlite")).unwrap_err();
        assert!(matches!(observed(e), (StoreError::Unwritable(_), true)));
    }
}
