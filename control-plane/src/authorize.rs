//! The authorization endpoint (`GET|POST /oauth2/auth`): validates an authorization request,
//! then walks the browser through the login and consent apps and back (Hydra's challenge /
//! verifier dance), and finally redirects to the client with a code.
//!
//! Error routing is the security boundary here: until the client and its `redirect_uri` are
//! verified, errors go to the error page (never to a URI taken from the request); after that,
//! to the registered URI with `state` (OIDC Core 3.1.2.6).

use crate::browser_session::{self, csrf_cookie_name, set_cookie};
use crate::client::{AuthMethod, ClientRecord};
use crate::clock;
use crate::flow::{self, CODE_TTL, Flow, LoginResult, LoginSession, Stage, secs};
use crate::oauth2_error::{ErrorCode, OAuth2Error, append_query, redirect};
use crate::request::Params;
use crate::server::Service;
use crate::store::{StepRows, StoredSession};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Hydra's minimum `state` length.
const MIN_STATE_LEN: usize = 8;
const MIN_NONCE_LEN: usize = 8;

pub fn error_url(svc: &Service) -> String {
    svc.config.flows.error_url.clone().unwrap_or_else(|| {
        format!(
            "{}/oauth2/fallbacks/error",
            svc.config.issuer.trim_end_matches('/')
        )
    })
}

fn auth_url(svc: &Service) -> String {
    format!("{}/oauth2/auth", svc.config.issuer.trim_end_matches('/'))
}

/// `GET|POST /oauth2/auth`.
pub async fn authorization_endpoint(
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
    let params = match params {
        Ok(p) => p,
        Err(e) => return e.to_error_page(&error_url(&svc)),
    };
    match step(&svc, &headers, &params).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn step(svc: &Service, headers: &HeaderMap, p: &Params) -> Result<Response, OAuth2Error> {
    if let Some(v) = p.get("login_verifier")? {
        return crate::login_consent::login_verified(svc, headers, v).await;
    }
    if let Some(v) = p.get("consent_verifier")? {
        return crate::login_consent::consent_verified(svc, headers, v).await;
    }
    start(svc, headers, p).await
}

/// Whether `requested` may stand for `registered`: the same string, or (RFC 8252 7.3) the same
/// `http` loopback IP-literal URI with any port. `localhost` gets no exception (it can resolve
/// elsewhere), as in Hydra.
pub fn redirect_uri_matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Ok(reg), Ok(req)) = (url::Url::parse(registered), url::Url::parse(requested)) else {
        return false;
    };
    let loopback = |u: &url::Url| match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    reg.scheme() == "http"
        && req.scheme() == "http"
        && loopback(&reg)
        && reg.host() == req.host()
        && req.username().is_empty()
        && req.password().is_none()
        && req.fragment().is_none()
        && reg.path() == req.path()
        && reg.query() == req.query()
        // The parser normalises; the raw strings must differ only in the port.
        && strip_port(registered) == strip_port(requested)
}

fn strip_port(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let host = match authority.rfind(':') {
        Some(i) if !authority.ends_with(']') => authority.get(..i).unwrap_or(authority),
        _ => authority,
    };
    format!("{scheme}://{host}{tail}")
}

/// The checked request: everything after this may redirect errors to `redirect_uri`.
struct Target {
    client: Arc<ClientRecord>,
    redirect_uri: String,
    redirect_uri_sent: bool,
}

fn target(svc: &Service, p: &Params) -> Result<Target, OAuth2Error> {
    let client_id = p
        .get("client_id")?
        .ok_or_else(|| OAuth2Error::invalid_request("The request is missing client_id."))?;
    let client = svc.clients.lookup(client_id).ok_or_else(|| {
        OAuth2Error::invalid_client("The requested OAuth 2.0 Client does not exist.")
    })?;
    let requested = p.get("redirect_uri")?;
    let registered = &client.client.redirect_uris;
    let (redirect_uri, sent) = match requested {
        Some(r) => {
            let ok = registered.iter().any(|reg| redirect_uri_matches(reg, r));
            if !ok {
                return Err(OAuth2Error::invalid_request(
                    "The redirect_uri does not match any of the OAuth 2.0 Client's registered redirect URIs.",
                ));
            }
            (r.to_string(), true)
        }
        None => {
            let openid = p
                .get("scope")?
                .is_some_and(|s| s.split(' ').any(|s| s == "openid"));
            match registered.as_slice() {
                [only] if !openid => (only.clone(), false),
                _ => {
                    return Err(OAuth2Error::invalid_request(
                        "The request is missing redirect_uri (required with scope openid or several registered URIs).",
                    ));
                }
            }
        }
    };
    Ok(Target {
        client,
        redirect_uri,
        redirect_uri_sent: sent,
    })
}

