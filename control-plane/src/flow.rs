//! The persisted state of one browser authorization flow (Hydra's login → consent → code
//! dance), shared by [`crate::authorize`], [`crate::login_consent`] and [`crate::code_grant`].
//!
//! A flow is one row: its JSON and the stage it has reached. Stages only move forward, each
//! by a compare-and-set in the store, so every challenge, verifier and code is single-use even
//! under concurrent requests and across restarts. The login challenge is the flow id (random,
//! 256 bits); verifiers, the consent challenge and the code are `<flow id>.<secret>` with only
//! the secret's SHA-256 stored, so a database read does not hand out usable verifiers or codes.
//!
//! Which steps wait for a flush to disk ([`durability`]): only the code exchange, which hands
//! out tokens (a refresh token must outlive a power cut, and so must the mark that makes a
//! replayed code revoke them). Every earlier step is committed before it is answered (the next
//! step, the login app, another worker see it; a crash or `kill -9` of the process loses
//! nothing) but not flushed: a power cut before the next flush takes back at most the last
//! steps of flows in progress, and such a flow then fails closed at its next step (unknown or
//! already-used challenge, verifier or code; the user starts over, as after an expired
//! challenge). What a rolled-back step handed out dies with it: its challenge, verifier or code
//! is unknown after the restart. A verifier whose use was rolled back is live again, which
//! grants nothing new: it is bound to the same browser's CSRF cookie and leads into the same
//! flow, whose code (if any) the restart took back. Hydra stores these requests in its
//! database; the difference is only the flush.

use crate::clock;
use crate::crypto::{b64url, hex, random_bytes, sha256};
use crate::oauth2_error::OAuth2Error;
use crate::server::Service;
use crate::store::{self, Durability, StepRows, StoredFlow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How long an authorization code lives (Hydra: 10 minutes).
pub const CODE_TTL: i64 = 600;

/// Browser-flow settings (Hydra's `urls.*`, `oauth2.pkce.*`, `ttl.*`).
#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub login_url: Option<String>,
    pub consent_url: Option<String>,
    /// Where errors go that cannot be sent to a client (unknown client, unregistered redirect);
    /// `None`: the built-in `/oauth2/fallbacks/error`.
    pub error_url: Option<String>,
    pub logout_url: Option<String>,
    pub post_logout_url: Option<String>,
    pub pkce_enforced: bool,
    pub pkce_enforced_for_public_clients: bool,
    /// How long a login or consent request may wait for the login/consent app.
    pub request_ttl: Duration,
    /// Remembered login sessions without `remember_for` (Hydra: 720h).
    pub authentication_session_ttl: Duration,
    pub id_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Hydra's `rotation_grace_period`: how long a rotated-out refresh token keeps working
    /// (each use rotating again) before reuse counts as theft. 0 = strict.
    pub refresh_grace_period: Duration,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            login_url: None,
            consent_url: None,
            error_url: None,
            logout_url: None,
            post_logout_url: None,
            pkce_enforced: false,
            pkce_enforced_for_public_clients: false,
            request_ttl: Duration::from_secs(30 * 60),
            authentication_session_ttl: Duration::from_secs(720 * 3600),
            id_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(720 * 3600),
            refresh_grace_period: Duration::ZERO,
        }
    }
}

pub fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Where a flow is. Stored as a number; only ever advanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the login app (login challenge live).
    LoginRequested = 0,
    /// Login accepted or rejected; the login verifier is live.
    LoginHandled = 1,
    /// Waiting for the consent app (consent challenge live).
    ConsentRequested = 2,
    /// Consent accepted or rejected; the consent verifier is live.
    ConsentHandled = 3,
    /// The code is live.
    CodeIssued = 4,
    /// The code was exchanged; a second exchange is a replay.
    CodeUsed = 5,
    /// Ended with an error sent to the client.
    Failed = 6,
}

impl Stage {
    pub fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 => Self::LoginRequested,
            1 => Self::LoginHandled,
            2 => Self::ConsentRequested,
            3 => Self::ConsentHandled,
            4 => Self::CodeIssued,
            5 => Self::CodeUsed,
            6 => Self::Failed,
            _ => return None,
        })
    }
}

