//! Persistence behind one object-safe trait: the embedded SQLite store for one process, or
//! PostgreSQL shared by several replicas. Methods are synchronous: async callers run them on the
//! blocking pool ([`on_blocking_pool`]), except on the request path of browser flows
//! and refresh grants, where a thread hand-off per store call costs more than the call: there
//! the `_async` writes are awaited without a thread (the SQLite group commit answers through a
//! oneshot; PostgreSQL keeps the blocking pool, since its calls are network round trips), and
//! [`read`] runs point reads in place where [`Store::reads_in_place`]. A method returns only
//! after its write is durable.
//!
//! The services above keep clients, keys and revocations in memory. With a shared store another
//! replica may change them: [`Store::watch`] reports every such change, and [`Store::lock`]
//! keeps replicas from racing through what must happen once (creating or rotating a key).

mod group_commit;
pub mod opaque_cache;
pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a write's caller waits for before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The write survives a power cut (flushed to disk): every write of the sync API, and any
    /// that hands out something whose loss would break a promise (a code exchange's tokens, a
    /// refresh rotation).
    Durable,
    /// The write is committed (visible to every reader, safe from a crash of the process) but
    /// may be lost in a power cut until the next durable write flushes it. For steps whose loss
    /// only makes the user start over; a store without the distinction treats it as durable.
    Lossy,
}

/// A store call awaited by an async task; it holds no thread while it waits.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'static>>;

/// Runs a blocking store call on the blocking pool, keeping it off the async workers.
pub fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreFuture<T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Database(format!("the store call did not finish: {e}")))?
    })
}

/// Runs the read `f` where the store says reads belong: in place on the calling worker when
/// they are quick local work ([`Store::reads_in_place`]), else on the blocking pool.
pub async fn read<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    if store.reads_in_place() {
        f(store.as_ref())
    } else {
        let store = Arc::clone(store);
        on_blocking_pool(move || f(store.as_ref())).await
    }
}

/// A write that replicas must apply to what they keep in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The client was created, updated or deleted.
    Client(String),
    /// A signing key was created, retired or deleted.
    Keys,
    /// A JWT id was revoked until `expires_at`.
    Revocation { jti: String, expires_at: i64 },
    /// The change feed (re)connected: changes may have been missed, reload everything.
    Resync,
    /// The change feed is down: what is in memory may be stale until the next `Resync`.
    Lost,
}

/// Receives changes on the store's watcher thread; returns false to stop watching.
pub type ChangeSink = Box<dyn Fn(Change) -> bool + Send + Sync>;

/// Held while a store-wide critical section runs; dropping it lets the next replica in.
pub type StoreLock = Box<dyn Send>;

/// Everything a store holds, for copying one store into another (`portcullis migrate
/// --from-sqlite`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub clients: Vec<StoredClient>,
    pub keys: Vec<StoredKey>,
    pub opaque_tokens: Vec<StoredOpaqueToken>,
    /// `(jti, expires_at)`.
    pub revocations: Vec<(String, i64)>,
    /// `(client_id, jti, expires_at)`.
    pub assertion_jtis: Vec<(String, String, i64)>,
    pub flows: Vec<StoredFlow>,
    /// `(kind, session)`.
    pub sessions: Vec<(String, StoredSession)>,
    pub refresh_tokens: Vec<StoredRefreshToken>,
}

impl Snapshot {
    pub fn rows(&self) -> usize {
        self.clients.len()
            + self.keys.len()
            + self.opaque_tokens.len()
            + self.revocations.len()
            + self.assertion_jtis.len()
            + self.flows.len()
            + self.sessions.len()
            + self.refresh_tokens.len()
    }
}

/// A registered client as persisted: the Hydra JSON (never containing the secret) plus the
/// secret's slow hash.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredClient {
    pub client_id: String,
    /// The client JSON without `client_secret`.
    pub json: String,
    /// PHC string of the secret's hash, if the client has a secret.
    pub secret_hash: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A signing key; the private part is encrypted with the system secret.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub set: String,
    pub kid: String,
    pub alg: String,
    pub private_sealed: Vec<u8>,
    pub created_at: i64,
    /// When the public key may leave the JWKS: set on rotation to the moment every token the key
    /// signed has expired. `None` while the key is current.
    pub expires_at: Option<i64>,
}

