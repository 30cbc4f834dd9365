//! One HTTP stream: reads the request once, then lets [`vm::drive`] take it from there.

use crate::headers;
use crate::vm;
use portcullis_core::config::Engine;
use portcullis_core::pipeline::Evaluation;
use portcullis_core::request::Request;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::rc::Rc;

pub struct Stream {
    id: u32,
    engine: Option<Rc<Engine>>,
}

impl Stream {
    pub fn new(id: u32, engine: Option<Rc<Engine>>) -> Self {
        Self { id, engine }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        vm::forget(self.id);
    }
}

impl Context for Stream {
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

/// Reads the request Envoy holds in one host call; pseudo-headers become fields. The scheme is
/// the downstream connection's: Envoy's `connection.tls_version` attribute exists only on a TLS
/// connection, whereas `:scheme` is whatever the client wrote (h2c, an absolute-form target,
/// or `X-Forwarded-Proto`, which Envoy copies into it). The peer address is only read when an
/// error handler's `when` can ask for it.
fn read_request(with_remote_ip: bool) -> Request {
    let raw = headers::read(MapType::HttpRequestHeaders).unwrap_or_default();
    let mut b = headers::request(raw);
    b.tls(
        hostcalls::get_property(vec!["connection", "tls_version"])
            .ok()
            .flatten()
            .is_some_and(|v| !v.is_empty()),
    );
    if with_remote_ip {
        b.remote_ip(
            hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .map(|addr| strip_port(&addr).to_string()),
        );
    }
    b.build()
}

fn strip_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => addr,
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(engine) = self.engine.clone() else {
            let _ = hostcalls::send_http_response(
                503,
                vec![("content-type", "application/json")],
                Some(br#"{"error":{"code":503,"status":"Service Unavailable","message":"the access-rule filter has no valid configuration"}}"#),
            );
            return Action::Pause;
        };
        let req = read_request(engine.needs_remote_ip());
        let mut eval = Evaluation::new(req);
        if end_of_stream {
            // No body will come: a rule that reads it reads an empty one, without waiting.
            eval.body_received(Vec::new());
        }
        vm::drive(self.id, engine, eval, true)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        vm::on_request_body(self.id, Some(body_size), end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        vm::on_request_body(self.id, None, true)
    }
}
