//! The embedded store: SQLite in WAL mode with `synchronous=FULL`. Writes go through a group
//! commit (`group_commit`): concurrent requests share one transaction and one fsync, and each
//! returns only once its write is durable; async callers await it without a thread
//! ([`Store::advance_flow_async`] and the other `_async` methods). A file database has
//! connections of its own for reads, which WAL lets run while a batch commits; a point read
//! is a few microseconds of local work, so [`Store::reads_in_place`] lets the request path run
//! it on its own worker instead of handing it to the blocking pool.

mod checkpointer;
mod disk_health;
mod group_commit;
mod row_cache;

use super::{
    ChainKey, ClientFilter, Durability, Snapshot, StepRows, Store, StoreError, StoreFuture,
    StoreResult, StoredClient, StoredFlow, StoredKey, StoredOpaqueToken, StoredRefreshToken,
    StoredSession,
};
use checkpointer::Checkpointer;
use disk_health::DiskHealth;
use group_commit::{AfterCommit, Writer};
use row_cache::RowCache;
use rusqlite::{Connection, OptionalExtension, Params, params};
use std::path::Path;
use std::sync::{Arc, Mutex, TryLockError};

pub struct SqliteStore {
    writer: Writer,
    /// Empty for an in-memory database (a second connection would be another database).
    readers: Vec<Mutex<Connection>>,
    disk: DiskHealth,
    rows: Arc<RowCache>,
    /// The checkpoint thread's count (`None`: no WAL, no thread).
    #[cfg(test)]
    checkpoints: Option<Arc<checkpointer::Progress>>,
}

