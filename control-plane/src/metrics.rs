//! Prometheus metrics (served at `/admin/metrics/prometheus`): tokens issued and refused,
//! introspections, revocations, and per-route HTTP request counts and latency.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

type Labels = Vec<(&'static str, &'static str)>;
type HttpLabels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    tokens: Family<Labels, Counter>,
    token_errors: Family<Labels, Counter>,
    introspections: Family<Labels, Counter>,
    revocations: Counter,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram>,
    connections: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tokens = Family::<Labels, Counter>::default();
        let token_errors = Family::<Labels, Counter>::default();
        let introspections = Family::<Labels, Counter>::default();
        let revocations = Counter::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.5, 12))) as fn() -> Histogram,
        );
        registry.register(
            "portcullis_tokens_issued",
            "Access tokens issued, by signing algorithm (or opaque)",
            tokens.clone(),
        );
        registry.register(
            "portcullis_token_errors",
            "Token requests refused, by RFC 6749 error code",
            token_errors.clone(),
        );
        registry.register(
            "portcullis_introspections",
            "Introspection requests, by result",
            introspections.clone(),
        );
        registry.register(
            "portcullis_revocations",
            "Tokens revoked",
            revocations.clone(),
        );
        let connections = Family::<Labels, Gauge>::default();
        registry.register(
            "portcullis_http_connections",
            "Open HTTP connections, by server (capped by --max-connections / --admin-max-connections)",
            connections.clone(),
        );
        registry.register(
            "portcullis_http_requests",
            "HTTP requests, by server, route and status",
            http_requests.clone(),
        );
        registry.register(
            "portcullis_http_request_duration_seconds",
            "HTTP request latency, by server and route",
            http_duration.clone(),
        );
        Self {
            registry,
            tokens,
            token_errors,
            introspections,
            revocations,
            http_requests,
            http_duration,
            connections,
        }
    }

    /// A connection to `server` was accepted (+1) or closed (-1).
    pub fn connections(&self, server: &'static str, delta: i64) {
        self.connections
            .get_or_create(&vec![("server", server)])
            .inc_by(delta);
    }

    pub fn token_issued(&self, kind: &'static str) {
        self.tokens.get_or_create(&vec![("alg", kind)]).inc();
    }

    pub fn token_error(&self, code: &'static str) {
        self.token_errors
            .get_or_create(&vec![("error", code)])
            .inc();
    }

    pub fn introspection(&self, active: bool) {
        let v = if active { "true" } else { "false" };
        self.introspections
            .get_or_create(&vec![("active", v)])
            .inc();
    }

    pub fn revocation(&self) {
        self.revocations.inc();
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Middleware state: which server (`public`/`admin`) the request came to.
#[derive(Clone)]
pub struct HttpMetrics {
    pub metrics: Arc<Metrics>,
    pub server: &'static str,
}

pub async fn track(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let start = Instant::now();
    let resp = next.run(req).await;
    let labels = vec![("server", m.server.to_string()), ("route", route)];
    m.metrics
        .http_duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    let mut labels = labels;
    labels.push(("status", resp.status().as_u16().to_string()));
    m.metrics.http_requests.get_or_create(&labels).inc();
    resp
}

pub async fn prometheus_endpoint(State(svc): State<Arc<crate::server::Service>>) -> Response {
    match svc.metrics.encode() {
        Ok(text) => {
            let mut resp = text.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_text() {
        let m = Metrics::new();
        m.token_issued("RS256");
        m.token_issued("RS256");
        m.token_error("invalid_client");
        m.introspection(true);
        let text = m.encode().unwrap();
        assert!(
            text.contains("portcullis_tokens_issued_total{alg=\"RS256\"} 2"),
            "{text}"
        );
        assert!(text.contains("portcullis_token_errors_total{error=\"invalid_client\"} 1"));
        assert!(text.contains("portcullis_introspections_total{active=\"true\"} 1"));
    }
}
