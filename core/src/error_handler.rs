//! Oathkeeper-compatible error handlers (`json`, `www_authenticate`, `redirect`) with `when`
//! conditions and the global fallback list: turns a [`PolicyError`] into the local reply
//! ([`Response`]) the proxy sends instead of forwarding the request.
//!
//! Config is compiled once ([`ErrorHandlers::compile`], [`ErrorHandlers::compile_rule`]); the
//! per-request path only evaluates the compiled conditions and formats the body.
//!
//! Behaviour, and where it deliberately differs from Oathkeeper:
//! - Handler names: `json` (enabled by default, as in Oathkeeper's config schema), `redirect` and
//!   `www_authenticate` (disabled by default). A handler named in `fallback` or in a rule must be
//!   enabled; Oathkeeper only finds out at request time, we refuse the config.
//! - Selection: the rule's handlers in order, the first whose `when` matches answers; else the
//!   global `fallback` handlers in order (first whose `when`, from the global config, matches);
//!   else the first fallback handler regardless of its `when`; with an empty fallback list, a
//!   non-verbose JSON error. Oathkeeper (`proxy/request_handler.go` `HandleError`) differs in two
//!   corner cases, on purpose: when several rule handlers match it answers 500 ("more than one
//!   error handler responsible"), and when nothing matches it answers 500 ("no matching error
//!   handling strategy"). We keep the original status so a misconfigured `when` cannot turn a
//!   401/403 into a 500.
//! - `www_authenticate` quotes the realm (`Basic realm="..."`, RFC 7235); Oathkeeper does not.
//! - `redirect` appends `return_to_query_param` to `to` instead of re-encoding (and re-sorting)
//!   the whole query string as Go's `url.Values.Encode` does; the value is encoded the same way
//!   (`url.QueryEscape`: space as `+`, everything but `A-Za-z0-9-_.~` as `%XX`).
//! - `json` non-verbose hides the internal message and answers with the generic text Oathkeeper
//!   (herodot) uses per status; `verbose` shows our message and adds `reason`.
//! - `when.request.header.accept` / `content_type` work as Oathkeeper's `matchesAcceptMIME`: a
//!   media type of the request header (parameters and q values ignored, as Oathkeeper does; a
//!   missing header counts as `application/octet-stream`) equals a listed one, or a listed `*/*`
//!   or `type/*` covers it. A wildcard in the request only matches the identical wildcard listed,
//!   so `Accept: */*` does not select a handler listing `text/html`.
//! - `when.error` names are Go's status text in snake case (`unauthorized`, `not_found`, ...);
//!   an empty list matches every error. Unknown names are a config error (Oathkeeper ignores them).
//! - `redirect.code` other than 301/302 is a config error (Oathkeeper silently uses 302).
//! - `when.request.remote_ip.match` checks the peer address, and with
//!   `respect_forwarded_for_header: true` also every address in `X-Forwarded-For`.

mod cidr;
mod when;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::request::Request;

pub use cidr::Cidr;
pub use when::Condition;

/// What went wrong, as far as the answer to the client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Unauthorized,
    Forbidden,
    InternalServerError,
    NotFound,
    BadRequest,
    ServiceUnavailable,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::InternalServerError,
        ErrorKind::NotFound,
        ErrorKind::BadRequest,
        ErrorKind::ServiceUnavailable,
    ];

    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::InternalServerError => 500,
            ErrorKind::NotFound => 404,
            ErrorKind::BadRequest => 400,
            ErrorKind::ServiceUnavailable => 503,
        }
    }

    /// The name used in `when.error`.
    pub fn as_when_name(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::InternalServerError => "internal_server_error",
            ErrorKind::NotFound => "not_found",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::ServiceUnavailable => "service_unavailable",
        }
    }

    pub fn from_when_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_when_name() == name)
    }

    /// HTTP reason phrase (Go's `http.StatusText`).
    pub fn status_text(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::InternalServerError => "Internal Server Error",
            ErrorKind::NotFound => "Not Found",
            ErrorKind::BadRequest => "Bad Request",
            ErrorKind::ServiceUnavailable => "Service Unavailable",
        }
    }

    /// The generic message Oathkeeper's non-verbose `json` handler sends (herodot's defaults).
    fn generic_message(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "The request could not be authorized",
            ErrorKind::Forbidden => "The requested action was forbidden",
            ErrorKind::InternalServerError => {
                "An internal server error occurred, please contact the system administrator"
            }
            ErrorKind::NotFound => "The requested resource could not be found",
            ErrorKind::BadRequest => "The request was malformed or contained invalid parameters",
            ErrorKind::ServiceUnavailable => "The service is temporarily unavailable",
        }
    }
}

