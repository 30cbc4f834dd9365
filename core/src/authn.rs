//! Authenticators: who is calling? Oathkeeper's `noop`, `anonymous`, `unauthorized`, `jwt` and
//! `oauth2_introspection`, compiled from a rule's handler config merged over the global one.
//!
//! An authenticator either succeeds (a subject and extra claims), is *not responsible* (no
//! credential of its kind: the chain moves on), fails (the chain stops), or needs the host:
//! keys that are still being fetched, or an introspection call.

mod client_credentials;

pub use client_credentials::ClientCredentialsAuthenticator;

use crate::cache::{ExpiringCache, KeyScope, Keyer};
use crate::callout::{Callout, CalloutResponse, Endpoint};
use crate::config::{
    ConfigError, EmptyConfig, Globals, HandlerKind, JwksSource, RetryConfig, parse_handler_config,
    resolve_endpoint,
};
use crate::duration::parse_millis;
use crate::error_handler::{ErrorKind, PolicyError};
use crate::form;
use crate::host::{Host, KeyLookup};
use crate::introspection::{self, IntrospectionError, IntrospectionRequirements};
use crate::jwks;
use crate::jwt::{self, JwtError, JwtRequirements};
use crate::request::Request;
use crate::rule::Handler;
use crate::scope::ScopeStrategy;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

mod session_check;
pub use session_check::{CachedSession, SessionCheckAuthenticator};

/// Oathkeeper's defaults for the JWKS cache of the `jwt` authenticator.
const DEFAULT_JWKS_TTL_MS: u64 = 30_000;
const DEFAULT_JWKS_MAX_WAIT_MS: u64 = 1_000;
/// Introspection results are cached this long when the rule says nothing about `cache`:
/// long enough to absorb bursts, short enough that a revoked token stops working quickly.
pub const DEFAULT_INTROSPECTION_CACHE_MS: u64 = 5_000;
/// Oathkeeper's `retry.give_up_after` default: the whole introspection call's budget.
const DEFAULT_INTROSPECTION_TIMEOUT_MS: u64 = 1_000;
/// A verified JWT without `exp` is re-verified at least this often.
const JWT_CACHE_NO_EXP_MS: u64 = 60_000;

/// Where the credential is read from (`token_from`); default `Authorization: Bearer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFrom {
    Bearer,
    Header(String),
    Query(String),
    Cookie(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFromConfig {
    header: Option<String>,
    query_parameter: Option<String>,
    cookie: Option<String>,
}

impl TokenFrom {
    /// The source as one unambiguous string, for cache keys.
    fn key_part(&self) -> String {
        match self {
            Self::Bearer => "bearer".to_string(),
            Self::Header(h) => format!("header:{h}"),
            Self::Query(q) => format!("query:{q}"),
            Self::Cookie(c) => format!("cookie:{c}"),
        }
    }

    fn compile(rule: &str, field: &str, cfg: Option<TokenFromConfig>) -> Result<Self, ConfigError> {
        let Some(cfg) = cfg else {
            return Ok(Self::Bearer);
        };
        match (cfg.header, cfg.query_parameter, cfg.cookie) {
            (Some(h), None, None) if h.eq_ignore_ascii_case("authorization") => Ok(Self::Bearer),
            (Some(h), None, None) if !h.is_empty() => Ok(Self::Header(h.to_ascii_lowercase())),
            (None, Some(q), None) if !q.is_empty() => Ok(Self::Query(q)),
            (None, None, Some(c)) if !c.is_empty() => Ok(Self::Cookie(c)),
            _ => Err(ConfigError::rule(
                rule,
                format!("{field}.config.token_from"),
                "must set exactly one non-empty of header, query_parameter, cookie",
            )),
        }
    }

    /// The credential of this request, if it carries one where this authenticator looks.
    pub fn extract<'a>(&self, req: &'a Request) -> Option<Cow<'a, str>> {
        let token: Cow<'a, str> = match self {
            Self::Bearer => {
                let value = req.header("authorization")?;
                let (scheme, token) = value.split_once(' ')?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return None;
                }
                Cow::Borrowed(token)
            }
            Self::Header(name) => Cow::Borrowed(req.header(name)?),
            Self::Query(name) => query_param(req.query()?, name)?,
            Self::Cookie(name) => Cow::Borrowed(cookie(req, name)?),
        };
        (!token.is_empty()).then_some(token)
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form::decode(k) == name).then(|| form::decode(v))
    })
}

fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

#[derive(Debug)]
pub struct JwtAuthenticator {
    pub requirements: JwtRequirements,
    pub token_from: TokenFrom,
    /// How long a request may wait for keys that are still being fetched (`jwks_max_wait`).
    pub max_wait_ms: u64,
    /// Distinguishes cache entries of authenticators trusting different key sets.
    cache_scope: KeyScope,
}

/// How long introspection answers are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionCache {
    Disabled,
    /// At most this long, and never past the token's `exp`.
    Ttl(u64),
}

#[derive(Debug)]
pub struct IntrospectionAuthenticator {
    pub endpoint: Endpoint,
    pub requirements: IntrospectionRequirements,
    pub token_from: TokenFrom,
    pub prefix: String,
    pub preserve_host: bool,
    pub request_headers: Vec<(String, String)>,
    pub cache: IntrospectionCache,
    pub timeout_ms: u64,
    /// Everything of this config that shapes the introspection call or the judging of its
    /// answer: two rules share an answer only when they would have asked and judged alike.
    cache_scope: KeyScope,
}

#[derive(Debug)]
pub enum Authenticator {
    Noop,
    Anonymous {
        subject: String,
    },
    Unauthorized,
    Jwt(Box<JwtAuthenticator>),
    Introspection(Box<IntrospectionAuthenticator>),
    ClientCredentials(Box<ClientCredentialsAuthenticator>),
    /// `cookie_session` and `bearer_token`.
    SessionCheck(Box<SessionCheckAuthenticator>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnonymousConfig {
    #[serde(default)]
    subject: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtConfig {
    #[serde(default)]
    jwks_urls: Vec<String>,
    #[serde(default)]
    required_scope: Vec<String>,
    #[serde(default)]
    target_audience: Vec<String>,
    #[serde(default)]
    trusted_issuers: Vec<String>,
    #[serde(default)]
    allowed_algorithms: Vec<String>,
    #[serde(default)]
    scope_strategy: Option<String>,
    #[serde(default)]
    token_from: Option<TokenFromConfig>,
    #[serde(default)]
    jwks_max_wait: Option<String>,
    #[serde(default)]
    jwks_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntrospectionConfig {
    #[serde(default)]
    introspection_url: String,
    #[serde(default)]
    required_scope: Vec<String>,
    #[serde(default)]
    target_audience: Vec<String>,
    #[serde(default)]
    trusted_issuers: Vec<String>,
    #[serde(default)]
    scope_strategy: Option<String>,
    #[serde(default)]
    token_from: Option<TokenFromConfig>,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    preserve_host: bool,
    #[serde(default)]
    introspection_request_headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    retry: Option<RetryConfig>,
    #[serde(default)]
    cache: Option<CacheConfig>,
    #[serde(default)]
    pre_authorization: Option<PreAuthorizationConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheConfig {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    max_cost: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct PreAuthorizationConfig {
    #[serde(default)]
    enabled: bool,
}

fn scope_strategy(
    rule: &str,
    field: &str,
    name: Option<&str>,
) -> Result<ScopeStrategy, ConfigError> {
    ScopeStrategy::parse(name.unwrap_or("none")).ok_or_else(|| {
        ConfigError::rule(
            rule,
            format!("{field}.config.scope_strategy"),
            format!(
                "{:?} is not one of exact, hierarchic, wildcard, none",
                name.unwrap_or("")
            ),
        )
    })
}

fn duration(
    rule: &str,
    field: &str,
    value: Option<&str>,
    default: u64,
) -> Result<u64, ConfigError> {
    value.map_or(Ok(default), |v| {
        parse_millis(v).map_err(|e| ConfigError::rule(rule, field, e))
    })
}

impl Authenticator {
    pub(crate) fn compile(
        globals: &Globals<'_>,
        rule: &str,
        field: &str,
        handler: &Handler,
        jwks: &mut Vec<JwksSource>,
    ) -> Result<Self, ConfigError> {
        let config = globals.handler_config(HandlerKind::Authenticator, rule, field, handler)?;
        match handler.handler.as_str() {
            "noop" => {
                parse_handler_config::<EmptyConfig>(rule, field, config)?;
                Ok(Self::Noop)
            }
            "unauthorized" => {
                parse_handler_config::<EmptyConfig>(rule, field, config)?;
                Ok(Self::Unauthorized)
            }
            "anonymous" => {
                let c: AnonymousConfig = parse_handler_config(rule, field, config)?;
                Ok(Self::Anonymous {
                    subject: c.subject.unwrap_or_else(|| "anonymous".to_string()),
                })
            }
            "jwt" => {
                compile_jwt(globals, rule, field, config, jwks).map(|j| Self::Jwt(Box::new(j)))
            }
            "oauth2_introspection" => compile_introspection(globals, rule, field, config)
                .map(|i| Self::Introspection(Box::new(i))),
            "oauth2_client_credentials" => {
                ClientCredentialsAuthenticator::compile(globals, rule, field, config)
                    .map(|c| Self::ClientCredentials(Box::new(c)))
            }
            name @ ("cookie_session" | "bearer_token") => {
                SessionCheckAuthenticator::compile(globals, rule, field, name, config)
                    .map(|a| Self::SessionCheck(Box::new(a)))
            }
            other => Err(ConfigError::rule(
                rule,
                format!("{field}.handler"),
                format!(
                    "unknown or unsupported authenticator {other:?} (supported: noop, anonymous, unauthorized, jwt, oauth2_introspection, oauth2_client_credentials, cookie_session, bearer_token)"
                ),
            )),
        }
    }
}

fn compile_jwt(
    globals: &Globals<'_>,
    rule: &str,
    field: &str,
    config: Value,
    jwks: &mut Vec<JwksSource>,
) -> Result<JwtAuthenticator, ConfigError> {
    let c: JwtConfig = parse_handler_config(rule, field, config)?;
    if c.jwks_urls.is_empty() {
        return Err(ConfigError::rule(
            rule,
            format!("{field}.config.jwks_urls"),
            "at least one JWKS URL is required",
        ));
    }
    let mut algorithms = Vec::new();
    let names = if c.allowed_algorithms.is_empty() {
        vec!["RS256".to_string()]
    } else {
        c.allowed_algorithms
    };
    for (i, name) in names.iter().enumerate() {
        let f = format!("{field}.config.allowed_algorithms[{i}]");
        let alg = jsonwebtoken::Algorithm::from_str(name)
            .map_err(|_| ConfigError::rule(rule, &f, format!("unknown algorithm {name:?}")))?;
        if matches!(
            alg,
            jsonwebtoken::Algorithm::HS256
                | jsonwebtoken::Algorithm::HS384
                | jsonwebtoken::Algorithm::HS512
        ) {
            return Err(ConfigError::rule(
                rule,
                &f,
                format!(
                    "{name} is symmetric: JWKS-verified tokens must use an asymmetric algorithm"
                ),
            ));
        }
        algorithms.push(alg);
    }
    let ttl_ms = duration(
        rule,
        &format!("{field}.config.jwks_ttl"),
        c.jwks_ttl.as_deref(),
        DEFAULT_JWKS_TTL_MS,
    )?;
    let max_wait_ms = duration(
        rule,
        &format!("{field}.config.jwks_max_wait"),
        c.jwks_max_wait.as_deref(),
        DEFAULT_JWKS_MAX_WAIT_MS,
    )?;
    for (i, url) in c.jwks_urls.iter().enumerate() {
        let endpoint = resolve_endpoint(
            rule,
            &format!("{field}.config.jwks_urls[{i}]"),
            url,
            globals.clusters,
        )?;
        match jwks.iter_mut().find(|s| s.endpoint.url == *url) {
            Some(s) => {
                s.ttl_ms = s.ttl_ms.min(ttl_ms);
                s.max_wait_ms = s.max_wait_ms.min(max_wait_ms);
            }
            None => jwks.push(JwksSource {
                endpoint,
                ttl_ms,
                max_wait_ms,
                // Set for the whole configuration by `Engine::compile`.
                max_stale_ms: crate::config::DEFAULT_JWKS_MAX_STALE_MS,
            }),
        }
    }
    let strategy = scope_strategy(rule, field, c.scope_strategy.as_deref())?;
    let token_from = TokenFrom::compile(rule, field, c.token_from)?;
    let cache_scope = KeyScope::new().list(&c.jwks_urls);
    Ok(JwtAuthenticator {
        requirements: JwtRequirements {
            jwks_urls: c.jwks_urls,
            trusted_issuers: c.trusted_issuers,
            target_audience: c.target_audience,
            required_scope: c.required_scope,
            scope_strategy: strategy,
            allowed_algorithms: algorithms,
            leeway: 0,
        },
        token_from,
        max_wait_ms,
        cache_scope,
    })
}

fn compile_introspection(
    globals: &Globals<'_>,
    rule: &str,
    field: &str,
    config: Value,
) -> Result<IntrospectionAuthenticator, ConfigError> {
    let c: IntrospectionConfig = parse_handler_config(rule, field, config)?;
    if c.introspection_url.is_empty() {
        return Err(ConfigError::rule(
            rule,
            format!("{field}.config.introspection_url"),
            "is required",
        ));
    }
    if c.pre_authorization.as_ref().is_some_and(|p| p.enabled) {
        return Err(ConfigError::rule(
            rule,
            format!("{field}.config.pre_authorization"),
            "is not supported by the filter yet: the introspection endpoint must accept the filter's calls without a token",
        ));
    }
    let endpoint = resolve_endpoint(
        rule,
        &format!("{field}.config.introspection_url"),
        &c.introspection_url,
        globals.clusters,
    )?;
    let timeout_ms = RetryConfig::timeout_ms(
        c.retry.as_ref(),
        rule,
        field,
        DEFAULT_INTROSPECTION_TIMEOUT_MS,
    )?;
    let cache = match &c.cache {
        None => IntrospectionCache::Ttl(DEFAULT_INTROSPECTION_CACHE_MS),
        Some(cc) if !cc.enabled => IntrospectionCache::Disabled,
        Some(cc) => IntrospectionCache::Ttl(duration(
            rule,
            &format!("{field}.config.cache.ttl"),
            cc.ttl.as_deref(),
            u64::MAX,
        )?),
    };
    let _ = c.cache.as_ref().and_then(|cc| cc.max_cost);
    let strategy = scope_strategy(rule, field, c.scope_strategy.as_deref())?;
    let token_from = TokenFrom::compile(rule, field, c.token_from)?;
    let requirements = IntrospectionRequirements {
        required_scope: c.required_scope,
        scope_strategy: strategy,
        target_audience: c.target_audience,
        trusted_issuers: c.trusted_issuers,
    };
    let mut request_headers: Vec<(String, String)> = c
        .introspection_request_headers
        .into_iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    request_headers.push((
        "content-type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    ));
    let cache_scope = KeyScope::new()
        .field(&c.introspection_url)
        .field(&endpoint.cluster)
        .field(format!("{strategy:?}"))
        .list(&requirements.required_scope)
        .list(&requirements.target_audience)
        .list(&requirements.trusted_issuers)
        .field(token_from.key_part())
        .field(&c.prefix)
        .field([u8::from(c.preserve_host)])
        .list(request_headers.iter().flat_map(|(k, v)| [k, v]))
        .field(match cache {
            IntrospectionCache::Disabled => "off".to_string(),
            IntrospectionCache::Ttl(ms) => ms.to_string(),
        });
    Ok(IntrospectionAuthenticator {
        endpoint,
        requirements,
        token_from,
        prefix: c.prefix,
        preserve_host: c.preserve_host,
        request_headers,
        cache,
        timeout_ms,
        cache_scope,
    })
}

/// A verified token in the per-VM cache. The signature was checked against keys whose
/// [`Host::keys_version`] was `keys`; a key rotation changes it and the entry stops counting.
#[derive(Debug, Clone)]
pub struct CachedJwt {
    pub keys: u64,
    pub times: jwt::TimeClaims,
    /// Rules sharing key sets may allow different algorithms: re-checked on every hit.
    pub alg: jsonwebtoken::Algorithm,
    pub subject: Arc<str>,
    pub claims: Arc<Map<String, Value>>,
}

/// An introspection answer that passed this authenticator's checks.
#[derive(Debug, Clone)]
pub struct CachedIntrospection {
    pub subject: Arc<str>,
    pub extra: Arc<Map<String, Value>>,
}

/// Per-VM caches that outlive requests; owned by the host adapter.
#[derive(Debug)]
pub struct Caches {
    pub jwt: ExpiringCache<CachedJwt>,
    pub introspection: ExpiringCache<CachedIntrospection>,
    pub id_token: ExpiringCache<crate::mutator::CachedIdToken>,
    /// Session-store answers, when a `cookie_session`/`bearer_token` rule opts in.
    pub session_check: ExpiringCache<CachedSession>,
    /// Hydrator answers, when a `hydrator` mutator enables its cache.
    pub hydrator: ExpiringCache<crate::mutator::HydratedSession>,
    pub(crate) keyer: Keyer,
    pub(crate) stats: CacheStats,
    /// Makes every `id_token` `jti` of this VM distinct.
    pub(crate) jti_counter: u64,
}

/// Running totals, for the host's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub jwt_hits: u64,
    pub jwt_misses: u64,
    pub introspection_hits: u64,
    pub introspection_misses: u64,
    pub id_token_hits: u64,
    pub id_token_misses: u64,
    pub client_credentials_hits: u64,
    pub client_credentials_misses: u64,
}

impl Caches {
    pub fn new(capacity: usize) -> Self {
        Self {
            jwt: ExpiringCache::new(capacity),
            introspection: ExpiringCache::new(capacity),
            id_token: ExpiringCache::new(capacity),
            session_check: ExpiringCache::new(capacity),
            hydrator: ExpiringCache::new(capacity),
            keyer: Keyer::default(),
            stats: CacheStats::default(),
            jti_counter: 0,
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[derive(Debug)]
pub(crate) enum AuthnStep {
    Success {
        subject: Arc<str>,
        extra: Arc<Map<String, Value>>,
    },
    NotResponsible,
    Fail(PolicyError),
    WaitForKeys,
    Callout(Callout),
}

fn unauthorized(reason: &'static str, message: impl Into<String>) -> PolicyError {
    PolicyError::new(ErrorKind::Unauthorized, reason, message)
}

fn jwt_failure(e: &JwtError) -> AuthnStep {
    let (kind, reason) = match e {
        JwtError::ScopeStrategyNone => (ErrorKind::InternalServerError, "jwt_scope_strategy_none"),
        JwtError::Expired(_) => (ErrorKind::Unauthorized, "jwt_expired"),
        JwtError::NotYetValid(_) | JwtError::IssuedInFuture(_) => {
            (ErrorKind::Unauthorized, "jwt_not_yet_valid")
        }
        JwtError::UnknownKid(_) => (ErrorKind::Unauthorized, "jwt_unknown_kid"),
        JwtError::BadSignature => (ErrorKind::Unauthorized, "jwt_bad_signature"),
        JwtError::AlgorithmNotAllowed(_) => (ErrorKind::Unauthorized, "jwt_algorithm"),
        JwtError::UntrustedIssuer(_) => (ErrorKind::Unauthorized, "jwt_issuer"),
        JwtError::AudienceMismatch(_) => (ErrorKind::Unauthorized, "jwt_audience"),
        JwtError::MissingScope(_) => (ErrorKind::Unauthorized, "jwt_scope"),
        _ => (ErrorKind::Unauthorized, "jwt_invalid"),
    };
    AuthnStep::Fail(PolicyError::new(kind, reason, e.to_string()))
}

impl JwtAuthenticator {
    pub(crate) fn authenticate(
        &self,
        req: &Request,
        host: &mut dyn Host,
        caches: &mut Caches,
        keys_timed_out: bool,
    ) -> AuthnStep {
        let Some(token) = self.token_from.extract(req) else {
            return AuthnStep::NotResponsible;
        };
        let keys_version = host.keys_version(&self.requirements.jwks_urls);
        // Keyed on the whole token: a token that differs in any byte is verified afresh.
        let key = caches
            .keyer
            .key(&[self.cache_scope.as_bytes(), token.as_bytes()]);
        if let Some((hit, expires_at)) = caches
            .jwt
            .peek(&key)
            .filter(|(h, _)| h.keys == keys_version)
        {
            let hit = hit.clone();
            // A clock read costs a host call on every request; the host's bounds decide
            // unless the token is within them of expiring or becoming valid.
            let bounds = host.time_bounds();
            let now = if expires_at > bounds.latest && hit.times.settled(&self.requirements, bounds)
            {
                bounds.earliest
            } else {
                host.now()
            };
            if now < expires_at {
                caches.stats.jwt_hits += 1;
                if !self.requirements.allows(hit.alg) {
                    return jwt_failure(&JwtError::AlgorithmNotAllowed(
                        jwks::alg_name(hit.alg).to_string(),
                    ));
                }
                let checked = hit
                    .times
                    .check(&self.requirements, now)
                    .and_then(|()| jwt::check_other_claims(&hit.claims, &self.requirements));
                return match checked {
                    Ok(()) => AuthnStep::Success {
                        subject: hit.subject,
                        extra: hit.claims,
                    },
                    Err(e) => jwt_failure(&e),
                };
            }
            caches.jwt.remove(&key);
        }
        let now = host.now();
        // Only tokens that looked like JWTs were ever cached, so the shape check (a scan of the
        // whole token) can wait until the cache missed.
        if !jwt::looks_like_jwt(&token) {
            return AuthnStep::NotResponsible;
        }
        caches.stats.jwt_misses += 1;
        let mut sets = Vec::with_capacity(self.requirements.jwks_urls.len());
        let mut pending = false;
        for url in &self.requirements.jwks_urls {
            match host.keys(url) {
                KeyLookup::Ready(s) => sets.push(s),
                KeyLookup::Pending => pending = true,
                KeyLookup::Unavailable => {}
            }
        }
        let parsed = match jwt::parse(&token) {
            Ok(p) => p,
            Err(e) => return jwt_failure(&e),
        };
        match jwt::verify_signature(&parsed, &sets, &self.requirements, host) {
            Ok(()) => {}
            Err(JwtError::UnknownKid(_)) if pending && !keys_timed_out => {
                return AuthnStep::WaitForKeys;
            }
            Err(e @ JwtError::UnknownKid(_)) => {
                if sets.is_empty() {
                    return AuthnStep::Fail(unauthorized(
                        "jwks_unavailable",
                        "no signing keys could be fetched from the configured JWKS URLs",
                    ));
                }
                // Keys may have been rotated since the last fetch: wait for one re-fetch
                // (rate limited by the host) before giving up on this kid.
                if host.unknown_kid(&self.requirements.jwks_urls) && !keys_timed_out {
                    return AuthnStep::WaitForKeys;
                }
                return jwt_failure(&e);
            }
            Err(e) => return jwt_failure(&e),
        }
        // verify_signature accepted the algorithm, so it parses.
        let Ok(alg) = jsonwebtoken::Algorithm::from_str(&parsed.alg) else {
            return jwt_failure(&JwtError::AlgorithmNotAllowed(parsed.alg));
        };
        let times = match jwt::TimeClaims::of(&parsed.claims) {
            Ok(t) => t,
            Err(e) => return jwt_failure(&e),
        };
        let subject: Arc<str> = Arc::from(
            parsed
                .claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        let claims = Arc::new(parsed.claims);
        let expires_at = times
            .exp
            .unwrap_or(now.saturating_add(JWT_CACHE_NO_EXP_MS / 1000));
        caches.jwt.insert(
            key,
            CachedJwt {
                keys: keys_version,
                times,
                alg,
                subject: subject.clone(),
                claims: claims.clone(),
            },
            expires_at,
            now,
        );
        match jwt::check_claims(&claims, &self.requirements, now) {
            Ok(()) => AuthnStep::Success {
                subject,
                extra: claims,
            },
            Err(e) => jwt_failure(&e),
        }
    }
}

impl IntrospectionAuthenticator {
    fn token<'a>(&self, req: &'a Request) -> Option<Cow<'a, str>> {
        self.token_from
            .extract(req)
            .filter(|t| t.starts_with(self.prefix.as_str()))
    }

    /// The answer's cache key: the config's scope, the host `preserve_host` sends (the answer
    /// may depend on it) and the token.
    fn cache_key(&self, caches: &Caches, req: &Request, token: &str) -> crate::cache::CacheKey {
        let host = if self.preserve_host {
            req.authority().as_bytes()
        } else {
            b""
        };
        caches
            .keyer
            .key(&[self.cache_scope.as_bytes(), host, token.as_bytes()])
    }

    /// First pass: a cached answer, or the call to make.
    pub(crate) fn authenticate(
        &self,
        req: &Request,
        host: &mut dyn Host,
        caches: &mut Caches,
    ) -> AuthnStep {
        let Some(token) = self.token(req) else {
            return AuthnStep::NotResponsible;
        };
        let now = host.now();
        if self.cache != IntrospectionCache::Disabled {
            let key = self.cache_key(caches, req, &token);
            if let Some(hit) = caches.introspection.get(&key, now) {
                let step = AuthnStep::Success {
                    subject: hit.subject.clone(),
                    extra: hit.extra.clone(),
                };
                caches.stats.introspection_hits += 1;
                return step;
            }
            caches.stats.introspection_misses += 1;
        }
        let mut headers = self.request_headers.clone();
        if self.preserve_host {
            headers.push(("x-forwarded-host".to_string(), req.authority().to_string()));
        }
        AuthnStep::Callout(Callout {
            endpoint: self.endpoint.clone(),
            method: "POST",
            headers,
            body: introspection::request_body(&token, &self.requirements).into_bytes(),
            timeout_ms: self.timeout_ms,
        })
    }

    /// Second pass: the introspection endpoint answered (or did not: `None`).
    pub(crate) fn digest(
        &self,
        req: &Request,
        host: &mut dyn Host,
        caches: &mut Caches,
        response: Option<&CalloutResponse>,
    ) -> AuthnStep {
        let Some(response) = response else {
            return AuthnStep::Fail(PolicyError::new(
                ErrorKind::InternalServerError,
                "introspection_unreachable",
                format!(
                    "introspection endpoint {} did not answer",
                    self.endpoint.url
                ),
            ));
        };
        if response.status != 200 {
            return AuthnStep::Fail(PolicyError::new(
                ErrorKind::InternalServerError,
                "introspection_status",
                format!(
                    "introspection returned status code {} but expected 200",
                    response.status
                ),
            ));
        }
        let now = host.now();
        match introspection::evaluate(&response.body, &self.requirements, now) {
            Ok(result) => {
                let subject: Arc<str> = Arc::from(result.subject.as_str());
                let extra = Arc::new(result.extra);
                if let (IntrospectionCache::Ttl(ttl_ms), Some(token)) =
                    (self.cache, self.token(req))
                {
                    let ttl_s = ttl_ms / 1000;
                    let mut expires_at = now.saturating_add(ttl_s.max(1));
                    if let Some(exp) = result.exp {
                        expires_at = expires_at.min(exp);
                    }
                    if expires_at > now {
                        let key = self.cache_key(caches, req, &token);
                        caches.introspection.insert(
                            key,
                            CachedIntrospection {
                                subject: subject.clone(),
                                extra: extra.clone(),
                            },
                            expires_at,
                            now,
                        );
                    }
                }
                AuthnStep::Success { subject, extra }
            }
            Err(e) => {
                let (kind, reason) = match e {
                    IntrospectionError::Inactive => (ErrorKind::Unauthorized, "token_inactive"),
                    IntrospectionError::Expired(_) => (ErrorKind::Unauthorized, "token_expired"),
                    IntrospectionError::Malformed(_) => {
                        (ErrorKind::InternalServerError, "introspection_malformed")
                    }
                    IntrospectionError::WrongTokenUse(_) => (ErrorKind::Forbidden, "token_use"),
                    IntrospectionError::AudienceMismatch(_) => {
                        (ErrorKind::Forbidden, "token_audience")
                    }
                    IntrospectionError::UntrustedIssuer(_) => {
                        (ErrorKind::Forbidden, "token_issuer")
                    }
                    IntrospectionError::MissingScope(_) => (ErrorKind::Forbidden, "token_scope"),
                };
                AuthnStep::Fail(PolicyError::new(kind, reason, e.to_string()))
            }
        }
    }
}
