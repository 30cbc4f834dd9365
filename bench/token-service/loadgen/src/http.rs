//! A minimal HTTP/1.1 client for the load generator, and a per-flow cookie jar that acts as the
//! browser's.
//!
//! Each worker owns its client, and the client one keep-alive connection per server (as a
//! browser or an app keeps its own), driven inside the worker's task. A pooled client (hyper's)
//! hands every request to a connection task and back: with it the load generator spent
//! 290–300 µs of CPU per flow, without it 236–259 µs, CPU taken from the server it measures,
//! since both share the same 2 cores.

use anyhow::{Context, Result, anyhow, bail};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn location(&self) -> Result<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("{} without Location: {}", self.status, self.text()))
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Fails unless the status is a redirect (302 or 303: browsers treat them alike).
    pub fn redirect(self, what: &str) -> Result<Self> {
        if !matches!(self.status, StatusCode::FOUND | StatusCode::SEE_OTHER) {
            bail!("{what}: {} {}", self.status, self.text());
        }
        Ok(self)
    }

    /// Fails unless the status is `want`.
    pub fn expect(self, want: StatusCode, what: &str) -> Result<Self> {
        if self.status != want {
            bail!("{what}: {} {}", self.status, self.text());
        }
        Ok(self)
    }
}

/// One worker's connections, by `host:port`.
#[derive(Default)]
pub struct Client {
    connections: Vec<Connection>,
}

struct Connection {
    authority: String,
    stream: TcpStream,
    /// Bytes read past the previous response (none, as requests are not pipelined).
    buffer: Vec<u8>,
}

/// Headers a response may have; more is an error, not a truncation.
const MAX_HEADERS: usize = 32;

impl Client {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Reply> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs are supported: {url}"))?;
        let (authority, target) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let mut request = Vec::with_capacity(512);
        let mut head = String::with_capacity(256);
        write!(head, "{method} {target} HTTP/1.1\r\nhost: {authority}\r\n")?;
        for (k, v) in headers {
            let v = v.to_str().context("header value is not text")?;
            write!(head, "{k}: {v}\r\n")?;
        }
        let body = body.map_or((None, Vec::new()), |(t, b)| (Some(t), b));
        if let Some(content_type) = body.0 {
            write!(head, "content-type: {content_type}\r\n")?;
        }
        write!(head, "content-length: {}\r\n\r\n", body.1.len())?;
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(&body.1);

        // A kept-alive connection the server has closed meanwhile fails before any byte of
        // the answer: that one is retried once on a new connection.
        let reused = self
            .connections
            .iter()
            .position(|c| c.authority == authority);
        if let Some(i) = reused {
            match self.connections[i].exchange(&request).await {
                Ok(reply) => return Ok(reply),
                Err(Exchange::Closed) => {
                    self.connections.swap_remove(i);
                }
                Err(Exchange::Failed(e)) => {
                    self.connections.swap_remove(i);
                    return Err(e.context(format!("{method} {url}")));
                }
            }
        }
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let mut connection = Connection {
            authority: authority.to_string(),
            stream,
            buffer: Vec::with_capacity(4096),
        };
        let reply = match connection.exchange(&request).await {
            Ok(reply) => reply,
            Err(Exchange::Closed) => bail!("{method} {url}: connection closed without an answer"),
            Err(Exchange::Failed(e)) => return Err(e.context(format!("{method} {url}"))),
        };
        self.connections.push(connection);
        Ok(reply)
    }

    pub async fn get(&mut self, url: &str) -> Result<Reply> {
        self.send(Method::GET, url, &[], None).await
    }

    pub async fn json(
        &mut self,
        method: Method,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<Reply> {
        let bytes = serde_json::to_vec(body)?;
        self.send(method, url, &[], Some(("application/json", bytes)))
            .await
    }

    /// `POST` of a form with HTTP Basic client authentication (the token endpoint).
    pub async fn form(
        &mut self,
        url: &str,
        basic: &HeaderValue,
        form: &[(&str, &str)],
    ) -> Result<Reply> {
        let body = serde_urlencoded::to_string(form)?.into_bytes();
        self.send(
            Method::POST,
            url,
            &[(header::AUTHORIZATION, basic.clone())],
            Some(("application/x-www-form-urlencoded", body)),
        )
        .await
    }
}

enum Exchange {
    /// The server closed the connection before answering.
    Closed,
    Failed(anyhow::Error),
}

impl From<std::io::Error> for Exchange {
    fn from(e: std::io::Error) -> Self {
        Self::Failed(e.into())
    }
}