/// A deny decision with its detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub kind: ErrorKind,
    /// Human detail for logs and the verbose `json` handler; never sent otherwise.
    pub message: String,
    /// Short stable reason for metrics and logs, e.g. `jwt_expired`.
    pub reason: &'static str,
}

impl PolicyError {
    pub fn new(kind: ErrorKind, reason: &'static str, message: impl Into<String>) -> Self {
        PolicyError {
            kind,
            message: message.into(),
            reason,
        }
    }
}

/// A local reply for the proxy to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A rejected `errors` configuration; `scope` names where it was found (the global section or a
/// rule by id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorConfigError {
    #[error(
        "{scope}: unknown error handler \"{handler}\" (expected json, redirect or www_authenticate)"
    )]
    UnknownHandler { scope: String, handler: String },
    #[error(
        "{scope}: error handler \"{handler}\" is not enabled (set errors.handlers.{handler}.enabled: true)"
    )]
    NotEnabled { scope: String, handler: String },
    #[error("{scope}: error handler \"{handler}\": field `{field}`: {problem}")]
    InvalidField {
        scope: String,
        handler: String,
        field: String,
        problem: String,
    },
    #[error("global errors config: field `{field}`: {problem}")]
    InvalidGlobal { field: String, problem: String },
}

const HANDLER_NAMES: [&str; 3] = ["json", "redirect", "www_authenticate"];

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Json {
        verbose: bool,
    },
    WwwAuthenticate {
        realm: String,
    },
    Redirect {
        to: String,
        code: u16,
        return_to_query_param: Option<String>,
    },
}

/// One compiled handler: what it answers and when it is responsible.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledHandler {
    name: &'static str,
    when: Vec<Condition>,
    action: Action,
}

impl CompiledHandler {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// An empty `when` always matches; otherwise any condition (OR) must hold.
    pub fn matches(&self, error: &PolicyError, req: &Request) -> bool {
        self.when.is_empty() || self.when.iter().any(|c| c.matches(error, req))
    }

    pub fn respond(&self, error: &PolicyError, req: &Request, request_url: &str) -> Response {
        match &self.action {
            Action::Json { verbose } => json_response(error, *verbose),
            Action::WwwAuthenticate { realm } => Response {
                status: 401,
                headers: vec![
                    (
                        "www-authenticate".to_owned(),
                        format!("Basic realm=\"{}\"", quote_escape(realm)),
                    ),
                    // As Go's `http.Error`, which Oathkeeper answers with.
                    (
                        "content-type".to_owned(),
                        "text/plain; charset=utf-8".to_owned(),
                    ),
                    ("x-content-type-options".to_owned(), "nosniff".to_owned()),
                ],
                body: "Unauthorized\n".to_owned(),
            },
            Action::Redirect {
                to,
                code,
                return_to_query_param,
            } => {
                let location = match return_to_query_param {
                    Some(param) => append_query(to, param, request_url),
                    None => to.clone(),
                };
                redirect_response(*code, location, req.method())
            }
        }
    }
}

/// The `json` handler's verbose answer, for refusals that come before any rule (the reason and
/// message tell the client what was wrong with its request).
pub fn json_error(error: &PolicyError) -> Response {
    json_response(error, true)
}

