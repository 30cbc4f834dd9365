//! The `id_token` and `cookie` mutators through the pipeline.

use super::*;
use crate::jwks::KeySet;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PRIVATE: &str = "http://keys.local/private.json";

fn private_set(kids: &[&str]) -> KeyLookup {
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| {
            let text = match *kid {
                "rsa" => include_str!("../../../tests/fixtures/rsa.private.jwk.json"),
                "ec256" => include_str!("../../../tests/fixtures/ec256.private.jwk.json"),
                _ => include_str!("../../../tests/fixtures/ed.private.jwk.json"),
            };
            serde_json::from_str(text).unwrap()
        })
        .collect();
    let set = KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap();
    KeyLookup::Ready(Arc::new(set))
}

fn token_engine(mutators: Value) -> Engine {
    engine(
        json!([rule(
            "r",
            "http://svc.local/<.*>",
            &["GET"],
            json!([{"handler": "anonymous"}]),
            json!({"handler": "allow"}),
            mutators
        )]),
        json!({"mutators": {
            "id_token": {"enabled": true, "config": {"issuer_url": "https://portcullis.test/", "jwks_url": PRIVATE}},
            "cookie": {"enabled": true}
        }}),
    )
}

fn allow(
    engine: &Engine,
    host: &mut TestHost,
    caches: &mut Caches,
    req: Request,
) -> Vec<(String, String)> {
    let mut eval = Evaluation::new(req);
    match eval.advance(engine, host, caches) {
        Step::Allow(a) => a.set_headers,
        other => panic!("expected allow, got {other:?}"),
    }
}

fn bearer(headers: &[(String, String)]) -> String {
    let (_, v) = headers.iter().find(|(k, _)| k == "authorization").unwrap();
    v.strip_prefix("Bearer ").unwrap().to_string()
}

fn decode_part(token: &str, i: usize) -> Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn id_token_signs_the_session_with_forced_claims_and_verifies() {
    let e = token_engine(json!([{"handler": "id_token", "config": {
        "claims": r#"{"aud": ["api"], "trace": "{{ .MatchContext.Header.Get "X-Trace" }}", "iss": "forged", "sub": "forged"}"#,
        "ttl": "1m"
    }}]));
    let mut host = TestHost::new();
    host.keys.insert(PRIVATE.into(), private_set(&["ec256"]));
    let mut caches = Caches::new(10);
    // A header value that tries to close its string and add a claim stays inside it.
    let hostile = r#"x","admin":true,"y":"z"#;
    let h = allow(
        &e,
        &mut host,
        &mut caches,
        request("GET", "/a", &[("x-trace", hostile)]),
    );
    let token = bearer(&h);
    let header = decode_part(&token, 0);
    assert_eq!(header["kid"], "ec256");
    assert_eq!(header["alg"], "ES256");
    let claims = decode_part(&token, 1);
    assert_eq!(claims["sub"], "guest");
    assert_eq!(claims["iss"], "https://portcullis.test/");
    assert_eq!(claims["aud"], json!(["api"]));
    assert_eq!(claims["trace"], hostile);
    assert!(claims.get("admin").is_none());
    assert_eq!(claims["iat"], host.now);
    assert_eq!(claims["nbf"], host.now);
    assert_eq!(claims["exp"], host.now + 60);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
    let (message, sig) = token.rsplit_once('.').unwrap();
    let public = crate::testkeys::key_set();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert!(public.find("ec256").unwrap().verify_rust(
        crate::jwks::Algorithm::ES256,
        message.as_bytes(),
        &sig
    ));
}

#[test]
fn id_token_is_reused_per_session_until_near_expiry_or_key_change() {
    let e = token_engine(json!([{"handler": "id_token", "config": {
        "claims": r#"{"path": "{{ print .MatchContext.URL }}"}"#, "ttl": "100s"
    }}]));
    let mut host = TestHost::new();
    host.keys
        .insert(PRIVATE.into(), private_set(&["rsa", "ec256"]));
    let mut caches = Caches::new(10);
    let first = bearer(&allow(
        &e,
        &mut host,
        &mut caches,
        request("GET", "/a", &[]),
    ));
    assert_eq!(decode_part(&first, 0)["kid"], "rsa");
    assert_eq!(caches.stats().id_token_misses, 1);
    host.now += 89;
    assert_eq!(
        bearer(&allow(
            &e,
            &mut host,
            &mut caches,
            request("GET", "/a", &[])
        )),
        first
    );
    assert_eq!(caches.stats().id_token_hits, 1);
    // Other claims are another session's token.
    let other = bearer(&allow(
        &e,
        &mut host,
        &mut caches,
        request("GET", "/b", &[]),
    ));
    assert_ne!(other, first);
    // Within a tenth of the ttl of expiry: minted afresh.
    host.now += 1;
    let renewed = bearer(&allow(
        &e,
        &mut host,
        &mut caches,
        request("GET", "/a", &[]),
    ));
    assert_ne!(renewed, first);
    // A rotated key set re-mints at once, with the new key.
    host.keys.insert(PRIVATE.into(), private_set(&["ed"]));
    let rotated = bearer(&allow(
        &e,
        &mut host,
        &mut caches,
        request("GET", "/a", &[]),
    ));
    assert_eq!(decode_part(&rotated, 0)["kid"], "ed");
    assert_eq!(decode_part(&rotated, 0)["alg"], "EdDSA");
}

