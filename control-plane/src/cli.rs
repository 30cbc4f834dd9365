//! Command line: `portcullis serve` and its flags, each also settable by an environment
//! variable (shown in `--help`).

use crate::clock::parse_duration;
use crate::keys::Alg;
use crate::server::Config;
use clap::{Parser, Subcommand, ValueEnum};
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the token service (public and admin HTTP servers).
    Serve(ServeArgs),
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

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the public API (token, revoke, JWKS, discovery).
    #[arg(long, env = "PORTCULLIS_PUBLIC_ADDR", default_value = "127.0.0.1:4444")]
    pub public_addr: SocketAddr,
    /// Address of the admin API (clients, keys, introspection, metrics).
    #[arg(long, env = "PORTCULLIS_ADMIN_ADDR", default_value = "127.0.0.1:4445")]
    pub admin_addr: SocketAddr,
    /// Issuer URL put in tokens and discovery [default: http://<public-addr>].
    #[arg(long, env = "PORTCULLIS_ISSUER")]
    pub issuer: Option<String>,
    /// Directory of the embedded database (and of the generated secrets.key).
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Algorithm of the access-token signing key.
    #[arg(
        long,
        env = "PORTCULLIS_SIGNING_ALG",
        value_enum,
        default_value = "RS256"
    )]
    pub signing_alg: SigningAlg,
    /// Default access token lifetime (Go duration: 1h, 30m, 90s), overridable per client.
    #[arg(long, visible_aliases = ["ttl-access-token", "token-ttl", "token-lifetime"],
          env = "PORTCULLIS_ACCESS_TOKEN_TTL",
          default_value = "1h", value_parser = duration)]
    pub access_token_ttl: Duration,
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
    /// File holding the system secret that encrypts private keys at rest.
    #[arg(long, env = "PORTCULLIS_SECRETS_FILE")]
    pub secrets_file: Option<PathBuf>,
    /// The system secret itself (used when --secrets-file is absent).
    #[arg(long, env = "PORTCULLIS_SECRETS_SYSTEM", hide_env_values = true)]
    pub secrets_system: Option<String>,
    /// How long in-flight requests may take to finish on SIGTERM/SIGINT.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,
}

impl ServeArgs {
    pub fn into_config(self) -> Config {
        // Kept exactly as configured: it is the `iss` verifiers compare byte for byte.
        let issuer = self
            .issuer
            .unwrap_or_else(|| format!("http://{}", self.public_addr));
        let mut config = Config::new(self.data_dir);
        config.public_addr = self.public_addr;
        config.admin_addr = self.admin_addr;
        config.issuer = issuer;
        config.signing_alg = self.signing_alg.into();
        config.access_token_ttl = self.access_token_ttl;
        config.scope_strategy = self.scope_strategy.into();
        config.key_rotation = self.key_rotation;
        config.secrets_file = self.secrets_file;
        config.secrets_system = self.secrets_system;
        config.shutdown_timeout = self.shutdown_timeout;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["portcullis", "serve"]).unwrap();
        let Command::Serve(args) = cli.command;
        let c = args.into_config();
        assert_eq!(c.public_addr.to_string(), "127.0.0.1:4444");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:4445");
        assert_eq!(c.issuer, "http://127.0.0.1:4444");
        assert_eq!(c.signing_alg, Alg::RS256);
        assert_eq!(c.access_token_ttl, Duration::from_secs(3600));
        assert_eq!(c.scope_strategy, ScopeStrategy::Wildcard);
        assert!(c.key_rotation.is_none());
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
        let Command::Serve(args) = cli.command;
        let c = args.into_config();
        assert_eq!(c.signing_alg, Alg::EdDSA);
        assert_eq!(c.issuer, "https://auth.example.com/");
        assert_eq!(c.token_endpoint(), "https://auth.example.com/oauth2/token");
        assert_eq!(c.access_token_ttl, Duration::from_secs(300));
        assert_eq!(c.scope_strategy, ScopeStrategy::Exact);
        assert_eq!(c.key_rotation, Some(Duration::from_secs(86_400)));
        assert!(Cli::try_parse_from(["portcullis", "serve", "--signing-alg", "HS256"]).is_err());
    }
}
