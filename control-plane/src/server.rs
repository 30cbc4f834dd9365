//! The service and its two HTTP servers: public (tokens, JWKS, discovery; default port 4444)
//! and admin (clients, keys, introspection, metrics; default port 4445), with background purge
//! and key rotation, and graceful shutdown.
//!
//! Embedding (the reconcilers): `let svc = Service::open(config)?;` then use `svc.clients`
//! ([`crate::client::ClientService`]) and run [`serve`] with the same `Arc<Service>`.

use crate::admin;
use crate::client::ClientService;
use crate::clock;
use crate::crypto::SystemSecret;
use crate::discovery;
use crate::health;
use crate::introspect;
use crate::keys::{ACCESS_TOKEN_SET, Alg, KeyService};
use crate::metrics::{self, HttpMetrics, Metrics};
use crate::oauth2_error::OAuth2Error;
use crate::revoke;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Change, Store};
use crate::token;
use axum::Router;
use axum::routing::{get, post};
use portcullis_core::scope::ScopeStrategy;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// The algorithm of a new store's signing key: RS256, as Hydra, OpenID Connect (the ID-token
/// default) and Oathkeeper's `jwt` authenticator (RS256 only unless `allowed_algorithms` says
/// otherwise) expect, so tokens work with verifiers configured for Hydra. It costs speed: on
/// the 2-core reference machine RSA-2048 signing caps RS256 at ~7,000 tokens/s, while
/// `--signing-alg ES256` issues ~50,000/s.
pub const DEFAULT_SIGNING_ALG: Alg = Alg::RS256;

/// The store-wide critical section of creating and rotating signing keys.
const KEYS_LOCK: &str = "signing-keys";

#[derive(Debug, Clone)]
pub struct Config {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The `iss` of tokens, exactly as configured; endpoint URLs are built on it without its
    /// trailing slash.
    pub issuer: String,
    pub data_dir: PathBuf,
    /// PostgreSQL shared by the replicas (`--dsn`); `None` keeps SQLite in `data_dir`.
    pub dsn: Option<String>,
    /// Pool size and timeouts of the PostgreSQL store.
    pub postgres: crate::store::postgres::Options,
    /// Apply pending PostgreSQL migrations at start (off: `--no-migrate`).
    pub migrate: bool,
    pub signing_alg: Alg,
    /// When the store already has a signing key, keep its algorithm instead of `signing_alg`
    /// (the CLI sets this when `--signing-alg` is not given): an upgrade must not switch the
    /// algorithm under verifiers that only accept the old one.
    pub keep_existing_alg: bool,
    pub access_token_ttl: Duration,
    /// The longest access-token lifespan, global or per client (see [`crate::lifespan`]).
    pub max_access_token_ttl: Duration,
    pub scope_strategy: ScopeStrategy,
    pub key_rotation: Option<Duration>,
    /// How long a scheduled rotation's new key is in the JWKS before it signs (see
    /// [`crate::keys`]); rotations over the admin API sign at once.
    pub key_prepublish: Duration,
    pub secrets_file: Option<PathBuf>,
    pub secrets_system: Option<String>,
    pub shutdown_timeout: Duration,
    pub purge_interval: Duration,
    /// Connection caps and timeouts of the public and admin ports (see [`connections`]).
    pub public_limits: connections::Limits,
    pub admin_limits: connections::Limits,
    /// Names the admin API answers to besides IP literals and `localhost` (see
    /// [`crate::admin_guard`]).
    pub admin_hosts: Vec<String>,
    /// Lets clients' `jwks_uri` resolve to loopback, private or link-local addresses.
    pub allow_private_jwks_uri: bool,
    /// Browser flows (login/consent URLs, PKCE, lifetimes).
    pub flows: crate::flow::FlowConfig,
}

