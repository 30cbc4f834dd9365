//! # portcullis-reconciler
//!
//! ORY-compatible `OAuth2Client` and `Rule` custom resources, and the pure desired-state logic
//! that turns them into per-workload filter configuration: Istio `WasmPlugin`/`EnvoyFilter`
//! resources, or Envoy ECDS files when running without Kubernetes. No I/O here except the
//! `manifests` module, which reads a directory and writes ECDS files.

pub mod client;
pub mod client_controller;
mod core_seam;
pub mod crd;
pub mod dns;
pub mod global;
pub mod kube_apply;
pub mod leader;
pub mod manifests;
#[cfg(test)]
mod mock_api;
pub mod overlap;
pub mod rule_controller;
pub mod rule_set;