/// An error the login or consent app chose (`PUT .../reject`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Rejection {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
    #[serde(default)]
    pub error_hint: String,
    #[serde(default)]
    pub error_debug: String,
    #[serde(default)]
    pub status_code: Option<u16>,
}

/// What the login app said (`PUT .../login/accept`), plus what the server decided.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoginResult {
    pub subject: String,
    pub remember: bool,
    pub remember_for: i64,
    pub acr: String,
    pub amr: Vec<String>,
    pub context: Value,
    /// The login session (`sid`), new or the remembered one.
    pub sid: String,
    pub auth_time: i64,
}

/// What the consent app granted (`PUT .../consent/accept`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConsentResult {
    pub grant_scope: Vec<String>,
    pub grant_access_token_audience: Vec<String>,
    /// `session.access_token`: goes into access tokens as `ext`.
    pub access_token_claims: Value,
    /// `session.id_token`: top-level claims of ID tokens.
    pub id_token_claims: Value,
    pub remember: bool,
    pub remember_for: i64,
    pub context: Value,
    pub handled_at: i64,
}

/// One authorization request and everything decided about it so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    /// The login challenge.
    pub id: String,
    /// Hydra's `consent_request_id`; names the token chain every token of this grant belongs to.
    pub grant_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    /// Whether the request named `redirect_uri` (then the token request must repeat it).
    pub redirect_uri_sent: bool,
    pub state: String,
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Vec<String>,
    pub max_age: Option<i64>,
    pub login_hint: Option<String>,
    pub acr_values: Vec<String>,
    pub ui_locales: Vec<String>,
    pub display: Option<String>,
    /// Claims of a valid `id_token_hint` (shown to the login app; its `sub` must be the
    /// remembered session's for login to be skipped).
    #[serde(default)]
    pub id_token_hint_claims: Option<serde_json::Map<String, Value>>,
    pub request_url: String,
    pub requested_at: i64,
    pub login_csrf: String,
    /// The remembered login session the browser came with, when it allows skipping login.
    pub login_skip: bool,
    pub skip_session: Option<LoginSession>,
    pub login: Option<LoginResult>,
    pub login_rejection: Option<Rejection>,
    pub login_verifier_hash: Option<String>,
    pub consent_challenge_hash: Option<String>,
    pub consent_csrf: Option<String>,
    pub consent_skip: bool,
    pub consent: Option<ConsentResult>,
    pub consent_rejection: Option<Rejection>,
    pub consent_verifier_hash: Option<String>,
    pub code_hash: Option<String>,
    pub code_expires_at: i64,
    /// Access tokens issued from the code (`jti`, `exp`): revoked when the code is replayed.
    pub issued: Vec<(String, i64)>,
}

/// A login session as remembered in the store (kind `login`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoginSession {
    pub sid: String,
    pub subject: String,
    pub auth_time: i64,
    pub remember: bool,
    pub acr: String,
    pub amr: Vec<String>,
    pub expires_at: i64,
    /// SHA-256 of the secret half of the session cookie (`<sid>.<secret>`). The `sid` alone is
    /// no credential: it is in every ID token, so any client knows it.
    #[serde(default)]
    pub cookie_hash: Option<String>,
}

/// A fresh random secret (256 bits, base64url).
pub fn new_secret() -> Result<String, OAuth2Error> {
    Ok(b64url(
        &random_bytes::<32>().map_err(OAuth2Error::server_error)?,
    ))
}

pub fn secret_hash(secret: &str) -> String {
    hex(&sha256(secret.as_bytes()))
}

/// Whether `secret` is the one whose hash was stored (constant time).
pub fn secret_matches(stored: Option<&str>, secret: &str) -> bool {
    stored.is_some_and(|h| {
        let got = secret_hash(secret);
        bool::from(h.as_bytes().ct_eq(got.as_bytes()))
    })
}

