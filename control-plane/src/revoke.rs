//! Token revocation (RFC 7009, `POST /oauth2/revoke`). The client authenticates; a token it
//! owns is revoked (opaque: row deleted; JWT: `jti` recorded until the token's `exp`). Unknown
//! or invalid tokens still answer 200, as the RFC requires.

use crate::clock;
use crate::crypto::sha256;
use crate::introspect::{inspect_jwt, inspect_opaque};
use crate::oauth2_error::{ErrorCode, OAuth2Error};
use crate::request::Form;
use crate::server::Service;
use crate::token::{OPAQUE_PREFIX, authenticate};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use std::sync::Arc;

pub async fn revoke_endpoint(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Form(params): Form,
) -> Result<StatusCode, OAuth2Error> {
    let client = authenticate(&svc, &headers, &params).await?;
    let token = params.get("token")?.ok_or_else(|| {
        OAuth2Error::invalid_request("The request is missing the token parameter.")
    })?;
    if token.starts_with(crate::grant_tokens::REFRESH_PREFIX) {
        crate::refresh::revoke(&svc, &client, token).await?;
        svc.metrics.revocation();
        return Ok(StatusCode::OK);
    }
    let now = clock::now();
    let found = if token.starts_with(OPAQUE_PREFIX) {
        inspect_opaque(&svc, token, now).await?
    } else {
        inspect_jwt(&svc, token, now)
    };
    let Some(active) = found else {
        return Ok(StatusCode::OK);
    };
    if active.client_id != client.client.client_id {
        return Err(OAuth2Error::new(
            ErrorCode::UnauthorizedClient,
            "The token was not issued to the client making the revocation request.",
        ));
    }
    match active.jti {
        Some(jti) => svc.revoke_jti(jti, active.exp).await?,
        None => {
            let hash = sha256(token.as_bytes());
            let store = Arc::clone(&svc.store);
            crate::store::on_blocking_pool(move || store.delete_opaque_token(&hash)).await?;
        }
    }
    svc.metrics.revocation();
    Ok(StatusCode::OK)
}
