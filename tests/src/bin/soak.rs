//! `make soak`: mixed traffic through Envoy with the filter against the real control plane for
//! `SOAK_MINUTES` (default 10), with a signing-key rotation, a rule edit and a client secret
//! rotation in the middle. Every response is checked against the status it must have; Envoy's
//! and the control plane's resident memory is sampled every 10 s. Exits non-zero on any wrong
//! decision, or when memory grew by 5 % or more after the warm-up (the first fifth of the run,
//! at least 30 s) and the rule edit's one-time step.
//!
//! The rotation is the control plane's own (`--key-rotation`, a quarter of the run), which
//! publishes the next key `--key-prepublish` before signing with it: the first token the new key
//! signs must be allowed on its first try although the soak's unknown-kid traffic uses up the
//! filter's re-fetch allowance (one per 5 s). A refusal is a wrong decision; how long the new
//! key waited for its first allow is reported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jsonwebtoken::Algorithm;
use portcullis_e2e::control_plane::ControlPlane;
use portcullis_e2e::process::rss_bytes;
use portcullis_e2e::{ConfigUpdate, Envoy, Upstream, keys};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const WORKERS: usize = 4;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const AUDIENCE: &str = "https://soak.api";

/// A kind of request and the status it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Valid,
    ValidBeforeRotations,
    Expired,
    WrongAudience,
    UnknownKid,
    Introspected,
    IntrospectedUnknown,
    NoToken,
    EditedRule,
}

const KINDS: [Kind; 9] = [
    Kind::Valid,
    Kind::ValidBeforeRotations,
    Kind::Expired,
    Kind::WrongAudience,
    Kind::UnknownKid,
    Kind::Introspected,
    Kind::IntrospectedUnknown,
    Kind::NoToken,
    Kind::EditedRule,
];

/// The credentials workers send; replaced by the events.
struct Tokens {
    valid: String,
    before_rotations: String,
    expired: String,
    wrong_audience: String,
    unknown_kid: String,
    opaque: String,
    /// Whether the edited rule is in force (observed), so `/edited` must answer 200, not 404.
    edited: bool,
    /// The edit is being applied: either answer is right until it is observed.
    editing: bool,
}

#[derive(Default)]
struct Tally {
    sent: BTreeMap<String, u64>,
    wrong: Vec<String>,
}

fn minutes() -> f64 {
    std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .filter(|m: &f64| *m > 0.0)
        .unwrap_or(10.0)
}

