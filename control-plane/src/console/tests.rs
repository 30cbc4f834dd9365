//! The console's routes driven in-process; the pages themselves are driven by a real browser in
//! `tests/tests/console.rs`.

use super::*;
use crate::server::Config;
use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Harness {
    app: Router,
    _data: tempfile::TempDir,
    _manifests: tempfile::TempDir,
}

const RULES: &str = r#"
apiVersion: oathkeeper.ory.sh/v1alpha1
kind: Rule
metadata: {name: good, namespace: default}
spec:
  upstream: {url: "http://httpbin.default.svc.cluster.local:8000"}
  match: {url: "<http|https>://<[^/]+>/headers", methods: ["GET"]}
  authenticators: [{handler: anonymous}]
  authorizer: {handler: allow}
---
apiVersion: oathkeeper.ory.sh/v1alpha1
kind: Rule
metadata: {name: broken, namespace: default}
spec:
  upstream: {url: "http://httpbin.default.svc.cluster.local:8000"}
  match: {url: "<http|https>://<[^/]+>/broken", methods: ["GET"]}
  authenticators: [{handler: no_such_handler}]
  authorizer: {handler: allow}
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default}
spec:
  selector: {app: httpbin}
  ports: [{port: 8000}]
"#;

/// `issuer`: the control plane's own origin, trusted by the callout proxy.
fn harness(issuer: &str) -> Harness {
    let data = tempfile::tempdir().unwrap();
    let manifests_dir = tempfile::tempdir().unwrap();
    std::fs::write(manifests_dir.path().join("rules.yaml"), RULES).unwrap();
    std::fs::write(manifests_dir.path().join("service.yaml"), SERVICE).unwrap();
    let mut c = Config::new(data.path().to_path_buf());
    c.secrets_system = Some("unit-test-system-secret".into());
    c.issuer = issuer.to_string();
    let svc = Service::open(c).unwrap();
    let console = Console::new(
        svc,
        Some(ManifestsSource {
            dir: manifests_dir.path().to_path_buf(),
            global: GlobalConfig::default(),
        }),
    );
    Harness {
        app: router(console),
        _data: data,
        _manifests: manifests_dir,
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::HOST, "localhost")
        .body(Body::empty())
        .unwrap()
}

