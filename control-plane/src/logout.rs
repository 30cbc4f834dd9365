//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) through the logout app, as
//! Hydra: `GET|POST /oauth2/sessions/logout` (`id_token_hint`, `post_logout_redirect_uri`,
//! `state`) → the logout app with a `logout_challenge` → `PUT
//! /admin/oauth2/auth/requests/logout/accept` → the browser back with a `logout_verifier` →
//! the login session ends and the browser goes to the registered post-logout URI.
//!
//! A logout request is a row of the flow table with its own stages (see [`crate::flow`] for
//! why stages and compare-and-set make every step single-use).

use crate::authorize::error_url;
use crate::browser_session::{self, session_cookie_name, set_cookie};
use crate::clock;
use crate::flow::{self, secs};
use crate::oauth2_error::{ErrorCode, OAuth2Error, append_query, redirect};
use crate::request::Params;
use crate::server::Service;
use crate::store::StoredFlow;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;

/// Stages of a logout request (distinct from login-flow stages, which end below 10).
const REQUESTED: i64 = 10;
const ACCEPTED: i64 = 11;
const DONE: i64 = 12;
const REJECTED: i64 = 13;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LogoutRequest {
    pub id: String,
    pub subject: String,
    pub sid: String,
    pub client_id: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
    pub state: Option<String>,
    pub rp_initiated: bool,
    pub request_url: String,
    pub requested_at: i64,
    pub expires_at: i64,
    pub verifier_hash: Option<String>,
}

fn base(svc: &Service) -> String {
    svc.config.issuer.trim_end_matches('/').to_string()
}

fn logout_url(svc: &Service) -> String {
    format!("{}/oauth2/sessions/logout", base(svc))
}

fn post_logout_default(svc: &Service) -> String {
    svc.config
        .flows
        .post_logout_url
        .clone()
        .unwrap_or_else(|| format!("{}/oauth2/fallbacks/logout/callback", base(svc)))
}

fn row(req: &LogoutRequest, stage: i64) -> Result<StoredFlow, OAuth2Error> {
    Ok(StoredFlow {
        id: req.id.clone(),
        stage,
        json: serde_json::to_string(req).map_err(OAuth2Error::server_error)?,
        expires_at: req.expires_at,
    })
}

async fn load(svc: &Service, id: &str) -> Result<Option<(LogoutRequest, i64)>, OAuth2Error> {
    let id = id.to_string();
    let Some(stored) = crate::store::read(&svc.store, move |s| s.get_flow(&id)).await? else {
        return Ok(None);
    };
    if stored.stage < REQUESTED || stored.expires_at <= clock::now() {
        return Ok(None);
    }
    let req = serde_json::from_str(&stored.json).map_err(OAuth2Error::server_error)?;
    Ok(Some((req, stored.stage)))
}

async fn advance(
    svc: &Service,
    req: &LogoutRequest,
    from: i64,
    to: i64,
) -> Result<bool, OAuth2Error> {
    let row = row(req, to)?;
    let store = Arc::clone(&svc.store);
    crate::store::on_blocking_pool(move || store.advance_flow(from, &row))
        .await
        .map_err(OAuth2Error::from)
}

/// `GET|POST /oauth2/sessions/logout`.
pub async fn logout_endpoint(
    State(svc): State<Arc<Service>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let params = if method == Method::POST {
        Params::parse_urlencoded(&body)
    } else {
        Params::parse_urlencoded(query.as_deref().unwrap_or("").as_bytes())
    };
    let result = match params {
        Ok(p) => step(&svc, &headers, &p).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => r,
        Err(e)
            if e.code == ErrorCode::ServerError || e.code == ErrorCode::TemporarilyUnavailable =>
        {
            e.into_response()
        }
        Err(e) => e.to_error_page(&error_url(&svc)),
    }
}

