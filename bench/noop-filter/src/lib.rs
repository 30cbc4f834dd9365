//! The floor for any wasm filter: reads one request header (`authorization`) and sets one
//! (`x-noop`, value from the plugin configuration). Benchmarks compare the real filter against
//! it, and the e2e harness smoke test uses it to prove ECDS reloads reach a running Envoy.
//!
//! Plugin configuration: the raw bytes are the header value (empty or absent means `noop`).
//! Host results go through `hostcalls` so that an unexpected status never traps the VM.
//!
//! With the `core-probe` feature the module also carries the core's configuration compiler,
//! reachable only from an export no host calls: Envoy's RSS with that module, against this one,
//! is what code costs a sidecar whether or not it ever runs (docs/filter.md, "Why the memory
//! targets are out of reach").

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

const READ_HEADER: &str = "authorization";
const SET_HEADER: &str = "x-noop";
const DEFAULT_VALUE: &str = "noop";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(NoopRoot { value: DEFAULT_VALUE.to_owned() })
    });
}}

struct NoopRoot {
    value: String,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let configured = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
        self.value = configured.unwrap_or_else(|| DEFAULT_VALUE.to_owned());
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopHttp {
            value: self.value.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopHttp {
    value: String,
}

impl Context for NoopHttp {}

impl HttpContext for NoopHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The read is the point: it costs what a real filter pays to look at its token.
        let _token = hostcalls::get_map_value(MapType::HttpRequestHeaders, READ_HEADER);
        let _ =
            hostcalls::set_map_value(MapType::HttpRequestHeaders, SET_HEADER, Some(&self.value));
        Action::Continue
    }
}

/// Never called by any host: it exists so that the linker keeps the core's configuration
/// compiler (regex compilation, handler and template compilers, serde) in the module.
#[cfg(feature = "core-probe")]
#[allow(unsafe_code)] // `no_mangle` is what exports it; the body is safe code.
#[unsafe(no_mangle)]
pub extern "C" fn portcullis_core_probe() -> u32 {
    let bytes = hostcalls::get_buffer(
        proxy_wasm::types::BufferType::PluginConfiguration,
        0,
        usize::MAX,
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    u32::from(portcullis_core::config::Engine::from_json(&bytes).is_ok())
}
