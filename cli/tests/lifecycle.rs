//! Black-box lifecycle tests of the real `portcullis` binary: restart persistence (clients,
//! keys, revocations), `kill -9` during writes losing nothing acknowledged, graceful shutdown
//! finishing in-flight requests, and the command line (flags, environment, `--help`, JSON logs).
// A test crate: failing loudly (expect/panic) is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use harness::{ACCESS_TOKEN_SET, Reply, Server, TestDir, basic, http, jwt_parts, str_field};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn restart_keeps_clients_keys_tokens_and_revocations() {
    let dir = TestDir::new();
    let mut srv = Server::start(&dir.data(), &[]).await;
    let (id, secret) = srv.cc_client("read", &["https://api.example.com"]).await;
    let opaque = srv
        .create_client(json!({
            "grant_types": ["client_credentials"],
            "access_token_strategy": "opaque",
        }))
        .await;
    let (oid, osecret) = (
        str_field(&opaque, "client_id"),
        str_field(&opaque, "client_secret"),
    );
    let kept = srv.token(&id, &secret, &[("scope", "read")]).await;
    let revoked = srv.token(&id, &secret, &[]).await;
    let opaque_kept = srv.token(&oid, &osecret, &[]).await;
    let opaque_revoked = srv.token(&oid, &osecret, &[]).await;
    for (cid, csecret, t) in [(&id, &secret, &revoked), (&oid, &osecret, &opaque_revoked)] {
        let r = Reply::from(
            http()
                .post(format!("{}/oauth2/revoke", srv.public()))
                .header("authorization", basic(cid, csecret))
                .form(&[("token", t.as_str())])
                .send()
                .await
                .expect("revoke"),
        )
        .await;
        assert_eq!(r.status, 200, "revoke: {}", r.body);
    }
    let jwks_before = srv.jwks().await;
    let (h, _) = jwt_parts(&kept);

    srv.stop().await;
    srv.restart().await;

    let r = Reply::from(
        http()
            .get(format!("{}/admin/clients/{id}", srv.admin()))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(r.status, 200, "client lost on restart: {}", r.body);
    assert_eq!(r.json["audience"], json!(["https://api.example.com"]));

    // The same secret still works; the same key still signs (no new key on restart).
    let fresh = srv.token(&id, &secret, &[("scope", "read")]).await;
    let (h2, _) = srv.verify(&fresh).await;
    assert_eq!(h2["kid"], h["kid"], "signing key changed across restart");
    assert_eq!(srv.jwks().await, jwks_before, "JWKS changed across restart");
    srv.verify(&kept).await;
    assert_eq!(srv.introspect(&kept).await["active"], true);
    assert_eq!(srv.introspect(&opaque_kept).await["active"], true);
    assert_eq!(srv.introspect(&revoked).await, json!({"active": false}));
    assert_eq!(
        srv.introspect(&opaque_revoked).await,
        json!({"active": false})
    );
    srv.token_basic(&id, "wrong-secret", &[("grant_type", "client_credentials")])
        .await
        .assert_oauth_error(401, "invalid_client");
}