/// Read connections of a file database: one per core of the machine this was sized for, so
/// the request path's in-place reads rarely wait for each other.
const READERS: usize = 2;

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY NOT NULL,
    json        TEXT NOT NULL,
    secret_hash TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE keys (
    set_name       TEXT NOT NULL,
    kid            TEXT NOT NULL,
    alg            TEXT NOT NULL,
    private_sealed BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    seq            INTEGER PRIMARY KEY AUTOINCREMENT
);
CREATE UNIQUE INDEX keys_set_kid ON keys(set_name, kid);
CREATE TABLE opaque_tokens (
    hash       BLOB PRIMARY KEY NOT NULL,
    client_id  TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    audience   TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX opaque_tokens_exp ON opaque_tokens(expires_at);
CREATE INDEX opaque_tokens_client ON opaque_tokens(client_id);
CREATE TABLE revocations (
    jti        TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE assertion_jtis (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);
"#,
    r#"
CREATE TABLE oidc_flows (
    id         TEXT PRIMARY KEY NOT NULL,
    stage      INTEGER NOT NULL,
    json       TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX oidc_flows_exp ON oidc_flows(expires_at);
CREATE TABLE oidc_sessions (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    subject    TEXT NOT NULL,
    json       TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX oidc_sessions_exp ON oidc_sessions(expires_at);
CREATE INDEX oidc_sessions_subject ON oidc_sessions(kind, subject);
CREATE TABLE refresh_tokens (
    hash       BLOB PRIMARY KEY NOT NULL,
    chain      TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    active     INTEGER NOT NULL,
    used_at    INTEGER,
    json       TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_chain ON refresh_tokens(chain);
CREATE INDEX refresh_tokens_subject ON refresh_tokens(subject, client_id);
CREATE INDEX refresh_tokens_exp ON refresh_tokens(expires_at);
"#,
    // Opaque access tokens of browser grants. Rows from before keep NULLs: a NULL subject is
    // the client (all of them were client_credentials tokens). The partial indexes leave
    // client_credentials tokens out, so issuing those costs no extra index writes.
    r#"
ALTER TABLE opaque_tokens ADD COLUMN subject TEXT;
ALTER TABLE opaque_tokens ADD COLUMN grant_id TEXT;
ALTER TABLE opaque_tokens ADD COLUMN ext TEXT;
CREATE INDEX opaque_tokens_grant ON opaque_tokens(grant_id) WHERE grant_id IS NOT NULL;
CREATE INDEX opaque_tokens_subject ON opaque_tokens(subject, client_id)
    WHERE grant_id IS NOT NULL;
"#,
    // Revocations ordered by expiry: every refresh revokes the access token issued before it,
    // and a row keyed by its random `jti` landed on a random page of the table's index; keyed
    // by expiry first, new rows append to the last page, which a batch's rows share. Nothing
    // looks a revocation up by `jti` (they are loaded into memory); a `jti` revoked twice may
    // keep two rows until both expire.
    r#"
CREATE TABLE revocations_by_expiry (
    expires_at INTEGER NOT NULL,
    jti        TEXT NOT NULL,
    PRIMARY KEY (expires_at, jti)
) WITHOUT ROWID;
INSERT INTO revocations_by_expiry (expires_at, jti) SELECT expires_at, jti FROM revocations;
DROP TABLE revocations;
ALTER TABLE revocations_by_expiry RENAME TO revocations;
"#,
    // One index for both ways a refresh chain is found (by grant, for reuse detection and
    // `/userinfo`; by person, when a consent is revoked): every refresh inserts a row, and
    // each index is one more random page written per refresh (the second one cost a tenth
    // to a fifth of the refreshes per second on the 2-core machine).
    r#"
DROP INDEX refresh_tokens_chain;
DROP INDEX refresh_tokens_subject;
CREATE INDEX refresh_tokens_grant ON refresh_tokens(subject, client_id, chain);
"#,
];

/// WAL pages after which the checkpoint thread copies the WAL back into the database
/// (SQLite's default is 1,000). Flows and refreshes write a few rows each into random index
/// pages; between two checkpoints most of those pages are written many times, and each
/// checkpoint writes every page once and syncs the database twice. Ten times fewer checkpoints
/// cut the bytes written per refresh enough to lift refreshes/s by a quarter to a third and
/// flows/s by a sixth on the 2-core machine (control-plane/README.md), for a larger WAL (what
/// a restart after a crash replays): ~40 MB, plus what arrives while a checkpoint copies (50–85
/// MB measured). The copy runs on a thread of its own (`checkpointer`), so its length no longer
/// pauses the commits.
const WAL_CHECKPOINT_PAGES: u32 = 10_000;

/// Rows deleted per statement when purging the browser-flow tables.
const PURGE_BATCH: usize = 1000;

/// Creates `dir` (and parents) with mode 0700, or tightens an existing one when we may.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    tighten(dir, 0o700);
    Ok(())
}

/// Creates `path` empty with mode 0600 unless it exists (then tightens it when we may).
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tighten(path, 0o600);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Removes group/other access from an existing path. A volume root owned by someone else
/// (Kubernetes `fsGroup`) cannot be changed: that is logged, not fatal.
fn tighten(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.permissions().mode() & 0o777 & !mode == 0 {
            return;
        }
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot restrict permissions");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// Sorts SQLite's errors by their result codes: a unique violation (extended code) is a
/// conflict, a full, read-only or failing disk (primary code) is the disk's fault, the rest
/// the statement's.
fn db(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(
            f.extended_code,
            SQLITE_CONSTRAINT_UNIQUE | SQLITE_CONSTRAINT_PRIMARYKEY
        )
    {
        // As PostgreSQL's unique_violation: the caller names what already exists.
        return StoreError::Conflict(e.to_string());
    }
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen,
        ) => StoreError::Disk(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `<dir>/portcullis.sqlite` and applies pending migrations.
    /// The directory is created 0700 and the database 0600 (it holds secret hashes and sealed
    /// keys); SQLite gives its `-wal` and `-shm` files the database's mode.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        Self::open_checkpointing(dir, WAL_CHECKPOINT_PAGES)
    }

    /// [`SqliteStore::open`] with a checkpoint every `checkpoint_pages` WAL pages.
    fn open_checkpointing(dir: &Path, checkpoint_pages: u32) -> StoreResult<Self> {
        let io = |what: &Path, e: std::io::Error| {
            StoreError::Database(format!("creating {}: {e}", what.display()))
        };
        private_dir(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("portcullis.sqlite");
        private_file(&path).map_err(|e| io(&path, e))?;
        let conn = Connection::open(&path).map_err(db)?;
        let mut store = Self::from_connection(conn, Some((&path, checkpoint_pages)))?;
        for _ in 0..READERS {
            let reader = Connection::open(&path).map_err(db)?;
            configure(&reader)?;
            store.readers.push(Mutex::new(reader));
        }
        for suffix in ["-wal", "-shm"] {
            let mut side = path.clone().into_os_string();
            side.push(suffix);
            tighten(Path::new(&side), 0o600);
        }
        Ok(store)
    }

    pub fn in_memory() -> StoreResult<Self> {
        Self::from_connection(Connection::open_in_memory().map_err(db)?, None)
    }

    /// `file` names the database file and the WAL pages between checkpoints (`None`: in
    /// memory, nothing to flush or checkpoint).
    fn from_connection(mut conn: Connection, file: Option<(&Path, u32)>) -> StoreResult<Self> {
        configure(&conn)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(db)?;
        // The syncer flushes the WAL; a database that refused WAL mode keeps flushing at
        // every commit (`synchronous=FULL`).
        let in_wal = file.filter(|_| mode.eq_ignore_ascii_case("wal"));
        let wal = in_wal.map(|(path, _)| group_commit::wal_files(path));
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db)?;
        let applied = usize::try_from(version).unwrap_or(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            let tx = conn.transaction().map_err(db)?;
            tx.execute_batch(sql).map_err(db)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(i64::MAX),
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
        }
        let checkpointer = in_wal
            .map(|(path, pages)| Checkpointer::start(path, &conn, pages))
            .transpose()?;
        #[cfg(test)]
        let checkpoints = checkpointer.as_ref().map(Checkpointer::progress);
        Ok(Self {
            writer: Writer::new(conn, wal, checkpointer)?,
            readers: Vec::new(),
            disk: DiskHealth::default(),
            rows: Arc::default(),
            #[cfg(test)]
            checkpoints,
        })
    }

    /// Runs a read on a free reader connection (waiting for the first one when all are busy),
    /// or on the only connection of an in-memory database.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let poisoned = || StoreError::Database("reader mutex poisoned".into());
        let Some(first) = self.readers.first() else {
            return self.writer.with(f);
        };
        for reader in &self.readers {
            match reader.try_lock() {
                Ok(conn) => return f(&conn).map_err(db),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
        let conn = first.lock().map_err(|_| poisoned())?;
        f(&conn).map_err(db)
    }

    /// Runs a write in the next group commit; returns once it is durable.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.write_then(f, None)
    }

    /// [`SqliteStore::write`], telling the row cache what the write did once it committed.
    fn write_then<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        after: Option<AfterCommit<T>>,
    ) -> StoreResult<T> {
        self.disk.observe(self.writer.write_then(f, after))
    }

    /// [`SqliteStore::write_then`] for an async caller: queued now, awaited without a thread.
    fn write_async<T: Send + 'static>(
        self: Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        durability: Durability,
        after: Option<AfterCommit<T>>,
    ) -> StoreFuture<T> {
        let done = self.writer.write_async(f, durability, after);
        Box::pin(async move { self.disk.observe(done.await) })
    }

    /// Every row of every table, in one read transaction (`portcullis migrate --from-sqlite`).
    pub fn export(&self) -> StoreResult<Snapshot> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let all = |sql: &str| -> rusqlite::Result<rusqlite::Statement<'_>> { tx.prepare(sql) };
            let clients = all("SELECT client_id, json, secret_hash, created_at, updated_at
                               FROM clients ORDER BY client_id")?
            .query_map([], client_row)?
            .collect::<rusqlite::Result<_>>()?;
            let keys = all(
                "SELECT set_name, kid, alg, private_sealed, created_at, expires_at
                            FROM keys ORDER BY seq",
            )?
            .query_map([], key_row)?
            .collect::<rusqlite::Result<_>>()?;
            let opaque_tokens = all(&format!("SELECT {OPAQUE_COLUMNS} FROM opaque_tokens"))?
                .query_map([], opaque_row)?
                .collect::<rusqlite::Result<_>>()?;
            let revocations = all("SELECT jti, MAX(expires_at) FROM revocations GROUP BY jti")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let assertion_jtis = all("SELECT client_id, jti, expires_at FROM assertion_jtis")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let flows = all("SELECT id, stage, json, expires_at FROM oidc_flows")?
                .query_map([], flow_row)?
                .collect::<rusqlite::Result<_>>()?;
            let sessions = all("SELECT kind, id, subject, json, expires_at FROM oidc_sessions")?
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        StoredSession {
                            id: r.get(1)?,
                            subject: r.get(2)?,
                            json: r.get(3)?,
                            expires_at: r.get(4)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let refresh_tokens = all("SELECT hash, chain, client_id, subject, active, used_at,
                                      json, expires_at FROM refresh_tokens")?
            .query_map([], refresh_row)?
            .collect::<rusqlite::Result<_>>()?;
            Ok(Snapshot {
                clients,
                keys,
                opaque_tokens,
                revocations,
                assertion_jtis,
                flows,
                sessions,
                refresh_tokens,
            })
        })
    }
}

/// Settings every connection needs.
fn configure(conn: &Connection) -> StoreResult<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)?;
    // Every query of the store, plus the group commit's own statements, stays prepared.
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db)?;
    // A batch's savepoints keep a sub-journal of the pages they change; past 64 KiB SQLite
    // spills it to a temporary file (open, write, unlink, close per batch) unless told to keep
    // it in memory, where a batch of at most `MAX_BATCH` writes bounds it.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(db)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(db)
}

