//! Black-box regression tests of the token service's hardening (issue 15): the admin API
//! against browsers (CSRF, DNS rebinding), tokens of re-created clients, bounded lifespans,
//! `jwks_uri` fetches by unauthenticated callers, connection caps and timeouts, one answer for
//! every client-authentication failure, and private data files.
// A test crate: failing loudly (expect/panic) is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use harness::{Reply, Server, TestDir, basic, http, jwt_parts, now};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls `check` until it returns true, failing after a generous deadline.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn post_client(srv: &Server, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut req = http()
        .post(format!("{}/admin/clients", srv.admin()))
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Reply::from(req.send().await.expect("POST /admin/clients")).await
}

#[tokio::test]
async fn admin_api_refuses_cross_site_requests_and_rebound_hosts() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &["--admin-hosts", "admin.internal"]).await;
    let evil = json!({"client_id": "evil", "client_secret": "attacker-chosen",
                      "grant_types": ["client_credentials"]});
    // What a web page can send cross-site without a CORS preflight: text/plain.
    let r = post_client(&srv, &evil, &[("content-type", "text/plain")]).await;
    r.assert_oauth_error(415, "unsupported_media_type");
    let r = post_client(&srv, &evil, &[]).await;
    r.assert_oauth_error(415, "unsupported_media_type");
    let json_ct = ("content-type", "application/json");
    let rebound = format!("attacker.example:{}", srv.admin_port);
    for extra in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "http://attacker.example"),
        ("origin", "null"),
        ("host", rebound.as_str()),
    ] {
        let r = post_client(&srv, &evil, &[json_ct, extra]).await;
        r.assert_oauth_error(403, "request_forbidden");
        // Key rotation and reads are refused the same way.
        let r = Reply::from(
            http()
                .post(format!("{}/admin/keys/hydra.jwt.access-token", srv.admin()))
                .header(json_ct.0, json_ct.1)
                .header(extra.0, extra.1)
                .body(r#"{"alg":"ES256"}"#)
                .send()
                .await
                .expect("POST keys"),
        )
        .await;
        r.assert_oauth_error(403, "request_forbidden");
        let r = Reply::from(
            http()
                .get(format!("{}/admin/clients", srv.admin()))
                .header(extra.0, extra.1)
                .send()
                .await
                .expect("GET clients"),
        )
        .await;
        r.assert_oauth_error(403, "request_forbidden");
    }
    let r = Reply::from(
        http()
            .get(format!("{}/admin/clients/evil", srv.admin()))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(
        r.status, 404,
        "the refused requests created nothing: {}",
        r.body
    );
    // Hydra API clients (JSON, no Origin), a same-origin page and the configured name work.
    let origin = srv.admin();
    let internal = format!("admin.internal:{}", srv.admin_port);
    for (i, headers) in [
        vec![json_ct],
        vec![json_ct, ("origin", origin.as_str())],
        vec![json_ct, ("sec-fetch-site", "same-origin")],
        vec![json_ct, ("host", internal.as_str())],
        vec![("content-type", "application/json; charset=utf-8")],
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"client_id": format!("ok-{i}"), "grant_types": ["client_credentials"]});
        let r = post_client(&srv, &body, &headers).await;
        assert_eq!(r.status, 201, "{headers:?}: {}", r.body);
    }
}

#[tokio::test]
async fn a_recreated_client_does_not_revive_old_tokens() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let body = |scope: &str| {
        json!({"client_id": "svc-billing", "client_secret": "billing-secret",
               "grant_types": ["client_credentials"], "scope": scope})
    };
    srv.create_client(body("billing.read billing.admin")).await;
    let old = srv
        .token(
            "svc-billing",
            "billing-secret",
            &[("scope", "billing.admin")],
        )
        .await;
    assert_eq!(srv.introspect(&old).await["active"], true);
    let (_, claims) = jwt_parts(&old);
    let iat = claims["iat"].as_i64().unwrap();
    let r = Reply::from(
        http()
            .delete(format!("{}/admin/clients/svc-billing", srv.admin()))
            .send()
            .await
            .expect("DELETE"),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    // At once: creation times are whole seconds, and the service makes the new client start
    // after the second its predecessor was deleted in.
    srv.create_client(body("billing.read")).await;
    let (_, claims) = jwt_parts(&srv.token("svc-billing", "billing-secret", &[]).await);
    assert!(claims["iat"].as_i64().unwrap() > iat);
    let active = srv.introspect(&old).await;
    assert_eq!(active["active"], false, "old token revived: {active}");
    let fresh = srv
        .token(
            "svc-billing",
            "billing-secret",
            &[("scope", "billing.read")],
        )
        .await;
    assert_eq!(srv.introspect(&fresh).await["active"], true);
}

