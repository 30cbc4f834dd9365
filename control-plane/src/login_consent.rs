//! The login and consent steps of a flow: Hydra v2's admin API for the login/consent app
//! (`/admin/oauth2/auth/requests/{login,consent}` GET, `/accept`, `/reject`) and the browser's
//! return to `/oauth2/auth` with a verifier.
//!
//! Every step checks the stage it expects and moves the flow on with a compare-and-set, so a
//! challenge answers 410 once handled and a verifier works once. The browser must also bring
//! the CSRF cookie set when it left for the app: a verifier alone (e.g. planted in a victim's
//! browser) does not complete someone else's flow.

use crate::authorize::{error_url, establish_login, issue_code};
use crate::browser_session::{self, RememberedConsent, csrf_cookie_name, read_cookie};
use crate::client::AuthMethod;
use crate::clock;
use crate::flow::{self, ConsentResult, Flow, LoginResult, Rejection, Stage, secs};
use crate::oauth2_error::{ErrorCode, OAuth2Error, append_query, redirect};
use crate::request::{Json, Params};
use crate::server::Service;
use crate::store::StepRows;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// About a century: Hydra's "remember forever" (`remember_for: 0`) for consents.
const FOREVER: i64 = 100 * 365 * 24 * 3600;

fn challenge(query: Option<&str>, name: &str) -> Result<String, OAuth2Error> {
    let p = Params::parse_urlencoded(query.unwrap_or("").as_bytes())?;
    p.get(name)?
        .map(str::to_string)
        .ok_or_else(|| OAuth2Error::invalid_request(format!("The {name} parameter is missing.")))
}

fn not_found(what: &str) -> OAuth2Error {
    OAuth2Error::not_found(format!("The {what} request does not exist or has expired."))
}

/// Hydra's answer for a challenge that was already handled.
fn gone(flow: &Flow) -> Response {
    (
        StatusCode::GONE,
        axum::Json(json!({"redirect_to": flow.request_url})),
    )
        .into_response()
}

fn redirect_to(url: String) -> Response {
    axum::Json(json!({ "redirect_to": url })).into_response()
}

fn client_json(svc: &Service, client_id: &str) -> Value {
    svc.clients
        .get(client_id)
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or(Value::Null)
}

fn oidc_context(flow: &Flow) -> Value {
    json!({
        "acr_values": flow.acr_values,
        "ui_locales": flow.ui_locales,
        "display": flow.display.clone().unwrap_or_default(),
        "login_hint": flow.login_hint.clone().unwrap_or_default(),
        "id_token_hint_claims": flow.id_token_hint_claims,
    })
}

/// A login request by its challenge (the flow id).
async fn login_flow(svc: &Service, challenge: &str) -> Result<(Flow, Stage), OAuth2Error> {
    flow::load(svc, challenge)
        .await?
        .ok_or_else(|| not_found("login"))
}

/// A consent request by its challenge (`<flow id>.<secret>`).
async fn consent_flow(svc: &Service, challenge: &str) -> Result<(Flow, Stage), OAuth2Error> {
    let (id, secret) = flow::parse_artifact(challenge).ok_or_else(|| not_found("consent"))?;
    let (flow, stage) = flow::load(svc, id)
        .await?
        .ok_or_else(|| not_found("consent"))?;
    if !flow::secret_matches(flow.consent_challenge_hash.as_deref(), secret) {
        return Err(not_found("consent"));
    }
    Ok((flow, stage))
}

