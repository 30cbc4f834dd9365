//! The request as the policy core sees it: what the host read from the proxy, once.

/// One incoming request. Header names are lower-case (HTTP/2 and Envoy normalise them).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host (and port, when present), from `:authority`.
    pub authority: String,
    /// Path with query string, as received (`:path`).
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Downstream peer address without port, when the host knows it.
    pub remote_ip: Option<String>,
}

impl Request {
    /// First value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Path without the query string.
    pub fn path_only(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(self.path.as_str(), |(p, _)| p)
    }

    /// Query string without the leading `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
}
