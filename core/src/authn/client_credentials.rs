//! Oathkeeper's `oauth2_client_credentials` authenticator: the request's HTTP Basic credentials
//! are exchanged at `token_url` (client credentials grant, `required_scope`); a token means the
//! client is who it says, and the subject is its client id. The token itself goes nowhere.
//!
//! **Cache.** A successful exchange is remembered in the host's shared store (proxy-wasm shared
//! data: every worker of the Envoy sees it) under a keyed hash of token URL, scopes, client id
//! and secret, so neither the secret nor anything it could be guessed from is stored; the hash
//! key itself lives in the shared store, made once by the first worker that needs it. Entries go
//! in one of `max_tokens` slots picked by the hash, so the store never holds more than that
//! (a colliding client evicts another, which then exchanges again).

use super::{AuthnStep, Caches, duration, unauthorized};
use crate::cache::{CacheKey, KeyScope, Keyer};
use crate::callout::{Callout, CalloutResponse, Endpoint};
use crate::config::{ConfigError, Globals, RetryConfig, parse_handler_config, resolve_endpoint};
use crate::error_handler::{ErrorKind, PolicyError};
use crate::form;
use crate::host::Host;
use crate::request::Request;
use crate::session::empty_extra;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// Oathkeeper's `retry.give_up_after` default for this authenticator: the call's budget.
const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// Oathkeeper's `cache.max_tokens` default.
const DEFAULT_MAX_TOKENS: u64 = 1_000;
/// Where the hash key shared by all workers is kept.
const SHARED_KEYER: &str = "portcullis.client_credentials.key";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientCredentialsConfig {
    #[serde(default)]
    token_url: String,
    #[serde(default)]
    required_scope: Vec<String>,
    #[serde(default)]
    retry: Option<RetryConfig>,
    #[serde(default)]
    cache: Option<CacheConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheConfig {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheSettings {
    /// At most this long (seconds), and never past the token's `expires_in`.
    ttl_s: Option<u64>,
    max_tokens: u64,
}

#[derive(Debug)]
pub struct ClientCredentialsAuthenticator {
    endpoint: Endpoint,
    /// `grant_type=client_credentials[&scope=...]`, encoded once.
    body: String,
    timeout_ms: u64,
    cache: Option<CacheSettings>,
    cache_scope: KeyScope,
}

/// HTTP Basic credentials, URL-unescaped as Oathkeeper does.
struct Credentials {
    id: String,
    secret: String,
}

enum Basic {
    Absent,
    Invalid,
    Present(Credentials),
}

fn basic(req: &Request) -> Basic {
    let Some((scheme, encoded)) = req.header("authorization").and_then(|v| v.split_once(' '))
    else {
        return Basic::Absent;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Basic::Absent;
    }
    // What Go's `Request.BasicAuth` does not accept is no Basic credential at all.
    let Some(decoded) = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return Basic::Absent;
    };
    let Some((id, secret)) = decoded.split_once(':') else {
        return Basic::Absent;
    };
    match (query_unescape(id), query_unescape(secret)) {
        (Some(id), Some(secret)) => Basic::Present(Credentials { id, secret }),
        _ => Basic::Invalid,
    }
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte, anything else after `%` an error.
fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl ClientCredentialsAuthenticator {
    pub(crate) fn compile(
        globals: &Globals<'_>,
        rule: &str,
        field: &str,
        config: Value,
    ) -> Result<Self, ConfigError> {
        let c: ClientCredentialsConfig = parse_handler_config(rule, field, config)?;
        let url_field = format!("{field}.config.token_url");
        if c.token_url.is_empty() {
            return Err(ConfigError::rule(rule, url_field, "is required"));
        }
        let endpoint = resolve_endpoint(rule, &url_field, &c.token_url, globals.clusters)?;
        let timeout_ms =
            RetryConfig::timeout_ms(c.retry.as_ref(), rule, field, DEFAULT_TIMEOUT_MS)?;
        let cache = match c.cache {
            Some(cc) if cc.enabled => {
                let ttl_ms = duration(
                    rule,
                    &format!("{field}.config.cache.ttl"),
                    cc.ttl.as_deref(),
                    u64::MAX,
                )?;
                let max_tokens = cc.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
                if max_tokens == 0 {
                    return Err(ConfigError::rule(
                        rule,
                        format!("{field}.config.cache.max_tokens"),
                        "must be at least 1 (disable the cache with enabled: false)",
                    ));
                }
                Some(CacheSettings {
                    ttl_s: (ttl_ms != u64::MAX).then_some(ttl_ms / 1000),
                    max_tokens,
                })
            }
            _ => None,
        };
        let mut body = String::from("grant_type=client_credentials");
        if !c.required_scope.is_empty() {
            body.push_str("&scope=");
            form::escape_into(&c.required_scope.join(" "), &mut body);
        }
        let cache_scope = KeyScope::new()
            .field(&c.token_url)
            .field(&endpoint.cluster)
            .list(&c.required_scope);
        Ok(Self {
            endpoint,
            body,
            timeout_ms,
            cache,
            cache_scope,
        })
    }

    fn cache_key(&self, keyer: &Keyer, c: &Credentials) -> CacheKey {
        keyer.key(&[
            self.cache_scope.as_bytes(),
            c.id.as_bytes(),
            c.secret.as_bytes(),
        ])
    }

    fn slot_name(&self, settings: CacheSettings, key: CacheKey) -> String {
        // Low bits of a keyed hash: uniform over the slots.
        format!(
            "portcullis.client_credentials.{}",
            (key as u64) % settings.max_tokens
        )
    }

    /// First pass: a remembered exchange, or the call to make.
    pub(crate) fn authenticate(
        &self,
        req: &Request,
        host: &mut dyn Host,
        caches: &mut Caches,
    ) -> AuthnStep {
        let credentials = match basic(req) {
            Basic::Absent => return AuthnStep::NotResponsible,
            Basic::Invalid => {
                return AuthnStep::Fail(unauthorized(
                    "client_credentials_malformed",
                    "the Basic credentials are not valid URL-encoded text",
                ));
            }
            Basic::Present(c) => c,
        };
        if let Some(settings) = self.cache
            && let Some(keyer) = shared_keyer(host)
        {
            let key = self.cache_key(&keyer, &credentials);
            let remembered = host
                .shared_get(&self.slot_name(settings, key))
                .and_then(|v| decode_entry(&v))
                .filter(|(k, _)| *k == key);
            if let Some((_, expires_at)) = remembered
                && host.now() < expires_at
            {
                caches.stats.client_credentials_hits += 1;
                return success(credentials.id);
            }
            caches.stats.client_credentials_misses += 1;
        }
        let mut authorization = String::from("Basic ");
        STANDARD.encode_string(
            format!(
                "{}:{}",
                form::escape(&credentials.id),
                form::escape(&credentials.secret)
            ),
            &mut authorization,
        );
        AuthnStep::Callout(Callout {
            endpoint: self.endpoint.clone(),
            method: "POST",
            headers: vec![
                (
                    "content-type".to_string(),
                    "application/x-www-form-urlencoded".to_string(),
                ),
                ("accept".to_string(), "application/json".to_string()),
                ("authorization".to_string(), authorization),
            ],
            body: self.body.clone().into_bytes(),
            timeout_ms: self.timeout_ms,
        })
    }

    /// Second pass: the token endpoint answered (or did not: `None`).
    pub(crate) fn digest(
        &self,
        req: &Request,
        host: &mut dyn Host,
        response: Option<&CalloutResponse>,
    ) -> AuthnStep {
        let Basic::Present(credentials) = basic(req) else {
            return AuthnStep::Fail(unauthorized(
                "client_credentials_malformed",
                "the Basic credentials vanished between the calls",
            ));
        };
        let Some(response) = response else {
            return AuthnStep::Fail(PolicyError::new(
                ErrorKind::ServiceUnavailable,
                "token_endpoint_unreachable",
                format!("token endpoint {} did not answer", self.endpoint.url),
            ));
        };
        let kind = match response.status {
            200..=299 => None,
            404 => Some(ErrorKind::NotFound),
            500 => Some(ErrorKind::InternalServerError),
            // The error handlers know no 429 or 504: both are "try again later".
            429 | 503 | 504 => Some(ErrorKind::ServiceUnavailable),
            _ => Some(ErrorKind::Unauthorized),
        };
        if let Some(kind) = kind {
            return AuthnStep::Fail(PolicyError::new(
                kind,
                "client_credentials_rejected",
                format!(
                    "token endpoint {} answered status {}",
                    self.endpoint.url, response.status
                ),
            ));
        }
        let answer: Option<(String, Option<u64>)> = serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| {
                let token = v.get("access_token")?.as_str()?.to_string();
                let expires_in = v.get("expires_in").and_then(Value::as_u64);
                Some((token, expires_in))
            })
            .filter(|(t, _)| !t.is_empty());
        let Some((_, expires_in)) = answer else {
            return AuthnStep::Fail(unauthorized(
                "client_credentials_no_token",
                format!(
                    "token endpoint {} answered without an access token",
                    self.endpoint.url
                ),
            ));
        };
        if let Some(settings) = self.cache
            && let Some(keyer) = shared_keyer(host)
        {
            // Without either bound an entry would outlive a revoked client: not kept at all.
            let lifetime = match (settings.ttl_s, expires_in) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(lifetime) = lifetime.filter(|l| *l > 0) {
                let key = self.cache_key(&keyer, &credentials);
                let expires_at = host.now().saturating_add(lifetime);
                host.shared_set(
                    &self.slot_name(settings, key),
                    &encode_entry(key, expires_at),
                );
            }
        }
        success(credentials.id)
    }
}

fn success(client_id: String) -> AuthnStep {
    AuthnStep::Success {
        subject: Arc::from(client_id),
        extra: empty_extra(),
    }
}

fn encode_entry(key: CacheKey, expires_at: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&key.to_be_bytes());
    v.extend_from_slice(&expires_at.to_be_bytes());
    v
}