/// An opaque access token, keyed by the SHA-256 of the token string: everything its
/// introspection answers. Revoking one deletes its row, whatever the reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredOpaqueToken {
    pub hash: [u8; 32],
    pub client_id: String,
    /// The client for `client_credentials` tokens (and for rows written before the column
    /// existed); the person for a browser grant's.
    pub subject: String,
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    /// The browser grant (Hydra's `consent_request_id`, the refresh-token chain) the token
    /// belongs to: revoking the grant or the person's consent deletes it. `None` for
    /// `client_credentials`.
    pub grant_id: Option<String>,
    /// The consent's `session.access_token` claims as a JSON object (introspection's `ext`);
    /// `None` when there are none.
    pub ext: Option<String>,
}

/// The state of one browser authorization flow (login, consent, code) as JSON, with the stage
/// it has reached: stages only advance, each by a compare-and-set, which is what makes
/// challenges, verifiers and codes single-use.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFlow {
    pub id: String,
    pub stage: i64,
    pub json: String,
    pub expires_at: i64,
}

/// A login session (`sid`) or a remembered consent, as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    /// `sid` of a login session; `<client_id> <subject>` of a consent.
    pub id: String,
    pub subject: String,
    pub json: String,
    pub expires_at: i64,
}

/// A refresh token, keyed by the SHA-256 of the token string. `chain` names the authorization
/// (the flow) every rotation descends from: reuse detection revokes the whole chain.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRefreshToken {
    pub hash: [u8; 32],
    pub chain: String,
    pub client_id: String,
    /// The person the grant is for (revoking a subject's consent finds its chains).
    pub subject: String,
    pub active: bool,
    /// When it was rotated out (for the grace period); `None` while active or once revoked.
    pub used_at: Option<i64>,
    pub json: String,
    pub expires_at: i64,
}

impl StoredRefreshToken {
    pub fn chain_key(&self) -> ChainKey {
        ChainKey {
            subject: self.subject.clone(),
            client_id: self.client_id.clone(),
            chain: self.chain.clone(),
        }
    }
}

/// A refresh chain as the store finds it: the person, the client and the grant's id. Every
/// row of a chain carries the same three (the embedded store indexes them together, so that
/// a refresh adds one index entry rather than one per lookup it serves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainKey {
    pub subject: String,
    pub client_id: String,
    pub chain: String,
}

/// Rows that commit in the same transaction as a compare-and-set (a flow's step, a refresh
/// rotation): a step is then one transaction and one (group) commit instead of several, and
/// its rows are all written or, when the compare-and-set loses, none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepRows {
    pub refresh_tokens: Vec<StoredRefreshToken>,
    /// `(kind, session)`, written as [`Store::put_session`] does.
    pub sessions: Vec<(String, StoredSession)>,
    /// `(jti, expires_at)`, written as [`Store::insert_revocation`] does.
    pub revocations: Vec<(String, i64)>,
    /// Inserted as [`Store::insert_opaque_token`] does.
    pub opaque_tokens: Vec<StoredOpaqueToken>,
    /// Hashes of opaque tokens to delete (revoked by the step).
    pub revoked_opaque_tokens: Vec<[u8; 32]>,
}

