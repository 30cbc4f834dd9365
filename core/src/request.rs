//! The request as the policy core sees it: what the host read from the proxy, once.
//!
//! Every name and value lives in one string, the fields are ranges into it: reading a request
//! costs two allocations however many headers it has. This runs for every request of every
//! workload, where one allocation per header was a measurable share of the filter's cost.

use std::ops::Range;

/// One incoming request. Header names are lower-case (HTTP/2 and Envoy normalise them).
#[derive(Debug, Clone, Default)]
pub struct Request {
    text: String,
    method: Range<usize>,
    /// Whether the downstream connection is TLS: the scheme. Never what the client wrote
    /// (`:scheme`, an absolute-form target), which it can choose freely on any connection.
    tls: bool,
    /// Host (and port, when present), from `:authority`.
    authority: Range<usize>,
    /// Path with query string, as received (`:path`).
    path: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// Downstream peer address without port, when the host knows it.
    pub remote_ip: Option<String>,
}

impl Request {
    /// A request from its parts (tests, and hosts that already hold strings); `scheme` is the
    /// connection's (`https` for TLS).
    pub fn new<'a>(
        method: &'a str,
        scheme: &'a str,
        authority: &'a str,
        path: &'a str,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut b = RequestBuilder::new(0, 0);
        b.tls(scheme.eq_ignore_ascii_case("https"));
        for (name, value) in [
            (":method", method),
            (":authority", authority),
            (":path", path),
        ]
        .into_iter()
        .chain(headers)
        {
            b.entry(name.as_bytes(), value.as_bytes());
        }
        b.build()
    }

    pub fn method(&self) -> &str {
        self.slice(&self.method)
    }

    /// `https` when the downstream connection is TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    pub fn authority(&self) -> &str {
        self.slice(&self.authority)
    }

    /// Path with query string, as received.
    pub fn path(&self) -> &str {
        self.slice(&self.path)
    }

    /// Regular (non-pseudo) headers in the order received, repeated names included.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (self.slice(n), self.slice(v)))
    }

    /// First value of a header, by name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Path without the query string.
    pub fn path_only(&self) -> &str {
        let path = self.path();
        path.split_once('?').map_or(path, |(p, _)| p)
    }

    /// Query string without the leading `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.path().split_once('?').map(|(_, q)| q)
    }

    fn slice(&self, r: &Range<usize>) -> &str {
        self.text.get(r.clone()).unwrap_or_default()
    }
}

/// Collects a request entry by entry, as a host reads it from the proxy: either copying each
/// name and value ([`RequestBuilder::entry`]) or over a buffer the host already filled
/// ([`RequestBuilder::over`] + [`RequestBuilder::entry_at`]), which costs no copy at all.
#[derive(Debug, Default)]
pub struct RequestBuilder {
    bytes: Vec<u8>,
    req: Request,
}

impl RequestBuilder {
    /// `bytes` and `headers` are capacity hints (total size of names and values, entry count).
    pub fn new(bytes: usize, headers: usize) -> Self {
        Self::over(Vec::with_capacity(bytes), headers)
    }

    /// A builder whose names and values already sit in `buf`; name them with
    /// [`RequestBuilder::entry_at`]. Bytes outside those ranges should be ASCII (a host zeroes
    /// its framing), or the request is copied once on [`RequestBuilder::build`].
    pub fn over(buf: Vec<u8>, headers: usize) -> Self {
        Self {
            bytes: buf,
            req: Request {
                headers: Vec::with_capacity(headers),
                ..Request::default()
            },
        }
    }

    /// One entry of the proxy's header map. `:method`, `:authority` and `:path` become the
    /// request's fields, other pseudo-headers (`:scheme` among them: see [`Self::tls`]) are
    /// dropped. Bytes that are not UTF-8 (HTTP/1
    /// allows them in values) become U+FFFD: such a value can still be read, and can never equal
    /// a token or a name a rule was written with.
    pub fn entry(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        let middle = self.bytes.len();
        self.bytes.extend_from_slice(value);
        let end = self.bytes.len();
        self.entry_at(start..middle, middle..end)
    }

    /// An entry whose name and value are these ranges of the buffer given to
    /// [`RequestBuilder::over`]. Ranges outside it read as empty.
    pub fn entry_at(&mut self, name: Range<usize>, value: Range<usize>) -> &mut Self {
        let field = match self.bytes.get(name.clone()).unwrap_or_default() {
            b":method" => Some(Field::Method),
            b":authority" => Some(Field::Authority),
            b":path" => Some(Field::Path),
            [b':', ..] => return self,
            _ => None,
        };
        let r = &mut self.req;
        match field {
            Some(Field::Method) => r.method = value,
            Some(Field::Authority) => r.authority = value,
            Some(Field::Path) => r.path = value,
            None => r.headers.push((name, value)),
        }
        self
    }

