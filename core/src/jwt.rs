//! The `jwt` authenticator: split and decode a compact JWS, verify its signature against the
//! configured key sets (host's native crypto first, pure Rust as fallback), then check claims the
//! way Oathkeeper does.
//!
//! Claim timing follows Oathkeeper (jwt-go's `MapClaims.Valid` with `required = false`): `exp`,
//! `nbf` and `iat` are checked when present and not required. A present but non-numeric time
//! claim is `Malformed`.
//!
//! Header and claim rules beyond Oathkeeper's (RFC 7515, 7519, 8725): a header with `crit`
//! (RFC 7515 §4.1.11; the filter implements no extension, so any critical one is unknown), `b64`
//! (RFC 7797's unencoded payload) or `zip` (JWE-only, RFC 7516 §4.1.3) is refused; `typ`, when
//! present, must name a JWT (`JWT`, `application/jwt`, `at+jwt`, `application/at+jwt`, any case;
//! RFC 8725 §3.11), so a token minted for another purpose under the same keys is not taken for an
//! access token; registered claims must have their registered types (RFC 7519 §4.1).

use crate::host::{Host, TimeBounds};
use crate::jwks::{KeySet, alg_name};
use crate::scope::ScopeStrategy;
use crate::signature::ecdsa_field_len;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
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
    #[error("header `{0}` asks for a JOSE extension the filter does not implement")]
    UnsupportedHeader(&'static str),
    #[error("token type `{0}` is not a JWT")]
    WrongTokenType(String),
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
    pub fn allows(&self, alg: Algorithm) -> bool {
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

/// The JOSE header members the filter reads; the others are skipped without building a map
/// (every fresh token is parsed on the request path). Repeated members are an error, as RFC 7515
/// requires of header parameter names.
#[derive(Deserialize)]
struct JoseHeader {
    alg: Option<Value>,
    kid: Option<Value>,
    typ: Option<Value>,
    /// Present with any value, even `null`: each is refused.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    #[serde(default, deserialize_with = "present")]
    b64: bool,
    #[serde(default, deserialize_with = "present")]
    zip: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// `typ` values that say "a JWT" (RFC 7515 §4.1.9: the `application/` prefix may be left out,
/// media types compare case-insensitively). Hydra and the token service write `JWT`.
const JWT_TYPES: [&str; 4] = ["jwt", "application/jwt", "at+jwt", "application/at+jwt"];

/// RFC 7519 §4.1: a registered claim of another type is refused rather than read around.
fn check_registered_claim_types(claims: &Map<String, Value>) -> Result<(), JwtError> {
    let wrong =
        |name: &str, what: &str| Err(JwtError::Malformed(format!("claim `{name}` is not {what}")));
    for name in ["iss", "sub", "jti"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return wrong(name, "a string");
        }
    }
    for name in ["exp", "nbf", "iat"] {
        if claims.get(name).is_some_and(|v| !v.is_number()) {
            return wrong(name, "a number");
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(()),
        Some(_) => wrong("aud", "a string or an array of strings"),
    }
}

fn jose_header(bytes: &[u8]) -> Result<JoseHeader, JwtError> {
    // A struct would also accept a JSON array; the header must be an object.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(JwtError::Malformed("header is not a JSON object".into()));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| JwtError::Malformed(format!("header is not JSON: {e}")))
}

/// Splits and decodes a compact JWS (base64url without padding).
pub fn parse(token: &str) -> Result<ParsedJwt, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let header = jose_header(&b64(h, "header")?)?;
    for (name, set) in [
        ("crit", header.crit),
        ("b64", header.b64),
        ("zip", header.zip),
    ] {
        if set {
            return Err(JwtError::UnsupportedHeader(name));
        }
    }
    let claims = json_object(&b64(p, "payload")?, "payload")?;
    check_registered_claim_types(&claims)?;
    let signature = b64(s, "signature")?;
    let alg = match header.alg {
        Some(Value::String(a)) => a,
        _ => return Err(JwtError::Malformed("header has no string `alg`".into())),
    };
    let text = |name: &str, v: Option<Value>| -> Result<Option<String>, JwtError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => Ok(Some(v)),
            Some(_) => Err(JwtError::Malformed(format!(
                "header `{name}` is not a string"
            ))),
        }
    };
    let typ = text("typ", header.typ)?;
    if let Some(t) = &typ
        && !JWT_TYPES.iter().any(|j| t.eq_ignore_ascii_case(j))
    {
        return Err(JwtError::WrongTokenType(t.clone()));
    }
    Ok(ParsedJwt {
        alg,
        kid: text("kid", header.kid)?,
        typ,
        claims,
        signing_input: format!("{h}.{p}"),
        signature,
    })
}

