//! The `jwt` authenticator: split and decode a compact JWS, verify its signature against the
//! configured key sets (host's native crypto first, pure Rust as fallback), then check claims the
//! way Oathkeeper does.
//!
//! Claim timing follows Oathkeeper (jwt-go's `MapClaims.Valid` with `required = false`): `exp`,
//! `nbf` and `iat` are checked when present and not required. A present but non-numeric time
//! claim is `Malformed`.

use crate::host::Host;
use crate::jwks::{KeySet, alg_name};
use crate::scope::ScopeStrategy;
use crate::signature::ecdsa_field_len;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use std::str::FromStr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("algorithm `{0}` is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("token header has no `kid`")]
    MissingKid,
    #[error("no key with kid `{0}` in the configured key sets")]
    UnknownKid(String),
    #[error("key `{kid}` cannot verify algorithm `{alg}`")]
    KeyAlgMismatch { kid: String, alg: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired at {0}")]
    Expired(u64),
    #[error("token not valid before {0}")]
    NotYetValid(u64),
    #[error("token issued in the future ({0})")]
    IssuedInFuture(u64),
    #[error("issuer `{0}` is not trusted")]
    UntrustedIssuer(String),
    #[error("token audience lacks `{0}`")]
    AudienceMismatch(String),
    #[error("token lacks scope `{0}`")]
    MissingScope(String),
    #[error("required scopes are configured but the scope strategy is `none`")]
    ScopeStrategyNone,
}

/// What a rule's `jwt` authenticator config demands of a token.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtRequirements {
    pub jwks_urls: Vec<String>,
    pub trusted_issuers: Vec<String>,
    pub target_audience: Vec<String>,
    pub required_scope: Vec<String>,
    pub scope_strategy: ScopeStrategy,
    /// Empty means Oathkeeper's default, `[RS256]`.
    pub allowed_algorithms: Vec<Algorithm>,
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: u64,
}

impl Default for JwtRequirements {
    fn default() -> Self {
        Self {
            jwks_urls: Vec::new(),
            trusted_issuers: Vec::new(),
            target_audience: Vec::new(),
            required_scope: Vec::new(),
            scope_strategy: ScopeStrategy::None,
            allowed_algorithms: vec![Algorithm::RS256],
            leeway: 0,
        }
    }
}

impl JwtRequirements {
    fn allows(&self, alg: Algorithm) -> bool {
        if self.allowed_algorithms.is_empty() {
            alg == Algorithm::RS256
        } else {
            self.allowed_algorithms.contains(&alg)
        }
    }
}

/// A token split and decoded, not yet trusted.
#[derive(Debug, Clone)]
pub struct ParsedJwt {
    /// `alg` from the header as written (may be `none` or unknown).
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: what the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// A token whose signature and claims checked out.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub claims: Arc<Map<String, Value>>,
    /// `sub`, or empty when absent.
    pub subject: String,
    pub exp: Option<u64>,
}

/// Three non-empty dot-separated parts. Anything else is not a JWT, and the `jwt` authenticator is
/// "not responsible" for it (the next authenticator gets a try).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(a), Some(b), Some(c), None) if !a.is_empty() && !b.is_empty() && !c.is_empty()
    )
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| JwtError::Malformed(format!("{what} is not base64url: {e}")))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, JwtError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
        Err(e) => Err(JwtError::Malformed(format!("{what} is not JSON: {e}"))),
    }
}

/// Splits and decodes a compact JWS (base64url without padding).
pub fn parse(token: &str) -> Result<ParsedJwt, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts".into()));
    };
    let header = json_object(&b64(h, "header")?, "header")?;
    let claims = json_object(&b64(p, "payload")?, "payload")?;
    let signature = b64(s, "signature")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(JwtError::Malformed("header has no string `alg`".into())),
    };
    let text = |name: &str| -> Result<Option<String>, JwtError> {
        match header.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => Ok(Some(v.clone())),
            Some(_) => Err(JwtError::Malformed(format!("header `{name}` is not a string"))),
        }
    };
    let kid = text("kid")?;
    let typ = text("typ")?;
    Ok(ParsedJwt {
        alg,
        kid,
        typ,
        header,
        claims,
        signing_input: format!("{h}.{p}"),
        signature,
    })
}