fn json_response(error: &PolicyError, verbose: bool) -> Response {
    // Written by hand so the keys keep Oathkeeper's order (code, status, reason, message).
    let quote = |s: &str| Value::from(s).to_string();
    let kind = error.kind;
    let detail = if verbose {
        format!(
            "\"reason\":{},\"message\":{}",
            quote(error.reason),
            quote(&error.message)
        )
    } else {
        format!("\"message\":{}", quote(kind.generic_message()))
    };
    Response {
        status: kind.status(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: format!(
            "{{\"error\":{{\"code\":{},\"status\":{},{detail}}}}}",
            kind.status(),
            quote(kind.status_text())
        ),
    }
}

/// As Go's `http.Redirect`: an HTML link body for GET, content type for GET and HEAD.
fn redirect_response(code: u16, location: String, method: &str) -> Response {
    let text = if code == 301 {
        "Moved Permanently"
    } else {
        "Found"
    };
    let mut headers = Vec::with_capacity(2);
    let mut body = String::new();
    if method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD") {
        headers.push((
            "content-type".to_owned(),
            "text/html; charset=utf-8".to_owned(),
        ));
    }
    if method.eq_ignore_ascii_case("GET") {
        body = format!("<a href=\"{}\">{text}</a>.\n\n", html_escape(&location));
    }
    headers.insert(0, ("location".to_owned(), location));
    Response {
        status: code,
        headers,
        body,
    }
}

fn quote_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Adds `param=value` to `to`'s query, before any fragment.
fn append_query(to: &str, param: &str, value: &str) -> String {
    let (base, fragment) = match to.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (to, None),
    };
    let sep = match base.split_once('?') {
        Some((_, q)) if q.is_empty() || q.ends_with('&') => "",
        Some(_) => "&",
        None => "?",
    };
    let mut out = format!(
        "{base}{sep}{}={}",
        crate::form::escape(param),
        crate::form::escape(value)
    );
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Deep merge: objects merged key by key recursively, `over` wins everywhere else.
pub fn deep_merge(base: &Value, over: &Value) -> Value {
    let mut merged = base.clone();
    crate::config::merge_json(&mut merged, over);
    merged
}

#[derive(Debug, Clone)]
struct GlobalHandler {
    enabled: bool,
    config: Value,
}

/// The compiled global `errors` section.
#[derive(Debug, Clone)]
pub struct ErrorHandlers {
    handlers: BTreeMap<&'static str, GlobalHandler>,
    fallback: Arc<[CompiledHandler]>,
}

/// The handlers of one rule, with the global fallback.
#[derive(Debug, Clone)]
pub struct RuleErrorHandlers {
    rule: Vec<CompiledHandler>,
    fallback: Arc<[CompiledHandler]>,
}

const GLOBAL_SCOPE: &str = "global errors config";

fn global_err(field: impl Into<String>, problem: impl Into<String>) -> ErrorConfigError {
    ErrorConfigError::InvalidGlobal {
        field: field.into(),
        problem: problem.into(),
    }
}

