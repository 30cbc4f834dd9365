//! Proves the harness without the Portcullis filter: a real Envoy forwards to the echo
//! upstream, the noop wasm filter's header reaches it, an ECDS reload changes that header in a
//! running Envoy, and the mock auth server answers and records what tests will rely on.

// Integration tests: helpers outside #[test] fns may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use portcullis_e2e::envoy::ConfigUpdate;
use portcullis_e2e::{AuthServer, Echo, Envoy, Upstream, client, keys, paths};
use serde_json::json;

fn get_echo(envoy: &Envoy, path: &str) -> Echo {
    let response = client()
        .get(envoy.url(path))
        .header("authorization", "Bearer abc")
        .header("x-test", "42")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "{}", envoy.log_tail(20));
    response.json().unwrap()
}

#[test]
fn envoy_without_filter_forwards_to_the_echo_upstream() {
    let upstream = Upstream::start();
    let auth = AuthServer::start();
    let envoy = Envoy::builder(upstream.port())
        .cluster("auth", auth.port())
        .start();
    let clusters = envoy.admin_get("/clusters");
    assert!(
        clusters.contains(&format!("auth::127.0.0.1:{}", auth.port())),
        "{clusters}"
    );
    let echo = get_echo(&envoy, "/some/path?q=1");
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.path, "/some/path?q=1");
    assert_eq!(echo.header("x-test"), Some("42"));
    assert_eq!(echo.header("authorization"), Some("Bearer abc"));
    assert_eq!(echo.header("x-noop"), None);

    let posted: Echo = client()
        .post(envoy.url("/p"))
        .body("hello")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        (posted.method.as_str(), posted.body.as_str()),
        ("POST", "hello")
    );
    assert!(envoy.stat("http.ingress.downstream_rq_completed").unwrap() >= 2);
}

#[test]
fn noop_wasm_sets_its_header_and_ecds_reload_changes_it() {
    let upstream = Upstream::start();
    let envoy = Envoy::builder(upstream.port())
        .wasm(paths::noop_wasm(), "first")
        .start();
    assert_eq!(get_echo(&envoy, "/").header("x-noop"), Some("first"));

    assert_eq!(envoy.set_filter_config("second"), ConfigUpdate::Applied);
    // Workers pick the new filter config up right after the main thread applied it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = get_echo(&envoy, "/").header("x-noop").map(str::to_owned);
        if value.as_deref() == Some("second") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "x-noop still {value:?} after reload\n{}",
            envoy.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A resource Envoy cannot load is rejected and the running config stays.
    let bad = envoy.dir().join("missing.wasm");
    assert_eq!(envoy.set_filter(&bad, "third"), ConfigUpdate::Rejected);
    assert_eq!(get_echo(&envoy, "/").header("x-noop"), Some("second"));
}

#[test]
fn native_jwt_authn_variant_verifies_minted_tokens() {
    let upstream = Upstream::start();
    let jwks = keys::keys().jwks().to_string();
    let envoy = Envoy::builder(upstream.port())
        .jwt_authn(json!({
            "providers": {"test": {
                "issuer": keys::ISSUER,
                "audiences": [keys::AUDIENCE],
                "local_jwks": {"inline_string": jwks},
                "forward": true,
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "test"}}],
        }))
        .start();
    for alg in [
        jsonwebtoken::Algorithm::RS256,
        jsonwebtoken::Algorithm::ES256,
        jsonwebtoken::Algorithm::EdDSA,
    ] {
        let token = keys::mint_default(alg, &keys::claims("alice", &["read"]));
        let ok = client()
            .get(envoy.url("/"))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(ok.status(), 200, "{alg:?}");
        let bad = client()
            .get(envoy.url("/"))
            .bearer_auth(keys::tampered_signature(&token))
            .send()
            .unwrap();
        assert_eq!(bad.status(), 401, "{alg:?} tampered");
    }
    let none = client()
        .get(envoy.url("/"))
        .bearer_auth(keys::alg_none(&keys::claims("m", &[])))
        .send()
        .unwrap();
    assert_eq!(none.status(), 401);
    let hs = client()
        .get(envoy.url("/"))
        .bearer_auth(keys::hs256_with_public_key(&keys::claims("m", &[])))
        .send();
    assert_eq!(hs.unwrap().status(), 401);
}

#[test]
fn auth_server_serves_jwks_introspection_and_authz_and_records_requests() {
    let auth = AuthServer::start();
    let c = client();
    auth.set_jwks(keys::keys().jwks());
    let jwks: serde_json::Value = c.get(auth.url("/jwks")).send().unwrap().json().unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 4);
    auth.fail_jwks(500);
    assert_eq!(c.get(auth.url("/jwks")).send().unwrap().status(), 500);
    assert_eq!(auth.hits("/jwks"), 2);

    auth.set_introspection("tok-1", json!({"active": true, "sub": "svc"}));
    let answer: serde_json::Value = c
        .post(auth.url("/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=tok-1&scope=a+b")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["sub"], "svc");
    let unknown: serde_json::Value = c
        .post(auth.url("/introspect"))
        .body("token=other")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(unknown["active"], false);
    assert_eq!(auth.requests("/introspect")[0].form()["scope"], "a b");

    auth.set_authz(|r| {
        if r.json()["subject"] == "alice" {
            200
        } else {
            403
        }
    });
    assert_eq!(
        c.post(auth.url("/authz"))
            .body(r#"{"subject":"alice"}"#)
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.post(auth.url("/authz"))
            .body(r#"{"subject":"bob"}"#)
            .send()
            .unwrap()
            .status(),
        403
    );

    auth.down();
    assert!(
        c.get(auth.url("/jwks")).send().is_err(),
        "server should refuse connections"
    );
    auth.up();
    auth.set_jwks(json!({"keys": []}));
    assert_eq!(c.get(auth.url("/jwks")).send().unwrap().status(), 200);
}

#[test]
fn filter_that_cannot_load_fails_closed_until_a_good_config_arrives() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a wasm module").unwrap();
    let envoy = Envoy::builder(upstream.port()).wasm(&garbage, "x").start();
    let denied = client().get(envoy.url("/")).send().unwrap();
    assert_eq!(
        denied.status(),
        500,
        "no filter config must never mean allow"
    );

    assert_eq!(
        envoy.set_filter(&paths::noop_wasm(), "late"),
        ConfigUpdate::Applied
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while client().get(envoy.url("/")).send().unwrap().status() != 200 {
        assert!(
            Instant::now() < deadline,
            "good config not applied\n{}",
            envoy.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get_echo(&envoy, "/").header("x-noop"), Some("late"));
}