#[tokio::test]
async fn kill_9_during_writes_loses_nothing_acknowledged() {
    let dir = TestDir::new();
    let mut srv = Server::start(&dir.data(), &[]).await;
    let (id, secret) = srv.cc_client("read", &[]).await;
    let tokens: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..40 {
            v.push(srv.token(&id, &secret, &[]).await);
        }
        v
    };

    // Writers: client registrations on three connections, and revocations on one. Each counts
    // what was acknowledged so the kill waits for enough work, however slow the machine is.
    let stop = Arc::new(AtomicBool::new(false));
    let [registered, revoked, issued, rotated] = [(); 4].map(|()| Arc::new(AtomicUsize::new(0)));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (url, stop) = (format!("{}/admin/clients", srv.admin()), Arc::clone(&stop));
        let registered = Arc::clone(&registered);
        writers.push(tokio::spawn(async move {
            let c = http();
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = json!({
                    "client_id": format!("w{w}-{n}"),
                    "client_secret": format!("secret-{w}-{n}"),
                    "grant_types": ["client_credentials"],
                });
                match c.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 201 => {
                        acked.push(format!("w{w}-{n}"));
                        registered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!("registration answered {}", r.status()),
                    Err(_) => break, // the server died mid-request: not acknowledged
                }
            }
            acked
        }));
    }
    let revoker = {
        let (url, auth, stop) = (
            format!("{}/oauth2/revoke", srv.public()),
            basic(&id, &secret),
            Arc::clone(&stop),
        );
        let tokens = tokens.clone();
        let revoked = Arc::clone(&revoked);
        tokio::spawn(async move {
            let c = http();
            let mut acked = Vec::new();
            for t in tokens {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match c
                    .post(&url)
                    .header("authorization", &auth)
                    .form(&[("token", t.as_str())])
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        acked.push(t);
                        revoked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!("revocation answered {}", r.status()),
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        })
    };

    // Opaque tokens are stored: each one answered before the kill must survive it.
    let opaque = srv
        .create_client(json!({
            "grant_types": ["client_credentials"],
            "access_token_strategy": "opaque",
        }))
        .await;
    let mut issuers = Vec::new();
    for _ in 0..4 {
        let (url, auth, stop) = (
            srv.token_endpoint(),
            basic(
                &str_field(&opaque, "client_id"),
                &str_field(&opaque, "client_secret"),
            ),
            Arc::clone(&stop),
        );
        let issued = Arc::clone(&issued);
        issuers.push(tokio::spawn(async move {
            let c = http();
            let mut acked = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let resp = c
                    .post(&url)
                    .header("authorization", &auth)
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await;
                let Ok(resp) = resp else { break };
                assert_eq!(resp.status(), 200, "opaque token request");
                let Ok(body) = resp.json::<serde_json::Value>().await else {
                    break; // the answer was cut by the kill: not acknowledged
                };
                acked.push(str_field(&body, "access_token"));
                issued.fetch_add(1, Ordering::Relaxed);
            }
            acked
        }));
    }

    // Rotations: signing keys (named, so each can be found again) and a client's secret.
    let rotated_client = srv.cc_client("read", &[]).await;
    let rotator = {
        let (admin, stop, rotated) = (srv.admin(), Arc::clone(&stop), Arc::clone(&rotated));
        let client_id = rotated_client.0.clone();
        tokio::spawn(async move {
            let c = http();
            let (mut kids, mut secrets) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let kid = format!("rotated-{n}");
                let key = c
                    .post(format!("{admin}/admin/keys/{ACCESS_TOKEN_SET}"))
                    .json(&json!({"alg": "ES256", "use": "sig", "kid": kid}))
                    .send()
                    .await;
                match key {
                    Ok(r) if r.status() == 201 || r.status() == 200 => kids.push(kid),
                    Ok(r) => panic!("key rotation answered {}", r.status()),
                    Err(_) => break,
                }
                let secret = format!("rotated-secret-{n}-0123456789abcdef");
                let patch = c
                    .patch(format!("{admin}/admin/clients/{client_id}"))
                    .json(&json!([{"op": "replace", "path": "/client_secret", "value": secret}]))
                    .send()
                    .await;
                match patch {
                    Ok(r) if r.status() == 200 => secrets.push(secret),
                    Ok(r) => panic!("secret rotation answered {}", r.status()),
                    Err(_) => break,
                }
                rotated.fetch_add(1, Ordering::Relaxed);
            }
            (kids, secrets)
        })
    };

    // Kill once every kind of write has been acknowledged a few times (the writers keep going).
    let enough = || {
        registered.load(Ordering::Relaxed) >= 5
            && revoked.load(Ordering::Relaxed) >= 1
            && issued.load(Ordering::Relaxed) >= 1
            && rotated.load(Ordering::Relaxed) >= 1
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !enough() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes were not acknowledged within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.kill(); // SIGKILL while the writers are running
    stop.store(true, Ordering::Relaxed);
    let mut acked_clients = Vec::new();
    for w in writers {
        acked_clients.extend(w.await.expect("writer"));
    }
    let acked_revocations = revoker.await.expect("revoker");
    let mut acked_tokens = Vec::new();
    for i in issuers {
        acked_tokens.extend(i.await.expect("issuer"));
    }
    let (acked_kids, acked_secrets) = rotator.await.expect("rotator");
    assert!(!acked_kids.is_empty(), "no key rotation before the kill");
    assert!(!acked_tokens.is_empty(), "no opaque token before the kill");
    assert!(
        acked_clients.len() >= 5,
        "too few writes before the kill to mean anything: {}",
        acked_clients.len()
    );
    assert!(
        !acked_revocations.is_empty(),
        "no revocation before the kill"
    );
    eprintln!(
        "acknowledged before kill -9: {} registrations, {} revocations, {} opaque tokens, \
         {} key and {} secret rotations",
        acked_clients.len(),
        acked_revocations.len(),
        acked_tokens.len(),
        acked_kids.len(),
        acked_secrets.len()
    );

    srv.restart().await;
    let c = http();
    for cid in &acked_clients {
        let r = Reply::from(
            c.get(format!("{}/admin/clients/{cid}", srv.admin()))
                .send()
                .await
                .expect("GET"),
        )
        .await;
        assert_eq!(r.status, 200, "acknowledged client {cid} lost by kill -9");
    }
    // Spot-check that the persisted secrets work.
    let last = acked_clients.last().expect("one client");
    let (w, n) = last
        .trim_start_matches('w')
        .split_once('-')
        .expect("id shape");
    srv.token(last, &format!("secret-{w}-{n}"), &[]).await;
    for t in &acked_revocations {
        assert_eq!(
            srv.introspect(t).await,
            json!({"active": false}),
            "acknowledged revocation lost by kill -9"
        );
    }
    for t in &acked_tokens {
        assert_eq!(
            srv.introspect(t).await["active"],
            true,
            "acknowledged opaque token lost by kill -9"
        );
    }
    // Every acknowledged key is published; the newest signs (one rotation may have committed
    // after the last answer: then that one).
    let published: Vec<String> = srv.jwks().await["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| str_field(k, "kid"))
        .collect();
    for kid in &acked_kids {
        assert!(
            published.contains(kid),
            "acknowledged key {kid} lost by kill -9"
        );
    }
    let signing = str_field(&jwt_parts(&srv.token(&id, &secret, &[]).await).0, "kid");
    let last_kid = acked_kids.last().expect("one key");
    let next_kid = format!("rotated-{}", acked_kids.len() + 1);
    assert!(
        signing == *last_kid || signing == next_kid,
        "signing with {signing} after kill -9; last acknowledged rotation: {last_kid}"
    );
    // The client's secret is the last acknowledged one, or the one after if that committed.
    if let Some(last) = acked_secrets.last() {
        let n = acked_secrets.len();
        let next = format!("rotated-secret-{}-0123456789abcdef", n + 1);
        let form = [("grant_type", "client_credentials")];
        let with_last = srv.token_basic(&rotated_client.0, last, &form).await;
        let with_next = srv.token_basic(&rotated_client.0, &next, &form).await;
        assert!(
            with_last.status == 200 || with_next.status == 200,
            "acknowledged secret rotation lost by kill -9: {} / {}",
            with_last.body,
            with_next.body
        );
    }
    // Tokens never revoked are still good (same keys after the kill).
    let untouched = &tokens[tokens.len() - 1];
    if !acked_revocations.contains(untouched) {
        srv.verify(untouched).await;
    }
}

/// Sends a request's head and part of its body on a raw connection, leaving it in flight.
async fn start_request(
    port: u16,
    path: &str,
    auth: Option<&str>,
    ct: &str,
    body: &str,
) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: {ct}\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    // The server answers `100 Continue` once its handler reads the body: from then on the
    // request is in its hands (no fixed wait for it to read the head).
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut byte))
            .await
            .expect("100 Continue within 30 s")
            .expect("read 100 Continue");
        assert_eq!(n, 1, "connection closed before 100 Continue");
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    s.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .expect("write half body");
    s
}

