//! The filter configuration: one JSON object with the sections of Oathkeeper's configuration file
//! (`access_rules`, `authenticators`, `authorizers`, `mutators`, `errors`) plus the `rules` and the
//! `clusters` map, compiled once into an [`Engine`]. Everything that can fail fails here, at load
//! time, with an error naming the rule and field; the per-request path never parses config.

use crate::authn::Authenticator;
use crate::authz::Authorizer;
use crate::callout::{Endpoint, EndpointError};
use crate::duration::parse_millis;
use crate::error_handler::{ErrorHandlers, RuleErrorHandlers};
use crate::matcher::{IndexEntry, MatchingStrategy, RuleIndex, UrlPattern};
use crate::mutator::Mutator;
use crate::rule::{AccessRule, Handler};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use thiserror::Error;

/// The raw configuration document, as users write it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FilterConfig {
    #[serde(default)]
    pub access_rules: AccessRulesSection,
    #[serde(default)]
    pub authenticators: BTreeMap<String, HandlerSection>,
    #[serde(default)]
    pub authorizers: BTreeMap<String, HandlerSection>,
    #[serde(default)]
    pub mutators: BTreeMap<String, HandlerSection>,
    #[serde(default)]
    pub errors: Option<Value>,
    #[serde(default)]
    pub rules: Vec<AccessRule>,
    /// Origin (`scheme://host:port`) -> Envoy cluster for every URL the filter calls.
    #[serde(default)]
    pub clusters: BTreeMap<String, String>,
    /// Take scheme and host from `X-Forwarded-Proto`/`X-Forwarded-Host` (off by default, as in
    /// Oathkeeper: a client must not be able to choose which rule matches).
    #[serde(default)]
    pub trust_forwarded_headers: bool,
    /// The filter lets every request through untouched: what a workload gets when its last
    /// rule is deleted but the filter cannot be removed (a plain Envoy's ECDS keeps a filter;
    /// in Istio the WasmPlugin is deleted instead). Only valid with no rules, so a rule can
    /// never be switched off by accident.
    #[serde(default)]
    pub disabled: bool,
    /// How long JWKS keys keep serving past their TTL while refreshes fail (a Go duration;
    /// default [`DEFAULT_JWKS_MAX_STALE_MS`]). After it their tokens are refused.
    #[serde(default)]
    pub jwks_max_stale: Option<String>,
}

/// Default of `jwks_max_stale`: rides out a token-service restart or a short outage, yet a key
/// the issuer removed stops being trusted within minutes even if its JWKS cannot be fetched.
pub const DEFAULT_JWKS_MAX_STALE_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AccessRulesSection {
    #[serde(default)]
    pub matching_strategy: MatchingStrategy,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HandlerSection {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub config: Option<Value>,
}

/// One problem in a configuration. Rule errors carry the rule id so the control plane can put
/// them on that rule's status and the filter can log which rule to fix.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration is not valid JSON: {0}")]
    Json(String),
    #[error("{field}: {message}")]
    Global { field: String, message: String },
    #[error("rule {rule:?}: {field}: {message}")]
    Rule {
        rule: String,
        field: String,
        message: String,
    },
}

impl ConfigError {
    pub fn rule(rule: &str, field: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::Rule {
            rule: rule.to_string(),
            field: field.into(),
            message: message.to_string(),
        }
    }