impl Connection {
    async fn exchange(&mut self, request: &[u8]) -> Result<Reply, Exchange> {
        if let Err(e) = self.stream.write_all(request).await {
            return Err(if self.buffer.is_empty() {
                Exchange::Closed
            } else {
                e.into()
            });
        }
        let (status, headers, body_at) = loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut slots);
            match response.parse(&self.buffer) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = StatusCode::from_u16(response.code.unwrap_or(0))
                        .map_err(|e| Exchange::Failed(e.into()))?;
                    let mut headers = HeaderMap::with_capacity(response.headers.len());
                    for h in response.headers.iter() {
                        let name = HeaderName::from_bytes(h.name.as_bytes())
                            .map_err(|e| Exchange::Failed(e.into()))?;
                        let value = HeaderValue::from_bytes(h.value)
                            .map_err(|e| Exchange::Failed(e.into()))?;
                        headers.append(name, value);
                    }
                    break (status, headers, len);
                }
                Ok(httparse::Status::Partial) => {
                    if self.fill().await? == 0 {
                        return Err(if self.buffer.is_empty() {
                            Exchange::Closed
                        } else {
                            Exchange::Failed(anyhow!("connection closed inside a response head"))
                        });
                    }
                }
                Err(e) => return Err(Exchange::Failed(anyhow!("malformed response: {e}"))),
            }
        };
        let chunked = headers
            .get(header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        let body = if chunked {
            self.buffer.drain(..body_at);
            self.chunked_body().await?
        } else {
            let length = match headers.get(header::CONTENT_LENGTH) {
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or_else(|| Exchange::Failed(anyhow!("bad Content-Length {v:?}")))?,
                None => 0,
            };
            while self.buffer.len() < body_at + length {
                if self.fill().await? == 0 {
                    return Err(Exchange::Failed(anyhow!("connection closed inside a body")));
                }
            }
            let body = Bytes::copy_from_slice(&self.buffer[body_at..body_at + length]);
            self.buffer.drain(..body_at + length);
            body
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Reads more of the stream into the buffer; 0 at its end.
    async fn fill(&mut self) -> Result<usize, Exchange> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// A `Transfer-Encoding: chunked` body starting at the buffer's start.
    async fn chunked_body(&mut self) -> Result<Bytes, Exchange> {
        let mut body = Vec::new();
        loop {
            let Some(eol) = self.buffer.windows(2).position(|w| w == b"\r\n") else {
                if self.fill().await? == 0 {
                    return Err(Exchange::Failed(anyhow!(
                        "connection closed inside a chunk"
                    )));
                }
                continue;
            };
            let size = std::str::from_utf8(&self.buffer[..eol])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| Exchange::Failed(anyhow!("malformed chunk size")))?;
            // The chunk, its CRLF, and for the last one (size 0, no trailers) only the CRLF.
            let need = eol + 2 + size + 2;
            while self.buffer.len() < need {
                if self.fill().await? == 0 {
                    return Err(Exchange::Failed(anyhow!(
                        "connection closed inside a chunk"
                    )));
                }
            }
            body.extend_from_slice(&self.buffer[eol + 2..eol + 2 + size]);
            self.buffer.drain(..need);
            if size == 0 {
                return Ok(Bytes::from(body));
            }
        }
    }
}

/// One browser's cookies (one host: the issuer). Keeps what `Set-Cookie` sets, drops what it
/// expires, and sends the rest back, as a browser would.
#[derive(Default)]
pub struct Jar {
    cookies: BTreeMap<String, String>,
}

impl Jar {
    pub async fn get(&mut self, client: &mut Client, url: &str) -> Result<Reply> {
        let mut headers = Vec::new();
        if !self.cookies.is_empty() {
            let line = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            headers.push((header::COOKIE, HeaderValue::from_str(&line)?));
        }
        let reply = client.send(Method::GET, url, &headers, None).await?;
        for set in reply.headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().context("Set-Cookie is not text")?;
            let (pair, attrs) = set.split_once(';').unwrap_or((set, ""));
            let Some((name, value)) = pair.trim().split_once('=') else {
                bail!("malformed Set-Cookie {set:?}");
            };
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        Ok(reply)
    }
}

/// The value of query parameter `name` of `url`.
pub fn query_param(url: &str, name: &str) -> Result<String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)?
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
        .ok_or_else(|| anyhow!("no {name} in {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each accepted connection's requests with `answers` in turn, then
    /// closes it; returns its `http://host:port`.
    async fn server(connections: Vec<Vec<&'static str>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for answers in connections {
                let (mut stream, _) = listener.accept().await.unwrap();
                for answer in answers {
                    // Each test request is one small write; read until its head ends.
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut buf = [0u8; 1024];
                        let n = stream.read(&mut buf).await.unwrap();
                        assert!(n > 0, "client closed early");
                        seen.extend_from_slice(&buf[..n]);
                    }
                    stream.write_all(answer.as_bytes()).await.unwrap();
                }
            }
        });
        url
    }

    #[tokio::test]
    async fn reads_sized_and_chunked_bodies_on_one_connection() {
        let url = server(vec![vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            "HTTP/1.1 302 Found\r\nlocation: /next\r\ntransfer-encoding: chunked\r\n\r\n\
             3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
        ]])
        .await;
        let mut client = Client::new();
        let first = client.get(&format!("{url}/a")).await.unwrap();
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(&first.body[..], b"hello");
        assert_eq!(first.headers["x-a"], "1");
        let second = client.get(&format!("{url}/b")).await.unwrap();
        assert_eq!(second.location().unwrap(), "/next");
        assert_eq!(&second.body[..], b"abcde");
        assert_eq!(client.connections.len(), 1, "kept alive");
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_once() {
        let url = server(vec![
            vec!["HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"],
            vec!["HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"],
        ])
        .await;
        let mut client = Client::new();
        assert_eq!(&client.get(&url).await.unwrap().body[..], b"a");
        // The server closed the first connection after its answer.
        assert_eq!(&client.get(&url).await.unwrap().body[..], b"b");
    }

    #[tokio::test]
    async fn a_truncated_body_is_an_error() {
        let url = server(vec![vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        ]])
        .await;
        let err = Client::new().get(&url).await.unwrap_err();
        assert!(format!("{err:#}").contains("inside a body"), "{err:#}");
    }
}
