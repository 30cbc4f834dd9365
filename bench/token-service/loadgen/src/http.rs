//! A minimal HTTP/1.1 client for the load generator: one pooled hyper client shared by every
//! worker (keep-alive, as browsers and apps do), and a per-flow cookie jar that acts as the
//! browser's.

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;

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

#[derive(Clone)]
pub struct Client {
    hyper: Hyper<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            hyper: Hyper::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, HeaderValue)],
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Reply> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let resp = self
            .hyper
            .request(
                req.body(body)
                    .with_context(|| format!("request to {url}"))?,
            )
            .await
            .with_context(|| format!("sending to {url}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.context("reading a body")?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&self, url: &str) -> Result<Reply> {
        self.send(Method::GET, url, &[], None).await
    }

    pub async fn json(&self, method: Method, url: &str, body: &serde_json::Value) -> Result<Reply> {
        let bytes = serde_json::to_vec(body)?;
        self.send(method, url, &[], Some(("application/json", bytes)))
            .await
    }

    /// `POST` of a form with HTTP Basic client authentication (the token endpoint).
    pub async fn form(
        &self,
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

/// One browser's cookies (one host: the issuer). Keeps what `Set-Cookie` sets, drops what it
/// expires, and sends the rest back, as a browser would.
#[derive(Default)]
pub struct Jar {
    cookies: BTreeMap<String, String>,
}

impl Jar {
    pub async fn get(&mut self, client: &Client, url: &str) -> Result<Reply> {
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
