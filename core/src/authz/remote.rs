//! Oathkeeper's `remote` authorizer: the client's body and content type are POSTed to `remote`
//! with templated `headers`; 200 allows (copying `forward_response_headers_to_upstream`), 403
//! denies, anything else is an error (500).
//!
//! It is the one handler that needs the request body, so a rule using it makes the host buffer
//! the body, up to `max_body_bytes` (a Portcullis setting; Oathkeeper reads bodies of any size).
//! Rules without it never wait for the body. Envoy hands a Wasm filter the body of a request
//! whose headers it holds back only with the plugin's `allow_on_headers_stop_iteration`; without
//! it the body never comes and the host answers [`body_not_received`] instead of asking the
//! authorizer without it (a policy that denies on the body must not see an empty one).

use super::AuthzStep;
use crate::callout::{Callout, CalloutResponse, Endpoint};
use crate::config::{ConfigError, Globals, RetryConfig, parse_handler_config, resolve_endpoint};
use crate::error_handler::{ErrorKind, PolicyError, Response};
use crate::mutator::valid_header_name;
use crate::request::Request;
use crate::session::Session;
use crate::template::Template;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Oathkeeper's `retry.give_up_after` default for `remote`.
const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// Bodies larger than this are refused with 413 when the rule says nothing: Envoy's default
/// per-connection buffer limit, which caps what Envoy holds back for the filter anyway (past it
/// Envoy itself answers 413), and small enough that a burst of uploads cannot exhaust the VM's
/// memory (the body is copied into it).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub struct RemoteAuthorizer {
    pub endpoint: Endpoint,
    /// Lower-case names.
    pub headers: Vec<(String, Template)>,
    /// Headers of the authorizer's answer copied onto the upstream request (lower-case).
    pub forward_response_headers: Vec<String>,
    pub timeout_ms: u64,
    pub max_body_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteConfig {
    #[serde(default)]
    remote: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    forward_response_headers_to_upstream: Vec<String>,
    #[serde(default)]
    retry: Option<RetryConfig>,
    #[serde(default)]
    max_body_bytes: Option<usize>,
}

/// The answer when a body is larger than the rule's remote authorizer accepts.
pub fn body_too_large(limit: usize) -> Response {
    let message = format!(
        "the request body is larger than the {limit} bytes the remote authorizer of this rule accepts"
    );
    Response {
        status: 413,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: format!(
            "{{\"error\":{{\"code\":413,\"status\":\"Request Entity Too Large\",\"reason\":\"request_body_too_large\",\"message\":{}}}}}",
            Value::from(message)
        ),
    }
}

/// The answer when no byte of a body the rule's remote authorizer reads arrived within
/// `waited_ms` of the headers: a stalled client, or an Envoy that does not pass a Wasm filter
/// the body of a request it holds back (`allow_on_headers_stop_iteration` unset).
pub fn body_not_received(waited_ms: u64) -> Response {
    let message = format!(
        "no request body arrived within {waited_ms} ms; this rule's remote authorizer reads it (if this persists, the proxy's Wasm plugin config lacks allow_on_headers_stop_iteration: true)"
    );
    Response {
        status: 408,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: format!(
            "{{\"error\":{{\"code\":408,\"status\":\"Request Timeout\",\"reason\":\"request_body_not_received\",\"message\":{}}}}}",
            Value::from(message)
        ),
    }
}

