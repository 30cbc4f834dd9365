//! The token endpoint (`POST /oauth2/token`): client authentication, the `client_credentials`
//! grant with scope and audience checks, and issuing JWT or opaque access tokens. Issuing a JWT
//! touches no database: clients and keys are in memory.

use crate::client::{AuthError, AuthMethod, ClientRecord};
use crate::clock;
use crate::crypto::{b64url, random_bytes, sha256};
use crate::keys::ACCESS_TOKEN_SET;
use crate::oauth2_error::{ErrorCode, OAuth2Error};
use crate::request::{Form, Params, basic_credentials};
use crate::server::Service;
use crate::store::StoredOpaqueToken;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::scope::ScopeStrategy;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// Opaque access tokens start with this, so a token's kind is known without a lookup.
pub const OPAQUE_PREFIX: &str = "ptc_at_";
/// The one message of every failed client authentication (unknown client, wrong secret, wrong
/// method, bad assertion): the answer must not tell which client ids exist or how they
/// authenticate.
pub const AUTH_FAILED: &str = "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method).";
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Claims of our JWT access tokens (Hydra's names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scp: Vec<String>,
    /// A person's token: the consent's `session.access_token` claims (Hydra's `ext`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub ext: Value,
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
}

/// Authenticates the client of a token or revocation request with whichever method it used.
pub async fn authenticate(
    svc: &Service,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Arc<ClientRecord>, OAuth2Error> {
    authenticate_for(svc, headers, params, false).await
}

/// Like [`authenticate`]; `allow_public` lets a public client (auth method `none`) identify
/// itself by `client_id` alone, for the grants that allow it (authorization code, refresh).
pub async fn authenticate_for(
    svc: &Service,
    headers: &HeaderMap,
    params: &Params,
    allow_public: bool,
) -> Result<Arc<ClientRecord>, OAuth2Error> {
    let basic = basic_credentials(headers)?;
    let used_basic = basic.is_some();
    authenticate_inner(svc, basic, params, allow_public)
        .await
        .map_err(|e| e.with_basic_challenge(used_basic))
}

async fn authenticate_inner(
    svc: &Service,
    basic: Option<(String, String)>,
    params: &Params,
    allow_public: bool,
) -> Result<Arc<ClientRecord>, OAuth2Error> {
    let post_id = params.get("client_id")?;
    let post_secret = params.get("client_secret")?;
    let assertion_type = params.get("client_assertion_type")?;
    let assertion = params.get("client_assertion")?;
    let methods = [
        basic.is_some(),
        post_secret.is_some(),
        assertion.is_some() || assertion_type.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if methods > 1 {
        return Err(OAuth2Error::invalid_request(
            "The client used more than one authentication method.",
        ));
    }
    if let Some((id, secret)) = basic {
        if post_id.is_some_and(|p| p != id) {
            return Err(OAuth2Error::invalid_request(
                "The client_id parameter does not match the client authenticated with HTTP Basic.",
            ));
        }
        return with_secret(svc, &id, &secret, AuthMethod::ClientSecretBasic).await;
    }
    if assertion.is_some() || assertion_type.is_some() {
        return crate::assertion::authenticate(svc, assertion_type, assertion, post_id).await;
    }
    if let (Some(id), Some(secret)) = (post_id, post_secret) {
        return with_secret(svc, id, secret, AuthMethod::ClientSecretPost).await;
    }
    if let Some(id) = post_id
        && let Some(public) = svc
            .clients
            .lookup(id)
            .filter(|c| c.auth_method == AuthMethod::None)
        && allow_public
    {
        return Ok(public);
    }
    Err(OAuth2Error::invalid_client(AUTH_FAILED))
}

async fn with_secret(
    svc: &Service,
    id: &str,
    secret: &str,
    used: AuthMethod,
) -> Result<Arc<ClientRecord>, OAuth2Error> {
    // The secret is checked first (against a dummy for unknown clients) so that every failure
    // costs the same slow hash and answers the same message.
    let rec =
        svc.clients
            .authenticate_secret(id, secret)
            .await
            .map_err(|e: AuthError| match e {
                AuthError::Unavailable(detail) => OAuth2Error::unavailable(detail),
                e => {
                    tracing::debug!(client_id = id, reason = %e, "client authentication failed");
                    OAuth2Error::invalid_client(AUTH_FAILED)
                }
            })?;
    if rec.auth_method != used {
        tracing::debug!(
            client_id = id,
            registered = rec.auth_method.as_str(),
            used = used.as_str(),
            "client authentication failed: wrong method"
        );
        return Err(OAuth2Error::invalid_client(AUTH_FAILED));
    }
    Ok(rec)
}

/// fosite's default audience matching: exact, or a URL below an allowed URL.
pub fn audience_allowed(allowed: &[String], requested: &str) -> bool {
    allowed.iter().any(|a| {
        if a == requested {
            return true;
        }
        if a.contains("://") {
            let base = a.trim_end_matches('/');
            return requested
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/'));
        }
        false
    })
}

/// Checks requested scopes and audiences against the client's allow-lists.
pub fn check_request(
    client: &ClientRecord,
    strategy: ScopeStrategy,
    scopes: &[String],
    audience: &[String],
) -> Result<(), OAuth2Error> {
    for s in scopes {
        if !strategy.satisfied(&client.scopes, s) {
            return Err(OAuth2Error::new(
                ErrorCode::InvalidScope,
                format!("The OAuth 2.0 Client is not allowed to request scope {s:?}."),
            ));
        }
    }
    for a in audience {
        if !audience_allowed(&client.client.audience, a) {
            return Err(OAuth2Error::invalid_request(format!(
                "Requested audience {a:?} has not been whitelisted by the OAuth 2.0 Client."
            )));
        }
    }
    Ok(())
}

pub async fn token_endpoint(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    form: Result<Form, OAuth2Error>,
) -> Response {
    let result = match form {
        Ok(Form(params)) => grant(&svc, &headers, &params).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => {
            svc.metrics.token_error(e.code.as_str());
            e.into_response()
        }
    }
}

async fn grant(
    svc: &Service,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Response, OAuth2Error> {
    let grant_type = params
        .get("grant_type")?
        .ok_or_else(|| {
            OAuth2Error::invalid_request("The request is missing the grant_type parameter.")
        })?
        .to_string();
    svc.require_current()?;
    let browser_grant = matches!(grant_type.as_str(), "authorization_code" | "refresh_token");
    let client = authenticate_for(svc, headers, params, browser_grant).await?;
    match grant_type.as_str() {
        "authorization_code" => return crate::code_grant::exchange(svc, &client, params).await,
        "refresh_token" => return crate::refresh::exchange(svc, &client, params).await,
        _ => {}
    }
    if grant_type != "client_credentials" {
        return Err(OAuth2Error::new(
            ErrorCode::UnsupportedGrantType,
            format!("The grant type {grant_type:?} is not supported by this server."),
        ));
    }
    if !client.has_grant("client_credentials") {
        return Err(OAuth2Error::new(
            ErrorCode::UnauthorizedClient,
            "The OAuth 2.0 Client is not allowed to use the client_credentials grant.",
        ));
    }
    let scopes: Vec<String> = params
        .get("scope")?
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let audience = params.all_split("audience");
    check_request(&client, svc.config.scope_strategy, &scopes, &audience)?;
    let (token, expires_in) = issue(svc, &client, scopes.clone(), audience).await?;
    let mut resp = axum::Json(TokenResponse {
        access_token: &token,
        token_type: "bearer",
        expires_in,
        scope: scopes.join(" "),
    })
    .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// Issues an access token for `client`; returns it with its lifetime in seconds.
pub async fn issue(
    svc: &Service,
    client: &ClientRecord,
    scopes: Vec<String>,
    audience: Vec<String>,
) -> Result<(String, i64), OAuth2Error> {
    let ttl = client
        .lifespan_secs
        .unwrap_or(svc.config.access_token_ttl_secs());
    let now = clock::now();
    // Lifespans are bounded at registration; this keeps `exp` sane whatever slipped through.
    let exp = crate::lifespan::expiry(now, ttl);
    let ttl = exp - now;
    if client.opaque {
        let raw = random_bytes::<32>().map_err(OAuth2Error::server_error)?;
        let token = format!("{OPAQUE_PREFIX}{}", b64url(&raw));
        let row = StoredOpaqueToken {
            hash: sha256(token.as_bytes()),
            client_id: client.client.client_id.clone(),
            subject: client.client.client_id.clone(),
            scopes,
            audience,
            issued_at: now,
            expires_at: exp,
            grant_id: None,
            ext: None,
        };
        let store = Arc::clone(&svc.store);
        crate::store::on_blocking_pool(move || store.insert_opaque_token(&row)).await?;
        svc.metrics.token_issued("opaque");
        return Ok((token, ttl));
    }
    let ring = svc.keys.ring();
    let key = ring
        .current(ACCESS_TOKEN_SET)
        .ok_or_else(|| OAuth2Error::server_error("no signing key for access tokens"))?;
    let claims = AccessClaims {
        iss: svc.config.issuer.clone(),
        sub: client.client.client_id.clone(),
        aud: audience,
        exp,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        client_id: client.client.client_id.clone(),
        scp: scopes,
        ext: Value::Null,
    };
    let jwt = key
        .sign_jwt(&claims, &svc.keys.rng)
        .map_err(OAuth2Error::server_error)?;
    svc.metrics.token_issued(key.alg.as_str());
    Ok((jwt, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_matching() {
        let allowed = vec![
            "https://api.example.com/v1".to_string(),
            "plain".to_string(),
        ];
        assert!(audience_allowed(&allowed, "https://api.example.com/v1"));
        assert!(audience_allowed(
            &allowed,
            "https://api.example.com/v1/users"
        ));
        assert!(!audience_allowed(&allowed, "https://api.example.com/v10"));
        assert!(!audience_allowed(&allowed, "https://api.example.com"));
        assert!(audience_allowed(&allowed, "plain"));
        assert!(!audience_allowed(&allowed, "plain/x"));
        assert!(!audience_allowed(&[], "plain"));
    }
}