async fn finish_request(mut s: TcpStream, body: &str) -> String {
    s.write_all(&body.as_bytes()[body.len() / 2..])
        .await
        .expect("write rest of body");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("response within 10s")
        .expect("read response");
    out
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let dir = TestDir::new();
    let mut srv = Server::start(&dir.data(), &["--shutdown-timeout", "20s"]).await;
    let (id, secret) = srv.cc_client("read", &[]).await;
    let form = "grant_type=client_credentials&scope=read";
    let register = json!({
        "client_id": "registered-during-shutdown",
        "client_secret": "a-long-enough-secret",
        "grant_types": ["client_credentials"],
    })
    .to_string();

    let token_conn = start_request(
        srv.public_port,
        "/oauth2/token",
        Some(&basic(&id, &secret)),
        "application/x-www-form-urlencoded",
        form,
    )
    .await;
    let admin_conn = start_request(
        srv.admin_port,
        "/admin/clients",
        None,
        "application/json",
        &register,
    )
    .await;
    srv.sigterm();
    // Draining has begun once the listener is gone: connections are refused from then on.
    srv.wait_for_log("shutting down", Duration::from_secs(20))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", srv.public_port))
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the public listener stayed open after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // No new work is accepted while draining.
    let late = http()
        .post(srv.token_endpoint())
        .header("authorization", basic(&id, &secret))
        .form(&[("grant_type", "client_credentials")])
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        !late.as_ref().is_ok_and(|r| r.status() == 200),
        "a new request was served after SIGTERM: {late:?}"
    );

    let token_reply = finish_request(token_conn, form).await;
    assert!(
        token_reply.starts_with("HTTP/1.1 200"),
        "in-flight token request: {token_reply}"
    );
    assert!(token_reply.contains("access_token"), "{token_reply}");
    let admin_reply = finish_request(admin_conn, &register).await;
    assert!(
        admin_reply.starts_with("HTTP/1.1 201"),
        "in-flight registration: {admin_reply}"
    );

    let status = srv.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        srv.log()
    );

    // The registration acknowledged during shutdown survived it.
    srv.restart().await;
    srv.token("registered-during-shutdown", "a-long-enough-secret", &[])
        .await;
}