impl Config {
    /// Defaults for a data directory (ports 4444/4445 on loopback, RS256, 1h, wildcard).
    pub fn new(data_dir: PathBuf) -> Self {
        let public_addr = SocketAddr::from(([127, 0, 0, 1], 4444));
        Self {
            public_addr,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 4445)),
            issuer: format!("http://{public_addr}"),
            data_dir,
            dsn: None,
            postgres: crate::store::postgres::Options::default(),
            migrate: true,
            signing_alg: DEFAULT_SIGNING_ALG,
            keep_existing_alg: false,
            access_token_ttl: Duration::from_secs(3600),
            max_access_token_ttl: crate::lifespan::DEFAULT_MAX,
            scope_strategy: ScopeStrategy::Wildcard,
            key_rotation: None,
            key_prepublish: Duration::ZERO,
            secrets_file: None,
            secrets_system: None,
            shutdown_timeout: Duration::from_secs(10),
            purge_interval: Duration::from_secs(60),
            allow_private_jwks_uri: false,
            admin_hosts: Vec::new(),
            public_limits: connections::Limits {
                max_connections: 1024,
                header_timeout: Duration::from_secs(10),
                body_timeout: Duration::from_secs(30),
            },
            admin_limits: connections::Limits {
                max_connections: 256,
                header_timeout: Duration::from_secs(10),
                body_timeout: Duration::from_secs(30),
            },
            flows: crate::flow::FlowConfig::default(),
        }
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.issuer.trim_end_matches('/'))
    }

    pub fn access_token_ttl_secs(&self) -> i64 {
        crate::lifespan::secs(self.access_token_ttl)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("system secret: {0}")]
    Secret(#[from] crate::crypto::CryptoError),
    #[error("signing keys: {0}")]
    Keys(#[from] crate::keys::KeyError),
    #[error("token lifespan: {0}")]
    Lifespan(#[from] crate::lifespan::BoundError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Postgres(#[from] crate::store::postgres::ConfigError),
    #[error("migrating the database: {0}")]
    Migrate(#[from] crate::store::postgres::MigrateError),
    #[error(
        "--dsn: every replica must decrypt the same keys, so give the shared system secret \
         (--secrets-file or PORTCULLIS_SECRETS_SYSTEM)"
    )]
    SharedSecretRequired,
}

pub struct Service {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub clients: ClientService,
    pub keys: KeyService,
    pub metrics: Arc<Metrics>,
    pub verified_jwts: introspect::JwtCache,
    pub jwks_fetcher: crate::jwks_uri::JwksFetcher,
    /// Delivers back-channel logout tokens.
    pub backchannel: crate::backchannel_logout::Notifier,
    /// Revoked JWT ids and their `exp`, mirrored from the store for allocation-free checks.
    revoked: RwLock<HashMap<String, i64>>,
    /// Whether what is in memory follows the store: always with the embedded store; with a
    /// shared one only while its change feed is connected (see [`Self::require_current`]).
    current: AtomicBool,
    /// Whether browser cookies get `Secure` (see [`crate::browser_session::secure_cookies`]);
    /// decided once from the issuer rather than by parsing it on every browser request.
    secure_cookies: bool,
}

impl Service {
    /// Opens the store (PostgreSQL with `config.dsn`, migrated unless told not to; otherwise
    /// SQLite in `config.data_dir`), loads clients and keys, and makes sure a signing key of
    /// `config.signing_alg` exists. Blocking (may generate an RSA key).
    pub fn open(config: Config) -> Result<Arc<Self>, StartError> {
        let store: Arc<dyn Store> = match &config.dsn {
            Some(dsn) => {
                if config.secrets_file.is_none() && config.secrets_system.is_none() {
                    return Err(StartError::SharedSecretRequired);
                }
                let pg = PostgresStore::connect(dsn, &config.postgres)?;
                if config.migrate {
                    let applied = pg.migrate()?;
                    if !applied.is_empty() {
                        tracing::info!(versions = ?applied, "database schema migrated");
                    }
                }
                Arc::new(pg)
            }
            None => Arc::new(SqliteStore::open(&config.data_dir)?),
        };
        Self::with_store(config, store)
    }

    pub fn with_store(mut config: Config, store: Arc<dyn Store>) -> Result<Arc<Self>, StartError> {
        crate::lifespan::check_config(config.access_token_ttl, config.max_access_token_ttl)?;
        let (secret, generated) = SystemSecret::load(
            config.secrets_file.as_deref(),
            config.secrets_system.as_deref(),
            &config.data_dir,
        )?;
        if generated {
            tracing::warn!(
                path = %config.data_dir.join("secrets.key").display(),
                "no --secrets-file or PORTCULLIS_SECRETS_SYSTEM given: private keys are encrypted \
                 with a generated secret stored next to the database"
            );
        }
        let clients = ClientService::load(Arc::clone(&store), config.max_access_token_ttl)?;
        let keys = KeyService::load(Arc::clone(&store), secret)?;
        if config.keep_existing_alg
            && let Some(current) = keys.ring().current(ACCESS_TOKEN_SET)
        {
            config.signing_alg = current.alg;
        }
        let revoked = store.list_revocations(clock::now())?.into_iter().collect();
        let shared = store.shared();
        let jwks_fetcher = crate::jwks_uri::JwksFetcher::new(config.allow_private_jwks_uri);
        let secure_cookies = crate::browser_session::secure_cookies(&config.issuer);
        let svc = Arc::new(Self {
            config,
            store,
            clients,
            keys,
            metrics: Arc::new(Metrics::new()),
            verified_jwts: introspect::JwtCache::new(100_000),
            jwks_fetcher,
            backchannel: crate::backchannel_logout::Notifier::new(),
            revoked: RwLock::new(revoked),
            current: AtomicBool::new(!shared),
            secure_cookies,
        });
        if shared {
            let weak = Arc::downgrade(&svc);
            svc.store
                .watch(Box::new(move |change| match weak.upgrade() {
                    Some(svc) => {
                        svc.apply(change);
                        true
                    }
                    None => false,
                }))?;
        }
        {
            // Replicas starting together on an empty database: one creates the key, the
            // others find it once they get the lock.
            let _lock = svc.store.lock(KEYS_LOCK)?;
            svc.keys.reload()?;
            svc.keys.ensure_current(
                ACCESS_TOKEN_SET,
                svc.config.signing_alg,
                svc.max_token_ttl(),
            )?;
            crate::id_token_keys::ensure(&svc.keys, svc.max_token_ttl())?;
        }
        Ok(svc)
    }

    /// Applies a change reported by a shared store to what this replica keeps in memory.
    /// Runs on the change feed's thread (blocking).
    fn apply(&self, change: Change) {
        let result = match change {
            Change::Client(id) => self.clients.refresh(&id).map_err(|e| e.to_string()),
            Change::Keys => self.keys.reload().map_err(|e| e.to_string()),
            Change::Revocation { jti, expires_at } => {
                if let Ok(mut r) = self.revoked.write() {
                    r.insert(jti, expires_at);
                }
                Ok(())
            }
            Change::Resync => self.resync(),
            Change::Lost => {
                self.current.store(false, Ordering::SeqCst);
                Ok(())
            }
        };
        if let Err(e) = result {
            // Something may now be stale: stop serving from memory until a reload succeeds.
            tracing::warn!(error = %e, "applying a change from the store failed");
            self.current.store(false, Ordering::SeqCst);
            let mut delay = std::time::Duration::from_millis(100);
            loop {
                match self.resync() {
                    Ok(()) => break,
                    Err(e) => tracing::warn!(error = %e, "reloading from the store failed"),
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }

    /// Reloads clients, keys and revocations; the replica serves from memory again after.
    fn resync(&self) -> Result<(), String> {
        self.clients.resync().map_err(|e| e.to_string())?;
        self.keys.reload().map_err(|e| e.to_string())?;
        let revoked: HashMap<String, i64> = self
            .store
            .list_revocations(clock::now())
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        if let Ok(mut r) = self.revoked.write() {
            *r = revoked;
        }
        self.current.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether browser cookies carry `Secure`: not for a plain-http loopback issuer.
    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies
    }

    /// Fails with 503 while this replica may be serving stale clients, keys or revocations: a
    /// replica cut off from the shared store's change feed cannot know that a secret was
    /// rotated or a token revoked at another replica, so it answers nothing from memory.
    pub fn require_current(&self) -> Result<(), OAuth2Error> {
        if self.current.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(OAuth2Error::unavailable(
                "the store's change feed is down: clients and keys may be stale",
            ))
        }
    }

    /// Whether [`Self::require_current`] passes (readiness).
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Relaxed)
    }

    /// The longest lifetime any token may have now (global or per-client).
    pub fn max_token_ttl(&self) -> i64 {
        self.config
            .access_token_ttl_secs()
            .max(self.clients.max_lifespan_secs())
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked
            .read()
            .map(|r| r.contains_key(jti))
            .unwrap_or(true)
    }

    /// Persists a JWT revocation, then applies it in memory.
    pub async fn revoke_jti(&self, jti: String, exp: i64) -> Result<(), OAuth2Error> {
        let store = Arc::clone(&self.store);
        let j = jti.clone();
        crate::store::on_blocking_pool(move || store.insert_revocation(&j, exp)).await?;
        self.revoked_persisted(jti, exp);
        Ok(())
    }

    /// Applies in memory a JWT revocation already persisted (in a step's transaction).
    pub fn revoked_persisted(&self, jti: String, exp: i64) {
        if let Ok(mut r) = self.revoked.write() {
            r.insert(jti, exp);
        }
    }

    /// Rotates the access-token signing key (blocking).
    pub fn rotate_signing_key(
        &self,
        alg: Alg,
        kid: Option<String>,
    ) -> Result<Arc<crate::keys::SigningKey>, crate::keys::KeyError> {
        self.rotate_key(ACCESS_TOKEN_SET, alg, kid)
    }

    /// Creates a key in `set`, making it current (blocking). Under the store's key lock: two
    /// replicas rotating at once would each retire the other's new key.
    pub fn rotate_key(
        &self,
        set: &str,
        alg: Alg,
        kid: Option<String>,
    ) -> Result<Arc<crate::keys::SigningKey>, crate::keys::KeyError> {
        let _lock = self.store.lock(KEYS_LOCK)?;
        // An id-token key stays published as long as a token it signed can be presented.
        let published = if set == crate::id_token_keys::ID_TOKEN_SET {
            crate::id_token_keys::published_secs(self.max_token_ttl())
        } else {
            self.max_token_ttl()
        };
        // An explicit rotation signs at once (Hydra's API; after a compromise, what is wanted).
        self.keys.rotate(set, alg, kid, published, 0)
    }

    /// Deletes one key or a whole set (blocking); the access-token set gets a new key at once
    /// when its current one went, so the service never lacks a signing key.
    pub fn delete_keys(&self, set: &str, kid: Option<&str>) -> Result<bool, crate::keys::KeyError> {
        let _lock = self.store.lock(KEYS_LOCK)?;
        let deleted = self.keys.delete(set, kid)?;
        if deleted && set == ACCESS_TOKEN_SET {
            self.keys.ensure_current(
                ACCESS_TOKEN_SET,
                self.config.signing_alg,
                self.max_token_ttl(),
            )?;
        }
        Ok(deleted)
    }

    fn purge(&self) {
        let now = clock::now();
        match self.store.purge_expired(now) {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "purged expired rows"),
            Ok(_) => {}
            // Already reported by the store, once for the whole outage.
            Err(crate::store::StoreError::Unwritable(_)) => {}
            Err(e) => tracing::warn!(error = %e, "purging expired rows failed"),
        }
        if let Ok(mut r) = self.revoked.write() {
            r.retain(|_, exp| *exp > now);
        }
        if let Err(e) = self.keys.reload() {
            tracing::warn!(error = %e, "reloading keys failed");
        }
    }

    /// Rotates when due, once across replicas: under the store's key lock, after reloading
    /// (another replica may just have rotated). Blocking.
    fn scheduled_rotation(
        &self,
        period: Duration,
    ) -> Result<Option<Arc<crate::keys::SigningKey>>, crate::keys::KeyError> {
        let _lock = self.store.lock(KEYS_LOCK)?;
        self.keys.reload()?;
        if !self.rotation_due(period) {
            return Ok(None);
        }
        self.keys
            .rotate(
                ACCESS_TOKEN_SET,
                self.config.signing_alg,
                None,
                self.max_token_ttl(),
                i64::try_from(self.config.key_prepublish.as_secs()).unwrap_or(i64::MAX),
            )
            .map(Some)
    }

    fn rotation_due(&self, period: Duration) -> bool {
        let ring = self.keys.ring();
        let period = i64::try_from(period.as_secs()).unwrap_or(i64::MAX);
        // The newest key, pre-published or signing: a pending one is the rotation already done.
        ring.newest(ACCESS_TOKEN_SET)
            .is_none_or(|k| k.created_at.saturating_add(period) <= clock::now())
    }

    /// Starts the purge task and, with `--key-rotation`, the rotation task.
    pub fn spawn_background(self: &Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        let svc = Arc::clone(self);
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(svc.config.purge_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let s = Arc::clone(&svc);
                        let _ = tokio::task::spawn_blocking(move || s.purge()).await;
                    }
                    _ = stop.changed() => break,
                }
            }
        });
        if let Some(period) = self.config.key_rotation {
            let svc = Arc::clone(self);
            let mut stop = shutdown;
            tokio::spawn(async move {
                let check = (period / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
                let mut tick = tokio::time::interval(check);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if svc.rotation_due(period) {
                                let s = Arc::clone(&svc);
                                match tokio::task::spawn_blocking(move || s.scheduled_rotation(period)).await {
                                    Ok(Ok(Some(k))) => tracing::info!(kid = %k.kid, "scheduled key rotation"),
                                    Ok(Ok(None)) => {}
                                    Ok(Err(e)) => tracing::error!(error = %e, "scheduled key rotation failed"),
                                    Err(e) => tracing::error!(error = %e, "scheduled key rotation panicked"),
                                }
                            }
                        }
                        _ = stop.changed() => break,
                    }
                }
            });
        }
    }
}

