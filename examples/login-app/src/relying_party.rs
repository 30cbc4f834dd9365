//! The demo relying party: starts the authorization code flow (PKCE S256, `state`, `nonce`),
//! takes the code back at the callback, verifies the ID token, calls the protected upstream
//! through Envoy with the access token, and signs out through RP-initiated logout.
//!
//! What must survive the browser's round trip (PKCE verifier, nonce) stays in this process,
//! keyed by `state`; a cookie binds the state to the browser that started the flow, so a code
//! injected into another browser's callback is refused.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use portcullis_core::form::escape as q;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::AppError;
use crate::html::{escape, page};
use crate::{App, Pending, id_token};

const STATE_COOKIE: &str = "example_rp_state";
const SESSION_COOKIE: &str = "example_rp_session";
/// Scopes the demo asks for: `read` is what the example access rule requires upstream.
const SCOPES: &str = "openid offline_access read";

fn random() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub async fn home(State(app): State<App>, headers: HeaderMap) -> Response {
    let signed_in = cookie(&headers, SESSION_COOKIE).is_some_and(|s| app.session(&s).is_some());
    let status = if signed_in {
        "<p id=\"state\">You are signed in. <a href=\"/logout\" id=\"logout\">Sign out</a></p>"
    } else {
        "<p id=\"state\">You are signed out.</p>"
    };
    let body = format!(
        "<p>This page is a relying party of the Portcullis token service. Signing in runs the \
         OpenID Connect authorization code flow with PKCE: the token service sends you to this \
         app's login and consent pages, then back here with a code for an ID token and an access \
         token; the access token then opens the protected upstream behind Envoy.</p>{status}\
         <p><a class=\"button\" href=\"/start\" id=\"start\">Sign in with Portcullis</a></p>"
    );
    page(StatusCode::OK, "Portcullis sign-in demo", &body)
}

pub async fn start(State(app): State<App>) -> Response {
    let state = random();
    let nonce = random();
    let verifier = random();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let url = format!(
        "{}/oauth2/auth?response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}\
         &nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
        app.cfg.issuer,
        q(&app.cfg.client_id),
        q(&app.callback_url()),
        q(SCOPES),
    );
    app.remember_pending(state.clone(), Pending { verifier, nonce });
    (
        [(
            header::SET_COOKIE,
            format!("{STATE_COOKIE}={state}; Path=/; HttpOnly; SameSite=Lax; Max-Age=600"),
        )],
        Redirect::to(&url),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub async fn callback(
    State(app): State<App>,
    headers: HeaderMap,
    Query(cb): Query<CallbackQuery>,
) -> Result<Response, AppError> {
    if let Some(error) = cb.error {
        return Err(AppError::BadRequest(format!(
            "the token service answered {error}: {}",
            cb.error_description.unwrap_or_default()
        )));
    }
    let state = cb
        .state
        .ok_or_else(|| AppError::BadRequest("the callback has no state".into()))?;
    if cookie(&headers, STATE_COOKIE).as_deref() != Some(state.as_str()) {
        return Err(AppError::BadRequest(
            "this sign-in was not started in this browser (state does not match its cookie)".into(),
        ));
    }
    let pending = app
        .take_pending(&state)
        .ok_or_else(|| AppError::BadRequest("unknown or already used state".into()))?;
    let code = cb
        .code
        .ok_or_else(|| AppError::BadRequest("the callback has no code".into()))?;

    let tokens = exchange(&app, &code, &pending.verifier).await?;
    let text = |k: &str| {
        tokens
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (raw_id_token, access_token) = (text("id_token"), text("access_token"));
    let jwks: JwkSet = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.cfg.issuer))
        .send()
        .await
        .map_err(|e| AppError::upstream("fetching the JWKS", e))?
        .json()
        .await
        .map_err(|e| AppError::upstream("reading the JWKS", e))?;
    let verified = id_token::verify(
        &raw_id_token,
        &access_token,
        &jwks,
        &app.cfg.issuer,
        &app.cfg.client_id,
        &pending.nonce,
    )?;

    let upstream_url = format!("{}/headers", app.cfg.proxy_url);
    let upstream = app
        .http
        .get(&upstream_url)
        .bearer_auth(&access_token)
        .send()
        .await
        .map_err(|e| AppError::upstream("calling the upstream through Envoy", e))?;
    let upstream_status = upstream.status();
    let upstream_body = shown_upstream_body(&upstream.text().await.unwrap_or_default());

    let session = random();
    app.remember_session(session.clone(), raw_id_token);
    let body = callback_body(
        &verified,
        &upstream_url,
        upstream_status,
        &upstream_body,
        &tokens,
    );
    // `AppendHeaders`: a plain array would keep only the last `Set-Cookie`.
    Ok((
        AppendHeaders([
            (
                header::SET_COOKIE,
                format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax"),
            ),
            (
                header::SET_COOKIE,
                format!("{STATE_COOKIE}=; Path=/; HttpOnly; Max-Age=0"),
            ),
        ]),
        page(StatusCode::OK, "Signed in", &body),
    )
        .into_response())
}

async fn exchange(app: &App, code: &str, verifier: &str) -> Result<Value, AppError> {
    let reply = app
        .http
        .post(format!("{}/oauth2/token", app.cfg.issuer))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &app.callback_url()),
            ("code_verifier", verifier),
            ("client_id", &app.cfg.client_id),
            ("client_secret", &app.cfg.client_secret),
        ])
        .send()
        .await
        .map_err(|e| AppError::upstream("the token endpoint is unreachable", e))?;
    let status = reply.status();
    let body: Value = reply
        .json()
        .await
        .map_err(|e| AppError::upstream("the token endpoint answered no JSON", e))?;
    if !status.is_success() {
        return Err(AppError::BadRequest(format!(
            "the token endpoint refused the code ({status}): {}",
            body.get("error_description")
                .or_else(|| body.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("")
        )));
    }
    Ok(body)
}