/// Hydra's list filters (exact match); `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFilter {
    pub client_name: Option<String>,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(String),
    /// A database error that is the disk's fault, not the statement's (SQLite's primary result
    /// code says full, read-only, I/O error or cannot open), or a write lost with a batch such
    /// an error rolled back. A store that watches its disk turns it into
    /// [`StoreError::Unwritable`] for writes; a read that meets it is a database error.
    #[error("database error: {0}")]
    Disk(String),
    /// The disk holding the data refuses writes (full, read-only, failing): a write fails,
    /// reads go on. Reported once by the store when it starts, not by every caller.
    #[error("the data directory refuses writes: {0}")]
    Unwritable(String),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait Store: Send + Sync + 'static {
    /// Fails when the store cannot serve (readiness).
    fn ping(&self) -> StoreResult<()>;

    /// Whether a point read is a few microseconds of local work that an async worker may run
    /// in place (the embedded store), rather than a network round trip that belongs on the
    /// blocking pool (PostgreSQL). See [`read`].
    fn reads_in_place(&self) -> bool {
        false
    }

    /// [`Store::insert_flow`] for an async caller.
    fn insert_flow_async(
        self: Arc<Self>,
        flow: StoredFlow,
        _durability: Durability,
    ) -> StoreFuture<()> {
        on_blocking_pool(move || self.insert_flow(&flow))
    }

    /// [`Store::advance_flow_with`] for an async caller.
    fn advance_flow_async(
        self: Arc<Self>,
        from: i64,
        flow: StoredFlow,
        rows: StepRows,
        _durability: Durability,
    ) -> StoreFuture<bool> {
        on_blocking_pool(move || self.advance_flow_with(from, &flow, &rows))
    }

    /// [`Store::rotate_refresh_token`] for an async caller.
    fn rotate_refresh_token_async(
        self: Arc<Self>,
        old: [u8; 32],
        new: StoredRefreshToken,
        now: i64,
        rows: StepRows,
    ) -> StoreFuture<bool> {
        on_blocking_pool(move || self.rotate_refresh_token(&old, &new, now, &rows))
    }

    /// Whether other processes share this store (then what is kept in memory must follow
    /// [`Store::watch`]).
    fn shared(&self) -> bool {
        false
    }

    /// Calls `sink` from a background thread for every change any replica makes (this one's
    /// included). The embedded store has a single process: nothing to watch.
    fn watch(&self, _sink: ChangeSink) -> StoreResult<()> {
        Ok(())
    }

    /// Waits until no other replica is inside the critical section `name`, and keeps them out
    /// until the returned guard drops. The embedded store has no other replicas.
    fn lock(&self, _name: &str) -> StoreResult<StoreLock> {
        Ok(Box::new(()))
    }

    /// Inserts; `Conflict` when the id exists.
    fn insert_client(&self, client: &StoredClient) -> StoreResult<()>;
    /// Replaces; false when the id does not exist.
    fn update_client(&self, client: &StoredClient) -> StoreResult<bool>;
    fn delete_client(&self, client_id: &str) -> StoreResult<bool>;
    fn get_client(&self, client_id: &str) -> StoreResult<Option<StoredClient>>;
    /// Clients matching `filter`, ordered by id, strictly after `after`, at most `limit`.
    fn list_clients(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &ClientFilter,
    ) -> StoreResult<Vec<StoredClient>>;

    fn insert_key(&self, key: &StoredKey) -> StoreResult<()>;
    /// Sets `expires_at` on every key of `set` that has none, except `keep_kid`.
    fn retire_keys(&self, set: &str, keep_kid: &str, expires_at: i64) -> StoreResult<()>;
    fn delete_key(&self, set: &str, kid: &str) -> StoreResult<bool>;
    /// All keys of all sets, oldest first.
    fn list_keys(&self) -> StoreResult<Vec<StoredKey>>;

    fn insert_opaque_token(&self, token: &StoredOpaqueToken) -> StoreResult<()>;
    fn get_opaque_token(&self, hash: &[u8; 32]) -> StoreResult<Option<StoredOpaqueToken>>;
    /// The row from memory, without blocking, when the store keeps it and can vouch that it
    /// was not deleted; `None`: ask [`Store::get_opaque_token`].
    fn cached_opaque_token(&self, _hash: &[u8; 32]) -> Option<StoredOpaqueToken> {
        None
    }
    fn delete_opaque_token(&self, hash: &[u8; 32]) -> StoreResult<bool>;
    fn delete_client_tokens(&self, client_id: &str) -> StoreResult<()>;

    /// Records a revoked JWT id until `expires_at`.
    fn insert_revocation(&self, jti: &str, expires_at: i64) -> StoreResult<()>;
    /// Unexpired revocations `(jti, expires_at)`.
    fn list_revocations(&self, now: i64) -> StoreResult<Vec<(String, i64)>>;

    /// Records a client assertion's `jti`; false when it was already used (replay).
    fn use_assertion_jti(&self, client_id: &str, jti: &str, expires_at: i64) -> StoreResult<bool>;

    fn insert_flow(&self, flow: &StoredFlow) -> StoreResult<()>;
    fn get_flow(&self, id: &str) -> StoreResult<Option<StoredFlow>>;
    /// Replaces the flow if it is still at stage `from`; false when another request advanced
    /// it first (or it is gone). Exactly one of concurrent callers wins.
    fn advance_flow(&self, from: i64, flow: &StoredFlow) -> StoreResult<bool> {
        self.advance_flow_with(from, flow, &StepRows::default())
    }
    /// [`Store::advance_flow`] and `rows` in one transaction: a lost compare-and-set writes
    /// none of them.
    fn advance_flow_with(&self, from: i64, flow: &StoredFlow, rows: &StepRows)
    -> StoreResult<bool>;

    /// Inserts or replaces a login session (`kind` "login") or remembered consent ("consent").
    fn put_session(&self, kind: &str, session: &StoredSession) -> StoreResult<()>;
    fn get_session(&self, kind: &str, id: &str) -> StoreResult<Option<StoredSession>>;
    fn delete_session(&self, kind: &str, id: &str) -> StoreResult<bool>;
    /// Every live-or-not row of `kind` for `subject`.
    fn list_sessions(&self, kind: &str, subject: &str) -> StoreResult<Vec<StoredSession>>;
    /// Deletes every row of `kind` for `subject`; returns how many went.
    fn delete_sessions(&self, kind: &str, subject: &str) -> StoreResult<usize>;

    fn insert_refresh_token(&self, token: &StoredRefreshToken) -> StoreResult<()>;
    fn get_refresh_token(&self, hash: &[u8; 32]) -> StoreResult<Option<StoredRefreshToken>>;
    /// Some row of the refresh chain `chain`, active or not (they all carry the grant).
    fn refresh_token_of_chain(&self, key: &ChainKey) -> StoreResult<Option<StoredRefreshToken>>;
    /// In one transaction: deactivates `old` (recording `now` as its use) if it is still
    /// active and inserts `new` and `rows`. False (and nothing written) when `old` was no
    /// longer active: concurrent rotations of one token have exactly one winner.
    fn rotate_refresh_token(
        &self,
        old: &[u8; 32],
        new: &StoredRefreshToken,
        now: i64,
        rows: &StepRows,
    ) -> StoreResult<bool>;
    /// [`StepRows`] without a compare-and-set, each written on its own (a rare path whose
    /// writes need not share a commit).
    fn put_step_rows(&self, rows: &StepRows) -> StoreResult<()> {
        for t in &rows.refresh_tokens {
            self.insert_refresh_token(t)?;
        }
        for (kind, s) in &rows.sessions {
            self.put_session(kind, s)?;
        }
        for (jti, exp) in &rows.revocations {
            self.insert_revocation(jti, *exp)?;
        }
        for t in &rows.opaque_tokens {
            self.insert_opaque_token(t)?;
        }
        for h in &rows.revoked_opaque_tokens {
            self.delete_opaque_token(h)?;
        }
        Ok(())
    }

    /// In one transaction: deactivates every token of the chain (no grace period applies to
    /// a revoked token) and deletes the opaque access tokens of the grant it names; returns
    /// all of the refresh tokens' rows (to revoke the JWTs they issued).
    fn revoke_refresh_chain(&self, key: &ChainKey) -> StoreResult<Vec<StoredRefreshToken>>;
    /// In one transaction: deactivates every refresh token of `subject` (of one client, or
    /// all) and deletes the opaque access tokens of the same browser grants (never a
    /// `client_credentials` token); returns the refresh tokens' rows.
    fn revoke_refresh_tokens_of(
        &self,
        subject: &str,
        client_id: Option<&str>,
    ) -> StoreResult<Vec<StoredRefreshToken>>;

    /// Deletes expired tokens, revocations, assertion ids and retired keys; returns rows removed.
    fn purge_expired(&self, now: i64) -> StoreResult<usize>;
}