    pub fn global(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::Global {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// The rule this error is about, if any.
    pub fn rule_id(&self) -> Option<&str> {
        match self {
            Self::Rule { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

/// Every problem found in one configuration (the compiler does not stop at the first).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A JWKS URL the host must keep fresh, with the tightest settings any rule asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    pub endpoint: Endpoint,
    pub ttl_ms: u64,
    pub max_wait_ms: u64,
    /// Keys serve at most this long past `ttl_ms` while refreshes fail (`jwks_max_stale`).
    pub max_stale_ms: u64,
}

/// One compiled access rule.
#[derive(Debug)]
pub struct CompiledRule {
    pub id: String,
    pub authenticators: Vec<Authenticator>,
    pub authorizer: Authorizer,
    pub mutators: Vec<Mutator>,
    pub errors: RuleErrorHandlers,
    /// Lower-case names of headers this rule's mutators and authorizer set. The union over all
    /// rules is stripped from every allowed request (see [`Engine::is_managed`]).
    pub managed_headers: Vec<String>,
    /// Templates of this rule read request headers: keep a copy of them in the session.
    pub needs_request_headers: bool,
}

/// A compiled configuration: immutable, shared by every request until the next config.
#[derive(Debug)]
pub struct Engine {
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) index: RuleIndex,
    pub(crate) errors: ErrorHandlers,
    pub(crate) trust_forwarded_headers: bool,
    pub(crate) jwks: Vec<JwksSource>,
    pub(crate) disabled: bool,
    needs_remote_ip: bool,
    /// Every rule's managed headers, sorted: stripped from every allowed request whatever rule
    /// matched, so a forged `X-User` cannot reach the workload through a rule that does not
    /// set it (Oathkeeper strips only the matched rule's).
    managed_headers: Vec<String>,
}

/// Global handler settings a rule's handler is checked and merged against.
pub(crate) struct Globals<'a> {
    pub clusters: &'a BTreeMap<String, String>,
    pub authenticators: &'a BTreeMap<String, HandlerSection>,
    pub authorizers: &'a BTreeMap<String, HandlerSection>,
    pub mutators: &'a BTreeMap<String, HandlerSection>,
}

impl Globals<'_> {
    /// The effective config of a rule's handler: checks it is enabled, then merges the rule's
    /// config over the global one (objects key by key, recursively; the rule wins).
    pub(crate) fn handler_config(
        &self,
        kind: HandlerKind,
        rule: &str,
        field: &str,
        handler: &Handler,
    ) -> Result<Value, ConfigError> {
        let sections = match kind {
            HandlerKind::Authenticator => self.authenticators,
            HandlerKind::Authorizer => self.authorizers,
            HandlerKind::Mutator => self.mutators,
        };
        let name = handler.handler.as_str();
        let section = sections.get(name).filter(|s| s.enabled).ok_or_else(|| {
            ConfigError::rule(
                rule,
                format!("{field}.handler"),
                format!(
                    "{} {name:?} is not enabled in the global configuration ({}.{name}.enabled)",
                    kind.noun(),
                    kind.section()
                ),
            )
        })?;
        let mut merged = section
            .config
            .clone()
            .unwrap_or_else(|| Value::Object(Map::new()));
        if let Some(own) = &handler.config {
            merge_json(&mut merged, own);
        }
        if merged.is_null() {
            merged = Value::Object(Map::new());
        }
        Ok(merged)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum HandlerKind {
    Authenticator,
    Authorizer,
    Mutator,
}

impl HandlerKind {
    fn noun(self) -> &'static str {
        match self {
            Self::Authenticator => "authenticator",
            Self::Authorizer => "authorizer",
            Self::Mutator => "mutator",
        }
    }
    fn section(self) -> &'static str {
        match self {
            Self::Authenticator => "authenticators",
            Self::Authorizer => "authorizers",
            Self::Mutator => "mutators",
        }
    }
}

/// Deep merge: objects merge key by key, anything else in `top` replaces `base`.
pub fn merge_json(base: &mut Value, top: &Value) {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(k) {
                    Some(existing) => merge_json(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, t) => *b = t.clone(),
    }
}

/// The config of handlers that take none: any key is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmptyConfig {}

/// Oathkeeper's `retry` block of handlers that call out. The filter makes one attempt:
/// `give_up_after` bounds the whole call; `max_delay` is validated and otherwise unused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryConfig {
    #[serde(default)]
    max_delay: Option<String>,
    #[serde(default)]
    give_up_after: Option<String>,
}

impl RetryConfig {
    /// The callout timeout in milliseconds (`default` when `give_up_after` is absent).
    pub(crate) fn timeout_ms(
        retry: Option<&RetryConfig>,
        rule: &str,
        field: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        let parse = |key: &str, value: &str| {
            crate::duration::parse_millis(value)
                .map_err(|e| ConfigError::rule(rule, format!("{field}.config.retry.{key}"), e))
        };
        let Some(r) = retry else {
            return Ok(default);
        };
        if let Some(d) = &r.max_delay {
            parse("max_delay", d)?;
        }
        r.give_up_after
            .as_deref()
            .map_or(Ok(default), |d| parse("give_up_after", d))
    }
}

/// The `cache {enabled, ttl}` block of handlers whose answers may be kept for a while
/// (`hydrator`, and the session-check authenticators' opt-in cache).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TtlCacheConfig {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    ttl: Option<String>,
}

