//! Oathkeeper's `id_token` mutator: the session as a signed JWT in `Authorization: Bearer`.
//!
//! The signing key is the first private key of the JWKS at `jwks_url`, fetched and refreshed by
//! the host like the `jwt` authenticator's keys. Signed tokens are cached per session (subject and
//! rendered claims) until a tenth of `ttl` before they expire, and only while the key set is the
//! one they were signed with: a rotated key re-mints at once (Oathkeeper kept serving tokens of
//! the old key, #763).

use super::MutateStep;
use crate::authn::Caches;
use crate::cache::KeyScope;
use crate::config::{ConfigError, Globals, JwksSource, parse_handler_config, resolve_endpoint};
use crate::error_handler::{ErrorKind, PolicyError};
use crate::host::{Host, KeyLookup};
use crate::session::Session;
use crate::template::Template;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Oathkeeper's default `ttl`.
const DEFAULT_TTL_MS: u64 = 15 * 60 * 1000;
/// The key set is refreshed as often as the `jwt` authenticator's keys: its global `jwks_ttl`,
/// else this (Oathkeeper's default).
const KEYS_TTL_MS: u64 = 30_000;
/// How long a request may wait for the first fetch of the private key set.
const KEYS_MAX_WAIT_MS: u64 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdTokenConfig {
    #[serde(default)]
    issuer_url: String,
    #[serde(default)]
    jwks_url: String,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    claims: Option<String>,
}

#[derive(Debug)]
pub struct IdTokenMutator {
    issuer: String,
    jwks_url: String,
    ttl_s: u64,
    claims: Option<Template>,
    cache_scope: KeyScope,
}

/// A minted token, reused for the same session while its key set is unchanged.
#[derive(Debug, Clone)]
pub struct CachedIdToken {
    pub keys: u64,
    pub header: Arc<str>,
}

fn failure(reason: &'static str, message: impl Into<String>) -> MutateStep {
    MutateStep::Fail(PolicyError::new(
        ErrorKind::InternalServerError,
        reason,
        message,
    ))
}