#[test]
fn id_token_never_allows_without_a_private_key() {
    let e = token_engine(json!([{"handler": "id_token"}]));
    let mut caches = Caches::new(10);
    // Still being fetched: the request waits, then fails.
    let mut host = TestHost::new();
    host.keys.insert(PRIVATE.into(), KeyLookup::Pending);
    let mut eval = Evaluation::new(request("GET", "/a", &[]));
    assert!(matches!(
        eval.advance(&e, &mut host, &mut caches),
        Step::WaitForKeys { max_wait_ms: 1000 }
    ));
    eval.keys_timed_out();
    match eval.advance(&e, &mut host, &mut caches) {
        Step::Deny(d) => assert_eq!(
            (d.response.status, d.reason),
            (500, "id_token_keys_unavailable")
        ),
        other => panic!("{other:?}"),
    }
    // A public key set: nothing to sign with.
    host.keys
        .insert(PRIVATE.into(), KeyLookup::Ready(crate::testkeys::key_set()));
    let mut eval = Evaluation::new(request("GET", "/a", &[]));
    match eval.advance(&e, &mut host, &mut caches) {
        Step::Deny(d) => {
            assert_eq!((d.response.status, d.reason), (500, "id_token_key"));
            assert!(d.message.contains("no private key"), "{}", d.message);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn id_token_keys_are_fetched_like_jwks() {
    let e = token_engine(json!([{"handler": "id_token"}]));
    assert!(e.jwks_sources().iter().any(|s| s.endpoint.url == PRIVATE));
}

#[test]
fn cookie_replaces_same_named_cookies_and_keeps_others() {
    let e = token_engine(json!([{"handler": "cookie", "config": {"cookies": {
        "user": "{{ print .Subject }}", "trace": "{{ .MatchContext.Header.Get \"X-Trace\" }}"
    }}}]));
    let mut host = TestHost::new();
    let mut caches = Caches::new(10);
    let h = allow(
        &e,
        &mut host,
        &mut caches,
        request(
            "GET",
            "/",
            &[
                ("cookie", "a=1; user=evil"),
                ("cookie", "b=2;user=evil2"),
                ("x-trace", "t; admin=1\r\n,\"q\\"),
            ],
        ),
    );
    let cookie = h
        .iter()
        .find(|(k, _)| k == "cookie")
        .map(|(_, v)| v.as_str());
    assert_eq!(cookie, Some("a=1; b=2; trace=tadmin=1q; user=guest"));
    // Without cookies in the request, only the configured ones.
    let h = allow(&e, &mut host, &mut caches, request("GET", "/", &[]));
    assert_eq!(
        h.iter()
            .find(|(k, _)| k == "cookie")
            .map(|(_, v)| v.as_str()),
        Some("trace=; user=guest")
    );
}

#[test]
fn config_errors_name_rule_and_field() {
    let compile = |mutators: Value| {
        let cfg = json!({
            "authenticators": {"noop": {"enabled": true}},
            "authorizers": {"allow": {"enabled": true}},
            "mutators": {"id_token": {"enabled": true}, "cookie": {"enabled": true}},
            "rules": [rule("r1", "http://x/<.*>", &["GET"], json!([{"handler": "noop"}]), json!({"handler": "allow"}), mutators)]
        });
        Engine::from_json(cfg.to_string().as_bytes())
            .unwrap_err()
            .to_string()
    };
    let e = compile(json!([{"handler": "id_token", "config": {"issuer_url": "https://i/"}}]));
    assert!(
        e.contains("rule \"r1\"") && e.contains("mutators[0].config.jwks_url"),
        "{e}"
    );
    let e = compile(
        json!([{"handler": "id_token", "config": {"issuer_url": "https://i/", "jwks_url": "file:///etc/jwks.json"}}]),
    );
    assert!(
        e.contains("mutators[0].config.jwks_url") && e.contains("http(s)"),
        "{e}"
    );
    let e = compile(json!([{"handler": "id_token", "config": {"jwks_url": "http://k/"}}]));
    assert!(e.contains("mutators[0].config.issuer_url"), "{e}");
    let e = compile(
        json!([{"handler": "id_token", "config": {"issuer_url": "https://i/", "jwks_url": "http://k/", "ttl": "soon"}}]),
    );
    assert!(e.contains("mutators[0].config.ttl"), "{e}");
    let e = compile(
        json!([{"handler": "id_token", "config": {"issuer_url": "https://i/", "jwks_url": "http://k/", "claims": "{{ .Nope"}}]),
    );
    assert!(e.contains("mutators[0].config.claims"), "{e}");
    let e = compile(
        json!([{"handler": "id_token", "config": {"issuer_url": "https://i/", "jwks_url": "http://k/", "cache": true}}]),
    );
    assert!(
        e.contains("mutators[0].config") && e.contains("cache"),
        "{e}"
    );
    let e = compile(json!([{"handler": "cookie", "config": {"cookies": {}}}]));
    assert!(e.contains("mutators[0].config.cookies"), "{e}");
    let e = compile(
        json!([{"handler": "noop"}, {"handler": "cookie", "config": {"cookies": {"a b": "x"}}}]),
    );
    assert!(e.contains("mutators[1].config.cookies.a b"), "{e}");
}
