use super::*;
use crate::testkeys;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const JWKS: &str = "http://auth.local:4444/.well-known/jwks.json";
const INTROSPECT: &str = "http://auth.local:4445/admin/oauth2/introspect";
const NOW: u64 = 1_700_000_000;

fn tester(rules: Value) -> RuleTester {
    let cfg = json!({
        "authenticators": {
            "anonymous": {"enabled": true, "config": {"subject": "guest"}},
            "jwt": {"enabled": true, "config": {"jwks_urls": [JWKS], "required_scope": ["read"], "scope_strategy": "exact"}},
            "oauth2_introspection": {"enabled": true, "config": {"introspection_url": INTROSPECT}}
        },
        "authorizers": {"allow": {"enabled": true}, "deny": {"enabled": true}},
        "mutators": {"noop": {"enabled": true}, "header": {"enabled": true}},
        "errors": {"fallback": ["json"], "handlers": {"json": {"enabled": true}}},
        "rules": rules
    });
    match RuleTester::from_json(cfg.to_string().as_bytes()) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

fn rule(id: &str, url: &str, authn: &[&str], authz: &str) -> Value {
    json!({
        "id": id,
        "match": {"url": url, "methods": ["GET"]},
        "authenticators": authn.iter().map(|h| json!({"handler": h})).collect::<Vec<_>>(),
        "authorizer": {"handler": authz},
        "mutators": [{"handler": "header", "config": {"headers": {"X-User": "{{ print .Subject }}"}}}]
    })
}

fn token(scope: &str, exp: u64) -> String {
    testkeys::sign(
        Algorithm::RS256,
        Some(testkeys::kid_for(Algorithm::RS256)),
        &json!({"sub": "alice", "scp": [scope], "exp": exp}),
    )
}

/// Drives a run to the end, answering key fetches with the test key set and callouts with
/// `callout`.
fn run(
    t: &RuleTester,
    req: &TestRequest,
    callout: impl Fn(&CalloutRequest) -> Option<CalloutResponse>,
) -> Trace {
    let mut run = t.start(req, NOW).unwrap();
    loop {
        match run.advance() {
            Need::Done => return run.into_trace(),
            Need::Keys(urls) => {
                for u in urls {
                    let body = testkeys::jwks_json();
                    run.keys_fetched(&u, Ok((200, body.as_bytes())));
                }
            }
            Need::Callout(c) => {
                let answer = callout(&c);
                run.callout_done(&c, answer);
            }
        }
    }
}

fn get(url: &str, token: Option<String>) -> TestRequest {
    TestRequest {
        token,
        ..TestRequest::parse_line(&format!("GET {url}")).unwrap()
    }
}

fn no_callouts(c: &CalloutRequest) -> Option<CalloutResponse> {
    panic!("unexpected callout {c:?}")
}

#[test]
fn allow_traces_rule_keys_authenticators_authorizer_and_headers() {
    let t = tester(json!([rule(
        "api",
        "https://api.local/<.*>",
        &["anonymous", "jwt"],
        "allow"
    )]));
    let trace = run(
        &t,
        &get("https://api.local/items", Some(token("read", NOW + 60))),
        no_callouts,
    );
    assert!(
        matches!(&trace.matching, Some(MatchTrace::Matched { rule, .. }) if rule == "api"),
        "{:?}",
        trace.matching
    );
    let steps: Vec<(&str, &str)> = trace
        .authenticators
        .iter()
        .map(|a| (a.handler.as_str(), a.verdict.outcome))
        .collect();
    assert_eq!(
        steps,
        [
            ("anonymous", "not_responsible"),
            ("jwt", "waiting_for_keys"),
            ("jwt", "success")
        ]
    );
    assert_eq!(
        trace.authenticators[2].verdict.subject.as_deref(),
        Some("alice")
    );
    assert_eq!(trace.keys.len(), 1);
    assert_eq!(trace.keys[0].url, JWKS);
    assert!(trace.keys[0].keys.unwrap_or(0) > 0);
    assert_eq!(trace.authorizer[0].handler, "allow");
    assert_eq!(trace.authorizer[0].verdict.outcome, "success");
    assert_eq!(trace.mutators, ["header"]);
    assert!(trace.decision.allowed);
    assert_eq!(trace.decision.rule.as_deref(), Some("api"));
    assert_eq!(
        trace.decision.set_headers,
        [("x-user".to_string(), "alice".to_string())]
    );
}

#[test]
fn expired_token_names_the_failed_claim_and_the_exact_401_body() {
    let t = tester(json!([rule(
        "api",
        "https://api.local/<.*>",
        &["jwt"],
        "allow"
    )]));
    let trace = run(
        &t,
        &get("https://api.local/x", Some(token("read", NOW - 3600))),
        no_callouts,
    );
    let last = trace.authenticators.last().unwrap();
    assert_eq!(last.verdict.outcome, "failed");
    assert_eq!(last.verdict.reason, Some("jwt_expired"));
    assert!(!trace.decision.allowed);
    assert_eq!(trace.decision.status, 401);
    let body: Value = serde_json::from_str(&trace.decision.body).unwrap();
    assert_eq!(body["error"]["code"], 401);
    assert!(
        trace.authorizer.is_empty(),
        "no authorizer after a failed authenticator"
    );
}

#[test]
fn missing_scope_and_unknown_kid_are_told_apart() {
    let t = tester(json!([rule(
        "api",
        "https://api.local/<.*>",
        &["jwt"],
        "allow"
    )]));
    let scope = run(
        &t,
        &get("https://api.local/x", Some(token("write", NOW + 60))),
        no_callouts,
    );
    let v = &scope.authenticators.last().unwrap().verdict;
    assert_eq!(v.outcome, "failed");
    assert!(
        v.message.as_deref().unwrap_or("").contains("scope"),
        "{v:?}"
    );
    let forged = testkeys::sign(
        Algorithm::RS256,
        Some("no-such-kid"),
        &json!({"sub": "mallory", "scp": ["read"], "exp": NOW + 60}),
    );
    let kid = run(&t, &get("https://api.local/x", Some(forged)), no_callouts);
    let v = &kid.authenticators.last().unwrap().verdict;
    assert_eq!(v.outcome, "failed");
    assert_ne!(
        v.reason,
        scope.authenticators.last().unwrap().verdict.reason
    );
    assert_eq!(kid.decision.status, 401);
}

#[test]
fn deny_authorizer_is_403_and_no_rule_is_404() {
    let t = tester(json!([rule(
        "admin",
        "https://api.local/admin",
        &["anonymous"],
        "deny"
    )]));
    let denied = run(&t, &get("https://api.local/admin", None), no_callouts);
    assert_eq!(
        denied.authenticators[0].verdict.subject.as_deref(),
        Some("guest")
    );
    assert_eq!(denied.authorizer[0].verdict.reason, Some("authorizer_deny"));
    assert_eq!(denied.decision.status, 403);
    assert!(denied.mutators.is_empty());
    let none = run(&t, &get("https://api.local/other", None), no_callouts);
    assert_eq!(none.matching, Some(MatchTrace::NoMatch));
    assert_eq!(none.decision.status, 404);
    assert_eq!(none.decision.rule, None);
}

#[test]
fn overlapping_rules_are_named() {
    let t = tester(json!([
        rule("a", "https://api.local/<.*>", &["anonymous"], "allow"),
        rule("b", "https://api.local/x", &["anonymous"], "allow")
    ]));
    let trace = run(&t, &get("https://api.local/x", None), no_callouts);
    assert_eq!(
        trace.matching,
        Some(MatchTrace::Ambiguous {
            rules: vec!["a".into(), "b".into()]
        })
    );
    assert_eq!(trace.decision.status, 500);
}

#[test]
fn callouts_are_handed_out_and_recorded_and_a_failed_one_denies() {
    let t = tester(json!([rule(
        "i",
        "https://api.local/<.*>",
        &["oauth2_introspection"],
        "allow"
    )]));
    let req = get("https://api.local/x", Some("opaque".into()));
    let active = run(&t, &req, |c| {
        assert_eq!(c.url, INTROSPECT);
        assert_eq!(c.method, "POST");
        assert!(c.body.contains("token=opaque"), "{}", c.body);
        Some(CalloutResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"active":true,"sub":"svc"}"#.to_vec(),
        })
    });
    assert!(active.decision.allowed, "{active:?}");
    assert_eq!(active.callouts.len(), 1);
    assert_eq!(active.callouts[0].status, Some(200));
    assert_eq!(active.authenticators[0].verdict.outcome, "callout");
    let down = run(&t, &req, |_| None);
    assert!(!down.decision.allowed);
    assert_eq!(down.callouts[0].status, None);
}