#[tokio::test]
async fn lifespans_are_bounded() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &["--max-access-token-ttl", "2h"]).await;
    let client = |id: &str, lifespan: &str| {
        json!({"client_id": id, "client_secret": "lifespan-secret",
               "grant_types": ["client_credentials"],
               "client_credentials_grant_access_token_lifespan": lifespan})
    };
    for huge in [
        "9223372036854775807",
        "18446744073709551615s",
        "3h",
        "2h0m1s",
    ] {
        let r = post_client(
            &srv,
            &client("huge", huge),
            &[("content-type", "application/json")],
        )
        .await;
        r.assert_oauth_error(400, "invalid_client_metadata");
        assert!(
            r.body
                .contains("client_credentials_grant_access_token_lifespan"),
            "{huge}: {}",
            r.body
        );
    }
    srv.create_client(client("max", "2h")).await;
    let token = srv.token("max", "lifespan-secret", &[]).await;
    let (_, claims) = jwt_parts(&token);
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 7200);
    // Rotation: the old key stays published while its tokens live, and no longer.
    let r = Reply::from(
        http()
            .post(format!("{}/admin/keys/hydra.jwt.access-token", srv.admin()))
            .json(&json!({"alg": "ES256"}))
            .send()
            .await
            .expect("rotate"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(srv.introspect(&token).await["active"], true);
    srv.verify(&token).await;

    // A global lifespan above the maximum is a start-up error, not a silent clamp.
    let dir2 = TestDir::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "serve",
            "--public-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(["--access-token-ttl", "48h", "--data-dir"])
        .arg(dir2.data())
        .output()
        .expect("run portcullis");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max-access-token-ttl"), "{stderr}");
}

/// A `jwks_uri` target that counts its connections and always fails with a revealing body.
async fn failing_jwks_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "internal-detail: redis at 10.0.0.7 is down";
                let resp = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/jwks.json"), hits)
}

/// A well-formed but unsigned-looking assertion naming `client_id` (the fetch happens before
/// any signature check, which is the point).
fn assertion_form(srv: &Server, client_id: &str, jti: &str) -> Vec<(String, String)> {
    let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let jwt = format!(
        "{}.{}.{}",
        enc(json!({"alg": "ES256", "kid": "k"})),
        enc(
            json!({"iss": client_id, "sub": client_id, "aud": srv.token_endpoint(),
                   "jti": jti, "exp": now() + 60})
        ),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    );
    vec![
        ("grant_type".into(), "client_credentials".into()),
        (
            "client_assertion_type".into(),
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
        ),
        ("client_assertion".into(), jwt),
    ]
}

async fn assert_generic_auth_failure(r: &Reply, port: u16) {
    r.assert_oauth_error(401, "invalid_client");
    for leak in [
        "500",
        "internal-detail",
        "127.0.0.1",
        &port.to_string(),
        "jwks",
        "refused",
    ] {
        assert!(
            !r.body.contains(leak),
            "error body leaks {leak:?}: {}",
            r.body
        );
    }
}

#[tokio::test]
async fn jwks_uri_fetches_are_shared_cached_and_say_nothing() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &["--allow-private-jwks-uri"]).await;
    let (uri, hits) = failing_jwks_server().await;
    let port: u16 = uri
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    srv.create_client(
        json!({"client_id": "remote", "grant_types": ["client_credentials"],
                             "token_endpoint_auth_method": "private_key_jwt",
                             "jwks_uri": uri}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let form = assertion_form(&srv, "remote", &format!("j{i}"));
        let url = srv.token_endpoint();
        tasks.push(tokio::spawn(async move {
            Reply::from(http().post(url).form(&form).send().await.expect("token")).await
        }));
    }
    for t in tasks {
        assert_generic_auth_failure(&t.await.unwrap(), port).await;
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "20 assertions must make one fetch"
    );
}

