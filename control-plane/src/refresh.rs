//! `grant_type=refresh_token`: strict rotation (every use returns a new refresh token and ends
//! the old one, with the access token issued beside it) and reuse detection (presenting a
//! rotated-out token revokes the whole chain: someone else holds a copy). The store's
//! compare-and-set gives concurrent refreshes of one token exactly one winner.

use crate::client::ClientRecord;
use crate::clock;
use crate::flow::secs;
use crate::grant_tokens::{self, Lifetimes, REFRESH_PREFIX, RefreshState};
use crate::oauth2_error::{ErrorCode, OAuth2Error};
use crate::request::Params;
use crate::server::Service;
use crate::store::{self, StoredRefreshToken};
use axum::response::Response;
use std::sync::Arc;

/// Whether a rotated-out refresh token still works: used within the grace period
/// (`--refresh-token-rotation-grace-period`, Hydra's `rotation_grace_period`).
pub fn in_grace(svc: &Service, row: &StoredRefreshToken, now: i64) -> bool {
    let grace = secs(svc.config.flows.refresh_grace_period);
    !row.active && grace > 0 && row.used_at.is_some_and(|u| u.saturating_add(grace) > now)
}

fn invalid_grant(d: impl Into<String>) -> OAuth2Error {
    OAuth2Error::new(ErrorCode::InvalidGrant, d)
}

/// RFC 7009 for a refresh token: revokes its whole grant (every refresh token of the chain and
/// the access tokens issued with them), as Hydra. Unknown tokens are no error.
pub async fn revoke(svc: &Service, client: &ClientRecord, token: &str) -> Result<(), OAuth2Error> {
    let hash = grant_tokens::refresh_token_key(token);
    let Some(row) = store::read(&svc.store, move |s| s.get_refresh_token(&hash)).await? else {
        return Ok(());
    };
    if row.client_id != client.client.client_id {
        return Err(OAuth2Error::new(
            ErrorCode::UnauthorizedClient,
            "The token was not issued to the client making the revocation request.",
        ));
    }
    grant_tokens::revoke_grant(svc, row.chain_key(), &[]).await
}

pub async fn exchange(
    svc: &Service,
    client: &ClientRecord,
    params: &Params,
) -> Result<Response, OAuth2Error> {
    if !client.has_grant("refresh_token") {
        return Err(OAuth2Error::new(
            ErrorCode::UnauthorizedClient,
            "The OAuth 2.0 Client is not allowed to use the refresh_token grant.",
        ));
    }
    let token = params
        .get("refresh_token")?
        .ok_or_else(|| OAuth2Error::invalid_request("The request is missing the refresh_token."))?;
    let unknown = || invalid_grant("The refresh token is invalid or has expired.");
    if !token.starts_with(REFRESH_PREFIX) {
        return Err(unknown());
    }
    let hash = grant_tokens::refresh_token_key(token);
    let row = store::read(&svc.store, move |s| s.get_refresh_token(&hash))
        .await?
        .ok_or_else(unknown)?;
    if row.client_id != client.client.client_id {
        return Err(invalid_grant(
            "The refresh token was issued to another client.",
        ));
    }
    let now = clock::now();
    let in_grace = in_grace(svc, &row, now);
    if !row.active && !in_grace {
        grant_tokens::revoke_grant(svc, row.chain_key(), &[]).await?;
        return Err(invalid_grant(
            "The refresh token has already been used; every token of its grant is revoked.",
        ));
    }
    if row.expires_at <= now {
        return Err(unknown());
    }
    let state: RefreshState = serde_json::from_str(&row.json).map_err(OAuth2Error::server_error)?;
    // The original grant, never narrowed or widened by a `scope` parameter (as Hydra).
    let grant = &state.grant;
    let life = client.lifespans;
    let issued = grant_tokens::mint(
        svc,
        client,
        grant,
        Lifetimes {
            access: life
                .refresh_access
                .unwrap_or(svc.config.access_token_ttl_secs()),
            id: life
                .refresh_id
                .unwrap_or(secs(svc.config.flows.id_token_ttl)),
            refresh: life
                .refresh_refresh
                .unwrap_or(secs(svc.config.flows.refresh_token_ttl)),
        },
    )?;
    let Some(new_row) = issued.refresh_row.clone() else {
        return Err(invalid_grant(
            "The grant no longer allows refresh tokens (offline scope or refresh_token grant missing).",
        ));
    };
    // One transaction with the rotation: the userinfo row of the new access token and, strict
    // rotation, the revocation of the access token issued with the old refresh token.
    let mut rows = issued.access_rows(grant)?;
    let revoked_old = state.end_access(&mut rows, now);
    let store = Arc::clone(&svc.store);
    let won = if in_grace {
        // Within the grace period the used token rotates again, without a race to win.
        // A rare path: its writes need not share a commit.
        store::on_blocking_pool(move || {
            store.insert_refresh_token(&new_row)?;
            store.put_step_rows(&rows)?;
            Ok(true)
        })
        .await?
    } else {
        store
            .rotate_refresh_token_async(hash, new_row, now, rows)
            .await?
    };
    if !won {
        return Err(OAuth2Error::invalid_request(
            "The refresh token was used by a concurrent request; it is no longer valid.",
        ));
    }
    if let Some((jti, exp)) = revoked_old {
        svc.revoked_persisted(jti, exp);
    }
    Ok(grant_tokens::response(&issued, grant))
}