impl ErrorHandlers {
    /// Compiles the global `errors` section (`None` = all defaults: `json` enabled, fallback
    /// `["json"]`).
    pub fn compile(global: Option<&Value>) -> Result<ErrorHandlers, ErrorConfigError> {
        let empty = Map::new();
        let root = match global {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Err(global_err("errors", "must be an object")),
        };
        for key in root.keys() {
            if key != "fallback" && key != "handlers" {
                return Err(global_err(format!("errors.{key}"), "unknown field"));
            }
        }
        let mut handlers = BTreeMap::new();
        for name in HANDLER_NAMES {
            handlers.insert(
                name,
                GlobalHandler {
                    enabled: name == "json",
                    config: Value::Object(Map::new()),
                },
            );
        }
        match root.get("handlers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(hs)) => {
                for (name, spec) in hs {
                    let Some(static_name) = HANDLER_NAMES.iter().find(|n| **n == name) else {
                        return Err(ErrorConfigError::UnknownHandler {
                            scope: GLOBAL_SCOPE.to_owned(),
                            handler: name.clone(),
                        });
                    };
                    let field = format!("errors.handlers.{name}");
                    let spec = match spec {
                        Value::Object(m) => m,
                        _ => return Err(global_err(field, "must be an object")),
                    };
                    let entry = handlers.entry(static_name).or_insert(GlobalHandler {
                        enabled: false,
                        config: Value::Object(Map::new()),
                    });
                    for (k, v) in spec {
                        match (k.as_str(), v) {
                            ("enabled", Value::Bool(b)) => entry.enabled = *b,
                            ("enabled", _) => {
                                return Err(global_err(
                                    format!("{field}.enabled"),
                                    "must be a boolean",
                                ));
                            }
                            ("config", Value::Object(_)) => entry.config = v.clone(),
                            ("config", Value::Null) => {}
                            ("config", _) => {
                                return Err(global_err(
                                    format!("{field}.config"),
                                    "must be an object",
                                ));
                            }
                            _ => return Err(global_err(format!("{field}.{k}"), "unknown field")),
                        }
                    }
                }
            }
            Some(_) => return Err(global_err("errors.handlers", "must be an object")),
        }
        let fallback_names: Vec<String> = match root.get("fallback") {
            None | Some(Value::Null) => vec!["json".to_owned()],
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        global_err(format!("errors.fallback[{i}]"), "must be a string")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(global_err(
                    "errors.fallback",
                    "must be a list of handler names",
                ));
            }
        };
        let mut this = ErrorHandlers {
            handlers,
            fallback: Arc::from(Vec::new()),
        };
        let mut fallback = Vec::with_capacity(fallback_names.len());
        for name in &fallback_names {
            fallback.push(this.compile_one(GLOBAL_SCOPE, "errors.fallback", name, None)?);
        }
        this.fallback = Arc::from(fallback);
        Ok(this)
    }

    fn compile_one(
        &self,
        scope: &str,
        field_prefix: &str,
        name: &str,
        over: Option<&Value>,
    ) -> Result<CompiledHandler, ErrorConfigError> {
        let Some((static_name, global)) = self.handlers.iter().find(|(n, _)| **n == name) else {
            return Err(ErrorConfigError::UnknownHandler {
                scope: scope.to_owned(),
                handler: name.to_owned(),
            });
        };
        if !global.enabled {
            return Err(ErrorConfigError::NotEnabled {
                scope: scope.to_owned(),
                handler: name.to_owned(),
            });
        }
        let config = match over {
            None | Some(Value::Null) => global.config.clone(),
            Some(o @ Value::Object(_)) => deep_merge(&global.config, o),
            Some(_) => {
                return Err(ErrorConfigError::InvalidField {
                    scope: scope.to_owned(),
                    handler: name.to_owned(),
                    field: format!("{field_prefix}.config"),
                    problem: "must be an object".to_owned(),
                });
            }
        };
        compile_handler(scope, static_name, &config)
    }

    /// Compiles a rule's `errors` list; each handler's config is deep-merged over the global one.
    pub fn compile_rule(
        &self,
        rule_id: &str,
        rule_errors: &[(String, Option<Value>)],
    ) -> Result<RuleErrorHandlers, ErrorConfigError> {
        let scope = format!("rule \"{rule_id}\"");
        let mut rule = Vec::with_capacity(rule_errors.len());
        for (i, (name, config)) in rule_errors.iter().enumerate() {
            rule.push(self.compile_one(&scope, &format!("errors[{i}]"), name, config.as_ref())?);
        }
        Ok(RuleErrorHandlers {
            rule,
            fallback: Arc::clone(&self.fallback),
        })
    }

    /// The answer for an error before any rule matched (no rule: 404, several: 500).
    pub fn respond_without_rule(
        &self,
        error: &PolicyError,
        req: &Request,
        request_url: &str,
    ) -> Response {
        select(&[], &self.fallback, error, req, request_url)
    }

    pub fn fallback(&self) -> &[CompiledHandler] {
        &self.fallback
    }
}

