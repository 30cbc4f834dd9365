//! # portcullis-core
//!
//! The policy logic of Portcullis with no I/O: Oathkeeper-compatible access rules, URL matching,
//! scope strategies, templates, token validation and the decision pipeline. It compiles natively
//! (the control plane validates rules with it) and to `wasm32-wasip1` (the Envoy filter enforces
//! them with it), so what the control plane accepts is exactly what the sidecar enforces.
//!
//! Everything the core needs from the outside world (time, fetched keys, native crypto) comes
//! through the [`host::Host`] trait; the adapters in `filter/` and `control-plane/` implement it.

pub mod authn;
pub mod authz;
pub mod cache;
pub mod callout;
pub mod config;
pub mod duration;
pub mod error_handler;
pub mod form;
pub mod gjson;
pub mod host;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod matcher;
pub mod mutator;
pub mod pipeline;
pub mod request;
pub mod rule;
pub mod rule_tester;
pub mod scope;
pub mod session;
pub mod signature;
pub mod signing_key;
pub mod template;
pub mod trace;
pub mod url;

#[cfg(test)]
mod testkeys;
