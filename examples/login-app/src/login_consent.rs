//! The login, consent and logout pages: Hydra's login/consent app protocol. The token service
//! sends the browser here with a challenge; the page asks the person, then accepts or rejects
//! the challenge on the admin API and sends the browser where the answer says.

use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
// `Redirect::to` is 303 See Other: after a POST the browser follows with a GET.
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::Flow;
use crate::error::AppError;
use crate::html::{escape, page};
use crate::{App, DEMO_USER};

/// How long the token service remembers a login (seconds): a second sign-in from the same
/// browser skips the login page until logout.
const REMEMBER_FOR: u64 = 3600;

#[derive(Deserialize)]
pub struct LoginQuery {
    login_challenge: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    challenge: String,
    username: String,
    password: String,
}

pub async fn login_page(
    State(app): State<App>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, AppError> {
    let challenge = q.login_challenge.ok_or_else(|| {
        AppError::BadRequest("login_challenge is missing: start at the start page".into())
    })?;
    let req = app.admin.request(Flow::Login, &challenge).await?;
    if req.get("skip").and_then(Value::as_bool) == Some(true) {
        // The token service remembers this browser's login: accept for the same subject.
        let subject = req.get("subject").and_then(Value::as_str).unwrap_or("");
        let to = app
            .admin
            .decide(
                Flow::Login,
                &challenge,
                true,
                &json!({ "subject": subject }),
            )
            .await?;
        return Ok(Redirect::to(&to).into_response());
    }
    Ok(login_form(&challenge, &req, None))
}

pub async fn login_submit(
    State(app): State<App>,
    Form(f): Form<LoginForm>,
) -> Result<Response, AppError> {
    if f.username != DEMO_USER || !app.password_matches(&f.password) {
        let req = app.admin.request(Flow::Login, &f.challenge).await?;
        return Ok(login_form(
            &f.challenge,
            &req,
            Some("Wrong username or password."),
        ));
    }
    let accept = json!({
        "subject": DEMO_USER,
        "remember": true,
        "remember_for": REMEMBER_FOR,
        "amr": ["pwd"],
    });
    let to = app
        .admin
        .decide(Flow::Login, &f.challenge, true, &accept)
        .await?;
    Ok(Redirect::to(&to).into_response())
}

fn login_form(challenge: &str, req: &Value, error: Option<&str>) -> Response {
    let client = client_label(req);
    let error_html = error
        .map(|e| format!("<p class=\"bad\" id=\"login-error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<p><b>{client}</b> asks you to sign in.</p>{error_html}\
         <form method=\"post\" action=\"/login\" id=\"login-form\">\
         <input type=\"hidden\" name=\"challenge\" value=\"{challenge}\">\
         <label>Username <input name=\"username\" id=\"username\" autocomplete=\"username\" value=\"{DEMO_USER}\"></label>\
         <label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\"></label>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form>\
         <p>The demo user is <code>{DEMO_USER}</code>; <code>make run</code> printed the password.</p>",
        challenge = escape(challenge),
    );
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    page(status, "Sign in", &body)
}

#[derive(Deserialize)]
pub struct ConsentQuery {
    consent_challenge: Option<String>,
}

#[derive(Deserialize)]
pub struct ConsentForm {
    challenge: String,
    decision: String,
}

pub async fn consent_page(
    State(app): State<App>,
    Query(q): Query<ConsentQuery>,
) -> Result<Response, AppError> {
    let challenge = q.consent_challenge.ok_or_else(|| {
        AppError::BadRequest("consent_challenge is missing: start at the start page".into())
    })?;
    let req = app.admin.request(Flow::Consent, &challenge).await?;
    if req.get("skip").and_then(Value::as_bool) == Some(true) {
        let to = app
            .admin
            .decide(Flow::Consent, &challenge, true, &grant(&req))
            .await?;
        return Ok(Redirect::to(&to).into_response());
    }
    let scopes: String = strings(&req, "requested_scope")
        .map(|s| format!("<li><code>{}</code></li>", escape(s)))
        .collect();
    let body = format!(
        "<p><b>{client}</b> asks for access on behalf of <b>{subject}</b> to:</p>\
         <ul id=\"scopes\">{scopes}</ul>\
         <form method=\"post\" action=\"/consent\">\
         <input type=\"hidden\" name=\"challenge\" value=\"{challenge}\">\
         <button type=\"submit\" name=\"decision\" value=\"allow\" id=\"allow\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\" class=\"secondary\">Deny</button></form>",
        client = client_label(&req),
        subject = escape(req.get("subject").and_then(Value::as_str).unwrap_or("")),
        challenge = escape(&challenge),
    );
    Ok(page(StatusCode::OK, "Grant access", &body))
}

pub async fn consent_submit(
    State(app): State<App>,
    Form(f): Form<ConsentForm>,
) -> Result<Response, AppError> {
    let to = if f.decision == "allow" {
        let req = app.admin.request(Flow::Consent, &f.challenge).await?;
        app.admin
            .decide(Flow::Consent, &f.challenge, true, &grant(&req))
            .await?
    } else {
        let reject = json!({
            "error": "access_denied",
            "error_description": "The user denied the request.",
        });
        app.admin
            .decide(Flow::Consent, &f.challenge, false, &reject)
            .await?
    };
    Ok(Redirect::to(&to).into_response())
}

/// Grants what was asked (the token service allows only what the client may request), and
/// adds a display name to the ID token. Consent is not remembered: each sign-in shows what the
/// client asks for (the login is remembered until logout).
fn grant(req: &Value) -> Value {
    json!({
        "grant_scope": req.get("requested_scope").cloned().unwrap_or(json!([])),
        "grant_access_token_audience": req
            .get("requested_access_token_audience")
            .cloned()
            .unwrap_or(json!([])),
        "remember": false,
        "session": { "id_token": { "name": "Alice Example" } },
    })
}

#[derive(Deserialize)]
pub struct LogoutQuery {
    logout_challenge: Option<String>,
}

#[derive(Deserialize)]
pub struct LogoutForm {
    challenge: String,
    decision: String,
}

pub async fn logout_page(
    State(app): State<App>,
    Query(q): Query<LogoutQuery>,
) -> Result<Response, AppError> {
    let challenge = q.logout_challenge.ok_or_else(|| {
        AppError::BadRequest("logout_challenge is missing: sign out from the app".into())
    })?;
    let req = app.admin.request(Flow::Logout, &challenge).await?;
    let body = format!(
        "<p>Sign <b>{subject}</b> out of the token service?</p>\
         <form method=\"post\" action=\"/logout-confirm\">\
         <input type=\"hidden\" name=\"challenge\" value=\"{challenge}\">\
         <button type=\"submit\" name=\"decision\" value=\"yes\" id=\"confirm-logout\">Yes, sign me out</button>\
         <button type=\"submit\" name=\"decision\" value=\"no\" id=\"cancel-logout\" class=\"secondary\">No, stay signed in</button></form>",
        subject = escape(req.get("subject").and_then(Value::as_str).unwrap_or("")),
        challenge = escape(&challenge),
    );
    Ok(page(StatusCode::OK, "Sign out", &body))
}

pub async fn logout_submit(
    State(app): State<App>,
    Form(f): Form<LogoutForm>,
) -> Result<Response, AppError> {
    let to = app
        .admin
        .decide(Flow::Logout, &f.challenge, f.decision == "yes", &json!({}))
        .await?;
    Ok(Redirect::to(&to).into_response())
}

fn strings<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a str> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// The client's name, or its id when it has none (escaped).
fn client_label(req: &Value) -> String {
    let client = req.get("client");
    let name = client
        .and_then(|c| c.get("client_name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| {
            client
                .and_then(|c| c.get("client_id"))
                .and_then(Value::as_str)
        })
        .unwrap_or("An application");
    escape(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use axum::body::to_bytes;
    use serde_json::json;

    use super::login_form;

    #[tokio::test]
    async fn a_hostile_client_name_and_challenge_are_shown_as_text() {
        let req = json!({"client": {"client_name": "<script>alert(1)</script>"}});
        let page = login_form("\"><img src=x onerror=alert(2)>", &req, Some("<b>x</b>"));
        let html =
            String::from_utf8(to_bytes(page.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("value=\"&quot;&gt;&lt;img"), "{html}");
        for raw in ["<script>", "<img", "<b>x"] {
            assert!(!html.contains(raw), "{raw} unescaped in {html}");
        }
    }
}
