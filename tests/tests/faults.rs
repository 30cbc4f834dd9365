//! The filter's outbound endpoints failing, in a real Envoy: down, slow past the timeout,
//! answering garbage, answering 10 MiB. Under every fault nothing is allowed that should not be,
//! cached JWKS keys keep serving, Envoy's memory stays bounded, and once the endpoint is back the
//! filter recovers by itself.
//!
//! Endpoints are rows of [`endpoints`]: a handler that calls out (check session, remote,
//! hydrator) is covered by adding its row — the path it calls, a rule using it, and what a good
//! and a bad credential get while the endpoint fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jsonwebtoken::Algorithm;
use portcullis_e2e::authserver::Fault;
use portcullis_e2e::keys::{self, claims, mint_default};
use portcullis_e2e::stack::{Stack, rule, subject_headers};
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
}

const INTROSPECTED: &str = "introspected-active-token";
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
        },
    ]
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
    let stack = Stack::start(Value::Array(
        endpoints.iter().map(|e| e.rule.clone()).collect(),
    ));
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
            "{} before any fault",
            e.name
        );
    }
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