impl RuleErrorHandlers {
    pub fn respond(&self, error: &PolicyError, req: &Request, request_url: &str) -> Response {
        select(&self.rule, &self.fallback, error, req, request_url)
    }

    pub fn handlers(&self) -> &[CompiledHandler] {
        &self.rule
    }
}

fn select(
    rule: &[CompiledHandler],
    fallback: &[CompiledHandler],
    error: &PolicyError,
    req: &Request,
    request_url: &str,
) -> Response {
    let chosen = rule
        .iter()
        .chain(fallback.iter())
        .find(|h| h.matches(error, req))
        .or_else(|| fallback.first());
    match chosen {
        Some(h) => h.respond(error, req, request_url),
        None => json_response(error, false),
    }
}

fn field_err(
    scope: &str,
    handler: &str,
    field: &str,
    problem: impl Into<String>,
) -> ErrorConfigError {
    ErrorConfigError::InvalidField {
        scope: scope.to_owned(),
        handler: handler.to_owned(),
        field: field.to_owned(),
        problem: problem.into(),
    }
}

fn compile_handler(
    scope: &str,
    name: &'static str,
    config: &Value,
) -> Result<CompiledHandler, ErrorConfigError> {
    let empty = Map::new();
    let cfg = config.as_object().unwrap_or(&empty);
    let allowed: &[&str] = match name {
        "json" => &["verbose", "when"],
        "www_authenticate" => &["realm", "when"],
        _ => &["to", "code", "return_to_query_param", "when"],
    };
    for key in cfg.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(field_err(scope, name, key, "unknown field"));
        }
    }
    let when = match cfg.get("when") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => {
            when::compile(v).map_err(|(field, problem)| field_err(scope, name, &field, problem))?
        }
    };
    let action = match name {
        "json" => Action::Json {
            verbose: match cfg.get("verbose") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(field_err(scope, name, "verbose", "must be a boolean")),
            },
        },
        "www_authenticate" => Action::WwwAuthenticate {
            realm: match cfg.get("realm") {
                None | Some(Value::Null) => "Please authenticate.".to_owned(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(field_err(scope, name, "realm", "must be a string")),
            },
        },
        _ => {
            let to = match cfg.get("to") {
                Some(Value::String(s)) if is_absolute_or_path_url(s) => s.clone(),
                Some(Value::String(s)) => {
                    return Err(field_err(
                        scope,
                        name,
                        "to",
                        format!("\"{s}\" is not a URL (expected http(s)://... or /path)"),
                    ));
                }
                None | Some(Value::Null) => {
                    return Err(field_err(scope, name, "to", "is required"));
                }
                Some(_) => return Err(field_err(scope, name, "to", "must be a string")),
            };
            let code = match cfg.get("code") {
                None | Some(Value::Null) => 302,
                Some(v) => match v.as_u64() {
                    Some(301) => 301,
                    Some(302) => 302,
                    _ => {
                        return Err(field_err(
                            scope,
                            name,
                            "code",
                            format!("{v} is not 301 or 302"),
                        ));
                    }
                },
            };
            let return_to_query_param = match cfg.get("return_to_query_param") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    return Err(field_err(
                        scope,
                        name,
                        "return_to_query_param",
                        "must be a string",
                    ));
                }
            };
            Action::Redirect {
                to,
                code,
                return_to_query_param,
            }
        }
    };
    Ok(CompiledHandler { name, when, action })
}

fn is_absolute_or_path_url(s: &str) -> bool {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if s.starts_with('/') {
        return true;
    }
    match s.split_once("://") {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
                && !rest.is_empty()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests;
