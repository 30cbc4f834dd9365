//! `private_key_jwt` client authentication (RFC 7523 section 2.2 / OpenID Connect Core 9): the
//! client signs a JWT with `iss` = `sub` = its id, `aud` = our token endpoint, `exp` and a
//! single-use `jti`, verified against the client's registered `jwks`.

use crate::client::{AuthMethod, ClientRecord};
use crate::clock;
use crate::crypto::b64url_decode;
use crate::oauth2_error::OAuth2Error;
use crate::server::Service;
use crate::token::JWT_BEARER_ASSERTION;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::sync::Arc;

/// An assertion may not live longer than this (bounds the replay table).
const MAX_ASSERTION_LIFETIME: i64 = 24 * 3600;

#[derive(Deserialize)]
struct UnverifiedClaims {
    iss: Option<String>,
    sub: Option<String>,
}

#[derive(Deserialize)]
struct VerifiedClaims {
    sub: String,
    exp: i64,
    jti: Option<String>,
}

fn invalid(reason: impl Into<String>) -> OAuth2Error {
    OAuth2Error::invalid_client(format!(
        "The client assertion is invalid: {}",
        reason.into()
    ))
}

pub async fn authenticate(
    svc: &Service,
    assertion_type: Option<&str>,
    assertion: Option<&str>,
    client_id_param: Option<&str>,
) -> Result<Arc<ClientRecord>, OAuth2Error> {
    if assertion_type != Some(JWT_BEARER_ASSERTION) {
        return Err(OAuth2Error::invalid_request(format!(
            "client_assertion_type must be {JWT_BEARER_ASSERTION:?}."
        )));
    }
    let assertion = assertion.ok_or_else(|| {
        OAuth2Error::invalid_request("The client_assertion parameter is missing.")
    })?;
    let payload = assertion
        .split('.')
        .nth(1)
        .and_then(b64url_decode)
        .ok_or_else(|| invalid("not a compact JWS"))?;
    let unverified: UnverifiedClaims = serde_json::from_slice(&payload)
        .map_err(|_| invalid("the claims are not a JSON object"))?;
    let client_id = unverified.sub.ok_or_else(|| invalid("sub is missing"))?;
    if unverified.iss.as_deref() != Some(client_id.as_str()) {
        return Err(invalid("iss must equal sub (the client id)"));
    }
    if client_id_param.is_some_and(|p| p != client_id) {
        return Err(invalid("client_id does not match the assertion's subject"));
    }
    let rec = svc
        .clients
        .lookup(&client_id)
        .ok_or_else(|| invalid("unknown client"))?;
    if rec.auth_method != AuthMethod::PrivateKeyJwt {
        return Err(OAuth2Error::invalid_client(format!(
            "The OAuth 2.0 Client supports client authentication method {:?}, but method \"private_key_jwt\" was requested.",
            rec.auth_method.as_str()
        )));
    }
    let jwks: JwkSet = match &rec.client.jwks {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| invalid("the client's jwks is unusable"))?,
        None => {
            return Err(invalid(
                "the client registered a jwks_uri, which is not supported yet; register jwks",
            ));
        }
    };
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| invalid(e.to_string()))?;
    if matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(invalid("symmetric algorithms are not accepted"));
    }
    let audiences = [svc.config.token_endpoint(), svc.config.issuer.clone()];
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&audiences);
    validation.set_issuer(&[client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = 30;

    let candidates = jwks
        .keys
        .iter()
        .filter(|k| match (&header.kid, &k.common.key_id) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => true,
        });
    let mut verified = None;
    let mut last_error = String::from("no registered key matches the assertion's kid");
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<VerifiedClaims>(assertion, &key, &validation) {
            Ok(data) => {
                verified = Some(data.claims);
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let claims = verified.ok_or_else(|| invalid(last_error))?;
    if claims.sub != client_id {
        return Err(invalid("sub must equal the client id"));
    }
    let now = clock::now();
    if claims.exp - now > MAX_ASSERTION_LIFETIME {
        return Err(invalid("exp is too far in the future"));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty())
        .ok_or_else(|| invalid("jti is missing"))?;
    let store = Arc::clone(&svc.store);
    let id = client_id.clone();
    let first_use = tokio::task::spawn_blocking(move || {
        store.use_assertion_jti(&id, &jti, claims.exp.max(now) + 60)
    })
    .await
    .map_err(OAuth2Error::server_error)??;
    if !first_use {
        return Err(invalid("jti has already been used"));
    }
    Ok(rec)
}