fn admin_json(cp: &ControlPlane, method: reqwest::Method, path: &str, body: Value) -> Value {
    let r = portcullis_e2e::client()
        .request(method, cp.admin_url(path))
        .json(&body)
        .send()
        .unwrap();
    let status = r.status();
    let text = r.text().unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn client(cp: &ControlPlane, extra: Value) -> (String, String) {
    let mut body = json!({"grant_types": ["client_credentials"], "scope": "read"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let c = admin_json(cp, reqwest::Method::POST, "/admin/clients", body);
    (
        c["client_id"].as_str().unwrap().to_owned(),
        c["client_secret"].as_str().unwrap().to_owned(),
    )
}

fn token(cp: &ControlPlane, (id, secret): &(String, String), audience: Option<&str>) -> String {
    let mut form = vec![("grant_type", "client_credentials"), ("scope", "read")];
    if let Some(a) = audience {
        form.push(("audience", a));
    }
    let r = portcullis_e2e::client()
        .post(cp.public_url("/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&form)
        .send()
        .unwrap();
    let status = r.status();
    let body: Value = r.json().unwrap_or_default();
    assert_eq!(status, 200, "token for {id}: {body}");
    body["access_token"].as_str().unwrap().to_owned()
}

fn filter_config(cp: &ControlPlane, edited: bool) -> Value {
    let public = format!("http://127.0.0.1:{}", cp.public_port);
    let admin = format!("http://127.0.0.1:{}", cp.admin_port);
    let rule = |id: &str, url: &str, authn: Value| {
        json!({
            "id": id,
            "match": {"url": url, "methods": ["GET"]},
            "authenticators": [authn],
            "authorizer": {"handler": "allow"},
            "mutators": [{"handler": "header", "config": {"headers": {"X-User": "{{ print .Subject }}"}}}]
        })
    };
    let mut rules = vec![
        rule(
            "jwt",
            "http://<[^/]+>/jwt/<.*>",
            json!({"handler": "jwt", "config": {
                "target_audience": [AUDIENCE],
                "jwks_ttl": "5s",
                "allowed_algorithms": ["RS256", "ES256", "EdDSA"]
            }}),
        ),
        rule(
            "introspected",
            "http://<[^/]+>/introspected/<.*>",
            json!({"handler": "oauth2_introspection"}),
        ),
    ];
    if edited {
        rules.push(rule(
            "edited",
            "http://<[^/]+>/edited/<.*>",
            json!({"handler": "anonymous"}),
        ));
    }
    json!({
        "authenticators": {
            "anonymous": {"enabled": true},
            "jwt": {"enabled": true, "config": {
                "jwks_urls": [format!("{public}/.well-known/jwks.json")],
                "scope_strategy": "exact"
            }},
            "oauth2_introspection": {"enabled": true, "config": {
                "introspection_url": format!("{admin}/admin/oauth2/introspect")
            }}
        },
        "authorizers": {"allow": {"enabled": true}},
        "mutators": {"header": {"enabled": true}},
        "errors": {"fallback": ["json"], "handlers": {"json": {"enabled": true}}},
        "clusters": {public: "cp_public", admin: "cp_admin"},
        "rules": rules
    })
}

/// What a request of `kind` is sent as, and the statuses it may get.
fn request(kind: Kind, t: &Tokens) -> (&'static str, Option<String>, &'static [u16]) {
    let bearer = |s: &str| Some(s.to_owned());
    match kind {
        Kind::Valid => ("/jwt/a", bearer(&t.valid), &[200]),
        Kind::ValidBeforeRotations => ("/jwt/b", bearer(&t.before_rotations), &[200]),
        Kind::Expired => ("/jwt/c", bearer(&t.expired), &[401]),
        Kind::WrongAudience => ("/jwt/d", bearer(&t.wrong_audience), &[401]),
        Kind::UnknownKid => ("/jwt/e", bearer(&t.unknown_kid), &[401]),
        Kind::Introspected => ("/introspected/a", bearer(&t.opaque), &[200]),
        Kind::IntrospectedUnknown => ("/introspected/b", bearer("not-a-token-we-issued"), &[401]),
        Kind::NoToken => ("/jwt/f", None, &[401]),
        Kind::EditedRule if t.edited => ("/edited/a", None, &[200]),
        Kind::EditedRule if t.editing => ("/edited/a", None, &[404, 200]),
        Kind::EditedRule => ("/edited/a", None, &[404]),
    }
}

/// The `kid` in a compact JWS's header.
fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap_or_default().to_owned()
}

fn send(envoy_url: &str, path: &str, bearer: Option<&str>) -> u16 {
    let mut r = portcullis_e2e::client().get(format!("{envoy_url}{path}"));
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    r.send().map(|r| r.status().as_u16()).unwrap_or(0)
}

fn main() {
    let total = Duration::from_secs_f64(minutes() * 60.0);
    let warmup = (total / 5).max(Duration::from_secs(30));
    println!(
        "soak: {:.1} min, warm-up {} s, {WORKERS} workers",
        minutes(),
        warmup.as_secs()
    );

    // Rotation first due at a quarter of the run; the next one comes after the run.
    let rotation = format!("{}s", (total / 4).as_secs().max(1));
    let cp = ControlPlane::start(&["--key-rotation", &rotation, "--key-prepublish", "20s"]);
    let upstream = Upstream::start();
    let envoy = Envoy::builder(upstream.port())
        .cluster("cp_public", cp.public_port)
        .cluster("cp_admin", cp.admin_port)
        .portcullis(&filter_config(&cp, false))
        .start();
    let envoy_url = envoy.url("");

    let main_client = client(&cp, json!({"audience": [AUDIENCE]}));
    let other_client = client(&cp, json!({"audience": ["https://other.api"]}));
    let short_client = client(
        &cp,
        json!({"audience": [AUDIENCE], "client_credentials_grant_access_token_lifespan": "2s"}),
    );
    let opaque_client = client(&cp, json!({"access_token_strategy": "opaque"}));
    let expired = token(&cp, &short_client, Some(AUDIENCE));
    let valid = token(&cp, &main_client, Some(AUDIENCE));
    let mut unknown = keys::claims("intruder", &["read"]);
    unknown["aud"] = json!([AUDIENCE]);
    let tokens = Arc::new(RwLock::new(Tokens {
        before_rotations: valid.clone(),
        valid,
        expired: expired.clone(),
        wrong_audience: token(&cp, &other_client, Some("https://other.api")),
        unknown_kid: keys::mint(Algorithm::RS256, "a-kid-nobody-published", &unknown),
        opaque: token(&cp, &opaque_client, None),
        edited: false,
        editing: false,
    }));
    // The expired token must be past its `exp` before traffic starts (a condition, not a sleep).
    let exp = {
        let payload = expired.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        claims["exp"].as_i64().unwrap()
    };
    while keys::now() <= exp {
        std::thread::sleep(Duration::from_millis(100));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (stop, tally, tokens, url) = (
            Arc::clone(&stop),
            Arc::clone(&tally),
            Arc::clone(&tokens),
            envoy_url.clone(),
        );
        workers.push(std::thread::spawn(move || {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let kind = KINDS[i % KINDS.len()];
                i += 1;
                let (path, bearer, want, edits) = {
                    let t = tokens.read().unwrap();
                    let (path, bearer, want) = request(kind, &t);
                    (path, bearer, want, (t.editing, t.edited))
                };
                let got = send(&url, path, bearer.as_deref());
                // The edit began while this request was in flight: either answer is right.
                let raced = {
                    let t = tokens.read().unwrap();
                    (t.editing, t.edited) != edits
                };
                let want: &[u16] = if raced && kind == Kind::EditedRule {
                    &[404, 200]
                } else {
                    want
                };
                let mut tally = tally.lock().unwrap();
                *tally.sent.entry(format!("{kind:?}")).or_default() += 1;
                if !want.contains(&got) {
                    tally
                        .wrong
                        .push(format!("{kind:?} {path}: got {got}, want {want:?}"));
                }
            }
        }));
    }

    let start = Instant::now();
    let mut samples: Vec<(u64, u64, u64)> = Vec::new();
    let mut next_sample = start;
    let mut events = vec![
        (total / 4, "signing key rotation"),
        (total / 2, "rule edit"),
        (total * 3 / 4, "client secret rotation"),
    ];
    events.reverse();
    let mut secret = main_client.1.clone();
    let mut rule_edit_at: Option<u64> = None;
    while start.elapsed() < total {
        if Instant::now() >= next_sample {
            let s = (
                start.elapsed().as_secs(),
                envoy.rss_bytes().unwrap_or(0),
                rss_bytes(cp.pid()).unwrap_or(0),
            );
            println!(
                "soak: t={:>4}s  envoy rss {:>6.1} MiB  control plane rss {:>6.1} MiB  wrong so far {}",
                s.0,
                s.1 as f64 / 1048576.0,
                s.2 as f64 / 1048576.0,
                tally.lock().unwrap().wrong.len()
            );
            samples.push(s);
            next_sample += SAMPLE_EVERY;
        }
        if let Some(&(at, what)) = events.last()
            && start.elapsed() >= at
        {
            events.pop();
            println!("soak: t={:>4}s  {what}", start.elapsed().as_secs());
            match what {
                "signing key rotation" => {
                    // The control plane rotates by itself: new tokens carry the new kid once it
                    // signs (pre-published before); the old ones keep verifying. The first
                    // token of the new key must be allowed at once.
                    let old_kid = kid(&tokens.read().unwrap().valid);
                    let since = Instant::now();
                    let fresh = loop {
                        let t = token(
                            &cp,
                            &(main_client.0.clone(), secret.clone()),
                            Some(AUDIENCE),
                        );
                        if kid(&t) != old_kid {
                            break t;
                        }
                        assert!(
                            since.elapsed() < Duration::from_secs(180),
                            "no scheduled rotation within 3 min"
                        );
                        std::thread::sleep(Duration::from_millis(50));
                    };
                    let signed_at = Instant::now();
                    let mut refused = 0u64;
                    while send(&envoy_url, "/jwt/rotated", Some(&fresh)) != 200 {
                        refused += 1;
                        assert!(
                            signed_at.elapsed() < Duration::from_secs(60),
                            "the rotated key was never picked up"
                        );
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if refused > 0 {
                        tally.lock().unwrap().wrong.push(format!(
                            "the new key's first token was refused {refused} times"
                        ));
                    }
                    println!(
                        "soak: t={:>4}s  the new key signs (waited {:.1} s for it); its first token verified after {:.1} s ({refused} refusals before)",
                        start.elapsed().as_secs(),
                        signed_at.duration_since(since).as_secs_f64(),
                        signed_at.elapsed().as_secs_f64()
                    );
                    tokens.write().unwrap().valid = fresh;
                }
                "rule edit" => {
                    rule_edit_at = Some(start.elapsed().as_secs());
                    tokens.write().unwrap().editing = true;
                    assert_eq!(
                        envoy.set_filter_json(&filter_config(&cp, true)),
                        ConfigUpdate::Applied
                    );
                    // Workers switch over right after the update: expect 200 once one is seen.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while send(&envoy_url, "/edited/a", None) != 200 {
                        assert!(Instant::now() < deadline, "the rule edit never took effect");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    tokens.write().unwrap().edited = true;
                }
                _ => {
                    let old = secret.clone();
                    secret = "a-rotated-client-secret-for-the-soak".to_owned();
                    admin_json(
                        &cp,
                        reqwest::Method::PATCH,
                        &format!("/admin/clients/{}", main_client.0),
                        json!([{"op": "replace", "path": "/client_secret", "value": secret}]),
                    );
                    let r = portcullis_e2e::client()
                        .post(cp.public_url("/oauth2/token"))
                        .basic_auth(&main_client.0, Some(&old))
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .unwrap();
                    if r.status() != 401 {
                        tally
                            .lock()
                            .unwrap()
                            .wrong
                            .push(format!("the old secret still got {}", r.status()));
                    }
                    let fresh = token(
                        &cp,
                        &(main_client.0.clone(), secret.clone()),
                        Some(AUDIENCE),
                    );
                    tokens.write().unwrap().valid = fresh;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    let tally = tally.lock().unwrap();
    let sent: u64 = tally.sent.values().sum();
    println!(
        "soak: {sent} requests in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    for (kind, n) in &tally.sent {
        println!("soak:   {kind:<22} {n}");
    }
    println!("soak: wrong decisions: {}", tally.wrong.len());
    for w in tally.wrong.iter().take(20) {
        println!("soak:   {w}");
    }
    // The rule edit installs a second filter configuration in every worker: a one-time step in
    // Envoy's memory. Growth is judged after the warm-up and after that step has settled (the
    // first sample at least 10 s after the edit).
    let steady_from = warmup.as_secs().max(rule_edit_at.map_or(0, |t| t + 10));
    let after: Vec<_> = samples.iter().filter(|s| s.0 >= steady_from).collect();
    if let (Some(before), Some(first)) = (
        samples
            .iter()
            .rev()
            .find(|s| rule_edit_at.is_some_and(|t| s.0 <= t)),
        after.first(),
    ) {
        println!(
            "soak: the rule edit's step: envoy rss {:.1} -> {:.1} MiB",
            before.1 as f64 / 1048576.0,
            first.1 as f64 / 1048576.0
        );
    }
    let mut failed = !tally.wrong.is_empty() || !events.is_empty();
    if let (Some(first), true) = (after.first(), after.len() >= 3) {
        let last: Vec<_> = after.iter().rev().take(3).collect();
        for (name, pick) in [("envoy", 1usize), ("control plane", 2)] {
            let base = if pick == 1 { first.1 } else { first.2 } as f64;
            let end = last
                .iter()
                .map(|s| if pick == 1 { s.1 } else { s.2 })
                .max()
                .unwrap_or(0) as f64;
            let growth = (end / base.max(1.0) - 1.0) * 100.0;
            println!(
                "soak: {name} rss from t={steady_from}s {:.1} MiB -> {:.1} MiB ({growth:+.1} %)",
                base / 1048576.0,
                end / 1048576.0
            );
            failed |= growth >= 5.0;
        }
    } else {
        println!("soak: too few samples after the warm-up to judge memory growth (run longer)");
        failed = true;
    }
    if failed {
        println!("soak: FAILED");
        std::process::exit(1);
    }
    println!("soak: ok");
}
