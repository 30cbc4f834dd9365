//! Hydra's admin API over what a person left behind: remembered consents
//! (`GET|DELETE /admin/oauth2/auth/sessions/consent`) and login sessions
//! (`DELETE /admin/oauth2/auth/sessions/login`). Revoking consent also revokes the tokens of
//! those grants: every refresh token, the JWT access tokens issued with them, the JWT access
//! tokens of `openid` grants (found through their `/userinfo` records), and every opaque access
//! token of the person's grants (deleted by the store with the refresh tokens).

use crate::browser_session::{CONSENT, Logins, RememberedConsent, consent_key, end_logins};
use crate::clock;
use crate::crypto::{b64url, b64url_decode};
use crate::grant_tokens::{Grant, RefreshState};
use crate::oauth2_error::OAuth2Error;
use crate::request::Params;
use crate::server::Service;
use crate::store::StoredSession;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

fn params(q: Option<&str>) -> Result<Params, OAuth2Error> {
    Params::parse_urlencoded(q.unwrap_or("").as_bytes())
}

fn subject(p: &Params) -> Result<String, OAuth2Error> {
    p.get("subject")?
        .map(str::to_string)
        .ok_or_else(|| OAuth2Error::invalid_request("The subject parameter is missing."))
}

/// `GET /admin/oauth2/auth/sessions/consent?subject=[&login_session_id=]`: the subject's
/// remembered consents, ordered by client, paged as Hydra v2 (`page_size` at most
/// [`crate::admin::MAX_PAGE_SIZE`], opaque `page_token`, RFC 8288 `Link` with `first` and
/// `next`).
pub async fn list_consents(
    State(svc): State<Arc<Service>>,
    OriginalUri(uri): OriginalUri,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let p = params(q.as_deref())?;
    let subject = subject(&p)?;
    let session = p.get("login_session_id")?.map(str::to_string);
    let page = crate::admin::list_query(q.as_deref())?;
    let after = match &page.page_token {
        Some(t) => Some(
            b64url_decode(t)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| OAuth2Error::invalid_request("The page_token is not valid."))?,
        ),
        None => None,
    };
    let store = Arc::clone(&svc.store);
    let who = subject.clone();
    let mut rows =
        crate::store::on_blocking_pool(move || store.list_sessions(CONSENT, &who)).await?;
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let now = clock::now();
    let mut live = rows
        .into_iter()
        .filter(|r| r.expires_at > now)
        .filter(|r| after.as_ref().is_none_or(|a| r.id > *a))
        .filter_map(|r| {
            let c: RememberedConsent = serde_json::from_str(&r.json).ok()?;
            let in_session = session.as_ref().is_none_or(|s| *s == c.login_session_id);
            in_session.then_some((r, c))
        });
    let mut list = Vec::new();
    let mut last = None;
    for (r, c) in live.by_ref().take(page.page_size) {
        let Ok((client_id, _)) = serde_json::from_str::<(String, String)>(&r.id) else {
            continue;
        };
        let client = svc
            .clients
            .get(&client_id)
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or_else(|| json!({"client_id": client_id}));
        list.push(json!({
            "consent_request_id": c.consent_request_id,
            "grant_scope": c.grant_scope,
            "grant_access_token_audience": c.grant_access_token_audience,
            "session": {"access_token": c.access_token_claims, "id_token": c.id_token_claims},
            "remember": true,
            "remember_for": c.remember_for,
            "handled_at": clock::rfc3339(c.handled_at),
            "expires_at": clock::rfc3339(r.expires_at),
            "context": c.context,
            "consent_request": {
                "challenge": c.consent_request_id,
                "client": client,
                "subject": subject,
                "login_session_id": c.login_session_id,
            },
        }));
        last = Some(r.id);
    }
    let next = match (last, live.next()) {
        (Some(id), Some(_)) => Some(b64url(id.as_bytes())),
        _ => None,
    };
    let mut carried = vec![("subject", subject.as_str())];
    if let Some(s) = &session {
        carried.push(("login_session_id", s.as_str()));
    }
    let link = crate::admin::page_links(uri.path(), page.page_size, &carried, next.as_deref());
    let mut resp = axum::Json(list).into_response();
    if let Ok(v) = HeaderValue::from_str(&link) {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
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
    let (refresh, records) = crate::store::on_blocking_pool(move || {
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
        .filter_map(|s| s.access_jwt())
        .collect();
    // Opaque access tokens went with the refresh tokens, in the store.
    for r in records
        .into_iter()
        .filter(|r| !r.id.starts_with(crate::userinfo::OPAQUE_KEY))
    {
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
/// next authorization request needs a login) and sends back-channel logout tokens to the
/// clients of those sessions (Hydra sends them for `sid=` only; ending every session of a
/// subject is as much a logout). Tokens stay, as in Hydra. 204.
pub async fn revoke_logins(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let p = params(q.as_deref())?;
    let which = match (p.get("subject")?, p.get("sid")?) {
        (Some(s), None) => Logins::OfSubject(s.to_string()),
        (None, Some(sid)) => Logins::Session(sid.to_string()),
        _ => {
            return Err(OAuth2Error::invalid_request(
                "Give exactly one of subject and sid.",
            ));
        }
    };
    let ended = end_logins(&svc, which).await?;
    crate::backchannel_logout::notify(&svc, &ended.subject, &ended.participants);
    Ok(StatusCode::NO_CONTENT.into_response())
}