fn common(router: Router<Arc<Service>>, svc: &Arc<Service>, server: &'static str) -> Router {
    router
        .route("/health/alive", get(health::alive))
        .route("/health/ready", get(health::ready))
        .route("/version", get(health::version))
        .fallback(|| async { OAuth2Error::not_found("The requested resource does not exist.") })
        .method_not_allowed_fallback(|| async {
            OAuth2Error::new(
                crate::oauth2_error::ErrorCode::MethodNotAllowed,
                "The HTTP method is not allowed on this resource.",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            HttpMetrics {
                metrics: Arc::clone(&svc.metrics),
                server,
            },
            metrics::track,
        ))
        .with_state(Arc::clone(svc))
}

pub fn public_app(svc: Arc<Service>) -> Router {
    let r = Router::new()
        .route("/oauth2/token", post(token::token_endpoint))
        .route("/oauth2/revoke", post(revoke::revoke_endpoint))
        .route(
            "/oauth2/auth",
            get(crate::authorize::authorization_endpoint)
                .post(crate::authorize::authorization_endpoint),
        )
        .route(
            "/oauth2/fallbacks/error",
            get(crate::authorize::fallback_error),
        )
        .route(
            "/oauth2/sessions/logout",
            get(crate::logout::logout_endpoint).post(crate::logout::logout_endpoint),
        )
        .route(
            "/oauth2/fallbacks/logout/callback",
            get(crate::logout::logged_out),
        )
        .route(
            "/userinfo",
            get(crate::userinfo::userinfo_endpoint).post(crate::userinfo::userinfo_endpoint),
        )
        .route(
            "/.well-known/openid-configuration",
            get(discovery::discovery_endpoint),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(discovery::discovery_endpoint),
        )
        .route("/.well-known/jwks.json", get(discovery::jwks_endpoint))
        .route(
            crate::id_token_keys::PUBLIC_JWKS_PATH,
            get(crate::id_token_keys::public_jwks_endpoint),
        );
    common(r, &svc, "public")
}

pub fn admin_app(svc: Arc<Service>) -> Router {
    // Hydra answers every admin path with and without the /admin prefix.
    let routes = Router::new()
        .route(
            "/clients",
            get(admin::list_clients).post(admin::create_client),
        )
        .route(
            "/clients/{id}",
            get(admin::get_client)
                .put(admin::put_client)
                .patch(admin::patch_client)
                .delete(admin::delete_client),
        )
        .route("/oauth2/introspect", post(introspect::introspect_endpoint))
        .route(
            "/keys/{set}",
            get(admin::get_key_set)
                .post(admin::create_key)
                .delete(admin::delete_key_set),
        )
        .route(
            "/keys/{set}/{kid}",
            get(admin::get_key).delete(admin::delete_key),
        )
        .route("/metrics/prometheus", get(metrics::prometheus_endpoint))
        .route(
            "/id-token/private-jwks.json",
            get(crate::id_token_keys::private_jwks_endpoint),
        )
        .route(
            "/oauth2/auth/requests/login",
            get(crate::login_consent::get_login_request),
        )
        .route(
            "/oauth2/auth/requests/login/accept",
            axum::routing::put(crate::login_consent::accept_login),
        )
        .route(
            "/oauth2/auth/requests/login/reject",
            axum::routing::put(crate::login_consent::reject_login),
        )
        .route(
            "/oauth2/auth/requests/consent",
            get(crate::login_consent::get_consent_request),
        )
        .route(
            "/oauth2/auth/requests/consent/accept",
            axum::routing::put(crate::login_consent::accept_consent),
        )
        .route(
            "/oauth2/auth/requests/consent/reject",
            axum::routing::put(crate::login_consent::reject_consent),
        )
        .route(
            "/oauth2/auth/sessions/consent",
            get(crate::sessions::list_consents).delete(crate::sessions::revoke_consents),
        )
        .route(
            "/oauth2/auth/sessions/login",
            axum::routing::delete(crate::sessions::revoke_logins),
        )
        .route(
            "/oauth2/auth/requests/logout",
            get(crate::logout::get_logout_request),
        )
        .route(
            "/oauth2/auth/requests/logout/accept",
            axum::routing::put(crate::logout::accept_logout),
        )
        .route(
            "/oauth2/auth/requests/logout/reject",
            axum::routing::put(crate::logout::reject_logout),
        );
    let r = Router::new().merge(routes.clone()).nest("/admin", routes);
    let allowed = crate::admin_guard::AllowedHosts::new(&svc.config.admin_hosts);
    common(r, &svc, "admin").layer(axum::middleware::from_fn_with_state(
        allowed,
        crate::admin_guard::guard,
    ))
}

/// Binds both listeners, runs until `shutdown` resolves, then lets in-flight requests finish
/// (at most `config.shutdown_timeout`).
pub async fn serve(
    svc: Arc<Service>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let public = TcpListener::bind(svc.config.public_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: svc.config.public_addr,
            source,
        })?;
    let admin = TcpListener::bind(svc.config.admin_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: svc.config.admin_addr,
            source,
        })?;
    let apps = Apps::new(&svc);
    serve_on(svc, public, admin, apps, shutdown).await
}

