//! Command line: `portcullis serve` and its flags, each also settable by an environment
//! variable (shown in `--help`).

use clap::{Parser, Subcommand, ValueEnum};
use portcullis::clock::parse_duration;
use portcullis::keys::Alg;
use portcullis::server::Config;
use portcullis_core::scope::ScopeStrategy;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Portcullis control plane: Hydra-compatible token service"
)]
pub struct Cli {
    /// Log output format.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info`, `portcullis=debug`).
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once at start: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the token service (public and admin HTTP servers), and with `--manifests` or
    /// `--kubernetes` the reconcilers.
    Serve(ServeArgs),
    /// Print the CustomResourceDefinitions (OAuth2Client, Rule) as YAML.
    Crds,
    /// Print the WasmPlugin (or EnvoyFilter) resources for the manifests in a directory.
    Render(RenderArgs),
    /// Evaluate one request against rules with the filter's core and print the trace; exit 0
    /// for allow, 1 for deny, 2 when the input is wrong.
    Test(TestArgs),
    /// Apply the PostgreSQL schema (idempotent), optionally copying an embedded SQLite store in.
    Migrate(MigrateArgs),
}

/// Where the shared PostgreSQL store is and how to use it (`serve` and `migrate`).
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL shared by every replica: `postgres://USER:PASS@HOST:PORT/DB?sslmode=...`
    /// (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`; with TLS the server
    /// certificate is always verified; `sslrootcert`, `sslcert`, `sslkey` as in libpq). Also
    /// read from Hydra's `DSN` variable. Without it the embedded SQLite store in --data-dir.
    #[arg(long, env = "PORTCULLIS_DSN", hide_env_values = true)]
    pub dsn: Option<String>,
    /// Most PostgreSQL connections a replica opens.
    #[arg(long, env = "PORTCULLIS_DSN_MAX_CONNS", default_value_t = 16)]
    pub dsn_max_conns: u32,
    /// Longest a PostgreSQL statement may run (and a connection may take) before the request
    /// fails with 503.
    #[arg(long, env = "PORTCULLIS_DSN_STATEMENT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub dsn_statement_timeout: Duration,
    /// PEM file of CA certificates to trust for the PostgreSQL server (besides the web PKI,
    /// except under `sslmode=verify-ca`), e.g. a cluster operator's own CA.
    #[arg(long, env = "PORTCULLIS_DSN_CA_FILE")]
    pub dsn_ca_file: Option<PathBuf>,
    /// Most opaque-token rows a replica keeps in memory for introspection (about 300 bytes
    /// each; 0 disables). Deletions reach every replica's cache through the change feed.
    #[arg(long, env = "PORTCULLIS_OPAQUE_TOKEN_CACHE", default_value_t = 100_000)]
    pub opaque_token_cache: usize,
}

impl DatabaseArgs {
    /// `--dsn`, `PORTCULLIS_DSN`, or Hydra's `DSN`.
    pub fn dsn(&self) -> Option<String> {
        self.dsn
            .clone()
            .or_else(|| std::env::var("DSN").ok())
            .filter(|d| !d.is_empty())
    }

