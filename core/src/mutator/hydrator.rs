//! Oathkeeper's `hydrator` mutator: the authentication session, as JSON in Oathkeeper's shape
//! (`subject`, `extra`, `header`, `match_context` with Go's URL struct), is POSTed to `api.url`;
//! a 200 answer replaces the session (extra, upstream headers, match context) for the mutators
//! after it. The subject may not change, and anything but a 200 is an error (500), as in
//! Oathkeeper.

use super::{MutateStep, valid_header_name};
use crate::authn::Caches;
use crate::cache::{CacheKey, KeyScope};
use crate::callout::{Callout, CalloutResponse, Endpoint};
use crate::config::{ConfigError, Globals, TtlCacheConfig, parse_handler_config, resolve_endpoint};
use crate::duration::parse_millis;
use crate::error_handler::{ErrorKind, PolicyError};
use crate::host::Host;
use crate::session::{MatchContext, Session};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::sync::Arc;

/// Oathkeeper's `api.retry.give_up_after` default. Without `retry` Oathkeeper waits forever;
/// the filter never does.
const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// Oathkeeper's `cache.ttl` default.
const DEFAULT_CACHE_MS: u64 = 60_000;

#[derive(Debug)]
pub struct Hydrator {
    endpoint: Endpoint,
    /// `Basic ...`, computed once.
    authorization: Option<String>,
    timeout_ms: u64,
    cache_ms: Option<u64>,
    cache_scope: KeyScope,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HydratorConfig {
    api: ApiConfig,
    #[serde(default)]
    cache: Option<TtlCacheConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiConfig {
    #[serde(default)]
    url: String,
    #[serde(default)]
    auth: Option<AuthConfig>,
    #[serde(default)]
    retry: Option<RetryConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    #[serde(default)]
    basic: Option<BasicConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicConfig {
    username: String,
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryConfig {
    #[serde(default)]
    give_up_after: Option<String>,
    #[serde(default)]
    max_delay: Option<String>,
}

/// What a hydration answer replaces, kept when the cache is on.
#[derive(Debug, Clone)]
pub struct HydratedSession {
    extra: Arc<Map<String, Value>>,
    header: Vec<(String, String)>,
    match_context: MatchContext,
}

fn failure(reason: &'static str, message: impl Into<String>) -> MutateStep {
    MutateStep::Fail(PolicyError::new(
        ErrorKind::InternalServerError,
        reason,
        message,
    ))
}

impl Hydrator {
    pub(crate) fn compile(
        globals: &Globals<'_>,
        rule: &str,
        field: &str,
        config: Value,
    ) -> Result<Self, ConfigError> {
        let c: HydratorConfig = parse_handler_config(rule, field, config)?;
        let key = |k: &str| format!("{field}.config.{k}");
        if c.api.url.is_empty() {
            return Err(ConfigError::rule(rule, key("api.url"), "is required"));
        }
        let endpoint = resolve_endpoint(rule, &key("api.url"), &c.api.url, globals.clusters)?;
        let authorization = c.api.auth.and_then(|a| a.basic).map(|b| {
            format!(
                "Basic {}",
                STANDARD.encode(format!("{}:{}", b.username, b.password))
            )
        });
        let duration = |k: &str, v: &str| {
            parse_millis(v).map_err(|e| ConfigError::rule(rule, key(&format!("api.retry.{k}")), e))
        };
        let mut timeout_ms = DEFAULT_TIMEOUT_MS;
        if let Some(r) = &c.api.retry {
            if let Some(d) = &r.max_delay {
                duration("max_delay", d)?;
            }
            if let Some(d) = &r.give_up_after {
                timeout_ms = duration("give_up_after", d)?;
            }
        }
        let cache_ms = TtlCacheConfig::ttl_ms(c.cache.as_ref(), rule, field, DEFAULT_CACHE_MS)?;
        let cache_scope = KeyScope::new()
            .field(&c.api.url)
            .field(&endpoint.cluster)
            .field(authorization.as_deref().unwrap_or(""));
        Ok(Self {
            endpoint,
            authorization,
            timeout_ms,
            cache_ms,
            cache_scope,
        })
    }

    /// Oathkeeper keys its cache on the whole session, so only an identical request hits. Behind
    /// Envoy no two requests are identical (`x-request-id`, trace headers), so those headers are
    /// left out of the key: the answer is reused for the same session on the same URL with the
    /// same headers otherwise.
    fn cache_key(&self, caches: &Caches, session: &Session) -> CacheKey {
        let keyed = session_value(session, |name| !PER_REQUEST_HEADERS.contains(&name)).to_string();
        caches
            .keyer
            .key(&[self.cache_scope.as_bytes(), keyed.as_bytes()])
    }

    /// First pass: a cached answer applied, or the call to make.
    pub(crate) fn hydrate(
        &self,
        session: &mut Session,
        host: &mut dyn Host,
        caches: &mut Caches,
    ) -> MutateStep {
        if self.cache_ms.is_some() {
            let key = self.cache_key(caches, session);
            if let Some(hit) = caches.hydrator.get(&key, host.now()) {
                apply(session, hit.clone());
                return MutateStep::Done;
            }
        }
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(auth) = &self.authorization {
            headers.push(("authorization".to_string(), auth.clone()));
        }
        MutateStep::Callout(Callout {
            endpoint: self.endpoint.clone(),
            method: "POST",
            headers,
            body: session_json(session).to_string().into_bytes(),
            timeout_ms: self.timeout_ms,
        })
    }

    /// Second pass: the API answered (or did not: `None`).
    pub(crate) fn digest(
        &self,
        session: &mut Session,
        host: &mut dyn Host,
        caches: &mut Caches,
        response: Option<&CalloutResponse>,
    ) -> MutateStep {
        let Some(response) = response else {
            return failure(
                "hydrator_unreachable",
                format!("hydrator API {} did not answer", self.endpoint.url),
            );
        };
        if response.status != 200 {
            return failure(
                "hydrator_status",
                format!(
                    "hydrator API answered status code {} but expected 200",
                    response.status
                ),
            );
        }
        let hydrated = match parse_answer(&response.body, &session.subject) {
            Ok(h) => h,
            Err(message) => return failure("hydrator_malformed", message),
        };
        if let Some(ttl_ms) = self.cache_ms {
            // The session has not changed since the call was made.
            let key = self.cache_key(caches, session);
            let now = host.now();
            caches.hydrator.insert(
                key,
                hydrated.clone(),
                now.saturating_add(ttl_ms.div_ceil(1000).max(1)),
                now,
            );
        }
        apply(session, hydrated);
        MutateStep::Done
    }
}

fn apply(session: &mut Session, h: HydratedSession) {
    session.extra = h.extra;
    session.header = h.header;
    session.match_context = h.match_context;
}

/// Go's `http.CanonicalHeaderKey`: `x-user-id` -> `X-User-Id`.
fn canonical(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Request headers that differ on every request though nothing about the caller changed.
const PER_REQUEST_HEADERS: [&str; 10] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-envoy-expected-rq-timeout-ms",
];

/// Header pairs as Go's `http.Header`: canonical names, all values in order.
fn header_json<'a>(headers: impl Iterator<Item = &'a (String, String)>) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        if let Value::Array(values) = map
            .entry(canonical(name))
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            values.push(Value::from(value.as_str()));
        }
    }
    Value::Object(map)
}

