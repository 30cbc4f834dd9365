//! The filter's outbound endpoints failing, in a real Envoy: down, slow past the timeout,
//! answering garbage, answering 10 MiB. Under every fault nothing is allowed that should not be,
//! cached JWKS keys keep serving, Envoy's memory stays bounded, and once the endpoint is back the
//! filter recovers by itself.
//!
//! Endpoints are rows of [`endpoints`] (JWKS, introspection, check session, remote, hydrator):
//! the path it calls, a rule using it, and what a good and a bad credential get while the
//! endpoint fails. Every endpoint fails at once, as when the auth services share a node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jsonwebtoken::Algorithm;
use portcullis_e2e::authserver::Fault;
use portcullis_e2e::keys::{self, claims, mint_default};
use portcullis_e2e::stack::{Stack, config, rule, subject_headers};
use serde_json::{Value, json};
use std::time::Duration;

/// One endpoint the filter calls, and how requests through it must be decided.
struct Endpoint {
    name: &'static str,
    /// Path on the auth server.
    path: &'static str,
    /// Request path whose rule calls it.
    request: &'static str,
    rule: Value,
    /// A credential the endpoint would accept, and one it would refuse.
    good: Vec<(String, String)>,
    bad: Vec<(String, String)>,
    /// Statuses the good credential may get while the endpoint fails.
    good_while_failing: &'static [u16],
    /// The handler decides on the answer's status alone (the `remote` authorizer, as in
    /// Oathkeeper): a 200 is an allow whatever its body, so a garbage or huge 200 is no fault
    /// to judge the bad credential by.
    status_only: bool,
}

const INTROSPECTED: &str = "introspected-active-token";
/// Replaced by the auth server's origin once it runs (rules name its URLs).
const AUTH_ORIGIN: &str = "AUTH_ORIGIN";
const INACTIVE: &str = "introspected-inactive-token";

fn bearer(token: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {token}"))]
}

fn endpoints() -> Vec<Endpoint> {
    let token = mint_default(Algorithm::RS256, &claims("alice", &[]));
    let forged = keys::tampered_payload(&token, &claims("admin", &[]));
    vec![
        Endpoint {
            name: "jwks",
            path: "/jwks",
            request: "/jwt/x",
            rule: rule(
                "jwt",
                "http://<[^/]+>/jwt/<.*>",
                json!([{"handler": "jwt", "config": {"jwks_ttl": "1s"}}]),
                json!({"handler": "allow"}),
                subject_headers(),
            ),
            good: bearer(&token),
            bad: bearer(&forged),
            // Keys fetched before the fault keep verifying (for `jwks_max_stale`).
            good_while_failing: &[200],
            status_only: false,
        },
        Endpoint {
            name: "introspection",
            path: "/introspect",
            request: "/introspect/x",
            rule: rule(
                "introspection",
                "http://<[^/]+>/introspect/<.*>",
                json!([{"handler": "oauth2_introspection", "config": {
                    "cache": {"enabled": false},
                    "retry": {"give_up_after": "1s"}
                }}]),
                json!({"handler": "allow"}),
                subject_headers(),
            ),
            good: bearer(INTROSPECTED),
            bad: bearer(INACTIVE),
            // No answer to judge: the filter denies (500, as Oathkeeper).
            good_while_failing: &[500],
            status_only: false,
        },
        Endpoint {
            name: "check session",
            path: "/sessions/whoami",
            request: "/session/x",
            rule: rule(
                "session",
                "http://<[^/]+>/session/<.*>",
                json!([{"handler": "cookie_session", "config": {
                    "check_session_url": format!("{AUTH_ORIGIN}/sessions/whoami"),
                    "preserve_path": true,
                    "subject_from": "identity.id",
                    "timeout": "1s"
                }}]),
                json!({"handler": "allow"}),
                subject_headers(),
            ),
            good: vec![("cookie".into(), "sid=good".into())],
            bad: vec![("cookie".into(), "sid=bad".into())],
            // Unreachable or too slow: not authenticated (401); an answer that is no session
            // (garbage, 10 MiB of it): 500.
            good_while_failing: &[401, 500],
            status_only: false,
        },
        Endpoint {
            name: "remote authorizer",
            path: "/remote",
            request: "/remote/x",
            rule: rule(
                "remote",
                "http://<[^/]+>/remote/<.*>",
                json!([{"handler": "anonymous", "config": {"subject": "guest"}}]),
                json!({"handler": "remote", "config": {
                    "remote": format!("{AUTH_ORIGIN}/remote"),
                    "headers": {"X-Decision": "{{ .MatchContext.Header.Get \"X-Decision\" }}"},
                    "retry": {"give_up_after": "1s"}
                }}),
                subject_headers(),
            ),
            good: vec![("x-decision".into(), "allow".into())],
            bad: vec![("x-decision".into(), "deny".into())],
            good_while_failing: &[200, 500],
            status_only: true,
        },
        Endpoint {
            name: "hydrator",
            path: "/hydrate",
            request: "/hydrated/x",
            rule: rule(
                "hydrated",
                "http://<[^/]+>/hydrated/<.*>",
                json!([{"handler": "jwt", "config": {"jwks_ttl": "1s"}}]),
                json!({"handler": "allow"}),
                json!([
                    {"handler": "hydrator", "config": {"api": {
                        "url": format!("{AUTH_ORIGIN}/hydrate"),
                        "retry": {"give_up_after": "1s", "max_delay": "100ms"}
                    }}},
                    {"handler": "header", "config": {"headers": {
                        "X-Tenant": "{{ print .Extra.tenant }}"
                    }}}
                ]),
            ),
            good: bearer(&token),
            bad: bearer(&forged),
            // The session cannot be completed: the request is refused (500), never sent on
            // without what the hydrator would have added.
            good_while_failing: &[500],
            status_only: false,
        },
    ]
}

