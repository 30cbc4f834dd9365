//! The echo upstream: answers every request with 200 and JSON
//! `{"method", "path", "headers": {name: value}, "body"}` so tests can assert what Envoy
//! forwarded (mutated headers, stripped headers, path and query). It also records every
//! request, so a test can show that one never reached it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Json;
use serde::{Deserialize, Serialize};

use crate::runtime::ServerHandle;

/// What the upstream saw. Header names are lower-case; repeated headers are joined by ", ".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Echo {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

type Seen = Arc<Mutex<Vec<Echo>>>;

pub struct Upstream {
    server: ServerHandle,
    seen: Seen,
}

impl Upstream {
    pub fn start() -> Self {
        let seen = Seen::default();
        let router = axum::Router::new().fallback(echo).with_state(seen.clone());
        let server = ServerHandle::serve(router, 0).expect("starting the echo upstream");
        Self { server, seen }
    }

    /// The requests received so far whose path (with query) starts with `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<Echo> {
        self.seen
            .lock()
            .expect("upstream record lock")
            .iter()
            .filter(|e| e.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }
}

async fn echo(
    State(seen): State<Seen>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Echo> {
    let echo = Echo {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| uri.path().to_owned()),
        headers: header_map(&headers),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    if let Ok(mut seen) = seen.lock() {
        seen.push(echo.clone());
    }
    Json(echo)
}

/// Lower-case name -> value, repeated values joined by ", ".
pub(crate) fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}