/// `scheme://host/path?query` as Go's `url.URL` marshals to JSON.
fn go_url(url: &str) -> Value {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (host, path_query) = rest.split_at(split);
    let (raw_path, raw_query) = path_query.split_once('?').unwrap_or((path_query, ""));
    // The path was checked canonical when the rule matched; Go's `Path` is the decoded one.
    let path = crate::url::canonical_path(raw_path).unwrap_or(Cow::Borrowed(raw_path));
    let escaped = path != raw_path;
    json!({
        "Scheme": scheme,
        "Opaque": "",
        "User": null,
        "Host": host,
        "Path": path,
        "RawPath": if escaped { raw_path } else { "" },
        "OmitHost": false,
        "ForceQuery": false,
        "RawQuery": raw_query,
        "Fragment": "",
        "RawFragment": "",
    })
}

/// Oathkeeper's `AuthenticationSession` JSON.
pub(crate) fn session_json(session: &Session) -> Value {
    session_value(session, |_| true)
}

/// The session JSON with only the request headers `keep` accepts (by lower-case name).
fn session_value(session: &Session, keep: impl Fn(&str) -> bool) -> Value {
    let ctx = &session.match_context;
    json!({
        "subject": &*session.subject,
        "extra": &*session.extra,
        "header": header_json(session.header.iter()),
        "match_context": {
            "regexp_capture_groups": ctx.regexp_capture_groups,
            "url": go_url(&ctx.url),
            "method": ctx.method,
            "header": header_json(ctx.header.iter().filter(|(k, _)| keep(k))),
        },
    })
}

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    extra: Option<Map<String, Value>>,
    #[serde(default)]
    header: Option<Map<String, Value>>,
    #[serde(default)]
    match_context: Option<AnswerContext>,
}

