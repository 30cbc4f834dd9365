//! Token introspection (RFC 7662, `POST /admin/oauth2/introspect`): JWTs are checked against
//! our own keys and the revocation list in memory; opaque tokens are looked up by hash.
//! Refresh tokens are introspected too, as Hydra does ("both refresh and access"), with
//! `token_use: refresh_token`: gateways (Oathkeeper's `oauth2_introspection`, the filter) refuse
//! those as bearer tokens. [`inspect`] itself knows access tokens only.

use crate::clock;
use crate::crypto::{b64url_decode, sha256};
use crate::keys::ACCESS_TOKEN_SET;
use crate::oauth2_error::OAuth2Error;
use crate::request::Form;
use crate::server::Service;
use crate::token::{AccessClaims, OPAQUE_PREFIX};
use crate::token_cache::{Expiring, TokenCache};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// What an active token says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveToken {
    pub client_id: String,
    /// The client for client_credentials tokens; the person for authorization-code grants.
    pub sub: String,
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    /// Set for JWTs (revocation is by `jti`).
    pub jti: Option<String>,
    /// The signing key of a JWT.
    pub kid: Option<String>,
    /// A person's token: the consent's `session.access_token` claims (`Null` when none).
    pub ext: Value,
}

#[derive(Deserialize)]
struct JwsHeader {
    alg: String,
    kid: Option<String>,
}

/// Verified JWTs keyed by the token's SHA-256, so repeated introspection of a token (what a
/// gateway does) costs a hash and a map lookup instead of a signature check. Expiry,
/// revocation and the client's existence are still checked on every hit.
pub type JwtCache = TokenCache<ActiveToken>;

