//! Persistence behind one object-safe trait, so the embedded SQLite store can later be swapped
//! for a shared SQL database serving several replicas. Methods are synchronous: async callers run
//! them on the blocking pool (`tokio::task::spawn_blocking`). A method returns only after its
//! write is durable.

pub mod sqlite;

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

/// An opaque access token, keyed by the SHA-256 of the token string.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOpaqueToken {
    pub hash: [u8; 32],
    pub client_id: String,
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Hydra's list filters (exact match); `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFilter {
    pub client_name: Option<String>,
    pub owner: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait Store: Send + Sync + 'static {
    /// Fails when the store cannot serve (readiness).
    fn ping(&self) -> StoreResult<()>;

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
    fn delete_opaque_token(&self, hash: &[u8; 32]) -> StoreResult<bool>;
    fn delete_client_tokens(&self, client_id: &str) -> StoreResult<()>;

    /// Records a revoked JWT id until `expires_at`.
    fn insert_revocation(&self, jti: &str, expires_at: i64) -> StoreResult<()>;
    /// Unexpired revocations `(jti, expires_at)`.
    fn list_revocations(&self, now: i64) -> StoreResult<Vec<(String, i64)>>;

    /// Records a client assertion's `jti`; false when it was already used (replay).
    fn use_assertion_jti(&self, client_id: &str, jti: &str, expires_at: i64) -> StoreResult<bool>;

    /// Deletes expired tokens, revocations, assertion ids and retired keys; returns rows removed.
    fn purge_expired(&self, now: i64) -> StoreResult<usize>;
}
