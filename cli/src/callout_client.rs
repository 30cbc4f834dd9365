//! Makes the rule tester's callouts (JWKS fetches, introspection, remote authorizers) over HTTP:
//! for `portcullis test` directly, and for the console's tester through the admin endpoint in
//! [`crate::console`]. Bounded like the `jwks_uri` fetcher: one timeout for the whole call, a
//! body limit, no redirects followed, and (unless allowed) public addresses only, judged on
//! every address a name resolves to and connected to without a second lookup.

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis::jwks_uri::{GuardedResolver, is_public};
use portcullis_core::callout::CalloutResponse;
use portcullis_core::rule_tester::CalloutRequest;
use std::net::IpAddr;
use std::time::Duration;

/// The longest a callout may take, whatever its handler's own timeout says.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read (a JWKS with many keys, an introspection answer).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Request headers a callout may carry: what the core's handlers set. Anything else (`Host`,
/// `Cookie`, hop-by-hop headers) is dropped rather than forwarded.
const FORWARDED_HEADERS: [&str; 3] = ["content-type", "accept", "authorization"];

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CalloutError {
    #[error("no HTTP client (TLS setup failed)")]
    NoClient,
    #[error("{0:?} is not an absolute http(s) URL")]
    BadUrl(String),
    #[error("method {0:?} is not allowed for a callout (GET or POST)")]
    Method(String),
    #[error("{0} targets a non-public address (loopback, private, link-local or unspecified)")]
    NonPublic(String),
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{0} did not answer in time")]
    Timeout(String),
}

type Client = HttpClient<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// An HTTP client for callouts.
pub struct CalloutClient {
    client: Option<Client>,
    allow_private: bool,
}

impl CalloutClient {
    /// `allow_private` lets calls reach loopback and private addresses (the CLI, run by whoever
    /// wrote the rules; the console lifts it per call for origins the deployed rules name).
    pub fn new(allow_private: bool) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_connect_timeout(Some(MAX_TIMEOUT));
        let client = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map(|b| {
                let connector = b.https_or_http().enable_http1().wrap_connector(http);
                HttpClient::builder(TokioExecutor::new()).build(connector)
            })
            .map_err(|e| tracing::error!(error = %e, "TLS setup failed: tester callouts disabled"))
            .ok();
        Self {
            client,
            allow_private,
        }
    }

    /// Makes `request`. An answer of any status is `Ok`; only transport failures are errors.
    pub async fn call(&self, request: &CalloutRequest) -> Result<CalloutResponse, CalloutError> {
        let client = self.client.as_ref().ok_or(CalloutError::NoClient)?;
        let url = request.url.as_str();
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| CalloutError::BadUrl(url.to_string()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(CalloutError::BadUrl(url.to_string()));
        }
        // The connector skips the resolver for address literals: judge those here.
        let host = uri.host().unwrap_or("");
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>()
            && !self.allow_private
            && !is_public(ip)
        {
            return Err(CalloutError::NonPublic(url.to_string()));
        }
        let method = match request.method.as_str() {
            "GET" => hyper::Method::GET,
            "POST" => hyper::Method::POST,
            other => return Err(CalloutError::Method(other.to_string())),
        };
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        for (name, value) in &request.headers {
            if FORWARDED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                builder = builder.header(name.as_str(), value.as_str());
            }
        }
        let req = builder
            .body(Full::new(Bytes::from(request.body.clone())))
            .map_err(|e| CalloutError::Transport {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        let timeout = Duration::from_millis(request.timeout_ms.max(100)).min(MAX_TIMEOUT);
        let timed_out = || CalloutError::Timeout(url.to_string());
        let resp = tokio::time::timeout(timeout, client.request(req))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| self.transport_error(url, &e))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = tokio::time::timeout(
            timeout,
            Limited::new(resp.into_body(), MAX_BODY_BYTES).collect(),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| CalloutError::Transport {
            url: url.to_string(),
            message: e.to_string(),
        })?
        .to_bytes();
        Ok(CalloutResponse {
            status,
            headers,
            body: body.to_vec(),
        })
    }

    fn transport_error(&self, url: &str, e: &(dyn std::error::Error + 'static)) -> CalloutError {
        // The resolver's refusal arrives wrapped in the connect error.
        let mut source = Some(e);
        while let Some(s) = source {
            if s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|i| i.is::<portcullis::jwks_uri::FetchError>())
            {
                return CalloutError::NonPublic(url.to_string());
            }
            source = s.source();
        }
        CalloutError::Transport {
            url: url.to_string(),
            message: e.to_string(),
        }
    }
}