impl RemoteAuthorizer {
    pub(crate) fn compile(
        globals: &Globals<'_>,
        rule: &str,
        field: &str,
        config: Value,
    ) -> Result<Self, ConfigError> {
        let c: RemoteConfig = parse_handler_config(rule, field, config)?;
        if c.remote.is_empty() {
            return Err(ConfigError::rule(
                rule,
                format!("{field}.config.remote"),
                "is required",
            ));
        }
        let endpoint = resolve_endpoint(
            rule,
            &format!("{field}.config.remote"),
            &c.remote,
            globals.clusters,
        )?;
        let mut headers = Vec::with_capacity(c.headers.len());
        for (name, value) in &c.headers {
            let f = format!("{field}.config.headers.{name}");
            if !valid_header_name(name) {
                return Err(ConfigError::rule(
                    rule,
                    f,
                    "is not a valid HTTP header name",
                ));
            }
            let t = Template::compile(value).map_err(|e| ConfigError::rule(rule, &f, e))?;
            headers.push((name.to_ascii_lowercase(), t));
        }
        let timeout_ms =
            RetryConfig::timeout_ms(c.retry.as_ref(), rule, field, DEFAULT_TIMEOUT_MS)?;
        let max_body_bytes = match c.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(0) => {
                return Err(ConfigError::rule(
                    rule,
                    format!("{field}.config.max_body_bytes"),
                    "must be at least 1",
                ));
            }
            Some(n) => n,
        };
        Ok(Self {
            endpoint,
            headers,
            forward_response_headers: c
                .forward_response_headers_to_upstream
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            timeout_ms,
            max_body_bytes,
        })
    }

    /// The call: the client's body and content type (and credentials), plus the templated
    /// headers; a template that renders empty adds nothing.
    pub(crate) fn authorize(&self, req: &Request, session: &Session, body: &[u8]) -> AuthzStep {
        let mut headers = Vec::with_capacity(self.headers.len() + 2);
        if let Some(ct) = req.header("content-type") {
            headers.push(("content-type".to_string(), ct.to_string()));
        }
        if let Some(auth) = req.header("authorization") {
            headers.push(("authorization".to_string(), auth.to_string()));
        }
        for (name, t) in &self.headers {
            let mut v = String::new();
            t.render(session, &mut v);
            if v.is_empty() {
                continue;
            }
            // A claim with a line break must not split the header.
            if v.contains(['\r', '\n']) {
                v = v.replace(['\r', '\n'], " ");
            }
            headers.retain(|(k, _)| k != name);
            headers.push((name.clone(), v));
        }
        AuthzStep::Callout(Callout {
            endpoint: self.endpoint.clone(),
            method: "POST",
            headers,
            body: body.to_vec(),
            timeout_ms: self.timeout_ms,
        })
    }

    pub(crate) fn digest(&self, response: Option<&CalloutResponse>) -> AuthzStep {
        answer(
            &REMOTE_CODES,
            &self.endpoint.url,
            &self.forward_response_headers,
            response,
        )
    }
}

/// The reason codes one authorizer reports for the three ways a remote answer can deny.
pub(super) struct AnswerCodes {
    pub unreachable: &'static str,
    pub forbidden: &'static str,
    pub status: &'static str,
}

const REMOTE_CODES: AnswerCodes = AnswerCodes {
    unreachable: "remote_unreachable",
    forbidden: "remote_forbidden",
    status: "remote_status",
};

/// Oathkeeper's contract for both remote authorizers (`remote` and `remote_json`): 200 allows and
/// forwards the named response headers, 403 denies, anything else (or no answer) is an error,
/// never an allow.
pub(super) fn answer(
    codes: &AnswerCodes,
    url: &str,
    forward_response_headers: &[String],
    response: Option<&CalloutResponse>,
) -> AuthzStep {
    match response {
        None => AuthzStep::Deny(PolicyError::new(
            ErrorKind::InternalServerError,
            codes.unreachable,
            format!("remote authorizer {url} did not answer"),
        )),
        Some(resp) if resp.status == 200 => AuthzStep::Allow {
            forward: forward_response_headers
                .iter()
                .filter_map(|h| resp.header(h).map(|v| (h.clone(), v.to_string())))
                .collect(),
        },
        Some(resp) if resp.status == 403 => AuthzStep::Deny(PolicyError::new(
            ErrorKind::Forbidden,
            codes.forbidden,
            "the remote authorizer denied the request",
        )),
        Some(resp) => AuthzStep::Deny(PolicyError::new(
            ErrorKind::InternalServerError,
            codes.status,
            format!(
                "remote authorizer returned status code {} but expected 200 or 403",
                resp.status
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