/// Verifies the signature with the key named by `kid` in `key_sets`.
///
/// `none` and HS* are refused whatever `allowed_algorithms` says: with public key sets, an HMAC
/// "secret" would be the public key itself. On an unknown `kid`, `host.unknown_kid` is told so it
/// may refetch the key sets (rate-limited on its side) before the error is returned.
pub fn verify_signature(
    parsed: &ParsedJwt,
    key_sets: &[Arc<KeySet>],
    req: &JwtRequirements,
    host: &mut dyn Host,
) -> Result<(), JwtError> {
    let not_allowed = || JwtError::AlgorithmNotAllowed(parsed.alg.clone());
    let alg = Algorithm::from_str(&parsed.alg).map_err(|_| not_allowed())?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) || !req.allows(alg) {
        return Err(not_allowed());
    }
    let kid = match parsed.kid.as_deref() {
        Some(k) if !k.is_empty() => k,
        _ => return Err(JwtError::MissingKid),
    };
    let Some(key) = key_sets.iter().find_map(|set| set.find(kid)) else {
        host.unknown_kid(&req.jwks_urls);
        return Err(JwtError::UnknownKid(kid.to_owned()));
    };
    if !key.supports(alg) {
        return Err(JwtError::KeyAlgMismatch {
            kid: kid.to_owned(),
            alg: alg_name(alg).to_owned(),
        });
    }
    let message = parsed.signing_input.as_bytes();
    let native = match ecdsa_field_len(alg) {
        Some(len) => match crate::signature::ecdsa_jws_to_der(&parsed.signature, len) {
            Some(der) => host.verify_native(alg, key, message, &der),
            None => return Err(JwtError::BadSignature),
        },
        None => host.verify_native(alg, key, message, &parsed.signature),
    };
    let ok = match native {
        Some(ok) => ok,
        None => key.verify_rust(alg, message, &parsed.signature),
    };
    if ok { Ok(()) } else { Err(JwtError::BadSignature) }
}

fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else if let Some(f) = n.as_f64() {
                // NumericDate may carry fractions; negative times are before any `now`.
                Ok(Some(if f <= 0.0 { 0 } else { f as u64 }))
            } else {
                Err(JwtError::Malformed(format!("claim `{name}` is not a number")))
            }
        }
        Some(_) => Err(JwtError::Malformed(format!("claim `{name}` is not a number"))),
    }
}

/// A string or an array of strings (other array members ignored).
fn strings(v: &Value, split_spaces: bool) -> Vec<&str> {
    match v {
        Value::String(s) if split_spaces => s.split(' ').filter(|p| !p.is_empty()).collect(),
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Checks `exp`/`nbf`/`iat` (with leeway), issuer, audience and scopes against `req`.
///
/// Scopes are the union of `scp`, `scope` and `scopes`, each a space-separated string or an array.
pub fn check_claims(
    claims: &Map<String, Value>,
    req: &JwtRequirements,
    now: u64,
) -> Result<(), JwtError> {
    if let Some(exp) = time_claim(claims, "exp")?
        && now > exp.saturating_add(req.leeway)
    {
        return Err(JwtError::Expired(exp));
    }
    if let Some(nbf) = time_claim(claims, "nbf")?
        && now.saturating_add(req.leeway) < nbf
    {
        return Err(JwtError::NotYetValid(nbf));
    }
    if let Some(iat) = time_claim(claims, "iat")?
        && now.saturating_add(req.leeway) < iat
    {
        return Err(JwtError::IssuedInFuture(iat));
    }
    if !req.trusted_issuers.is_empty() {
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        if !req.trusted_issuers.iter().any(|t| t == iss) {
            return Err(JwtError::UntrustedIssuer(iss.to_owned()));
        }
    }
    if !req.target_audience.is_empty() {
        let aud = claims.get("aud").map(|v| strings(v, false)).unwrap_or_default();
        if let Some(missing) = req.target_audience.iter().find(|t| !aud.contains(&t.as_str())) {
            return Err(JwtError::AudienceMismatch(missing.clone()));
        }
    }
    if !req.required_scope.is_empty() {
        if req.scope_strategy == ScopeStrategy::None {
            return Err(JwtError::ScopeStrategyNone);
        }
        let granted: Vec<&str> = ["scp", "scope", "scopes"]
            .iter()
            .filter_map(|name| claims.get(*name))
            .flat_map(|v| strings(v, true))
            .collect();
        if let Some(missing) = req
            .required_scope
            .iter()
            .find(|r| !req.scope_strategy.satisfied(&granted, r))
        {
            return Err(JwtError::MissingScope(missing.clone()));
        }
    }
    Ok(())
}

/// Parse, verify and check in one go, with the host's clock.
pub fn authenticate(
    token: &str,
    key_sets: &[Arc<KeySet>],
    req: &JwtRequirements,
    host: &mut dyn Host,
) -> Result<VerifiedToken, JwtError> {
    let parsed = parse(token)?;
    verify_signature(&parsed, key_sets, req, host)?;
    check_claims(&parsed.claims, req, host.now())?;
    let exp = time_claim(&parsed.claims, "exp")?;
    let subject = parsed
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Ok(VerifiedToken {
        claims: Arc::new(parsed.claims),
        subject,
        exp,
    })
}
