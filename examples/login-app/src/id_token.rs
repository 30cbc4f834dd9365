//! Verifying the ID token as a relying party must (OpenID Connect Core 3.1.3.7): signature
//! against the issuer's JWKS with an algorithm this app expects (never `none`, never HMAC),
//! `iss` exactly the issuer, `aud` containing this client, `exp` in the future, and `nonce`
//! equal to the one this browser's authorization request carried.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::AppError;

/// The algorithms the token service can sign with (`--signing-alg`).
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// What the callback page shows about a verified token.
pub struct Verified {
    pub claims: serde_json::Map<String, Value>,
    pub alg: Algorithm,
    pub kid: String,
}

/// The `sid` of an ID token this app verified earlier (stored in its session table): the
/// payload is read without checking again.
pub fn sid(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("sid")?.as_str().map(str::to_string)
}

pub fn verify(
    id_token: &str,
    access_token: &str,
    jwks: &JwkSet,
    issuer: &str,
    client_id: &str,
    nonce: &str,
) -> Result<Verified, AppError> {
    let refuse = |why: String| AppError::IdToken(why);
    let header = jsonwebtoken::decode_header(id_token).map_err(|e| refuse(e.to_string()))?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(refuse(format!("unexpected algorithm {:?}", header.alg)));
    }
    let kid = header
        .kid
        .ok_or_else(|| refuse("the header names no key (kid)".into()))?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| refuse(format!("key {kid} is not in the issuer's JWKS")))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| refuse(e.to_string()))?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let claims =
        jsonwebtoken::decode::<serde_json::Map<String, Value>>(id_token, &key, &validation)
            .map_err(|e| refuse(e.to_string()))?
            .claims;
    if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return Err(refuse(
            "its nonce is not the one this browser sent (a replayed or injected token)".into(),
        ));
    }
    // at_hash binds the access token to this ID token (OIDC Core 3.1.3.8). The token service
    // hashes with SHA-256 whatever it signs with, as Hydra does.
    if let Some(at_hash) = claims.get("at_hash").and_then(Value::as_str) {
        let digest = Sha256::digest(access_token.as_bytes());
        if URL_SAFE_NO_PAD.encode(&digest[..16]) != at_hash {
            return Err(refuse("at_hash does not match the access token".into()));
        }
    }
    Ok(Verified {
        claims,
        alg: header.alg,
        kid,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::Algorithm;
    use jsonwebtoken::jwk::JwkSet;
    use portcullis_e2e::keys::{self, ISSUER};
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};

    use super::verify;

    const CLIENT: &str = "example-client";
    const NONCE: &str = "nonce-of-this-browser";
    const ACCESS: &str = "the-access-token";

    fn claims() -> Value {
        let now = keys::now();
        let at_hash = URL_SAFE_NO_PAD.encode(&Sha256::digest(ACCESS.as_bytes())[..16]);
        json!({"iss": ISSUER, "sub": "alice", "aud": [CLIENT], "iat": now, "exp": now + 600,
               "nonce": NONCE, "at_hash": at_hash})
    }

    fn check(token: &str) -> Result<(), String> {
        let jwks: JwkSet = serde_json::from_value(keys::keys().jwks()).unwrap();
        verify(token, ACCESS, &jwks, ISSUER, CLIENT, NONCE)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        let mut c = claims();
        edit(c.as_object_mut().unwrap());
        c
    }

    #[test]
    fn a_token_of_the_issuer_for_this_client_and_browser_is_accepted() {
        for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            check(&keys::mint_default(alg, &claims())).unwrap();
        }
    }

    #[test]
    fn hostile_or_misdirected_tokens_are_refused() {
        let rs = |c: &Value| keys::mint_default(Algorithm::RS256, c);
        let now = keys::now();
        let cases = [
            ("no nonce", rs(&with(|c| drop(c.remove("nonce"))))),
            (
                "another browser's nonce",
                rs(&with(|c| drop(c.insert("nonce".into(), json!("other"))))),
            ),
            (
                "another client",
                rs(&with(|c| {
                    drop(c.insert("aud".into(), json!(["other-client"])))
                })),
            ),
            (
                "another issuer",
                rs(&with(|c| {
                    drop(c.insert("iss".into(), json!("https://evil.example/")))
                })),
            ),
            (
                "expired",
                rs(&with(|c| drop(c.insert("exp".into(), json!(now - 3600))))),
            ),
            (
                "at_hash of another token",
                rs(&with(|c| {
                    drop(c.insert("at_hash".into(), json!("AAAAAAAAAAAAAAAAAAAAAA")))
                })),
            ),
            ("alg none", keys::alg_none(&claims())),
            (
                "HS256 keyed with the public key",
                keys::hs256_with_public_key(&claims()),
            ),
            (
                "unknown kid",
                keys::mint(Algorithm::RS256, "not-in-jwks", &claims()),
            ),
            (
                "tampered payload",
                keys::tampered_payload(
                    &rs(&claims()),
                    &with(|c| drop(c.insert("sub".into(), json!("mallory")))),
                ),
            ),
            ("RS384", keys::mint_default(Algorithm::RS384, &claims())),
        ];
        for (what, token) in cases {
            assert!(check(&token).is_err(), "{what} was accepted");
        }
    }
}