#[tokio::test]
async fn settings_from_environment_variables() {
    let dir = TestDir::new();
    let srv = Server::start_with_env(
        &dir.data(),
        &[],
        &[
            ("PORTCULLIS_SIGNING_ALG", "ES256"),
            ("PORTCULLIS_ACCESS_TOKEN_TTL", "5m"),
            ("PORTCULLIS_SCOPE_STRATEGY", "exact"),
            (
                "PORTCULLIS_SECRETS_SYSTEM",
                "an-environment-provided-system-secret",
            ),
            ("PORTCULLIS_LOG_FORMAT", "json"),
            ("PORTCULLIS_LOG_LEVEL", "debug"),
        ],
    )
    .await;
    let (id, secret) = srv.cc_client("orders.*", &[]).await;
    let opaque = srv
        .create_client(json!({
            "grant_types": ["client_credentials"],
            "access_token_strategy": "opaque",
        }))
        .await;
    let (oid, osecret) = (
        str_field(&opaque, "client_id"),
        str_field(&opaque, "client_secret"),
    );
    let opaque_token = srv.token(&oid, &osecret, &[]).await;
    srv.introspect(&opaque_token).await;
    let r = srv
        .token_basic(&id, &secret, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["expires_in"], 300);
    let (h, _) = srv.verify(&str_field(&r.json, "access_token")).await;
    assert_eq!(h["alg"], "ES256");
    // Exact strategy from the environment: the wildcard is not expanded.
    srv.token_basic(
        &id,
        &secret,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "orders.read"),
        ],
    )
    .await
    .assert_oauth_error(400, "invalid_scope");

    // --log-format json: every log line is a JSON object.
    let log = srv.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log output");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line not JSON ({e}): {l}"));
        assert!(v.is_object(), "{l}");
    }
    // No secret, credential header or token shows up in logs, even at debug level.
    let log = srv.log();
    assert!(!log.contains(&secret), "client secret in the log");
    assert!(!log.contains(&osecret), "client secret in the log");
    let basic_value = basic(&id, &secret);
    assert!(
        !log.contains(basic_value.trim_start_matches("Basic ")),
        "Authorization header in the log"
    );
    assert!(!log.contains(&opaque_token), "opaque token in the log");
    assert!(
        !log.contains(&str_field(&r.json, "access_token")),
        "access token in the log"
    );
    assert!(!log.contains("an-environment-provided-system-secret"));

    // The key set is readable after a restart with the same system secret from the env.
    let r = Reply::from(
        http()
            .get(format!("{}/admin/keys/{ACCESS_TOKEN_SET}", srv.admin()))
            .send()
            .await
            .expect("keys"),
    )
    .await;
    assert_eq!(r.json["keys"][0]["alg"], "ES256", "{}", r.body);
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--help"])
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--public-addr", "PORTCULLIS_PUBLIC_ADDR"),
        ("--admin-addr", "PORTCULLIS_ADMIN_ADDR"),
        ("--issuer", "PORTCULLIS_ISSUER"),
        ("--data-dir", "PORTCULLIS_DATA_DIR"),
        ("--signing-alg", "PORTCULLIS_SIGNING_ALG"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        assert!(help.contains(env), "{env} missing from --help:\n{help}");
    }
    for default in ["127.0.0.1:4444", "127.0.0.1:4445", "ES256"] {
        assert!(
            help.contains(default),
            "default {default} not shown:\n{help}"
        );
    }
    // A bad value is refused at startup with a message naming it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--signing-alg", "HS256"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HS256"));
}