    pub fn options(&self) -> portcullis::store::postgres::Options {
        portcullis::store::postgres::Options {
            max_conns: self.dsn_max_conns,
            statement_timeout: self.dsn_statement_timeout,
            connect_timeout: self.dsn_statement_timeout.min(Duration::from_secs(5)),
            ca_file: self.dsn_ca_file.clone(),
            opaque_token_cache: self.opaque_token_cache,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Copy everything from the embedded store in this data directory (clients, keys still
    /// sealed with the system secret, tokens, revocations, browser-flow state). Rows already
    /// in PostgreSQL are kept.
    #[arg(long)]
    pub from_sqlite: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// A Rule manifest file, a directory of manifests, or an Oathkeeper access rule file.
    #[arg(long)]
    pub rules: PathBuf,
    /// The request: 'METHOD URL', e.g. 'GET https://api.example.com/items'.
    #[arg(long)]
    pub request: String,
    /// A request header, 'Name: value' (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A bearer token, sent as `Authorization: Bearer <token>`.
    #[arg(long)]
    pub token: Option<String>,
    /// Global handler configuration (Oathkeeper-style YAML); default: every handler enabled.
    #[arg(long, env = "PORTCULLIS_GLOBAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the trace as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Which Istio resource carries a workload's filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    #[value(name = "wasmplugin")]
    WasmPlugin,
    #[value(name = "envoyfilter")]
    EnvoyFilter,
}

impl From<OutputArg> for portcullis_reconciler::rule_set::Output {
    fn from(o: OutputArg) -> Self {
        match o {
            OutputArg::WasmPlugin => Self::WasmPlugin,
            OutputArg::EnvoyFilter => Self::EnvoyFilter,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// Directory of OAuth2Client/Rule/Secret/Service manifests.
    #[arg(long)]
    pub manifests: PathBuf,
    /// Resource kind to emit.
    #[arg(long, value_enum, default_value = "wasmplugin")]
    pub output: OutputArg,
    /// Global handler configuration (Oathkeeper-style YAML); default: every handler enabled.
    #[arg(long, env = "PORTCULLIS_GLOBAL_CONFIG")]
    pub global_config: Option<PathBuf>,
    /// Where sidecars fetch the filter module (`http(s)://` or `oci://`).
    #[arg(
        long,
        env = "PORTCULLIS_WASM_URL",
        default_value = "http://127.0.0.1:4444/filter.wasm"
    )]
    pub wasm_url: String,
    /// Hex SHA-256 of the module (otherwise computed from --wasm). Wins over --wasm, which may
    /// come from the environment (`PORTCULLIS_WASM`, as the Makefile exports it).
    #[arg(long)]
    pub wasm_sha256: Option<String>,
    /// The module to hash for `sha256` [default: dist/filter.wasm when it exists].
    #[arg(long, env = "PORTCULLIS_WASM")]
    pub wasm: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SigningAlg {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
}

impl From<SigningAlg> for Alg {
    fn from(a: SigningAlg) -> Self {
        match a {
            SigningAlg::Rs256 => Alg::RS256,
            SigningAlg::Es256 => Alg::ES256,
            SigningAlg::EdDsa => Alg::EdDSA,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeStrategyArg {
    Wildcard,
    Exact,
    Hierarchic,
}

impl From<ScopeStrategyArg> for ScopeStrategy {
    fn from(s: ScopeStrategyArg) -> Self {
        match s {
            ScopeStrategyArg::Wildcard => ScopeStrategy::Wildcard,
            ScopeStrategyArg::Exact => ScopeStrategy::Exact,
            ScopeStrategyArg::Hierarchic => ScopeStrategy::Hierarchic,
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn grace_period(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d > Duration::from_secs(300) {
        return Err("at most 5m (as Hydra's rotation_grace_period)".into());
    }
    Ok(d)
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the public API (token, revoke, JWKS, discovery).
    #[arg(long, env = "PORTCULLIS_PUBLIC_ADDR", default_value = "127.0.0.1:4444")]
    pub public_addr: SocketAddr,
    /// Address of the admin API (clients, keys, introspection, metrics).
    #[arg(long, env = "PORTCULLIS_ADMIN_ADDR", default_value = "127.0.0.1:4445")]
    pub admin_addr: SocketAddr,
    /// Host names the admin API answers to besides IP literals and `localhost`
    /// (comma-separated), e.g. its in-cluster Service name. Other `Host` headers get 403
    /// (DNS rebinding).
    #[arg(long, env = "PORTCULLIS_ADMIN_HOSTS", value_delimiter = ',')]
    pub admin_hosts: Vec<String>,
    /// Issuer URL put in tokens and discovery [default: http://<public-addr>].
    #[arg(long, env = "PORTCULLIS_ISSUER")]
    pub issuer: Option<String>,
    /// Directory of the embedded database (and of the generated secrets.key).
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Do not apply pending PostgreSQL migrations at start (run `portcullis migrate` instead).
    #[arg(long, env = "PORTCULLIS_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Algorithm of the access-token signing key [default: RS256 for a new data dir; an
    /// existing one keeps its current key's algorithm]. A value that differs from the current
    /// key's rotates to a new key (the old one stays in the JWKS until its tokens expire).
    #[arg(long, env = "PORTCULLIS_SIGNING_ALG", value_enum)]
    pub signing_alg: Option<SigningAlg>,
    /// Default access token lifetime (Go duration: 1h, 30m, 90s), overridable per client.
    #[arg(long, visible_aliases = ["ttl-access-token", "token-ttl", "token-lifetime"],
          env = "PORTCULLIS_ACCESS_TOKEN_TTL",
          default_value = "1h", value_parser = duration)]
    pub access_token_ttl: Duration,
    /// The longest access-token lifetime allowed, global or per client (at most 720h): larger
    /// client lifespans are refused at registration. It also bounds how long a rotated signing
    /// key stays published.
    #[arg(long, env = "PORTCULLIS_MAX_ACCESS_TOKEN_TTL", default_value = "24h", value_parser = duration)]
    pub max_access_token_ttl: Duration,
    /// How requested scopes are matched against a client's allowed scopes.
    #[arg(
        long,
        env = "PORTCULLIS_SCOPE_STRATEGY",
        value_enum,
        default_value = "wildcard"
    )]
    pub scope_strategy: ScopeStrategyArg,
    /// Rotate the signing key this often (Go duration, e.g. 720h); off when absent.
    #[arg(long, env = "PORTCULLIS_KEY_ROTATION", value_parser = duration)]
    pub key_rotation: Option<Duration>,
    /// How long a scheduled rotation publishes the new key in the JWKS before signing with it,
    /// so verifiers (the filter re-fetches at most every 5 s on an unknown kid) have it before
    /// its first token. Keys created over the admin API sign at once.
    #[arg(long, env = "PORTCULLIS_KEY_PREPUBLISH", default_value = "1m", value_parser = duration)]
    pub key_prepublish: Duration,
    /// Let clients' `jwks_uri` (private_key_jwt) target loopback, private, link-local or
    /// unspecified addresses. Off: such URLs (after DNS resolution, every address) are refused,
    /// since any unauthenticated caller can make the service fetch a client's `jwks_uri`.
    #[arg(long, env = "PORTCULLIS_ALLOW_PRIVATE_JWKS_URI")]
    pub allow_private_jwks_uri: bool,
    /// File holding the system secret that encrypts private keys at rest.
    #[arg(long, env = "PORTCULLIS_SECRETS_FILE")]
    pub secrets_file: Option<PathBuf>,
    /// The system secret itself (used when --secrets-file is absent).
    #[arg(long, env = "PORTCULLIS_SECRETS_SYSTEM", hide_env_values = true)]
    pub secrets_system: Option<String>,
    /// How long in-flight requests may take to finish on SIGTERM/SIGINT.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,
    /// Most connections the public port holds open at once; more wait in the kernel's
    /// backlog. Lowered at start to fit the file-descriptor limit.
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Most connections the admin port holds open at once (its own budget: a flood of the
    /// public port cannot starve introspection or readiness).
    #[arg(long, env = "PORTCULLIS_ADMIN_MAX_CONNECTIONS", default_value_t = 256)]
    pub admin_max_connections: usize,
    /// How long a client may take to send a request's headers (also the keep-alive idle
    /// limit) before the connection is closed.
    #[arg(long, env = "PORTCULLIS_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub http_header_timeout: Duration,
    /// How long a client may take to send a request's body (answered 408 after).
    #[arg(long, env = "PORTCULLIS_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub http_body_timeout: Duration,
    /// The login app (Hydra's `urls.login`): `/oauth2/auth` sends browsers here with a
    /// `login_challenge`. Without it, the authorization endpoint answers an error naming it.
    #[arg(long, env = "PORTCULLIS_LOGIN_URL")]
    pub login_url: Option<String>,
    /// The consent app (Hydra's `urls.consent`), sent a `consent_challenge`.
    #[arg(long, env = "PORTCULLIS_CONSENT_URL")]
    pub consent_url: Option<String>,
    /// The logout app (Hydra's `urls.logout`), sent a `logout_challenge` by
    /// `/oauth2/sessions/logout`.
    #[arg(long, env = "PORTCULLIS_LOGOUT_URL")]
    pub logout_url: Option<String>,
    /// Where a finished logout goes without a `post_logout_redirect_uri` (Hydra's
    /// `urls.post_logout_redirect`) [default: <issuer>/oauth2/fallbacks/logout/callback].
    #[arg(long, env = "PORTCULLIS_POST_LOGOUT_URL")]
    pub post_logout_url: Option<String>,
    /// Where browser-flow errors go that cannot go to a client (Hydra's `urls.error`)
    /// [default: <issuer>/oauth2/fallbacks/error].
    #[arg(long, env = "PORTCULLIS_ERROR_URL")]
    pub error_url: Option<String>,
    /// Require PKCE (S256) from every client in the authorization code flow.
    #[arg(long, env = "PORTCULLIS_PKCE_ENFORCED")]
    pub pkce_enforced: bool,
    /// Require PKCE (S256) from public clients (`token_endpoint_auth_method: none`).
    #[arg(long, env = "PORTCULLIS_PKCE_ENFORCED_FOR_PUBLIC_CLIENTS")]
    pub pkce_enforced_for_public_clients: bool,
    /// Default ID token lifetime, overridable per client.
    #[arg(long, env = "PORTCULLIS_ID_TOKEN_TTL", default_value = "1h", value_parser = duration)]
    pub id_token_ttl: Duration,
    /// Default refresh token lifetime, overridable per client.
    #[arg(long, env = "PORTCULLIS_REFRESH_TOKEN_TTL", default_value = "720h", value_parser = duration)]
    pub refresh_token_ttl: Duration,
    /// How long a rotated-out refresh token keeps working (Hydra's
    /// `rotation_grace_period`, at most 5m); 0 = strict rotation with reuse detection.
    #[arg(long, env = "PORTCULLIS_REFRESH_TOKEN_ROTATION_GRACE_PERIOD", default_value = "0s",
          value_parser = grace_period)]
    pub refresh_token_rotation_grace_period: Duration,
    /// Manifests mode: reconcile OAuth2Client/Rule/Secret manifests from this directory
    /// (watched), writing an Envoy ECDS file per workload.
    #[arg(long, env = "PORTCULLIS_MANIFESTS", conflicts_with = "kubernetes")]
    pub manifests: Option<PathBuf>,
    /// Where manifests mode writes ECDS files [default: <data-dir>/ecds].
    #[arg(long, env = "PORTCULLIS_ECDS_DIR")]
    pub ecds_dir: Option<PathBuf>,
    /// How often manifests mode polls the directory for changes.
    #[arg(long, env = "PORTCULLIS_POLL_INTERVAL", default_value = "500ms", value_parser = duration)]
    pub poll_interval: Duration,
    /// The filter module: served at GET /filter.wasm, hashed for WasmPlugin `sha256`, and named
    /// by the ECDS files.
    #[arg(long, env = "PORTCULLIS_WASM", default_value = "dist/filter.wasm")]
    pub wasm: PathBuf,
    /// Global handler configuration (Oathkeeper-style YAML) every workload's config starts from.
    #[arg(long, env = "PORTCULLIS_GLOBAL_CONFIG")]
    pub global_config: Option<PathBuf>,
    /// Envoy cluster that reaches the public port (JWKS), for plain Envoy (manifests mode).
    #[arg(
        long,
        env = "PORTCULLIS_PUBLIC_CLUSTER",
        default_value = "portcullis_public"
    )]
    pub public_cluster: String,
    /// Envoy cluster that reaches the admin port (introspection), for plain Envoy.
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_CLUSTER",
        default_value = "portcullis_admin"
    )]
    pub admin_cluster: String,
    /// Kubernetes mode: reconcile CRs through the API server [default: on when
    /// KUBERNETES_SERVICE_HOST is set and --manifests is not].
    #[arg(long, env = "PORTCULLIS_KUBERNETES")]
    pub kubernetes: bool,
    /// Namespaces whose OAuth2Clients and Rules are reconciled (comma-separated, `*` for all).
    #[arg(
        long,
        env = "PORTCULLIS_WATCH_NAMESPACES",
        default_value = "kyma-system,default"
    )]
    pub watch_namespaces: String,
    /// Kubernetes mode: resource kind carrying each workload's filter.
    #[arg(
        long,
        env = "PORTCULLIS_OUTPUT",
        value_enum,
        default_value = "wasmplugin"
    )]
    pub output: OutputArg,
    /// Kubernetes mode: URL sidecars fetch the filter module from [default:
    /// http://<public-addr>/filter.wasm; in a cluster, the public Service URL].
    #[arg(long, env = "PORTCULLIS_WASM_URL")]
    pub wasm_url: Option<String>,
    /// Kubernetes mode: namespace of the leader-election Lease [default: POD_NAMESPACE or
    /// kyma-system].
    #[arg(long, env = "PORTCULLIS_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
}

