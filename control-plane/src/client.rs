//! OAuth2 clients: the Hydra v2 JSON model, its validation, and [`ClientService`], the
//! in-process API (create/update/patch/upsert/delete/get/list/authenticate) used by the admin
//! HTTP handlers and by the reconcilers. Reads are served from memory; every write is committed
//! to the store before the in-memory copy changes or the caller is answered.

use crate::clock;
use crate::lifespan;
use crate::secret::{self, MIN_SECRET_LEN, VerificationCache};
use crate::store::{ClientFilter, Store, StoreError, StoredClient};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A client in Hydra v2's JSON shape. Unknown fields (Hydra has many for browser flows) are kept
/// and echoed back, so tooling that round-trips a client loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Client {
    #[serde(default, deserialize_with = "null_default")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub client_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub grant_types: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub response_types: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub scope: String,
    #[serde(default, deserialize_with = "null_default")]
    pub audience: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub owner: String,
    #[serde(default, deserialize_with = "null_default")]
    pub token_endpoint_auth_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub jwks_uri: String,
    #[serde(default, deserialize_with = "null_default")]
    pub redirect_uris: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: Value,
    #[serde(default, deserialize_with = "null_default")]
    pub access_token_strategy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_credentials_grant_access_token_lifespan: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub post_logout_redirect_uris: Vec<String>,
    /// A hint for the login/consent app (Hydra: the server itself never skips consent for it).
    #[serde(default, deserialize_with = "null_default")]
    pub skip_consent: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub frontchannel_logout_uri: String,
    #[serde(default, deserialize_with = "null_default")]
    pub frontchannel_logout_session_required: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub backchannel_logout_uri: String,
    #[serde(default, deserialize_with = "null_default")]
    pub backchannel_logout_session_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_code_grant_access_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_code_grant_id_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_code_grant_refresh_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_grant_access_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_grant_id_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_grant_refresh_token_lifespan: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub created_at: String,
    #[serde(default, deserialize_with = "null_default")]
    pub updated_at: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    None,
}

impl AuthMethod {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            "private_key_jwt" => Some(Self::PrivateKeyJwt),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::None => "none",
        }
    }

    pub fn uses_secret(self) -> bool {
        matches!(self, Self::ClientSecretBasic | Self::ClientSecretPost)
    }
}

const GRANT_TYPES: &[&str] = &[
    "client_credentials",
    "authorization_code",
    "implicit",
    "refresh_token",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:device_code",
];

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A metadata field is invalid (RFC 7591 `invalid_client_metadata`).
    #[error("field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("client {0:?} not found")]
    NotFound(String),
    #[error("client {0:?} already exists")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Conflict(what),
            other => Self::Store(other),
        }
    }
}

/// Response types Hydra accepts in a client (any order of the words is the same type).
const RESPONSE_TYPE_WORDS: &[&str] = &["code", "token", "id_token", "none"];

/// Checks a redirect-type URI: absolute, no fragment (RFC 6749 3.1.2), and not a scheme that
/// runs code or reads local files in a browser (`javascript:`, `data:`, ...), whose only use
/// as a "redirect" is an attack.
fn check_redirect_uri(field: &'static str, uri: &str) -> Result<(), ClientError> {
    let parsed = url::Url::parse(uri)
        .map_err(|e| invalid(field, format!("{uri:?} is not an absolute URI: {e}")))?;
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            format!("{uri:?} must not contain whitespace"),
        ));
    }
    if parsed.fragment().is_some() {
        return Err(invalid(
            field,
            format!("{uri:?} must not contain a fragment"),
        ));
    }
    if matches!(
        parsed.scheme(),
        "javascript" | "data" | "vbscript" | "file" | "blob" | "about"
    ) {
        return Err(invalid(
            field,
            format!("{uri:?} uses a scheme that cannot be a redirect target"),
        ));
    }
    // The URL parser repairs `https:///cb` into `https://cb/`; matching compares the raw string,
    // so refuse what would only match after repair.
    if matches!(parsed.scheme(), "http" | "https")
        && !uri
            .get(parsed.scheme().len()..)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|host| !host.is_empty() && !host.starts_with('/'))
    {
        return Err(invalid(field, format!("{uri:?} has no host")));
    }
    Ok(())
}

