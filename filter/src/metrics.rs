//! Envoy stats the filter publishes (`define_metric`), visible in `/stats` as
//! `wasmcustom.portcullis_*`. Counts accumulate in VM memory and are handed to Envoy on the
//! root context's tick, so a request costs no metric host call.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::collections::HashMap;

#[derive(Debug, Default)]
struct Counter {
    /// `None` when the host refused to define it.
    id: Option<u32>,
    pending: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    counters: HashMap<String, Counter>,
    /// `requests_allowed`, counted apart: it moves on nearly every request, and a plain field
    /// costs less than a map lookup by name.
    allowed: u64,
}

impl Metrics {
    /// Adds `by` to counter `name` (published on the next [`Metrics::flush`]).
    pub fn count(&mut self, name: &str, by: u64) {
        if by == 0 {
            return;
        }
        match self.counters.get_mut(name) {
            Some(c) => c.pending = c.pending.saturating_add(by),
            None => {
                let id =
                    hostcalls::define_metric(MetricType::Counter, &format!("portcullis_{name}"))
                        .ok();
                self.counters
                    .insert(name.to_string(), Counter { id, pending: by });
            }
        }
    }

    /// One more allowed request.
    pub fn allowed(&mut self) {
        self.allowed = self.allowed.saturating_add(1);
    }

    /// Publishes the accumulated counts.
    pub fn flush(&mut self) {
        let allowed = std::mem::take(&mut self.allowed);
        self.count("requests_allowed", allowed);
        for c in self.counters.values_mut() {
            if c.pending == 0 {
                continue;
            }
            if let Some(id) = c.id {
                let _ =
                    hostcalls::increment_metric(id, i64::try_from(c.pending).unwrap_or(i64::MAX));
            }
            c.pending = 0;
        }
    }
}
