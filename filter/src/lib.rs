//! # portcullis-filter
//!
//! The proxy-wasm adapter that runs inside every Envoy sidecar. It owns no policy: it reads the
//! request from Envoy, hands it to [`portcullis_core`]'s pipeline, and carries out what the
//! pipeline asks for (fetch keys, call an introspection endpoint, pause, resume, answer, forward).
//!
//! State lives at two levels: per plugin configuration (the compiled `Engine`, in the root
//! context) and per VM (keys, verified-token caches, paused requests: [`vm`]), so that a config
//! reload keeps the keys and caches it already has.

mod clock;
mod envoy_host;
// Public for the fuzz targets (fuzz/): the reader is a pure function over host bytes.
pub mod headers;
mod http;
mod keys;
mod metrics;
mod root;
mod vm;

use proxy_wasm::types::LogLevel;

// The SDK's entry-point macro expands to the `_initialize` export the host calls.
#[allow(unsafe_code)]
mod entry {
    use super::*;
    proxy_wasm::main! {{
        // Also installs a panic hook that logs the panic to Envoy before the VM traps. The
        // level follows Envoy's own from the first configure on (see `root::sync_log_level`).
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
    }}
}
