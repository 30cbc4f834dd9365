//! `GET|POST /userinfo` (OIDC Core 5.3): the claims of the person an access token was issued
//! for, as Hydra returns them (the ID token's claims without `nonce`, `at_hash`, `exp`, `sid`,
//! `jti`). Without a usable token: 401 with `WWW-Authenticate: Bearer` (RFC 6750 3.1).

use crate::clock;
use crate::grant_tokens::{Grant, RefreshState, chain_of_jti};
use crate::oauth2_error::{ErrorCode, OAuth2Error};
use crate::request::Params;
use crate::server::Service;
use crate::store::{self, ChainKey, StoredSession};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Store kind of the rows that tie an access token (`jti`) to its grant.
pub const KIND: &str = "userinfo";

/// Starts the row id of an opaque access token (which has no `jti`), so that nothing takes
/// it for one.
pub const OPAQUE_KEY: &str = "sha256:";

/// The id of an opaque access token's row: its hash.
pub fn opaque_key(hash: &[u8; 32]) -> String {
    format!("{OPAQUE_KEY}{}", crate::crypto::b64url(hash))
}

/// The row that records who an access token with `openid` speaks for, until it expires;
/// written in the transaction of the grant step that issues the token. `key` is a JWT's `jti`
/// or an opaque token's [`opaque_key`].
pub fn row(key: &str, exp: i64, grant: &Grant) -> Result<(String, StoredSession), OAuth2Error> {
    Ok((
        KIND.to_string(),
        StoredSession {
            id: key.to_string(),
            subject: grant.subject.clone(),
            json: serde_json::to_string(grant).map_err(OAuth2Error::server_error)?,
            expires_at: exp,
        },
    ))
}

fn invalid_token(d: &str) -> OAuth2Error {
    OAuth2Error::new(ErrorCode::InvalidToken, d)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

pub fn claims(issuer: &str, grant: &Grant) -> Map<String, Value> {
    let mut c = crate::id_token::claims(issuer, grant, "", 0, 0);
    for k in ["nonce", "at_hash", "c_hash", "exp", "sid", "jti", "iat"] {
        c.remove(k);
    }
    c
}

pub async fn userinfo_endpoint(
    State(svc): State<Arc<Service>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match userinfo(&svc, &method, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn userinfo(
    svc: &Service,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OAuth2Error> {
    let from_body = if *method == Method::POST {
        Params::parse_urlencoded(body)?
            .get("access_token")?
            .map(str::to_string)
    } else {
        None
    };
    let token = match (bearer(headers), from_body) {
        (Some(_), Some(_)) => {
            return Err(OAuth2Error::invalid_request(
                "The access token must be sent in one place only.",
            ));
        }
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return Err(invalid_token("The request carries no access token.")),
    };
    let now = clock::now();
    let active = crate::introspect::inspect(svc, &token)
        .await?
        .ok_or_else(|| invalid_token("The access token is invalid, expired or revoked."))?;
    let not_openid =
        || invalid_token("The access token was not issued to a person with scope openid.");
    let grant = match active.jti.as_deref().and_then(chain_of_jti) {
        Some(chain) => {
            // The token's own person and client: a chain is found under them only.
            let key = ChainKey {
                subject: active.sub.clone(),
                client_id: active.client_id.clone(),
                chain: chain.to_string(),
            };
            let row = store::read(&svc.store, move |s| s.refresh_token_of_chain(&key))
                .await?
                .ok_or_else(not_openid)?;
            let state: RefreshState =
                serde_json::from_str(&row.json).map_err(OAuth2Error::server_error)?;
            state.grant
        }
        None => {
            let key = match active.jti {
                Some(jti) => jti,
                None => opaque_key(&crate::crypto::sha256(token.as_bytes())),
            };
            let row = store::read(&svc.store, move |s| s.get_session(KIND, &key))
                .await?
                .filter(|r| r.expires_at > now)
                .ok_or_else(not_openid)?;
            serde_json::from_str::<Grant>(&row.json).map_err(OAuth2Error::server_error)?
        }
    };
    // The token's own claims and the grant's must agree; the chain's rows are the grant's.
    if grant.subject != active.sub
        || grant.client_id != active.client_id
        || !grant.has_scope("openid")
    {
        return Err(not_openid());
    }
    let mut resp = axum::Json(json!(claims(&svc.config.issuer, &grant))).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
