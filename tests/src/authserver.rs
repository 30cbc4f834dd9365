//! A mock auth server whose behaviour a test changes at runtime: `/jwks` (serve a key set, fail
//! with a status, or the whole server down), `/introspect` (RFC 7662 answers from a token map),
//! `/authz` (remote_json authorizer: status from a test-supplied function). Every request to any
//! path is recorded (method, path, headers, body) and counted, so tests can assert callouts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::runtime::ServerHandle;
use crate::upstream::header_map;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body parsed as `application/x-www-form-urlencoded` (introspection requests).
    pub fn form(&self) -> BTreeMap<String, String> {
        self.body
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (form_decode(k), form_decode(v))
            })
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What `/jwks` does.
#[derive(Debug, Clone)]
pub enum Jwks {
    Serve(Value),
    Fail(u16),
}

/// A failure injected on one path (see [`AuthServer::set_fault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answers as usual, after this long.
    Slow(std::time::Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with this many bytes of non-JSON body.
    Huge(usize),
}

type AuthzFn = Arc<dyn Fn(&Recorded) -> u16 + Send + Sync>;
type IntrospectFn = Arc<dyn Fn(&Recorded) -> Value + Send + Sync>;
/// Answers a path: status and JSON body, after an optional delay.
type HandlerFn = Arc<dyn Fn(&Recorded) -> (u16, Value, std::time::Duration) + Send + Sync>;

