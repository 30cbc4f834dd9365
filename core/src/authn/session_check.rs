//! Oathkeeper's `cookie_session` and `bearer_token`: the request's credential is forwarded to a
//! session store (`check_session_url`) that answers 200 with the session as JSON; the subject
//! and `extra` are read from that answer with GJSON paths. The two differ only in which
//! credential makes them responsible (cookies, or a token) and which header always goes along
//! (`Cookie`, or `Authorization`).
//!
//! The check call is made through the cluster the URL maps to, like every callout. It is built
//! from the request the same way Oathkeeper's `PrepareRequest` builds it: the request's path
//! (unless `preserve_path`) and query (unless `preserve_query`), its method (unless
//! `force_method`), the allowlisted headers, then `additional_headers`, then `X-Forwarded-Host`.

use super::{AuthnStep, Caches, TokenFrom, TokenFromConfig, cookie};
use crate::cache::{CacheKey, KeyScope};
use crate::callout::{Callout, CalloutResponse, Endpoint};
use crate::config::{ConfigError, Globals, TtlCacheConfig, parse_handler_config, resolve_endpoint};
use crate::duration::parse_millis;
use crate::error_handler::{ErrorKind, PolicyError};
use crate::gjson::GjsonPath;
use crate::host::Host;
use crate::mutator::valid_header_name;
use crate::request::Request;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The check call's budget when the config sets no `timeout` (Oathkeeper sets none at all; a
/// session store that hangs must not hold requests forever).
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// How long an answer is kept when `cache.enabled` is set without a `ttl`.
const DEFAULT_CACHE_MS: u64 = 5_000;

/// Methods the check call can carry. The host API takes a static method name; a request with a
/// method outside this list is refused rather than checked with another method.
const METHODS: [&str; 18] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "SEARCH",
    "REPORT",
];

fn static_method(method: &str) -> Option<&'static str> {
    METHODS.iter().copied().find(|m| *m == method)
}

/// What makes the authenticator responsible for a request.
#[derive(Debug)]
enum Credential {
    /// `cookie_session`: any cookie, or one of `only`.
    Cookies { only: Vec<String> },
    /// `bearer_token`: a token where `token_from` says, starting with `prefix`.
    Token { from: TokenFrom, prefix: String },
}

