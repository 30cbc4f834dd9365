//! Authorizers: may this subject do this? Oathkeeper's `allow`, `deny` and `remote_json`.

use crate::callout::{Callout, CalloutResponse, Endpoint};
use crate::config::{
    ConfigError, EmptyConfig, Globals, HandlerKind, RetryConfig, parse_handler_config,
    resolve_endpoint,
};
use crate::error_handler::{ErrorKind, PolicyError};
use crate::request::Request;
use crate::rule::Handler;
use crate::session::Session;
use crate::template::Template;
use serde::Deserialize;
use std::collections::BTreeMap;

mod remote;
pub use remote::{DEFAULT_MAX_BODY_BYTES, RemoteAuthorizer, body_not_received, body_too_large};

const DEFAULT_REMOTE_TIMEOUT_MS: u64 = 1_000;

#[derive(Debug)]
pub struct RemoteJson {
    pub endpoint: Endpoint,
    pub payload: Template,
    pub headers: Vec<(String, Template)>,
    /// Headers of the authorizer's answer copied onto the upstream request (lower-case).
    pub forward_response_headers: Vec<String>,
    pub timeout_ms: u64,
}

#[derive(Debug)]
pub enum Authorizer {
    Allow,
    Deny,
    RemoteJson(Box<RemoteJson>),
    /// Needs the request body: see [`Authorizer::body_limit`].
    Remote(Box<RemoteAuthorizer>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteJsonConfig {
    #[serde(default)]
    remote: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    forward_response_headers_to_upstream: Vec<String>,
    #[serde(default)]
    retry: Option<RetryConfig>,
}

/// What an authorizer decided, or the call it needs first.
#[derive(Debug)]
pub(crate) enum AuthzStep {
    Allow {
        forward: Vec<(String, String)>,
    },
    Deny(PolicyError),
    Callout(Callout),
    /// The request body is needed first.
    NeedBody,
}

impl Authorizer {
    pub(crate) fn compile(
        globals: &Globals<'_>,
        rule: &str,
        field: &str,
        handler: &Handler,
    ) -> Result<Self, ConfigError> {
        let config = globals.handler_config(HandlerKind::Authorizer, rule, field, handler)?;
        match handler.handler.as_str() {
            "allow" => {
                parse_handler_config::<EmptyConfig>(rule, field, config)?;
                Ok(Self::Allow)
            }
            "deny" => {
                parse_handler_config::<EmptyConfig>(rule, field, config)?;
                Ok(Self::Deny)
            }
            "remote_json" => {
                let c: RemoteJsonConfig = parse_handler_config(rule, field, config)?;
                if c.remote.is_empty() {
                    return Err(ConfigError::rule(
                        rule,
                        format!("{field}.config.remote"),
                        "is required",
                    ));
                }
                if c.payload.is_empty() {
                    return Err(ConfigError::rule(
                        rule,
                        format!("{field}.config.payload"),
                        "is required",
                    ));
                }
                let endpoint = resolve_endpoint(
                    rule,
                    &format!("{field}.config.remote"),
                    &c.remote,
                    globals.clusters,
                )?;
                // Values are JSON-escaped: a client's text cannot add members to the payload.
                let payload = Template::compile_json(&c.payload)
                    .map_err(|e| ConfigError::rule(rule, format!("{field}.config.payload"), e))?;
                let mut headers = Vec::with_capacity(c.headers.len());
                for (name, value) in &c.headers {
                    let t = Template::compile(value).map_err(|e| {
                        ConfigError::rule(rule, format!("{field}.config.headers.{name}"), e)
                    })?;
                    headers.push((name.to_ascii_lowercase(), t));
                }
                let timeout_ms = RetryConfig::timeout_ms(
                    c.retry.as_ref(),
                    rule,
                    field,
                    DEFAULT_REMOTE_TIMEOUT_MS,
                )?;
                Ok(Self::RemoteJson(Box::new(RemoteJson {
                    endpoint,
                    payload,
                    headers,
                    forward_response_headers: c
                        .forward_response_headers_to_upstream
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    timeout_ms,
                })))
            }
            "remote" => RemoteAuthorizer::compile(globals, rule, field, config)
                .map(|r| Self::Remote(Box::new(r))),
            "keto_engine_acp_ory" => Err(ConfigError::rule(
                rule,
                format!("{field}.handler"),
                "keto_engine_acp_ory calls Keto's ORY access-control-policy engine, which Keto removed in v0.6 (no supported Keto serves /engines/acp/ory); use remote_json against Keto's check API, or remote",
            )),
            other => Err(ConfigError::rule(
                rule,
                format!("{field}.handler"),
                format!(
                    "unknown or unsupported authorizer {other:?} (supported: allow, deny, remote_json, remote)"
                ),
            )),
        }
    }

    pub(crate) fn reads_captures(&self) -> bool {
        match self {
            Self::RemoteJson(r) => {
                r.payload.reads_captures() || r.headers.iter().any(|(_, t)| t.reads_captures())
            }
            Self::Remote(r) => r.headers.iter().any(|(_, t)| t.reads_captures()),
            _ => false,
        }
    }

    /// The most body bytes this authorizer reads, when it reads the body at all.
    pub fn body_limit(&self) -> Option<usize> {
        match self {
            Self::Remote(r) => Some(r.max_body_bytes),
            _ => None,
        }
    }

    pub(crate) fn reads_request_headers(&self) -> bool {
        match self {
            Self::RemoteJson(r) => {
                r.payload.reads_request_headers()
                    || r.headers.iter().any(|(_, t)| t.reads_request_headers())
            }
            Self::Remote(r) => r.headers.iter().any(|(_, t)| t.reads_request_headers()),
            _ => false,
        }
    }

    pub(crate) fn forwarded_header_names(&self) -> impl Iterator<Item = String> + '_ {
        let names: &[String] = match self {
            Self::RemoteJson(r) => &r.forward_response_headers,
            Self::Remote(r) => &r.forward_response_headers,
            _ => &[],
        };
        names.iter().cloned()
    }

    /// `body` is the request's, once the host has read it (only `remote` asks for it).
    pub(crate) fn authorize(
        &self,
        req: &Request,
        session: &Session,
        body: Option<&[u8]>,
    ) -> AuthzStep {
        match self {
            Self::Remote(r) => match body {
                Some(body) => r.authorize(req, session, body),
                None => AuthzStep::NeedBody,
            },
            Self::Allow => AuthzStep::Allow {
                forward: Vec::new(),
            },
            Self::Deny => AuthzStep::Deny(PolicyError::new(
                ErrorKind::Forbidden,
                "authorizer_deny",
                "access credentials are not sufficient to access this resource",
            )),
            Self::RemoteJson(r) => {
                let mut body = String::new();
                r.payload.render(session, &mut body);
                if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_err() {
                    return AuthzStep::Deny(PolicyError::new(
                        ErrorKind::InternalServerError,
                        "remote_json_payload",
                        "remote_json payload template did not render valid JSON",
                    ));
                }
                let mut headers = Vec::with_capacity(r.headers.len() + 2);
                headers.push(("content-type".to_string(), "application/json".to_string()));
                if let Some(auth) = req.header("authorization") {
                    headers.push(("authorization".to_string(), auth.to_string()));
                }
                for (name, t) in &r.headers {
                    let mut v = String::new();
                    t.render(session, &mut v);
                    headers.retain(|(k, _)| k != name);
                    headers.push((name.clone(), v));
                }
                AuthzStep::Callout(Callout {
                    endpoint: r.endpoint.clone(),
                    method: "POST",
                    headers,
                    body: body.into_bytes(),
                    timeout_ms: r.timeout_ms,
                })
            }
        }
    }

    /// The remote authorizer answered: 200 allows, 403 denies, anything else is an error.
    pub(crate) fn digest(&self, response: Option<&CalloutResponse>) -> AuthzStep {
        if let Self::Remote(r) = self {
            return r.digest(response);
        }
        let Self::RemoteJson(r) = self else {
            return AuthzStep::Deny(PolicyError::new(
                ErrorKind::InternalServerError,
                "unexpected_callout",
                "authorizer received a response it did not ask for",
            ));
        };
        remote::answer(
            &remote::AnswerCodes {
                unreachable: "remote_json_unreachable",
                forbidden: "remote_json_forbidden",
                status: "remote_json_status",
            },
            &r.endpoint.url,
            &r.forward_response_headers,
            response,
        )
    }
}