/// `<flow id>.<secret>` and the secret's hash to store.
pub fn artifact(flow_id: &str) -> Result<(String, String), OAuth2Error> {
    let secret = new_secret()?;
    let hash = secret_hash(&secret);
    Ok((format!("{flow_id}.{secret}"), hash))
}

/// Splits `<flow id>.<secret>`.
pub fn parse_artifact(value: &str) -> Option<(&str, &str)> {
    let (id, secret) = value.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

fn row(flow: &Flow, stage: Stage, expires_at: i64) -> Result<StoredFlow, OAuth2Error> {
    Ok(StoredFlow {
        id: flow.id.clone(),
        stage: stage as i64,
        json: serde_json::to_string(flow).map_err(OAuth2Error::server_error)?,
        expires_at,
    })
}

/// Whether a step moving a flow to `to` waits for a flush (see the module doc): only the code
/// exchange does.
pub fn durability(to: Stage) -> Durability {
    match to {
        Stage::CodeUsed => Durability::Durable,
        Stage::LoginRequested
        | Stage::LoginHandled
        | Stage::ConsentRequested
        | Stage::ConsentHandled
        | Stage::CodeIssued
        | Stage::Failed => Durability::Lossy,
    }
}

pub async fn insert(
    svc: &Service,
    flow: &Flow,
    stage: Stage,
    expires_at: i64,
) -> Result<(), OAuth2Error> {
    let row = row(flow, stage, expires_at)?;
    Ok(Arc::clone(&svc.store)
        .insert_flow_async(row, durability(stage))
        .await?)
}

/// The flow and its stage; `None` when unknown or expired.
pub async fn load(svc: &Service, id: &str) -> Result<Option<(Flow, Stage)>, OAuth2Error> {
    let id = id.to_string();
    let Some(stored) = store::read(&svc.store, move |s| s.get_flow(&id)).await? else {
        return Ok(None);
    };
    if stored.expires_at <= clock::now() {
        return Ok(None);
    }
    // Other kinds of request (logout) share the table: not a login flow.
    let Some(stage) = Stage::from_i64(stored.stage) else {
        return Ok(None);
    };
    let flow: Flow = serde_json::from_str(&stored.json).map_err(OAuth2Error::server_error)?;
    Ok(Some((flow, stage)))
}

/// Moves the flow from `from` to `to` with its new state; false when another request moved it
/// first.
pub async fn advance(
    svc: &Service,
    flow: &Flow,
    from: Stage,
    to: Stage,
    expires_at: i64,
) -> Result<bool, OAuth2Error> {
    advance_with(svc, flow, from, to, expires_at, StepRows::default()).await
}

/// [`advance`] with `rows` written in the same transaction (none of them when it loses).
pub async fn advance_with(
    svc: &Service,
    flow: &Flow,
    from: Stage,
    to: Stage,
    expires_at: i64,
    rows: StepRows,
) -> Result<bool, OAuth2Error> {
    let row = row(flow, to, expires_at)?;
    Ok(Arc::clone(&svc.store)
        .advance_flow_async(from as i64, row, rows, durability(to))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_parse_and_match_only_their_secret() {
        let (value, hash) = artifact("flow1").unwrap();
        let (id, secret) = parse_artifact(&value).unwrap();
        assert_eq!(id, "flow1");
        assert!(secret_matches(Some(&hash), secret));
        assert!(!secret_matches(Some(&hash), "guess"));
        assert!(!secret_matches(None, secret));
        assert!(parse_artifact("noseparator").is_none());
        assert!(parse_artifact(".x").is_none());
        assert!(parse_artifact("x.").is_none());
    }

    #[test]
    fn only_the_code_exchange_waits_for_the_flush() {
        for s in 0..7 {
            let stage = Stage::from_i64(s).unwrap();
            let want = if stage == Stage::CodeUsed {
                Durability::Durable
            } else {
                Durability::Lossy
            };
            assert_eq!(durability(stage), want, "{stage:?}");
        }
    }

    #[test]
    fn stages_round_trip() {
        for s in 0..7 {
            assert_eq!(Stage::from_i64(s).map(|s| s as i64), Some(s));
        }
        assert!(Stage::from_i64(7).is_none());
    }
}
