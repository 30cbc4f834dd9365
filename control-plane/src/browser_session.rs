//! The browser side of flows: the login-session cookie (`ory_hydra_session`), the per-client
//! CSRF cookies of the login and consent steps, and remembered login sessions and consents in
//! the store.
//!
//! Cookies are `HttpOnly`, `SameSite=Lax` (the flow comes back by top-level redirects, which
//! Lax allows and cross-site subrequests do not) and `Secure` unless the issuer is plain-http
//! loopback (local development), in which case the session cookie takes Hydra's `_dev` name.

use crate::clock;
use crate::crypto::{hex, sha256};
use crate::flow::LoginSession;
use crate::oauth2_error::OAuth2Error;
use crate::server::Service;
use crate::store::StoredSession;
use axum::http::{HeaderMap, HeaderValue, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

pub const LOGIN: &str = "login";
pub const CONSENT: &str = "consent";
/// A client that received a grant within a login session and registered a front- or
/// back-channel logout URI: ending the session must notify it.
pub const PARTICIPANT: &str = "logout_participant";

/// Whether cookies get `Secure`: always, except for a plain-http loopback issuer.
pub fn secure_cookies(issuer: &str) -> bool {
    let Ok(url) = url::Url::parse(issuer) else {
        return true;
    };
    if url.scheme() != "http" {
        return true;
    }
    !match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

pub fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        "ory_hydra_session"
    } else {
        "ory_hydra_session_dev"
    }
}

/// Hydra names CSRF cookies per client so flows of several clients in one browser do not
/// clobber each other; the suffix is a hash of the client id (Hydra: murmur3, here SHA-256).
pub fn csrf_cookie_name(step: &str, client_id: &str) -> String {
    let h = hex(&sha256(client_id.as_bytes()));
    format!("ory_hydra_{step}_csrf_{}", h.get(..16).unwrap_or(&h))
}

/// The value of cookie `name`, if the request carries exactly that cookie.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

/// A `Set-Cookie` value; `max_age` `None` is a browser-session cookie, `Some(0)` deletes.
pub fn set_cookie(name: &str, value: &str, max_age: Option<i64>, secure: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={}", age.max(0)));
    }
    if secure {
        c.push_str("; Secure");
    }
    // Names and values are ours (base64url, hex): always valid header text.
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// The live login session the browser's cookie names, if any.
pub async fn current_login(
    svc: &Service,
    headers: &HeaderMap,
) -> Result<Option<LoginSession>, OAuth2Error> {
    let secure = svc.secure_cookies();
    let Some(cookie) = read_cookie(headers, session_cookie_name(secure)) else {
        return Ok(None);
    };
    let Some((sid, secret)) = crate::flow::parse_artifact(&cookie) else {
        return Ok(None);
    };
    let id = sid.to_string();
    let Some(row) = crate::store::read(&svc.store, move |s| s.get_session(LOGIN, &id)).await?
    else {
        return Ok(None);
    };
    if row.expires_at <= clock::now() {
        return Ok(None);
    }
    let session: Option<LoginSession> = serde_json::from_str(&row.json).ok();
    Ok(session.filter(|s| crate::flow::secret_matches(s.cookie_hash.as_deref(), secret)))
}

/// The store row of a login session, written in the transaction of the flow step that
/// establishes it.
pub fn login_row(s: &LoginSession) -> Result<(String, StoredSession), OAuth2Error> {
    Ok((
        LOGIN.to_string(),
        StoredSession {
            id: s.sid.clone(),
            subject: s.subject.clone(),
            json: serde_json::to_string(s).map_err(OAuth2Error::server_error)?,
            expires_at: s.expires_at,
        },
    ))
}

/// A consent the user asked to be remembered, for one client and subject.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RememberedConsent {
    pub grant_scope: Vec<String>,
    pub grant_access_token_audience: Vec<String>,
    pub access_token_claims: Value,
    pub id_token_claims: Value,
    pub handled_at: i64,
    /// Hydra's `consent_request_id` of the grant that was remembered.
    #[serde(default)]
    pub consent_request_id: String,
    /// The login session the consent was given in (the list's `login_session_id` filter).
    #[serde(default)]
    pub login_session_id: String,
    #[serde(default)]
    pub remember_for: i64,
    #[serde(default)]
    pub context: Value,
}

pub fn consent_key(client_id: &str, subject: &str) -> String {
    // JSON keeps the pair unambiguous whatever characters the two contain.
    serde_json::to_string(&[client_id, subject]).unwrap_or_default()
}

pub async fn remembered_consent(
    svc: &Service,
    client_id: &str,
    subject: &str,
) -> Result<Option<RememberedConsent>, OAuth2Error> {
    let key = consent_key(client_id, subject);
    let Some(row) = crate::store::read(&svc.store, move |s| s.get_session(CONSENT, &key)).await?
    else {
        return Ok(None);
    };
    if row.expires_at <= clock::now() {
        return Ok(None);
    }
    Ok(serde_json::from_str(&row.json).ok())
}

