//! Fetching clients' `jwks_uri` key sets for `private_key_jwt`. An unsigned assertion naming a
//! client is enough to trigger a fetch, so the fetcher is built for unauthenticated callers:
//!
//! - targets must be public addresses: every address a name resolves to is checked, and the
//!   connector connects only to the addresses checked (no second lookup to rebind), unless
//!   `--allow-private-jwks-uri`;
//! - one fetch in flight per URL (concurrent callers share its result), and a failure is
//!   remembered for [`FAILURE_TTL`], so a flood of assertions makes one request, not one each;
//! - failures are typed ([`FetchError`]) for the log; callers answer with a generic message, so
//!   the error body is no port-scan or content oracle.

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long a fetched key set is trusted before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers a refetch, but not more often than this per URI.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long a failed fetch is remembered (answered from memory without fetching).
pub const FAILURE_TTL: Duration = Duration::from_secs(30);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_MAX_BYTES: usize = 256 * 1024;

/// Why a key set could not be had. Logged, never sent to the caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("no HTTP client (TLS setup failed)")]
    NoClient,
    #[error("bad jwks_uri: {0}")]
    BadUri(String),
    #[error("jwks_uri targets a non-public address (loopback, private, link-local or unspecified)")]
    NonPublic,
    #[error("fetching jwks_uri failed: {0}")]
    Transport(String),
    #[error("fetching jwks_uri timed out")]
    Timeout,
    #[error("jwks_uri answered {0}")]
    Status(u16),
    #[error("jwks_uri is not a JWK set: {0}")]
    NotJwks(String),
    #[error("fetching jwks_uri failed recently; not retried yet")]
    RecentlyFailed,
}

/// Whether `ip` may be fetched from without `--allow-private-jwks-uri`: not loopback,
/// unspecified, private, shared (CGNAT), link-local, multicast, broadcast or documentation
/// space; IPv4-mapped and -compatible IPv6 addresses are judged as the IPv4 address they carry.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            // ::a.b.c.d (deprecated IPv4-compatible) and the NAT64 well-known prefix.
            if v6.segments()[..6] == [0; 6] || v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., c, d] = v6.segments();
                let v4 = std::net::Ipv4Addr::from((u32::from(c) << 16) | u32::from(d));
                return !v6.is_loopback() && !v6.is_unspecified() && is_public(IpAddr::V4(v4));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                || first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

/// Resolves names for the connector and refuses the whole name when any of its addresses is
/// not public (a name with one public and one loopback address must not reach loopback).
#[derive(Clone)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(std::io::Error::other("the name has no addresses"));
            }
            if !allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
                return Err(std::io::Error::other(FetchError::NonPublic));
            }
            Ok(addrs.into_iter())
        })
    }
}

type Fetched = Result<Arc<JwkSet>, FetchError>;

enum Cached {
    /// A key set, when it was fetched, and when refetching it last failed.
    Set {
        set: Arc<JwkSet>,
        fetched: Instant,
        failed: Option<Instant>,
    },
    Failed(Instant),
}

/// Fetches and caches clients' `jwks_uri` key sets.
pub struct JwksFetcher {
    client: Option<HttpClient<HttpsConnector<HttpConnector<GuardedResolver>>, Empty<Bytes>>>,
    allow_private: bool,
    cache: Mutex<HashMap<String, Cached>>,
    /// The fetch in flight per URI; callers arriving meanwhile await the same cell.
    in_flight: Mutex<HashMap<String, Arc<OnceCell<Fetched>>>>,
}

