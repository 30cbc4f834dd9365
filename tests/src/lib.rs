//! End-to-end harness for Portcullis: a real Envoy (from `make envoy`) loading a wasm filter
//! through a file-watched ECDS resource, an in-process echo upstream, a mock auth server
//! (JWKS, introspection, remote authorizer) and test key material with token minting.
//!
//! This crate is test support. Failures to set up the environment panic with a message naming
//! what went wrong (plus Envoy's log tail), because a panic is how a test reports failure.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

pub mod authserver;
pub mod control_plane;
pub mod envoy;
pub mod keys;
pub mod make_run;
pub mod paths;
pub mod ports;
pub mod process;
pub mod raw;
pub mod runtime;
pub mod scripted;
pub mod stack;
pub mod upstream;
pub mod webdriver;

pub use authserver::AuthServer;
pub use envoy::{BACKEND_HEADER, ConfigUpdate, Envoy, EnvoyBuilder, Filter, PathNormalization};
pub use upstream::{Echo, Upstream};

/// A blocking HTTP client for tests: no proxy, no redirects, short timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("building the reqwest client")
}