impl TtlCacheConfig {
    /// How long answers are kept: `None` when the cache is off (absent or not enabled).
    pub(crate) fn ttl_ms(
        cache: Option<&TtlCacheConfig>,
        rule: &str,
        field: &str,
        default_ms: u64,
    ) -> Result<Option<u64>, ConfigError> {
        match cache {
            Some(c) if c.enabled => c.ttl.as_deref().map_or(Ok(Some(default_ms)), |t| {
                crate::duration::parse_millis(t)
                    .map(Some)
                    .map_err(|e| ConfigError::rule(rule, format!("{field}.config.cache.ttl"), e))
            }),
            _ => Ok(None),
        }
    }
}

/// Deserialises a handler config, naming the rule and field on failure.
pub(crate) fn parse_handler_config<T: serde::de::DeserializeOwned>(
    rule: &str,
    field: &str,
    value: Value,
) -> Result<T, ConfigError> {
    serde_json::from_value(value).map_err(|e| ConfigError::rule(rule, format!("{field}.config"), e))
}

pub(crate) fn resolve_endpoint(
    rule: &str,
    field: &str,
    url: &str,
    clusters: &BTreeMap<String, String>,
) -> Result<Endpoint, ConfigError> {
    Endpoint::resolve(field, url, clusters)
        .map_err(|e: EndpointError| ConfigError::rule(rule, field, e))
}

impl Engine {
    /// Parses and compiles a configuration document.
    pub fn from_json(bytes: &[u8]) -> Result<Engine, ConfigErrors> {
        let raw: FilterConfig = serde_json::from_slice(bytes)
            .map_err(|e| ConfigErrors(vec![ConfigError::Json(e.to_string())]))?;
        Engine::compile(raw)
    }