/// `execute` of a cached prepared statement.
fn exec(c: &Connection, sql: &str, p: impl Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// `query_row` of a cached prepared statement; `None` when there is no row.
fn one<T>(
    c: &Connection,
    sql: &str,
    p: impl Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    c.prepare_cached(sql)?.query_row(p, f).optional()
}

fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredClient> {
    Ok(StoredClient {
        client_id: r.get(0)?,
        json: r.get(1)?,
        secret_hash: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        set: r.get(0)?,
        kid: r.get(1)?,
        alg: r.get(2)?,
        private_sealed: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
    })
}

fn hash32(bytes: &[u8]) -> [u8; 32] {
    let mut h = [0u8; 32];
    if bytes.len() == 32 {
        h.copy_from_slice(bytes);
    }
    h
}

fn flow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredFlow> {
    Ok(StoredFlow {
        id: r.get(0)?,
        stage: r.get(1)?,
        json: r.get(2)?,
        expires_at: r.get(3)?,
    })
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSession> {
    Ok(StoredSession {
        id: r.get(0)?,
        subject: r.get(1)?,
        json: r.get(2)?,
        expires_at: r.get(3)?,
    })
}

fn refresh_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRefreshToken> {
    Ok(StoredRefreshToken {
        hash: hash32(&r.get::<_, Vec<u8>>(0)?),
        chain: r.get(1)?,
        client_id: r.get(2)?,
        subject: r.get(3)?,
        active: r.get::<_, i64>(4)? != 0,
        used_at: r.get(5)?,
        json: r.get(6)?,
        expires_at: r.get(7)?,
    })
}

/// The columns [`opaque_row`] reads.
const OPAQUE_COLUMNS: &str = "hash, client_id, COALESCE(subject, client_id), scopes, audience,
     issued_at, expires_at, grant_id, ext";

fn opaque_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredOpaqueToken> {
    Ok(StoredOpaqueToken {
        hash: hash32(&r.get::<_, Vec<u8>>(0)?),
        client_id: r.get(1)?,
        subject: r.get(2)?,
        scopes: split_list(&r.get::<_, String>(3)?),
        audience: split_list(&r.get::<_, String>(4)?),
        issued_at: r.get(5)?,
        expires_at: r.get(6)?,
        grant_id: r.get(7)?,
        ext: r.get(8)?,
    })
}

fn insert_opaque(c: &Connection, t: &StoredOpaqueToken) -> rusqlite::Result<usize> {
    exec(
        c,
        "INSERT INTO opaque_tokens
         (hash, client_id, subject, scopes, audience, issued_at, expires_at, grant_id, ext)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            &t.hash[..],
            t.client_id,
            t.subject,
            t.scopes.join(" "),
            t.audience.join(" "),
            t.issued_at,
            t.expires_at,
            t.grant_id,
            t.ext
        ],
    )
}

fn delete_opaque(c: &Connection, hash: &[u8; 32]) -> rusqlite::Result<usize> {
    exec(c, "DELETE FROM opaque_tokens WHERE hash = ?1", [&hash[..]])
}

fn insert_refresh(c: &Connection, t: &StoredRefreshToken) -> rusqlite::Result<usize> {
    exec(
        c,
        "INSERT INTO refresh_tokens
         (hash, chain, client_id, subject, active, used_at, json, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            &t.hash[..],
            t.chain,
            t.client_id,
            t.subject,
            i64::from(t.active),
            t.used_at,
            t.json,
            t.expires_at
        ],
    )
}

fn put_session(c: &Connection, kind: &str, s: &StoredSession) -> rusqlite::Result<usize> {
    exec(
        c,
        "INSERT OR REPLACE INTO oidc_sessions (kind, id, subject, json, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![kind, s.id, s.subject, s.json, s.expires_at],
    )
}

fn insert_revocation(c: &Connection, jti: &str, expires_at: i64) -> rusqlite::Result<usize> {
    exec(
        c,
        "INSERT OR IGNORE INTO revocations (expires_at, jti) VALUES (?2, ?1)",
        params![jti, expires_at],
    )
}

/// The rows of a step, inside the savepoint of its compare-and-set.
fn write_step_rows(c: &Connection, rows: &StepRows) -> rusqlite::Result<()> {
    for t in &rows.refresh_tokens {
        insert_refresh(c, t)?;
    }
    for (kind, s) in &rows.sessions {
        put_session(c, kind, s)?;
    }
    for (jti, exp) in &rows.revocations {
        insert_revocation(c, jti, *exp)?;
    }
    for t in &rows.opaque_tokens {
        insert_opaque(c, t)?;
    }
    for h in &rows.revoked_opaque_tokens {
        delete_opaque(c, h)?;
    }
    Ok(())
}

fn split_list(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn unique_as_conflict<T>(res: StoreResult<T>, what: impl FnOnce() -> String) -> StoreResult<T> {
    match res {
        Err(StoreError::Conflict(_)) => Err(StoreError::Conflict(what())),
        other => other,
    }
}

/// The write of [`Store::insert_flow`], for the blocking and the async caller alike.
fn insert_flow(f: StoredFlow) -> impl FnOnce(&Connection) -> rusqlite::Result<()> + Send {
    move |c| {
        exec(
            c,
            "INSERT INTO oidc_flows (id, stage, json, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![f.id, f.stage, f.json, f.expires_at],
        )
        .map(|_| ())
    }
}

/// The write of [`Store::advance_flow_with`]: one savepoint, so the step and its rows commit
/// together, or neither.
fn advance_flow(
    from: i64,
    f: StoredFlow,
    rows: StepRows,
) -> impl FnOnce(&Connection) -> rusqlite::Result<bool> + Send {
    move |c| {
        let won = exec(
            c,
            "UPDATE oidc_flows SET stage = ?3, json = ?4, expires_at = ?5
             WHERE id = ?1 AND stage = ?2",
            params![f.id, from, f.stage, f.json, f.expires_at],
        )? == 1;
        if won {
            write_step_rows(c, &rows)?;
        }
        Ok(won)
    }
}

/// The write of [`Store::rotate_refresh_token`]: one savepoint, so the deactivation, the
/// successor and the rows commit together.
fn rotate_refresh(
    old: [u8; 32],
    new: StoredRefreshToken,
    now: i64,
    rows: StepRows,
) -> impl FnOnce(&Connection) -> rusqlite::Result<bool> + Send {
    move |c| {
        let won = exec(
            c,
            "UPDATE refresh_tokens SET active = 0, used_at = ?2 WHERE hash = ?1 AND active = 1",
            params![&old[..], now],
        )? == 1;
        if won {
            insert_refresh(c, &new)?;
            write_step_rows(c, &rows)?;
        }
        Ok(won)
    }
}

const REFRESH_COLUMNS: &str = "hash, chain, client_id, subject, active, used_at, json, expires_at";

impl Store for SqliteStore {
    fn reads_in_place(&self) -> bool {
        true
    }

    fn ping(&self) -> StoreResult<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    fn insert_client(&self, client: &StoredClient) -> StoreResult<()> {
        let row = client.clone();
        let res = self.write(move |c| {
            exec(
                c,
                "INSERT INTO clients (client_id, json, secret_hash, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    row.client_id,
                    row.json,
                    row.secret_hash,
                    row.created_at,
                    row.updated_at
                ],
            )
        });
        unique_as_conflict(res, || format!("client {:?}", client.client_id)).map(|_| ())
    }

    fn update_client(&self, client: &StoredClient) -> StoreResult<bool> {
        let row = client.clone();
        self.write(move |c| {
            exec(
                c,
                "UPDATE clients SET json = ?2, secret_hash = ?3, updated_at = ?4
                 WHERE client_id = ?1",
                params![row.client_id, row.json, row.secret_hash, row.updated_at],
            )
        })
        .map(|n| n > 0)
    }

    fn delete_client(&self, client_id: &str) -> StoreResult<bool> {
        let id = client_id.to_string();
        self.write(move |c| exec(c, "DELETE FROM clients WHERE client_id = ?1", [id]))
            .map(|n| n > 0)
    }

    fn get_client(&self, client_id: &str) -> StoreResult<Option<StoredClient>> {
        self.read(|c| {
            one(
                c,
                "SELECT client_id, json, secret_hash, created_at, updated_at
                 FROM clients WHERE client_id = ?1",
                [client_id],
                client_row,
            )
        })
    }

    fn list_clients(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &ClientFilter,
    ) -> StoreResult<Vec<StoredClient>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT client_id, json, secret_hash, created_at, updated_at FROM clients
                 WHERE (?1 IS NULL OR client_id > ?1)
                   AND (?3 IS NULL OR json_extract(json, '$.client_name') = ?3)
                   AND (?4 IS NULL OR json_extract(json, '$.owner') = ?4)
                 ORDER BY client_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![after, limit, filter.client_name, filter.owner],
                client_row,
            )?;
            rows.collect()
        })
    }

    fn insert_key(&self, key: &StoredKey) -> StoreResult<()> {
        let row = key.clone();
        let res = self.write(move |c| {
            exec(
                c,
                "INSERT INTO keys (set_name, kid, alg, private_sealed, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.set,
                    row.kid,
                    row.alg,
                    row.private_sealed,
                    row.created_at,
                    row.expires_at
                ],
            )
        });
        unique_as_conflict(res, || format!("key {:?} in set {:?}", key.kid, key.set)).map(|_| ())
    }

    fn retire_keys(&self, set: &str, keep_kid: &str, expires_at: i64) -> StoreResult<()> {
        let (set, keep) = (set.to_string(), keep_kid.to_string());
        self.write(move |c| {
            exec(
                c,
                "UPDATE keys SET expires_at = ?3
                 WHERE set_name = ?1 AND kid != ?2 AND expires_at IS NULL",
                params![set, keep, expires_at],
            )
        })
        .map(|_| ())
    }

    fn delete_key(&self, set: &str, kid: &str) -> StoreResult<bool> {
        let (set, kid) = (set.to_string(), kid.to_string());
        self.write(move |c| {
            exec(
                c,
                "DELETE FROM keys WHERE set_name = ?1 AND kid = ?2",
                params![set, kid],
            )
        })
        .map(|n| n > 0)
    }

    fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT set_name, kid, alg, private_sealed, created_at, expires_at
                 FROM keys ORDER BY seq",
            )?;
            let rows = stmt.query_map([], key_row)?;
            rows.collect()
        })
    }

    fn insert_opaque_token(&self, t: &StoredOpaqueToken) -> StoreResult<()> {
        let t = t.clone();
        self.write(move |c| insert_opaque(c, &t)).map(|_| ())
    }

    // No row cache here, unlike PostgreSQL's: the read is a local point lookup (tens of
    // thousands a second), and a cache would have to hear of every statement that deletes
    // rows, inside batches that may still roll back.
    fn get_opaque_token(&self, hash: &[u8; 32]) -> StoreResult<Option<StoredOpaqueToken>> {
        self.read(|c| {
            one(
                c,
                &format!("SELECT {OPAQUE_COLUMNS} FROM opaque_tokens WHERE hash = ?1"),
                [&hash[..]],
                opaque_row,
            )
        })
    }

    fn delete_opaque_token(&self, hash: &[u8; 32]) -> StoreResult<bool> {
        let h = *hash;
        self.write(move |c| delete_opaque(c, &h)).map(|n| n > 0)
    }

    fn delete_client_tokens(&self, client_id: &str) -> StoreResult<()> {
        let id = client_id.to_string();
        self.write(move |c| exec(c, "DELETE FROM opaque_tokens WHERE client_id = ?1", [id]))
            .map(|_| ())
    }
    fn insert_revocation(&self, jti: &str, expires_at: i64) -> StoreResult<()> {
        let jti = jti.to_string();
        self.write(move |c| insert_revocation(c, &jti, expires_at))
            .map(|_| ())
    }

    fn list_revocations(&self, now: i64) -> StoreResult<Vec<(String, i64)>> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT jti, expires_at FROM revocations WHERE expires_at > ?1")?;
            let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    fn use_assertion_jti(&self, client_id: &str, jti: &str, expires_at: i64) -> StoreResult<bool> {
        let (id, jti) = (client_id.to_string(), jti.to_string());
        self.write(move |c| {
            exec(
                c,
                "INSERT OR IGNORE INTO assertion_jtis (client_id, jti, expires_at)
                 VALUES (?1, ?2, ?3)",
                params![id, jti, expires_at],
            )
        })
        .map(|n| n > 0)
    }

    fn insert_flow(&self, f: &StoredFlow) -> StoreResult<()> {
        let after = self.rows.inserted_flow(f.clone());
        self.write_then(insert_flow(f.clone()), Some(after))
    }

    fn insert_flow_async(self: Arc<Self>, f: StoredFlow, d: Durability) -> StoreFuture<()> {
        let after = self.rows.inserted_flow(f.clone());
        self.write_async(insert_flow(f), d, Some(after))
    }

    fn get_flow(&self, id: &str) -> StoreResult<Option<StoredFlow>> {
        if let Some(f) = self.rows.flow(id, crate::clock::now()) {
            return Ok(Some(f));
        }
        self.read(|c| {
            one(
                c,
                "SELECT id, stage, json, expires_at FROM oidc_flows WHERE id = ?1",
                [id],
                flow_row,
            )
        })
    }

    fn advance_flow_with(&self, from: i64, f: &StoredFlow, rows: &StepRows) -> StoreResult<bool> {
        let after = self.rows.advanced_flow(f.clone(), rows);
        self.write_then(advance_flow(from, f.clone(), rows.clone()), Some(after))
    }

    fn advance_flow_async(
        self: Arc<Self>,
        from: i64,
        f: StoredFlow,
        rows: StepRows,
        d: Durability,
    ) -> StoreFuture<bool> {
        let after = self.rows.advanced_flow(f.clone(), &rows);
        self.write_async(advance_flow(from, f, rows), d, Some(after))
    }

    fn put_session(&self, kind: &str, s: &StoredSession) -> StoreResult<()> {
        let (kind, s) = (kind.to_string(), s.clone());
        self.write(move |c| put_session(c, &kind, &s)).map(|_| ())
    }

    fn get_session(&self, kind: &str, id: &str) -> StoreResult<Option<StoredSession>> {
        self.read(|c| {
            one(
                c,
                "SELECT id, subject, json, expires_at FROM oidc_sessions
                 WHERE kind = ?1 AND id = ?2",
                params![kind, id],
                session_row,
            )
        })
    }

    fn list_sessions(&self, kind: &str, subject: &str) -> StoreResult<Vec<StoredSession>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, subject, json, expires_at FROM oidc_sessions
                 WHERE kind = ?1 AND subject = ?2 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![kind, subject], session_row)?;
            rows.collect()
        })
    }

    fn delete_sessions(&self, kind: &str, subject: &str) -> StoreResult<usize> {
        let (kind, subject) = (kind.to_string(), subject.to_string());
        self.write(move |c| {
            exec(
                c,
                "DELETE FROM oidc_sessions WHERE kind = ?1 AND subject = ?2",
                params![kind, subject],
            )
        })
    }

    fn delete_session(&self, kind: &str, id: &str) -> StoreResult<bool> {
        let (kind, id) = (kind.to_string(), id.to_string());
        self.write(move |c| {
            exec(
                c,
                "DELETE FROM oidc_sessions WHERE kind = ?1 AND id = ?2",
                params![kind, id],
            )
        })
        .map(|n| n > 0)
    }

    fn insert_refresh_token(&self, t: &StoredRefreshToken) -> StoreResult<()> {
        let t = t.clone();
        self.write(move |c| insert_refresh(c, &t)).map(|_| ())
    }

    fn get_refresh_token(&self, hash: &[u8; 32]) -> StoreResult<Option<StoredRefreshToken>> {
        if let Some(t) = self.rows.refresh_token(hash, crate::clock::now()) {
            return Ok(Some(t));
        }
        self.read(|c| {
            one(
                c,
                "SELECT hash, chain, client_id, subject, active, used_at, json, expires_at
                 FROM refresh_tokens WHERE hash = ?1",
                [&hash[..]],
                refresh_row,
            )
        })
    }

    fn refresh_token_of_chain(&self, key: &ChainKey) -> StoreResult<Option<StoredRefreshToken>> {
        self.read(|c| {
            one(
                c,
                &format!(
                    "SELECT {REFRESH_COLUMNS} FROM refresh_tokens
                     WHERE subject = ?1 AND client_id = ?2 AND chain = ?3 LIMIT 1"
                ),
                params![key.subject, key.client_id, key.chain],
                refresh_row,
            )
        })
    }

    fn rotate_refresh_token(
        &self,
        old: &[u8; 32],
        new: &StoredRefreshToken,
        now: i64,
        rows: &StepRows,
    ) -> StoreResult<bool> {
        let after = self.rows.rotated(*old, new.clone(), rows);
        self.write_then(
            rotate_refresh(*old, new.clone(), now, rows.clone()),
            Some(after),
        )
    }

    fn rotate_refresh_token_async(
        self: Arc<Self>,
        old: [u8; 32],
        new: StoredRefreshToken,
        now: i64,
        rows: StepRows,
    ) -> StoreFuture<bool> {
        let after = self.rows.rotated(old, new.clone(), &rows);
        self.write_async(
            rotate_refresh(old, new, now, rows),
            Durability::Durable,
            Some(after),
        )
    }

    fn revoke_refresh_chain(&self, key: &ChainKey) -> StoreResult<Vec<StoredRefreshToken>> {
        let key = key.clone();
        let after = self.rows.forget_refresh_tokens();
        self.write_then(
            move |c| {
                let of_chain = params![key.subject, key.client_id, key.chain];
                exec(
                    c,
                    "UPDATE refresh_tokens SET active = 0, used_at = NULL
                     WHERE subject = ?1 AND client_id = ?2 AND chain = ?3",
                    of_chain,
                )?;
                exec(
                    c,
                    "DELETE FROM opaque_tokens WHERE grant_id = ?1",
                    [&key.chain],
                )?;
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {REFRESH_COLUMNS} FROM refresh_tokens
                     WHERE subject = ?1 AND client_id = ?2 AND chain = ?3"
                ))?;
                let rows = stmt.query_map(of_chain, refresh_row)?;
                rows.collect()
            },
            Some(after),
        )
    }

    fn revoke_refresh_tokens_of(
        &self,
        subject: &str,
        client_id: Option<&str>,
    ) -> StoreResult<Vec<StoredRefreshToken>> {
        let (subject, client_id) = (subject.to_string(), client_id.map(str::to_string));
        let after = self.rows.forget_refresh_tokens();
        self.write_then(
            move |c| {
                exec(
                    c,
                    "UPDATE refresh_tokens SET active = 0, used_at = NULL
                 WHERE subject = ?1 AND (?2 IS NULL OR client_id = ?2)",
                    params![subject, client_id],
                )?;
                exec(
                    c,
                    "DELETE FROM opaque_tokens WHERE grant_id IS NOT NULL
                 AND subject = ?1 AND (?2 IS NULL OR client_id = ?2)",
                    params![subject, client_id],
                )?;
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {REFRESH_COLUMNS} FROM refresh_tokens
                 WHERE subject = ?1 AND (?2 IS NULL OR client_id = ?2)"
                ))?;
                let rows = stmt.query_map(params![subject, client_id], refresh_row)?;
                rows.collect()
            },
            Some(after),
        )
    }

    fn purge_expired(&self, now: i64) -> StoreResult<usize> {
        // The browser-flow tables grow with traffic (Hydra's unbounded janitor is a known
        // complaint): delete in batches, each its own write, so requests' writes commit between
        // them.
        let mut n = 0;
        for table in ["oidc_flows", "oidc_sessions", "refresh_tokens"] {
            let sql = format!(
                "DELETE FROM {table} WHERE rowid IN
                 (SELECT rowid FROM {table} WHERE expires_at <= ?1 LIMIT {PURGE_BATCH})"
            );
            loop {
                let sql = sql.clone();
                let after = self.rows.forget_all();
                let deleted = self.write_then(move |c| c.execute(&sql, [now]), Some(after))?;
                n += deleted;
                if deleted < PURGE_BATCH {
                    break;
                }
            }
        }
        self.write(move |c| {
            let mut n = n + c.execute("DELETE FROM opaque_tokens WHERE expires_at <= ?1", [now])?;
            n += c.execute("DELETE FROM revocations WHERE expires_at <= ?1", [now])?;
            n += c.execute("DELETE FROM assertion_jtis WHERE expires_at <= ?1", [now])?;
            n += c.execute(
                "DELETE FROM keys WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                [now],
            )?;
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn data_dir_and_database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let store = SqliteStore::open(&dir).unwrap();
        store.insert_client(&client("c")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for f in [
            "portcullis.sqlite",
            "portcullis.sqlite-wal",
            "portcullis.sqlite-shm",
        ] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        drop(store);
        // An existing database left world-readable by an older version is tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("portcullis.sqlite");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(
            store
                .list_clients(None, 10, &ClientFilter::default())
                .unwrap()
                .len(),
            1
        );
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
    }

    fn client(id: &str) -> StoredClient {
        StoredClient {
            client_id: id.into(),
            json: format!(r#"{{"client_id":"{id}"}}"#),
            secret_hash: Some("$hash".into()),
            created_at: 1,
            updated_at: 2,
        }
    }

    #[test]
    fn clients_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            s.insert_client(&client("a")).unwrap();
            s.insert_client(&client("b")).unwrap();
            assert!(matches!(
                s.insert_client(&client("a")),
                Err(StoreError::Conflict(_))
            ));
            let mut c = client("b");
            c.json = "{}".into();
            assert!(s.update_client(&c).unwrap());
            assert!(!s.update_client(&client("zz")).unwrap());
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(s.get_client("a").unwrap(), Some(client("a")));
        assert_eq!(s.get_client("b").unwrap().unwrap().json, "{}");
        assert!(s.delete_client("a").unwrap());
        assert!(!s.delete_client("a").unwrap());
        assert_eq!(s.get_client("a").unwrap(), None);
    }

    #[test]
    fn only_a_real_unique_violation_is_a_conflict() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, u TEXT UNIQUE)")
            .unwrap();
        c.execute("INSERT INTO t VALUES ('a', 'x')", []).unwrap();
        for dup in [
            "INSERT INTO t VALUES ('a', 'y')",
            "INSERT INTO t VALUES ('b', 'x')",
        ] {
            let e = db(c.execute(dup, []).unwrap_err());
            assert!(matches!(e, StoreError::Conflict(_)), "{dup}: {e:?}");
        }
        // An error that merely quotes the text is what it is.
        let e = db(c
            .execute("SELECT * FROM \"UNIQUE constraint failed\"", [])
            .unwrap_err());
        assert!(matches!(e, StoreError::Database(_)), "{e:?}");
    }

    #[test]
    fn list_clients_pages_by_id() {
        let s = SqliteStore::in_memory().unwrap();
        let all = ClientFilter::default();
        for id in ["c", "a", "e", "b", "d"] {
            s.insert_client(&client(id)).unwrap();
        }
        let ids = |v: Vec<StoredClient>| v.into_iter().map(|c| c.client_id).collect::<Vec<_>>();
        assert_eq!(ids(s.list_clients(None, 2, &all).unwrap()), ["a", "b"]);
        assert_eq!(ids(s.list_clients(Some("b"), 2, &all).unwrap()), ["c", "d"]);
        assert_eq!(ids(s.list_clients(Some("d"), 2, &all).unwrap()), ["e"]);
        let mut named = client("f");
        named.json = r#"{"client_id":"f","client_name":"Fox","owner":"team"}"#.into();
        s.insert_client(&named).unwrap();
        let by_name = ClientFilter {
            client_name: Some("Fox".into()),
            owner: None,
        };
        assert_eq!(ids(s.list_clients(None, 10, &by_name).unwrap()), ["f"]);
        let by_owner = ClientFilter {
            client_name: None,
            owner: Some("nobody".into()),
        };
        assert!(s.list_clients(None, 10, &by_owner).unwrap().is_empty());
    }

    #[test]
    fn keys_retire_and_purge() {
        let s = SqliteStore::in_memory().unwrap();
        let key = |kid: &str| StoredKey {
            set: "set".into(),
            kid: kid.into(),
            alg: "ES256".into(),
            private_sealed: vec![1, 2, 3],
            created_at: 10,
            expires_at: None,
        };
        s.insert_key(&key("k1")).unwrap();
        s.insert_key(&key("k2")).unwrap();
        assert!(matches!(
            s.insert_key(&key("k1")),
            Err(StoreError::Conflict(_))
        ));
        s.retire_keys("set", "k2", 100).unwrap();
        let keys = s.list_keys().unwrap();
        assert_eq!(keys[0].expires_at, Some(100));
        assert_eq!(keys[1].expires_at, None);
        assert_eq!(s.purge_expired(99).unwrap(), 0);
        assert_eq!(s.purge_expired(100).unwrap(), 1);
        assert_eq!(s.list_keys().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_opaque_inserts_are_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        let mut hash = [0u8; 32];
                        hash[0] = t;
                        hash[1] = i;
                        store
                            .insert_opaque_token(&StoredOpaqueToken {
                                hash,
                                client_id: format!("c{t}"),
                                scopes: vec![],
                                audience: vec![],
                                issued_at: 1,
                                expires_at: 100,
                                ..StoredOpaqueToken::default()
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(store);
        let reopened = SqliteStore::open(dir.path()).unwrap();
        for t in 0..8u8 {
            for i in 0..50u8 {
                let mut hash = [0u8; 32];
                hash[0] = t;
                hash[1] = i;
                let row = reopened.get_opaque_token(&hash).unwrap().unwrap();
                assert_eq!(row.client_id, format!("c{t}"));
            }
        }
        // A duplicate fails its batch, and the caller hears about it.
        let dup = StoredOpaqueToken {
            hash: [0; 32],
            client_id: "x".into(),
            scopes: vec![],
            audience: vec![],
            issued_at: 1,
            expires_at: 100,
            ..StoredOpaqueToken::default()
        };
        assert!(reopened.insert_opaque_token(&dup).is_err());
    }

    #[test]
    fn flows_advance_once_and_refresh_rotation_has_one_winner() {
        let s = SqliteStore::in_memory().unwrap();
        let f = StoredFlow {
            id: "f".into(),
            stage: 0,
            json: "{}".into(),
            expires_at: 100,
        };
        s.insert_flow(&f).unwrap();
        let next = StoredFlow {
            stage: 1,
            json: "{\"a\":1}".into(),
            ..f.clone()
        };
        assert!(s.advance_flow(0, &next).unwrap());
        assert!(
            !s.advance_flow(0, &next).unwrap(),
            "a stage is left only once"
        );
        assert_eq!(s.get_flow("f").unwrap(), Some(next));

        let rt = |b: u8, chain: &str| refresh_token(b, key("s", "c", chain), 100);
        s.insert_refresh_token(&rt(1, "ch")).unwrap();
        assert!(
            s.rotate_refresh_token(&[1; 32], &rt(2, "ch"), 50, &StepRows::default())
                .unwrap()
        );
        // The loser writes nothing: its successor does not exist.
        assert!(
            !s.rotate_refresh_token(&[1; 32], &rt(3, "ch"), 51, &StepRows::default())
                .unwrap()
        );
        assert!(s.get_refresh_token(&[3; 32]).unwrap().is_none());
        let used = s.get_refresh_token(&[1; 32]).unwrap().unwrap();
        assert!(!used.active);
        assert_eq!(used.used_at, Some(50), "the winner's use is recorded");
        let chain = s.revoke_refresh_chain(&key("s", "c", "ch")).unwrap();
        assert_eq!(chain.len(), 2);
        assert!(chain.iter().all(|t| !t.active && t.used_at.is_none()));
        s.insert_refresh_token(&rt(4, "other")).unwrap();
        assert!(
            s.revoke_refresh_tokens_of("s", Some("d"))
                .unwrap()
                .is_empty()
        );
        assert!(s.get_refresh_token(&[4; 32]).unwrap().unwrap().active);
        assert_eq!(s.revoke_refresh_tokens_of("s", Some("c")).unwrap().len(), 3);
        assert!(!s.get_refresh_token(&[4; 32]).unwrap().unwrap().active);
        assert_eq!(s.purge_expired(100).unwrap(), 4);
    }

    fn key(subject: &str, client_id: &str, chain: &str) -> ChainKey {
        ChainKey {
            subject: subject.into(),
            client_id: client_id.into(),
            chain: chain.into(),
        }
    }

    /// An active refresh token `[b; 32]` of the chain `key`.
    fn refresh_token(b: u8, key: ChainKey, expires_at: i64) -> StoredRefreshToken {
        StoredRefreshToken {
            hash: [b; 32],
            chain: key.chain,
            client_id: key.client_id,
            subject: key.subject,
            active: true,
            used_at: None,
            json: "{}".into(),
            expires_at,
        }
    }

    #[test]
    fn step_rows_commit_with_their_compare_and_set_or_not_at_all() {
        let s = SqliteStore::in_memory().unwrap();
        let flow = |stage| StoredFlow {
            id: "f".into(),
            stage,
            json: "{}".into(),
            expires_at: 100,
        };
        let session = |id: &str| StoredSession {
            id: id.into(),
            subject: "s".into(),
            json: "{}".into(),
            expires_at: 100,
        };
        let rt = |b: u8| refresh_token(b, key("s", "c", "ch"), 100);
        let opaque = |b: u8| StoredOpaqueToken {
            hash: [b; 32],
            client_id: "c".into(),
            subject: "s".into(),
            expires_at: 100,
            grant_id: Some("ch".into()),
            ..StoredOpaqueToken::default()
        };
        let rows = |n: &str, b: u8| StepRows {
            refresh_tokens: vec![rt(b)],
            sessions: vec![("userinfo".into(), session(n))],
            revocations: vec![(n.to_string(), 100)],
            opaque_tokens: vec![opaque(b)],
            revoked_opaque_tokens: vec![[b.wrapping_sub(3); 32]],
        };
        s.insert_flow(&flow(4)).unwrap();
        assert!(s.advance_flow_with(4, &flow(5), &rows("won", 1)).unwrap());
        assert!(s.get_refresh_token(&[1; 32]).unwrap().is_some());
        assert!(s.get_session("userinfo", "won").unwrap().is_some());
        // A replay that lost the compare-and-set leaves no row behind.
        assert!(!s.advance_flow_with(4, &flow(5), &rows("lost", 2)).unwrap());
        assert!(s.get_refresh_token(&[2; 32]).unwrap().is_none());
        assert!(s.get_session("userinfo", "lost").unwrap().is_none());
        let revoked: Vec<_> = s.list_revocations(0).unwrap();
        assert_eq!(revoked, vec![("won".to_string(), 100)]);

        assert!(
            s.rotate_refresh_token(&[1; 32], &rt(3), 50, &rows("next", 4))
                .unwrap()
        );
        assert!(s.get_refresh_token(&[4; 32]).unwrap().is_some());
        assert!(s.get_session("userinfo", "next").unwrap().is_some());
        let of = |k: ChainKey| s.refresh_token_of_chain(&k).unwrap();
        assert_eq!(of(key("s", "c", "ch")).unwrap().chain, "ch");
        assert!(of(key("s", "c", "other")).is_none());
        // A chain is found only under its own person and client.
        assert!(of(key("mallory", "c", "ch")).is_none());
        assert!(of(key("s", "other-client", "ch")).is_none());
        // The rotation's rows: the successor's opaque access token in, its predecessor's out.
        assert_eq!(s.get_opaque_token(&[4; 32]).unwrap(), Some(opaque(4)));
        assert_eq!(s.get_opaque_token(&[1; 32]).unwrap(), None);
        assert!(
            !s.rotate_refresh_token(&[1; 32], &rt(5), 51, &rows("late", 6))
                .unwrap()
        );
        assert!(s.get_refresh_token(&[6; 32]).unwrap().is_none());
        assert!(s.get_session("userinfo", "late").unwrap().is_none());
        assert!(s.get_opaque_token(&[6; 32]).unwrap().is_none());
        assert!(
            s.get_opaque_token(&[4; 32]).unwrap().is_some(),
            "a loser deletes nothing"
        );
        assert_eq!(s.list_revocations(0).unwrap().len(), 2);
    }

    #[test]
    fn revoking_a_grant_or_a_consent_deletes_its_opaque_tokens_only() {
        let s = SqliteStore::in_memory().unwrap();
        let token = |b: u8, client: &str, subject: &str, grant: Option<&str>| StoredOpaqueToken {
            hash: [b; 32],
            client_id: client.into(),
            subject: subject.into(),
            expires_at: 100,
            grant_id: grant.map(str::to_string),
            ext: grant.map(|_| r#"{"team":"blue"}"#.to_string()),
            ..StoredOpaqueToken::default()
        };
        let rows = [
            token(1, "web", "alice", Some("g1")),
            token(2, "web", "alice", Some("g1")),
            token(3, "web", "alice", Some("g2")),
            token(4, "app", "alice", Some("g3")),
            // A client_credentials token of a client whose id is a person's name.
            token(5, "alice", "alice", None),
            token(6, "web", "bob", Some("g4")),
        ];
        for t in &rows {
            s.insert_opaque_token(t).unwrap();
        }
        assert_eq!(
            s.get_opaque_token(&[1; 32]).unwrap().as_ref(),
            Some(&rows[0])
        );
        s.revoke_refresh_chain(&key("alice", "web", "g1")).unwrap();
        let alive = |b: u8| s.get_opaque_token(&[b; 32]).unwrap().is_some();
        assert!(!alive(1) && !alive(2));
        assert!(alive(3) && alive(4) && alive(5) && alive(6));
        s.revoke_refresh_tokens_of("alice", Some("app")).unwrap();
        assert!(!alive(4) && alive(3));
        s.revoke_refresh_tokens_of("alice", None).unwrap();
        assert!(!alive(3));
        assert!(alive(5), "a client_credentials token is no consent's");
        assert!(alive(6), "another person's grant");
    }

    #[test]
    fn opaque_tokens_from_before_browser_grants_read_as_the_clients() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A data dir of the schema before the migration, with a client_credentials row.
            let conn = Connection::open(dir.path().join("portcullis.sqlite")).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO opaque_tokens (hash, client_id, scopes, audience, issued_at,
                 expires_at) VALUES (?1, 'm2m', 'read write', 'api', 1, 100)",
                [&[9u8; 32][..]],
            )
            .unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        let old = s.get_opaque_token(&[9; 32]).unwrap().unwrap();
        assert_eq!(
            old,
            StoredOpaqueToken {
                hash: [9; 32],
                client_id: "m2m".into(),
                subject: "m2m".into(),
                scopes: vec!["read".into(), "write".into()],
                audience: vec!["api".into()],
                issued_at: 1,
                expires_at: 100,
                grant_id: None,
                ext: None,
            }
        );
        assert_eq!(s.export().unwrap().opaque_tokens, vec![old]);
    }

    #[test]
    fn purge_deletes_large_backlogs_in_batches() {
        let s = SqliteStore::in_memory().unwrap();
        for i in 0..(PURGE_BATCH * 2 + 5) {
            let expires_at = if i % 2 == 0 { 10 } else { 1000 };
            s.insert_flow(&StoredFlow {
                id: format!("f{i}"),
                stage: 0,
                json: "{}".into(),
                expires_at,
            })
            .unwrap();
        }
        assert_eq!(s.purge_expired(100).unwrap(), PURGE_BATCH + 3);
        assert!(s.get_flow("f0").unwrap().is_none());
        assert!(s.get_flow("f1").unwrap().is_some());
        assert_eq!(s.purge_expired(100).unwrap(), 0);
    }

    #[test]
    fn opaque_tokens_revocations_and_jtis() {
        let s = SqliteStore::in_memory().unwrap();
        let t = StoredOpaqueToken {
            hash: [7; 32],
            client_id: "c".into(),
            subject: "c".into(),
            scopes: vec!["a".into(), "b".into()],
            audience: vec![],
            issued_at: 1,
            expires_at: 50,
            ..StoredOpaqueToken::default()
        };
        s.insert_opaque_token(&t).unwrap();
        assert_eq!(s.get_opaque_token(&[7; 32]).unwrap(), Some(t));
        assert!(s.delete_opaque_token(&[7; 32]).unwrap());
        assert_eq!(s.get_opaque_token(&[7; 32]).unwrap(), None);

        s.insert_revocation("j1", 50).unwrap();
        assert_eq!(
            s.list_revocations(10).unwrap(),
            vec![("j1".to_string(), 50)]
        );
        assert!(s.list_revocations(50).unwrap().is_empty());

        assert!(s.use_assertion_jti("c", "x", 50).unwrap());
        assert!(!s.use_assertion_jti("c", "x", 50).unwrap());
        assert!(s.use_assertion_jti("d", "x", 50).unwrap());
        assert_eq!(s.purge_expired(60).unwrap(), 3);
        assert!(s.use_assertion_jti("c", "x", 100).unwrap());
    }

    /// The row cache must answer what the database holds after every kind of write: a
    /// rotated-out or revoked token read as active would turn reuse detection off.
    #[test]
    fn reads_follow_every_write_through_the_row_cache() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let far = i64::MAX;
        let rt = |b: u8, chain: &str| refresh_token(b, key("alice", "app", chain), far);
        let flow = |stage| StoredFlow {
            id: "f".into(),
            stage,
            json: format!("{{\"stage\":{stage}}}"),
            expires_at: far,
        };
        let active = |b: u8| s.get_refresh_token(&[b; 32]).unwrap().map(|t| t.active);

        s.insert_flow(&flow(4)).unwrap();
        assert_eq!(s.get_flow("f").unwrap(), Some(flow(4)));
        let exchange = StepRows {
            refresh_tokens: vec![rt(1, "g")],
            ..StepRows::default()
        };
        assert!(s.advance_flow_with(4, &flow(5), &exchange).unwrap());
        assert!(
            !s.advance_flow_with(4, &flow(6), &StepRows::default())
                .unwrap()
        );
        assert_eq!(s.get_flow("f").unwrap(), Some(flow(5)));
        assert_eq!(active(1), Some(true));

        assert!(
            s.rotate_refresh_token(&[1; 32], &rt(2, "g"), 7, &StepRows::default())
                .unwrap()
        );
        let old = s.get_refresh_token(&[1; 32]).unwrap().unwrap();
        assert_eq!((old.active, old.used_at), (false, Some(7)));
        assert_eq!(active(2), Some(true));
        assert!(
            !s.rotate_refresh_token(&[1; 32], &rt(3, "g"), 8, &StepRows::default())
                .unwrap()
        );
        assert_eq!(active(3), None, "a lost rotation issued nothing");

        s.revoke_refresh_chain(&key("alice", "app", "g")).unwrap();
        assert_eq!(active(2), Some(false));
        s.insert_refresh_token(&rt(4, "h")).unwrap();
        assert!(
            s.rotate_refresh_token(&[4; 32], &rt(5, "h"), 9, &StepRows::default())
                .unwrap()
        );
        s.revoke_refresh_tokens_of("alice", Some("app")).unwrap();
        assert_eq!(active(5), Some(false));

        // The purge deletes what expired; the cache does not keep it alive.
        let short = StoredFlow {
            id: "short".into(),
            expires_at: 10,
            ..flow(0)
        };
        s.insert_flow(&short).unwrap();
        s.purge_expired(20).unwrap();
        assert_eq!(s.get_flow("short").unwrap(), None);
        assert_eq!(s.get_flow("f").unwrap(), Some(flow(5)));
    }

    #[test]
    fn revocations_keep_across_the_move_to_expiry_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("portcullis.sqlite")).unwrap();
            for m in &MIGRATIONS[..3] {
                conn.execute_batch(m).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute(
                "INSERT INTO revocations (jti, expires_at) VALUES ('old', 70), ('gone', 5)",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        s.insert_revocation("new", 90).unwrap();
        // Revoked again with a later expiry (a token revoked twice): the later one counts.
        s.insert_revocation("old", 80).unwrap();
        s.insert_revocation("old", 80).unwrap();
        let mut live = s.list_revocations(10).unwrap();
        live.sort();
        assert_eq!(
            live,
            vec![
                ("new".to_string(), 90),
                ("old".to_string(), 70),
                ("old".to_string(), 80)
            ]
        );
        assert_eq!(
            s.purge_expired(75).unwrap(),
            2,
            "'gone' and the first 'old'"
        );
        assert_eq!(
            s.list_revocations(75).unwrap(),
            vec![("old".to_string(), 80), ("new".to_string(), 90)]
        );
    }
}
