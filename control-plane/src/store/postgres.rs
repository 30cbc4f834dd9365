//! The shared store: PostgreSQL, for several replicas of the token service.
//!
//! Synchronous `postgres` connections in an `r2d2` pool: the [`Store`] trait is synchronous and
//! its callers already run it on the blocking pool, so a blocking driver needs no bridge between
//! runtimes, and each method stays one SQL statement, close to the SQLite one, prepared once
//! per connection (`conn.rs`).
//!
//! Replicas learn about each other's writes through triggers that `NOTIFY` on
//! [`CHANNEL`] when a client, key or revocation changes (at commit, so a replica that hears of
//! a change can read it). One connection per replica `LISTEN`s ([`Store::watch`]); when it
//! drops, the replica is told ([`Change::Lost`]) and, once back, reloads everything
//! ([`Change::Resync`]), since notifications sent meanwhile are gone. Deletions of opaque
//! tokens are notified too, and applied here to the replica's cache of opaque-token rows
//! (`opaque_cache.rs`), which answers only while the feed is connected.

use super::opaque_cache::OpaqueTokenCache;
use super::{
    ChainKey, Change, ChangeSink, ClientFilter, Snapshot, StepRows, Store, StoreError, StoreLock,
    StoreResult, StoredClient, StoredFlow, StoredKey, StoredOpaqueToken, StoredRefreshToken,
    StoredSession,
};
use conn::{Conn, Statements};
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Row};
use r2d2_postgres::PostgresConnectionManager;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use token_batch::TokenBatches;
use tokio_postgres_rustls::MakeRustlsConnect;

mod conn;
mod tls;
mod token_batch;

/// The channel the change triggers notify on.
pub const CHANNEL: &str = "portcullis_changes";

/// Schema versions, applied in order; `portcullis_schema` records each one applied. The
/// tables mirror the SQLite store's (see `sqlite.rs`); the triggers are what replicas listen to.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY,
    json        TEXT NOT NULL,
    secret_hash TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE keys (
    seq            BIGSERIAL PRIMARY KEY,
    set_name       TEXT NOT NULL,
    kid            TEXT NOT NULL,
    alg            TEXT NOT NULL,
    private_sealed BYTEA NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT,
    UNIQUE (set_name, kid)
);
CREATE TABLE opaque_tokens (
    hash       BYTEA PRIMARY KEY,
    client_id  TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    audience   TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX opaque_tokens_exp ON opaque_tokens(expires_at);
CREATE INDEX opaque_tokens_client ON opaque_tokens(client_id);
CREATE TABLE revocations (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE TABLE assertion_jtis (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX assertion_jtis_exp ON assertion_jtis(expires_at);
CREATE TABLE oidc_flows (
    id         TEXT PRIMARY KEY,
    stage      BIGINT NOT NULL,
    json       TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX oidc_flows_exp ON oidc_flows(expires_at);
CREATE TABLE oidc_sessions (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    subject    TEXT NOT NULL,
    json       TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX oidc_sessions_exp ON oidc_sessions(expires_at);
CREATE INDEX oidc_sessions_subject ON oidc_sessions(kind, subject);
CREATE TABLE refresh_tokens (
    hash       BYTEA PRIMARY KEY,
    chain      TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    active     BOOLEAN NOT NULL,
    used_at    BIGINT,
    json       TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_chain ON refresh_tokens(chain);
CREATE INDEX refresh_tokens_subject ON refresh_tokens(subject, client_id);
CREATE INDEX refresh_tokens_exp ON refresh_tokens(expires_at);

CREATE FUNCTION portcullis_notify_client() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_changes',
        'client ' || CASE WHEN TG_OP = 'DELETE' THEN OLD.client_id ELSE NEW.client_id END);
    RETURN NULL;
END $$;
CREATE TRIGGER clients_changed AFTER INSERT OR UPDATE OR DELETE ON clients
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_client();
CREATE FUNCTION portcullis_notify_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_changes', 'keys');
    RETURN NULL;
END $$;
CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_notify_keys();
-- A payload is at most 8000 bytes: a longer jti is announced as "reload all revocations".
CREATE FUNCTION portcullis_notify_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF octet_length(NEW.jti) > 4000 THEN
        PERFORM pg_notify('portcullis_changes', 'resync');
    ELSE
        PERFORM pg_notify('portcullis_changes',
            'revocation ' || NEW.expires_at || ' ' || NEW.jti);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER revocations_changed AFTER INSERT OR UPDATE ON revocations
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_revocation();
"#,
    // Opaque access tokens of browser grants (as the SQLite store's migration 3).
    r#"
ALTER TABLE opaque_tokens ADD COLUMN subject TEXT, ADD COLUMN grant_id TEXT,
    ADD COLUMN ext TEXT;
CREATE INDEX opaque_tokens_grant ON opaque_tokens(grant_id) WHERE grant_id IS NOT NULL;
CREATE INDEX opaque_tokens_subject ON opaque_tokens(subject, client_id)
    WHERE grant_id IS NOT NULL;
"#,
    r#"
-- Every replica caches opaque-token rows (see opaque_cache.rs): a deletion must reach them
-- all. One notification per statement: the hashes deleted, or "opaque-many" (forget every
-- cached row) when they would not fit a payload. The purge of expired rows, which no replica
-- answers from anyway, announces nothing.
CREATE FUNCTION portcullis_notify_opaque_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n       bigint;
    payload text;
BEGIN
    IF current_setting('portcullis.purging', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT count(*) INTO n FROM deleted;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    IF n <= 100 THEN
        SELECT 'opaque ' || string_agg(encode(hash, 'hex'), ' ') INTO payload FROM deleted;
    END IF;
    IF payload IS NULL OR octet_length(payload) > 7900 THEN
        payload := 'opaque-many';
    END IF;
    PERFORM pg_notify('portcullis_changes', payload);
    RETURN NULL;
END $$;
CREATE TRIGGER opaque_tokens_deleted AFTER DELETE ON opaque_tokens
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_notify_opaque_deleted();
"#,
];

/// Serialises schema changes between replicas starting together (any constant of our own).
const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c01;

/// Rows deleted per statement when purging the browser-flow tables.
const PURGE_BATCH: i64 = 1000;

/// How the pool connects and how long statements may run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most connections the pool opens.
    pub max_conns: u32,
    /// Longest a statement may run before PostgreSQL cancels it.
    pub statement_timeout: Duration,
    /// Longest to wait for a connection (pool or new) before a request fails with 503.
    pub connect_timeout: Duration,
    /// Extra PEM CA certificates trusted for the server (besides the web PKI, except with
    /// `sslmode=verify-ca` or `sslrootcert=FILE`: see `tls.rs`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Most opaque-token rows a replica keeps in memory (0: none; see `opaque_cache.rs`).
    pub opaque_token_cache: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_conns: 16,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            ca_file: None,
            opaque_token_cache: 100_000,
        }
    }
}

/// The pool's connections. r2d2 keeps only the `Display` of a failed connect, so the error
/// here shows its cause (which certificate check failed, what the server refused).
struct Manager(PostgresConnectionManager<MakeRustlsConnect>);

#[derive(Debug)]
struct ConnectError(postgres::Error);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl std::error::Error for ConnectError {}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = ConnectError;

    fn connect(&self) -> Result<Conn, ConnectError> {
        self.0.connect().map(Conn::new).map_err(ConnectError)
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), ConnectError> {
        self.0.is_valid(conn.client()).map_err(ConnectError)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        self.0.has_broken(conn.client())
    }
}

/// The driver's `Display` says just "db error" for what the server said, and leaves out the
/// cause of the rest (the certificate error under "error performing TLS handshake").
fn describe(e: &postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        return format!("{}: {}", d.code().code(), d.message());
    }
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}