/// The store row of a remembered consent, written in the transaction of the flow step that
/// issues the code.
pub fn consent_row(
    client_id: &str,
    subject: &str,
    consent: &RememberedConsent,
    expires_at: i64,
) -> Result<(String, StoredSession), OAuth2Error> {
    Ok((
        CONSENT.to_string(),
        StoredSession {
            id: consent_key(client_id, subject),
            subject: subject.to_string(),
            json: serde_json::to_string(consent).map_err(OAuth2Error::server_error)?,
            expires_at,
        },
    ))
}

/// A client that received a grant within login session `sid` (see [`PARTICIPANT`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Participant {
    pub sid: String,
    pub client_id: String,
}

/// Records that `client_id` got a grant in login session `sid` of `subject`, for as long as the
/// session lives. Only clients with a logout channel are recorded: nobody else is notified, so
/// the extra write is spared for every other flow.
pub async fn record_participant(
    svc: &Service,
    subject: &str,
    sid: &str,
    client_id: &str,
) -> Result<(), OAuth2Error> {
    let store = Arc::clone(&svc.store);
    let p = Participant {
        sid: sid.to_string(),
        client_id: client_id.to_string(),
    };
    let fallback = clock::now().saturating_add(crate::flow::secs(
        svc.config.flows.authentication_session_ttl,
    ));
    let subject = subject.to_string();
    crate::store::on_blocking_pool(move || {
        let expires_at = store
            .get_session(LOGIN, &p.sid)?
            .map_or(fallback, |s| s.expires_at);
        let row = StoredSession {
            // JSON keeps the pair unambiguous whatever characters the two contain.
            id: serde_json::to_string(&[&p.sid, &p.client_id]).unwrap_or_default(),
            subject,
            json: serde_json::to_string(&p).unwrap_or_default(),
            expires_at,
        };
        store.put_session(PARTICIPANT, &row)
    })
    .await
    .map_err(OAuth2Error::from)
}

/// Which login sessions to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logins {
    /// One session, by `sid`.
    Session(String),
    /// Every session of a subject.
    OfSubject(String),
}

/// Ended login sessions: whose they were, and the clients that got grants in them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    pub subject: String,
    pub participants: Vec<Participant>,
}

/// Ends login sessions and returns the clients that got grants in them (forgetting those
/// records too), so that they can be told.
pub async fn end_logins(svc: &Service, which: Logins) -> Result<Ended, OAuth2Error> {
    let store = Arc::clone(&svc.store);
    crate::store::on_blocking_pool(move || {
        let (subject, sid) = match which {
            Logins::Session(sid) => {
                let Some(row) = store.get_session(LOGIN, &sid)? else {
                    return Ok(Ended::default());
                };
                store.delete_session(LOGIN, &sid)?;
                (row.subject, Some(sid))
            }
            Logins::OfSubject(subject) => {
                store.delete_sessions(LOGIN, &subject)?;
                (subject, None)
            }
        };
        let now = clock::now();
        let mut participants = Vec::new();
        for row in store.list_sessions(PARTICIPANT, &subject)? {
            let Ok(p) = serde_json::from_str::<Participant>(&row.json) else {
                continue;
            };
            if sid.as_ref().is_none_or(|s| *s == p.sid) {
                store.delete_session(PARTICIPANT, &row.id)?;
                if row.expires_at > now {
                    participants.push(p);
                }
            }
        }
        Ok(Ended {
            subject,
            participants,
        })
    })
    .await
    .map_err(OAuth2Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_unless_plain_http_loopback() {
        assert!(!secure_cookies("http://127.0.0.1:4444"));
        assert!(!secure_cookies("http://localhost:4444/"));
        assert!(!secure_cookies("http://[::1]:4444"));
        assert!(secure_cookies("https://127.0.0.1:4444"));
        assert!(secure_cookies("http://auth.example.com"));
        // A host that merely starts like loopback is not loopback.
        assert!(secure_cookies("http://127.0.0.1.evil.example"));
        assert!(secure_cookies("not a url"));
    }

    #[test]
    fn cookies_are_read_exactly_and_set_with_flags() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ory_hydra_session_devx=2; ory_hydra_session_dev=3"),
        );
        assert_eq!(
            read_cookie(&h, "ory_hydra_session_dev").as_deref(),
            Some("3")
        );
        assert_eq!(read_cookie(&h, "ory_hydra_session"), None);
        let c = set_cookie("n", "v", Some(60), true);
        assert_eq!(c, "n=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure");
        assert_ne!(
            csrf_cookie_name("login", "a"),
            csrf_cookie_name("login", "b")
        );
    }
}