impl IdTokenMutator {
    pub(crate) fn compile(
        globals: &Globals<'_>,
        rule: &str,
        field: &str,
        config: Value,
        jwks: &mut Vec<JwksSource>,
    ) -> Result<Self, ConfigError> {
        let c: IdTokenConfig = parse_handler_config(rule, field, config)?;
        if c.issuer_url.is_empty() {
            return Err(ConfigError::rule(
                rule,
                format!("{field}.config.issuer_url"),
                "is required",
            ));
        }
        let jwks_field = format!("{field}.config.jwks_url");
        if c.jwks_url.is_empty() {
            return Err(ConfigError::rule(rule, jwks_field, "is required"));
        }
        let endpoint = resolve_endpoint(rule, &jwks_field, &c.jwks_url, globals.clusters)?;
        // An invalid global jwks_ttl is reported by the jwt authenticator's rules.
        let keys_ttl_ms = globals
            .authenticators
            .get("jwt")
            .and_then(|s| s.config.as_ref())
            .and_then(|c| c.get("jwks_ttl"))
            .and_then(Value::as_str)
            .and_then(|t| crate::duration::parse_millis(t).ok())
            .unwrap_or(KEYS_TTL_MS);
        let ttl_ms = match c.ttl.as_deref() {
            None => DEFAULT_TTL_MS,
            Some(t) => crate::duration::parse_millis(t)
                .map_err(|e| ConfigError::rule(rule, format!("{field}.config.ttl"), e))?,
        };
        let ttl_s = ttl_ms / 1000;
        if ttl_s == 0 {
            return Err(ConfigError::rule(
                rule,
                format!("{field}.config.ttl"),
                "must be at least 1s (JWT times are whole seconds)",
            ));
        }
        let claims = match c.claims.as_deref().filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(src) => Some(
                Template::compile_json(src)
                    .map_err(|e| ConfigError::rule(rule, format!("{field}.config.claims"), e))?,
            ),
        };
        match jwks.iter_mut().find(|s| s.endpoint.url == c.jwks_url) {
            Some(s) => {
                s.ttl_ms = s.ttl_ms.min(keys_ttl_ms);
                s.max_wait_ms = s.max_wait_ms.min(KEYS_MAX_WAIT_MS);
            }
            None => jwks.push(JwksSource {
                endpoint,
                ttl_ms: keys_ttl_ms,
                max_wait_ms: KEYS_MAX_WAIT_MS,
                max_stale_ms: crate::config::DEFAULT_JWKS_MAX_STALE_MS,
            }),
        }
        let cache_scope = KeyScope::new()
            .field(&c.issuer_url)
            .field(&c.jwks_url)
            .field(ttl_s.to_be_bytes())
            .field(c.claims.as_deref().unwrap_or(""));
        Ok(Self {
            issuer: c.issuer_url,
            jwks_url: c.jwks_url,
            ttl_s,
            claims,
            cache_scope,
        })
    }

    pub(crate) fn reads_captures(&self) -> bool {
        self.claims.as_ref().is_some_and(Template::reads_captures)
    }

    pub(crate) fn reads_request_headers(&self) -> bool {
        self.claims
            .as_ref()
            .is_some_and(Template::reads_request_headers)
    }

    pub(crate) fn max_wait_ms(&self) -> u64 {
        KEYS_MAX_WAIT_MS
    }

    pub(crate) fn mutate(
        &self,
        session: &mut Session,
        host: &mut dyn Host,
        caches: &mut Caches,
        keys_timed_out: bool,
    ) -> MutateStep {
        let rendered = self
            .claims
            .as_ref()
            .map(|t| t.render_to_string(session))
            .unwrap_or_default();
        let keys = host.keys_version(std::slice::from_ref(&self.jwks_url));
        let key = caches.keyer.key(&[
            self.cache_scope.as_bytes(),
            session.subject.as_bytes(),
            rendered.as_bytes(),
        ]);
        if let Some((hit, refresh_at)) = caches.id_token.peek(&key).filter(|(h, _)| h.keys == keys)
        {
            let bounds = host.time_bounds();
            if refresh_at > bounds.latest || host.now() < refresh_at {
                caches.stats.id_token_hits += 1;
                let header = hit.header.to_string();
                set_authorization(session, header);
                return MutateStep::Done;
            }
        }
        caches.stats.id_token_misses += 1;
        let signer = match host.keys(&self.jwks_url) {
            KeyLookup::Ready(set) => match set.signer() {
                Ok(s) => s,
                Err(e) => {
                    return failure(
                        "id_token_key",
                        format!("id_token: the key set at {}: {e}", self.jwks_url),
                    );
                }
            },
            KeyLookup::Pending if !keys_timed_out => return MutateStep::WaitForKeys,
            KeyLookup::Pending | KeyLookup::Unavailable => {
                return failure(
                    "id_token_keys_unavailable",
                    format!(
                        "id_token: no key set could be fetched from {}",
                        self.jwks_url
                    ),
                );
            }
        };
        let mut claims = if rendered.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(&rendered) {
                Ok(Value::Object(m)) => m,
                Ok(_) | Err(_) => {
                    return failure(
                        "id_token_claims",
                        "id_token: the claims template did not render a JSON object",
                    );
                }
            }
        };
        let now = host.now();
        let exp = now.saturating_add(self.ttl_s);
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), jti(caches, now).into());
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("sub".into(), session.subject.to_string().into());
        let payload = Value::Object(claims).to_string();
        let token = match signer.sign(payload.as_bytes()) {
            Ok(t) => t,
            Err(e) => {
                return failure(
                    "id_token_sign",
                    format!("id_token: signing with key {:?} failed: {e}", signer.kid()),
                );
            }
        };
        let header: Arc<str> = Arc::from(format!("Bearer {token}"));
        // Reused until a tenth of its lifetime is left, as Oathkeeper does.
        let refresh_at = exp.saturating_sub(self.ttl_s.div_ceil(10));
        if refresh_at > now {
            caches.id_token.insert(
                key,
                CachedIdToken {
                    keys,
                    header: header.clone(),
                },
                refresh_at,
                now,
            );
        }
        set_authorization(session, header.to_string());
        MutateStep::Done
    }
}

fn set_authorization(session: &mut Session, value: String) {
    session
        .header
        .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
    session.header.push(("authorization".to_string(), value));
}

/// A unique token id in UUID v4 form: a keyed hash (the per-VM random key) of a counter and the
/// time, so ids neither repeat nor can be predicted from earlier ones.
fn jti(caches: &mut Caches, now: u64) -> String {
    caches.jti_counter = caches.jti_counter.wrapping_add(1);
    let mut b = caches
        .keyer
        .key(&[
            b"jti",
            &caches.jti_counter.to_be_bytes(),
            &now.to_be_bytes(),
        ])
        .to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
