//! Discovery documents (`/.well-known/openid-configuration`, RFC 8414
//! `/.well-known/oauth-authorization-server`) and the public JWKS.

use crate::clock;
use crate::keys::{ACCESS_TOKEN_SET, Alg};
use crate::server::{Config, Service};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// `signing_alg`: the algorithm of the key that signs now (a key rotated in over the admin API
/// may differ from the configured one), so the document never names an algorithm we do not use.
pub fn metadata(config: &Config, signing_alg: Alg) -> Value {
    let base = config.issuer.trim_end_matches('/');
    json!({
        "issuer": config.issuer,
        // OpenID discovery requires it (and so do client libraries that parse this document);
        // the endpoint exists but refuses every response type: this server is M2M only.
        "authorization_endpoint": format!("{base}/oauth2/auth"),
        "token_endpoint": config.token_endpoint(),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["token"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported":
            ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
        "revocation_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "scopes_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [signing_alg.as_str()],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scp"],
        "request_parameter_supported": false,
    })
}

/// `/oauth2/auth`: browser flows are not offered (RFC 6749 4.1.2.1 error, no redirect since no
/// client redirect URI can be trusted here).
pub async fn authorization_endpoint() -> crate::oauth2_error::OAuth2Error {
    crate::oauth2_error::OAuth2Error::new(
        crate::oauth2_error::ErrorCode::UnsupportedResponseType,
        "This server only issues tokens with the client_credentials grant.",
    )
}

pub async fn discovery_endpoint(State(svc): State<Arc<Service>>) -> Response {
    let alg = svc
        .keys
        .ring()
        .current(ACCESS_TOKEN_SET)
        .map_or(svc.config.signing_alg, |k| k.alg);
    axum::Json(metadata(&svc.config, alg)).into_response()
}

pub async fn jwks_endpoint(State(svc): State<Arc<Service>>) -> Response {
    let jwks = svc.keys.ring().jwks(ACCESS_TOKEN_SET, clock::now());
    let mut resp = axum::Json(jwks).into_response();
    // Verifiers cache the set; short enough that a rotation is seen well before the old key goes.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}
