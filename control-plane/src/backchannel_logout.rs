//! OpenID Connect Back-Channel Logout 1.0: when a login session ends, every client that got a
//! grant in it and registered a `backchannel_logout_uri` receives a `POST` with a signed
//! `logout_token`.
//!
//! Delivery runs in the background: the browser's logout never waits for a relying party, a
//! slow or dead one costs at most [`DELIVERY_TIMEOUT`], and a failure is logged, never fatal
//! (the session is already gone). The token goes only to the URI registered for the client:
//! redirects are not followed. The URI comes from the admin API (no dynamic registration), so
//! in-cluster addresses are allowed, unlike a client's `jwks_uri`.

use crate::browser_session::Participant;
use crate::clock;
use crate::keys::ACCESS_TOKEN_SET;
use crate::server::Service;
use axum::body::Bytes;
use axum::http::{Method, Request, header};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long one delivery may take, connecting included (Hydra: 30 s; relying parties are
/// expected to answer at once, so less ties up less).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight at once; more wait their turn, so a burst of logouts cannot open an
/// unbounded number of connections.
const MAX_IN_FLIGHT: usize = 32;
/// How long a logout token is valid: it is delivered at once or not at all.
const TOKEN_TTL: i64 = 120;

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Explicit typing (Back-Channel Logout 1.0 section 2.4, RFC 8725 3.11): the filter's `jwt`
/// authenticator refuses this `typ`, so a logout token is never taken as an access token.
pub const TYP: &str = "logout+jwt";

/// The claims of a logout token (Back-Channel Logout 1.0, section 2.4): never a `nonce`, so
/// it cannot pass for an ID token. Hydra omits `exp` and `sub`; the spec requires `exp`, and
/// `sub` lets a relying party that keys sessions by subject act on it.
#[derive(Debug, Serialize)]
pub struct LogoutClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub events: Value,
    pub sid: String,
}

impl LogoutClaims {
    pub fn new(issuer: &str, subject: &str, client_id: &str, sid: &str, now: i64) -> Self {
        Self {
            iss: issuer.to_string(),
            sub: subject.to_string(),
            aud: vec![client_id.to_string()],
            iat: now,
            exp: now.saturating_add(TOKEN_TTL),
            jti: uuid::Uuid::new_v4().to_string(),
            events: json!({ EVENT: {} }),
            sid: sid.to_string(),
        }
    }
}

/// Why one delivery failed. Logged only.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("no HTTP client (TLS setup failed)")]
    NoClient,
    #[error("no signing key")]
    NoKey,
    #[error("signing the logout token failed")]
    Sign,
    #[error("bad backchannel_logout_uri: {0}")]
    BadUri(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the relying party answered {0}")]
    Status(u16),
}

/// Sends logout tokens.
pub struct Notifier {
    client: Option<HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>>,
    slots: Arc<Semaphore>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Notifier {
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(DELIVERY_TIMEOUT));
        let client = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map(|b| {
                let connector = b.https_or_http().enable_http1().wrap_connector(http);
                HttpClient::builder(TokioExecutor::new()).build(connector)
            })
            .map_err(
                |e| tracing::error!(error = %e, "TLS setup failed: back-channel logout disabled"),
            )
            .ok();
        Self {
            client,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    async fn post(&self, uri: &str, token: &str) -> Result<(), DeliveryError> {
        let client = self.client.as_ref().ok_or(DeliveryError::NoClient)?;
        let body = serde_urlencoded::to_string([("logout_token", token)])
            .map_err(|e| DeliveryError::BadUri(e.to_string()))?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| DeliveryError::BadUri(e.to_string()))?;
        let resp = tokio::time::timeout(DELIVERY_TIMEOUT, client.request(req))
            .await
            .map_err(|_| DeliveryError::Timeout(DELIVERY_TIMEOUT))?
            .map_err(|e| DeliveryError::Transport(e.to_string()))?;
        // The spec asks for 200; Hydra accepts 204 as well. A redirect is a failure: the token
        // goes to the registered URI only.
        match resp.status().as_u16() {
            200 | 204 => Ok(()),
            other => Err(DeliveryError::Status(other)),
        }
    }
}

/// Signs a logout token for `client_id` with the current ID-token key, typed `logout+jwt`.
pub fn logout_token(
    svc: &Service,
    subject: &str,
    client_id: &str,
    sid: &str,
) -> Result<String, DeliveryError> {
    let ring = svc.keys.ring();
    let key = ring.current(ACCESS_TOKEN_SET).ok_or(DeliveryError::NoKey)?;
    let claims = LogoutClaims::new(&svc.config.issuer, subject, client_id, sid, clock::now());
    key.sign_typed_jwt(TYP, &claims, &svc.keys.rng)
        .map_err(|_| DeliveryError::Sign)
}

/// Starts delivering a logout token to each of `ended` that registered a
/// `backchannel_logout_uri`; returns at once.
pub fn notify(svc: &Arc<Service>, subject: &str, ended: &[Participant]) {
    for p in ended {
        let Some(record) = svc.clients.lookup(&p.client_id) else {
            continue;
        };
        let uri = record.client.backchannel_logout_uri.clone();
        if uri.is_empty() {
            continue;
        }
        let svc = Arc::clone(svc);
        let (subject, p) = (subject.to_string(), p.clone());
        tokio::spawn(async move {
            let Ok(_slot) = Arc::clone(&svc.backchannel.slots).acquire_owned().await else {
                return;
            };
            let sent = match logout_token(&svc, &subject, &p.client_id, &p.sid) {
                Ok(token) => svc.backchannel.post(&uri, &token).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => tracing::info!(client_id = %p.client_id, sid = %p.sid,
                    "back-channel logout delivered"),
                Err(e) => tracing::warn!(client_id = %p.client_id, sid = %p.sid, uri = %uri,
                    error = %e, "back-channel logout failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_claims_carry_the_event_and_no_nonce() {
        let c = serde_json::to_value(LogoutClaims::new("https://iss", "alice", "app", "s1", 100))
            .unwrap();
        assert_eq!(c["aud"], json!(["app"]));
        assert_eq!(c["exp"], 220);
        assert_eq!(c["events"], json!({ EVENT: {} }));
        assert_eq!(c["sid"], "s1");
        assert!(c.get("nonce").is_none());
    }
}
