//! Where the artefacts the harness needs live: the Envoy binary and the wasm modules. Each can
//! be overridden by an environment variable (the Makefile exports them); the defaults are the
//! paths `make envoy` and `make wasm` produce under the repository root.

use std::path::PathBuf;

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn from_env_or(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => repo_root().join(default),
    }
}

/// `ENVOY_BIN`, default `<repo>/.venv/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    from_env_or("ENVOY_BIN", ".venv/bin/envoy")
}

/// `PORTCULLIS_WASM`, default `<repo>/dist/filter.wasm`.
pub fn filter_wasm() -> PathBuf {
    from_env_or("PORTCULLIS_WASM", "dist/filter.wasm")
}

/// `PORTCULLIS_NOOP_WASM`, default `<repo>/dist/noop.wasm`.
pub fn noop_wasm() -> PathBuf {
    from_env_or("PORTCULLIS_NOOP_WASM", "dist/noop.wasm")
}