/// Verifies the signature with the key named by `kid` in `key_sets`.
///
/// `none` and HS* are refused whatever `allowed_algorithms` says: with public key sets, an HMAC
/// "secret" would be the public key itself. An unknown `kid` is reported as such; whether to
/// re-fetch the key sets and wait is the caller's decision (see `authn`).
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
    if ok {
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
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
                Err(JwtError::Malformed(format!(
                    "claim `{name}` is not a number"
                )))
            }
        }
        Some(_) => Err(JwtError::Malformed(format!(
            "claim `{name}` is not a number"
        ))),
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

/// A token's `exp`, `nbf` and `iat`, read once: a cached token's are checked on every request,
/// and looking them up in the claims map each time was a measurable part of a cache hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeClaims {
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
}

impl TimeClaims {
    pub fn of(claims: &Map<String, Value>) -> Result<Self, JwtError> {
        Ok(Self {
            exp: time_claim(claims, "exp")?,
            nbf: time_claim(claims, "nbf")?,
            iat: time_claim(claims, "iat")?,
        })
    }

    /// Checks them (with leeway) at `now`.
    pub fn check(&self, req: &JwtRequirements, now: u64) -> Result<(), JwtError> {
        if let Some(exp) = self.exp
            && now > exp.saturating_add(req.leeway)
        {
            return Err(JwtError::Expired(exp));
        }
        if let Some(nbf) = self.nbf
            && now.saturating_add(req.leeway) < nbf
        {
            return Err(JwtError::NotYetValid(nbf));
        }
        if let Some(iat) = self.iat
            && now.saturating_add(req.leeway) < iat
        {
            return Err(JwtError::IssuedInFuture(iat));
        }
        Ok(())
    }