#[derive(Debug, Deserialize)]
struct AnswerContext {
    #[serde(default)]
    regexp_capture_groups: Option<Vec<String>>,
    #[serde(default)]
    url: Option<AnswerUrl>,
    #[serde(default)]
    method: String,
    #[serde(default)]
    header: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[allow(non_snake_case)]
struct AnswerUrl {
    #[serde(default)]
    Scheme: String,
    #[serde(default)]
    Host: String,
    #[serde(default)]
    Path: String,
    #[serde(default)]
    RawPath: String,
    #[serde(default)]
    RawQuery: String,
}

/// `http.Header` JSON into pairs (lower-case names; `first_only` keeps one value per name, as
/// the upstream request gets).
fn headers_from(
    map: Option<Map<String, Value>>,
    first_only: bool,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, values) in map.unwrap_or_default() {
        if !valid_header_name(&name) {
            return Err(format!(
                "header name {name:?} is not a valid HTTP header name"
            ));
        }
        let Value::Array(values) = values else {
            return Err(format!("header {name:?} is not a list of strings"));
        };
        for v in values {
            let Value::String(mut v) = v else {
                return Err(format!("header {name:?} is not a list of strings"));
            };
            if v.contains(['\r', '\n']) {
                v = v.replace(['\r', '\n'], " ");
            }
            out.push((name.to_ascii_lowercase(), v));
            if first_only {
                break;
            }
        }
    }
    Ok(out)
}

fn parse_answer(body: &[u8], subject: &str) -> Result<HydratedSession, String> {
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("hydrator API answered with something other than a session: {e}"))?;
    if a.subject != subject {
        return Err(format!(
            "hydrator API changed the subject from {subject:?} to {:?}",
            a.subject
        ));
    }
    let ctx = a.match_context.map_or_else(
        || Ok(MatchContext::default()),
        |c| -> Result<MatchContext, String> {
            let url = c.url.map_or_else(String::new, |u| {
                let path = if u.RawPath.is_empty() {
                    u.Path
                } else {
                    u.RawPath
                };
                let mut s = String::new();
                if !u.Scheme.is_empty() {
                    s.push_str(&u.Scheme);
                    s.push_str("://");
                }
                s.push_str(&u.Host);
                s.push_str(&path);
                if !u.RawQuery.is_empty() {
                    s.push('?');
                    s.push_str(&u.RawQuery);
                }
                s
            });
            Ok(MatchContext {
                regexp_capture_groups: c.regexp_capture_groups.unwrap_or_default(),
                url,
                method: Cow::Owned(c.method),
                header: headers_from(c.header, false)?,
            })
        },
    )?;
    Ok(HydratedSession {
        extra: Arc::new(a.extra.unwrap_or_default()),
        header: headers_from(a.header, true)?,
        match_context: ctx,
    })
}

#[cfg(test)]
mod tests;