    /// The buffer as given to [`RequestBuilder::over`] (and extended by `entry`).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Overwrites `range` of the buffer with NULs: for a host's framing (lengths, counts),
    /// which would otherwise make the buffer fail UTF-8 validation and force a copy.
    pub fn blank(&mut self, range: Range<usize>) -> &mut Self {
        if let Some(b) = self.bytes.get_mut(range) {
            b.fill(0);
        }
        self
    }

    /// Whether the downstream connection is TLS, as the proxy knows it: this alone decides the
    /// scheme rules are matched against (`http` when never called).
    pub fn tls(&mut self, tls: bool) -> &mut Self {
        self.req.tls = tls;
        self
    }

    /// The downstream peer address (without port).
    pub fn remote_ip(&mut self, ip: Option<String>) -> &mut Self {
        self.req.remote_ip = ip;
        self
    }

    /// The request.
    pub fn build(mut self) -> Request {
        match String::from_utf8(std::mem::take(&mut self.bytes)) {
            // The usual case: one validation pass, the buffer becomes the text as it is.
            Ok(text) => Request { text, ..self.req },
            Err(e) => repaired(e.as_bytes(), self.req),
        }
    }
}

/// Copies every range of `bytes` into a fresh text, replacing what is not UTF-8.
fn repaired(bytes: &[u8], mut req: Request) -> Request {
    let mut text = String::with_capacity(bytes.len());
    let mut copy = |r: &mut Range<usize>| {
        let start = text.len();
        text.push_str(&String::from_utf8_lossy(
            bytes.get(r.clone()).unwrap_or_default(),
        ));
        *r = start..text.len();
    };
    for r in [&mut req.method, &mut req.authority, &mut req.path] {
        copy(r);
    }
    for (n, v) in &mut req.headers {
        copy(n);
        copy(v);
    }
    Request { text, ..req }
}

enum Field {
    Method,
    Authority,
    Path,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_headers_become_fields_and_order_is_kept() {
        let mut b = RequestBuilder::new(64, 4);
        b.entry(b":authority", b"api.example.com")
            .entry(b":path", b"/a?b=c")
            .entry(b":method", b"POST")
            .entry(b":protocol", b"websocket")
            .entry(b"x-a", b"1")
            .entry(b"x-b", b"2")
            .entry(b"x-a", b"3");
        let r = b.build();
        assert_eq!(r.method(), "POST");
        assert_eq!(r.scheme(), "http", "default scheme");
        assert_eq!(r.authority(), "api.example.com");
        assert_eq!(r.path_only(), "/a");
        assert_eq!(r.query(), Some("b=c"));
        let all: Vec<_> = r.headers().collect();
        assert_eq!(all, [("x-a", "1"), ("x-b", "2"), ("x-a", "3")]);
        assert_eq!(r.header("X-A"), Some("1"));
        assert_eq!(r.header("x-c"), None);
    }

    #[test]
    fn the_scheme_is_the_connections_not_the_clients() {
        let mut b = RequestBuilder::new(0, 0);
        b.entry(b":scheme", b"https").entry(b":path", b"/");
        assert_eq!(b.build().scheme(), "http", ":scheme on a plain connection");
        let mut b = RequestBuilder::new(0, 0);
        b.entry(b":scheme", b"http").tls(true);
        assert_eq!(b.build().scheme(), "https", "TLS whatever :scheme says");
        assert_eq!(Request::new("GET", "https", "h", "/", []).scheme(), "https");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_not_fatal() {
        let mut b = RequestBuilder::new(0, 0);
        b.entry(b":path", b"/ok")
            .entry(b"x-latin1", b"caf\xe9")
            .entry(b"authorization", b"Bearer abc");
        let r = b.build();
        assert_eq!(r.header("x-latin1"), Some("caf\u{fffd}"));
        assert_eq!(r.header("authorization"), Some("Bearer abc"));
        assert_eq!(r.path(), "/ok");
    }

    #[test]
    fn over_a_host_buffer_without_copying() {
        // name and value ranges inside a buffer with zeroed framing, as a host hands it over
        let buf = b"\0\0:path\0/x\0authorization\0Bearer t\0".to_vec();
        let mut b = RequestBuilder::over(buf, 1);
        b.entry_at(2..7, 8..10)
            .entry_at(11..24, 25..33)
            .entry_at(90..95, 1..2);
        let r = b.build();
        assert_eq!(r.path(), "/x");
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        // the out-of-range entry reads as empty rather than panicking
        assert_eq!(r.headers().nth(1), Some(("", "\0")));
        // and a buffer with a byte that is not UTF-8 is repaired, every range with it
        let mut b = RequestBuilder::over(b":path\0/\xff\0".to_vec(), 0);
        b.entry_at(0..5, 6..8);
        assert_eq!(b.build().path(), "/\u{fffd}");
    }

    #[test]
    fn new_takes_parts() {
        let r = Request::new("GET", "https", "h", "/p", [("a", "b")]);
        assert_eq!(
            (r.method(), r.scheme(), r.authority(), r.path()),
            ("GET", "https", "h", "/p")
        );
        assert_eq!(r.header("a"), Some("b"));
    }
}