#[derive(Debug)]
pub struct SessionCheckAuthenticator {
    endpoint: Endpoint,
    /// `check_session_url`'s own path and query (`:path` is rebuilt per request).
    check_path: String,
    check_query: Option<String>,
    credential: Credential,
    preserve_path: bool,
    preserve_query: bool,
    preserve_host: bool,
    /// Lower-case names of request headers copied onto the check call.
    forward_headers: Vec<String>,
    /// Lower-case names.
    additional_headers: Vec<(String, String)>,
    force_method: Option<&'static str>,
    subject_from: GjsonPath,
    extra_from: GjsonPath,
    /// Opt-in answer cache (Oathkeeper has none): `None` when off.
    cache_ms: Option<u64>,
    timeout_ms: u64,
    cache_scope: KeyScope,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionCheckConfig {
    #[serde(default)]
    check_session_url: String,
    #[serde(default)]
    only: Option<Vec<String>>,
    #[serde(default)]
    token_from: Option<TokenFromConfig>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    preserve_path: bool,
    /// Oathkeeper's schema default.
    #[serde(default = "yes")]
    preserve_query: bool,
    #[serde(default)]
    preserve_host: bool,
    #[serde(default)]
    forward_http_headers: Vec<String>,
    #[serde(default)]
    additional_headers: BTreeMap<String, String>,
    #[serde(default)]
    force_method: Option<String>,
    #[serde(default)]
    subject_from: Option<String>,
    #[serde(default)]
    extra_from: Option<String>,
    /// Portcullis extension: the check call's budget (Go duration).
    #[serde(default)]
    timeout: Option<String>,
    /// Portcullis extension: keep answers briefly (off by default, as Oathkeeper has no cache).
    #[serde(default)]
    cache: Option<TtlCacheConfig>,
}

fn yes() -> bool {
    true
}

/// A session store's answer that passed the checks.
#[derive(Debug, Clone)]
pub struct CachedSession {
    pub subject: Arc<str>,
    pub extra: Arc<Map<String, Value>>,
}

impl SessionCheckAuthenticator {
    /// `handler` is `cookie_session` or `bearer_token`.
    pub(crate) fn compile(
        globals: &Globals<'_>,
        rule: &str,
        field: &str,
        handler: &str,
        config: Value,
    ) -> Result<Self, ConfigError> {
        let bearer = handler == "bearer_token";
        let c: SessionCheckConfig = parse_handler_config(rule, field, config)?;
        let key = |k: &str| format!("{field}.config.{k}");
        if c.check_session_url.is_empty() {
            return Err(ConfigError::rule(
                rule,
                key("check_session_url"),
                "is required",
            ));
        }
        let endpoint = resolve_endpoint(
            rule,
            &key("check_session_url"),
            &c.check_session_url,
            globals.clusters,
        )?;
        let (check_path, check_query) = match endpoint.path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (endpoint.path.clone(), None),
        };
        let credential = if bearer {
            if c.only.is_some() {
                return Err(ConfigError::rule(
                    rule,
                    key("only"),
                    "is a cookie_session setting; bearer_token reads its token from token_from",
                ));
            }
            Credential::Token {
                from: TokenFrom::compile(rule, field, c.token_from)?,
                prefix: c.prefix.unwrap_or_default(),
            }
        } else {
            if c.token_from.is_some() || c.prefix.is_some() {
                return Err(ConfigError::rule(
                    rule,
                    key(if c.token_from.is_some() {
                        "token_from"
                    } else {
                        "prefix"
                    }),
                    "is a bearer_token setting; cookie_session is responsible for cookies (see only)",
                ));
            }
            Credential::Cookies {
                only: c.only.unwrap_or_default(),
            }
        };
        let mut forward_headers = Vec::with_capacity(c.forward_http_headers.len() + 1);
        for (i, name) in c.forward_http_headers.iter().enumerate() {
            if !valid_header_name(name) {
                return Err(ConfigError::rule(
                    rule,
                    key(&format!("forward_http_headers[{i}]")),
                    format!("{name:?} is not a valid HTTP header name"),
                ));
            }
            forward_headers.push(name.to_ascii_lowercase());
        }
        // As Oathkeeper: the credential's own header always goes along.
        forward_headers.push(if bearer { "authorization" } else { "cookie" }.to_string());
        forward_headers.sort();
        forward_headers.dedup();
        let mut additional_headers = Vec::with_capacity(c.additional_headers.len());
        for (name, value) in &c.additional_headers {
            if !valid_header_name(name) || value.contains(['\r', '\n', '\0']) {
                return Err(ConfigError::rule(
                    rule,
                    key(&format!("additional_headers.{name}")),
                    "is not a valid HTTP header",
                ));
            }
            additional_headers.push((name.to_ascii_lowercase(), value.clone()));
        }
        let force_method = match c.force_method.as_deref() {
            None | Some("") => None,
            Some(m) => Some(static_method(m).ok_or_else(|| {
                ConfigError::rule(
                    rule,
                    key("force_method"),
                    format!(
                        "{m:?} is not one of the methods the filter can send ({})",
                        METHODS.join(", ")
                    ),
                )
            })?),
        };
        let path = |k: &str, value: Option<&str>, default: &str| {
            GjsonPath::compile(value.filter(|v| !v.is_empty()).unwrap_or(default))
                .map_err(|e| ConfigError::rule(rule, key(k), e))
        };
        let subject_from = path(
            "subject_from",
            c.subject_from.as_deref(),
            if bearer { "sub" } else { "subject" },
        )?;
        let extra_from = path("extra_from", c.extra_from.as_deref(), "extra")?;
        let timeout_ms = c.timeout.as_deref().map_or(Ok(DEFAULT_TIMEOUT_MS), |t| {
            parse_millis(t).map_err(|e| ConfigError::rule(rule, key("timeout"), e))
        })?;
        let cache_ms = TtlCacheConfig::ttl_ms(c.cache.as_ref(), rule, field, DEFAULT_CACHE_MS)?;
        // Two rules share an answer only when they would have sent the same call to the same
        // place and read the same subject and extra out of it.
        let cache_scope = KeyScope::new()
            .field(handler)
            .field(&endpoint.cluster)
            .field(&endpoint.authority)
            .field(c.subject_from.as_deref().unwrap_or(""))
            .field(c.extra_from.as_deref().unwrap_or(""))
            .field(cache_ms.unwrap_or(0).to_string());
        Ok(Self {
            endpoint,
            check_path,
            check_query,
            credential,
            preserve_path: c.preserve_path,
            preserve_query: c.preserve_query,
            preserve_host: c.preserve_host,
            forward_headers,
            additional_headers,
            force_method,
            subject_from,
            extra_from,
            cache_ms,
            timeout_ms,
            cache_scope,
        })
    }

    fn responsible(&self, req: &Request) -> bool {
        match &self.credential {
            Credential::Cookies { only } if only.is_empty() => req
                .headers()
                .filter(|(k, _)| *k == "cookie")
                .flat_map(|(_, v)| v.split(';'))
                .any(|c| c.split_once('=').is_some_and(|(k, _)| !k.trim().is_empty())),
            Credential::Cookies { only } => only.iter().any(|name| cookie(req, name).is_some()),
            Credential::Token { from, prefix } => from
                .extract(req)
                .is_some_and(|t| t.starts_with(prefix.as_str())),
        }
    }

