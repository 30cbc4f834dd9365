//! Hydra's admin API over what a person left behind: remembered consents
//! (`GET|DELETE /admin/oauth2/auth/sessions/consent`) and login sessions
//! (`DELETE /admin/oauth2/auth/sessions/login`). Revoking consent also revokes the tokens of
//! those grants: every refresh token, the access tokens issued with them, and the access tokens
//! of `openid` grants (found through their `/userinfo` records).

use crate::browser_session::{CONSENT, LOGIN, RememberedConsent, consent_key};
use crate::clock;
use crate::grant_tokens::{Grant, RefreshState};
use crate::oauth2_error::OAuth2Error;
use crate::request::Params;
use crate::server::Service;
use crate::store::{StoreError, StoredSession};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, OAuth2Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(OAuth2Error::server_error)?
        .map_err(OAuth2Error::from)
}

fn params(q: Option<&str>) -> Result<Params, OAuth2Error> {
    Params::parse_urlencoded(q.unwrap_or("").as_bytes())
}

fn subject(p: &Params) -> Result<String, OAuth2Error> {
    p.get("subject")?
        .map(str::to_string)
        .ok_or_else(|| OAuth2Error::invalid_request("The subject parameter is missing."))
}

/// `GET /admin/oauth2/auth/sessions/consent?subject=`: the subject's remembered consents.
pub async fn list_consents(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let subject = subject(&params(q.as_deref())?)?;
    let store = Arc::clone(&svc.store);
    let who = subject.clone();
    let rows = blocking(move || store.list_sessions(CONSENT, &who)).await?;
    let now = clock::now();
    let list: Vec<Value> = rows
        .into_iter()
        .filter(|r| r.expires_at > now)
        .filter_map(|r| {
            let (client_id, _): (String, String) = serde_json::from_str(&r.id).ok()?;
            let c: RememberedConsent = serde_json::from_str(&r.json).ok()?;
            let client = svc
                .clients
                .get(&client_id)
                .and_then(|c| serde_json::to_value(c).ok())
                .unwrap_or_else(|| json!({"client_id": client_id}));
            Some(json!({
                "grant_scope": c.grant_scope,
                "grant_access_token_audience": c.grant_access_token_audience,
                "session": {"access_token": c.access_token_claims, "id_token": c.id_token_claims},
                "remember": true,
                "handled_at": clock::rfc3339(c.handled_at),
                "expires_at": clock::rfc3339(r.expires_at),
                "consent_request": {"client": client, "subject": subject},
            }))
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

/// `DELETE /admin/oauth2/auth/sessions/consent?subject=&client=` (or `&all=true`): forgets the
/// consents and revokes the tokens of those grants. 204.
pub async fn revoke_consents(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let p = params(q.as_deref())?;
    let subject = subject(&p)?;
    let client = p.get("client")?.map(str::to_string);
    let all = p.get("all")? == Some("true");
    if client.is_none() && !all {
        return Err(OAuth2Error::invalid_request(
            "Name the client (client=) or revoke every consent (all=true).",
        ));
    }
    let store = Arc::clone(&svc.store);
    let (who, which) = (subject.clone(), client.clone());
    let (refresh, records) = blocking(move || {
        match &which {
            Some(c) => {
                store.delete_session(CONSENT, &consent_key(c, &who))?;
            }
            None => {
                store.delete_sessions(CONSENT, &who)?;
            }
        }
        let refresh = store.revoke_refresh_tokens_of(&who, which.as_deref())?;
        let records: Vec<StoredSession> = store.list_sessions(crate::userinfo::KIND, &who)?;
        Ok((refresh, records))
    })
    .await?;
    let mut jtis: Vec<(String, i64)> = refresh
        .iter()
        .filter_map(|r| serde_json::from_str::<RefreshState>(&r.json).ok())
        .map(|s| (s.access_jti, s.access_exp))
        .collect();
    for r in records {
        let of_client = serde_json::from_str::<Grant>(&r.json)
            .is_ok_and(|g| client.as_deref().is_none_or(|c| g.client_id == c));
        if of_client {
            jtis.push((r.id, r.expires_at));
        }
    }
    let now = clock::now();
    for (jti, exp) in jtis {
        if exp > now {
            svc.revoke_jti(jti, exp).await?;
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /admin/oauth2/auth/sessions/login?subject=` or `?sid=`: ends login sessions (the
/// next authorization request needs a login). Tokens stay, as in Hydra. 204.
pub async fn revoke_logins(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let p = params(q.as_deref())?;
    let store = Arc::clone(&svc.store);
    match (p.get("subject")?, p.get("sid")?) {
        (Some(s), None) => {
            let s = s.to_string();
            blocking(move || store.delete_sessions(LOGIN, &s)).await?;
        }
        (None, Some(sid)) => {
            let sid = sid.to_string();
            blocking(move || store.delete_session(LOGIN, &sid)).await?;
        }
        _ => {
            return Err(OAuth2Error::invalid_request(
                "Give exactly one of subject and sid.",
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
