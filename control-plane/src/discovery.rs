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
        "authorization_endpoint": format!("{base}/oauth2/auth"),
        "token_endpoint": config.token_endpoint(),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "end_session_endpoint": format!("{base}/oauth2/sessions/logout"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        // The browser grants only when the login and consent apps are configured.
        "grant_types_supported": if config.flows.login_url.is_some() {
            json!(["authorization_code", "refresh_token", "client_credentials"])
        } else {
            json!(["client_credentials"])
        },
        // Only the code flow: implicit and hybrid response types are not offered.
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        // Plain is refused (as Hydra does in practice, though Hydra still lists it).
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported":
            ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
        "revocation_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "scopes_supported": ["openid", "offline", "offline_access"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [signing_alg.as_str()],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "jti", "auth_time", "nonce",
            "at_hash", "acr", "amr", "sid", "rat", "nbf", "client_id", "scp"],
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
        // Sent to the clients of every ended login session (see crate::backchannel_logout and
        // crate::frontchannel_logout), always with `sid`.
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "frontchannel_logout_supported": true,
        "frontchannel_logout_session_supported": true,
    })
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
