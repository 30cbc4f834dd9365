//! The admin API's defence against browsers. Operators reach port 4445 on loopback (`kubectl
//! port-forward`), where any web page they visit can send requests to it: a cross-site
//! `text/plain` POST once created a client with a chosen secret and rotated the signing key.
//! Three checks, each failing closed with 403 before any handler runs:
//!
//! - `Host` must be an IP literal, `localhost`, or a name given with `--admin-hosts`. DNS
//!   rebinding needs the attacker's own name in `Host`; an IP literal cannot be rebound, so
//!   every literal is allowed (kubelet probes and Prometheus use the pod IP).
//! - `Sec-Fetch-Site: cross-site` / `same-site` (sent by every current browser) is refused.
//! - An `Origin` (older browsers) must be the admin origin itself: `http(s)://<Host>`.
//!
//! API clients (Hydra SDKs, curl, Envoy's introspection callout) send no `Origin` and no
//! `Sec-Fetch-Site`, so they pass. JSON handlers additionally require `application/json`
//! ([`crate::request::Json`]), which a page cannot send cross-origin without a preflight.

use crate::oauth2_error::{ErrorCode, OAuth2Error};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

/// The names (besides IP literals and `localhost`) the admin API answers to, lower-case,
/// without port or trailing dot.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Arc<Vec<String>>);

impl AllowedHosts {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> Self {
        Self(Arc::new(
            names
                .into_iter()
                .map(|n| normalize(n.as_ref()).to_string())
                .filter(|n| !n.is_empty())
                .collect(),
        ))
    }

    /// Whether a `Host` header value (`name[:port]`, `[v6]:port`) is acceptable.
    pub fn allows(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        if name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
        {
            return true;
        }
        let name = normalize(name);
        name == "localhost" || self.0.contains(&name)
    }
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The host part of a `Host` value, or None when it is malformed.
fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    if host.is_empty() || host.contains(['/', '@', ' ', '\\']) {
        return None;
    }
    if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        return (rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port))
            .then_some(&host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) && !name.contains(':') => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

fn forbidden(why: &str) -> Response {
    tracing::warn!(reason = why, "admin request refused");
    OAuth2Error::new(ErrorCode::RequestForbidden, why.to_string()).into_response()
}

/// Middleware of the admin router (see the module doc).
pub async fn guard(State(allowed): State<AllowedHosts>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()));
    let Some(host) = host.filter(|h| allowed.allows(h)) else {
        return forbidden(
            "The Host of the request is not one the admin API answers to (see --admin-hosts).",
        );
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("cross-site").to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return forbidden("Cross-site requests to the admin API are refused.");
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o == host);
        if !same {
            return forbidden("Cross-origin requests to the admin API are refused.");
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let a = AllowedHosts::new(["Portcullis-Admin.portcullis-system.svc.cluster.local."]);
        for ok in [
            "127.0.0.1",
            "127.0.0.1:4445",
            "10.1.2.3:4445",
            "[::1]:4445",
            "[::1]",
            "localhost",
            "LOCALHOST:4445",
            "localhost.:4445",
            "portcullis-admin.portcullis-system.svc.cluster.local:4445",
        ] {
            assert!(a.allows(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:4445",
            "localhost.evil.example",
            "127.0.0.1.nip.io:4445",
            "portcullis-admin",
            "localhost:4445:1",
            "user@localhost",
            "::1",
            "[::1]x",
            "localhost:",
        ] {
            assert!(!a.allows(bad), "{bad}");
        }
    }
}