fn callback_body(
    v: &id_token::Verified,
    upstream_url: &str,
    status: reqwest::StatusCode,
    upstream_body: &str,
    tokens: &Value,
) -> String {
    let rows: String = v
        .claims
        .iter()
        .map(|(k, val)| {
            let shown = match val {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!(
                "<tr><th>{k}</th><td><code id=\"claim-{k}\">{shown}</code></td></tr>",
                k = escape(k),
                shown = escape(&shown)
            )
        })
        .collect();
    let class = if status.is_success() { "ok" } else { "bad" };
    let scope = tokens.get("scope").and_then(Value::as_str).unwrap_or("");
    let refresh = if tokens.get("refresh_token").is_some() {
        "yes"
    } else {
        "no"
    };
    format!(
        "<p class=\"ok\" id=\"verified\">ID token verified: signature ({alg:?}, key <code>{kid}</code>) \
         against the issuer's JWKS; <code>iss</code>, <code>aud</code> and <code>exp</code> checked; \
         <span id=\"nonce-check\">nonce matches this browser's request</span>.</p>\
         <h2>ID token claims</h2><table id=\"claims\">{rows}</table>\
         <h2>Protected upstream</h2><p>GET <code>{url}</code> through Envoy with the access token \
         (scopes <code>{scope}</code>; refresh token issued: {refresh}): \
         <span class=\"{class}\" id=\"upstream-status\">{code}</span></p><pre id=\"upstream-body\">{body}</pre>\
         <p><a class=\"button\" href=\"/logout\" id=\"logout\">Sign out</a> \
         <a href=\"/\">Home</a></p>",
        alg = v.alg,
        kid = escape(&v.kid),
        url = escape(upstream_url),
        scope = escape(scope),
        code = status.as_u16(),
        body = escape(upstream_body),
    )
}

/// The upstream's echo, indented, with the bearer token it echoes shortened: the page is about
/// what reached the upstream (`X-User`), not a place to copy a live token from.
fn shown_upstream_body(raw: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(raw) else {
        return raw.to_string();
    };
    if let Some(Value::String(auth)) = v.pointer_mut("/headers/authorization") {
        let kept: String = auth.chars().take(20).collect();
        *auth = format!("{kept}… (the access token)");
    }
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| raw.to_string())
}

/// RP-initiated logout: the token service asks this app's logout page, ends its session, and
/// comes back to `/signed-out` with our `state`.
pub async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    let id_token = cookie(&headers, SESSION_COOKIE).and_then(|s| app.end_session(&s));
    let Some(id_token) = id_token else {
        return Redirect::to("/signed-out").into_response();
    };
    let state = random();
    let url = format!(
        "{}/oauth2/sessions/logout?id_token_hint={}&post_logout_redirect_uri={}&state={state}",
        app.cfg.issuer,
        q(&id_token),
        q(&app.signed_out_url()),
    );
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Max-Age=0"),
        )],
        Redirect::to(&url),
    )
        .into_response()
}

pub async fn signed_out(State(app): State<App>) -> Response {
    let received = app
        .front_channel_logouts
        .load(std::sync::atomic::Ordering::SeqCst);
    page(
        StatusCode::OK,
        "Signed out",
        &format!(
            "<p id=\"signed-out\">You are signed out of this app and of the token service: the \
             next sign-in asks for the password again.</p>\
             <p id=\"frontchannel\">Front-channel logouts received: {received}</p>\
             <p><a class=\"button\" href=\"/start\" id=\"start\">Sign in again</a></p>"
        ),
    )
}

#[derive(Deserialize)]
pub struct FrontChannel {
    iss: Option<String>,
    sid: Option<String>,
}

/// OIDC Front-Channel Logout: the token service's logout page loads this in an iframe with the
/// ended login session's `iss` and `sid`; sessions of that `sid` end here too.
pub async fn frontchannel_logout(
    State(app): State<App>,
    Query(q): Query<FrontChannel>,
) -> Response {
    match (q.iss, q.sid) {
        (Some(iss), Some(sid)) if iss == app.cfg.issuer => {
            app.end_sessions_of(&sid);
            app.front_channel_logouts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (
                [(header::CACHE_CONTROL, "no-store")],
                "signed out of the example app",
            )
                .into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "iss and sid of this issuer required",
        )
            .into_response(),
    }
}

/// The value of cookie `name` in the request, if any.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}