#[tokio::test]
async fn explicit_issuer_is_used_in_tokens_and_discovery() {
    let dir = TestDir::new();
    let issuer = "https://auth.example.com/tenant-a";
    let srv = Server::start(&dir.data(), &["--issuer", issuer]).await;
    let r = Reply::from(
        http()
            .get(format!("{}/.well-known/openid-configuration", srv.public()))
            .send()
            .await
            .expect("discovery"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["issuer"], issuer);
    let (id, secret) = srv.cc_client("read", &[]).await;
    let token = srv.token(&id, &secret, &[]).await;
    let (_, claims) = srv.verify(&token).await;
    assert_eq!(claims["iss"], issuer);
}

#[tokio::test]
async fn scheduled_key_rotation_keeps_old_tokens_valid() {
    let dir = TestDir::new();
    let srv = Server::start(
        &dir.data(),
        // Each scheduled key is published 1 s before it signs (pre-publication).
        &[
            "--signing-alg",
            "ES256",
            "--key-rotation",
            "2s",
            "--key-prepublish",
            "1s",
        ],
    )
    .await;
    let (id, secret) = srv.cc_client("read", &[]).await;
    let first = srv.token(&id, &secret, &[]).await;
    let (h1, _) = jwt_parts(&first);
    // Generous: a rotation is due every 3 s; a loaded CI machine may be slow to get there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let rotated = loop {
        let t = srv.token(&id, &secret, &[]).await;
        if jwt_parts(&t).0["kid"] != h1["kid"] {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled rotation within 60s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    srv.verify(&rotated).await;
    srv.verify(&first).await; // the old key stays published
    assert_eq!(srv.introspect(&first).await["active"], true);
}

/// Reads every file under `dir` (database, WAL, key files).
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secrets_and_opaque_tokens_are_not_stored_in_plaintext() {
    let dir = TestDir::new();
    let mut srv = Server::start(&dir.data(), &[]).await;
    let secret = "plaintext-canary-secret-4f9d2b";
    srv.create_client(json!({
        "client_id": "canary",
        "client_secret": secret,
        "grant_types": ["client_credentials"],
        "access_token_strategy": "opaque",
    }))
    .await;
    let token = srv.token("canary", secret, &[]).await;
    assert_eq!(srv.introspect(&token).await["active"], true);
    srv.stop().await;
    let bytes = all_bytes(&srv.data_dir);
    assert!(!bytes.is_empty(), "nothing stored in the data dir");
    assert!(contains(&bytes, "canary"), "the client id should be stored");
    assert!(
        !contains(&bytes, secret),
        "client secret stored in plaintext"
    );
    assert!(
        !contains(&bytes, &token),
        "opaque token stored in plaintext"
    );
    assert!(
        !contains(&bytes, "PRIVATE KEY"),
        "a PEM private key stored in plaintext"
    );
}

#[tokio::test]
async fn keys_are_sealed_with_the_system_secret() {
    let dir = TestDir::new();
    let secrets_file = dir.tmp.path().join("system-secret");
    std::fs::write(&secrets_file, "the-first-system-secret-of-this-test\n").expect("write");
    let file_arg = secrets_file.to_string_lossy().into_owned();
    let mut srv = Server::start(&dir.data(), &["--secrets-file", &file_arg]).await;
    let (id, secret) = srv.cc_client("read", &[]).await;
    let token = srv.token(&id, &secret, &[]).await;
    srv.stop().await;

    // Another secret cannot open the stored keys: the binary must refuse to start rather than
    // silently sign with new keys (which would invalidate every outstanding token).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "serve",
            "--public-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&srv.data_dir)
        .env(
            "PORTCULLIS_SECRETS_SYSTEM",
            "a-different-system-secret-entirely",
        )
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("started with the wrong system secret");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "wrong system secret: exit {status}");
    assert!(
        stderr.to_ascii_lowercase().contains("secret"),
        "the error should say the secret is wrong: {stderr}"
    );

    // With the right secret everything is as before.
    srv.restart().await;
    srv.verify(&token).await;
    assert_eq!(srv.introspect(&token).await["active"], true);
    srv.token(&id, &secret, &[]).await;
}