#[test]
fn unreachable_keys_are_recorded_and_deny() {
    let t = tester(json!([rule(
        "api",
        "https://api.local/<.*>",
        &["jwt"],
        "allow"
    )]));
    let mut r = t
        .start(
            &get("https://api.local/x", Some(token("read", NOW + 60))),
            NOW,
        )
        .unwrap();
    let Need::Keys(urls) = r.advance() else {
        panic!("expected a key fetch")
    };
    r.keys_fetched(&urls[0], Err("connection refused".into()));
    assert_eq!(r.advance(), Need::Done);
    let trace = r.into_trace();
    assert_eq!(trace.keys[0].error.as_deref(), Some("connection refused"));
    assert!(!trace.decision.allowed);
}

#[test]
fn hostile_requests_are_refused_before_matching() {
    let t = tester(json!([rule(
        "api",
        "https://api.local/<.*>",
        &["anonymous"],
        "allow"
    )]));
    let trace = run(&t, &get("https://api.local/a/../admin", None), no_callouts);
    assert_eq!(trace.matching, None);
    assert_eq!(trace.decision.status, 400);
    for bad in [
        "GET",
        "GET ftp://x/ y",
        "G\u{0}T https://x/",
        "GET https://user@x/",
    ] {
        let parsed = TestRequest::parse_line(bad).and_then(|r| r.to_request().map(|_| ()));
        assert!(parsed.is_err(), "{bad:?} accepted");
    }
    let mut r = TestRequest::default();
    assert!(r.add_header("no colon").is_err());
    assert!(r.add_header("Bad Name: v").is_err());
}

#[test]
fn trace_serialises_to_json() {
    let t = tester(json!([rule(
        "api",
        "https://api.local/<.*>",
        &["anonymous"],
        "allow"
    )]));
    let trace = run(&t, &get("https://api.local/x", None), no_callouts);
    let v = serde_json::to_value(&trace).unwrap();
    assert_eq!(v["matching"]["outcome"], "matched");
    assert_eq!(v["authenticators"][0]["handler"], "anonymous");
    assert_eq!(v["authenticators"][0]["outcome"], "success");
    assert_eq!(v["decision"]["allowed"], true);
}
