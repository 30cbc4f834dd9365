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

/// The pipeline's test host plus a shared store, as proxy-wasm shared data is.
struct SharedHost {
    inner: TestHost,
    shared: HashMap<String, Vec<u8>>,
}

impl Host for SharedHost {
    fn now(&mut self) -> u64 {
        self.inner.now()
    }
    fn keys(&mut self, url: &str) -> KeyLookup {
        self.inner.keys(url)
    }
    fn unknown_kid(&mut self, urls: &[String]) -> bool {
        self.inner.unknown_kid(urls)
    }
    fn verify_native(
        &mut self,
        a: crate::jwks::Algorithm,
        k: &Key,
        m: &[u8],
        s: &[u8],
    ) -> Option<bool> {
        self.inner.verify_native(a, k, m, s)
    }
    fn shared_get(&mut self, name: &str) -> Option<Vec<u8>> {
        self.shared.get(name).cloned()
    }
    fn shared_set(&mut self, name: &str, value: &[u8]) {
        self.shared.insert(name.to_string(), value.to_vec());
    }
}

const TOKEN_URL: &str = "http://hydra.local:4444/oauth2/token";

fn cc_engine(config: Value) -> Engine {
    engine(
        json!([rule(
            "cc",
            "http://svc.local/<.*>",
            &["GET"],
            json!([{"handler": "oauth2_client_credentials", "config": config}, {"handler": "anonymous"}]),
            json!({"handler": "allow"}),
            json!([{"handler": "header", "config": {"headers": {"X-User": "{{ print .Subject }}"}}}])
        )]),
        json!({"authenticators": {"oauth2_client_credentials": {"enabled": true, "config": {"token_url": TOKEN_URL}}}}),
    )
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// Runs one request; `answer` is called with each callout and answers it.
fn cc_run(
    e: &Engine,
    host: &mut SharedHost,
    caches: &mut Caches,
    authorization: Option<&str>,
    answer: &mut dyn FnMut(&crate::callout::Callout) -> Option<CalloutResponse>,
) -> (u16, Option<String>) {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let mut eval = Evaluation::new(request("GET", "/x", &headers));
    loop {
        match eval.advance(e, host, caches) {
            Step::Allow(a) => {
                let user = a
                    .set_headers
                    .iter()
                    .find(|(k, _)| k == "x-user")
                    .map(|(_, v)| v.clone());
                return (200, user);
            }
            Step::Deny(d) => return (d.response.status, None),
            Step::Callout(c) => eval.callout_done(answer(&c)),
            Step::WaitForKeys { .. } => panic!("no keys involved"),
            Step::WaitForBody { .. } => panic!("no body involved"),
        }
    }
}

fn token_answer(body: &str) -> Option<CalloutResponse> {
    Some(CalloutResponse {
        status: 200,
        headers: vec![],
        body: body.as_bytes().to_vec(),
    })
}

#[test]
fn client_credentials_exchange_basic_credentials_for_the_subject() {
    let e = cc_engine(json!({"required_scope": ["read", "write"]}));
    let mut host = SharedHost {
        inner: TestHost::new(),
        shared: HashMap::new(),
    };
    let mut caches = Caches::new(10);
    let mut calls = Vec::new();
    let mut ok = |c: &crate::callout::Callout| {
        calls.push(c.clone());
        token_answer(r#"{"access_token":"at","expires_in":3600,"token_type":"bearer"}"#)
    };
    // Id and secret are URL-unescaped, then escaped again for the token endpoint.
    let (status, user) = cc_run(
        &e,
        &mut host,
        &mut caches,
        Some(&basic("my%20client", "s%3Acret")),
        &mut ok,
    );
    assert_eq!((status, user.as_deref()), (200, Some("my client")));
    let c = &calls[0];
    assert_eq!((c.method, c.endpoint.url.as_str()), ("POST", TOKEN_URL));
    assert_eq!(
        String::from_utf8_lossy(&c.body),
        "grant_type=client_credentials&scope=read+write"
    );
    let auth = c
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap();
    assert_eq!(auth.1, basic("my+client", "s%3Acret"));
    // No Basic credentials: not responsible, the next authenticator decides.
    let (status, user) = cc_run(&e, &mut host, &mut caches, None, &mut |_| panic!("no call"));
    assert_eq!((status, user.as_deref()), (200, Some("guest")));
    let (status, _) = cc_run(&e, &mut host, &mut caches, Some("Bearer x"), &mut |_| {
        panic!("no call")
    });
    assert_eq!(
        status, 401,
        "a bearer token is the anonymous authenticator's 'not mine' too"
    );
    // A bad escape is a failed authentication, not someone else's credential.
    let (status, _) = cc_run(
        &e,
        &mut host,
        &mut caches,
        Some(&basic("c", "100%")),
        &mut |_| panic!("no call"),
    );
    assert_eq!(status, 401);
}

#[test]
fn client_credentials_never_allow_on_a_broken_token_endpoint() {
    let e = cc_engine(json!({}));
    let mut host = SharedHost {
        inner: TestHost::new(),
        shared: HashMap::new(),
    };
    let mut caches = Caches::new(10);
    let cred = basic("c", "s");
    let cases: Vec<(Option<CalloutResponse>, u16)> = vec![
        (None, 503),
        (token_answer("<html>oops</html>"), 401),
        (token_answer(r#"{"access_token":""}"#), 401),
        (token_answer(r#"{"access_token":7}"#), 401),
        (
            Some(CalloutResponse {
                status: 401,
                headers: vec![],
                body: br#"{"error":"invalid_client"}"#.to_vec(),
            }),
            401,
        ),
        (
            Some(CalloutResponse {
                status: 400,
                headers: vec![],
                body: vec![],
            }),
            401,
        ),
        (
            Some(CalloutResponse {
                status: 500,
                headers: vec![],
                body: vec![],
            }),
            500,
        ),
        (
            Some(CalloutResponse {
                status: 503,
                headers: vec![],
                body: vec![],
            }),
            503,
        ),
        (
            Some(CalloutResponse {
                status: 429,
                headers: vec![],
                body: vec![],
            }),
            503,
        ),
        (
            Some(CalloutResponse {
                status: 404,
                headers: vec![],
                body: vec![],
            }),
            404,
        ),
    ];
    for (answer, want) in cases {
        let mut a = Some(answer);
        let (status, _) = cc_run(&e, &mut host, &mut caches, Some(&cred), &mut |_| {
            a.take().flatten()
        });
        assert_eq!(status, want);
    }
}

#[test]
fn client_credentials_cache_is_shared_keyed_and_bounded_by_expiry() {
    let e = cc_engine(json!({"cache": {"enabled": true, "ttl": "60s", "max_tokens": 4}}));
    let mut host = SharedHost {
        inner: TestHost::new(),
        shared: HashMap::new(),
    };
    let calls = std::cell::Cell::new(0);
    let mut ok = |_: &crate::callout::Callout| {
        calls.set(calls.get() + 1);
        token_answer(r#"{"access_token":"at","expires_in":30}"#)
    };
    let mut worker1 = Caches::new(10);
    let mut worker2 = Caches::new(10);
    let cred = basic("client", "hunter2-secret");
    assert_eq!(
        cc_run(&e, &mut host, &mut worker1, Some(&cred), &mut ok).0,
        200
    );
    // Another worker (its own caches, the same shared store) finds the exchange.
    assert_eq!(
        cc_run(&e, &mut host, &mut worker2, Some(&cred), &mut ok).0,
        200
    );
    // A wrong secret is never served from the cache.
    let wrong = basic("client", "hunter3-secret");
    let (status, _) = cc_run(&e, &mut host, &mut worker2, Some(&wrong), &mut |_| {
        Some(CalloutResponse {
            status: 401,
            headers: vec![],
            body: vec![],
        })
    });
    assert_eq!(status, 401);
    assert_eq!(calls.get(), 1);
    // The secret is stored nowhere; at most max_tokens slots plus the hash key.
    for (k, v) in &host.shared {
        assert!(k.starts_with("portcullis.client_credentials."), "{k}");
        assert!(!k.contains("hunter2") && !v.windows(7).any(|w| w == b"hunter2"));
    }
    assert!(host.shared.len() <= 5);
    // expires_in (30s) bounds the ttl (60s).
    host.inner.now += 30;
    assert_eq!(
        cc_run(&e, &mut host, &mut worker1, Some(&cred), &mut ok).0,
        200
    );
    assert_eq!(calls.get(), 2);
}

/// One mutate stage serves both kinds of pause: the hydrator's callout, then the id_token's
/// wait for its keys, in the same rule; each resumes at its own mutator, and the id_token signs
/// what the hydrator added.
#[test]
fn hydrator_then_id_token_resume_in_one_mutate_stage() {
    let e = engine(
        json!([rule(
            "r",
            "http://svc.local/<.*>",
            &["GET"],
            json!([{"handler": "anonymous"}]),
            json!({"handler": "allow"}),
            json!([
                {"handler": "header", "config": {"headers": {"X-Before": "b"}}},
                {"handler": "hydrator"},
                {"handler": "id_token", "config": {"claims": r#"{"tenant": "{{ print .Extra.tenant }}"}"#}},
                {"handler": "header", "config": {"headers": {"X-Tenant": "{{ print .Extra.tenant }}"}}}
            ])
        )]),
        json!({"mutators": {
            "id_token": {"enabled": true, "config": {"issuer_url": "https://portcullis.test/", "jwks_url": PRIVATE}},
            "hydrator": {"enabled": true, "config": {"api": {"url": "http://api.local/hydrate"}}}
        }}),
    );
    let mut host = TestHost::new();
    host.keys.insert(PRIVATE.into(), KeyLookup::Pending);
    let mut caches = Caches::new(10);
    let mut eval = Evaluation::new(request("GET", "/a", &[]));
    let call = match eval.advance(&e, &mut host, &mut caches) {
        Step::Callout(c) => c,
        other => panic!("expected the hydrator's call, got {other:?}"),
    };
    let mut session: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(session["header"]["X-Before"], json!(["b"]), "{session}");
    session["extra"] = json!({"tenant": "t1"});
    eval.callout_done(Some(CalloutResponse {
        status: 200,
        headers: vec![],
        body: session.to_string().into_bytes(),
    }));
    assert!(matches!(
        eval.advance(&e, &mut host, &mut caches),
        Step::WaitForKeys { max_wait_ms: 1000 }
    ));
    host.keys.insert(PRIVATE.into(), private_set(&["ec256"]));
    let headers = match eval.advance(&e, &mut host, &mut caches) {
        Step::Allow(a) => a.set_headers,
        other => panic!("expected allow, got {other:?}"),
    };
    assert!(
        headers.contains(&("x-tenant".into(), "t1".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("x-before".into(), "b".into())),
        "{headers:?}"
    );
    let claims = decode_part(&bearer(&headers), 1);
    assert_eq!(
        (claims["tenant"].as_str(), claims["sub"].as_str()),
        (Some("t1"), Some("guest"))
    );

    // The hydrator API down: 500, and the id_token never runs.
    let mut eval = Evaluation::new(request("GET", "/a", &[]));
    assert!(matches!(
        eval.advance(&e, &mut host, &mut caches),
        Step::Callout(_)
    ));
    eval.callout_done(None);
    match eval.advance(&e, &mut host, &mut caches) {
        Step::Deny(d) => assert_eq!((d.response.status, d.reason), (500, "hydrator_unreachable")),
        other => panic!("{other:?}"),
    }
}
