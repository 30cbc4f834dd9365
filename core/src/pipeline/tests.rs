use super::*;
use crate::host::KeyLookup;
use crate::jwks::Key;
use serde_json::{Value, json};
use std::collections::HashMap;

struct TestHost {
    now: u64,
    /// When set, `time_bounds` answers `(earliest, latest)` instead of the exact `now`, the
    /// way a host with a coarse clock does.
    bounds: Option<(u64, u64)>,
    clock_reads: usize,
    keys: HashMap<String, KeyLookup>,
    unknown_kid_calls: usize,
}

impl TestHost {
    fn new() -> Self {
        Self {
            now: 1_700_000_000,
            bounds: None,
            clock_reads: 0,
            keys: HashMap::new(),
            unknown_kid_calls: 0,
        }
    }
}

impl Host for TestHost {
    fn now(&mut self) -> u64 {
        self.clock_reads += 1;
        self.now
    }
    fn time_bounds(&mut self) -> crate::host::TimeBounds {
        match self.bounds {
            Some((earliest, latest)) => crate::host::TimeBounds { earliest, latest },
            None => crate::host::TimeBounds::exactly(self.now()),
        }
    }
    fn keys(&mut self, jwks_url: &str) -> KeyLookup {
        self.keys
            .get(jwks_url)
            .cloned()
            .unwrap_or(KeyLookup::Unavailable)
    }
    fn unknown_kid(&mut self, _jwks_urls: &[String]) -> bool {
        self.unknown_kid_calls += 1;
        false
    }
    fn verify_native(
        &mut self,
        _alg: crate::jwks::Algorithm,
        _key: &Key,
        _m: &[u8],
        _s: &[u8],
    ) -> Option<bool> {
        None
    }
}

const JWKS: &str = "http://auth.local:4444/.well-known/jwks.json";

fn engine(rules: Value, extra: Value) -> Engine {
    let mut cfg = json!({
        "authenticators": {
            "noop": {"enabled": true},
            "anonymous": {"enabled": true, "config": {"subject": "guest"}},
            "unauthorized": {"enabled": true},
            "jwt": {"enabled": true, "config": {"jwks_urls": [JWKS]}},
            "oauth2_introspection": {"enabled": true, "config": {
                "introspection_url": "http://auth.local:4445/admin/oauth2/introspect",
                "scope_strategy": "exact"
            }}
        },
        "authorizers": {"allow": {"enabled": true}, "deny": {"enabled": true},
                        "remote_json": {"enabled": true, "config": {"remote": "http://authz.local/check", "payload": "{}"}}},
        "mutators": {"noop": {"enabled": true}, "header": {"enabled": true}},
        "errors": {"fallback": ["json"], "handlers": {"json": {"enabled": true}}},
        "clusters": {"http://auth.local:4445": "auth_admin"},
        "rules": rules
    });
    crate::config::merge_json(&mut cfg, &extra);
    match Engine::from_json(cfg.to_string().as_bytes()) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

fn rule(
    id: &str,
    url: &str,
    methods: &[&str],
    authenticators: Value,
    authorizer: Value,
    mutators: Value,
) -> Value {
    json!({
        "id": id,
        "match": {"url": url, "methods": methods},
        "authenticators": authenticators,
        "authorizer": authorizer,
        "mutators": mutators
    })
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    let mut r = Request::new(method, "http", "svc.local", path, headers.iter().copied());
    r.remote_ip = Some("10.0.0.1".into());
    r
}

fn run<'e>(
    engine: &'e Engine,
    eval: &mut Evaluation,
    host: &mut TestHost,
    caches: &mut Caches,
) -> Step<'e> {
    eval.advance(engine, host, caches)
}

fn status(step: &Step<'_>) -> u16 {
    match step {
        Step::Deny(d) => d.response.status,
        Step::Allow(_) => 200,
        other => panic!("expected a decision, got {other:?}"),
    }
}