fn check_lifespan(field: &'static str, value: &mut Option<String>) -> Result<(), ClientError> {
    match value.as_deref() {
        None => Ok(()),
        Some("") => {
            *value = None;
            Ok(())
        }
        Some(l) => {
            let d = clock::parse_duration(l).map_err(|e| invalid(field, e.to_string()))?;
            if d.as_secs() == 0 {
                return Err(invalid(field, "must be at least one second"));
            }
            Ok(())
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ClientError {
    ClientError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl Client {
    /// Applies Hydra's defaults and validates every field, naming the one at fault.
    pub fn normalize(&mut self) -> Result<(), ClientError> {
        if self.client_id.chars().any(|c| c.is_control()) || self.client_id.len() > 255 {
            return Err(invalid(
                "client_id",
                "must be at most 255 characters without control characters",
            ));
        }
        if let Some(s) = &self.client_secret
            && s.chars().count() < MIN_SECRET_LEN
        {
            return Err(invalid(
                "client_secret",
                format!("must be at least {MIN_SECRET_LEN} characters long"),
            ));
        }
        if self.grant_types.is_empty() {
            self.grant_types = vec!["authorization_code".into()];
        }
        for g in &self.grant_types {
            if !GRANT_TYPES.contains(&g.as_str()) {
                return Err(invalid(
                    "grant_types",
                    format!("unsupported grant type {g:?}"),
                ));
            }
        }
        if self.response_types.is_empty() {
            self.response_types = vec!["code".into()];
        }
        for rt in &self.response_types {
            let words: Vec<&str> = rt.split(' ').collect();
            let known = words.iter().all(|w| RESPONSE_TYPE_WORDS.contains(w));
            let mut dedup = words.clone();
            dedup.sort_unstable();
            dedup.dedup();
            if !known || dedup.len() != words.len() || (words.contains(&"none") && words.len() > 1)
            {
                return Err(invalid(
                    "response_types",
                    format!("unsupported response type {rt:?}"),
                ));
            }
        }
        for uri in &self.redirect_uris {
            check_redirect_uri("redirect_uris", uri)?;
        }
        for uri in &self.post_logout_redirect_uris {
            check_redirect_uri("post_logout_redirect_uris", uri)?;
        }
        if !self.frontchannel_logout_uri.is_empty() {
            check_redirect_uri("frontchannel_logout_uri", &self.frontchannel_logout_uri)?;
        }
        if !self.backchannel_logout_uri.is_empty() {
            check_redirect_uri("backchannel_logout_uri", &self.backchannel_logout_uri)?;
            if !self.backchannel_logout_uri.starts_with("http") {
                return Err(invalid("backchannel_logout_uri", "must be an http(s) URL"));
            }
        }
        check_lifespan(
            "authorization_code_grant_access_token_lifespan",
            &mut self.authorization_code_grant_access_token_lifespan,
        )?;
        check_lifespan(
            "authorization_code_grant_id_token_lifespan",
            &mut self.authorization_code_grant_id_token_lifespan,
        )?;
        check_lifespan(
            "authorization_code_grant_refresh_token_lifespan",
            &mut self.authorization_code_grant_refresh_token_lifespan,
        )?;
        check_lifespan(
            "refresh_token_grant_access_token_lifespan",
            &mut self.refresh_token_grant_access_token_lifespan,
        )?;
        check_lifespan(
            "refresh_token_grant_id_token_lifespan",
            &mut self.refresh_token_grant_id_token_lifespan,
        )?;
        check_lifespan(
            "refresh_token_grant_refresh_token_lifespan",
            &mut self.refresh_token_grant_refresh_token_lifespan,
        )?;
        let method = AuthMethod::parse(&self.token_endpoint_auth_method).ok_or_else(|| {
            invalid(
                "token_endpoint_auth_method",
                format!(
                    "{:?} is not one of client_secret_basic, client_secret_post, private_key_jwt, none",
                    self.token_endpoint_auth_method
                ),
            )
        })?;
        self.token_endpoint_auth_method = method.as_str().to_string();
        if let Some(jwks) = &self.jwks {
            if jwks.is_null() {
                self.jwks = None;
            } else {
                let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone())
                    .map_err(|e| invalid("jwks", format!("not a JSON Web Key Set: {e}")))?;
                if set.keys.is_empty() {
                    return Err(invalid("jwks", "must contain at least one key"));
                }
            }
        }
        if !(self.jwks_uri.is_empty()
            || self.jwks_uri.starts_with("https://")
            || self.jwks_uri.starts_with("http://"))
        {
            return Err(invalid("jwks_uri", "must be an http(s) URL"));
        }
        if self.jwks.is_some() && !self.jwks_uri.is_empty() {
            return Err(invalid("jwks", "jwks and jwks_uri are mutually exclusive"));
        }
        if method == AuthMethod::PrivateKeyJwt && self.jwks.is_none() && self.jwks_uri.is_empty() {
            return Err(invalid(
                "token_endpoint_auth_method",
                "private_key_jwt requires jwks or jwks_uri",
            ));
        }
        match self.access_token_strategy.as_str() {
            "" => self.access_token_strategy = "jwt".into(),
            "jwt" | "opaque" => {}
            other => {
                return Err(invalid(
                    "access_token_strategy",
                    format!("{other:?} is not one of jwt, opaque"),
                ));
            }
        }
        if self.audience.iter().any(|a| a.trim().is_empty()) {
            return Err(invalid("audience", "entries must not be empty"));
        }
        check_lifespan(
            "client_credentials_grant_access_token_lifespan",
            &mut self.client_credentials_grant_access_token_lifespan,
        )?;
        if self.metadata.is_null() {
            self.metadata = Value::Object(Map::new());
        }
        if !self.metadata.is_object() {
            return Err(invalid("metadata", "must be a JSON object"));
        }
        Ok(())
    }

    pub fn auth_method(&self) -> AuthMethod {
        AuthMethod::parse(&self.token_endpoint_auth_method).unwrap_or(AuthMethod::ClientSecretBasic)
    }
}

/// A client as the token endpoint needs it, parsed once per change.
#[derive(Debug)]
pub struct ClientRecord {
    /// Without `client_secret`.
    pub client: Client,
    pub secret_hash: Option<String>,
    /// Changes on every write; secret verification cache entries are tied to it.
    pub version: u64,
    pub auth_method: AuthMethod,
    pub scopes: Vec<String>,
    pub lifespan_secs: Option<i64>,
    /// Per-client lifespans of the browser grants (seconds), `None` = the server default.
    pub lifespans: GrantLifespans,
    pub opaque: bool,
    pub created_at: i64,
}

impl ClientRecord {
    pub fn has_grant(&self, grant: &str) -> bool {
        self.client.grant_types.iter().any(|g| g == grant)
    }
}

/// Hydra's per-client `*_grant_*_lifespan` overrides for the authorization code and refresh
/// grants, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantLifespans {
    pub code_access: Option<i64>,
    pub code_id: Option<i64>,
    pub code_refresh: Option<i64>,
    pub refresh_access: Option<i64>,
    pub refresh_id: Option<i64>,
    pub refresh_refresh: Option<i64>,
}

fn secs(l: Option<&str>) -> Option<i64> {
    l.and_then(|l| clock::parse_duration(l).ok())
        .map(lifespan::secs)
}

impl GrantLifespans {
    /// Signed tokens' lifespans are capped at `max` (see [`record_from`]); refresh tokens are
    /// opaque and stored, so no key's retirement waits on them.
    fn of(c: &Client, max: i64) -> Self {
        let signed = |l: Option<&str>| secs(l).map(|s| s.min(max));
        Self {
            code_access: signed(c.authorization_code_grant_access_token_lifespan.as_deref()),
            code_id: signed(c.authorization_code_grant_id_token_lifespan.as_deref()),
            code_refresh: secs(c.authorization_code_grant_refresh_token_lifespan.as_deref()),
            refresh_access: signed(c.refresh_token_grant_access_token_lifespan.as_deref()),
            refresh_id: signed(c.refresh_token_grant_id_token_lifespan.as_deref()),
            refresh_refresh: secs(c.refresh_token_grant_refresh_token_lifespan.as_deref()),
        }
    }

    /// The longest lifetime of a token these let us sign (for key retirement).
    fn max_signed(&self) -> Option<i64> {
        self.code_access
            .max(self.refresh_access)
            .max(self.code_id)
            .max(self.refresh_id)
    }
}

/// `max_lifespan` caps a stored lifespan registered before the bound existed (or under a larger
/// one): such a client gets tokens of the maximum lifespan, never longer.
fn record_from(
    stored: &StoredClient,
    version: u64,
    max_lifespan: i64,
) -> Result<ClientRecord, StoreError> {
    let client: Client = serde_json::from_str(&stored.json).map_err(|e| StoreError::Corrupt {
        table: "clients",
        detail: format!("{}: {e}", stored.client_id),
    })?;
    let lifespan_secs = secs(
        client
            .client_credentials_grant_access_token_lifespan
            .as_deref(),
    )
    .map(|s| s.min(max_lifespan));
    Ok(ClientRecord {
        lifespans: GrantLifespans::of(&client, max_lifespan),
        auth_method: client.auth_method(),
        scopes: client
            .scope
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        opaque: client.access_token_strategy == "opaque",
        lifespan_secs,
        secret_hash: stored.secret_hash.clone(),
        version,
        created_at: stored.created_at,
        client,
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the client is unknown")]
    UnknownClient,
    #[error("the client secret is wrong")]
    WrongSecret,
    #[error("the client has no secret")]
    NoSecret,
    /// The shared store could not be asked about a client this replica does not know yet.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

/// What [`ClientService::upsert`] did; each carries the resulting client (with the secret when
/// one was set).
#[derive(Debug, Clone, PartialEq)]
pub enum UpsertOutcome {
    Created(Client),
    Updated(Client),
    Unchanged(Client),
}

impl UpsertOutcome {
    pub fn client(&self) -> &Client {
        match self {
            Self::Created(c) | Self::Updated(c) | Self::Unchanged(c) => c,
        }
    }
}

/// One page of clients and the token of the next page, if any.
#[derive(Debug)]
pub struct ClientPage {
    pub clients: Vec<Client>,
    pub next_page_token: Option<String>,
}

pub struct ClientService {
    store: Arc<dyn Store>,
    clients: RwLock<HashMap<String, Arc<ClientRecord>>>,
    verified: VerificationCache,
    versions: AtomicU64,
    /// Serialises writes so read-modify-write (PUT keeping a secret, PATCH) is atomic.
    write_lock: tokio::sync::Mutex<()>,
    /// One slow hash per core at a time.
    hashing: tokio::sync::Semaphore,
    /// The longest `client_credentials_grant_access_token_lifespan` accepted (seconds).
    max_lifespan: i64,
    /// Verified against for unknown clients and clients without a secret, so that a failure
    /// costs the same slow hash whether or not the client exists.
    dummy_hash: String,
    /// When client ids were deleted (Unix seconds), for the last couple of seconds: a client
    /// re-created with the same id gets a creation time after its predecessor's last token
    /// (see [`Self::create`]).
    deleted_at: std::sync::Mutex<HashMap<String, i64>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::Internal(e.to_string()))
}

impl ClientService {
    /// Loads every stored client into memory. `max_lifespan` bounds per-client token lifespans.
    pub fn load(
        store: Arc<dyn Store>,
        max_lifespan: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let dummy_hash = secret::generate_secret()
            .and_then(|s| secret::hash_secret(&s))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let svc = Self {
            store,
            clients: RwLock::new(HashMap::new()),
            verified: VerificationCache::new(100_000)
                .map_err(|e| StoreError::Database(e.to_string()))?,
            versions: AtomicU64::new(1),
            write_lock: tokio::sync::Mutex::new(()),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            max_lifespan: lifespan::secs(max_lifespan),
            dummy_hash,
            deleted_at: std::sync::Mutex::new(HashMap::new()),
        };
        let mut after: Option<String> = None;
        let mut map = HashMap::new();
        loop {
            let page = svc
                .store
                .list_clients(after.as_deref(), 500, &ClientFilter::default())?;
            let Some(last) = page.last() else { break };
            after = Some(last.client_id.clone());
            for stored in &page {
                let rec = record_from(stored, svc.next_version(), svc.max_lifespan)?;
                if rec
                    .client
                    .client_credentials_grant_access_token_lifespan
                    .as_deref()
                    .and_then(|l| clock::parse_duration(l).ok())
                    .is_some_and(|d| lifespan::secs(d) > svc.max_lifespan)
                {
                    tracing::warn!(
                        client_id = %stored.client_id,
                        "the client's token lifespan exceeds --max-access-token-ttl: its tokens get the maximum"
                    );
                }
                map.insert(stored.client_id.clone(), Arc::new(rec));
            }
        }
        if let Ok(mut clients) = svc.clients.write() {
            *clients = map;
        }
        Ok(svc)
    }

    /// [`Client::normalize`] plus the service's bounds.
    fn validate(&self, client: &mut Client) -> Result<(), ClientError> {
        client.normalize()?;
        // Every lifespan of a token the service signs: a retired key stays published for the
        // longest of them.
        let signed = [
            (
                "client_credentials_grant_access_token_lifespan",
                &client.client_credentials_grant_access_token_lifespan,
            ),
            (
                "authorization_code_grant_access_token_lifespan",
                &client.authorization_code_grant_access_token_lifespan,
            ),
            (
                "authorization_code_grant_id_token_lifespan",
                &client.authorization_code_grant_id_token_lifespan,
            ),
            (
                "refresh_token_grant_access_token_lifespan",
                &client.refresh_token_grant_access_token_lifespan,
            ),
            (
                "refresh_token_grant_id_token_lifespan",
                &client.refresh_token_grant_id_token_lifespan,
            ),
        ];
        for (field, value) in signed {
            if let Some(l) = value
                && clock::parse_duration(l).is_ok_and(|d| lifespan::secs(d) > self.max_lifespan)
            {
                return Err(invalid(
                    field,
                    format!(
                        "must be at most {}s (the service's --max-access-token-ttl)",
                        self.max_lifespan
                    ),
                ));
            }
        }
        Ok(())
    }

    fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed)
    }

    pub fn lookup(&self, client_id: &str) -> Option<Arc<ClientRecord>> {
        self.clients.read().ok()?.get(client_id).cloned()
    }

    pub fn get(&self, client_id: &str) -> Option<Client> {
        self.lookup(client_id).map(|r| r.client.clone())
    }

    /// The longest per-client token lifetime (seconds), for key retirement.
    pub fn max_lifespan_secs(&self) -> i64 {
        self.clients
            .read()
            .map(|m| {
                m.values()
                    .filter_map(|r| r.lifespan_secs.max(r.lifespans.max_signed()))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    fn install(&self, rec: ClientRecord) {
        let id = rec.client.client_id.clone();
        self.verified.invalidate(&id);
        if let Ok(mut m) = self.clients.write() {
            m.insert(id, Arc::new(rec));
        }
    }

    /// Registers a client. Generates `client_id` (UUID) and, for secret-based methods, a secret
    /// when absent. Returns the client with its plaintext secret: the only time it is shown.
    pub async fn create(&self, mut client: Client) -> Result<Client, ClientError> {
        self.validate(&mut client)?;
        if client.client_id.is_empty() {
            client.client_id = uuid::Uuid::new_v4().to_string();
        }
        let secret = match (
            client.auth_method().uses_secret(),
            client.client_secret.take(),
        ) {
            (true, Some(s)) => Some(s),
            (true, None) => {
                Some(secret::generate_secret().map_err(|e| ClientError::Internal(e.to_string()))?)
            }
            (false, _) => None,
        };
        // Hash before taking the write lock: bulk registrations (a reconciler's first sync)
        // then use every core instead of queueing behind one slow hash at a time.
        let hash = self.hash(secret.clone()).await?;
        let _guard = self.write_lock.lock().await;
        if self.lookup(&client.client_id).is_some() {
            return Err(ClientError::Conflict(format!(
                "client {:?}",
                client.client_id
            )));
        }
        // Introspection refuses tokens issued before their client's creation (whole seconds).
        // A client deleted in this very second may have issued tokens in it: start the new
        // one in the next second, so none of them counts as the new client's.
        let deleted = self
            .deleted_at
            .lock()
            .ok()
            .and_then(|m| m.get(&client.client_id).copied());
        if let Some(deleted) = deleted {
            while clock::now() <= deleted {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let now = clock::now();
        client.created_at = clock::rfc3339(now);
        client.updated_at = client.created_at.clone();
        let stored = self.persist(&client, hash, now, now, true).await?;
        self.install(record_from(
            &stored,
            self.next_version(),
            self.max_lifespan,
        )?);
        client.client_secret = secret;
        Ok(client)
    }

    /// Replaces a client (PUT). A `client_secret` sets a new secret; without one the old secret
    /// is kept (as Hydra does). Returns the client, with the new secret if one was set.
    pub async fn update(&self, client_id: &str, mut client: Client) -> Result<Client, ClientError> {
        if !client.client_id.is_empty() && client.client_id != client_id {
            return Err(invalid("client_id", "must match the client id in the path"));
        }
        client.client_id = client_id.to_string();
        self.validate(&mut client)?;
        let new_secret = client.client_secret.take();
        let new_hash = self.hash(new_secret.clone()).await?;
        let _guard = self.write_lock.lock().await;
        self.update_locked(client, new_secret, new_hash).await
    }

    async fn update_locked(
        &self,
        mut client: Client,
        new_secret: Option<String>,
        new_hash: Option<String>,
    ) -> Result<Client, ClientError> {
        let old = self
            .lookup(&client.client_id)
            .ok_or_else(|| ClientError::NotFound(client.client_id.clone()))?;
        let secret_hash = new_hash.or_else(|| old.secret_hash.clone());
        if client.auth_method().uses_secret() && secret_hash.is_none() {
            return Err(invalid(
                "client_secret",
                "required when switching to a secret-based token_endpoint_auth_method",
            ));
        }
        let now = clock::now();
        client.created_at = old.client.created_at.clone();
        client.updated_at = clock::rfc3339(now);
        let stored = self
            .persist(&client, secret_hash, old.created_at, now, false)
            .await?;
        self.install(record_from(
            &stored,
            self.next_version(),
            self.max_lifespan,
        )?);
        client.client_secret = new_secret;
        Ok(client)
    }

    /// Applies an RFC 6902 JSON Patch to the client's JSON (PATCH). Patching `client_secret`
    /// sets a new secret; `client_id` cannot change.
    pub async fn patch(
        &self,
        client_id: &str,
        patch: &json_patch::Patch,
    ) -> Result<Client, ClientError> {
        let _guard = self.write_lock.lock().await;
        let current = self
            .get(client_id)
            .ok_or_else(|| ClientError::NotFound(client_id.to_string()))?;
        let mut doc =
            serde_json::to_value(&current).map_err(|e| ClientError::Internal(e.to_string()))?;
        // Hydra's stored client has a `client_secret` member, so `replace /client_secret` (the
        // usual way to rotate a secret) applies; ours never stores it, so give it one to replace.
        if let Some(obj) = doc.as_object_mut() {
            obj.entry("client_secret")
                .or_insert(serde_json::Value::Null);
        }
        json_patch::patch(&mut doc, patch).map_err(|e| {
            ClientError::BadRequest(format!("the JSON Patch cannot be applied: {e}"))
        })?;
        let mut client: Client = serde_json::from_value(doc)
            .map_err(|e| ClientError::BadRequest(format!("the patched client is invalid: {e}")))?;
        if client.client_id != client_id {
            return Err(invalid("client_id", "cannot be changed"));
        }
        self.validate(&mut client)?;
        let new_secret = client.client_secret.take();
        let new_hash = self.hash(new_secret.clone()).await?;
        self.update_locked(client, new_secret, new_hash).await
    }

    /// Creates the client, or replaces it when `client_id` exists: what a reconciler wants for
    /// "make it so". A given `client_secret` becomes the secret in both cases. When the stored
    /// client already is exactly this (same fields, and the secret verifies), nothing is written
    /// and the verification cache stays warm, so periodic resyncs are cheap.
    pub async fn upsert(&self, client: Client) -> Result<UpsertOutcome, ClientError> {
        let Some(existing) = self
            .lookup(&client.client_id)
            .filter(|_| !client.client_id.is_empty())
        else {
            return self.create(client).await.map(UpsertOutcome::Created);
        };
        let mut wanted = client.clone();
        self.validate(&mut wanted)?;
        let secret = wanted.client_secret.take();
        let mut current = existing.client.clone();
        wanted.created_at.clone_from(&current.created_at);
        wanted.updated_at.clone_from(&current.updated_at);
        current.client_secret = None;
        let secret_same = match &secret {
            None => true,
            Some(s) => self.authenticate_secret(&client.client_id, s).await.is_ok(),
        };
        if wanted == current && secret_same {
            return Ok(UpsertOutcome::Unchanged(current));
        }
        let id = client.client_id.clone();
        self.update(&id, client).await.map(UpsertOutcome::Updated)
    }

    pub async fn delete(&self, client_id: &str) -> Result<(), ClientError> {
        let _guard = self.write_lock.lock().await;
        let store = Arc::clone(&self.store);
        let id = client_id.to_string();
        let deleted = blocking(move || {
            let d = store.delete_client(&id)?;
            if d {
                store.delete_client_tokens(&id)?;
            }
            Ok::<_, StoreError>(d)
        })
        .await??;
        if let Ok(mut m) = self.clients.write() {
            m.remove(client_id);
        }
        self.verified.invalidate(client_id);
        if let Ok(mut m) = self.deleted_at.lock() {
            let now = clock::now();
            m.retain(|_, at| *at >= now - 1);
            m.insert(client_id.to_string(), now);
        }
        if deleted {
            Ok(())
        } else {
            Err(ClientError::NotFound(client_id.to_string()))
        }
    }

    /// A page of clients ordered by id. `page_token` is the opaque token of a previous page.
    pub async fn list(
        &self,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<ClientPage, ClientError> {
        self.list_filtered(page_size, page_token, ClientFilter::default())
            .await
    }

    /// [`Self::list`] restricted by Hydra's `client_name` / `owner` filters.
    pub async fn list_filtered(
        &self,
        page_size: usize,
        page_token: Option<&str>,
        filter: ClientFilter,
    ) -> Result<ClientPage, ClientError> {
        let after = match page_token {
            None | Some("") => None,
            Some(t) => Some(
                crate::crypto::b64url_decode(t)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ClientError::BadRequest("page_token is malformed".into()))?,
            ),
        };
        let store = Arc::clone(&self.store);
        let size = page_size.max(1);
        let rows =
            blocking(move || store.list_clients(after.as_deref(), size + 1, &filter)).await??;
        let has_more = rows.len() > size;
        let mut clients = Vec::with_capacity(size);
        for stored in rows.iter().take(size) {
            clients.push(record_from(stored, 0, self.max_lifespan)?.client);
        }
        let next_page_token = if has_more {
            clients
                .last()
                .map(|c| crate::crypto::b64url(c.client_id.as_bytes()))
        } else {
            None
        };
        Ok(ClientPage {
            clients,
            next_page_token,
        })
    }

    /// Applies a change another replica (or this one) made to `client_id` in a shared store:
    /// reloads it, or forgets it when it is gone. Blocking; serialised with local writes so an
    /// older read never replaces a newer local write.
    pub fn refresh(&self, client_id: &str) -> Result<(), StoreError> {
        let _guard = self.write_lock.blocking_lock();
        let stored = self.store.get_client(client_id)?;
        self.apply_stored(client_id, stored.as_ref())
    }

    /// Reloads every client (after the change feed missed some changes). Blocking.
    pub fn resync(&self) -> Result<(), StoreError> {
        let _guard = self.write_lock.blocking_lock();
        let mut seen = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_clients(after.as_deref(), 500, &ClientFilter::default())?;
            let Some(last) = page.last() else { break };
            after = Some(last.client_id.clone());
            for stored in &page {
                seen.insert(stored.client_id.clone());
                self.apply_stored(&stored.client_id, Some(stored))?;
            }
        }
        let gone: Vec<String> = self
            .clients
            .read()
            .map(|m| m.keys().filter(|id| !seen.contains(*id)).cloned().collect())
            .unwrap_or_default();
        for id in gone {
            self.apply_stored(&id, None)?;
        }
        Ok(())
    }

    /// Installs `stored` as `client_id` (or removes it), keeping the current record, and so the
    /// warm verification cache, when nothing changed.
    fn apply_stored(
        &self,
        client_id: &str,
        stored: Option<&StoredClient>,
    ) -> Result<(), StoreError> {
        let current = self.lookup(client_id);
        match stored {
            Some(stored) => {
                let same = current.as_ref().is_some_and(|c| {
                    c.secret_hash == stored.secret_hash
                        && c.created_at == stored.created_at
                        && serde_json::to_string(&c.client).is_ok_and(|j| j == stored.json)
                });
                if !same {
                    self.install(record_from(stored, self.next_version(), self.max_lifespan)?);
                }
            }
            None => {
                if let Ok(mut m) = self.clients.write() {
                    m.remove(client_id);
                }
                self.verified.invalidate(client_id);
                // Deleted at another replica: a re-creation here must start in a later second
                // too (see `create`).
                if current.is_some()
                    && let Ok(mut m) = self.deleted_at.lock()
                {
                    let now = clock::now();
                    m.retain(|_, at| *at >= now - 1);
                    m.insert(client_id.to_string(), now);
                }
            }
        }
        Ok(())
    }

    /// The client from memory, or with a shared store from the store when memory does not have
    /// it yet (created at another replica an instant ago).
    async fn lookup_or_fetch(
        &self,
        client_id: &str,
    ) -> Result<Option<Arc<ClientRecord>>, StoreError> {
        if let Some(rec) = self.lookup(client_id) {
            return Ok(Some(rec));
        }
        if !self.store.shared() {
            return Ok(None);
        }
        let _guard = self.write_lock.lock().await;
        if let Some(rec) = self.lookup(client_id) {
            return Ok(Some(rec));
        }
        let store = Arc::clone(&self.store);
        let id = client_id.to_string();
        let stored = crate::store::on_blocking_pool(move || store.get_client(&id)).await?;
        self.apply_stored(client_id, stored.as_ref())?;
        Ok(self.lookup(client_id))
    }

    /// Checks a presented secret; the slow hash runs on the blocking pool and only on a cache
    /// miss.
    pub async fn authenticate_secret(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<Arc<ClientRecord>, AuthError> {
        let rec = match self.lookup_or_fetch(client_id).await {
            Ok(rec) => rec,
            Err(e) => return Err(AuthError::Unavailable(e.to_string())),
        };
        if let Some(rec) = &rec
            && self.verified.check(client_id, secret, rec.version)
        {
            return Ok(Arc::clone(rec));
        }
        // Unknown clients and clients without a secret pay the same slow hash as a wrong
        // secret: the response time must not tell which client ids exist.
        let hash = rec
            .as_ref()
            .and_then(|r| r.secret_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let presented = secret.to_string();
        let Ok(_permit) = self.hashing.acquire().await else {
            return Err(AuthError::WrongSecret);
        };
        let ok = tokio::task::spawn_blocking(move || secret::verify_secret(&presented, &hash))
            .await
            .unwrap_or(false);
        let rec = match rec {
            None => return Err(AuthError::UnknownClient),
            Some(r) if r.secret_hash.is_none() => return Err(AuthError::NoSecret),
            Some(r) => r,
        };
        if !ok {
            return Err(AuthError::WrongSecret);
        }
        // Only cache if the client did not change meanwhile.
        if self
            .lookup(client_id)
            .is_some_and(|current| current.version == rec.version)
        {
            self.verified.insert(client_id, secret, rec.version);
        }
        Ok(rec)
    }

    /// PBKDF2 on the blocking pool, at most one per core at a time (also bounds the CPU an
    /// attacker can burn with wrong secrets).
    async fn hash(&self, secret: Option<String>) -> Result<Option<String>, ClientError> {
        let Some(secret) = secret else {
            return Ok(None);
        };
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        blocking(move || secret::hash_secret(&secret))
            .await?
            .map(Some)
            .map_err(|e| ClientError::Internal(e.to_string()))
    }

    async fn persist(
        &self,
        client: &Client,
        secret_hash: Option<String>,
        created_at: i64,
        updated_at: i64,
        insert: bool,
    ) -> Result<StoredClient, ClientError> {
        let json =
            serde_json::to_string(client).map_err(|e| ClientError::Internal(e.to_string()))?;
        let store = Arc::clone(&self.store);
        let id = client.client_id.clone();
        blocking(move || {
            let stored = StoredClient {
                client_id: id.clone(),
                json,
                secret_hash,
                created_at,
                updated_at,
            };
            if insert {
                store.insert_client(&stored)?;
            } else if !store.update_client(&stored)? {
                return Err(ClientError::NotFound(id));
            }
            Ok(stored)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use serde_json::json;

    fn service() -> ClientService {
        ClientService::load(
            Arc::new(SqliteStore::in_memory().unwrap()),
            lifespan::DEFAULT_MAX,
        )
        .unwrap()
    }

    fn cc_client(id: &str, secret: &str) -> Client {
        serde_json::from_value(json!({
            "client_id": id, "client_secret": secret,
            "grant_types": ["client_credentials"], "scope": "read write",
        }))
        .unwrap()
    }

    #[test]
    fn defaults_follow_hydra() {
        let mut c: Client = serde_json::from_value(json!({"audience": null})).unwrap();
        c.normalize().unwrap();
        assert_eq!(c.grant_types, ["authorization_code"]);
        assert_eq!(c.response_types, ["code"]);
        assert_eq!(c.token_endpoint_auth_method, "client_secret_basic");
        assert_eq!(c.access_token_strategy, "jwt");
        assert_eq!(c.metadata, json!({}));
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (json!({"client_secret": "12345"}), "client_secret"),
            (json!({"grant_types": ["password"]}), "grant_types"),
            (
                json!({"token_endpoint_auth_method": "magic"}),
                "token_endpoint_auth_method",
            ),
            (
                json!({"token_endpoint_auth_method": "private_key_jwt"}),
                "token_endpoint_auth_method",
            ),
            (
                json!({"access_token_strategy": "paseto"}),
                "access_token_strategy",
            ),
            (json!({"jwks": {"keys": "x"}}), "jwks"),
            (json!({"jwks_uri": "ftp://x"}), "jwks_uri"),
            (json!({"audience": [""]}), "audience"),
            (
                json!({"client_credentials_grant_access_token_lifespan": "soon"}),
                "client_credentials_grant_access_token_lifespan",
            ),
            (json!({"metadata": [1]}), "metadata"),
            (json!({"redirect_uris": ["/relative"]}), "redirect_uris"),
            (
                json!({"redirect_uris": ["https://app.example/cb#frag"]}),
                "redirect_uris",
            ),
            (
                json!({"redirect_uris": ["javascript:alert(1)//"]}),
                "redirect_uris",
            ),
            (
                json!({"redirect_uris": ["https://app.example/cb x"]}),
                "redirect_uris",
            ),
            (json!({"redirect_uris": ["https:///cb"]}), "redirect_uris"),
            (
                json!({"post_logout_redirect_uris": ["data:text/html,x"]}),
                "post_logout_redirect_uris",
            ),
            (
                json!({"backchannel_logout_uri": "com.example:/x"}),
                "backchannel_logout_uri",
            ),
            (json!({"response_types": ["code code"]}), "response_types"),
            (json!({"response_types": ["code none"]}), "response_types"),
            (json!({"response_types": ["device"]}), "response_types"),
            (
                json!({"authorization_code_grant_refresh_token_lifespan": "-1h"}),
                "authorization_code_grant_refresh_token_lifespan",
            ),
            (
                json!({"refresh_token_grant_id_token_lifespan": "0s"}),
                "refresh_token_grant_id_token_lifespan",
            ),
        ];
        for (input, field) in cases {
            let mut c: Client = serde_json::from_value(input.clone()).unwrap();
            match c.normalize() {
                Err(ClientError::Invalid { field: f, .. }) => assert_eq!(f, field, "{input}"),
                other => panic!("{input}: {other:?}"),
            }
        }
    }

    #[test]
    fn browser_fields_are_kept_with_hydra_names() {
        let mut c: Client = serde_json::from_value(json!({
            "redirect_uris": ["https://app.example/cb", "http://127.0.0.1/cb", "com.example.app:/cb"],
            "post_logout_redirect_uris": ["https://app.example/bye"],
            "response_types": ["code", "id_token code"],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
            "skip_consent": true,
            "frontchannel_logout_uri": "https://app.example/fc",
            "backchannel_logout_uri": "https://app.example/bc",
            "backchannel_logout_session_required": true,
            "authorization_code_grant_refresh_token_lifespan": "2h",
            "refresh_token_grant_access_token_lifespan": "",
        }))
        .unwrap();
        c.normalize().unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["skip_consent"], true);
        assert_eq!(
            v["post_logout_redirect_uris"],
            json!(["https://app.example/bye"])
        );
        assert_eq!(v["backchannel_logout_session_required"], true);
        assert_eq!(v["authorization_code_grant_refresh_token_lifespan"], "2h");
        assert!(v.get("refresh_token_grant_access_token_lifespan").is_none());
        assert_eq!(c.auth_method(), AuthMethod::None);
        let lifespans = GrantLifespans::of(&c, 3600);
        assert_eq!(lifespans.code_refresh, Some(7200));
        assert_eq!(lifespans.refresh_access, None);
    }

    #[test]
    fn unknown_fields_round_trip() {
        let c: Client = serde_json::from_value(
            json!({"userinfo_signed_response_alg": "none", "client_name": "x"}),
        )
        .unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["userinfo_signed_response_alg"], "none");
        assert!(v.get("client_secret").is_none());
    }

    #[tokio::test]
    async fn create_generates_id_and_secret_once() {
        let svc = service();
        let c = Client {
            grant_types: vec!["client_credentials".into()],
            ..Default::default()
        };
        let created = svc.create(c).await.unwrap();
        assert!(uuid::Uuid::parse_str(&created.client_id).is_ok());
        let secret = created.client_secret.clone().unwrap();
        assert!(secret.len() >= 32);
        assert!(svc.get(&created.client_id).unwrap().client_secret.is_none());
        assert!(
            svc.authenticate_secret(&created.client_id, &secret)
                .await
                .is_ok()
        );
        assert!(matches!(
            svc.create(created.clone()).await,
            Err(ClientError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn secret_cache_is_invalidated_on_update() {
        let svc = service();
        svc.create(cc_client("c1", "old-secret")).await.unwrap();
        // First call verifies slowly and caches, second hits the cache.
        svc.authenticate_secret("c1", "old-secret").await.unwrap();
        assert_eq!(svc.verified.len(), 1);
        svc.authenticate_secret("c1", "old-secret").await.unwrap();
        svc.update("c1", cc_client("c1", "new-secret"))
            .await
            .unwrap();
        assert_eq!(
            svc.authenticate_secret("c1", "old-secret")
                .await
                .unwrap_err(),
            AuthError::WrongSecret
        );
        svc.authenticate_secret("c1", "new-secret").await.unwrap();
        svc.delete("c1").await.unwrap();
        assert_eq!(
            svc.authenticate_secret("c1", "new-secret")
                .await
                .unwrap_err(),
            AuthError::UnknownClient
        );
    }

    #[tokio::test]
    async fn put_without_secret_keeps_it() {
        let svc = service();
        svc.create(cc_client("c1", "the-secret")).await.unwrap();
        let mut c = cc_client("c1", "x");
        c.client_secret = None;
        c.client_name = "renamed".into();
        let updated = svc.update("c1", c).await.unwrap();
        assert!(updated.client_secret.is_none());
        assert_eq!(svc.get("c1").unwrap().client_name, "renamed");
        svc.authenticate_secret("c1", "the-secret").await.unwrap();
        assert!(matches!(
            svc.update("missing", cc_client("missing", "abcdefg")).await,
            Err(ClientError::NotFound(_))
        ));
        assert!(matches!(
            svc.update("c1", cc_client("other", "abcdefg")).await,
            Err(ClientError::Invalid {
                field: "client_id",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn json_patch_edits_fields_and_secret() {
        let svc = service();
        svc.create(cc_client("c1", "the-secret")).await.unwrap();
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "replace", "path": "/scope", "value": "admin"},
            {"op": "add", "path": "/audience/-", "value": "https://api"},
            {"op": "add", "path": "/client_secret", "value": "patched-secret"},
        ]))
        .unwrap();
        let patched = svc.patch("c1", &patch).await.unwrap();
        assert_eq!(patched.scope, "admin");
        assert_eq!(patched.audience, ["https://api"]);
        svc.authenticate_secret("c1", "patched-secret")
            .await
            .unwrap();
        let bad: json_patch::Patch =
            serde_json::from_value(json!([{"op": "replace", "path": "/client_id", "value": "x"}]))
                .unwrap();
        assert!(matches!(
            svc.patch("c1", &bad).await,
            Err(ClientError::Invalid {
                field: "client_id",
                ..
            })
        ));
        let failing: json_patch::Patch =
            serde_json::from_value(json!([{"op": "remove", "path": "/nope"}])).unwrap();
        assert!(matches!(
            svc.patch("c1", &failing).await,
            Err(ClientError::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn a_recreated_client_starts_after_its_predecessor_was_deleted() {
        let svc = service();
        svc.create(cc_client("again", "the-secret")).await.unwrap();
        let before_delete = clock::now();
        svc.delete("again").await.unwrap();
        svc.create(cc_client("again", "the-secret")).await.unwrap();
        // Every token of the old client has iat <= the deletion second < created_at.
        assert!(svc.lookup("again").unwrap().created_at > before_delete);
    }

    #[tokio::test]
    async fn lifespans_above_the_maximum_are_refused_on_every_write_path() {
        let svc = service();
        let with = |lifespan: &str| {
            let mut c = cc_client("long", "the-secret");
            c.client_credentials_grant_access_token_lifespan = Some(lifespan.into());
            c
        };
        let too_long = |r: Result<_, ClientError>| {
            matches!(
                r,
                Err(ClientError::Invalid {
                    field: "client_credentials_grant_access_token_lifespan",
                    ..
                })
            )
        };
        // The reconcilers register through upsert: an OAuth2Client gets the same refusal.
        assert!(too_long(
            svc.upsert(with("9223372036854775807")).await.map(|_| ())
        ));
        assert!(too_long(svc.create(with("25h")).await.map(|_| ())));
        svc.create(with("24h")).await.unwrap();
        assert_eq!(svc.lookup("long").unwrap().lifespan_secs, Some(86_400));
        assert!(too_long(
            svc.update("long", with("24h1s")).await.map(|_| ())
        ));
        let patch: json_patch::Patch = serde_json::from_value(json!([{"op": "replace",
            "path": "/client_credentials_grant_access_token_lifespan", "value": "9223372036854775807"}]))
        .unwrap();
        assert!(too_long(svc.patch("long", &patch).await.map(|_| ())));
        assert_eq!(svc.max_lifespan_secs(), 86_400);

        // The browser grants' signed tokens are bounded the same way; refresh tokens are stored,
        // not signed, so no key waits on them.
        let mut id_token = cc_client("oidc", "the-secret");
        id_token.authorization_code_grant_id_token_lifespan = Some("9223372036854775807".into());
        assert!(matches!(
            svc.create(id_token).await,
            Err(ClientError::Invalid {
                field: "authorization_code_grant_id_token_lifespan",
                ..
            })
        ));
        let mut refresh = cc_client("oidc", "the-secret");
        refresh.refresh_token_grant_refresh_token_lifespan = Some("8760h".into());
        svc.create(refresh).await.unwrap();
    }

    #[tokio::test]
    async fn unknown_clients_cost_a_hash_and_fail_like_wrong_secrets() {
        let svc = service();
        svc.create(cc_client("c1", "the-secret")).await.unwrap();
        assert_eq!(
            svc.authenticate_secret("nobody", "the-secret").await.err(),
            Some(AuthError::UnknownClient)
        );
        assert_eq!(
            svc.authenticate_secret("c1", "wrong-secret").await.err(),
            Some(AuthError::WrongSecret)
        );
        assert!(!secret::verify_secret("", &svc.dummy_hash));
        assert!(svc.dummy_hash.starts_with("$pbkdf2-sha256$i=25000,"));
    }

    #[tokio::test]
    async fn upsert_creates_then_rotates_secret() {
        let svc = service();
        let out = svc.upsert(cc_client("rec", "first-secret")).await.unwrap();
        assert!(matches!(out, UpsertOutcome::Created(_)));
        let version = svc.lookup("rec").unwrap().version;
        // Same fields and secret: nothing written, cache kept.
        let out = svc.upsert(cc_client("rec", "first-secret")).await.unwrap();
        assert!(matches!(out, UpsertOutcome::Unchanged(_)), "{out:?}");
        assert_eq!(svc.lookup("rec").unwrap().version, version);
        // Changed field: updated, secret kept.
        let mut renamed = cc_client("rec", "first-secret");
        renamed.client_name = "renamed".into();
        assert!(matches!(
            svc.upsert(renamed).await.unwrap(),
            UpsertOutcome::Updated(_)
        ));
        svc.authenticate_secret("rec", "first-secret")
            .await
            .unwrap();
        // New secret: updated, old secret refused.
        let mut rotated = cc_client("rec", "second-secret");
        rotated.client_name = "renamed".into();
        let out = svc.upsert(rotated).await.unwrap();
        assert!(matches!(out, UpsertOutcome::Updated(_)));
        assert_eq!(out.client().client_secret.as_deref(), Some("second-secret"));
        assert!(
            svc.authenticate_secret("rec", "first-secret")
                .await
                .is_err()
        );
        svc.authenticate_secret("rec", "second-secret")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn list_pages_with_tokens() {
        let svc = service();
        for i in 0..5 {
            svc.create(cc_client(&format!("c{i}"), "secret-1"))
                .await
                .unwrap();
        }
        let p1 = svc.list(2, None).await.unwrap();
        assert_eq!(
            p1.clients
                .iter()
                .map(|c| c.client_id.as_str())
                .collect::<Vec<_>>(),
            ["c0", "c1"]
        );
        let p2 = svc.list(2, p1.next_page_token.as_deref()).await.unwrap();
        assert_eq!(p2.clients[0].client_id, "c2");
        let p3 = svc.list(2, p2.next_page_token.as_deref()).await.unwrap();
        assert_eq!(p3.clients.len(), 1);
        assert!(p3.next_page_token.is_none());
        assert!(p3.clients.iter().all(|c| c.client_secret.is_none()));
        assert!(matches!(
            svc.list(2, Some("!!")).await,
            Err(ClientError::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn clients_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let svc = ClientService::load(
                Arc::new(SqliteStore::open(dir.path()).unwrap()),
                lifespan::DEFAULT_MAX,
            )
            .unwrap();
            svc.create(cc_client("persist", "persisted-secret"))
                .await
                .unwrap();
        }
        let svc = ClientService::load(
            Arc::new(SqliteStore::open(dir.path()).unwrap()),
            lifespan::DEFAULT_MAX,
        )
        .unwrap();
        let rec = svc
            .authenticate_secret("persist", "persisted-secret")
            .await
            .unwrap();
        assert_eq!(rec.scopes, ["read", "write"]);
    }
}