/// What the check-session, remote and hydrator endpoints answer when no fault is injected.
fn serve_callout_endpoints(auth: &portcullis_e2e::AuthServer) {
    auth.set_handler("/sessions/whoami", |r| {
        if r.header("cookie") == Some("sid=good") {
            (200, json!({"identity": {"id": "alice"}}), Duration::ZERO)
        } else {
            (401, json!({"error": "no session"}), Duration::ZERO)
        }
    });
    auth.set_handler("/remote", |r| {
        let status = if r.header("x-decision") == Some("allow") {
            200
        } else {
            403
        };
        (status, json!({}), Duration::ZERO)
    });
    auth.set_handler("/hydrate", |r| {
        let mut session = r.json();
        session["extra"]["tenant"] = json!("t1");
        (200, session, Duration::ZERO)
    });
}

/// A fault that still answers 200 (a body the handler cannot use).
fn answers_200(fault: &str) -> bool {
    fault == "garbage" || fault == "10 MiB"
}

fn status(stack: &Stack, e: &Endpoint, creds: &[(String, String)]) -> u16 {
    let headers: Vec<(&str, &str)> = creds
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    stack.get(e.request, &headers).status
}

/// Decisions while the endpoints fail: never an allow for a bad credential.
fn check_decisions(stack: &Stack, endpoints: &[Endpoint], fault: &str) {
    for e in endpoints {
        if e.status_only && answers_200(fault) {
            continue;
        }
        for _ in 0..3 {
            let bad = status(stack, e, &e.bad);
            assert!(
                bad == 401 || bad == 403 || bad == 500,
                "{fault} on {}: a bad credential got {bad}\n{}",
                e.name,
                stack.envoy.log_tail(30)
            );
            let good = status(stack, e, &e.good);
            assert!(
                e.good_while_failing.contains(&good),
                "{fault} on {}: the good credential got {good}, expected one of {:?}\n{}",
                e.name,
                e.good_while_failing,
                stack.envoy.log_tail(30)
            );
        }
    }
}

/// The filter has run into the fault: its failure counters moved past where they were.
fn wait_for_failures(stack: &Stack, endpoints: &[Endpoint], before: u64, fault: &str) {
    stack.wait_until(
        Duration::from_secs(60),
        &format!("{fault}: JWKS refresh failures"),
        || {
            // Requests keep the keys' refresh due; each failure is counted.
            let _ = status(stack, &endpoints[0], &endpoints[0].good);
            stack.metric("jwks_fetch_failures") >= before + 2
        },
    );
}

