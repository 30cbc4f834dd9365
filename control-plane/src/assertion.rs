//! `private_key_jwt` client authentication (RFC 7523 section 2.2 / OpenID Connect Core 9): the
//! client signs a JWT with `iss` = `sub` = its id, `aud` = our token endpoint, `exp` (and
//! optionally `nbf`) and a single-use `jti`, verified against the client's registered `jwks` or
//! the key set at its `jwks_uri` ([`crate::jwks_uri`], refetched when an unknown `kid` shows up).
//!
//! Once the assertion names a client, every failure answers the same generic `invalid_client`
//! (the reason is logged): whether a client exists, which method it uses, or what its
//! `jwks_uri` answered is nobody's business who cannot authenticate as it.

use crate::client::{AuthMethod, ClientRecord};
use crate::clock;
use crate::crypto::b64url_decode;
use crate::oauth2_error::OAuth2Error;
use crate::server::Service;
use crate::token::JWT_BEARER_ASSERTION;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;
use std::sync::Arc;

enum VerifyFailure {
    /// No key of the set matches the assertion's `kid` (a refetch may help).
    NoKey,
    Invalid(String),
}

fn verify_with(
    jwks: &JwkSet,
    header: &Header,
    assertion: &str,
    validation: &Validation,
) -> Result<VerifiedClaims, VerifyFailure> {
    let mut last_error = None;
    let header_alg = format!("{:?}", header.alg);
    for jwk in jwks
        .keys
        .iter()
        .filter(|k| match (&header.kid, &k.common.key_id) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => true,
        })
    {
        // A key labelled with an algorithm verifies only that algorithm (RFC 7517 4.4): an RSA
        // key for RS256 must not accept a PS256 signature.
        if let Some(alg) = &jwk.common.key_algorithm
            && alg.to_string() != header_alg
        {
            last_error = Some(format!(
                "the header alg {header_alg} differs from the key's alg {alg}"
            ));
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<VerifiedClaims>(assertion, &key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    Err(last_error.map_or(VerifyFailure::NoKey, VerifyFailure::Invalid))
}

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

/// A malformed assertion, before it names a client: the reason helps the developer and says
/// nothing about our clients.
fn invalid(reason: impl Into<String>) -> OAuth2Error {
    OAuth2Error::invalid_client(format!(
        "The client assertion is invalid: {}",
        reason.into()
    ))
}

/// Any failure once the assertion names a client: one message, the reason only in the log.
fn failed(client_id: &str, reason: impl std::fmt::Display) -> OAuth2Error {
    tracing::debug!(client_id, reason = %reason, "private_key_jwt authentication failed");
    OAuth2Error::invalid_client(crate::token::AUTH_FAILED)
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
    let rec = svc.clients.lookup(&client_id);
    let rec = match rec {
        Some(r) if r.auth_method == AuthMethod::PrivateKeyJwt => r,
        Some(_) => return Err(failed(&client_id, "the client uses another method")),
        None => return Err(failed(&client_id, "unknown client")),
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
    validation.validate_nbf = true;
    validation.leeway = 30;

    let claims = match &rec.client.jwks {
        Some(v) => {
            let jwks: JwkSet = serde_json::from_value(v.clone())
                .map_err(|e| failed(&client_id, format!("the client's jwks is unusable: {e}")))?;
            verify_with(&jwks, &header, assertion, &validation)
        }
        None => {
            let uri = &rec.client.jwks_uri;
            let jwks = svc
                .jwks_fetcher
                .get(uri, false)
                .await
                .map_err(|e| failed(&client_id, e))?;
            match verify_with(&jwks, &header, assertion, &validation) {
                Err(VerifyFailure::NoKey) => {
                    let jwks = svc
                        .jwks_fetcher
                        .get(uri, true)
                        .await
                        .map_err(|e| failed(&client_id, e))?;
                    verify_with(&jwks, &header, assertion, &validation)
                }
                other => other,
            }
        }
    };
    let claims = claims.map_err(|e| match e {
        VerifyFailure::NoKey => failed(&client_id, "no registered key matches the assertion's kid"),
        VerifyFailure::Invalid(e) => failed(&client_id, e),
    })?;
    if claims.sub != client_id {
        return Err(failed(&client_id, "sub must equal the client id"));
    }
    let now = clock::now();
    if claims.exp.saturating_sub(now) > MAX_ASSERTION_LIFETIME {
        return Err(failed(&client_id, "exp is too far in the future"));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty())
        .ok_or_else(|| failed(&client_id, "jti is missing"))?;
    let store = Arc::clone(&svc.store);
    let id = client_id.clone();
    let first_use = crate::store::on_blocking_pool(move || {
        store.use_assertion_jti(&id, &jti, claims.exp.max(now).saturating_add(60))
    })
    .await?;
    if !first_use {
        return Err(failed(&client_id, "jti has already been used"));
    }
    Ok(rec)
}