fn error_body(step: &Step<'_>) -> Value {
    match step {
        Step::Deny(d) => serde_json::from_str(&d.response.body).unwrap(),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn header_rule(id: &str, url: &str, authn: Value) -> Value {
    rule(
        id,
        url,
        &["GET", "POST"],
        authn,
        json!({"handler": "allow"}),
        json!([{"handler": "header", "config": {"headers": {"X-User": "{{ print .Subject }}", "X-Scope": "{{ print .Extra.scope }}"}}}]),
    )
}

#[test]
fn no_matching_rule_is_404_with_oathkeeper_body() {
    let e = engine(
        json!([header_rule(
            "a",
            "http://svc.local/a",
            json!([{"handler": "noop"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let mut ev = Evaluation::new(request("GET", "/b", &[]));
    let step = run(&e, &mut ev, &mut h, &mut c);
    assert_eq!(status(&step), 404);
    assert_eq!(error_body(&step)["error"]["code"], 404);
}

#[test]
fn method_must_match() {
    let e = engine(
        json!([rule(
            "a",
            "http://svc.local/a",
            &["POST"],
            json!([{"handler": "noop"}]),
            json!({"handler": "allow"}),
            json!([{"handler": "noop"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    assert_eq!(
        status(&run(
            &e,
            &mut Evaluation::new(request("GET", "/a", &[])),
            &mut h,
            &mut c
        )),
        404
    );
    assert_eq!(
        status(&run(
            &e,
            &mut Evaluation::new(request("POST", "/a", &[])),
            &mut h,
            &mut c
        )),
        200
    );
}

#[test]
fn overlapping_rules_fail_closed_with_500() {
    let e = engine(
        json!([
            header_rule("one", "http://svc.local/<.*>", json!([{"handler": "noop"}])),
            header_rule(
                "two",
                "http://svc.local/a<.*>",
                json!([{"handler": "noop"}])
            ),
        ]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let step = run(
        &e,
        &mut Evaluation::new(request("GET", "/abc", &[])),
        &mut h,
        &mut c,
    );
    assert_eq!(status(&step), 500);
    match step {
        Step::Deny(d) => assert!(
            d.message.contains("one") && d.message.contains("two"),
            "{}",
            d.message
        ),
        _ => unreachable!(),
    }
}

#[test]
fn anonymous_then_mutator_sets_and_strips_headers() {
    let e = engine(
        json!([header_rule(
            "a",
            "http://svc.local/<.*>",
            json!([{"handler": "anonymous"}, {"handler": "unauthorized"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let mut ev = Evaluation::new(request("GET", "/x", &[("x-user", "forged")]));
    match run(&e, &mut ev, &mut h, &mut c) {
        Step::Allow(a) => {
            assert_eq!(a.rule_id, "a");
            assert!(a.remove_headers.contains(&"x-user".to_string()));
            assert!(
                a.set_headers
                    .contains(&("x-user".to_string(), "guest".to_string())),
                "{:?}",
                a.set_headers
            );
        }
        other => panic!("{other:?}"),
    }
    // With an Authorization header anonymous is not responsible; unauthorized answers 401.
    let mut ev = Evaluation::new(request(
        "GET",
        "/x",
        &[("authorization", "Basic Zm9vOmJhcg==")],
    ));
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 401);
}

#[test]
fn no_responsible_authenticator_is_401() {
    let e = engine(
        json!([header_rule(
            "a",
            "http://svc.local/<.*>",
            json!([{"handler": "jwt"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    assert_eq!(
        status(&run(
            &e,
            &mut Evaluation::new(request("GET", "/x", &[])),
            &mut h,
            &mut c
        )),
        401
    );
}

#[test]
fn deny_authorizer_is_403() {
    let e = engine(
        json!([rule(
            "d",
            "http://svc.local/<.*>",
            &["GET"],
            json!([{"handler": "noop"}]),
            json!({"handler": "deny"}),
            json!([{"handler": "noop"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let step = run(
        &e,
        &mut Evaluation::new(request("GET", "/x", &[])),
        &mut h,
        &mut c,
    );
    assert_eq!(status(&step), 403);
    assert_eq!(error_body(&step)["error"]["status"], "Forbidden");
}

fn public_and_admin() -> Engine {
    engine(
        json!([
            header_rule(
                "public",
                "http://<[^/]+>/public/<.*>",
                json!([{"handler": "anonymous"}])
            ),
            header_rule(
                "admin",
                "http://svc.local/admin/<.*>",
                json!([{"handler": "unauthorized"}])
            ),
        ]),
        json!({}),
    )
}

#[test]
fn non_canonical_paths_are_refused_before_any_rule() {
    let e = public_and_admin();
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    for path in [
        "/admin/..%2Fpublic/x",
        "/admin/x/..%2f..%2Fpublic/y",
        "/admin/%2e%2e%2Fpublic/x",
        "/admin/../public/x",
        "/admin//../public/x",
        "/public/..;/admin/x",
        "/public/%2e%2e/admin/x",
        "/public/x%5C..%5Cadmin",
        "/public/a%00",
    ] {
        let step = run(
            &e,
            &mut Evaluation::new(request("GET", path, &[])),
            &mut h,
            &mut c,
        );
        assert_eq!(status(&step), 400, "{path}");
        let body = error_body(&step);
        assert_eq!(body["error"]["reason"], "invalid_path", "{path}: {body}");
        assert!(matches!(step, Step::Deny(Deny { rule_id: None, .. })));
    }
    // Unreserved escapes are still read as the workload reads them.
    let step = run(
        &e,
        &mut Evaluation::new(request("GET", "/%61dmin/x", &[])),
        &mut h,
        &mut c,
    );
    assert_eq!(status(&step), 401, "/%61dmin is /admin");
}

#[test]
fn host_case_and_trailing_dot_do_not_escape_a_rule() {
    let e = public_and_admin();
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    for host in ["SVC.local", "svc.local.", "Svc.Local."] {
        let req = Request::new("GET", "http", host, "/admin/x", []);
        let step = run(&e, &mut Evaluation::new(req), &mut h, &mut c);
        assert_eq!(status(&step), 401, "{host}");
    }
    let req = Request::new("GET", "http", "svc.local/public", "/admin/x", []);
    let step = run(&e, &mut Evaluation::new(req), &mut h, &mut c);
    assert_eq!(status(&step), 400, "a '/' in the host");
}

#[test]
fn every_managed_header_and_its_underscore_spelling_is_stripped() {
    let e = engine(
        json!([
            rule(
                "public",
                "http://svc.local/public",
                &["GET"],
                json!([{"handler": "anonymous"}]),
                json!({"handler": "allow"}),
                json!([{"handler": "noop"}])
            ),
            header_rule(
                "admin",
                "http://svc.local/admin",
                json!([{"handler": "anonymous"}])
            ),
        ]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let headers = [
        ("x-user", "root"),
        ("x_user", "admin"),
        ("X_USER", "admin"),
        ("x-other", "kept"),
        ("x-user", "again"),
    ];
    let step = run(
        &e,
        &mut Evaluation::new(request("GET", "/public", &headers)),
        &mut h,
        &mut c,
    );
    let Step::Allow(a) = step else {
        panic!("expected allow, got {step:?}")
    };
    assert_eq!(a.remove_headers, ["x-user", "x_user", "X_USER"]);
    assert!(a.set_headers.is_empty());
    // Nothing sent, nothing to remove, nothing allocated.
    let step = run(
        &e,
        &mut Evaluation::new(request("GET", "/public", &[("x-other", "1")])),
        &mut h,
        &mut c,
    );
    let Step::Allow(a) = step else {
        panic!("expected allow, got {step:?}")
    };
    assert!(a.remove_headers.is_empty());
}

#[test]
fn forwarded_headers_only_when_trusted() {
    let rules = json!([header_rule(
        "ext",
        "https://api.example.com/<.*>",
        json!([{"handler": "anonymous"}])
    )]);
    let fwd = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com"),
    ];
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let e = engine(rules.clone(), json!({}));
    let status_of = |e: &Engine, headers: &[(&str, &str)], h: &mut TestHost, c: &mut Caches| {
        status(&run(
            e,
            &mut Evaluation::new(request("GET", "/x", headers)),
            h,
            c,
        ))
    };
    assert_eq!(status_of(&e, &fwd, &mut h, &mut c), 404);
    let e = engine(rules, json!({"trust_forwarded_headers": true}));
    assert_eq!(status_of(&e, &fwd, &mut h, &mut c), 200);
    // The trusted proxy appends: the last element is its, the first the client's.
    let appended = [
        ("x-forwarded-proto", "http, https"),
        ("x-forwarded-host", "evil.example.com, api.example.com"),
    ];
    assert_eq!(status_of(&e, &appended, &mut h, &mut c), 200);
    let client_first = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com, other.example.com"),
    ];
    assert_eq!(status_of(&e, &client_first, &mut h, &mut c), 404);
    // Repeated header lines: the last line's last element.
    let lines = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-host", "other.example.com"),
    ];
    assert_eq!(status_of(&e, &lines, &mut h, &mut c), 404);
    for (name, value) in [
        ("x-forwarded-host", "api.example.com/public"),
        ("x-forwarded-host", "a.com, api.example.com?x"),
        ("x-forwarded-host", "user@api.example.com"),
        ("x-forwarded-host", "api.example.com\\x"),
        ("x-forwarded-host", "api. example.com"),
        ("x-forwarded-proto", "ftp"),
    ] {
        let step = run(
            &e,
            &mut Evaluation::new(request("GET", "/x", &[(name, value)])),
            &mut h,
            &mut c,
        );
        assert_eq!(status(&step), 400, "{name}: {value}");
    }
}

fn introspection_engine(cache: Value) -> Engine {
    let mut authn =
        json!({"handler": "oauth2_introspection", "config": {"required_scope": ["read"]}});
    if !cache.is_null() {
        authn["config"]["cache"] = cache;
    }
    engine(
        json!([header_rule("i", "http://svc.local/<.*>", json!([authn]))]),
        json!({}),
    )
}

fn callout_of(step: Step<'_>) -> Callout {
    match step {
        Step::Callout(c) => c,
        other => panic!("expected a callout, got {other:?}"),
    }
}

fn answer(status: u16, body: Value) -> Option<CalloutResponse> {
    Some(CalloutResponse {
        status,
        headers: vec![],
        body: body.to_string().into_bytes(),
    })
}

#[test]
fn introspection_calls_out_then_allows_and_caches() {
    let e = introspection_engine(Value::Null);
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let req = || request("GET", "/x", &[("authorization", "Bearer opaque-token")]);
    let mut ev = Evaluation::new(req());
    let call = callout_of(run(&e, &mut ev, &mut h, &mut c));
    assert_eq!(call.endpoint.cluster, "auth_admin");
    assert_eq!(call.endpoint.path, "/admin/oauth2/introspect");
    assert_eq!(call.method, "POST");
    assert!(String::from_utf8_lossy(&call.body).starts_with("token=opaque-token"));
    ev.callout_done(answer(
        200,
        json!({"active": true, "sub": "client-1", "scope": "read write", "client_id": "client-1"}),
    ));
    match run(&e, &mut ev, &mut h, &mut c) {
        Step::Allow(a) => {
            assert!(
                a.set_headers
                    .contains(&("x-user".into(), "client-1".into()))
            );
            assert!(
                a.set_headers
                    .contains(&("x-scope".into(), "read write".into()))
            );
        }
        other => panic!("{other:?}"),
    }
    // Within the default cache window the same token needs no call.
    let mut ev = Evaluation::new(req());
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 200);
    // After it, it does (a revoked token stops working within seconds).
    h.now += 6;
    let mut ev = Evaluation::new(req());
    callout_of(run(&e, &mut ev, &mut h, &mut c));
}

/// Two rules whose introspection configs differ in anything that shapes the call or the judging
/// of its answer never share a cached answer: an answer good at A is asked afresh at B.
#[test]
fn introspection_answers_are_cached_per_request_shape() {
    let pairs: Vec<(Value, Value)> = vec![
        (
            json!({"introspection_request_headers": {"X-Resource": "a"}}),
            json!({"introspection_request_headers": {"X-Resource": "b"}}),
        ),
        (
            json!({"required_scope": ["a", "b"]}),
            json!({"required_scope": ["a b"]}),
        ),
        (
            json!({"target_audience": ["x"]}),
            json!({"target_audience": ["y"]}),
        ),
        (
            json!({"trusted_issuers": ["i1"]}),
            json!({"trusted_issuers": ["i1", "i2"]}),
        ),
        (
            json!({"scope_strategy": "exact"}),
            json!({"scope_strategy": "wildcard"}),
        ),
        (json!({"prefix": ""}), json!({"prefix": "t"})),
        (json!({}), json!({"token_from": {"header": "x-token"}})),
        (
            json!({"cache": {"enabled": true, "ttl": "60s"}}),
            json!({"cache": {"enabled": true, "ttl": "2s"}}),
        ),
        (json!({}), json!({"preserve_host": true})),
        (
            json!({}),
            json!({"introspection_url": "http://other.local/introspect"}),
        ),
    ];
    let answer_body =
        json!({"active": true, "sub": "s", "scope": "a b", "aud": ["x", "y"], "iss": "i1"});
    for (i, (a, b)) in pairs.into_iter().enumerate() {
        let authn = |cfg: Value| json!([{"handler": "oauth2_introspection", "config": cfg}]);
        let e = engine(
            json!([
                header_rule("a", "http://<[^/]+>/a", authn(a.clone())),
                header_rule("b", "http://<[^/]+>/b", authn(b.clone())),
            ]),
            json!({}),
        );
        let (mut h, mut c) = (TestHost::new(), Caches::new(16));
        let req = |path| {
            request(
                "GET",
                path,
                &[("authorization", "Bearer tok"), ("x-token", "tok")],
            )
        };
        let mut ev = Evaluation::new(req("/a"));
        callout_of(run(&e, &mut ev, &mut h, &mut c));
        ev.callout_done(answer(200, answer_body.clone()));
        assert_eq!(
            status(&run(&e, &mut ev, &mut h, &mut c)),
            200,
            "pair {i} at a"
        );
        let mut ev = Evaluation::new(req("/a"));
        assert_eq!(
            status(&run(&e, &mut ev, &mut h, &mut c)),
            200,
            "pair {i}: a cached"
        );
        let mut ev = Evaluation::new(req("/b"));
        match run(&e, &mut ev, &mut h, &mut c) {
            Step::Callout(_) => {}
            other => panic!("pair {i} ({a} vs {b}): b used a's answer: {other:?}"),
        }
    }
}

/// With `preserve_host` the host is sent to the introspection endpoint, so it is part of the key.
#[test]
fn preserve_host_answers_are_cached_per_host() {
    let e = engine(
        json!([header_rule(
            "p",
            "http://<[^/]+>/<.*>",
            json!([{"handler": "oauth2_introspection", "config": {"preserve_host": true}}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let at =
        |host: &str| Request::new("GET", "http", host, "/x", [("authorization", "Bearer tok")]);
    let mut ev = Evaluation::new(at("a.local"));
    let call = callout_of(run(&e, &mut ev, &mut h, &mut c));
    assert!(
        call.headers
            .contains(&("x-forwarded-host".into(), "a.local".into()))
    );
    ev.callout_done(answer(200, json!({"active": true, "sub": "s"})));
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 200);
    let mut ev = Evaluation::new(at("a.local"));
    assert_eq!(
        status(&run(&e, &mut ev, &mut h, &mut c)),
        200,
        "cached for a.local"
    );
    let mut ev = Evaluation::new(at("b.local"));
    let call = callout_of(run(&e, &mut ev, &mut h, &mut c));
    assert!(
        call.headers
            .contains(&("x-forwarded-host".into(), "b.local".into()))
    );
    ev.callout_done(answer(200, json!({"active": false})));
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 401);
}

#[test]
fn introspection_cache_can_be_disabled() {
    let e = introspection_engine(json!({"enabled": false}));
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    for _ in 0..2 {
        let mut ev = Evaluation::new(request("GET", "/x", &[("authorization", "Bearer t")]));
        callout_of(run(&e, &mut ev, &mut h, &mut c));
        ev.callout_done(answer(200, json!({"active": true, "scope": "read"})));
        assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 200);
    }
}

#[test]
fn introspection_failures_map_to_oathkeeper_statuses() {
    let e = introspection_engine(Value::Null);
    let cases = [
        (answer(200, json!({"active": false})), 401),
        (answer(200, json!({"active": true, "scope": "write"})), 403),
        (
            answer(
                200,
                json!({"active": true, "scope": "read", "token_use": "refresh_token"}),
            ),
            403,
        ),
        (answer(500, json!({})), 500),
        (None, 500),
    ];
    for (i, (reply, want)) in cases.into_iter().enumerate() {
        let (mut h, mut c) = (TestHost::new(), Caches::new(16));
        let mut ev = Evaluation::new(request(
            "GET",
            "/x",
            &[("authorization", &format!("Bearer t{i}"))],
        ));
        callout_of(run(&e, &mut ev, &mut h, &mut c));
        ev.callout_done(reply);
        assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), want, "case {i}");
    }
}

#[test]
fn remote_json_authorizer_posts_payload_and_forwards_headers() {
    let authz = json!({"handler": "remote_json", "config": {
        "payload": "{\"subject\": \"{{ print .Subject }}\", \"g\": \"{{ printIndex .MatchContext.RegexpCaptureGroups 0 }}\"}",
        "forward_response_headers_to_upstream": ["X-Tenant"]
    }});
    let e = engine(
        json!([rule(
            "r",
            "http://svc.local/items/<[0-9]+>",
            &["GET"],
            json!([{"handler": "anonymous"}]),
            authz,
            json!([{"handler": "noop"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let mut ev = Evaluation::new(request("GET", "/items/42", &[]));
    let call = callout_of(run(&e, &mut ev, &mut h, &mut c));
    assert_eq!(call.endpoint.cluster, "outbound|80||authz.local");
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(body, json!({"subject": "guest", "g": "42"}));
    ev.callout_done(Some(CalloutResponse {
        status: 200,
        headers: vec![("x-tenant".into(), "acme".into())],
        body: vec![],
    }));
    match run(&e, &mut ev, &mut h, &mut c) {
        Step::Allow(a) => assert_eq!(
            a.set_headers,
            vec![("x-tenant".to_string(), "acme".to_string())]
        ),
        other => panic!("{other:?}"),
    }
    let mut ev = Evaluation::new(request("GET", "/items/7", &[]));
    callout_of(run(&e, &mut ev, &mut h, &mut c));
    ev.callout_done(answer(403, json!({})));
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 403);
}

#[test]
fn remote_json_payload_escapes_what_the_client_wrote() {
    let authz = json!({"handler": "remote_json", "config": {
        "payload": "{\"action\": \"{{ .MatchContext.Method }}\", \"url\": \"{{ .MatchContext.URL }}\", \"doc\": \"{{ printIndex .MatchContext.RegexpCaptureGroups 0 }}\", \"trace\": \"{{ .MatchContext.Header.Get \"x-trace\" }}\"}"
    }});
    let e = engine(
        json!([rule(
            "r",
            "http://svc.local/docs/<.*>",
            &["DELETE"],
            json!([{"handler": "anonymous"}]),
            authz,
            json!([{"handler": "noop"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let trace = "t\",\"action\":\"read";
    let mut ev = Evaluation::new(request(
        "DELETE",
        "/docs/1%22?x=\",\"action\":\"read",
        &[("x-trace", trace)],
    ));
    let call = callout_of(run(&e, &mut ev, &mut h, &mut c));
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    let members = body.as_object().unwrap();
    assert_eq!(members.len(), 4, "{body}");
    assert_eq!(body["action"], "DELETE");
    assert_eq!(body["trace"], trace);
    assert!(
        body["url"]
            .as_str()
            .unwrap()
            .ends_with("?x=\",\"action\":\"read"),
        "{body}"
    );
    // A last-wins parser of the raw text sees one `action` too.
    let text = String::from_utf8(call.body).unwrap();
    assert_eq!(text.matches("\"action\":").count(), 1, "{text}");
}

/// A syntactically valid RS256 JWT whose signature is never checked in these tests.
fn unsigned_jwt(kid: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "RS256", "kid": kid})),
        b64(json!({"sub": "x"}))
    )
}

#[test]
fn jwt_waits_for_pending_keys_then_fails_closed_on_timeout() {
    let e = engine(
        json!([header_rule(
            "j",
            "http://svc.local/<.*>",
            json!([{"handler": "jwt"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    h.keys.insert(JWKS.to_string(), KeyLookup::Pending);
    let bearer = format!("Bearer {}", unsigned_jwt("k1"));
    let mut ev = Evaluation::new(request("GET", "/x", &[("authorization", &bearer)]));
    match run(&e, &mut ev, &mut h, &mut c) {
        Step::WaitForKeys { max_wait_ms } => assert_eq!(max_wait_ms, 1_000),
        other => panic!("{other:?}"),
    }
    ev.keys_timed_out();
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 401);
}

#[test]
fn jwt_with_unavailable_keys_is_denied() {
    let e = engine(
        json!([header_rule(
            "j",
            "http://svc.local/<.*>",
            json!([{"handler": "jwt"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let bearer = format!("Bearer {}", unsigned_jwt("k1"));
    let step = run(
        &e,
        &mut Evaluation::new(request("GET", "/x", &[("authorization", &bearer)])),
        &mut h,
        &mut c,
    );
    assert_eq!(status(&step), 401);
}

#[test]
fn opaque_token_passes_from_jwt_to_introspection() {
    let e = engine(
        json!([header_rule(
            "chain",
            "http://svc.local/<.*>",
            json!([{"handler": "jwt"}, {"handler": "oauth2_introspection"}])
        )]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let mut ev = Evaluation::new(request(
        "GET",
        "/x",
        &[("authorization", "Bearer not-a-jwt")],
    ));
    callout_of(run(&e, &mut ev, &mut h, &mut c));
}

#[test]
fn cached_token_is_rechecked_against_each_rules_algorithms_and_claims() {
    use crate::testkeys;
    use jsonwebtoken::Algorithm;
    let jwt = |cfg: Value| json!([{"handler": "jwt", "config": cfg}]);
    let e = engine(
        json!([
            header_rule("rs", "http://svc.local/rs", jwt(json!({}))),
            header_rule(
                "es",
                "http://svc.local/es",
                jwt(json!({"allowed_algorithms": ["ES256"]}))
            ),
            header_rule(
                "aud",
                "http://svc.local/aud",
                jwt(json!({"target_audience": ["other"]}))
            ),
        ]),
        json!({}),
    );
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    h.keys
        .insert(JWKS.to_string(), KeyLookup::Ready(testkeys::key_set()));
    let token = testkeys::sign(
        Algorithm::RS256,
        Some(testkeys::kid_for(Algorithm::RS256)),
        &json!({"sub": "alice", "exp": h.now + 60}),
    );
    let bearer = format!("Bearer {token}");
    let get = |path: &str, h: &mut TestHost, c: &mut Caches| {
        let mut ev = Evaluation::new(request("GET", path, &[("authorization", &bearer)]));
        status(&run(&e, &mut ev, h, c))
    };
    assert_eq!(get("/rs", &mut h, &mut c), 200);
    assert_eq!(c.stats().jwt_misses, 1);
    // Same token, same key sets: a cache hit, but the ES256-only rule still refuses RS256 and
    // the audience rule still checks aud.
    assert_eq!(get("/es", &mut h, &mut c), 401);
    assert_eq!(get("/aud", &mut h, &mut c), 401);
    assert_eq!(get("/rs", &mut h, &mut c), 200);
    assert_eq!(c.stats().jwt_misses, 1);
    assert_eq!(c.stats().jwt_hits, 3);
    // Past exp the cached entry is gone and the token is refused.
    h.now += 61;
    assert_eq!(get("/rs", &mut h, &mut c), 401);
}

#[test]
fn a_disabled_filter_lets_requests_through_and_cannot_carry_rules() {
    let e = engine(json!([]), json!({"disabled": true}));
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    assert_eq!(
        status(&run(
            &e,
            &mut Evaluation::new(request("GET", "/any", &[])),
            &mut h,
            &mut c
        )),
        200
    );
    let with_rules = json!({"disabled": true, "rules": [header_rule("a", "http://svc.local/a", json!([{"handler": "noop"}]))],
        "authenticators": {"noop": {"enabled": true}}, "authorizers": {"allow": {"enabled": true}}, "mutators": {"header": {"enabled": true}}});
    let err = Engine::from_json(with_rules.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("disabled"), "{err}");
}

/// One jwt rule at `/rs` with the default authenticator config, a host that has the test keys,
/// and a small cache.
fn rs_rule_setup() -> (Engine, TestHost, Caches) {
    let e = engine(
        json!([header_rule(
            "rs",
            "http://svc.local/rs",
            json!([{"handler": "jwt"}])
        )]),
        json!({}),
    );
    let mut h = TestHost::new();
    h.keys.insert(
        JWKS.to_string(),
        KeyLookup::Ready(crate::testkeys::key_set()),
    );
    (e, h, Caches::new(16))
}

/// Status of `GET /rs` with `token` as the bearer.
fn status_with_token(e: &Engine, token: &str, h: &mut TestHost, c: &mut Caches) -> u16 {
    let bearer = format!("Bearer {token}");
    let mut ev = Evaluation::new(request("GET", "/rs", &[("authorization", &bearer)]));
    status(&run(e, &mut ev, h, c))
}

fn sign_rs256(claims: &Value) -> String {
    use jsonwebtoken::Algorithm;
    crate::testkeys::sign(
        Algorithm::RS256,
        Some(crate::testkeys::kid_for(Algorithm::RS256)),
        claims,
    )
}

#[test]
fn a_known_signature_on_another_payload_is_refused_even_once_cached() {
    let (e, mut h, mut c) = rs_rule_setup();
    let good = sign_rs256(&json!({"sub": "alice", "exp": h.now + 60}));
    let other = sign_rs256(&json!({"sub": "mallory", "exp": h.now + 60}));
    let mut parts: Vec<&str> = other.split('.').collect();
    parts[2] = good.rsplit('.').next().unwrap();
    let spliced = parts.join(".");
    assert_eq!(status_with_token(&e, &good, &mut h, &mut c), 200);
    assert_eq!(status_with_token(&e, &good, &mut h, &mut c), 200);
    assert_eq!(status_with_token(&e, &spliced, &mut h, &mut c), 401);
}

#[test]
fn cache_hits_use_the_hosts_time_bounds_and_read_the_clock_only_near_a_boundary() {
    let (e, mut h, mut c) = rs_rule_setup();
    let t0 = h.now;
    let far = sign_rs256(&json!({"sub": "a", "exp": t0 + 3600, "iat": t0 - 5}));
    let near_exp = sign_rs256(&json!({"sub": "b", "exp": t0 + 1}));
    let fresh = sign_rs256(&json!({"sub": "c", "exp": t0 + 3600, "iat": t0 + 1}));
    let get = |token: &str, h: &mut TestHost, c: &mut Caches| status_with_token(&e, token, h, c);
    // The misses verify with the exact clock and fill the cache.
    for t in [&far, &near_exp] {
        assert_eq!(get(t, &mut h, &mut c), 200);
    }
    // From now on the host only knows "between t0 and t0 + 1".
    h.bounds = Some((t0, t0 + 1));
    h.clock_reads = 0;
    assert_eq!(get(&far, &mut h, &mut c), 200);
    assert_eq!(h.clock_reads, 0, "far from any boundary: no clock read");
    // The cache entry of exp = t0 + 1 lapses at t0 + 1, inside the bounds: the exact clock
    // decides, both ways (the token itself is valid up to and including its exp second).
    assert_eq!(get(&near_exp, &mut h, &mut c), 200);
    assert_eq!(h.clock_reads, 1);
    h.now = t0 + 2;
    h.bounds = Some((t0 + 1, t0 + 2));
    h.clock_reads = 0;
    assert_eq!(get(&near_exp, &mut h, &mut c), 401);
    assert!(h.clock_reads >= 1);
    // A token issued at t0 + 1 is not valid at t0: verified with the exact clock it passes
    // (h.now is t0 + 1), and once cached its iat stays ambiguous within the bounds, so every
    // hit reads the clock; with the clock back at t0 it is refused.
    h.now = t0 + 1;
    h.bounds = Some((t0, t0 + 1));
    assert_eq!(get(&fresh, &mut h, &mut c), 200);
    h.clock_reads = 0;
    assert_eq!(get(&fresh, &mut h, &mut c), 200);
    assert_eq!(h.clock_reads, 1);
    h.now = t0;
    assert_eq!(get(&fresh, &mut h, &mut c), 401);
}

/// A rule per new callout handler: cookie_session then bearer_token, the remote authorizer, and
/// the hydrator between two header mutators.
fn callout_handlers_engine() -> Engine {
    let header = |h: &str, t: &str| json!({"handler": "header", "config": {"headers": {h: t}}});
    engine(
        json!([
            rule(
                "session",
                "http://svc.local/s",
                &["GET"],
                json!([{"handler": "cookie_session", "config": {"only": ["sid"]}},
                       {"handler": "bearer_token"}]),
                json!({"handler": "allow"}),
                json!([header("X-User", "{{ print .Subject }}")])
            ),
            rule(
                "remote",
                "http://svc.local/r",
                &["POST"],
                json!([{"handler": "anonymous"}]),
                json!({"handler": "remote", "config": {"max_body_bytes": 8}}),
                json!([{"handler": "noop"}])
            ),
            rule(
                "hydrated",
                "http://svc.local/h/<[0-9]+>",
                &["GET"],
                json!([{"handler": "anonymous"}]),
                json!({"handler": "allow"}),
                json!([header("X-Before", "b"), {"handler": "hydrator"},
                       header("X-After", "{{ print .Extra.tenant }}")])
            ),
        ]),
        json!({
            "authenticators": {
                "cookie_session": {"enabled": true, "config": {
                    "check_session_url": "http://sessions.local/whoami",
                    "cache": {"enabled": true, "ttl": "10s"}}},
                "bearer_token": {"enabled": true, "config": {
                    "check_session_url": "http://sessions.local/token"}}
            },
            "authorizers": {"remote": {"enabled": true, "config": {"remote": "http://authz.local/remote"}}},
            "mutators": {"hydrator": {"enabled": true, "config": {"api": {"url": "http://api.local/hydrate"}}}}
        }),
    )
}

#[test]
fn session_check_chain_calls_out_caches_by_credential_and_falls_through() {
    let e = callout_handlers_engine();
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    // Neither a `sid` cookie nor a bearer token: nobody is responsible.
    let mut ev = Evaluation::new(request("GET", "/s", &[("cookie", "other=1")]));
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 401);
    // The cookie authenticator asks the session store, then allows.
    let cookie = || request("GET", "/s", &[("cookie", "sid=abc")]);
    let mut ev = Evaluation::new(cookie());
    let call = callout_of(run(&e, &mut ev, &mut h, &mut c));
    assert_eq!((call.method, call.endpoint.path.as_str()), ("GET", "/s"));
    ev.callout_done(answer(200, json!({"subject": "alice"})));
    match run(&e, &mut ev, &mut h, &mut c) {
        Step::Allow(a) => assert!(a.set_headers.contains(&("x-user".into(), "alice".into()))),
        other => panic!("{other:?}"),
    }
    // Cached: no second call for the same cookie, a call for another.
    let mut ev = Evaluation::new(cookie());
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 200);
    let mut ev = Evaluation::new(request("GET", "/s", &[("cookie", "sid=abd")]));
    callout_of(run(&e, &mut ev, &mut h, &mut c));
    // A rejected cookie is 401 and not cached.
    ev.callout_done(answer(401, json!({})));
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 401);
    // A bearer token falls through the cookie authenticator to bearer_token.
    let mut ev = Evaluation::new(request("GET", "/s", &[("authorization", "Bearer t")]));
    let call = callout_of(run(&e, &mut ev, &mut h, &mut c));
    assert_eq!(call.endpoint.path, "/s");
    assert!(
        call.headers
            .contains(&("authorization".into(), "Bearer t".into()))
    );
    ev.callout_done(None);
    assert_eq!(
        status(&run(&e, &mut ev, &mut h, &mut c)),
        403,
        "unreachable store"
    );
}

#[test]
fn remote_waits_for_the_body_and_posts_it() {
    let e = callout_handlers_engine();
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let mut ev = Evaluation::new(request("POST", "/r", &[("content-type", "text/plain")]));
    match run(&e, &mut ev, &mut h, &mut c) {
        Step::WaitForBody { max_bytes } => assert_eq!(max_bytes, 8),
        other => panic!("{other:?}"),
    }
    assert_eq!(ev.wants_body(&e), Some(8));
    ev.body_received(b"payload".to_vec());
    assert_eq!(ev.wants_body(&e), None);
    let call = callout_of(run(&e, &mut ev, &mut h, &mut c));
    assert_eq!(
        (call.endpoint.path.as_str(), call.body.as_slice()),
        ("/remote", &b"payload"[..])
    );
    assert!(
        call.headers
            .contains(&("content-type".into(), "text/plain".into()))
    );
    ev.callout_done(answer(403, json!({})));
    assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 403);
    // Rules without `remote` never ask for the body.
    let mut ev = Evaluation::new(request("GET", "/s", &[("cookie", "sid=x")]));
    callout_of(run(&e, &mut ev, &mut h, &mut c));
    assert_eq!(ev.wants_body(&e), None);
}

#[test]
fn hydrator_replaces_the_session_between_mutators() {
    let e = callout_handlers_engine();
    let (mut h, mut c) = (TestHost::new(), Caches::new(16));
    let mut ev = Evaluation::new(request("GET", "/h/42?x=1", &[("x-in", "v")]));
    let call = callout_of(run(&e, &mut ev, &mut h, &mut c));
    assert_eq!(call.endpoint.path, "/hydrate");
    let sent: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(sent["subject"], "guest");
    assert_eq!(sent["header"], json!({"X-Before": ["b"]}));
    assert_eq!(
        sent["match_context"]["regexp_capture_groups"],
        json!(["42"])
    );
    assert_eq!(sent["match_context"]["header"]["X-In"], json!(["v"]));
    assert_eq!(sent["match_context"]["url"]["RawQuery"], "x=1");
    let mut back = sent.clone();
    back["extra"] = json!({"tenant": "t9"});
    back["header"] = json!({"X-Hydrated": ["yes"]});
    ev.callout_done(answer(200, back));
    match run(&e, &mut ev, &mut h, &mut c) {
        Step::Allow(a) => {
            assert!(a.set_headers.contains(&("x-hydrated".into(), "yes".into())));
            assert!(a.set_headers.contains(&("x-after".into(), "t9".into())));
            assert!(
                !a.set_headers.iter().any(|(k, _)| k == "x-before"),
                "replaced"
            );
        }
        other => panic!("{other:?}"),
    }
    // A changed subject, a non-200 and no answer are all 500s.
    for reply in [
        answer(200, json!({"subject": "root"})),
        answer(404, json!({})),
        None,
    ] {
        let mut ev = Evaluation::new(request("GET", "/h/1", &[]));
        callout_of(run(&e, &mut ev, &mut h, &mut c));
        ev.callout_done(reply);
        assert_eq!(status(&run(&e, &mut ev, &mut h, &mut c)), 500);
    }
}

mod tokens;