    /// Compiles a configuration, reporting every rule that fails rather than the first.
    ///
    /// Takes the document by value and drops each rule's raw form once it is compiled: a worker
    /// VM's linear memory never shrinks, so the peak of compiling is what every VM keeps, and
    /// 1,000 raw rules (their handler configs as JSON values) held to the end doubled it.
    pub fn compile(mut raw: FilterConfig) -> Result<Engine, ConfigErrors> {
        let raw_rules = std::mem::take(&mut raw.rules);
        let needs_remote_ip = raw_rules_mention_remote_ip(&raw, &raw_rules);
        let raw = &raw;
        let mut errors = Vec::new();
        if raw.disabled && !raw_rules.is_empty() {
            errors.push(ConfigError::global(
                "disabled",
                "a disabled filter must not have rules (remove the rules or the flag)",
            ));
        }
        let error_handlers = match ErrorHandlers::compile(raw.errors.as_ref()) {
            Ok(h) => Some(h),
            Err(e) => {
                errors.push(ConfigError::global("errors", e));
                None
            }
        };
        let globals = Globals {
            clusters: &raw.clusters,
            authenticators: &raw.authenticators,
            authorizers: &raw.authorizers,
            mutators: &raw.mutators,
        };
        let max_stale_ms = match raw.jwks_max_stale.as_deref().map(parse_millis) {
            None => DEFAULT_JWKS_MAX_STALE_MS,
            Some(Ok(ms)) => ms,
            Some(Err(e)) => {
                errors.push(ConfigError::global("jwks_max_stale", e));
                0
            }
        };
        let strategy = raw.access_rules.matching_strategy;
        let mut rules = Vec::with_capacity(raw_rules.len());
        let mut entries = Vec::with_capacity(raw_rules.len());
        let mut jwks: Vec<JwksSource> = Vec::new();
        let mut seen_ids: BTreeMap<String, usize> = BTreeMap::new();
        for (i, rule) in raw_rules.into_iter().enumerate() {
            if let Some(first) = (!rule.id.is_empty())
                .then(|| seen_ids.insert(rule.id.clone(), i))
                .flatten()
            {
                errors.push(ConfigError::rule(
                    &rule.id,
                    "id",
                    format!("duplicate rule id (rules #{first} and #{i})"),
                ));
                continue;
            }
            let Some(handlers) = error_handlers.as_ref() else {
                continue;
            };
            match compile_rule(&globals, strategy, handlers, &rule, &mut jwks) {
                Ok((compiled, entry)) => {
                    rules.push(compiled);
                    entries.push(entry);
                }
                Err(e) => errors.extend(e),
            }
        }
        for source in &mut jwks {
            source.max_stale_ms = max_stale_ms;
        }
        let mut managed_headers: Vec<String> = rules
            .iter()
            .flat_map(|r| r.managed_headers.iter().cloned())
            .collect();
        managed_headers.sort();
        managed_headers.dedup();
        match error_handlers {
            Some(handlers) if errors.is_empty() => Ok(Engine {
                rules,
                index: RuleIndex::new(entries),
                errors: handlers,
                trust_forwarded_headers: raw.trust_forwarded_headers,
                jwks,
                disabled: raw.disabled,
                needs_remote_ip,
                managed_headers,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Validates one rule against global settings exactly as [`Engine::compile`] would, for the
    /// control plane to report per rule.
    pub fn validate_rule(raw: &FilterConfig, rule: &AccessRule) -> Result<(), ConfigErrors> {
        let handlers = ErrorHandlers::compile(raw.errors.as_ref())
            .map_err(|e| ConfigErrors(vec![ConfigError::global("errors", e)]))?;
        let globals = Globals {
            clusters: &raw.clusters,
            authenticators: &raw.authenticators,
            authorizers: &raw.authorizers,
            mutators: &raw.mutators,
        };
        let mut jwks = Vec::new();
        compile_rule(
            &globals,
            raw.access_rules.matching_strategy,
            &handlers,
            rule,
            &mut jwks,
        )
        .map(|_| ())
        .map_err(ConfigErrors)
    }

    /// JWKS URLs the host must fetch and keep fresh.
    pub fn jwks_sources(&self) -> &[JwksSource] {
        &self.jwks
    }

    /// Ids of the compiled rules, in configuration order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// True when an error handler may match on the client's address, so the host must supply
    /// [`crate::request::Request::remote_ip`] (reading it costs a host call per request).
    pub fn needs_remote_ip(&self) -> bool {
        self.needs_remote_ip
    }

    /// Whether an incoming header `name` must be stripped: it names a managed header, ignoring
    /// case and with `_` read as `-` (CGI, WSGI, Rack and PHP turn both `X-User` and `x_user`
    /// into `HTTP_X_USER`, so an underscore spelling is the same header to the workload).
    pub fn is_managed(&self, name: &str) -> bool {
        let same = |a: u8, b: u8| {
            let fold = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            fold(a) == fold(b)
        };
        self.managed_headers
            .iter()
            .any(|m| m.len() == name.len() && m.bytes().zip(name.bytes()).all(|(a, b)| same(a, b)))
    }

    /// True when this configuration lets every request through (see [`FilterConfig::disabled`]).
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }
}

/// Whether any error handler configuration, global or of a rule, has a `remote_ip` condition.
fn raw_rules_mention_remote_ip(raw: &FilterConfig, rules: &[AccessRule]) -> bool {
    fn has(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| k == "remote_ip" || has(v)),
            Value::Array(a) => a.iter().any(has),
            _ => false,
        }
    }
    raw.errors.as_ref().is_some_and(has)
        || rules
            .iter()
            .flat_map(|r| &r.errors)
            .any(|h| h.config.as_ref().is_some_and(has))
}

fn compile_rule(
    globals: &Globals<'_>,
    strategy: MatchingStrategy,
    error_handlers: &ErrorHandlers,
    rule: &AccessRule,
    jwks: &mut Vec<JwksSource>,
) -> Result<(CompiledRule, IndexEntry), Vec<ConfigError>> {
    let id = rule.id.as_str();
    if let Err(e) = rule.validate() {
        return Err(vec![ConfigError::rule(id, "rule", e)]);
    }
    let mut errors = Vec::new();
    let pattern = match UrlPattern::compile(&rule.r#match.url, strategy) {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(ConfigError::rule(id, "match.url", e));
            None
        }
    };
    let mut methods = Vec::with_capacity(rule.r#match.methods.len());
    for (i, m) in rule.r#match.methods.iter().enumerate() {
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
        {
            errors.push(ConfigError::rule(
                id,
                format!("match.methods[{i}]"),
                format!("{m:?} is not an HTTP method"),
            ));
        } else {
            methods.push(m.to_ascii_uppercase());
        }
    }