pub struct PostgresStore {
    /// Always `Some` until dropped (see the `Drop` impl).
    pool: Option<r2d2::Pool<Manager>>,
    /// Opaque tokens, group-committed on a connection of their own.
    tokens: TokenBatches,
    /// Opaque-token rows read before, kept current by the change feed.
    opaque: Arc<OpaqueTokenCache>,
    config: postgres::Config,
    tls: MakeRustlsConnect,
}

fn db(e: postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return StoreError::Conflict(e.as_db_error().map_or_else(
            || "row".to_string(),
            |d| d.detail().unwrap_or(d.message()).to_string(),
        ));
    }
    StoreError::Database(describe(&e))
}

fn unavailable(e: r2d2::Error) -> StoreError {
    StoreError::Database(format!("no database connection: {e}"))
}

/// Why the DSN or the TLS setup cannot be used (start-up only).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --dsn: {0}")]
    Dsn(String),
    /// `path` names the setting too (`--dsn-ca-file`, `sslrootcert`, `sslcert`).
    #[error("{path}: {detail}")]
    CaFile { path: String, detail: String },
}

/// The DSN without its password, for logs and errors.
pub fn redact(dsn: &str) -> String {
    match url::Url::parse(dsn) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<dsn>".to_string(),
    }
}

/// The sync driver closes each connection by blocking on a runtime of its own, which panics (and
/// aborts the process) on a tokio worker thread, where the service may drop its last reference
/// at shutdown. The pool is therefore dropped on a plain thread.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        let pool = self.pool.take();
        let writer = self.tokens.close();
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::spawn(move || drop((pool, writer)));
        }
    }
}