async fn step(
    svc: &Arc<Service>,
    headers: &HeaderMap,
    p: &Params,
) -> Result<Response, OAuth2Error> {
    if let Some(v) = p.get("logout_verifier")? {
        return finish(svc, v).await;
    }
    let hint = match p.get("id_token_hint")? {
        Some(t) => Some(crate::id_token::verify_hint(svc, t).ok_or_else(|| {
            OAuth2Error::invalid_request(
                "The id_token_hint is not an ID token issued by this server.",
            )
        })?),
        None => None,
    };
    let post_logout = p.get("post_logout_redirect_uri")?;
    let state = p.get("state")?;
    let claim =
        |name: &str| -> Option<String> { hint.as_ref()?.get(name)?.as_str().map(str::to_string) };
    let client_id = hint.as_ref().and_then(|h| match h.get("aud") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 => a.first()?.as_str().map(str::to_string),
        _ => None,
    });
    if hint.is_some() && client_id.is_none() {
        return Err(OAuth2Error::invalid_request(
            "The id_token_hint must name exactly one client in aud.",
        ));
    }
    if let Some(uri) = post_logout {
        let Some(cid) = &client_id else {
            return Err(OAuth2Error::invalid_request(
                "post_logout_redirect_uri requires an id_token_hint.",
            ));
        };
        let registered = svc
            .clients
            .lookup(cid)
            .is_some_and(|c| c.client.post_logout_redirect_uris.iter().any(|r| r == uri));
        if !registered {
            return Err(OAuth2Error::invalid_request(
                "The post_logout_redirect_uri is not registered for the client of the id_token_hint.",
            ));
        }
    }
    let session = browser_session::current_login(svc, headers).await?;
    let (subject, sid) = match (&session, claim("sub"), claim("sid")) {
        (Some(s), Some(sub), _) if s.subject != sub => {
            return Err(OAuth2Error::invalid_request(
                "The id_token_hint names another subject than the browser's session.",
            ));
        }
        (Some(s), _, _) => (s.subject.clone(), s.sid.clone()),
        (None, Some(sub), Some(sid)) => (sub, sid),
        _ => {
            // Nobody to log out: go straight to where a finished logout goes.
            let to = post_logout.map_or_else(|| post_logout_default(svc), str::to_string);
            return Ok(redirect(
                StatusCode::FOUND,
                &with_state(&to, post_logout.and(state)),
            ));
        }
    };
    let Some(app) = svc.config.flows.logout_url.clone() else {
        return Err(OAuth2Error::new(
            ErrorCode::ServerError,
            "Logout is not configured: start the server with --logout-url (PORTCULLIS_LOGOUT_URL).",
        ));
    };
    let now = clock::now();
    let kept: Vec<(&str, &str)> = p.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let req = LogoutRequest {
        id: flow::new_secret()?,
        subject,
        sid,
        client_id,
        post_logout_redirect_uri: post_logout.map(str::to_string),
        state: state.map(str::to_string),
        rp_initiated: hint.is_some(),
        request_url: append_query(&logout_url(svc), &kept),
        requested_at: now,
        expires_at: now + secs(svc.config.flows.request_ttl),
        verifier_hash: None,
    };
    let row = row(&req, REQUESTED)?;
    let store = Arc::clone(&svc.store);
    crate::store::on_blocking_pool(move || store.insert_flow(&row)).await?;
    Ok(redirect(
        StatusCode::FOUND,
        &append_query(&app, &[("logout_challenge", &req.id)]),
    ))
}

fn with_state(uri: &str, state: Option<&str>) -> String {
    match state {
        Some(s) => append_query(uri, &[("state", s)]),
        None => uri.to_string(),
    }
}