fn decode_entry(v: &[u8]) -> Option<(CacheKey, u64)> {
    let key = CacheKey::from_be_bytes(v.get(..16)?.try_into().ok()?);
    let expires_at = u64::from_be_bytes(v.get(16..24)?.try_into().ok()?);
    Some((key, expires_at))
}

/// The hash key every worker uses for this cache: read from the shared store, or made by this
/// worker and stored there. It is read on every use rather than kept: two workers racing to make
/// it both end up with whatever was stored last (an entry written under the losing key is merely
/// never found).
fn shared_keyer(host: &mut dyn Host) -> Option<Keyer> {
    if let Some(k) = host
        .shared_get(SHARED_KEYER)
        .and_then(|b| Keyer::from_bytes(&b))
    {
        return Some(k);
    }
    host.shared_set(SHARED_KEYER, &Keyer::default().to_bytes());
    host.shared_get(SHARED_KEYER)
        .and_then(|b| Keyer::from_bytes(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_unescape_is_strict_like_go() {
        assert_eq!(query_unescape("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(query_unescape("100%"), None);
        assert_eq!(query_unescape("%zz"), None);
        assert_eq!(query_unescape("%ff"), None, "not UTF-8");
    }

    #[test]
    fn entries_round_trip_and_reject_garbage() {
        let e = encode_entry(0x0123_4567_89ab_cdef_0011_2233_4455_6677, 42);
        assert_eq!(
            decode_entry(&e),
            Some((0x0123_4567_89ab_cdef_0011_2233_4455_6677, 42))
        );
        assert_eq!(decode_entry(&e[..20]), None);
    }
}