struct Behaviour {
    jwks: Jwks,
    introspection: HashMap<String, Value>,
    /// When set, answers `/introspect` instead of the token map (answers that depend on the
    /// request's headers).
    introspect: Option<IntrospectFn>,
    authz: AuthzFn,
    /// Path -> (status, JSON body) for anything else a test wants to serve.
    fixed: HashMap<String, (u16, Value)>,
    recorded: Vec<Recorded>,
    /// Answers to `/jwks` wait this long (a slow key server).
    jwks_delay: std::time::Duration,
    /// Path -> a test's own answer (token endpoints and the like).
    handlers: HashMap<String, HandlerFn>,
    /// Path -> an injected fault (down is the test's own; slow, garbage, huge here).
    faults: HashMap<String, Fault>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Behaviour>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Behaviour> {
        // A test that panicked while holding the lock must not hide other failures.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct AuthServer {
    shared: Shared,
    port: u16,
    server: Mutex<Option<ServerHandle>>,
}

impl AuthServer {
    /// Starts with an empty JWKS (`{"keys": []}`), no active tokens and an authorizer that
    /// allows everything.
    pub fn start() -> Self {
        let shared = Shared(Arc::new(Mutex::new(Behaviour {
            jwks: Jwks::Serve(json!({"keys": []})),
            introspection: HashMap::new(),
            introspect: None,
            authz: Arc::new(|_| 200),
            fixed: HashMap::new(),
            recorded: Vec::new(),
            jwks_delay: std::time::Duration::ZERO,
            handlers: HashMap::new(),
            faults: HashMap::new(),
        })));
        let server =
            ServerHandle::serve(router(shared.clone()), 0).expect("starting the auth server");
        let port = server.port;
        Self {
            shared,
            port,
            server: Mutex::new(Some(server)),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` — the origin to map to a cluster in the filter's `clusters`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.origin(), path)
    }

    pub fn set_jwks(&self, jwks: Value) {
        self.shared.lock().jwks = Jwks::Serve(jwks);
    }

    /// Makes `/jwks` answer only after `delay`.
    pub fn delay_jwks(&self, delay: std::time::Duration) {
        self.shared.lock().jwks_delay = delay;
    }

    pub fn fail_jwks(&self, status: u16) {
        self.shared.lock().jwks = Jwks::Fail(status);
    }

    /// Stops listening (connections are refused) until `up`. Keeps recorded requests.
    pub fn down(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        server.take();
        // Graceful shutdown is asynchronous; wait until the port really refuses.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while crate::ports::is_listening(self.port) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if server.is_none() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match ServerHandle::serve(router(self.shared.clone()), self.port) {
                    Ok(handle) => {
                        *server = Some(handle);
                        break;
                    }
                    Err(e) if std::time::Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => panic!("auth server: rebinding port {}: {e}", self.port),
                }
            }
        }
    }

    /// `/introspect` answers `response` for `token` (unknown tokens get `{"active": false}`).
    pub fn set_introspection(&self, token: &str, response: Value) {
        self.shared
            .lock()
            .introspection
            .insert(token.to_owned(), response);
    }

    /// `/introspect` answers (status 200) what `answer` returns for each request, whatever
    /// [`AuthServer::set_introspection`] set.
    pub fn set_introspection_fn(
        &self,
        answer: impl Fn(&Recorded) -> Value + Send + Sync + 'static,
    ) {
        self.shared.lock().introspect = Some(Arc::new(answer));
    }

    pub fn remove_introspection(&self, token: &str) {
        self.shared.lock().introspection.remove(token);
    }

    /// `/authz` answers the status `decide` returns for each request (body `{}`).
    pub fn set_authz(&self, decide: impl Fn(&Recorded) -> u16 + Send + Sync + 'static) {
        self.shared.lock().authz = Arc::new(decide);
    }

    /// Injects `fault` on `path` (`None` removes it); requests are still recorded.
    pub fn set_fault(&self, path: &str, fault: Option<Fault>) {
        let mut b = self.shared.lock();
        match fault {
            Some(f) => b.faults.insert(path.to_owned(), f),
            None => b.faults.remove(path),
        };
    }

    /// Serve `status` with JSON `body` on `path` (any method).
    pub fn set_fixed(&self, path: &str, status: u16, body: Value) {
        self.shared
            .lock()
            .fixed
            .insert(path.to_owned(), (status, body));
    }

    /// `path` (any method) answers what `answer` returns: status, JSON body and how long to
    /// wait before answering.
    pub fn set_handler(
        &self,
        path: &str,
        answer: impl Fn(&Recorded) -> (u16, Value, std::time::Duration) + Send + Sync + 'static,
    ) {
        self.shared
            .lock()
            .handlers
            .insert(path.to_owned(), Arc::new(answer));
    }

    /// Every request received on `path` (without query), oldest first.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .recorded
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// How many requests `path` received.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .lock()
            .recorded
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().recorded.clear();
    }
}

fn router(shared: Shared) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
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
    // An injected fault overrides whatever answers the path, a test's own handler included.
    let (handler, delay, fault) = {
        let mut b = shared.lock();
        b.recorded.push(recorded.clone());
        let fault = b.faults.get(&recorded.path).cloned();
        let delay = match &fault {
            Some(Fault::Slow(d)) => *d,
            _ if recorded.path.contains("jwks") => b.jwks_delay,
            _ => std::time::Duration::ZERO,
        };
        (b.handlers.get(&recorded.path).cloned(), delay, fault)
    };
    match fault {
        Some(Fault::Garbage) => {
            return (
                StatusCode::OK,
                "<html>502 Bad Gateway</html>\n{\"active\": tru",
            )
                .into_response();
        }
        Some(Fault::Huge(n)) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                vec![b'x'; n],
            )
                .into_response();
        }
        _ => {}
    }
    if let Some(answer) = handler {
        let (status, body, handler_delay) = answer(&recorded);
        let delay = match fault {
            Some(Fault::Slow(d)) => d,
            _ => handler_delay,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return json_response(status, &body);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let b = shared.lock();
    if let Some((status, body)) = b.fixed.get(&recorded.path) {
        return json_response(*status, body);
    }
    match recorded.path.as_str() {
        "/jwks" | "/.well-known/jwks.json" => match &b.jwks {
            Jwks::Serve(v) => json_response(200, v),
            Jwks::Fail(status) => {
                json_response(*status, &json!({"error": "jwks failure injected by test"}))
            }
        },
        "/introspect" if b.introspect.is_some() => {
            let answer = b.introspect.clone();
            drop(b);
            let answer = answer.map_or(Value::Null, |f| f(&recorded));
            json_response(200, &answer)
        }
        "/introspect" => {
            let token = recorded.form().get("token").cloned().unwrap_or_default();
            let answer = b
                .introspection
                .get(&token)
                .cloned()
                .unwrap_or_else(|| json!({"active": false}));
            json_response(200, &answer)
        }
        "/authz" => {
            let decide = b.authz.clone();
            drop(b);
            json_response(decide(&recorded), &json!({}))
        }
        _ => json_response(404, &json!({"error": "not found"})),
    }
}

#[cfg(test)]
mod tests {
    use super::form_decode;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%2Fc%3d"), "a b/c=");
        assert_eq!(form_decode("100%"), "100%");
    }
}