impl ServeArgs {
    /// The token service configuration (clones what it needs).
    pub fn config(&self) -> Config {
        self.clone().into_config()
    }

    /// `--watch-namespaces` as the controllers take it.
    pub fn namespaces(&self) -> portcullis_reconciler::client_controller::Namespaces {
        use portcullis_reconciler::client_controller::Namespaces;
        let list: Vec<String> = self
            .watch_namespaces
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if list.iter().any(|n| n == "*") {
            Namespaces::All
        } else {
            Namespaces::Only(list)
        }
    }

    /// Kubernetes mode: asked for, or running in a cluster without `--manifests`.
    pub fn kubernetes_mode(&self) -> bool {
        self.kubernetes
            || (self.manifests.is_none() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some())
    }

    pub fn into_config(self) -> Config {
        // Kept exactly as configured: it is the `iss` verifiers compare byte for byte.
        let issuer = self
            .issuer
            .unwrap_or_else(|| format!("http://{}", self.public_addr));
        let mut config = Config::new(self.data_dir);
        config.dsn = self.database.dsn();
        config.postgres = self.database.options();
        config.migrate = !self.no_migrate;
        config.public_addr = self.public_addr;
        config.admin_addr = self.admin_addr;
        config.issuer = issuer;
        config.signing_alg = self
            .signing_alg
            .map_or(portcullis::server::DEFAULT_SIGNING_ALG, Into::into);
        config.keep_existing_alg = self.signing_alg.is_none();
        config.access_token_ttl = self.access_token_ttl;
        config.max_access_token_ttl = self.max_access_token_ttl;
        config.scope_strategy = self.scope_strategy.into();
        config.key_rotation = self.key_rotation;
        config.key_prepublish = self.key_prepublish;
        config.secrets_file = self.secrets_file;
        config.secrets_system = self.secrets_system;
        config.shutdown_timeout = self.shutdown_timeout;
        config.allow_private_jwks_uri = self.allow_private_jwks_uri;
        config.admin_hosts = self.admin_hosts;
        for (limits, cap) in [
            (&mut config.public_limits, self.max_connections),
            (&mut config.admin_limits, self.admin_max_connections),
        ] {
            limits.max_connections = cap;
            limits.header_timeout = self.http_header_timeout;
            limits.body_timeout = self.http_body_timeout;
        }
        config.flows.login_url = self.login_url.filter(|u| !u.is_empty());
        config.flows.consent_url = self.consent_url.filter(|u| !u.is_empty());
        config.flows.error_url = self.error_url.filter(|u| !u.is_empty());
        config.flows.logout_url = self.logout_url.filter(|u| !u.is_empty());
        config.flows.post_logout_url = self.post_logout_url.filter(|u| !u.is_empty());
        config.flows.pkce_enforced = self.pkce_enforced;
        config.flows.pkce_enforced_for_public_clients = self.pkce_enforced_for_public_clients;
        config.flows.id_token_ttl = self.id_token_ttl;
        config.flows.refresh_token_ttl = self.refresh_token_ttl;
        config.flows.refresh_grace_period = self.refresh_token_rotation_grace_period;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["portcullis", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert!(args.manifests.is_none());
        assert_eq!(args.public_cluster, "portcullis_public");
        let c = args.into_config();
        assert_eq!(c.public_addr.to_string(), "127.0.0.1:4444");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:4445");
        assert_eq!(c.issuer, "http://127.0.0.1:4444");
        assert_eq!(c.signing_alg, Alg::RS256);
        assert!(
            c.keep_existing_alg,
            "without --signing-alg an existing key's alg stays"
        );
        assert_eq!(c.access_token_ttl, Duration::from_secs(3600));
        assert_eq!(c.scope_strategy, ScopeStrategy::Wildcard);
        assert!(c.key_rotation.is_none());
        assert_eq!(c.max_access_token_ttl, Duration::from_secs(24 * 3600));
        assert!(c.admin_hosts.is_empty());
        assert!(!c.allow_private_jwks_uri);
        assert_eq!(c.public_limits.max_connections, 1024);
        assert_eq!(c.admin_limits.max_connections, 256);
        assert_eq!(c.admin_limits.header_timeout, Duration::from_secs(10));
        assert_eq!(c.public_limits.body_timeout, Duration::from_secs(30));
    }

    #[test]
    fn hardening_flags() {
        let cli = Cli::try_parse_from([
            "portcullis",
            "serve",
            "--admin-hosts",
            "portcullis-admin,portcullis-admin.ns.svc",
            "--allow-private-jwks-uri",
            "--max-access-token-ttl",
            "2h",
            "--max-connections",
            "10",
            "--admin-max-connections",
            "5",
            "--http-header-timeout",
            "3s",
            "--http-body-timeout",
            "4s",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let c = args.into_config();
        assert_eq!(
            c.admin_hosts,
            ["portcullis-admin", "portcullis-admin.ns.svc"]
        );
        assert!(c.allow_private_jwks_uri);
        assert_eq!(c.max_access_token_ttl, Duration::from_secs(7200));
        assert_eq!(c.public_limits.max_connections, 10);
        assert_eq!(c.admin_limits.max_connections, 5);
        for l in [c.public_limits, c.admin_limits] {
            assert_eq!(l.header_timeout, Duration::from_secs(3));
            assert_eq!(l.body_timeout, Duration::from_secs(4));
        }
    }

    #[test]
    fn flags() {
        let cli = Cli::try_parse_from([
            "portcullis",
            "--log-format",
            "json",
            "serve",
            "--signing-alg",
            "EdDSA",
            "--issuer",
            "https://auth.example.com/",
            "--access-token-ttl",
            "5m",
            "--scope-strategy",
            "exact",
            "--key-rotation",
            "24h",
        ])
        .unwrap();
        assert!(matches!(cli.log_format, LogFormat::Json));
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let c = args.into_config();
        assert_eq!(c.signing_alg, Alg::EdDSA);
        assert!(!c.keep_existing_alg);
        assert_eq!(c.issuer, "https://auth.example.com/");
        assert_eq!(c.token_endpoint(), "https://auth.example.com/oauth2/token");
        assert_eq!(c.access_token_ttl, Duration::from_secs(300));
        assert_eq!(c.scope_strategy, ScopeStrategy::Exact);
        assert_eq!(c.key_rotation, Some(Duration::from_secs(86_400)));
        let cli = Cli::try_parse_from([
            "portcullis",
            "serve",
            "--login-url",
            "https://app.example/login",
            "--consent-url",
            "https://app.example/consent",
            "--pkce-enforced-for-public-clients",
            "--refresh-token-ttl",
            "2h",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let c = args.into_config();
        assert_eq!(
            c.flows.login_url.as_deref(),
            Some("https://app.example/login")
        );
        assert_eq!(
            c.flows.consent_url.as_deref(),
            Some("https://app.example/consent")
        );
        assert!(c.flows.error_url.is_none());
        assert!(c.flows.pkce_enforced_for_public_clients && !c.flows.pkce_enforced);
        assert_eq!(c.flows.refresh_token_ttl, Duration::from_secs(7200));
        assert_eq!(c.flows.id_token_ttl, Duration::from_secs(3600));
        assert_eq!(c.flows.refresh_grace_period, Duration::ZERO);
        assert!(
            Cli::try_parse_from([
                "portcullis",
                "serve",
                "--refresh-token-rotation-grace-period",
                "6m"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["portcullis", "serve", "--signing-alg", "HS256"]).is_err());
    }

    #[test]
    fn modes() {
        use portcullis_reconciler::client_controller::Namespaces;
        let cli = Cli::try_parse_from([
            "portcullis",
            "serve",
            "--manifests",
            "m",
            "--watch-namespaces",
            "a, b",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.manifests.as_deref(), Some(std::path::Path::new("m")));
        assert!(!args.kubernetes_mode());
        assert_eq!(
            args.namespaces(),
            Namespaces::Only(vec!["a".into(), "b".into()])
        );
        let cli = Cli::try_parse_from(["portcullis", "serve", "--watch-namespaces", "*"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.namespaces(), Namespaces::All);
        assert!(
            Cli::try_parse_from(["portcullis", "serve", "--manifests", "m", "--kubernetes"])
                .is_err()
        );
        let cli = Cli::try_parse_from([
            "portcullis",
            "render",
            "--manifests",
            "m",
            "--output",
            "envoyfilter",
        ])
        .unwrap();
        let Command::Render(r) = cli.command else {
            panic!("render")
        };
        assert_eq!(r.output, OutputArg::EnvoyFilter);
        assert!(matches!(
            Cli::try_parse_from(["portcullis", "crds"]).unwrap().command,
            Command::Crds
        ));
    }
}
