//! The tokens of a person's grant (authorization code or refresh): a JWT access token for the
//! subject (with the consent's `session.access_token` as `ext`), an ID token with `openid`, and
//! a rotating refresh token with `offline`/`offline_access`. Shared by [`crate::code_grant`]
//! and [`crate::refresh`], along with revoking everything a grant issued.

use crate::client::ClientRecord;
use crate::clock;
use crate::crypto::{b64url, random_bytes, sha256};
use crate::keys::ACCESS_TOKEN_SET;
use crate::oauth2_error::OAuth2Error;
use crate::server::Service;
use crate::store::StoredRefreshToken;
use crate::token::AccessClaims;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

pub const REFRESH_PREFIX: &str = "ory_rt_";

/// What the user granted to one client: everything a token of the grant is built from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Grant {
    /// Hydra's `consent_request_id`: names the token chain.
    pub grant_id: String,
    pub client_id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
    pub access_token_claims: Value,
    pub id_token_claims: Value,
    pub auth_time: i64,
    pub requested_at: i64,
    pub nonce: Option<String>,
    pub sid: String,
    pub acr: String,
    pub amr: Vec<String>,
}

impl Grant {
    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|g| g == s)
    }

    /// Refresh tokens need `offline` or `offline_access` granted and the client's grant type.
    pub fn wants_refresh(&self, client: &ClientRecord) -> bool {
        (self.has_scope("offline") || self.has_scope("offline_access"))
            && client.has_grant("refresh_token")
    }
}

/// A refresh token row's JSON: the grant and the access token issued with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshState {
    pub grant: Grant,
    pub access_jti: String,
    pub access_exp: i64,
}

/// Lifetimes (seconds) of one issuance.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub access: i64,
    pub id: i64,
    pub refresh: i64,
}

#[derive(Serialize)]
struct UserAccessClaims<'a> {
    #[serde(flatten)]
    base: &'a AccessClaims,
    #[serde(skip_serializing_if = "is_empty")]
    ext: &'a Value,
}

fn is_empty(v: &&Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|o| o.is_empty())
}

pub struct Issued {
    pub access_token: String,
    pub access_jti: String,
    pub access_exp: i64,
    pub expires_in: i64,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub refresh_row: Option<StoredRefreshToken>,
}

/// Signs the tokens of `grant` (no I/O; the caller persists `refresh_row`).
pub fn mint(
    svc: &Service,
    client: &ClientRecord,
    grant: &Grant,
    life: Lifetimes,
) -> Result<Issued, OAuth2Error> {
    let now = clock::now();
    let ring = svc.keys.ring();
    let key = ring
        .current(ACCESS_TOKEN_SET)
        .ok_or_else(|| OAuth2Error::server_error("no signing key"))?;
    let base = AccessClaims {
        iss: svc.config.issuer.clone(),
        sub: grant.subject.clone(),
        aud: grant.audience.clone(),
        exp: now.saturating_add(life.access),
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        client_id: client.client.client_id.clone(),
        scp: grant.scopes.clone(),
    };
    let access_token = key
        .sign_jwt(
            &UserAccessClaims {
                base: &base,
                ext: &grant.access_token_claims,
            },
            &svc.keys.rng,
        )
        .map_err(OAuth2Error::server_error)?;
    svc.metrics.token_issued(key.alg.as_str());
    let id_token = if grant.has_scope("openid") {
        let claims =
            crate::id_token::claims(&svc.config.issuer, grant, &access_token, now, life.id);
        Some(
            key.sign_jwt(&claims, &svc.keys.rng)
                .map_err(OAuth2Error::server_error)?,
        )
    } else {
        None
    };
    let (refresh_token, refresh_row) = if grant.wants_refresh(client) {
        let raw = random_bytes::<32>().map_err(OAuth2Error::server_error)?;
        let token = format!("{REFRESH_PREFIX}{}", b64url(&raw));
        let state = RefreshState {
            grant: grant.clone(),
            access_jti: base.jti.clone(),
            access_exp: base.exp,
        };
        let row = StoredRefreshToken {
            hash: sha256(token.as_bytes()),
            chain: grant.grant_id.clone(),
            client_id: client.client.client_id.clone(),
            subject: grant.subject.clone(),
            active: true,
            used_at: None,
            json: serde_json::to_string(&state).map_err(OAuth2Error::server_error)?,
            expires_at: now.saturating_add(life.refresh),
        };
        (Some(token), Some(row))
    } else {
        (None, None)
    };
    Ok(Issued {
        access_token,
        access_jti: base.jti,
        access_exp: base.exp,
        expires_in: life.access,
        id_token,
        refresh_token,
        refresh_row,
    })
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<&'a str>,
}

pub fn response(issued: &Issued, grant: &Grant) -> Response {
    let mut resp = axum::Json(TokenResponse {
        access_token: &issued.access_token,
        token_type: "bearer",
        expires_in: issued.expires_in,
        scope: grant.scopes.join(" "),
        refresh_token: issued.refresh_token.as_deref(),
        id_token: issued.id_token.as_deref(),
    })
    .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// Revokes every token of a grant: the given access tokens, and every refresh token of the
/// chain with the access token each was issued with.
pub async fn revoke_grant(
    svc: &Service,
    grant_id: &str,
    access: &[(String, i64)],
) -> Result<(), OAuth2Error> {
    let store = Arc::clone(&svc.store);
    let chain = grant_id.to_string();
    let rows = tokio::task::spawn_blocking(move || store.revoke_refresh_chain(&chain))
        .await
        .map_err(OAuth2Error::server_error)??;
    let mut jtis: Vec<(String, i64)> = access.to_vec();
    for row in rows {
        if let Ok(state) = serde_json::from_str::<RefreshState>(&row.json) {
            jtis.push((state.access_jti, state.access_exp));
        }
    }
    let now = clock::now();
    for (jti, exp) in jtis {
        if exp > now {
            svc.revoke_jti(jti, exp).await?;
        }
    }
    tracing::info!(grant_id, "revoked every token of a grant");
    Ok(())
}
