//! A recording test server whose answer on each path is a test-supplied function: status,
//! headers, body and an optional delay. It stands in for the services the filter's callout
//! handlers talk to (session stores, remote authorizers, hydrator APIs) when a test needs to
//! answer per request, set response headers or be slow; every request is recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::authserver::Recorded;
use crate::runtime::ServerHandle;
use crate::upstream::header_map;

/// One answer.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Answer only after this long (a slow service).
    pub delay: Duration,
}

impl Answer {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// `status` with `body` as written (garbage, HTML).
    pub fn raw(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.to_owned(),
            ..Self::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type AnswerFn = Arc<dyn Fn(&Recorded) -> Answer + Send + Sync>;

#[derive(Default)]
struct Inner {
    routes: HashMap<String, AnswerFn>,
    recorded: Vec<Recorded>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Scripted {
    shared: Shared,
    server: ServerHandle,
}

impl Scripted {
    /// Starts with no routes: every path answers 404 until [`Scripted::on`] sets it.
    pub fn start() -> Self {
        let shared = Shared::default();
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let server = ServerHandle::serve(router, 0).expect("starting the scripted server");
        Self { shared, server }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.origin(), path)
    }

    /// Answers requests on `path` (without query) with what `answer` returns.
    pub fn on(&self, path: &str, answer: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) {
        self.shared
            .lock()
            .routes
            .insert(path.to_owned(), Arc::new(answer));
    }

    /// Requests received on `path`, oldest first.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .recorded
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn hits(&self, path: &str) -> usize {
        self.requests(path).len()
    }

    pub fn clear(&self) {
        self.shared.lock().recorded.clear();
    }
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: header_map(&headers),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let route = {
        let mut inner = shared.lock();
        inner.recorded.push(recorded.clone());
        inner.routes.get(&recorded.path).cloned()
    };
    let answer = route.map_or_else(|| Answer::raw(404, "no route"), |f| f(&recorded));
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer.body,
    )
        .into_response();
    for (name, value) in answer.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}