/// The browser is back from the logout app: end the session and leave.
async fn finish(svc: &Arc<Service>, verifier: &str) -> Result<Response, OAuth2Error> {
    let invalid = || {
        OAuth2Error::new(
            ErrorCode::AccessDenied,
            "The logout verifier is invalid, expired or already used.",
        )
    };
    let (id, secret) = flow::parse_artifact(verifier).ok_or_else(invalid)?;
    let (req, stage) = load(svc, id).await?.ok_or_else(invalid)?;
    if stage != ACCEPTED || !flow::secret_matches(req.verifier_hash.as_deref(), secret) {
        return Err(invalid());
    }
    if !advance(svc, &req, ACCEPTED, DONE).await? {
        return Err(invalid());
    }
    let ended =
        browser_session::end_logins(svc, browser_session::Logins::Session(req.sid.clone())).await?;
    crate::backchannel_logout::notify(svc, &ended.subject, &ended.participants);
    let to = match &req.post_logout_redirect_uri {
        Some(uri) => with_state(uri, req.state.as_deref()),
        None => post_logout_default(svc),
    };
    let frames = crate::frontchannel_logout::frame_urls(svc, &ended.participants);
    let mut resp = if frames.is_empty() {
        redirect(StatusCode::FOUND, &to)
    } else {
        crate::frontchannel_logout::page(&frames, &to)
    };
    let secure = svc.secure_cookies();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(session_cookie_name(secure), "", Some(0), secure),
    );
    Ok(resp)
}

fn challenge(query: Option<&str>) -> Result<String, OAuth2Error> {
    let p = Params::parse_urlencoded(query.unwrap_or("").as_bytes())?;
    p.get("logout_challenge")?
        .map(str::to_string)
        .ok_or_else(|| OAuth2Error::invalid_request("The logout_challenge parameter is missing."))
}

async fn request(svc: &Service, query: Option<&str>) -> Result<(LogoutRequest, i64), OAuth2Error> {
    load(svc, &challenge(query)?)
        .await?
        .ok_or_else(|| OAuth2Error::not_found("The logout request does not exist or has expired."))
}

fn gone(req: &LogoutRequest) -> Response {
    (
        StatusCode::GONE,
        axum::Json(json!({"redirect_to": req.request_url})),
    )
        .into_response()
}

/// `GET /admin/oauth2/auth/requests/logout?logout_challenge=`.
pub async fn get_logout_request(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let (req, stage) = request(&svc, q.as_deref()).await?;
    if stage != REQUESTED {
        return Ok(gone(&req));
    }
    let client = req
        .client_id
        .as_deref()
        .and_then(|c| svc.clients.get(c))
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or(Value::Null);
    Ok(axum::Json(json!({
        "challenge": req.id,
        "subject": req.subject,
        "sid": req.sid,
        "request_url": req.request_url,
        "rp_initiated": req.rp_initiated,
        "client": client,
        "requested_at": clock::rfc3339(req.requested_at),
        "expires_at": clock::rfc3339(req.expires_at),
    }))
    .into_response())
}

/// `PUT /admin/oauth2/auth/requests/logout/accept?logout_challenge=`.
pub async fn accept_logout(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let (mut req, stage) = request(&svc, q.as_deref()).await?;
    if stage != REQUESTED {
        return Ok(gone(&req));
    }
    let (verifier, hash) = flow::artifact(&req.id)?;
    req.verifier_hash = Some(hash);
    if !advance(&svc, &req, REQUESTED, ACCEPTED).await? {
        return Ok(gone(&req));
    }
    Ok(axum::Json(json!({
        "redirect_to": append_query(&logout_url(&svc), &[("logout_verifier", &verifier)]),
    }))
    .into_response())
}

/// `PUT /admin/oauth2/auth/requests/logout/reject?logout_challenge=`: the session stays.
pub async fn reject_logout(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let (req, stage) = request(&svc, q.as_deref()).await?;
    if stage != REQUESTED || !advance(&svc, &req, REQUESTED, REJECTED).await? {
        return Ok(gone(&req));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /oauth2/fallbacks/logout/callback`: where a logout ends without a configured page.
pub async fn logged_out() -> Response {
    axum::Json(json!({"logged_out": true})).into_response()
}
