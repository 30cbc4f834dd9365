//! The `oauth2_introspection` authenticator's pure part: the RFC 7662 request body, and the
//! evaluation of the server's answer the way Oathkeeper does it.

use crate::scope::ScopeStrategy;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntrospectionError {
    #[error("introspection answer is malformed: {0}")]
    Malformed(String),
    #[error("token is not active")]
    Inactive,
    #[error("token expired at {0}")]
    Expired(u64),
    #[error("token_use is `{0}`, expected `access_token`")]
    WrongTokenUse(String),
    #[error("token audience lacks `{0}`")]
    AudienceMismatch(String),
    #[error("issuer `{0}` is not trusted")]
    UntrustedIssuer(String),
    #[error("token lacks scope `{0}`")]
    MissingScope(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntrospectionRequirements {
    pub required_scope: Vec<String>,
    pub scope_strategy: ScopeStrategy,
    pub target_audience: Vec<String>,
    pub trusted_issuers: Vec<String>,
}

/// An accepted introspection answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Introspected {
    /// `sub`, or empty.
    pub subject: String,
    /// As Oathkeeper builds `.Extra`: the `ext` object, plus `username`, `client_id`, `scope`
    /// (empty strings when absent) and `aud` (array, only when non-empty).
    pub extra: Map<String, Value>,
    pub exp: Option<u64>,
}

/// Go's `url.QueryEscape`: unreserved bytes kept, space as `+`, the rest `%XX`.
fn form_escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
}

/// `application/x-www-form-urlencoded` body. With strategy `none`, the required scopes are sent
/// as `scope` so the server checks them (Oathkeeper does; keys sorted as Go's `Values.Encode`).
pub fn request_body(token: &str, req: &IntrospectionRequirements) -> String {
    let mut out = String::with_capacity(token.len() + 16);
    if req.scope_strategy == ScopeStrategy::None && !req.required_scope.is_empty() {
        out.push_str("scope=");
        form_escape(&req.required_scope.join(" "), &mut out);
        out.push('&');
    }
    out.push_str("token=");
    form_escape(token, &mut out);
    out
}

fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn opt_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, IntrospectionError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(IntrospectionError::Malformed(format!("`{name}` is not a string"))),
    }
}

/// Evaluates the server's JSON answer against `req` at `now` (unix seconds).
pub fn evaluate(
    body: &[u8],
    req: &IntrospectionRequirements,
    now: u64,
) -> Result<Introspected, IntrospectionError> {
    let obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(IntrospectionError::Malformed("not a JSON object".into())),
        Err(e) => return Err(IntrospectionError::Malformed(format!("not JSON: {e}"))),
    };
    match obj.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) | None | Some(Value::Null) => {
            return Err(IntrospectionError::Inactive);
        }
        Some(_) => return Err(IntrospectionError::Malformed("`active` is not a boolean".into())),
    }
    let exp = match obj.get("exp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Some(v),
            (None, Some(f)) => Some(if f <= 0.0 { 0 } else { f as u64 }),
            _ => return Err(IntrospectionError::Malformed("`exp` is not a number".into())),
        },
        Some(_) => return Err(IntrospectionError::Malformed("`exp` is not a number".into())),
    };
    // Oathkeeper ignores exp <= 0 (unset in Go).
    if let Some(e) = exp
        && e > 0
        && now > e
    {
        return Err(IntrospectionError::Expired(e));
    }
    let token_use = opt_str(&obj, "token_use")?;
    if !token_use.is_empty() && token_use != "access_token" {
        return Err(IntrospectionError::WrongTokenUse(token_use.to_owned()));
    }
    let aud: Vec<&str> = obj.get("aud").map(strings).unwrap_or_default();
    if let Some(missing) = req.target_audience.iter().find(|t| !aud.contains(&t.as_str())) {
        return Err(IntrospectionError::AudienceMismatch(missing.clone()));
    }
    let iss = opt_str(&obj, "iss")?;
    if !req.trusted_issuers.is_empty() && !req.trusted_issuers.iter().any(|t| t == iss) {
        return Err(IntrospectionError::UntrustedIssuer(iss.to_owned()));
    }
    let scope = opt_str(&obj, "scope")?;
    if req.scope_strategy != ScopeStrategy::None {
        let granted: Vec<&str> = scope.split(' ').collect();
        if let Some(missing) = req
            .required_scope
            .iter()
            .find(|r| !req.scope_strategy.satisfied(&granted, r))
        {
            return Err(IntrospectionError::MissingScope(missing.clone()));
        }
    }
    let mut extra = match obj.get("ext") {
        Some(Value::Object(ext)) => ext.clone(),
        _ => Map::new(),
    };
    extra.insert("username".into(), Value::String(opt_str(&obj, "username")?.to_owned()));
    extra.insert("client_id".into(), Value::String(opt_str(&obj, "client_id")?.to_owned()));
    extra.insert("scope".into(), Value::String(scope.to_owned()));
    if !aud.is_empty() {
        extra.insert(
            "aud".into(),
            Value::Array(aud.iter().map(|a| Value::String((*a).to_owned())).collect()),
        );
    }
    Ok(Introspected {
        subject: opt_str(&obj, "sub")?.to_owned(),
        extra,
        exp,
    })
}