    /// The check call for this request.
    fn callout(&self, req: &Request) -> Result<Callout, PolicyError> {
        let method = match self.force_method {
            Some(m) => m,
            None => static_method(req.method()).ok_or_else(|| {
                PolicyError::new(
                    ErrorKind::Unauthorized,
                    "session_check_method",
                    format!(
                        "cannot forward method {:?} to the session store",
                        req.method()
                    ),
                )
            })?,
        };
        let path = if self.preserve_path {
            self.check_path.as_str()
        } else {
            req.path_only()
        };
        let query = if self.preserve_query {
            self.check_query.as_deref()
        } else {
            req.query().filter(|q| !q.is_empty())
        };
        let mut endpoint = self.endpoint.clone();
        endpoint.path = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let mut headers: Vec<(String, String)> = req
            .headers()
            .filter(|(k, _)| self.forward_headers.iter().any(|f| f == k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (name, value) in &self.additional_headers {
            headers.retain(|(k, _)| k != name);
            headers.push((name.clone(), value.clone()));
        }
        if self.preserve_host {
            headers.retain(|(k, _)| k != "x-forwarded-host");
            headers.push(("x-forwarded-host".to_string(), req.authority().to_string()));
        }
        Ok(Callout {
            endpoint,
            method,
            headers,
            body: Vec::new(),
            timeout_ms: self.timeout_ms,
        })
    }

    /// The cache key of a check call: a keyed hash of everything it sends, so two requests
    /// share an answer only when the session store would have been asked the same question,
    /// and no cookie or token is kept in memory.
    fn cache_key(&self, caches: &Caches, call: &Callout) -> CacheKey {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(3 + 2 * call.headers.len());
        parts.push(self.cache_scope.as_bytes());
        parts.push(call.method.as_bytes());
        parts.push(call.endpoint.path.as_bytes());
        for (k, v) in &call.headers {
            parts.push(k.as_bytes());
            parts.push(v.as_bytes());
        }
        caches.keyer.key(&parts)
    }

    /// First pass: not responsible, a cached answer, or the call to make.
    pub(crate) fn authenticate(
        &self,
        req: &Request,
        host: &mut dyn Host,
        caches: &mut Caches,
    ) -> AuthnStep {
        if !self.responsible(req) {
            return AuthnStep::NotResponsible;
        }
        let call = match self.callout(req) {
            Ok(c) => c,
            Err(e) => return AuthnStep::Fail(e),
        };
        if self.cache_ms.is_some() {
            let key = self.cache_key(caches, &call);
            if let Some(hit) = caches.session_check.get(&key, host.now()) {
                return AuthnStep::Success {
                    subject: hit.subject.clone(),
                    extra: hit.extra.clone(),
                };
            }
        }
        AuthnStep::Callout(call)
    }

    /// Second pass: the session store answered (or did not: `None`).
    pub(crate) fn digest(
        &self,
        req: &Request,
        host: &mut dyn Host,
        caches: &mut Caches,
        response: Option<&CalloutResponse>,
    ) -> AuthnStep {
        let session = match self.judge(response) {
            Ok(s) => s,
            Err(e) => return AuthnStep::Fail(e),
        };
        if let Some(ttl_ms) = self.cache_ms
            && let Ok(call) = self.callout(req)
        {
            let now = host.now();
            let key = self.cache_key(caches, &call);
            caches.session_check.insert(
                key,
                session.clone(),
                now.saturating_add(ttl_ms.div_ceil(1000).max(1)),
                now,
            );
        }
        AuthnStep::Success {
            subject: session.subject,
            extra: session.extra,
        }
    }

    fn judge(&self, response: Option<&CalloutResponse>) -> Result<CachedSession, PolicyError> {
        let Some(response) = response else {
            // Oathkeeper: a transport error is a 403.
            return Err(PolicyError::new(
                ErrorKind::Forbidden,
                "session_check_unreachable",
                format!("session store {} did not answer", self.endpoint.url),
            ));
        };
        if response.status != 200 {
            return Err(PolicyError::new(
                ErrorKind::Unauthorized,
                "session_check_status",
                format!(
                    "session store answered status code {} (only 200 is a session)",
                    response.status
                ),
            ));
        }
        // Oathkeeper reads a body that is not JSON as an empty session; here it is refused.
        let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
            PolicyError::new(
                ErrorKind::InternalServerError,
                "session_check_malformed",
                format!("session store answered 200 with a body that is not JSON: {e}"),
            )
        })?;
        let subject: Arc<str> = match self.subject_from.get(&body).as_deref() {
            None | Some(Value::Null) => Arc::from(""),
            Some(Value::String(s)) => Arc::from(s.as_str()),
            Some(other) => {
                return Err(PolicyError::new(
                    ErrorKind::Forbidden,
                    "session_check_subject",
                    format!("subject_from selected {other}, which is not a string"),
                ));
            }
        };
        let extra = match self.extra_from.get(&body).map(std::borrow::Cow::into_owned) {
            None | Some(Value::Null) => crate::session::empty_extra(),
            Some(Value::Object(m)) => Arc::new(m),
            Some(other) => {
                return Err(PolicyError::new(
                    ErrorKind::Forbidden,
                    "session_check_extra",
                    format!("extra_from selected {other}, which is not an object"),
                ));
            }
        };
        Ok(CachedSession { subject, extra })
    }
}

#[cfg(test)]
mod tests;
