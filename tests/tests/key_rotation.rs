//! A scheduled signing-key rotation while someone floods the filter with tokens naming invented
//! kids (each one asks for a JWKS re-fetch, which the filter allows once per 5 s): the control
//! plane publishes the next key before signing with it (`--key-prepublish`), so the first token
//! the new key signs is accepted on its first try, not refused until the flood leaves the filter
//! a re-fetch (the soak measured up to 5 s of refusals before).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use portcullis_e2e::control_plane::ControlPlane;
use portcullis_e2e::{Envoy, Upstream, keys};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const AUDIENCE: &str = "https://rotation.api";

fn filter_config(cp: &ControlPlane) -> Value {
    let public = format!("http://127.0.0.1:{}", cp.public_port);
    json!({
        "authenticators": {"jwt": {"enabled": true, "config": {
            "jwks_urls": [format!("{public}/.well-known/jwks.json")],
            "scope_strategy": "exact"
        }}},
        "authorizers": {"allow": {"enabled": true}},
        "mutators": {"noop": {"enabled": true}},
        "errors": {"fallback": ["json"], "handlers": {"json": {"enabled": true}}},
        "clusters": {public: "cp_public"},
        "rules": [{
            "id": "jwt",
            "match": {"url": "http://<[^/]+>/jwt/<.*>", "methods": ["GET"]},
            // A long TTL: only the unknown-kid re-fetches (the flood's) bring new keys.
            "authenticators": [{"handler": "jwt", "config": {
                "target_audience": [AUDIENCE],
                "jwks_ttl": "1h"
            }}],
            "authorizer": {"handler": "allow"},
            "mutators": [{"handler": "noop"}]
        }]
    })
}

fn send(envoy_url: &str, token: &str) -> u16 {
    portcullis_e2e::client()
        .get(format!("{envoy_url}/jwt/x"))
        .bearer_auth(token)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn kid(token: &str) -> String {
    let header = token.split('.').next().expect("header");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("header JSON");
    header["kid"].as_str().expect("kid").to_owned()
}

fn published_kids(cp: &ControlPlane) -> Vec<String> {
    let jwks: Value = portcullis_e2e::client()
        .get(cp.public_url("/.well-known/jwks.json"))
        .send()
        .expect("JWKS")
        .json()
        .expect("JWKS JSON");
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

#[test]
fn a_rotated_key_is_accepted_on_its_first_token_during_a_kid_flood() {
    // Rotations 10 s after the newest key, each published 10 s before it signs.
    let cp = ControlPlane::start(&["--key-rotation", "10s", "--key-prepublish", "10s"]);
    let upstream = Upstream::start();
    let envoy = Envoy::builder(upstream.port())
        .cluster("cp_public", cp.public_port)
        .portcullis(&filter_config(&cp))
        .start();
    let envoy_url = envoy.url("");
    let created: Value = portcullis_e2e::client()
        .post(cp.admin_url("/admin/clients"))
        .json(&json!({"grant_types": ["client_credentials"], "audience": [AUDIENCE]}))
        .send()
        .expect("register")
        .json()
        .expect("client JSON");
    let (id, secret) = (
        created["client_id"].as_str().expect("id").to_owned(),
        created["client_secret"]
            .as_str()
            .expect("secret")
            .to_owned(),
    );
    let token = || {
        portcullis_e2e::client()
            .post(cp.public_url("/oauth2/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials"), ("audience", AUDIENCE)])
            .send()
            .expect("token")
            .json::<Value>()
            .expect("token JSON")["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    };
    assert_eq!(send(&envoy_url, &token()), 200, "before the rotation");

    // The flood: every request names a kid nobody published; every one must be refused.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood = {
        let (stop, sent, wrong, url) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&wrong),
            envoy_url.clone(),
        );
        // One invented kid, minted once (RSA signing is slow in a debug build): the filter
        // keeps no memory of unknown kids, so every request asks for a re-fetch again.
        let mut claims = keys::claims("intruder", &[]);
        claims["aud"] = json!([AUDIENCE]);
        let forged = keys::mint(Algorithm::RS256, "a-kid-nobody-published", &claims);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if send(&url, &forged) != 401 {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The key to watch is the first one published after the flood began (one published
    // earlier may have reached the filter with its first fetch, which proves nothing). The
    // scheduled rotation publishes it; tokens keep older kids until it signs.
    let flood_started = Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < flood_started && !flood.is_finished(),
            "the flood sent nothing within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before_flood = published_kids(&cp);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut watched: Option<(String, u64)> = None;
    let fresh = loop {
        assert!(
            Instant::now() < deadline,
            "no token signed by a key published during the flood within 120 s; log:\n{}",
            cp.log()
        );
        if watched.is_none() {
            watched = published_kids(&cp)
                .into_iter()
                .find(|k| !before_flood.contains(k))
                .map(|k| (k, sent.load(Ordering::Relaxed)));
        }
        if let Some((k, _)) = &watched {
            let t = token();
            if kid(&t) == *k {
                break t;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = send(&envoy_url, &fresh);
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood");

    let (_, flood_before) = watched.expect("watched key");
    let flood_total = sent.load(Ordering::Relaxed);
    eprintln!(
        "kid flood: {flood_total} requests ({flood_before} before the new key was published)"
    );
    assert!(
        flood_total >= flood_before + 20,
        "too little flood while the key was pre-published: {flood_total} requests, \
         {flood_before} before"
    );
    assert_eq!(
        status,
        200,
        "the new key's first token was refused; envoy log:\n{}",
        envoy.log_tail(40)
    );
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "an invented kid was not refused"
    );
}