    let mut authenticators = Vec::with_capacity(rule.authenticators.len());
    for (i, h) in rule.authenticators.iter().enumerate() {
        match Authenticator::compile(globals, id, &format!("authenticators[{i}]"), h, jwks) {
            Ok(a) => authenticators.push(a),
            Err(e) => errors.push(e),
        }
    }
    let authorizer = match Authorizer::compile(globals, id, "authorizer", &rule.authorizer) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let mut mutators = Vec::with_capacity(rule.mutators.len());
    for (i, h) in rule.mutators.iter().enumerate() {
        match Mutator::compile(globals, id, &format!("mutators[{i}]"), h, jwks) {
            Ok(m) => mutators.push(m),
            Err(e) => errors.push(e),
        }
    }
    let rule_errors: Vec<(String, Option<Value>)> = rule
        .errors
        .iter()
        .map(|h| (h.handler.clone(), h.config.clone()))
        .collect();
    let errs = match error_handlers.compile_rule(id, &rule_errors) {
        Ok(e) => Some(e),
        Err(e) => {
            errors.push(ConfigError::rule(id, "errors", e));
            None
        }
    };

    match (pattern, authorizer, errs) {
        (Some(pattern), Some(authorizer), Some(errs)) if errors.is_empty() => {
            let mut managed_headers: Vec<String> = mutators
                .iter()
                .flat_map(|m| m.header_names())
                .map(|h| h.to_ascii_lowercase())
                .collect();
            managed_headers.extend(authorizer.forwarded_header_names());
            managed_headers.sort();
            managed_headers.dedup();
            let captures =
                authorizer.reads_captures() || mutators.iter().any(Mutator::reads_captures);
            let needs_request_headers = authorizer.reads_request_headers()
                || mutators.iter().any(Mutator::reads_request_headers);
            Ok((
                CompiledRule {
                    id: id.to_string(),
                    authenticators,
                    authorizer,
                    mutators,
                    errors: errs,
                    managed_headers,
                    needs_request_headers,
                },
                IndexEntry {
                    methods,
                    pattern,
                    captures,
                },
            ))
        }
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests;