impl PostgresStore {
    /// Connects lazily (the pool opens connections on demand). Nothing is checked against the
    /// server here: [`Self::migrate`] is the first statement.
    pub fn connect(dsn: &str, opts: &Options) -> Result<Self, ConfigError> {
        let (dsn, tls_params) = tls::split(dsn)?;
        let mut config =
            postgres::Config::from_str(&dsn).map_err(|e| ConfigError::Dsn(e.to_string()))?;
        config.ssl_mode(tls_params.driver_mode());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(opts.connect_timeout);
        }
        let timeout_ms = opts.statement_timeout.as_millis().max(1);
        // Appended to any options the DSN has: ours must win.
        let options = format!(
            "{} -c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms} -c client_min_messages=warning",
            config.get_options().unwrap_or("")
        );
        config.options(options.trim());
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("portcullis");
        }
        let tls = tls::connector(&tls_params, opts.ca_file.as_deref())?;
        let manager = Manager(PostgresConnectionManager::new(config.clone(), tls.clone()));
        let pool = r2d2::Pool::builder()
            .max_size(opts.max_conns.max(1))
            .min_idle(Some(0))
            .connection_timeout(opts.connect_timeout)
            // A checkout costs no round trip; a broken connection is noticed by its query
            // failing, and r2d2 drops connections whose socket closed.
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        Ok(Self {
            pool: Some(pool),
            tokens: TokenBatches::new(config.clone(), tls.clone()),
            opaque: Arc::new(OpaqueTokenCache::new(opts.opaque_token_cache)),
            config,
            tls,
        })
    }

    fn conn(&self) -> StoreResult<r2d2::PooledConnection<Manager>> {
        match &self.pool {
            Some(pool) => pool.get().map_err(unavailable),
            None => Err(StoreError::Database("the store is closed".into())),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>) -> StoreResult<T> {
        let mut c = self.conn()?;
        f(&mut c).map_err(db)
    }

    /// Applies pending migrations (idempotent; replicas starting together take turns). Refuses a
    /// schema newer than this binary knows. Returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<usize>, MigrateError> {
        let mut c = self.conn()?;
        let mut tx = c.client().transaction().map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS portcullis_schema (
                 version    INTEGER PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             )",
        )
        .map_err(db)?;
        let current: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM portcullis_schema",
                &[],
            )
            .map_err(db)?
            .get(0);
        let current = usize::try_from(current).unwrap_or(0);
        if current > MIGRATIONS.len() {
            return Err(MigrateError::TooNew {
                found: current,
                known: MIGRATIONS.len(),
            });
        }
        let mut applied = Vec::new();
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.batch_execute(sql).map_err(db)?;
            tx.execute(
                "INSERT INTO portcullis_schema (version, applied_at)
                 VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
                &[&version],
            )
            .map_err(db)?;
            applied.push(i + 1);
        }
        tx.commit().map_err(db)?;
        Ok(applied)
    }

    fn read_opaque_token(&self, hash: &[u8; 32]) -> StoreResult<Option<StoredOpaqueToken>> {
        self.with(|c| {
            c.query_opt(
                &format!("SELECT {OPAQUE_COLUMNS} FROM opaque_tokens WHERE hash = $1"),
                &[&&hash[..]],
            )
        })
        .map(|r| r.as_ref().map(opaque_row))
    }

    /// Opaque tokens waiting for the next group commit (not counting the batch being written).
    pub fn queued_opaque_tokens(&self) -> usize {
        self.tokens.queued()
    }

    /// The schema version this binary writes.
    pub fn schema_version() -> usize {
        MIGRATIONS.len()
    }

    /// Copies `snap` in, in one transaction; rows already present are kept (so a repeated
    /// import is harmless). Returns the rows inserted.
    pub fn import(&self, snap: &Snapshot) -> StoreResult<u64> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let mut n = 0;
            for cl in &snap.clients {
                n += tx.execute(
                    "INSERT INTO clients (client_id, json, secret_hash, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        &cl.client_id,
                        &cl.json,
                        &cl.secret_hash,
                        &cl.created_at,
                        &cl.updated_at,
                    ],
                )?;
            }
            for k in &snap.keys {
                n += tx.execute(
                    "INSERT INTO keys (set_name, kid, alg, private_sealed, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[
                        &k.set,
                        &k.kid,
                        &k.alg,
                        &k.private_sealed,
                        &k.created_at,
                        &k.expires_at,
                    ],
                )?;
            }
            for t in &snap.opaque_tokens {
                n += insert_opaque(&mut tx, t, true)?;
            }
            for (jti, exp) in &snap.revocations {
                n += tx.execute(
                    "INSERT INTO revocations (jti, expires_at) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[jti, exp],
                )?;
            }
            for (client, jti, exp) in &snap.assertion_jtis {
                n += tx.execute(
                    "INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[client, jti, exp],
                )?;
            }
            for f in &snap.flows {
                n += tx.execute(
                    "INSERT INTO oidc_flows (id, stage, json, expires_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&f.id, &f.stage, &f.json, &f.expires_at],
                )?;
            }
            for (kind, s) in &snap.sessions {
                n += tx.execute(
                    "INSERT INTO oidc_sessions (kind, id, subject, json, expires_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[kind, &s.id, &s.subject, &s.json, &s.expires_at],
                )?;
            }
            for t in &snap.refresh_tokens {
                n += insert_refresh(&mut tx, t, true)?;
            }
            tx.commit()?;
            Ok(n)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database schema is version {found}, newer than this portcullis knows ({known}): \
         run a newer portcullis"
    )]
    TooNew { found: usize, known: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn client_row(r: &Row) -> StoredClient {
    StoredClient {
        client_id: r.get(0),
        json: r.get(1),
        secret_hash: r.get(2),
        created_at: r.get(3),
        updated_at: r.get(4),
    }
}

fn key_row(r: &Row) -> StoredKey {
    StoredKey {
        set: r.get(0),
        kid: r.get(1),
        alg: r.get(2),
        private_sealed: r.get(3),
        created_at: r.get(4),
        expires_at: r.get(5),
    }
}

fn flow_row(r: &Row) -> StoredFlow {
    StoredFlow {
        id: r.get(0),
        stage: r.get(1),
        json: r.get(2),
        expires_at: r.get(3),
    }
}

fn session_row(r: &Row) -> StoredSession {
    StoredSession {
        id: r.get(0),
        subject: r.get(1),
        json: r.get(2),
        expires_at: r.get(3),
    }
}

fn hash32(bytes: &[u8]) -> [u8; 32] {
    let mut h = [0u8; 32];
    if bytes.len() == 32 {
        h.copy_from_slice(bytes);
    }
    h
}

fn refresh_row(r: &Row) -> StoredRefreshToken {
    StoredRefreshToken {
        hash: hash32(r.get(0)),
        chain: r.get(1),
        client_id: r.get(2),
        subject: r.get(3),
        active: r.get(4),
        used_at: r.get(5),
        json: r.get(6),
        expires_at: r.get(7),
    }
}

const REFRESH_COLUMNS: &str = "hash, chain, client_id, subject, active, used_at, json, expires_at";

/// The columns [`opaque_row`] reads.
const OPAQUE_COLUMNS: &str = "hash, client_id, COALESCE(subject, client_id), scopes, audience,
     issued_at, expires_at, grant_id, ext";

fn opaque_row(r: &Row) -> StoredOpaqueToken {
    StoredOpaqueToken {
        hash: hash32(r.get(0)),
        client_id: r.get(1),
        subject: r.get(2),
        scopes: split_list(r.get(3)),
        audience: split_list(r.get(4)),
        issued_at: r.get(5),
        expires_at: r.get(6),
        grant_id: r.get(7),
        ext: r.get(8),
    }
}

fn insert_opaque(
    c: &mut impl Statements,
    t: &StoredOpaqueToken,
    keep_existing: bool,
) -> Result<u64, postgres::Error> {
    let sql = if keep_existing {
        "INSERT INTO opaque_tokens
         (hash, client_id, subject, scopes, audience, issued_at, expires_at, grant_id, ext)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING"
    } else {
        "INSERT INTO opaque_tokens
         (hash, client_id, subject, scopes, audience, issued_at, expires_at, grant_id, ext)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    };
    c.execute(
        sql,
        &[
            &&t.hash[..],
            &t.client_id,
            &t.subject,
            &t.scopes.join(" "),
            &t.audience.join(" "),
            &t.issued_at,
            &t.expires_at,
            &t.grant_id,
            &t.ext,
        ],
    )
}

fn advance_flow(
    c: &mut impl Statements,
    from: i64,
    f: &StoredFlow,
) -> Result<u64, postgres::Error> {
    c.execute(
        "UPDATE oidc_flows SET stage = $3, json = $4, expires_at = $5
         WHERE id = $1 AND stage = $2",
        &[&f.id, &from, &f.stage, &f.json, &f.expires_at],
    )
}

fn put_session(
    c: &mut impl Statements,
    kind: &str,
    s: &StoredSession,
) -> Result<u64, postgres::Error> {
    c.execute(
        "INSERT INTO oidc_sessions (kind, id, subject, json, expires_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (kind, id) DO UPDATE SET subject = EXCLUDED.subject,
             json = EXCLUDED.json, expires_at = EXCLUDED.expires_at",
        &[&kind, &s.id, &s.subject, &s.json, &s.expires_at],
    )
}

fn insert_revocation(
    c: &mut impl Statements,
    jti: &str,
    expires_at: i64,
) -> Result<u64, postgres::Error> {
    c.execute(
        "INSERT INTO revocations (jti, expires_at) VALUES ($1, $2)
         ON CONFLICT (jti) DO UPDATE SET expires_at = EXCLUDED.expires_at",
        &[&jti, &expires_at],
    )
}

fn step_rows_empty(rows: &StepRows) -> bool {
    rows.refresh_tokens.is_empty()
        && rows.sessions.is_empty()
        && rows.revocations.is_empty()
        && rows.opaque_tokens.is_empty()
        && rows.revoked_opaque_tokens.is_empty()
}

/// The rows of a step, inside the transaction of its compare-and-set.
fn write_step_rows(c: &mut impl Statements, rows: &StepRows) -> Result<(), postgres::Error> {
    for t in &rows.refresh_tokens {
        insert_refresh(c, t, false)?;
    }
    for (kind, s) in &rows.sessions {
        put_session(c, kind, s)?;
    }
    for (jti, exp) in &rows.revocations {
        insert_revocation(c, jti, *exp)?;
    }
    for t in &rows.opaque_tokens {
        insert_opaque(c, t, false)?;
    }
    for h in &rows.revoked_opaque_tokens {
        c.execute("DELETE FROM opaque_tokens WHERE hash = $1", &[&&h[..]])?;
    }
    Ok(())
}

fn insert_refresh(
    c: &mut impl Statements,
    t: &StoredRefreshToken,
    keep_existing: bool,
) -> Result<u64, postgres::Error> {
    let sql = if keep_existing {
        "INSERT INTO refresh_tokens
         (hash, chain, client_id, subject, active, used_at, json, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
    } else {
        "INSERT INTO refresh_tokens
         (hash, chain, client_id, subject, active, used_at, json, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    };
    c.execute(
        sql,
        &[
            &&t.hash[..],
            &t.chain,
            &t.client_id,
            &t.subject,
            &t.active,
            &t.used_at,
            &t.json,
            &t.expires_at,
        ],
    )
}

fn split_list(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// What a notification payload says changed; `None` for a payload we do not know (a newer
/// replica's), which is treated as "reload everything".
fn parse_change(payload: &str) -> Change {
    let (kind, rest) = payload.split_once(' ').unwrap_or((payload, ""));
    match kind {
        "client" => Change::Client(rest.to_string()),
        "keys" => Change::Keys,
        "revocation" => match rest.split_once(' ') {
            Some((exp, jti)) => match exp.parse() {
                Ok(expires_at) => Change::Revocation {
                    jti: jti.to_string(),
                    expires_at,
                },
                Err(_) => Change::Resync,
            },
            None => Change::Resync,
        },
        _ => Change::Resync,
    }
}

/// How often the listening connection is checked while nothing is heard.
const LISTEN_IDLE_CHECK: Duration = Duration::from_secs(1);

/// Opaque tokens deleted, as the `opaque_tokens_deleted` trigger announces them.
#[derive(Debug, PartialEq)]
enum OpaqueDeletion {
    Rows(Vec<[u8; 32]>),
    /// Too many to name (or a payload we cannot read): forget every cached row.
    Many,
}

/// `None` for a payload about anything else.
fn parse_opaque_deletion(payload: &str) -> Option<OpaqueDeletion> {
    if payload == "opaque-many" {
        return Some(OpaqueDeletion::Many);
    }
    let hashes = payload.strip_prefix("opaque ")?;
    let rows: Option<Vec<[u8; 32]>> = hashes
        .split(' ')
        .map(|h| {
            let bytes = hex::decode(h).ok()?;
            <[u8; 32]>::try_from(bytes.as_slice()).ok()
        })
        .collect();
    Some(rows.map_or(OpaqueDeletion::Many, OpaqueDeletion::Rows))
}

/// Listens on [`CHANNEL`] until `sink` says stop, reconnecting with a short backoff. Opaque
/// tokens' deletions are applied to `opaque` here; everything else goes to `sink`.
fn listen(
    config: &postgres::Config,
    tls: &MakeRustlsConnect,
    opaque: &OpaqueTokenCache,
    sink: &ChangeSink,
) {
    let mut connected_before = false;
    loop {
        let mut client = match config.connect(tls.clone()) {
            Ok(c) => c,
            Err(e) => {
                if connected_before {
                    tracing::debug!(error = %db(e), "change feed: reconnecting");
                }
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(error = %db(e), "change feed: LISTEN failed");
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        if connected_before {
            tracing::info!("change feed reconnected: reloading clients, keys and revocations");
        }
        connected_before = true;
        opaque.resynced();
        if !sink(Change::Resync) {
            return;
        }
        loop {
            let next = client
                .notifications()
                .timeout_iter(LISTEN_IDLE_CHECK)
                .next();
            match next {
                Ok(Some(n)) => {
                    match parse_opaque_deletion(n.payload()) {
                        Some(OpaqueDeletion::Rows(hashes)) => {
                            hashes.iter().for_each(|h| opaque.evict(h));
                        }
                        Some(OpaqueDeletion::Many) => opaque.clear(),
                        None => {
                            let change = parse_change(n.payload());
                            // A payload we do not know may have been a deletion.
                            if change == Change::Resync {
                                opaque.clear();
                            }
                            if !sink(change) {
                                return;
                            }
                        }
                    }
                }
                // Quiet: make sure the connection is still there (a vanished server may leave
                // a half-open socket that never errors by itself).
                Ok(None) => {
                    if let Err(e) = client.simple_query("SELECT 1") {
                        tracing::warn!(error = %db(e), "change feed lost");
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %db(e), "change feed lost");
                    break;
                }
            }
        }
        opaque.lost();
        if !sink(Change::Lost) {
            return;
        }
    }
}

/// Holds a session-level advisory lock on its own connection: closing the connection (on drop,
/// or if the process dies) is what releases it, so a crashed replica cannot leave it held.
struct AdvisoryLock {
    _client: Client,
}

/// A stable 64-bit lock id for a critical section's name.
fn lock_id(name: &str) -> i64 {
    let digest = crate::crypto::sha256(format!("portcullis lock {name}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(b)
}

impl Store for PostgresStore {
    fn ping(&self) -> StoreResult<()> {
        self.with(|c| c.client().simple_query("SELECT 1").map(|_| ()))
    }

    fn shared(&self) -> bool {
        true
    }

    fn watch(&self, sink: ChangeSink) -> StoreResult<()> {
        let mut config = self.config.clone();
        // Tells operators (and tests) which backend is the feed.
        if config.get_application_name() == Some("portcullis") {
            config.application_name("portcullis-change-feed");
        }
        let tls = self.tls.clone();
        let opaque = Arc::clone(&self.opaque);
        std::thread::Builder::new()
            .name("portcullis-change-feed".into())
            .spawn(move || {
                listen(&config, &tls, &opaque, &sink);
                opaque.lost();
            })
            .map(|_| ())
            .map_err(|e| StoreError::Database(format!("starting the change feed: {e}")))
    }

    fn lock(&self, name: &str) -> StoreResult<StoreLock> {
        let mut client = self.config.connect(self.tls.clone()).map_err(db)?;
        // A longer timeout for the wait itself: the holder may be generating an RSA key.
        client
            .batch_execute("SET statement_timeout = '60s'")
            .map_err(db)?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&lock_id(name)])
            .map_err(db)?;
        Ok(Box::new(AdvisoryLock { _client: client }))
    }

    fn insert_client(&self, client: &StoredClient) -> StoreResult<()> {
        let res = self.with(|c| {
            c.execute(
                "INSERT INTO clients (client_id, json, secret_hash, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &client.client_id,
                    &client.json,
                    &client.secret_hash,
                    &client.created_at,
                    &client.updated_at,
                ],
            )
        });
        match res {
            Err(StoreError::Conflict(_)) => Err(StoreError::Conflict(format!(
                "client {:?}",
                client.client_id
            ))),
            other => other.map(|_| ()),
        }
    }

    fn update_client(&self, client: &StoredClient) -> StoreResult<bool> {
        self.with(|c| {
            c.execute(
                "UPDATE clients SET json = $2, secret_hash = $3, updated_at = $4
                 WHERE client_id = $1",
                &[
                    &client.client_id,
                    &client.json,
                    &client.secret_hash,
                    &client.updated_at,
                ],
            )
        })
        .map(|n| n > 0)
    }

    fn delete_client(&self, client_id: &str) -> StoreResult<bool> {
        self.with(|c| c.execute("DELETE FROM clients WHERE client_id = $1", &[&client_id]))
            .map(|n| n > 0)
    }

    fn get_client(&self, client_id: &str) -> StoreResult<Option<StoredClient>> {
        self.with(|c| {
            c.query_opt(
                "SELECT client_id, json, secret_hash, created_at, updated_at
                 FROM clients WHERE client_id = $1",
                &[&client_id],
            )
        })
        .map(|r| r.as_ref().map(client_row))
    }

    fn list_clients(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &ClientFilter,
    ) -> StoreResult<Vec<StoredClient>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c| {
            c.query(
                "SELECT client_id, json, secret_hash, created_at, updated_at FROM clients
                 WHERE ($1::text IS NULL OR client_id > $1)
                   AND ($3::text IS NULL OR json::jsonb ->> 'client_name' = $3)
                   AND ($4::text IS NULL OR json::jsonb ->> 'owner' = $4)
                 ORDER BY client_id COLLATE \"C\" LIMIT $2",
                &[&after, &limit, &filter.client_name, &filter.owner],
            )
        })
        .map(|rows| rows.iter().map(client_row).collect())
    }

    fn insert_key(&self, key: &StoredKey) -> StoreResult<()> {
        let res = self.with(|c| {
            c.execute(
                "INSERT INTO keys (set_name, kid, alg, private_sealed, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &key.set,
                    &key.kid,
                    &key.alg,
                    &key.private_sealed,
                    &key.created_at,
                    &key.expires_at,
                ],
            )
        });
        match res {
            Err(StoreError::Conflict(_)) => Err(StoreError::Conflict(format!(
                "key {:?} in set {:?}",
                key.kid, key.set
            ))),
            other => other.map(|_| ()),
        }
    }

    fn retire_keys(&self, set: &str, keep_kid: &str, expires_at: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "UPDATE keys SET expires_at = $3
                 WHERE set_name = $1 AND kid != $2 AND expires_at IS NULL",
                &[&set, &keep_kid, &expires_at],
            )
        })
        .map(|_| ())
    }

    fn delete_key(&self, set: &str, kid: &str) -> StoreResult<bool> {
        self.with(|c| {
            c.execute(
                "DELETE FROM keys WHERE set_name = $1 AND kid = $2",
                &[&set, &kid],
            )
        })
        .map(|n| n > 0)
    }

    fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
        self.with(|c| {
            c.query(
                "SELECT set_name, kid, alg, private_sealed, created_at, expires_at
                 FROM keys ORDER BY seq",
                &[],
            )
        })
        .map(|rows| rows.iter().map(key_row).collect())
    }

    fn insert_opaque_token(&self, t: &StoredOpaqueToken) -> StoreResult<()> {
        self.tokens.insert(t.clone())
    }

    fn cached_opaque_token(&self, hash: &[u8; 32]) -> Option<StoredOpaqueToken> {
        self.opaque.get(hash)
    }

    fn get_opaque_token(&self, hash: &[u8; 32]) -> StoreResult<Option<StoredOpaqueToken>> {
        self.opaque
            .get_or_read(hash, crate::clock::now(), || self.read_opaque_token(hash))
    }

    fn delete_opaque_token(&self, hash: &[u8; 32]) -> StoreResult<bool> {
        let deleted = self
            .with(|c| c.execute("DELETE FROM opaque_tokens WHERE hash = $1", &[&&hash[..]]))
            .map(|n| n > 0);
        self.opaque.evict(hash);
        deleted
    }

    fn delete_client_tokens(&self, client_id: &str) -> StoreResult<()> {
        let deleted = self
            .with(|c| {
                c.execute(
                    "DELETE FROM opaque_tokens WHERE client_id = $1",
                    &[&client_id],
                )
            })
            .map(|_| ());
        self.opaque.evict_client(client_id);
        deleted
    }
    fn insert_revocation(&self, jti: &str, expires_at: i64) -> StoreResult<()> {
        self.with(|c| insert_revocation(c, jti, expires_at))
            .map(|_| ())
    }

    fn list_revocations(&self, now: i64) -> StoreResult<Vec<(String, i64)>> {
        self.with(|c| {
            c.query(
                "SELECT jti, expires_at FROM revocations WHERE expires_at > $1",
                &[&now],
            )
        })
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn use_assertion_jti(&self, client_id: &str, jti: &str, expires_at: i64) -> StoreResult<bool> {
        self.with(|c| {
            c.execute(
                "INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&client_id, &jti, &expires_at],
            )
        })
        .map(|n| n > 0)
    }

    fn insert_flow(&self, f: &StoredFlow) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO oidc_flows (id, stage, json, expires_at) VALUES ($1, $2, $3, $4)",
                &[&f.id, &f.stage, &f.json, &f.expires_at],
            )
        })
        .map(|_| ())
    }

    fn get_flow(&self, id: &str) -> StoreResult<Option<StoredFlow>> {
        self.with(|c| {
            c.query_opt(
                "SELECT id, stage, json, expires_at FROM oidc_flows WHERE id = $1",
                &[&id],
            )
        })
        .map(|r| r.as_ref().map(flow_row))
    }

    fn advance_flow_with(&self, from: i64, f: &StoredFlow, rows: &StepRows) -> StoreResult<bool> {
        if step_rows_empty(rows) {
            return self.with(|c| advance_flow(c, from, f)).map(|n| n == 1);
        }
        let won = self.with(|c| {
            let mut tx = c.transaction()?;
            let won = advance_flow(&mut tx, from, f)? == 1;
            if won {
                write_step_rows(&mut tx, rows)?;
                tx.commit()?;
            }
            Ok(won)
        });
        // The change feed tells every replica too, a moment later; this one must not answer
        // from its cache in between.
        self.opaque.evict_all(&rows.revoked_opaque_tokens);
        won
    }

    fn put_session(&self, kind: &str, s: &StoredSession) -> StoreResult<()> {
        self.with(|c| put_session(c, kind, s)).map(|_| ())
    }

    fn get_session(&self, kind: &str, id: &str) -> StoreResult<Option<StoredSession>> {
        self.with(|c| {
            c.query_opt(
                "SELECT id, subject, json, expires_at FROM oidc_sessions
                 WHERE kind = $1 AND id = $2",
                &[&kind, &id],
            )
        })
        .map(|r| r.as_ref().map(session_row))
    }

    fn delete_session(&self, kind: &str, id: &str) -> StoreResult<bool> {
        self.with(|c| {
            c.execute(
                "DELETE FROM oidc_sessions WHERE kind = $1 AND id = $2",
                &[&kind, &id],
            )
        })
        .map(|n| n > 0)
    }

    fn list_sessions(&self, kind: &str, subject: &str) -> StoreResult<Vec<StoredSession>> {
        self.with(|c| {
            c.query(
                "SELECT id, subject, json, expires_at FROM oidc_sessions
                 WHERE kind = $1 AND subject = $2 ORDER BY id COLLATE \"C\"",
                &[&kind, &subject],
            )
        })
        .map(|rows| rows.iter().map(session_row).collect())
    }

    fn delete_sessions(&self, kind: &str, subject: &str) -> StoreResult<usize> {
        self.with(|c| {
            c.execute(
                "DELETE FROM oidc_sessions WHERE kind = $1 AND subject = $2",
                &[&kind, &subject],
            )
        })
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn insert_refresh_token(&self, t: &StoredRefreshToken) -> StoreResult<()> {
        self.with(|c| insert_refresh(c, t, false)).map(|_| ())
    }

    fn get_refresh_token(&self, hash: &[u8; 32]) -> StoreResult<Option<StoredRefreshToken>> {
        self.with(|c| {
            c.query_opt(
                &format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE hash = $1"),
                &[&&hash[..]],
            )
        })
        .map(|r| r.as_ref().map(refresh_row))
    }

    fn refresh_token_of_chain(&self, key: &ChainKey) -> StoreResult<Option<StoredRefreshToken>> {
        self.with(|c| {
            c.query_opt(
                &format!(
                    "SELECT {REFRESH_COLUMNS} FROM refresh_tokens
                     WHERE chain = $1 AND subject = $2 AND client_id = $3 LIMIT 1"
                ),
                &[&key.chain, &key.subject, &key.client_id],
            )
        })
        .map(|r| r.as_ref().map(refresh_row))
    }

    fn rotate_refresh_token(
        &self,
        old: &[u8; 32],
        new: &StoredRefreshToken,
        now: i64,
        rows: &StepRows,
    ) -> StoreResult<bool> {
        let won = self.with(|c| {
            let mut tx = c.transaction()?;
            let won = tx.execute(
                "UPDATE refresh_tokens SET active = FALSE, used_at = $2
                 WHERE hash = $1 AND active",
                &[&&old[..], &now],
            )? == 1;
            if won {
                insert_refresh(&mut tx, new, false)?;
                write_step_rows(&mut tx, rows)?;
                tx.commit()?;
            }
            Ok(won)
        });
        self.opaque.evict_all(&rows.revoked_opaque_tokens);
        won
    }

    fn revoke_refresh_chain(&self, key: &ChainKey) -> StoreResult<Vec<StoredRefreshToken>> {
        let revoked = self
            .with(|c| {
                c.query(
                    // One statement: the data-modifying CTE commits with the update.
                    &format!(
                        "WITH gone AS (DELETE FROM opaque_tokens WHERE grant_id = $1)
                     UPDATE refresh_tokens SET active = FALSE, used_at = NULL
                     WHERE chain = $1 AND subject = $2 AND client_id = $3
                     RETURNING {REFRESH_COLUMNS}"
                    ),
                    &[&key.chain, &key.subject, &key.client_id],
                )
            })
            .map(|rows| rows.iter().map(refresh_row).collect());
        self.opaque.evict_grant(&key.chain);
        revoked
    }

    fn revoke_refresh_tokens_of(
        &self,
        subject: &str,
        client_id: Option<&str>,
    ) -> StoreResult<Vec<StoredRefreshToken>> {
        let revoked = self
            .with(|c| {
                c.query(
                    &format!(
                        "WITH gone AS (DELETE FROM opaque_tokens WHERE grant_id IS NOT NULL
                         AND subject = $1 AND ($2::text IS NULL OR client_id = $2))
                     UPDATE refresh_tokens SET active = FALSE, used_at = NULL
                     WHERE subject = $1 AND ($2::text IS NULL OR client_id = $2)
                     RETURNING {REFRESH_COLUMNS}"
                    ),
                    &[&subject, &client_id],
                )
            })
            .map(|rows| rows.iter().map(refresh_row).collect());
        self.opaque.evict_subject(subject, client_id);
        revoked
    }

    fn purge_expired(&self, now: i64) -> StoreResult<usize> {
        // Batches keep each statement short (and under the statement timeout) on a backlog.
        let mut n: u64 = 0;
        for table in [
            "oidc_flows",
            "oidc_sessions",
            "refresh_tokens",
            "opaque_tokens",
            "revocations",
            "assertion_jtis",
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE ctid IN
                 (SELECT ctid FROM {table} WHERE expires_at <= $1 LIMIT {PURGE_BATCH})"
            );
            loop {
                let deleted = self.with(|c| {
                    let mut tx = c.transaction()?;
                    // Expired rows are gone for every replica already: no notification.
                    tx.execute("SELECT set_config('portcullis.purging', 'on', true)", &[])?;
                    let n = tx.execute(&sql, &[&now])?;
                    tx.commit()?;
                    Ok(n)
                })?;
                n += deleted;
                if deleted < u64::try_from(PURGE_BATCH).unwrap_or(u64::MAX) {
                    break;
                }
            }
        }
        n += self.with(|c| {
            c.execute(
                "DELETE FROM keys WHERE expires_at IS NOT NULL AND expires_at <= $1",
                &[&now],
            )
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_payloads_parse() {
        assert_eq!(parse_change("client a b"), Change::Client("a b".into()));
        assert_eq!(parse_change("keys"), Change::Keys);
        assert_eq!(
            parse_change("revocation 42 j 1"),
            Change::Revocation {
                jti: "j 1".into(),
                expires_at: 42
            }
        );
        // Anything unknown or malformed reloads everything rather than being ignored.
        assert_eq!(parse_change("revocation x j"), Change::Resync);
        assert_eq!(parse_change("revocation"), Change::Resync);
        assert_eq!(parse_change("something-new 1"), Change::Resync);
        assert_eq!(parse_change(""), Change::Resync);
    }

    #[test]
    fn opaque_deletion_payloads_parse() {
        let (h1, h2) = ("01".repeat(32), "ab".repeat(32));
        assert_eq!(
            parse_opaque_deletion(&format!("opaque {h1} {h2}")),
            Some(OpaqueDeletion::Rows(vec![[1; 32], [0xab; 32]]))
        );
        assert_eq!(
            parse_opaque_deletion("opaque-many"),
            Some(OpaqueDeletion::Many)
        );
        // A hash we cannot read forgets everything rather than nothing.
        for bad in [
            "opaque zz",
            "opaque 0102",
            "opaque ",
            &format!("opaque {h1}  {h2}"),
        ] {
            assert_eq!(
                parse_opaque_deletion(bad),
                Some(OpaqueDeletion::Many),
                "{bad}"
            );
        }
        assert_eq!(parse_opaque_deletion("client opaque"), None);
        assert_eq!(parse_opaque_deletion("opaqueness"), None);
    }

    #[test]
    fn dsn_errors_and_redaction() {
        assert!(matches!(
            PostgresStore::connect("postgres://u@h/db?sslmode=bogus", &Options::default()),
            Err(ConfigError::Dsn(_))
        ));
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?sslmode=require"),
            "postgres://u:****@h:5432/db?sslmode=require"
        );
        assert!(!redact("host=h password=secret").contains("secret"));
        assert_ne!(lock_id("keys"), lock_id("keys2"));
    }
}
