//! Envoy stats the filter publishes (`define_metric`), visible in `/stats` as
//! `wasmcustom.portcullis_*`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Metrics {
    ids: HashMap<String, Option<u32>>,
}

impl Metrics {
    /// Adds `by` to counter `name`, defining it on first use. A host that refuses metrics
    /// costs nothing but the lookup.
    pub fn count(&mut self, name: &str, by: u64) {
        if by == 0 {
            return;
        }
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None => {
                let id =
                    hostcalls::define_metric(MetricType::Counter, &format!("portcullis_{name}"))
                        .ok();
                self.ids.insert(name.to_string(), id);
                id
            }
        };
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }
}