fn words(v: Option<&str>) -> Vec<String> {
    v.map(|s| {
        s.split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Validates everything but the client and redirect, and builds the flow.
fn build_flow(svc: &Service, t: &Target, p: &Params) -> Result<Flow, OAuth2Error> {
    if p.get("request")?.is_some() {
        return Err(OAuth2Error::new(
            ErrorCode::RequestNotSupported,
            "Request objects (the request parameter) are not supported.",
        ));
    }
    if p.get("request_uri")?.is_some() {
        return Err(OAuth2Error::new(
            ErrorCode::RequestUriNotSupported,
            "The request_uri parameter is not supported.",
        ));
    }
    let client = &t.client;
    let response_type = words(p.get("response_type")?);
    if response_type != ["code"] {
        return Err(OAuth2Error::new(
            ErrorCode::UnsupportedResponseType,
            "Only response_type code is supported.",
        ));
    }
    if !client.client.response_types.iter().any(|r| r == "code") {
        return Err(OAuth2Error::new(
            ErrorCode::UnsupportedResponseType,
            "The OAuth 2.0 Client is not allowed to use response type code.",
        ));
    }
    if !client.has_grant("authorization_code") {
        return Err(OAuth2Error::new(
            ErrorCode::UnauthorizedClient,
            "The OAuth 2.0 Client is not allowed to use the authorization_code grant.",
        ));
    }
    if let Some(mode) = p.get("response_mode")?
        && mode != "query"
    {
        return Err(OAuth2Error::invalid_request(format!(
            "response_mode {mode:?} is not supported (only query)."
        )));
    }
    let state = p.get("state")?.unwrap_or("");
    if state.chars().count() < MIN_STATE_LEN {
        return Err(OAuth2Error::new(
            ErrorCode::InvalidState,
            format!("The state is missing or has fewer than {MIN_STATE_LEN} characters."),
        ));
    }
    let nonce = p.get("nonce")?;
    if nonce.is_some_and(|n| n.chars().count() < MIN_NONCE_LEN) {
        return Err(OAuth2Error::new(
            ErrorCode::InsufficientEntropy,
            format!("The nonce has fewer than {MIN_NONCE_LEN} characters."),
        ));
    }
    let scopes = words(p.get("scope")?);
    let audience = p.all_split("audience");
    crate::token::check_request(client, svc.config.scope_strategy, &scopes, &audience)?;
    let mut prompt = words(p.get("prompt")?);
    for w in &mut prompt {
        match w.as_str() {
            "none" | "login" | "consent" => {}
            // Hydra (master) treats select_account as login; registration has no page here.
            "select_account" => *w = "login".into(),
            other => {
                return Err(OAuth2Error::invalid_request(format!(
                    "prompt {other:?} is not supported."
                )));
            }
        }
    }
    if prompt.iter().any(|w| w == "none") && prompt.len() > 1 {
        return Err(OAuth2Error::invalid_request(
            "prompt none must not be combined with other values.",
        ));
    }
    let max_age = match p.get("max_age")? {
        None => None,
        Some(v) => Some(v.parse::<i64>().ok().filter(|a| *a >= 0).ok_or_else(|| {
            OAuth2Error::invalid_request("max_age must be a non-negative integer.")
        })?),
    };
    let challenge = p.get("code_challenge")?;
    let method = p.get("code_challenge_method")?;
    match (challenge, method) {
        (Some(c), Some("S256")) => {
            if c.len() != 43 || !is_b64url(c) {
                return Err(OAuth2Error::invalid_request(
                    "code_challenge must be the 43-character base64url SHA-256 of the verifier.",
                ));
            }
        }
        (Some(_), _) => {
            return Err(OAuth2Error::invalid_request(
                "code_challenge_method must be S256 (plain is not allowed).",
            ));
        }
        (None, Some(_)) => {
            return Err(OAuth2Error::invalid_request(
                "code_challenge_method was sent without code_challenge.",
            ));
        }
        (None, None) => {
            let public = client.auth_method == AuthMethod::None;
            if svc.config.flows.pkce_enforced
                || (public && svc.config.flows.pkce_enforced_for_public_clients)
            {
                return Err(OAuth2Error::invalid_request(
                    "This server requires PKCE (code_challenge with method S256).",
                ));
            }
        }
    }
    let id_token_hint_claims = match p.get("id_token_hint")? {
        None => None,
        Some(hint) => Some(crate::id_token::verify_hint(svc, hint).ok_or_else(|| {
            OAuth2Error::invalid_request(
                "The id_token_hint is not an ID token issued by this server.",
            )
        })?),
    };
    let now = clock::now();
    let id = flow::new_secret()?;
    // Hydra's request_url: the authorization URL as the login app may show or restart it.
    let kept: Vec<(&str, &str)> = p.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(Flow {
        id,
        grant_id: uuid::Uuid::new_v4().to_string(),
        client_id: client.client.client_id.clone(),
        redirect_uri: t.redirect_uri.clone(),
        redirect_uri_sent: t.redirect_uri_sent,
        state: state.to_string(),
        scopes,
        audience,
        nonce: nonce.map(str::to_string),
        code_challenge: challenge.map(str::to_string),
        prompt,
        max_age,
        login_hint: p.get("login_hint")?.map(str::to_string),
        acr_values: words(p.get("acr_values")?),
        ui_locales: words(p.get("ui_locales")?),
        display: p.get("display")?.map(str::to_string),
        id_token_hint_claims,
        request_url: append_query(&auth_url(svc), &kept),
        requested_at: now,
        login_csrf: flow::new_secret()?,
        ..Flow::default()
    })
}

/// A new authorization request: validate, then send the browser to the login app.
async fn start(svc: &Service, headers: &HeaderMap, p: &Params) -> Result<Response, OAuth2Error> {
    let Some(login_url) = svc.config.flows.login_url.clone() else {
        return Err(OAuth2Error::new(
            ErrorCode::ServerError,
            "The authorization endpoint is not configured: start the server with --login-url \
             (PORTCULLIS_LOGIN_URL) and --consent-url (PORTCULLIS_CONSENT_URL).",
        ));
    };
    if svc.config.flows.consent_url.is_none() {
        return Err(OAuth2Error::new(
            ErrorCode::ServerError,
            "The authorization endpoint is not configured: start the server with --consent-url \
             (PORTCULLIS_CONSENT_URL).",
        ));
    }
    let t = match target(svc, p) {
        Ok(t) => t,
        Err(e) => return Ok(e.to_error_page(&error_url(svc))),
    };
    let state = p.get("state").ok().flatten().unwrap_or("").to_string();
    let mut flow = match build_flow(svc, &t, p) {
        Ok(f) => f,
        Err(e) => return Ok(e.to_client(&t.redirect_uri, &state)),
    };
    let session = browser_session::current_login(svc, headers).await?;
    let now = clock::now();
    if let Some(s) = session {
        // max_age 0 demands a new login (OIDC Core 3.1.2.1), even within the same second.
        let fresh = flow
            .max_age
            .is_none_or(|a| a > 0 && s.auth_time.saturating_add(a) >= now);
        let hinted = flow.id_token_hint_claims.as_ref().is_none_or(|c| {
            c.get("sub").and_then(serde_json::Value::as_str) == Some(s.subject.as_str())
        });
        if fresh && hinted && !flow.prompt.iter().any(|w| w == "login") {
            flow.login_skip = true;
            flow.skip_session = Some(s);
        }
    }
    if flow.prompt.iter().any(|w| w == "none") && !flow.login_skip {
        let e = OAuth2Error::new(
            ErrorCode::LoginRequired,
            "Prompt none was requested, but no usable login session exists.",
        );
        return Ok(e.to_client(&flow.redirect_uri, &flow.state));
    }
    let expires = now + secs(svc.config.flows.request_ttl);
    flow::insert(svc, &flow, Stage::LoginRequested, expires).await?;
    let secure = svc.secure_cookies();
    let mut resp = redirect(
        StatusCode::FOUND,
        &append_query(&login_url, &[("login_challenge", &flow.id)]),
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            &csrf_cookie_name("login", &flow.client_id),
            &flow.login_csrf,
            Some(secs(svc.config.flows.request_ttl)),
            secure,
        ),
    );
    Ok(resp)
}

/// The last step: the consent was given; send the code to the client. `rows` commit with it.
pub async fn issue_code(
    svc: &Service,
    mut flow: Flow,
    from: Stage,
    rows: StepRows,
) -> Result<Response, OAuth2Error> {
    let (code, hash) = flow::artifact(&flow.id)?;
    let now = clock::now();
    flow.code_hash = Some(hash);
    flow.code_expires_at = now + CODE_TTL;
    if !flow::advance_with(svc, &flow, from, Stage::CodeIssued, now + CODE_TTL, rows).await? {
        return Ok(OAuth2Error::new(
            ErrorCode::AccessDenied,
            "The consent verifier has already been used.",
        )
        .to_client(&flow.redirect_uri, &flow.state));
    }
    let code = format!("ory_ac_{code}");
    let scope = flow
        .consent
        .as_ref()
        .map(|c| c.grant_scope.join(" "))
        .unwrap_or_default();
    Ok(redirect(
        StatusCode::SEE_OTHER,
        &append_query(
            &flow.redirect_uri,
            &[("code", &code), ("scope", &scope), ("state", &flow.state)],
        ),
    ))
}

/// A login session for a flow whose login was accepted: the remembered one when login was
/// skipped, otherwise a new one (stored even when not remembered: logout and `sid` need it).
/// The login session of an accepted login: its cookie (if one is to be set) and its store row,
/// which the caller writes with the flow's next step.
pub fn establish_login(
    svc: &Service,
    flow: &Flow,
    login: &LoginResult,
) -> Result<(Option<HeaderValue>, (String, StoredSession)), OAuth2Error> {
    let secure = svc.secure_cookies();
    let now = clock::now();
    let lifetime = if login.remember && login.remember_for > 0 {
        login.remember_for
    } else {
        secs(svc.config.flows.authentication_session_ttl)
    };
    let skipped = flow.skip_session.as_ref().filter(|_| flow.login_skip);
    let mut session = LoginSession {
        sid: login.sid.clone(),
        subject: login.subject.clone(),
        auth_time: login.auth_time,
        remember: login.remember || skipped.is_some(),
        acr: login.acr.clone(),
        amr: login.amr.clone(),
        // A skipped login reuses the session without extending it.
        expires_at: skipped.map_or(now.saturating_add(lifetime), |s| s.expires_at),
        cookie_hash: skipped.and_then(|s| s.cookie_hash.clone()),
    };
    let name = browser_session::session_cookie_name(secure);
    let cookie = if login.remember {
        let (value, hash) = flow::artifact(&session.sid)?;
        session.cookie_hash = Some(hash);
        // Hydra v2.2+: remember_for 0 is a browser-session cookie.
        let max_age = (login.remember_for > 0).then_some(login.remember_for);
        Some(set_cookie(name, &value, max_age, secure))
    } else if skipped.is_some() {
        None
    } else {
        Some(set_cookie(name, "", Some(0), secure))
    };
    Ok((cookie, browser_session::login_row(&session)?))
}

/// `GET /oauth2/fallbacks/error`: where errors land without `--error-url`.
pub async fn fallback_error(RawQuery(query): RawQuery) -> Response {
    let p = Params::parse_urlencoded(query.as_deref().unwrap_or("").as_bytes()).unwrap_or_default();
    let error = p.get("error").ok().flatten().unwrap_or("unknown_error");
    let description = p.get("error_description").ok().flatten().unwrap_or("");
    let mut resp = (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uri_matching_is_exact_except_loopback_ports() {
        let m = redirect_uri_matches;
        assert!(m("https://app.example/cb", "https://app.example/cb"));
        assert!(!m("https://app.example/cb", "https://app.example/cb/"));
        assert!(!m("https://app.example/cb", "https://app.example/cb?x=1"));
        assert!(!m("https://app.example/cb", "https://app.example.evil/cb"));
        assert!(!m("https://app.example/cb", "https://APP.example/cb"));
        assert!(!m("https://app.example/cb", "https://app.example:8443/cb"));
        assert!(m("http://127.0.0.1/cb", "http://127.0.0.1:53123/cb"));
        assert!(m("http://127.0.0.1:80/cb", "http://127.0.0.1:9/cb"));
        assert!(m("http://[::1]/cb", "http://[::1]:9/cb"));
        assert!(!m("http://127.0.0.1/cb", "http://127.0.0.1:9/other"));
        assert!(!m("http://127.0.0.1/cb", "http://127.0.0.2:9/cb"));
        assert!(!m("http://localhost/cb", "http://localhost:9/cb"));
        assert!(!m("http://127.0.0.1/cb", "http://evil@127.0.0.1:9/cb"));
        assert!(!m("http://127.0.0.1/cb", "http://127.0.0.1:9/cb#x"));
        assert!(!m("https://127.0.0.1/cb", "https://127.0.0.1:9/cb"));
        assert!(!m("http://127.0.0.1/cb", "http://127.0.0.1:9/./cb"));
    }
}