impl JwksFetcher {
    /// `allow_private` lifts the public-address rule (tests, or clients inside the cluster).
    pub fn new(allow_private: bool) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_connect_timeout(Some(JWKS_TIMEOUT));
        let client = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map(|b| {
                let connector = b.https_or_http().enable_http1().wrap_connector(http);
                HttpClient::builder(TokioExecutor::new()).build(connector)
            })
            .map_err(|e| tracing::error!(error = %e, "TLS setup failed: jwks_uri disabled"))
            .ok();
        Self {
            client,
            allow_private,
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The key set at `uri`: from cache unless stale (or `refresh` and the entry is not brand
    /// new); a recent failure is answered from memory.
    pub async fn get(&self, uri: &str, refresh: bool) -> Fetched {
        if let Some(answer) = self.cached(uri, refresh) {
            return answer;
        }
        let cell = match self.in_flight.lock() {
            Ok(mut m) => Arc::clone(m.entry(uri.to_string()).or_default()),
            Err(_) => return Err(FetchError::Transport("fetcher state poisoned".into())),
        };
        let result = cell
            .get_or_init(|| async {
                // A fetch that finished between our cache check and joining this cell.
                if let Some(answer) = self.cached(uri, refresh) {
                    return answer;
                }
                self.fetch_and_cache(uri).await
            })
            .await
            .clone();
        if let Ok(mut m) = self.in_flight.lock()
            && m.get(uri).is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            m.remove(uri);
        }
        result
    }

    fn cached(&self, uri: &str, refresh: bool) -> Option<Fetched> {
        let cache = self.cache.lock().ok()?;
        match cache.get(uri)? {
            Cached::Set {
                set,
                fetched,
                failed,
            } => {
                let age = fetched.elapsed();
                // A recent refetch failure keeps the stale set without trying again.
                let fresh = age < JWKS_TTL && !(refresh && age >= JWKS_MIN_REFRESH);
                let failing = failed.is_some_and(|f| f.elapsed() < FAILURE_TTL);
                (fresh || failing).then(|| Ok(Arc::clone(set)))
            }
            Cached::Failed(at) => {
                (at.elapsed() < FAILURE_TTL).then_some(Err(FetchError::RecentlyFailed))
            }
        }
    }

    async fn fetch_and_cache(&self, uri: &str) -> Fetched {
        let result = self.fetch(uri).await;
        let Ok(mut cache) = self.cache.lock() else {
            return result.map(Arc::new);
        };
        match result {
            Ok(set) => {
                let set = Arc::new(set);
                cache.insert(
                    uri.to_string(),
                    Cached::Set {
                        set: Arc::clone(&set),
                        fetched: Instant::now(),
                        failed: None,
                    },
                );
                Ok(set)
            }
            Err(e) => {
                tracing::warn!(uri, error = %e, "fetching a client's jwks_uri failed");
                // A stale set beats none while the URI is briefly unreachable.
                if let Some(Cached::Set { set, failed, .. }) = cache.get_mut(uri) {
                    *failed = Some(Instant::now());
                    return Ok(Arc::clone(set));
                }
                cache.insert(uri.to_string(), Cached::Failed(Instant::now()));
                Err(e)
            }
        }
    }

    async fn fetch(&self, uri: &str) -> Result<JwkSet, FetchError> {
        let client = self.client.as_ref().ok_or(FetchError::NoClient)?;
        let uri: hyper::Uri = uri
            .parse()
            .map_err(|e| FetchError::BadUri(format!("{e}")))?;
        // The connector skips the resolver for address literals: judge those here.
        let host = uri.host().unwrap_or("");
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>()
            && !self.allow_private
            && !is_public(ip)
        {
            return Err(FetchError::NonPublic);
        }
        let resp = tokio::time::timeout(JWKS_TIMEOUT, client.get(uri))
            .await
            .map_err(|_| FetchError::Timeout)?
            .map_err(|e| {
                // The resolver's refusal arrives wrapped in the connect error.
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = source {
                    let io = s.downcast_ref::<std::io::Error>();
                    if io
                        .and_then(|io| io.get_ref())
                        .is_some_and(|i| i.is::<FetchError>())
                    {
                        return FetchError::NonPublic;
                    }
                    source = s.source();
                }
                FetchError::Transport(format!("{e:?}"))
            })?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let body = tokio::time::timeout(
            JWKS_TIMEOUT,
            Limited::new(resp.into_body(), JWKS_MAX_BYTES).collect(),
        )
        .await
        .map_err(|_| FetchError::Timeout)?
        .map_err(|e| FetchError::Transport(e.to_string()))?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| FetchError::NotJwks(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses() {
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn refuses_loopback_literal_and_name_without_the_flag() {
        let f = JwksFetcher::new(false);
        for uri in [
            "http://127.0.0.1:1/jwks.json",
            "http://[::1]:1/jwks.json",
            "http://localhost:1/jwks.json",
        ] {
            let e = f.get(uri, false).await.unwrap_err();
            assert!(matches!(e, FetchError::NonPublic), "{uri}: {e:?}");
            // Remembered: no second attempt within FAILURE_TTL.
            let e = f.get(uri, false).await.unwrap_err();
            assert!(matches!(e, FetchError::RecentlyFailed), "{uri}: {e:?}");
        }
    }

    /// A server that counts connections and answers 500.
    async fn failing_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            }
        });
        (format!("http://{addr}/jwks.json"), hits)
    }

    #[tokio::test]
    async fn a_failing_refetch_keeps_the_stale_set_and_is_not_retried_at_once() {
        let (uri, hits) = failing_server().await;
        let f = JwksFetcher::new(true);
        let stale = Arc::new(JwkSet { keys: Vec::new() });
        let long_ago = Instant::now()
            .checked_sub(JWKS_TTL + Duration::from_secs(1))
            .unwrap();
        f.cache.lock().unwrap().insert(
            uri.clone(),
            Cached::Set {
                set: Arc::clone(&stale),
                fetched: long_ago,
                failed: None,
            },
        );
        for refresh in [false, true, false, true] {
            let got = f.get(&uri, refresh).await.unwrap();
            assert!(Arc::ptr_eq(&got, &stale));
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