    /// True when [`TimeClaims::check`] gives the same answer at every instant of `bounds` (then
    /// any instant in them may stand for "now").
    pub fn settled(&self, req: &JwtRequirements, bounds: TimeBounds) -> bool {
        self.check(req, bounds.earliest) == self.check(req, bounds.latest)
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
    TimeClaims::of(claims)?.check(req, now)?;
    check_other_claims(claims, req)
}

/// The checks of [`check_claims`] that do not depend on time.
pub fn check_other_claims(
    claims: &Map<String, Value>,
    req: &JwtRequirements,
) -> Result<(), JwtError> {
    if !req.trusted_issuers.is_empty() {
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        if !req.trusted_issuers.iter().any(|t| t == iss) {
            return Err(JwtError::UntrustedIssuer(iss.to_owned()));
        }
    }
    if !req.target_audience.is_empty() {
        let aud = claims
            .get("aud")
            .map(|v| strings(v, false))
            .unwrap_or_default();
        if let Some(missing) = req
            .target_audience
            .iter()
            .find(|t| !aud.contains(&t.as_str()))
        {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn req(algs: &[Algorithm]) -> JwtRequirements {
        JwtRequirements {
            jwks_urls: vec!["https://issuer/.well-known/jwks.json".into()],
            allowed_algorithms: algs.to_vec(),
            ..Default::default()
        }
    }

    fn claims() -> Value {
        json!({"sub": "alice", "iss": "https://issuer", "aud": ["api", "other"], "exp": NOW + 60, "iat": NOW - 5, "scp": ["read", "write.all"]})
    }

    fn run(
        token: &str,
        req: &JwtRequirements,
        host: &mut TestHost,
    ) -> Result<VerifiedToken, JwtError> {
        authenticate(token, &[key_set()], req, host)
    }

    const ALL_ASYMMETRIC: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    #[test]
    fn every_algorithm_verifies_via_rust_fallback() {
        for alg in ALL_ASYMMETRIC {
            let mut host = TestHost::new(NOW, Native::Absent);
            let token = sign(alg, Some(kid_for(alg)), &claims());
            let v = run(&token, &req(&[alg]), &mut host).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(v.subject, "alice");
            assert_eq!(v.exp, Some(NOW + 60));
            assert_eq!(v.claims.get("iss"), Some(&json!("https://issuer")));
            assert_eq!(host.native_calls.len(), 1, "native is tried first");
        }
    }

    #[test]
    fn native_answer_is_authoritative() {
        let token = sign(Algorithm::RS256, Some("rsa"), &claims());
        let mut host = TestHost::new(NOW, Native::Fixed(false));
        assert_eq!(
            run(&token, &req(&[]), &mut host).unwrap_err(),
            JwtError::BadSignature
        );
        // A native "true" is trusted as is (the host's verifier is the real check).
        let mut host = TestHost::new(NOW, Native::Fixed(true));
        assert!(run(&token, &req(&[]), &mut host).is_ok());
        assert_eq!(host.native_calls[0].1, parse(&token).unwrap().signature);
    }

    #[test]
    fn ecdsa_goes_native_as_der() {
        for (alg, len) in [(Algorithm::ES256, 32), (Algorithm::ES384, 48)] {
            let token = sign(alg, Some(kid_for(alg)), &claims());
            let raw = parse(&token).unwrap().signature;
            assert_eq!(raw.len(), 2 * len);
            let mut host = TestHost::new(NOW, Native::EcdsaDer);
            run(&token, &req(&[alg]), &mut host).unwrap();
            let (called_alg, sig) = &host.native_calls[0];
            assert_eq!(*called_alg, alg);
            assert_eq!(sig[0], 0x30, "DER SEQUENCE");
            assert_eq!(
                Some(sig.clone()),
                crate::signature::ecdsa_jws_to_der(&raw, len)
            );
            // The real DER verifier refuses a tampered token.
            let (input, s) = token.rsplit_once('.').unwrap();
            let forged = format!("{}x.{s}", input);
            let mut host = TestHost::new(NOW, Native::EcdsaDer);
            assert!(run(&forged, &req(&[alg]), &mut host).is_err());
        }
    }

    #[test]
    fn bad_signature_rejected() {
        let token = sign(Algorithm::RS256, Some("rsa"), &claims());
        let other = sign(Algorithm::RS256, Some("rsa"), &json!({"sub": "mallory"}));
        let forged = format!(
            "{}.{}",
            other.rsplit_once('.').unwrap().0,
            token.rsplit_once('.').unwrap().1
        );
        let mut host = TestHost::new(NOW, Native::Absent);
        assert_eq!(
            run(&forged, &req(&[]), &mut host).unwrap_err(),
            JwtError::BadSignature
        );
        let es = sign(Algorithm::ES256, Some("ec256"), &claims());
        let (input, sig) = es.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig.pop();
        let truncated = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(
            run(&truncated, &req(&[Algorithm::ES256]), &mut host).unwrap_err(),
            JwtError::BadSignature
        );
    }

    #[test]
    fn algorithm_must_be_allowed() {
        let token = sign(Algorithm::RS384, Some("rsa"), &claims());
        let mut host = TestHost::new(NOW, Native::Absent);
        // Default allows only RS256.
        assert_eq!(
            run(&token, &req(&[]), &mut host).unwrap_err(),
            JwtError::AlgorithmNotAllowed("RS384".into())
        );
        assert_eq!(
            run(&token, &JwtRequirements::default(), &mut host).unwrap_err(),
            JwtError::AlgorithmNotAllowed("RS384".into())
        );
    }

    #[test]
    fn alg_none_rejected() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"rsa"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        let token = format!("{header}.{body}.c2ln");
        let mut host = TestHost::new(NOW, Native::Fixed(true));
        assert_eq!(
            run(&token, &req(&[]), &mut host).unwrap_err(),
            JwtError::AlgorithmNotAllowed("none".into())
        );
        assert!(host.native_calls.is_empty());
    }

    #[test]
    fn hs256_with_public_key_as_secret_rejected_even_if_listed() {
        let set = key_set();
        let secret = set.find("rsa").unwrap().spki_der().to_vec();
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("rsa".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap();
        let mut host = TestHost::new(NOW, Native::Fixed(true));
        assert_eq!(
            run(
                &token,
                &req(&[Algorithm::HS256, Algorithm::RS256]),
                &mut host
            )
            .unwrap_err(),
            JwtError::AlgorithmNotAllowed("HS256".into())
        );
        assert!(host.native_calls.is_empty());
    }

    #[test]
    fn kid_required_and_must_be_known() {
        let mut host = TestHost::new(NOW, Native::Absent);
        let token = sign(Algorithm::RS256, None, &claims());
        assert_eq!(
            run(&token, &req(&[]), &mut host).unwrap_err(),
            JwtError::MissingKid
        );
        let token = sign(Algorithm::RS256, Some("rotated-away"), &claims());
        assert_eq!(
            run(&token, &req(&[]), &mut host).unwrap_err(),
            JwtError::UnknownKid("rotated-away".into())
        );
    }

    #[test]
    fn kid_found_in_second_key_set() {
        let empty = Arc::new(KeySet::parse(br#"{"keys":[]}"#).unwrap());
        let token = sign(Algorithm::RS256, Some("rsa"), &claims());
        let mut host = TestHost::new(NOW, Native::Absent);
        authenticate(&token, &[empty, key_set()], &req(&[]), &mut host).unwrap();
    }

    #[test]
    fn key_must_fit_algorithm() {
        // An RSA-signed token naming the EC key's kid.
        let token = sign(Algorithm::RS256, Some("ec256"), &claims());
        let mut host = TestHost::new(NOW, Native::Absent);
        assert_eq!(
            run(&token, &req(&[]), &mut host).unwrap_err(),
            JwtError::KeyAlgMismatch {
                kid: "ec256".into(),
                alg: "RS256".into()
            }
        );
    }

    #[test]
    fn time_settled_only_when_both_bounds_agree() {
        let r = req(&[]);
        let b = |earliest, latest| TimeBounds { earliest, latest };
        let settled = |c: Value, bounds| {
            TimeClaims::of(c.as_object().unwrap())
                .unwrap()
                .settled(&r, bounds)
        };
        assert!(settled(
            json!({"exp": NOW + 10, "iat": NOW - 10}),
            b(NOW, NOW + 1)
        ));
        // exp passes at NOW + 1 (exp is inclusive) but not at NOW + 2
        assert!(settled(json!({"exp": NOW + 1}), b(NOW, NOW + 1)));
        assert!(!settled(json!({"exp": NOW + 1}), b(NOW, NOW + 2)));
        // already expired at both ends is settled too (and check_claims refuses it)
        assert!(settled(json!({"exp": NOW - 5}), b(NOW, NOW + 1)));
        assert!(!settled(json!({"nbf": NOW + 1}), b(NOW, NOW + 1)));
        assert!(!settled(json!({"iat": NOW + 1}), b(NOW, NOW + 1)));
        assert!(settled(json!({"iat": NOW + 1}), b(NOW + 1, NOW + 3)));
        // exact bounds settle everything
        assert!(settled(
            json!({"exp": NOW, "nbf": NOW, "iat": NOW}),
            b(NOW, NOW)
        ));
    }

    #[test]
    fn time_claims() {
        let r = req(&[]);
        let check = |c: Value, leeway: u64| {
            let r = JwtRequirements {
                leeway,
                ..r.clone()
            };
            check_claims(c.as_object().unwrap(), &r, NOW)
        };
        assert_eq!(
            check(json!({"exp": NOW - 1}), 0),
            Err(JwtError::Expired(NOW - 1))
        );
        assert_eq!(check(json!({"exp": NOW}), 0), Ok(()));
        assert_eq!(check(json!({"exp": NOW - 10}), 10), Ok(()));
        assert_eq!(
            check(json!({"nbf": NOW + 1}), 0),
            Err(JwtError::NotYetValid(NOW + 1))
        );
        assert_eq!(check(json!({"nbf": NOW + 5}), 5), Ok(()));
        assert_eq!(
            check(json!({"iat": NOW + 1}), 0),
            Err(JwtError::IssuedInFuture(NOW + 1))
        );
        assert_eq!(check(json!({"iat": NOW + 1}), 1), Ok(()));
        assert_eq!(
            check(json!({"exp": (NOW - 1) as f64 + 0.5}), 0),
            Err(JwtError::Expired(NOW - 1))
        );
        assert!(matches!(
            check(json!({"exp": "soon"}), 0),
            Err(JwtError::Malformed(_))
        ));
        // Absent time claims are not required (jwt-go MapClaims semantics).
        assert_eq!(check(json!({}), 0), Ok(()));
    }

    #[test]
    fn expired_token_end_to_end() {
        let mut c = claims();
        c["exp"] = json!(NOW - 100);
        let token = sign(Algorithm::RS256, Some("rsa"), &c);
        let mut host = TestHost::new(NOW, Native::Absent);
        assert_eq!(
            run(&token, &req(&[]), &mut host).unwrap_err(),
            JwtError::Expired(NOW - 100)
        );
    }

    #[test]
    fn issuer_and_audience() {
        let c = claims();
        let c = c.as_object().unwrap();
        let mut r = req(&[]);
        r.trusted_issuers = vec!["https://other".into()];
        assert_eq!(
            check_claims(c, &r, NOW),
            Err(JwtError::UntrustedIssuer("https://issuer".into()))
        );
        r.trusted_issuers.push("https://issuer".into());
        assert_eq!(check_claims(c, &r, NOW), Ok(()));
        r.target_audience = vec!["api".into(), "missing".into()];
        assert_eq!(
            check_claims(c, &r, NOW),
            Err(JwtError::AudienceMismatch("missing".into()))
        );
        r.target_audience = vec!["api".into(), "other".into()];
        assert_eq!(check_claims(c, &r, NOW), Ok(()));
        // `aud` as a single string.
        r.trusted_issuers.clear();
        let single = json!({"aud": "api"});
        r.target_audience = vec!["api".into()];
        assert_eq!(check_claims(single.as_object().unwrap(), &r, NOW), Ok(()));
        let none = json!({});
        assert_eq!(
            check_claims(none.as_object().unwrap(), &r, NOW),
            Err(JwtError::AudienceMismatch("api".into()))
        );
    }

    #[test]
    fn scopes_from_scp_scope_and_scopes() {
        let mut r = req(&[]);
        r.scope_strategy = ScopeStrategy::Exact;
        r.required_scope = vec!["read".into(), "write.all".into()];
        for c in [
            json!({"scp": ["read", "write.all"]}),
            json!({"scp": "read write.all"}),
            json!({"scope": "read write.all"}),
            json!({"scope": ["read", "write.all"]}),
            json!({"scopes": ["read", "write.all"]}),
        ] {
            assert_eq!(check_claims(c.as_object().unwrap(), &r, NOW), Ok(()), "{c}");
        }
        let c = json!({"scp": ["read"]});
        assert_eq!(
            check_claims(c.as_object().unwrap(), &r, NOW),
            Err(JwtError::MissingScope("write.all".into()))
        );
        r.scope_strategy = ScopeStrategy::Hierarchic;
        let c = json!({"scope": "read write"});
        assert_eq!(check_claims(c.as_object().unwrap(), &r, NOW), Ok(()));
        r.scope_strategy = ScopeStrategy::None;
        assert_eq!(
            check_claims(c.as_object().unwrap(), &r, NOW),
            Err(JwtError::ScopeStrategyNone)
        );
        r.required_scope.clear();
        assert_eq!(check_claims(c.as_object().unwrap(), &r, NOW), Ok(()));
    }

    fn token_with(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}.AQID",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn typ_must_name_a_jwt() {
        let body = json!({"sub": "s"});
        for ok in [
            json!({"alg": "RS256", "kid": "k"}),
            json!({"alg": "RS256", "kid": "k", "typ": "JWT"}),
            json!({"alg": "RS256", "kid": "k", "typ": "jwt"}),
            json!({"alg": "RS256", "kid": "k", "typ": "at+jwt"}),
            json!({"alg": "RS256", "kid": "k", "typ": "application/AT+JWT"}),
            json!({"alg": "RS256", "kid": "k", "typ": "application/jwt"}),
        ] {
            assert!(parse(&token_with(&ok, &body)).is_ok(), "{ok}");
        }
        for bad in [
            "JOSE",
            "JWE",
            "dpop+jwt",
            "logout+jwt",
            "secevent+jwt",
            "application/jose",
            "",
            "JWT ",
            "at+jwt;x=1",
        ] {
            let h = json!({"alg": "RS256", "kid": "k", "typ": bad});
            assert_eq!(
                parse(&token_with(&h, &body)).unwrap_err(),
                JwtError::WrongTokenType(bad.to_string()),
                "{bad}"
            );
        }
        let h = json!({"alg": "RS256", "kid": "k", "typ": 1});
        assert!(matches!(
            parse(&token_with(&h, &body)),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn registered_claims_must_have_their_types() {
        let h = json!({"alg": "RS256", "kid": "k", "typ": "JWT"});
        for ok in [
            json!({"iss": "i", "sub": "s", "jti": "j", "exp": 1, "nbf": 1.5, "iat": 0, "aud": "a"}),
            json!({"aud": ["a", "b"]}),
            json!({"aud": []}),
            json!({"other": 1, "scp": ["x"]}),
        ] {
            assert!(parse(&token_with(&h, &ok)).is_ok(), "{ok}");
        }
        for bad in [
            json!({"iss": 1}),
            json!({"iss": ["i"]}),
            json!({"sub": {"id": "s"}}),
            json!({"sub": null}),
            json!({"jti": 7}),
            json!({"exp": "1700000000"}),
            json!({"exp": null}),
            json!({"nbf": true}),
            json!({"iat": [1]}),
            json!({"aud": 1}),
            json!({"aud": ["a", 1]}),
            json!({"aud": [["a"]]}),
            json!({"aud": null}),
        ] {
            assert!(
                matches!(parse(&token_with(&h, &bad)), Err(JwtError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn shape_checks() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("opaque-token"));
        assert!(matches!(parse("a.b"), Err(JwtError::Malformed(_))));
        assert!(matches!(parse("!!.e30.AA"), Err(JwtError::Malformed(_))));
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k","typ":"JWT"}"#);
        let arr = URL_SAFE_NO_PAD.encode(b"[1]");
        assert!(matches!(
            parse(&format!("{h}.{arr}.AA")),
            Err(JwtError::Malformed(_))
        ));
        let body = URL_SAFE_NO_PAD.encode(br#"{"sub":"s"}"#);
        let p = parse(&format!("{h}.{body}.AQID")).unwrap();
        assert_eq!(p.alg, "RS256");
        assert_eq!(p.kid.as_deref(), Some("k"));
        assert_eq!(p.typ.as_deref(), Some("JWT"));
        assert_eq!(p.signature, vec![1, 2, 3]);
        assert_eq!(p.signing_input, format!("{h}.{body}"));
        // Headers: other members are ignored; not an object, a repeated member, or an `alg`,
        // `kid` that is not a string are malformed.
        let with = |header: &str| parse(&format!("{}.{body}.AQID", URL_SAFE_NO_PAD.encode(header)));
        let p = with(r#" {"alg":"ES256","jku":"x","kid":null}"#).unwrap();
        assert_eq!((p.alg.as_str(), p.kid), ("ES256", None));
        for bad in [
            r#"["RS256","k"]"#,
            r#"{"alg":"RS256","alg":"none"}"#,
            r#"{"alg":1}"#,
            r#"{"kid":"k"}"#,
            r#"{"alg":"RS256","kid":7}"#,
            "null",
        ] {
            assert!(matches!(with(bad), Err(JwtError::Malformed(_))), "{bad}");
        }
        for bad in [
            r#"{"alg":"RS256","kid":"k","crit":["exp"],"exp":1}"#,
            r#"{"alg":"RS256","kid":"k","crit":[]}"#,
            r#"{"alg":"RS256","kid":"k","crit":null}"#,
            r#"{"alg":"RS256","kid":"k","b64":false,"crit":["b64"]}"#,
            r#"{"alg":"RS256","kid":"k","b64":true}"#,
            r#"{"alg":"RS256","kid":"k","zip":"DEF"}"#,
        ] {
            assert!(
                matches!(with(bad), Err(JwtError::UnsupportedHeader(_))),
                "{bad}"
            );
        }
        let numeric_kid = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":5}"#);
        assert!(matches!(
            parse(&format!("{numeric_kid}.{body}.AA")),
            Err(JwtError::Malformed(_))
        ));
    }
}