#[tokio::test]
async fn jwks_uri_on_loopback_is_not_fetched_without_the_flag() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let (uri, hits) = failing_jwks_server().await;
    let port: u16 = uri
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Also the admin port itself, and a name that resolves to loopback.
    let admin = format!("http://localhost:{}/admin/clients", srv.admin_port);
    for (id, target) in [("loop", uri.as_str()), ("adm", admin.as_str())] {
        srv.create_client(
            json!({"client_id": id, "grant_types": ["client_credentials"],
                                 "token_endpoint_auth_method": "private_key_jwt",
                                 "jwks_uri": target}),
        )
        .await;
        let form = assertion_form(&srv, id, "j");
        let r = Reply::from(
            http()
                .post(srv.token_endpoint())
                .form(&form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_generic_auth_failure(&r, port).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn every_client_authentication_failure_answers_the_same() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    srv.create_client(
        json!({"client_id": "post-only", "client_secret": "post-only-secret",
                             "grant_types": ["client_credentials"],
                             "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    srv.create_client(
        json!({"client_id": "public", "grant_types": ["client_credentials"],
                             "token_endpoint_auth_method": "none"}),
    )
    .await;
    let basic_req = |id: &str, secret: &str| {
        http()
            .post(srv.token_endpoint())
            .header("authorization", basic(id, secret))
            .form(&[("grant_type", "client_credentials")])
    };
    let replies = [
        // Unknown client.
        Reply::from(basic_req("nobody", "whatever-secret").send().await.unwrap()).await,
        // Right secret, wrong method.
        Reply::from(
            basic_req("post-only", "post-only-secret")
                .send()
                .await
                .unwrap(),
        )
        .await,
        // Wrong secret.
        Reply::from(basic_req("post-only", "wrong-secret").send().await.unwrap()).await,
        // A public client.
        Reply::from(
            http()
                .post(srv.token_endpoint())
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "public"),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await,
        // A private_key_jwt assertion naming a secret client.
        Reply::from(
            http()
                .post(srv.token_endpoint())
                .form(&assertion_form(&srv, "post-only", "j"))
                .send()
                .await
                .unwrap(),
        )
        .await,
    ];
    let first = &replies[0].json["error_description"];
    for r in &replies {
        r.assert_oauth_error(401, "invalid_client");
        assert_eq!(&r.json["error_description"], first, "{}", r.body);
        assert!(!r.body.contains("client_secret_post"), "{}", r.body);
    }
}

async fn public_connections(srv: &Server) -> Option<u64> {
    let text = http()
        .get(format!("{}/admin/metrics/prometheus", srv.admin()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("portcullis_http_connections{server=\"public\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_saturated_public_port_does_not_starve_the_admin_port() {
    let dir = TestDir::new();
    let srv = Server::start(
        &dir.data(),
        &["--max-connections", "4", "--http-header-timeout", "120s"],
    )
    .await;
    // Slow clients: half a request line each, never finished.
    let mut slow = Vec::new();
    for _ in 0..12 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", srv.public_port))
            .await
            .unwrap();
        s.write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    wait_until(
        "the public port holds its cap of slow connections",
        || async { public_connections(&srv).await == Some(4) },
    )
    .await;
    // The admin port still answers readiness and introspection.
    let r = Reply::from(
        http()
            .get(format!("{}/health/ready", srv.admin()))
            .send()
            .await
            .expect("admin readiness"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(srv.introspect("not-a-token").await["active"], false);
    // And never exceeds its cap on the public side.
    assert_eq!(public_connections(&srv).await, Some(4));
    drop(slow);
    wait_until("the public port answers again", || async {
        http()
            .get(format!("{}/health/ready", srv.public()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn partial_headers_and_bodies_time_out() {
    let dir = TestDir::new();
    let srv = Server::start(
        &dir.data(),
        &["--http-header-timeout", "1s", "--http-body-timeout", "1s"],
    )
    .await;
    for port in [srv.public_port, srv.admin_port] {
        // Headers never finished: the connection is closed.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        read_to_close(&mut s).await;
        // An idle keep-alive connection is not held forever either.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        read_to_close(&mut s).await;
        // A body announced but never sent: 408 and closed.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let path = if port == srv.public_port {
            "/oauth2/token"
        } else {
            "/admin/oauth2/introspect"
        };
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=abc"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let out = read_to_close(&mut s).await;
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("request_timeout"), "{out}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    srv.cc_client("read", &[]).await;
    let mode = |p: std::path::PathBuf| {
        std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(dir.data()), 0o700);
    for f in [
        "portcullis.sqlite",
        "portcullis.sqlite-wal",
        "portcullis.sqlite-shm",
        "secrets.key",
    ] {
        assert_eq!(mode(dir.data().join(f)), 0o600, "{f}");
    }
}
