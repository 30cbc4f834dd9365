//! ID tokens (OpenID Connect Core 2): the claims Hydra puts in them, signed with the service's
//! current signing key (published in the JWKS and rotated with the access-token keys).

use crate::crypto::{b64url, b64url_decode, sha256};
use crate::grant_tokens::Grant;
use crate::keys::ACCESS_TOKEN_SET;
use crate::server::Service;
use serde_json::{Map, Value, json};

/// Claims the consent app's `session.id_token` may not set: they carry the server's assertions.
const RESERVED: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "auth_time",
    "nonce",
    "at_hash",
    "c_hash",
    "acr",
    "amr",
    "sid",
    "azp",
    "rat",
];

/// `at_hash`: the left half of the SHA-256 of the access token, base64url (OIDC Core 3.1.3.6;
/// SHA-256 matches RS256 and ES256).
pub fn at_hash(access_token: &str) -> String {
    let digest = sha256(access_token.as_bytes());
    b64url(digest.get(..16).unwrap_or(&digest))
}

/// The claims of an ID token for `grant`, issued at `now` for `ttl` seconds.
pub fn claims(
    issuer: &str,
    grant: &Grant,
    access_token: &str,
    now: i64,
    ttl: i64,
) -> Map<String, Value> {
    let mut c = Map::new();
    if let Value::Object(extra) = &grant.id_token_claims {
        for (k, v) in extra {
            if !RESERVED.contains(&k.as_str()) {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c.insert("iss".into(), json!(issuer));
    c.insert("sub".into(), json!(grant.subject));
    c.insert("aud".into(), json!([grant.client_id]));
    c.insert("exp".into(), json!(now.saturating_add(ttl)));
    c.insert("iat".into(), json!(now));
    c.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
    c.insert("auth_time".into(), json!(grant.auth_time));
    c.insert("rat".into(), json!(grant.requested_at));
    if let Some(n) = &grant.nonce {
        c.insert("nonce".into(), json!(n));
    }
    c.insert("at_hash".into(), json!(at_hash(access_token)));
    if !grant.acr.is_empty() {
        c.insert("acr".into(), json!(grant.acr));
    }
    if !grant.amr.is_empty() {
        c.insert("amr".into(), json!(grant.amr));
    }
    c.insert("sid".into(), json!(grant.sid));
    c
}

/// The claims of an ID token this server signed (`id_token_hint`): signature by one of our keys
/// (an expired token is fine, as OIDC allows for hints), our issuer, and a `sid` (which access
/// tokens do not have, so one cannot stand in for an ID token).
pub fn verify_hint(svc: &Service, token: &str) -> Option<Map<String, Value>> {
    let (signed, sig) = token.rsplit_once('.')?;
    let (header_b64, claims_b64) = signed.split_once('.')?;
    let header: Value = serde_json::from_slice(&b64url_decode(header_b64)?).ok()?;
    let ring = svc.keys.ring();
    let key = ring.find(ACCESS_TOKEN_SET, header.get("kid")?.as_str()?)?;
    if header.get("alg")?.as_str()? != key.alg.as_str()
        || !key.verify(signed.as_bytes(), &b64url_decode(sig)?)
    {
        return None;
    }
    let claims: Map<String, Value> = serde_json::from_slice(&b64url_decode(claims_b64)?).ok()?;
    let ok = claims.get("iss").and_then(Value::as_str) == Some(svc.config.issuer.as_str())
        && claims
            .get("sid")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        && claims
            .get("sub")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
    ok.then_some(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_matches_the_spec_example() {
        // OIDC Core appendix A.3: access token and its at_hash.
        assert_eq!(
            at_hash("jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
    }

    #[test]
    fn session_claims_cannot_override_reserved_ones() {
        let grant = Grant {
            subject: "alice".into(),
            client_id: "app".into(),
            nonce: Some("n0nce-123".into()),
            sid: "s1".into(),
            auth_time: 5,
            id_token_claims: json!({"sub": "mallory", "iss": "x", "email": "a@example.com"}),
            ..Grant::default()
        };
        let c = claims("https://issuer", &grant, "at", 100, 60);
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["iss"], "https://issuer");
        assert_eq!(c["aud"], json!(["app"]));
        assert_eq!(c["email"], "a@example.com");
        assert_eq!(c["exp"], 160);
        assert_eq!(c["nonce"], "n0nce-123");
        assert_eq!(c["sid"], "s1");
        assert_eq!(c["auth_time"], 5);
        assert!(!c.contains_key("acr"));
    }
}
