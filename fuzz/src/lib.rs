//! Fuzz targets for everything Portcullis parses from outside: filter configurations, rule URL
//! patterns, request paths, tokens and key sets, templates, Envoy's header maps, and the token
//! service's request bodies and JSON Patches.
//!
//! Each target is a plain function over bytes, listed in [`TARGETS`]: the libFuzzer binaries in
//! `fuzz_targets/` call them, and `tests/corpus.rs` replays the committed corpus through the same
//! functions on stable. A target panics only when an invariant it checks is broken (a forged token
//! accepted, a cleaned path that would read differently twice); errors are expected results.
//!
//! Adding a target: a function here, a line in [`TARGETS`], a two-line `fuzz_targets/<name>.rs`
//! with a `[[bin]]` entry in Cargo.toml, and seeds in `corpus/<name>/`. New filter handlers need
//! no new target when their configuration goes through [`filter_config`]: add a seed config that
//! uses them.

mod filter;
mod input;
mod policy;
mod token_service;
mod tokens;

pub use filter::header_map;
pub use policy::{filter_config, path_canonical, template, url_pattern};
pub use token_service::{client_patch, token_request};
pub use tokens::{jwks, jwt};

/// A fuzz target: any bytes in, a panic only when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its binary and of its corpus directory).
pub const TARGETS: &[(&str, Target)] = &[
    ("filter_config", filter_config),
    ("url_pattern", url_pattern),
    ("path_canonical", path_canonical),
    ("jwt", jwt),
    ("jwks", jwks),
    ("template", template),
    ("header_map", header_map),
    ("token_request", token_request),
    ("client_patch", client_patch),
];