impl Expiring for ActiveToken {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

/// The client exists and the token was issued to this incarnation of it: a deleted and
/// re-created client (perhaps with fewer scopes) must not revive its predecessor's tokens.
/// Times are whole seconds; [`crate::client::ClientService::create`] starts a re-created client
/// in a later second than its predecessor's deletion, so the predecessor's tokens never count.
pub fn issued_to_current_client(svc: &Service, client_id: &str, issued_at: i64) -> bool {
    svc.clients
        .lookup(client_id)
        .is_some_and(|c| issued_at >= c.created_at)
}

/// Verifies one of our JWTs (see [`verify_jwt`]), through the cache.
pub fn inspect_jwt(svc: &Service, token: &str, now: i64) -> Option<ActiveToken> {
    let key = sha256(token.as_bytes());
    let found = match svc.verified_jwts.get(&key) {
        Some(t) => t,
        None => {
            let t = Arc::new(verify_jwt(svc, token, now)?);
            svc.verified_jwts.insert(key, Arc::clone(&t), now);
            t
        }
    };
    let key_alive = || {
        found.kid.as_deref().is_some_and(|kid| {
            svc.keys
                .ring()
                .find(ACCESS_TOKEN_SET, kid)
                .is_some_and(|k| k.expires_at.is_none_or(|e| e > now))
        })
    };
    let still_valid = found.exp > now
        && key_alive()
        && found.jti.as_deref().is_none_or(|j| !svc.is_revoked(j))
        && issued_to_current_client(svc, &found.client_id, found.iat);
    still_valid.then(|| (*found).clone())
}

/// Verifies one of our JWTs: signature by a published key, issuer, time window, not revoked.
pub fn verify_jwt(svc: &Service, token: &str, now: i64) -> Option<ActiveToken> {
    let (signed, sig) = token.rsplit_once('.')?;
    let (header_b64, claims_b64) = signed.split_once('.')?;
    let header: JwsHeader = serde_json::from_slice(&b64url_decode(header_b64)?).ok()?;
    let ring = svc.keys.ring();
    let key = ring.find(ACCESS_TOKEN_SET, header.kid.as_deref()?)?;
    if key.alg.as_str() != header.alg || key.expires_at.is_some_and(|e| e <= now) {
        return None;
    }
    if !key.verify(signed.as_bytes(), &b64url_decode(sig)?) {
        return None;
    }
    let claims: AccessClaims = serde_json::from_slice(&b64url_decode(claims_b64)?).ok()?;
    if claims.iss != svc.config.issuer || claims.exp <= now || claims.nbf > now.saturating_add(30) {
        return None;
    }
    if svc.is_revoked(&claims.jti) {
        return None;
    }
    Some(ActiveToken {
        sub: claims.sub,
        client_id: claims.client_id,
        scopes: claims.scp,
        audience: claims.aud,
        exp: claims.exp,
        iat: claims.iat,
        nbf: claims.nbf,
        jti: Some(claims.jti),
        kid: Some(key.kid.clone()),
        ext: claims.ext,
    })
}

/// Looks up an opaque token (by SHA-256); None when unknown, revoked or expired.
pub async fn inspect_opaque(
    svc: &Service,
    token: &str,
    now: i64,
) -> Result<Option<ActiveToken>, OAuth2Error> {
    let hash = sha256(token.as_bytes());
    let row = match svc.store.cached_opaque_token(&hash) {
        Some(cached) => Some(cached),
        None => crate::store::read(&svc.store, move |s| s.get_opaque_token(&hash)).await?,
    };
    Ok(row
        .filter(|r| r.expires_at > now && issued_to_current_client(svc, &r.client_id, r.issued_at))
        .map(|r| ActiveToken {
            sub: r.subject,
            client_id: r.client_id,
            scopes: r.scopes,
            audience: r.audience,
            exp: r.expires_at,
            iat: r.issued_at,
            nbf: r.issued_at,
            jti: None,
            kid: None,
            ext: r
                .ext
                .and_then(|e| serde_json::from_str(&e).ok())
                .unwrap_or_default(),
        }))
}

pub async fn inspect(svc: &Service, token: &str) -> Result<Option<ActiveToken>, OAuth2Error> {
    svc.require_current()?;
    let now = clock::now();
    if token.starts_with(OPAQUE_PREFIX) {
        inspect_opaque(svc, token, now).await
    } else {
        Ok(inspect_jwt(svc, token, now))
    }
}

/// A refresh token as introspection shows it: redeemable (active, or rotated out within the
/// grace period), unexpired, and issued to the current incarnation of its client.
async fn inspect_refresh(
    svc: &Service,
    token: &str,
    now: i64,
) -> Result<Option<ActiveToken>, OAuth2Error> {
    svc.require_current()?;
    let key = crate::grant_tokens::refresh_token_key(token);
    let Some(row) = crate::store::read(&svc.store, move |s| s.get_refresh_token(&key)).await?
    else {
        return Ok(None);
    };
    if !(row.active || crate::refresh::in_grace(svc, &row, now)) || row.expires_at <= now {
        return Ok(None);
    }
    let Ok(state) = serde_json::from_str::<crate::grant_tokens::RefreshState>(&row.json) else {
        return Ok(None);
    };
    let grant = state.grant;
    // Tokens from before the issue time was in the token: their grant's time, which is no later.
    let iat = crate::grant_tokens::refresh_token_issued_at(token).unwrap_or(grant.requested_at);
    if !issued_to_current_client(svc, &row.client_id, iat) {
        return Ok(None);
    }
    Ok(Some(ActiveToken {
        sub: grant.subject,
        client_id: row.client_id,
        scopes: grant.scopes,
        audience: grant.audience,
        exp: row.expires_at,
        iat,
        nbf: iat,
        jti: None,
        kid: None,
        ext: grant.access_token_claims,
    }))
}

#[derive(Serialize)]
struct Active<'a> {
    active: bool,
    scope: String,
    client_id: &'a str,
    sub: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    aud: &'a [String],
    iss: &'a str,
    /// `Bearer` for access tokens; none for refresh tokens (as Hydra).
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    token_use: &'static str,
    #[serde(skip_serializing_if = "Value::is_null")]
    ext: &'a Value,
}

pub async fn introspect_endpoint(
    State(svc): State<Arc<Service>>,
    Form(params): Form,
) -> Result<Response, OAuth2Error> {
    let token = params.get("token")?.ok_or_else(|| {
        OAuth2Error::invalid_request("The request is missing the token parameter.")
    })?;
    let required: Vec<String> = params
        .get("scope")?
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let refresh = token.starts_with(crate::grant_tokens::REFRESH_PREFIX);
    let found = if refresh {
        inspect_refresh(&svc, token, clock::now()).await?
    } else {
        inspect(&svc, token).await?
    };
    let found = found.filter(|t| {
        svc.config
            .scope_strategy
            .all_satisfied(&t.scopes, &required)
    });
    svc.metrics.introspection(found.is_some());
    Ok(match found {
        None => axum::Json(serde_json::json!({"active": false})).into_response(),
        Some(t) => axum::Json(Active {
            active: true,
            scope: t.scopes.join(" "),
            client_id: &t.client_id,
            sub: &t.sub,
            exp: t.exp,
            iat: t.iat,
            nbf: t.nbf,
            aud: &t.audience,
            iss: &svc.config.issuer,
            token_type: (!refresh).then_some("Bearer"),
            token_use: if refresh {
                "refresh_token"
            } else {
                "access_token"
            },
            ext: &t.ext,
        })
        .into_response(),
    })
}