/// The two routers to serve. Embedders add routes with `Router::merge` (e.g. a reconciler
/// serving the filter module on the public port): `apps.public = apps.public.merge(extra)`.
pub struct Apps {
    pub public: Router,
    pub admin: Router,
}

impl Apps {
    pub fn new(svc: &Arc<Service>) -> Self {
        Self {
            public: public_app(Arc::clone(svc)),
            admin: admin_app(Arc::clone(svc)),
        }
    }
}

/// Like [`serve`] on already-bound listeners (tests bind port 0) with the given routers.
pub async fn serve_on(
    svc: Arc<Service>,
    public: TcpListener,
    admin: TcpListener,
    apps: Apps,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    svc.spawn_background(rx.clone());
    tracing::info!(
        public = %public.local_addr().map_err(StartError::Serve)?,
        admin = %admin.local_addr().map_err(StartError::Serve)?,
        issuer = %svc.config.issuer,
        alg = %svc.config.signing_alg,
        "portcullis token service listening"
    );
    let mut public_limits = svc.config.public_limits;
    public_limits.max_connections = connections::fit_to_fd_limit(
        public_limits.max_connections,
        svc.config.admin_limits.max_connections,
    );
    let public_srv = connections::serve(
        public,
        apps.public,
        public_limits,
        Arc::clone(&svc.metrics),
        "public",
        rx.clone(),
    );
    let admin_srv = connections::serve(
        admin,
        apps.admin,
        svc.config.admin_limits,
        Arc::clone(&svc.metrics),
        "admin",
        rx.clone(),
    );
    let mut servers = tokio::spawn(async move { tokio::try_join!(public_srv, admin_srv) });
    tokio::select! {
        res = &mut servers => {
            return match res {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(StartError::Serve(e)),
                Err(e) => Err(StartError::Serve(std::io::Error::other(e.to_string()))),
            };
        }
        _ = shutdown => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = tx.send(true);
    match tokio::time::timeout(svc.config.shutdown_timeout, servers).await {
        Ok(Ok(Ok(_))) => tracing::info!("shut down cleanly"),
        Ok(Ok(Err(e))) => return Err(StartError::Serve(e)),
        Ok(Err(e)) => return Err(StartError::Serve(std::io::Error::other(e.to_string()))),
        Err(_) => tracing::warn!("shutdown timeout reached; dropping remaining connections"),
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

pub mod connections;
#[cfg(test)]
mod tests;
