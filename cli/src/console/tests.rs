//! The console's routes driven in-process; the pages themselves are driven by a real browser in
//! `tests/tests/console.rs`.

use super::*;
use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use portcullis::server::Config;
use portcullis_reconciler::client_controller::Namespaces;
use portcullis_reconciler::rule_set::MAX_RESOURCE_BYTES;
use tower::ServiceExt;

struct Harness {
    app: Router,
    svc: Arc<Service>,
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
        Arc::clone(&svc),
        Some(ManifestsSource {
            dir: manifests_dir.path().to_path_buf(),
            global: GlobalConfig::default(),
        }),
    );
    Harness {
        app: router(console),
        svc,
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
            .any(|k| k["set"] == portcullis::id_token_keys::ID_TOKEN_SET),
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
        "the tester bundle is stale: run `make console-wasm` and commit cli/console/tester"
    );
}

fn mint(body: Value) -> Request<Body> {
    Request::post("/console/api/token")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// The tester's token: the token endpoint's own checks, for either registered auth method.
#[tokio::test]
async fn a_token_is_minted_only_with_the_clients_secret_and_allow_lists() {
    let h = harness("http://127.0.0.1:4444");
    for (id, method) in [
        ("basic-client", "client_secret_basic"),
        ("post-client", "client_secret_post"),
    ] {
        h.svc
            .clients
            .create(
                serde_json::from_value(json!({"client_id": id, "client_secret": "s3cret+/:%",
                    "grant_types": ["client_credentials"], "scope": "read write",
                    "audience": ["httpbin"], "token_endpoint_auth_method": method}))
                .unwrap(),
            )
            .await
            .unwrap();
        let (status, headers, body) = send(
            &h.app,
            mint(
                json!({"client_id": id, "client_secret": "s3cret+/:%", "scope": "read",
                "audience": ["httpbin"]}),
            ),
        )
        .await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, StatusCode::OK, "{id}: {v}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(v["scope"], "read");
        let token = v["access_token"].as_str().unwrap();
        let claims = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (claims["sub"].as_str(), claims["aud"][0].as_str()),
            (Some(id), Some("httpbin"))
        );

        // The wrong secret, or none: the token endpoint's answer, without a Basic challenge
        // that would make the browser prompt for a password.
        for secret in ["wrong", ""] {
            let (status, headers, body) = send(
                &h.app,
                mint(json!({"client_id": id, "client_secret": secret})),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{id}");
            assert!(
                !headers.contains_key(header::WWW_AUTHENTICATE),
                "{headers:?}"
            );
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"], "invalid_client");
        }
        // Scopes and audiences outside the client's allow-lists.
        let (status, _, body) = send(
            &h.app,
            mint(json!({"client_id": id, "client_secret": "s3cret+/:%", "scope": "admin"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap()["error"],
            "invalid_scope"
        );
        let (status, _, _) = send(
            &h.app,
            mint(json!({"client_id": id, "client_secret": "s3cret+/:%", "audience": ["other"]})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, _, _) = send(
        &h.app,
        mint(json!({"client_id": "nobody", "client_secret": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send(&h.app, mint(json!({"client_id": 7}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Cross-site pages cannot use it.
    let mut cross = mint(json!({"client_id": "basic-client", "client_secret": "s3cret+/:%"}));
    cross
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(send(&h.app, cross).await.0, StatusCode::FORBIDDEN);
}

/// Kubernetes mode: the page is computed from the served namespaces' Rules and Services (read
/// from a scripted API server), with the Ready condition the leader wrote on each Rule.
#[tokio::test]
async fn kubernetes_mode_rules_come_from_the_api_server_with_their_written_status() {
    use kube::client::Body as KubeBody;
    let (mock, mut api) =
        tower_test::mock::pair::<Request<KubeBody>, axum::http::Response<KubeBody>>();
    let h = harness("http://127.0.0.1:4444");
    let render = RenderOptions {
        module_url: "http://portcullis.kyma-system.svc:4444/filter.wasm".into(),
        max_resource_bytes: 100_000,
        ..RenderOptions::default()
    };
    let console = Console::new(Arc::clone(&h.svc), None).with_kubernetes(KubernetesSource {
        client: kube::Client::new(mock, "default"),
        global: GlobalConfig::default(),
        render,
        namespaces: Namespaces::Only(vec!["default".into()]),
    });
    let app = router(console);
    let rule = |name: &str, path: &str, authn: &str, status: Value| {
        json!({"apiVersion": "oathkeeper.ory.sh/v1alpha1", "kind": "Rule",
            "metadata": {"name": name, "namespace": "default", "generation": 3, "uid": name},
            "spec": {"upstream": {"url": "http://httpbin.default.svc.cluster.local:8000"},
                "match": {"url": format!("<http|https>://<[^/]+>{path}"), "methods": ["GET"]},
                "authenticators": [{"handler": authn}], "authorizer": {"handler": "allow"}},
            "status": status})
    };
    let items = |kind: &str, items: Vec<Value>| json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "7"}, "items": items});
    let answers = [
        (
            "/apis/oathkeeper.ory.sh/v1alpha1/namespaces/default/rules",
            items(
                "RuleList",
                vec![
                    rule(
                        "good",
                        "/headers",
                        "anonymous",
                        json!({"conditions": [{"type": "Ready",
                        "status": "False", "reason": "ApplyFailed",
                        "message": "WasmPlugin default/portcullis-httpbin: forbidden"}]}),
                    ),
                    rule("broken", "/broken", "no_such_handler", json!({})),
                ],
            ),
        ),
        (
            "/api/v1/namespaces/default/services",
            items(
                "ServiceList",
                vec![json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "httpbin", "namespace": "default"},
                    "spec": {"selector": {"app": "httpbin"}}})],
            ),
        ),
    ];
    let page = tokio::spawn(async move { send(&app, get("/console/api/rules")).await });
    for (path, reply) in answers {
        let (req, respond) =
            tokio::time::timeout(std::time::Duration::from_secs(5), api.next_request())
                .await
                .expect("a list request")
                .expect("client alive");
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", path));
        respond.send_response(
            axum::http::Response::builder()
                .status(200)
                .body(KubeBody::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
    let (status, _, body) = page.await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["mode"], "kubernetes");
    let rule = |name: &str| {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    let good = rule("good");
    assert_eq!(
        (&good["reason"], &good["workload"]),
        (&json!("Applied"), &json!("default/app=httpbin"))
    );
    assert_eq!(good["written"]["ready"], false, "{good}");
    assert_eq!(good["written"]["reason"], "ApplyFailed");
    assert!(
        good["written"]["message"]
            .as_str()
            .unwrap()
            .contains("forbidden")
    );
    let broken = rule("broken");
    assert_eq!(broken["reason"], "Invalid");
    assert!(
        broken["message"]
            .as_str()
            .unwrap()
            .contains("no_such_handler"),
        "{broken}"
    );
    assert!(broken["written"].is_null(), "{broken}");
    let w = &v["workloads"][0];
    assert_eq!(w["workload"], "default/app=httpbin");
    assert_eq!(w["limit_bytes"], 100_000);
    let bytes = w["resource_bytes"].as_u64().unwrap();
    assert!(bytes > 100 && bytes < 100_000, "{bytes}");
    assert_eq!(w["rule_ids"].as_array().unwrap().len(), 2, "{w}");

    // The API server refusing the list: a 503 with the reason, not an empty page.
    let (mock, mut api) =
        tower_test::mock::pair::<Request<KubeBody>, axum::http::Response<KubeBody>>();
    let app = router(
        Console::new(Arc::clone(&h.svc), None).with_kubernetes(KubernetesSource {
            client: kube::Client::new(mock, "default"),
            global: GlobalConfig::default(),
            render: RenderOptions::default(),
            namespaces: Namespaces::Only(vec!["default".into()]),
        }),
    );
    let page = tokio::spawn(async move { send(&app, get("/console/api/rules")).await });
    let (_, respond) = tokio::time::timeout(std::time::Duration::from_secs(5), api.next_request())
        .await
        .expect("a list request")
        .expect("client alive");
    respond.send_response(
        axum::http::Response::builder()
            .status(403)
            .body(KubeBody::from(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Forbidden", "message": "rules is forbidden", "code": 403})
                .to_string()
                .into_bytes(),
            ))
            .unwrap(),
    );
    let (status, _, body) = page.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("forbidden"),
        "{v}"
    );
}

/// Kubernetes mode: a cluster-internal (here loopback) URL is called only when a deployed Rule,
/// read from the API server, calls its origin; otherwise the SSRF rule applies.
#[tokio::test]
async fn kubernetes_mode_callouts_trust_only_origins_the_deployed_rules_call() {
    use kube::client::Body as KubeBody;
    let (origin, _) = jwks_server().await;
    let url = format!("{origin}/jwks.json");
    let h = harness("http://127.0.0.1:4444");
    for (deployed_calls_it, want) in [(true, StatusCode::OK), (false, StatusCode::FORBIDDEN)] {
        let (mock, mut api) =
            tower_test::mock::pair::<Request<KubeBody>, axum::http::Response<KubeBody>>();
        let app = router(Console::new(Arc::clone(&h.svc), None).with_kubernetes(
            KubernetesSource {
                client: kube::Client::new(mock, "default"),
                global: GlobalConfig::default(),
                render: RenderOptions {
                    module_url: "http://portcullis.kyma-system.svc:4444/filter.wasm".into(),
                    ..RenderOptions::default()
                },
                namespaces: Namespaces::Only(vec!["default".into()]),
            },
        ));
        let authenticator = if deployed_calls_it {
            json!({"handler": "jwt", "config": {"jwks_urls": [url]}})
        } else {
            json!({"handler": "anonymous"})
        };
        let rules = json!({"apiVersion": "v1", "kind": "RuleList",
            "metadata": {"resourceVersion": "7"},
            "items": [{"apiVersion": "oathkeeper.ory.sh/v1alpha1", "kind": "Rule",
                "metadata": {"name": "r", "namespace": "default", "generation": 1, "uid": "r"},
                "spec": {"upstream": {"url": "http://httpbin.default.svc.cluster.local:8000"},
                    "match": {"url": "<http|https>://<[^/]+>/headers", "methods": ["GET"]},
                    "authenticators": [authenticator], "authorizer": {"handler": "allow"}}}]});
        let services = json!({"apiVersion": "v1", "kind": "ServiceList",
            "metadata": {"resourceVersion": "7"},
            "items": [{"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "httpbin", "namespace": "default"},
                "spec": {"selector": {"app": "httpbin"}}}]});
        let call = {
            let url = url.clone();
            tokio::spawn(async move { send(&app, callout(&config_naming(&url), &url)).await })
        };
        for (path, reply) in [
            (
                "/apis/oathkeeper.ory.sh/v1alpha1/namespaces/default/rules",
                rules,
            ),
            ("/api/v1/namespaces/default/services", services),
        ] {
            let (req, respond) =
                tokio::time::timeout(std::time::Duration::from_secs(5), api.next_request())
                    .await
                    .expect("a list request")
                    .expect("client alive");
            assert_eq!(req.uri().path(), path);
            respond.send_response(
                axum::http::Response::builder()
                    .status(200)
                    .body(KubeBody::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        let (status, _, body) = call.await.unwrap();
        assert_eq!(
            status,
            want,
            "deployed rule calls it: {deployed_calls_it}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}
