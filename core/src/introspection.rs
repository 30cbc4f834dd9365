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

/// `application/x-www-form-urlencoded` body. With strategy `none`, the required scopes are sent
/// as `scope` so the server checks them (Oathkeeper does; keys sorted as Go's `Values.Encode`).
pub fn request_body(token: &str, req: &IntrospectionRequirements) -> String {
    let mut out = String::with_capacity(token.len() + 16);
    if req.scope_strategy == ScopeStrategy::None && !req.required_scope.is_empty() {
        out.push_str("scope=");
        crate::form::escape_into(&req.required_scope.join(" "), &mut out);
        out.push('&');
    }
    out.push_str("token=");
    crate::form::escape_into(token, &mut out);
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
        Some(_) => Err(IntrospectionError::Malformed(format!(
            "`{name}` is not a string"
        ))),
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
        Some(_) => {
            return Err(IntrospectionError::Malformed(
                "`active` is not a boolean".into(),
            ));
        }
    }
    let exp = match obj.get("exp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Some(v),
            (None, Some(f)) => Some(if f <= 0.0 { 0 } else { f as u64 }),
            _ => {
                return Err(IntrospectionError::Malformed(
                    "`exp` is not a number".into(),
                ));
            }
        },
        Some(_) => {
            return Err(IntrospectionError::Malformed(
                "`exp` is not a number".into(),
            ));
        }
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
    if let Some(missing) = req
        .target_audience
        .iter()
        .find(|t| !aud.contains(&t.as_str()))
    {
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
    extra.insert(
        "username".into(),
        Value::String(opt_str(&obj, "username")?.to_owned()),
    );
    extra.insert(
        "client_id".into(),
        Value::String(opt_str(&obj, "client_id")?.to_owned()),
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn eval(v: Value, req: &IntrospectionRequirements) -> Result<Introspected, IntrospectionError> {
        evaluate(v.to_string().as_bytes(), req, NOW)
    }

    #[test]
    fn body_escapes_and_sends_scope_for_none() {
        let mut r = IntrospectionRequirements::default();
        assert_eq!(request_body("a+b/c=d e~", &r), "token=a%2Bb%2Fc%3Dd+e~");
        r.required_scope = vec!["read".into(), "write:all".into()];
        assert_eq!(request_body("t", &r), "scope=read+write%3Aall&token=t");
        r.scope_strategy = ScopeStrategy::Exact;
        assert_eq!(request_body("t", &r), "token=t");
        assert_eq!(
            request_body("é", &IntrospectionRequirements::default()),
            "token=%C3%A9"
        );
    }

    #[test]
    fn active_token_yields_subject_and_extra() {
        let r = IntrospectionRequirements::default();
        let got = eval(
            json!({"active": true, "sub": "svc", "client_id": "c1", "scope": "read", "aud": "api",
                   "exp": NOW + 10, "ext": {"tenant": "t1"}, "username": "u"}),
            &r,
        )
        .unwrap();
        assert_eq!(got.subject, "svc");
        assert_eq!(got.exp, Some(NOW + 10));
        assert_eq!(
            Value::Object(got.extra),
            json!({"tenant": "t1", "username": "u", "client_id": "c1", "scope": "read", "aud": ["api"]})
        );
        let bare = eval(json!({"active": true}), &r).unwrap();
        assert_eq!(
            Value::Object(bare.extra),
            json!({"username": "", "client_id": "", "scope": ""})
        );
    }

    #[test]
    fn inactive_expired_and_token_use() {
        let r = IntrospectionRequirements::default();
        assert_eq!(
            eval(json!({"active": false}), &r),
            Err(IntrospectionError::Inactive)
        );
        assert_eq!(
            eval(json!({"sub": "x"}), &r),
            Err(IntrospectionError::Inactive)
        );
        assert_eq!(
            eval(json!({"active": true, "exp": NOW - 1}), &r),
            Err(IntrospectionError::Expired(NOW - 1))
        );
        assert!(eval(json!({"active": true, "exp": NOW}), &r).is_ok());
        assert_eq!(
            eval(json!({"active": true, "token_use": "refresh_token"}), &r),
            Err(IntrospectionError::WrongTokenUse("refresh_token".into()))
        );
        assert!(eval(json!({"active": true, "token_use": "access_token"}), &r).is_ok());
        assert!(matches!(
            evaluate(b"nope", &r, NOW),
            Err(IntrospectionError::Malformed(_))
        ));
        assert!(matches!(
            eval(json!([]), &r),
            Err(IntrospectionError::Malformed(_))
        ));
        assert!(matches!(
            eval(json!({"active": "yes"}), &r),
            Err(IntrospectionError::Malformed(_))
        ));
    }

    #[test]
    fn audience_and_issuer() {
        let r = IntrospectionRequirements {
            target_audience: vec!["a".into(), "b".into()],
            trusted_issuers: vec!["https://hydra".into()],
            ..Default::default()
        };
        assert_eq!(
            eval(
                json!({"active": true, "aud": ["a"], "iss": "https://hydra"}),
                &r
            ),
            Err(IntrospectionError::AudienceMismatch("b".into()))
        );
        assert_eq!(
            eval(
                json!({"active": true, "aud": ["a", "b"], "iss": "https://evil"}),
                &r
            ),
            Err(IntrospectionError::UntrustedIssuer("https://evil".into()))
        );
        assert!(
            eval(
                json!({"active": true, "aud": ["b", "a"], "iss": "https://hydra"}),
                &r
            )
            .is_ok()
        );
    }

    #[test]
    fn scopes_checked_locally_unless_none() {
        let mut r = IntrospectionRequirements {
            required_scope: vec!["orders.read".into()],
            scope_strategy: ScopeStrategy::Hierarchic,
            ..Default::default()
        };
        assert!(eval(json!({"active": true, "scope": "orders profile"}), &r).is_ok());
        assert_eq!(
            eval(json!({"active": true, "scope": "profile"}), &r),
            Err(IntrospectionError::MissingScope("orders.read".into()))
        );
        r.scope_strategy = ScopeStrategy::None;
        assert!(eval(json!({"active": true, "scope": "profile"}), &r).is_ok());
    }
}
