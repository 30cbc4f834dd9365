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
    let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(id_token, &key, &validation)
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
