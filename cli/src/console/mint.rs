//! A token for the rule tester, for a client picked in the page (`POST /console/api/token`).
//!
//! The person pastes the client's secret, and the request goes through the token endpoint's
//! own handler in-process as a `client_credentials` grant, authenticated the way the client is
//! registered (Basic or POST). So the console can mint only what the client itself could get:
//! the secret's hash, the auth method, the grant type, the scope and audience allow-lists, the
//! metrics and the error answers are the token endpoint's, unchanged. An admin-only "mint for
//! any client without its secret" would be a second issuing path to audit and to keep in step;
//! the admin API can already replace a secret, but that shows in the client and breaks its
//! deployments, whereas a silent mint would not. The secret is neither stored nor logged.

use super::Console;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use portcullis::client::AuthMethod;
use portcullis::oauth2_error::OAuth2Error;
use portcullis::request::{Form, Params};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
pub(super) struct MintBody {
    client_id: String,
    client_secret: String,
    /// Space-separated, as the token endpoint takes it.
    #[serde(default)]
    scope: String,
    #[serde(default)]
    audience: Vec<String>,
}

pub(super) async fn mint(
    State(console): State<Console>,
    portcullis::request::Json(body): portcullis::request::Json<MintBody>,
) -> Response {
    let svc = Arc::clone(&console.svc);
    let mut params = vec![("grant_type".to_string(), "client_credentials".to_string())];
    if !body.scope.trim().is_empty() {
        params.push(("scope".into(), body.scope.trim().to_string()));
    }
    params.extend(
        body.audience
            .iter()
            .filter(|a| !a.is_empty())
            .map(|a| ("audience".to_string(), a.clone())),
    );
    // An unknown client goes the Basic way too: the token endpoint answers it as it answers
    // any unknown client.
    let basic = svc
        .clients
        .lookup(&body.client_id)
        .is_none_or(|c| c.auth_method == AuthMethod::ClientSecretBasic);
    let mut headers = HeaderMap::new();
    if basic {
        // RFC 6749 2.3.1: each half form-urlencoded, then Base64.
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let pair = format!("{}:{}", enc(&body.client_id), enc(&body.client_secret));
        match HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(pair))) {
            Ok(v) => {
                headers.insert(header::AUTHORIZATION, v);
            }
            Err(_) => {
                return OAuth2Error::invalid_request("unusable client credentials").into_response();
            }
        }
    } else {
        params.push(("client_id".into(), body.client_id.clone()));
        params.push(("client_secret".into(), body.client_secret.clone()));
    }
    let mut resp =
        portcullis::token::token_endpoint(State(svc), headers, Ok(Form(Params(params)))).await;
    tracing::info!(
        audit = "console_token",
        client_id = %body.client_id,
        scope = %body.scope,
        status = resp.status().as_u16(),
        "console: token requested for the rule tester"
    );
    // A Basic challenge on a fetch() answer would make the browser prompt for a password.
    resp.headers_mut().remove(header::WWW_AUTHENTICATE);
    resp
}