fn recover(stack: &Stack, endpoints: &[Endpoint], fault: &str) {
    let fetched = stack.metric("jwks_fetches");
    stack.wait_until(
        Duration::from_secs(60),
        &format!("recovery from {fault}"),
        || {
            endpoints.iter().all(|e| status(stack, e, &e.good) == 200)
                && stack.metric("jwks_fetches") > fetched
        },
    );
    for e in endpoints {
        let bad = status(stack, e, &e.bad);
        assert!(
            bad == 401 || bad == 403,
            "{}: bad credential after recovery got {bad}",
            e.name
        );
    }
}

#[test]
fn failing_endpoints_never_open_the_filter_and_it_recovers_by_itself() {
    let endpoints = endpoints();
    let rules = Value::Array(endpoints.iter().map(|e| e.rule.clone()).collect()).to_string();
    let stack = Stack::start_with(|auth| {
        let rules = rules.replace(AUTH_ORIGIN, &auth.origin());
        let mut c = config(auth, serde_json::from_str(&rules).expect("rules"));
        c["authenticators"]["cookie_session"] = json!({"enabled": true});
        c["authorizers"]["remote"] = json!({"enabled": true});
        c["mutators"]["hydrator"] = json!({"enabled": true});
        c
    });
    serve_callout_endpoints(&stack.auth);
    stack
        .auth
        .set_introspection(INTROSPECTED, json!({"active": true, "sub": "svc"}));
    stack
        .auth
        .set_introspection(INACTIVE, json!({"active": false}));
    for e in &endpoints {
        assert_eq!(
            status(&stack, e, &e.good),
            200,
            "{} before any fault; it received {:?}\n{}",
            e.name,
            stack.auth.requests(e.path),
            stack.envoy.log_tail(20)
        );
        let bad = status(&stack, e, &e.bad);
        assert!(
            bad == 401 || bad == 403,
            "{}: bad credential got {bad}",
            e.name
        );
    }
    // The hydrator's answer reached the upstream.
    let hydrated = stack.get("/hydrated/x", &[("authorization", &endpoints[4].good[0].1)]);
    assert_eq!(hydrated.echo().header("x-tenant"), Some("t1"));
    let memory = || {
        (
            stack.envoy.stat("server.memory_allocated").unwrap_or(0),
            stack.envoy.rss_bytes().unwrap_or(0),
        )
    };
    let baseline = memory();

    let faults: Vec<(&str, Option<Fault>)> = vec![
        ("down", None),
        (
            "slow past the timeout",
            Some(Fault::Slow(Duration::from_secs(7))),
        ),
        ("garbage", Some(Fault::Garbage)),
        ("10 MiB", Some(Fault::Huge(10 << 20))),
    ];
    let mut peak = baseline;
    for (name, fault) in &faults {
        let before = stack.metric("jwks_fetch_failures");
        match fault {
            None => stack.auth.down(),
            Some(f) => {
                for e in &endpoints {
                    stack.auth.set_fault(e.path, Some(f.clone()));
                }
            }
        }
        wait_for_failures(&stack, &endpoints, before, name);
        check_decisions(&stack, &endpoints, name);
        let now = memory();
        peak = (peak.0.max(now.0), peak.1.max(now.1));
        match fault {
            None => stack.auth.up(),
            Some(_) => {
                for e in &endpoints {
                    stack.auth.set_fault(e.path, None);
                }
            }
        }
        recover(&stack, &endpoints, name);
    }
    // Several 10 MiB answers were fetched and dropped: Envoy holds no more than a few of them.
    let end = memory();
    eprintln!(
        "envoy memory: allocated {} -> peak {} -> end {} MiB; rss {} -> peak {} -> end {} MiB",
        baseline.0 >> 20,
        peak.0 >> 20,
        end.0 >> 20,
        baseline.1 >> 20,
        peak.1 >> 20,
        end.1 >> 20
    );
    const BOUND: u64 = 96 << 20;
    assert!(
        end.0 < baseline.0 + BOUND && end.1 < baseline.1 + BOUND,
        "Envoy memory grew by more than {} MiB: {baseline:?} -> {end:?}",
        BOUND >> 20
    );
}
