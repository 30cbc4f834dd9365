//! # portcullis (the token service library)
//!
//! A Hydra-compatible OAuth2 and OpenID Connect server: `client_credentials` for machines, the
//! authorization code flow with login/consent apps, refresh tokens and logout for people, JWKS,
//! discovery, introspection, revocation and the Hydra v2 admin API, over SQLite or PostgreSQL.
//! A program embeds it with [`server::Service::open`] and [`server::serve_on`] and registers
//! clients in-process through [`client::ClientService`]; the `portcullis` binary
//! (`portcullis-cli`) does exactly that and adds the command line, the reconcilers' modes and
//! the console.

pub mod admin;
pub mod admin_guard;
pub mod assertion;
pub mod authorize;
pub mod backchannel_logout;
pub mod browser_session;
pub mod client;
pub mod clock;
pub mod code_grant;
pub mod crypto;
pub mod discovery;
pub mod flow;
pub mod frontchannel_logout;
pub mod grant_tokens;
pub mod health;
pub mod id_token;
pub mod id_token_keys;
pub mod introspect;
pub mod jwks_uri;
pub mod keys;
pub mod lifespan;
pub mod login_consent;
pub mod logout;
pub mod metrics;
pub mod oauth2_error;
pub mod refresh;
pub mod request;
pub mod revoke;
pub mod secret;
pub mod server;
pub mod sessions;
pub mod store;
pub mod token;
pub mod token_cache;
pub mod userinfo;
