//! The root context: compiles the plugin configuration once, keeps keys fresh on a tick, and
//! hands each new HTTP stream the engine it must use.

use crate::http::Stream;
use crate::vm;
use log::{error, info};
use portcullis_core::config::Engine;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::rc::Rc;
use std::time::Duration;

/// Resolution of `jwks_max_wait` deadlines and of background refreshes.
const TICK: Duration = Duration::from_millis(100);

pub struct Root {
    id: u32,
    engine: Option<Rc<Engine>>,
}

impl Root {
    pub fn new(id: u32) -> Self {
        Self { id, engine: None }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        vm::on_callout_response(token_id, body_size);
    }
}

/// Follows Envoy's log level for wasm (it can change at runtime through `/logging`). Without
/// this every `debug!` on the request path would be formatted and handed to Envoy only to be
/// dropped there: a measurable share of a cache-hit request.
fn sync_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        sync_log_level();
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match Engine::from_json(&config) {
            Ok(engine) => {
                info!(
                    "portcullis: root {} loaded {} rules, {} JWKS URLs",
                    self.id,
                    engine.rule_count(),
                    engine.jwks_sources().len()
                );
                vm::with_vm(|vm| vm.keys.register(engine.jwks_sources()));
                self.engine = Some(Rc::new(engine));
                let _ = hostcalls::set_tick_period(TICK);
                // Start fetching keys now rather than on the first tick.
                vm::tick();
                true
            }
            Err(errors) => {
                for e in &errors.0 {
                    error!("portcullis: configuration rejected: {e}");
                }
                // Returning false makes Envoy reject this configuration and keep the previous
                // one; a request that still reaches this root is denied, never allowed.
                false
            }
        }
    }

    fn on_tick(&mut self) {
        sync_log_level();
        vm::tick();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(context_id, self.engine.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
