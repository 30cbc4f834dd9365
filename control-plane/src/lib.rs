//! # portcullis (control plane)
//!
//! The token service: a Hydra-compatible OAuth2 server for machine-to-machine clients
//! (`client_credentials`), with JWKS, discovery, introspection, revocation and the Hydra v2 admin
//! API. Everything is exposed as a library so that the reconcilers can embed the service and
//! register clients in-process through [`client::ClientService`] (see [`server::Service`]).

pub mod admin;
pub mod admin_guard;
pub mod assertion;
pub mod authorize;
pub mod backchannel_logout;
pub mod browser_session;
pub mod callout_client;
pub mod cli;
pub mod client;
pub mod clock;
pub mod code_grant;
pub mod console;
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
pub mod kubernetes_mode;
pub mod lifespan;
pub mod login_consent;
pub mod logout;
pub mod manifests_mode;
pub mod metrics;
pub mod oauth2_error;
pub mod refresh;
pub mod request;
pub mod revoke;
pub mod rule_test;
pub mod secret;
pub mod server;
pub mod sessions;
pub mod store;
pub mod token;
pub mod token_cache;
pub mod userinfo;