/// `GET /admin/oauth2/auth/requests/login?login_challenge=`.
pub async fn get_login_request(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let (flow, stage) = login_flow(&svc, &challenge(q.as_deref(), "login_challenge")?).await?;
    if stage != Stage::LoginRequested {
        return Ok(gone(&flow));
    }
    let session = flow.skip_session.as_ref();
    Ok(axum::Json(json!({
        "challenge": flow.id,
        "skip": flow.login_skip,
        "subject": session.map(|s| s.subject.clone()).unwrap_or_default(),
        "requested_scope": flow.scopes,
        "requested_access_token_audience": flow.audience,
        "oidc_context": oidc_context(&flow),
        "client": client_json(&svc, &flow.client_id),
        "request_url": flow.request_url,
        "session_id": session.map(|s| s.sid.clone()).unwrap_or_default(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct AcceptLogin {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    remember: bool,
    #[serde(default)]
    remember_for: i64,
    #[serde(default)]
    acr: String,
    #[serde(default)]
    amr: Vec<String>,
    #[serde(default)]
    context: Value,
}

fn verifier_url(flow: &Flow, name: &str, verifier: &str) -> String {
    append_query(&flow.request_url, &[(name, verifier)])
}

/// `PUT /admin/oauth2/auth/requests/login/accept?login_challenge=`.
pub async fn accept_login(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
    Json(body): Json<AcceptLogin>,
) -> Result<Response, OAuth2Error> {
    let (mut flow, stage) = login_flow(&svc, &challenge(q.as_deref(), "login_challenge")?).await?;
    if stage != Stage::LoginRequested {
        return Ok(gone(&flow));
    }
    if body.subject.is_empty() {
        return Err(OAuth2Error::invalid_request(
            "Field subject must not be empty.",
        ));
    }
    if body.remember_for < 0 {
        return Err(OAuth2Error::invalid_request(
            "Field remember_for must not be negative.",
        ));
    }
    let now = clock::now();
    let (sid, auth_time) = match &flow.skip_session {
        Some(s) if flow.login_skip => {
            if s.subject != body.subject {
                return Err(OAuth2Error::invalid_request(
                    "Field subject does not match the subject of the remembered login session.",
                ));
            }
            (s.sid.clone(), s.auth_time)
        }
        _ => (uuid::Uuid::new_v4().to_string(), now),
    };
    flow.login = Some(LoginResult {
        subject: body.subject,
        remember: body.remember,
        remember_for: body.remember_for,
        acr: body.acr,
        amr: body.amr,
        context: body.context,
        sid,
        auth_time,
    });
    handled_login(&svc, flow).await
}

/// `PUT /admin/oauth2/auth/requests/login/reject?login_challenge=`.
pub async fn reject_login(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
    Json(body): Json<Rejection>,
) -> Result<Response, OAuth2Error> {
    let (mut flow, stage) = login_flow(&svc, &challenge(q.as_deref(), "login_challenge")?).await?;
    if stage != Stage::LoginRequested {
        return Ok(gone(&flow));
    }
    flow.login_rejection = Some(body);
    handled_login(&svc, flow).await
}

async fn handled_login(svc: &Service, mut flow: Flow) -> Result<Response, OAuth2Error> {
    let (verifier, hash) = flow::artifact(&flow.id)?;
    flow.login_verifier_hash = Some(hash);
    let expires = clock::now() + secs(svc.config.flows.request_ttl);
    if !flow::advance(
        svc,
        &flow,
        Stage::LoginRequested,
        Stage::LoginHandled,
        expires,
    )
    .await?
    {
        return Ok(gone(&flow));
    }
    Ok(redirect_to(verifier_url(
        &flow,
        "login_verifier",
        &verifier,
    )))
}

/// The app's rejection, sent to the client. An empty `error` becomes `access_denied`.
fn rejected(flow: &Flow, r: &Rejection) -> Response {
    let error = if r.error.is_empty() {
        "access_denied"
    } else {
        r.error.as_str()
    };
    let mut params = vec![("error", error)];
    if !r.error_description.is_empty() {
        params.push(("error_description", r.error_description.as_str()));
    }
    if !r.error_hint.is_empty() {
        params.push(("error_hint", r.error_hint.as_str()));
    }
    params.push(("state", flow.state.as_str()));
    redirect(
        StatusCode::SEE_OTHER,
        &append_query(&flow.redirect_uri, &params),
    )
}

/// Loads the flow of a verifier and checks secret, stage and CSRF cookie. `Err(Response)` is
/// the answer to send instead.
async fn verified(
    svc: &Service,
    headers: &HeaderMap,
    verifier: &str,
    expected: Stage,
    step: &str,
) -> Result<Result<Flow, Response>, OAuth2Error> {
    let invalid = || {
        OAuth2Error::new(
            ErrorCode::AccessDenied,
            format!("The {step} verifier is invalid or has expired."),
        )
    };
    let Some((id, secret)) = flow::parse_artifact(verifier) else {
        return Ok(Err(invalid().to_error_page(&error_url(svc))));
    };
    let Some((flow, stage)) = flow::load(svc, id).await? else {
        return Ok(Err(invalid().to_error_page(&error_url(svc))));
    };
    let hash = match step {
        "login" => flow.login_verifier_hash.as_deref(),
        _ => flow.consent_verifier_hash.as_deref(),
    };
    if !flow::secret_matches(hash, secret) {
        return Ok(Err(invalid().to_error_page(&error_url(svc))));
    }
    if stage != expected {
        return Ok(Err(OAuth2Error::new(
            ErrorCode::AccessDenied,
            format!("The {step} verifier has already been used."),
        )
        .to_client(&flow.redirect_uri, &flow.state)));
    }
    let csrf = match step {
        "login" => Some(flow.login_csrf.as_str()),
        _ => flow.consent_csrf.as_deref(),
    };
    let cookie = read_cookie(headers, &csrf_cookie_name(step, &flow.client_id));
    let csrf_ok = match (csrf, cookie.as_deref()) {
        (Some(want), Some(got)) => flow::secret_hash(want) == flow::secret_hash(got),
        _ => false,
    };
    if !csrf_ok {
        return Ok(Err(OAuth2Error::new(
            ErrorCode::RequestForbidden,
            format!(
                "The {step} CSRF cookie is missing or does not match: the flow must be completed \
                 in the browser that started it."
            ),
        )
        .into_response()));
    }
    Ok(Ok(flow))
}

async fn fail(svc: &Service, flow: &Flow, from: Stage) -> Result<(), OAuth2Error> {
    fail_with(svc, flow, from, StepRows::default()).await
}

async fn fail_with(
    svc: &Service,
    flow: &Flow,
    from: Stage,
    rows: StepRows,
) -> Result<(), OAuth2Error> {
    let expires = clock::now() + 60;
    flow::advance_with(svc, flow, from, Stage::Failed, expires, rows).await?;
    Ok(())
}

/// The browser is back from the login app (`/oauth2/auth?login_verifier=`).
pub async fn login_verified(
    svc: &Service,
    headers: &HeaderMap,
    verifier: &str,
) -> Result<Response, OAuth2Error> {
    let mut flow = match verified(svc, headers, verifier, Stage::LoginHandled, "login").await? {
        Ok(f) => f,
        Err(resp) => return Ok(resp),
    };
    if let Some(r) = flow.login_rejection.clone() {
        fail(svc, &flow, Stage::LoginHandled).await?;
        return Ok(rejected(&flow, &r));
    }
    let Some(login) = flow.login.clone() else {
        return Err(OAuth2Error::server_error("handled login without result"));
    };
    let client = svc.clients.lookup(&flow.client_id);
    let Some(client) = client else {
        fail(svc, &flow, Stage::LoginHandled).await?;
        return Ok(
            OAuth2Error::invalid_client("The OAuth 2.0 Client no longer exists.")
                .to_error_page(&error_url(svc)),
        );
    };
    // The login session is written with this step's advance (one transaction), whichever
    // way the step ends.
    let (session_cookie, session_row) = establish_login(svc, &flow, &login)?;
    let rows = StepRows {
        sessions: vec![session_row],
        ..StepRows::default()
    };
    // Hydra skips consent only for a remembered consent covering the request, never on
    // prompt=consent, and not for a public client whose redirect could be anyone's app.
    let redirect_trusted = client.auth_method != AuthMethod::None
        || flow.redirect_uri.starts_with("https://")
        || url::Url::parse(&flow.redirect_uri).is_ok_and(|u| match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        });
    let remembered =
        browser_session::remembered_consent(svc, &flow.client_id, &login.subject).await?;
    flow.consent_skip = !flow.prompt.iter().any(|w| w == "consent")
        && redirect_trusted
        && remembered.is_some_and(|c| {
            flow.scopes.iter().all(|s| c.grant_scope.contains(s))
                && flow
                    .audience
                    .iter()
                    .all(|a| c.grant_access_token_audience.contains(a))
        });
    if flow.prompt.iter().any(|w| w == "none") && !flow.consent_skip {
        fail_with(svc, &flow, Stage::LoginHandled, rows).await?;
        return Ok(OAuth2Error::new(
            ErrorCode::ConsentRequired,
            "Prompt none was requested, but no remembered consent covers the request.",
        )
        .to_client(&flow.redirect_uri, &flow.state));
    }
    let Some(consent_url) = svc.config.flows.consent_url.clone() else {
        return Err(OAuth2Error::new(
            ErrorCode::ServerError,
            "The consent step is not configured: start the server with --consent-url.",
        ));
    };
    let (consent_challenge, hash) = flow::artifact(&flow.id)?;
    let csrf = flow::new_secret()?;
    flow.consent_challenge_hash = Some(hash);
    flow.consent_csrf = Some(csrf.clone());
    let expires = clock::now() + secs(svc.config.flows.request_ttl);
    if !flow::advance_with(
        svc,
        &flow,
        Stage::LoginHandled,
        Stage::ConsentRequested,
        expires,
        rows,
    )
    .await?
    {
        return Ok(OAuth2Error::new(
            ErrorCode::AccessDenied,
            "The login verifier has already been used.",
        )
        .to_client(&flow.redirect_uri, &flow.state));
    }
    let secure = svc.secure_cookies();
    let mut resp = redirect(
        StatusCode::FOUND,
        &append_query(&consent_url, &[("consent_challenge", &consent_challenge)]),
    );
    let h = resp.headers_mut();
    if let Some(c) = session_cookie {
        h.append(header::SET_COOKIE, c);
    }
    h.append(
        header::SET_COOKIE,
        browser_session::set_cookie(
            &csrf_cookie_name("consent", &flow.client_id),
            &csrf,
            Some(secs(svc.config.flows.request_ttl)),
            secure,
        ),
    );
    Ok(resp)
}

/// `GET /admin/oauth2/auth/requests/consent?consent_challenge=`.
pub async fn get_consent_request(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuth2Error> {
    let c = challenge(q.as_deref(), "consent_challenge")?;
    let (flow, stage) = consent_flow(&svc, &c).await?;
    if stage != Stage::ConsentRequested {
        return Ok(gone(&flow));
    }
    let login = flow.login.clone().unwrap_or_default();
    Ok(axum::Json(json!({
        "challenge": c,
        "consent_request_id": flow.grant_id,
        "skip": flow.consent_skip,
        "subject": login.subject,
        "requested_scope": flow.scopes,
        "requested_access_token_audience": flow.audience,
        "oidc_context": oidc_context(&flow),
        "client": client_json(&svc, &flow.client_id),
        "request_url": flow.request_url,
        "login_challenge": flow.id,
        "login_session_id": login.sid,
        "acr": login.acr,
        "amr": login.amr,
        "context": login.context,
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct ConsentSession {
    #[serde(default)]
    access_token: Value,
    #[serde(default)]
    id_token: Value,
}

#[derive(Debug, Deserialize)]
pub struct AcceptConsent {
    #[serde(default)]
    grant_scope: Vec<String>,
    #[serde(default)]
    grant_access_token_audience: Vec<String>,
    #[serde(default)]
    session: Option<ConsentSession>,
    #[serde(default)]
    remember: bool,
    #[serde(default)]
    remember_for: i64,
    #[serde(default)]
    context: Value,
}

fn object_or_empty(field: &str, v: Value) -> Result<Value, OAuth2Error> {
    match v {
        Value::Null => Ok(json!({})),
        Value::Object(_) => Ok(v),
        _ => Err(OAuth2Error::invalid_request(format!(
            "Field {field} must be a JSON object."
        ))),
    }
}

/// `PUT /admin/oauth2/auth/requests/consent/accept?consent_challenge=`.
pub async fn accept_consent(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
    Json(body): Json<AcceptConsent>,
) -> Result<Response, OAuth2Error> {
    let c = challenge(q.as_deref(), "consent_challenge")?;
    let (mut flow, stage) = consent_flow(&svc, &c).await?;
    if stage != Stage::ConsentRequested {
        return Ok(gone(&flow));
    }
    if body.remember_for < 0 {
        return Err(OAuth2Error::invalid_request(
            "Field remember_for must not be negative.",
        ));
    }
    let client = svc
        .clients
        .lookup(&flow.client_id)
        .ok_or_else(|| OAuth2Error::invalid_request("The OAuth 2.0 Client no longer exists."))?;
    // The app may grant less than requested, never more than the client may hold.
    crate::token::check_request(
        &client,
        svc.config.scope_strategy,
        &body.grant_scope,
        &body.grant_access_token_audience,
    )?;
    let session = body.session.unwrap_or_default();
    flow.consent = Some(ConsentResult {
        grant_scope: body.grant_scope,
        grant_access_token_audience: body.grant_access_token_audience,
        access_token_claims: object_or_empty("session.access_token", session.access_token)?,
        id_token_claims: object_or_empty("session.id_token", session.id_token)?,
        remember: body.remember,
        remember_for: body.remember_for,
        context: body.context,
        handled_at: clock::now(),
    });
    handled_consent(&svc, flow).await
}

/// `PUT /admin/oauth2/auth/requests/consent/reject?consent_challenge=`.
pub async fn reject_consent(
    State(svc): State<Arc<Service>>,
    RawQuery(q): RawQuery,
    Json(body): Json<Rejection>,
) -> Result<Response, OAuth2Error> {
    let c = challenge(q.as_deref(), "consent_challenge")?;
    let (mut flow, stage) = consent_flow(&svc, &c).await?;
    if stage != Stage::ConsentRequested {
        return Ok(gone(&flow));
    }
    flow.consent_rejection = Some(body);
    handled_consent(&svc, flow).await
}

async fn handled_consent(svc: &Service, mut flow: Flow) -> Result<Response, OAuth2Error> {
    let (verifier, hash) = flow::artifact(&flow.id)?;
    flow.consent_verifier_hash = Some(hash);
    let expires = clock::now() + secs(svc.config.flows.request_ttl);
    if !flow::advance(
        svc,
        &flow,
        Stage::ConsentRequested,
        Stage::ConsentHandled,
        expires,
    )
    .await?
    {
        return Ok(gone(&flow));
    }
    Ok(redirect_to(verifier_url(
        &flow,
        "consent_verifier",
        &verifier,
    )))
}

/// The browser is back from the consent app (`/oauth2/auth?consent_verifier=`).
pub async fn consent_verified(
    svc: &Service,
    headers: &HeaderMap,
    verifier: &str,
) -> Result<Response, OAuth2Error> {
    let flow = match verified(svc, headers, verifier, Stage::ConsentHandled, "consent").await? {
        Ok(f) => f,
        Err(resp) => return Ok(resp),
    };
    if let Some(r) = flow.consent_rejection.clone() {
        fail(svc, &flow, Stage::ConsentHandled).await?;
        return Ok(rejected(&flow, &r));
    }
    let (Some(consent), Some(login)) = (flow.consent.clone(), flow.login.clone()) else {
        return Err(OAuth2Error::server_error("handled consent without result"));
    };
    let mut rows = StepRows::default();
    if consent.remember {
        let lifetime = if consent.remember_for > 0 {
            consent.remember_for
        } else {
            FOREVER
        };
        let remembered = RememberedConsent {
            grant_scope: consent.grant_scope.clone(),
            grant_access_token_audience: consent.grant_access_token_audience.clone(),
            access_token_claims: consent.access_token_claims.clone(),
            id_token_claims: consent.id_token_claims.clone(),
            handled_at: consent.handled_at,
            consent_request_id: flow.grant_id.clone(),
            login_session_id: login.sid.clone(),
            remember_for: consent.remember_for,
            context: consent.context.clone(),
        };
        rows.sessions.push(browser_session::consent_row(
            &flow.client_id,
            &login.subject,
            &remembered,
            clock::now().saturating_add(lifetime),
        )?);
    }
    let has_channel = svc.clients.lookup(&flow.client_id).is_some_and(|c| {
        !c.client.backchannel_logout_uri.is_empty() || !c.client.frontchannel_logout_uri.is_empty()
    });
    if has_channel {
        browser_session::record_participant(svc, &login.subject, &login.sid, &flow.client_id)
            .await?;
    }
    issue_code(svc, flow, Stage::ConsentHandled, rows).await
}