fn callout(config: &Value, url: &str) -> Request<Body> {
    let body = json!({
        "config": config,
        "request": {"method": "GET", "url": url, "headers": [["accept", "application/json"], ["cookie", "x=1"]], "body": "", "timeout_ms": 2000}
    });
    Request::post("/console/api/callout")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn config_naming(url: &str) -> Value {
    json!({
        "authenticators": {"jwt": {"enabled": true, "config": {"jwks_urls": [url]}}},
        "rules": []
    })
}

/// Serves a JWKS on loopback; answers the URL and the request headers it saw.
async fn jwks_server() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let app = Router::new().route(
        "/jwks.json",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let s = Arc::clone(&s);
            async move {
                s.lock()
                    .unwrap()
                    .extend(headers.keys().map(|k| k.as_str().to_string()));
                Json(json!({"keys": []}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn pages_are_embedded_with_a_strict_csp() {
    let h = harness("http://127.0.0.1:4444");
    for path in [
        "/console",
        "/console/console.js",
        "/console/tester/portcullis_tester_wasm_bg.wasm",
    ] {
        let (status, headers, body) = send(&h.app, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty());
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }
    let (status, _, _) = send(&h.app, get("/console/../Cargo.toml")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(&h.app, get("/console/nothing.js")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_admin_guard_covers_the_console() {
    let h = harness("http://127.0.0.1:4444");
    let evil_host = Request::get("/console/api/rules")
        .header(header::HOST, "evil.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h.app, evil_host).await.0, StatusCode::FORBIDDEN);
    let mut cross = callout(
        &config_naming("https://example.com/jwks"),
        "https://example.com/jwks",
    );
    cross
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(send(&h.app, cross).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn rules_are_grouped_with_reasons_and_sizes() {
    let h = harness("http://127.0.0.1:4444");
    let (status, _, body) = send(&h.app, get("/console/api/rules")).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let rule = |name: &str| {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(rule("good")["ready"], true);
    assert_eq!(rule("good")["reason"], "Applied");
    let broken = rule("broken");
    assert_eq!(broken["ready"], false);
    assert_eq!(broken["reason"], "Invalid");
    assert!(
        broken["message"]
            .as_str()
            .unwrap()
            .contains("no_such_handler"),
        "{broken}"
    );
    let w = &v["workloads"][0];
    assert_eq!(w["workload"], "default/app=httpbin");
    assert!(w["resource_bytes"].as_u64().unwrap() > 100);
    assert_eq!(w["limit_bytes"], MAX_RESOURCE_BYTES);
    assert!(w["filter_config"]["rules"].is_array());
}

#[tokio::test]
async fn keys_show_the_jwks_and_ages() {
    let h = harness("http://127.0.0.1:4444");
    let (status, _, body) = send(&h.app, get("/console/api/keys")).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(!v["jwks"]["keys"].as_array().unwrap().is_empty());
    let keys = v["keys"].as_array().unwrap();
    // Both sets are listed: the access-token keys and the id_token mutator's keys.
    let key = keys
        .iter()
        .find(|k| k["set"] == ACCESS_TOKEN_SET)
        .unwrap_or_else(|| panic!("no access-token key in {keys:?}"));
    assert!(key["age_seconds"].as_i64().unwrap() >= 0);
    assert!(
        keys.iter()
            .any(|k| k["set"] == crate::id_token_keys::ID_TOKEN_SET),
        "{keys:?}"
    );
    assert!(v["next_rotation"].is_null(), "no --key-rotation");
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains("\"d\""),
        "private key material leaked: {text}"
    );
}

#[tokio::test]
async fn the_callout_proxy_calls_only_named_urls_on_trusted_or_public_origins() {
    let (origin, seen) = jwks_server().await;
    let url = format!("{origin}/jwks.json");
    // Trusted: the control plane's own origin.
    let h = harness(&origin);
    let (status, _, body) = send(&h.app, callout(&config_naming(&url), &url)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], r#"{"keys":[]}"#);
    assert!(!seen.lock().unwrap().iter().any(|h| h == "cookie"));
    // A URL the configuration does not name.
    let other = format!("{origin}/admin/clients");
    let (status, _, body) = send(&h.app, callout(&config_naming(&url), &other)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("not a URL the submitted configuration"));
    // Named, but loopback and not an origin the deployment calls: the SSRF rule applies,
    // also to the hostile spellings of loopback.
    let h = harness("http://127.0.0.1:4444");
    for url in [
        url.clone(),
        url.replace("127.0.0.1", "[::ffff:127.0.0.1]"),
        url.replace("127.0.0.1", "localhost"),
        "http://169.254.169.254/latest/meta-data".to_string(),
    ] {
        let (status, _, body) = send(&h.app, callout(&config_naming(&url), &url)).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{url}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // Not JSON at all, and a cross-site-capable content type.
    let bad = Request::post("/console/api/callout")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{"))
        .unwrap();
    assert_eq!(send(&h.app, bad).await.0, StatusCode::BAD_REQUEST);
    let plain = Request::post("/console/api/callout")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(json!({"config": {}, "request": {}}).to_string()))
        .unwrap();
    assert_eq!(
        send(&h.app, plain).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
}

/// The embedded tester bundle must be built from the core and bindings in this tree:
/// `make console-wasm` rebuilds it and records the hash of its sources.
#[test]
fn the_tester_bundle_is_built_from_these_sources() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let recorded = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console/tester/SOURCES.sha256"),
    )
    .unwrap();
    assert_eq!(
        recorded.trim(),
        crate::console::bundle_sources_hash(&root).unwrap(),
        "the tester bundle is stale: run `make console-wasm` and commit control-plane/console/tester"
    );
}
