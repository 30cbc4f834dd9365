//! # portcullis-core
//!
//! The policy logic of Portcullis with no I/O: Oathkeeper-compatible access rules, URL matching,
//! scope strategies, templates, token validation and the decision pipeline. It compiles natively
//! (the control plane validates rules with it) and to `wasm32-wasip1` (the Envoy filter enforces
//! them with it), so what the control plane accepts is exactly what the sidecar enforces.
//!
//! Everything the core needs from the outside world (time, fetched keys, native crypto) comes
//! through the [`host::Host`] trait; the adapters in `filter/` and `control-plane/` implement it.

pub mod error_handler;
pub mod request;
pub mod scope;
