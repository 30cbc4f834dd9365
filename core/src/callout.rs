//! Outgoing HTTP calls the policy needs (JWKS, introspection, remote authorizers), described as
//! data. The host performs them; in Envoy a call goes to a *cluster*, not a URL, so every URL is
//! resolved once, at config time, to the cluster that reaches its origin.

use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("{field}: {url:?} is not an absolute http(s) URL")]
    NotHttp { field: String, url: String },
    #[error("{field}: {url:?} has an invalid port")]
    BadPort { field: String, url: String },
}

/// A URL resolved to what a proxy-wasm `dispatch_http_call` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub cluster: String,
    /// `:authority` of the call (host, plus port when not the scheme's default).
    pub authority: String,
    /// `:path` of the call, with query.
    pub path: String,
}

impl Endpoint {
    /// Resolves `url` through `clusters` (origin -> cluster). An origin that is not listed gets
    /// Istio's outbound cluster name, `outbound|PORT||HOST`, so the filter works in a mesh with
    /// no mapping at all.
    pub fn resolve(
        field: &str,
        url: &str,
        clusters: &BTreeMap<String, String>,
    ) -> Result<Endpoint, EndpointError> {
        let not_http = || EndpointError::NotHttp {
            field: field.to_string(),
            url: url.to_string(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(not_http)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port: u16 = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(not_http()),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        if authority.is_empty() {
            return Err(not_http());
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| EndpointError::BadPort {
            field: field.to_string(),
            url: url.to_string(),
        })?;
        let port = port.unwrap_or(default_port);
        let host = host.to_ascii_lowercase();
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let origin_with_port = format!("{scheme}://{bracketed}:{port}");
        let origin_plain = format!("{scheme}://{bracketed}");
        let cluster = clusters
            .get(&origin_with_port)
            .or_else(|| {
                (port == default_port)
                    .then(|| clusters.get(&origin_plain))
                    .flatten()
            })
            .cloned()
            .unwrap_or_else(|| format!("outbound|{port}||{host}"));
        let authority = if port == default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        Ok(Endpoint {
            url: url.to_string(),
            cluster,
            authority,
            path,
        })
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    // IPv6 literal: [::1]:8080
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, p)) => Some((host, Some(p.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// A call for the host to make on behalf of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub endpoint: Endpoint,
    pub method: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// What came back: the host turns transport failures (reset, timeout, no cluster) into `None`.
#[derive(Debug, Clone, Default)]
pub struct CalloutResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CalloutResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn mapped_origin_wins() {
        let c = map(&[("http://127.0.0.1:4444", "cp_public")]);
        let e = Endpoint::resolve(
            "jwks_urls",
            "http://127.0.0.1:4444/.well-known/jwks.json",
            &c,
        )
        .unwrap();
        assert_eq!(e.cluster, "cp_public");
        assert_eq!(e.authority, "127.0.0.1:4444");
        assert_eq!(e.path, "/.well-known/jwks.json");
    }

    #[test]
    fn default_port_matches_plain_origin() {
        let c = map(&[("https://auth.example.com", "auth")]);
        let e = Endpoint::resolve("f", "https://auth.example.com/keys?x=1", &c).unwrap();
        assert_eq!(e.cluster, "auth");
        assert_eq!(e.authority, "auth.example.com");
        assert_eq!(e.path, "/keys?x=1");
    }

    #[test]
    fn unmapped_origin_gets_istio_outbound_cluster() {
        let e = Endpoint::resolve(
            "introspection_url",
            "http://portcullis.kyma-system.svc.cluster.local:4445/admin/oauth2/introspect",
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            e.cluster,
            "outbound|4445||portcullis.kyma-system.svc.cluster.local"
        );
        let e = Endpoint::resolve("f", "http://svc.ns", &BTreeMap::new()).unwrap();
        assert_eq!(e.cluster, "outbound|80||svc.ns");
        assert_eq!(e.path, "/");
    }

    #[test]
    fn rejects_non_http() {
        assert!(matches!(
            Endpoint::resolve("jwks_urls", "file:///etc/keys", &BTreeMap::new()),
            Err(EndpointError::NotHttp { .. })
        ));
        assert!(matches!(
            Endpoint::resolve("jwks_urls", "http://h:99999/", &BTreeMap::new()),
            Err(EndpointError::BadPort { .. })
        ));
        assert!(Endpoint::resolve("x", "http:///path", &BTreeMap::new()).is_err());
    }

    #[test]
    fn ipv6_literal() {
        let e = Endpoint::resolve("f", "http://[::1]:8080/x", &BTreeMap::new()).unwrap();
        assert_eq!(e.cluster, "outbound|8080||::1");
        assert_eq!(e.authority, "[::1]:8080");
    }
}
