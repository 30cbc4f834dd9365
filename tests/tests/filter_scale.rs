//! A thousand realistic rules in a real Envoy with two workers: every worker VM compiles the
//! whole set, and each decision still comes from the one rule that matches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jsonwebtoken::Algorithm;
use portcullis_e2e::keys::{self, claims, mint_default};
use portcullis_e2e::stack::{Stack, config};
use serde_json::{Value, json};

const RULES: usize = 1_000;

fn host(i: usize) -> String {
    format!("svc-{}.shop.svc.cluster.local", i % 50)
}

/// The shapes deployed rule sets use, in turn: Kyma's (`<http|https>://HOST/...`), a literal
/// host, and any host (`<[^/]+>`). Each has a `jwt` authenticator with issuer, audience and a
/// scope of its own, and a templated `header` mutator naming the rule.
fn rules() -> Value {
    let rules: Vec<Value> = (0..RULES)
        .map(|i| {
            let url = match i % 3 {
                0 => format!("<http|https>://{}/kyma/{i}/<.*>", host(i)),
                1 => format!("http://{}/literal/{i}/<[a-z0-9-]+>", host(i)),
                _ => format!("<http|https>://<[^/]+>/any/{i}<(/.*)?>"),
            };
            json!({
                "id": format!("rule-{i}"),
                "match": {"url": url, "methods": ["GET", "POST"]},
                "authenticators": [{"handler": "jwt", "config": {
                    "trusted_issuers": [keys::ISSUER],
                    "target_audience": [keys::AUDIENCE],
                    "required_scope": [format!("scope-{i}")]
                }}],
                "authorizer": {"handler": "allow"},
                "mutators": [{"handler": "header", "config": {"headers": {
                    "X-Rule": format!("rule-{i} {{{{ print .Subject }}}}")
                }}}]
            })
        })
        .collect();
    Value::Array(rules)
}

fn path(i: usize) -> String {
    match i % 3 {
        0 => format!("/kyma/{i}/items/7"),
        1 => format!("/literal/{i}/item-7"),
        _ => format!("/any/{i}/x"),
    }
}

#[test]
fn a_thousand_rules_in_two_workers_decide_right() {
    let stack = Stack::start_custom(|auth| config(auth, rules()), |b| b.concurrency(2));
    // Every seventh rule and the last: each shape, many hosts, early and late rules.
    let sample: Vec<usize> = (0..RULES).step_by(7).chain([RULES - 1]).collect();
    for &i in &sample {
        let h = host(i);
        let p = path(i);
        let own = mint_default(
            Algorithm::RS256,
            &claims(&format!("user-{i}"), &[&format!("scope-{i}")]),
        );
        let bearer = format!("Bearer {own}");
        // Each request is a new connection, so the two workers' VMs both answer.
        for _ in 0..2 {
            let r = stack.get(&p, &[("host", &h), ("authorization", &bearer)]);
            stack.expect(&r, 200, &format!("rule {i} with its scope"));
            assert_eq!(
                r.echo().header("x-rule"),
                Some(format!("rule-{i} user-{i}").as_str()),
                "rule {i}: the matching rule's mutator ran"
            );
        }
        let other = mint_default(
            Algorithm::RS256,
            &claims("eve", &[&format!("scope-{}", (i + 1) % RULES)]),
        );
        stack.expect(
            &stack.get(
                &p,
                &[("host", &h), ("authorization", &format!("Bearer {other}"))],
            ),
            401,
            &format!("rule {i} with another rule's scope"),
        );
        stack.expect(
            &stack.get(&p, &[("host", &h)]),
            401,
            &format!("rule {i} without a token"),
        );
    }
    // Literal-host rules are bound to their host; nothing matches elsewhere.
    let own = mint_default(Algorithm::RS256, &claims("user-1", &["scope-1"]));
    stack.expect(
        &stack.get(
            &path(1),
            &[
                ("host", "elsewhere.example"),
                ("authorization", &format!("Bearer {own}")),
            ],
        ),
        404,
        "a literal-host rule on another host",
    );
    stack.expect(
        &stack.get(
            &format!("/kyma/{RULES}/x"),
            &[
                ("host", &host(0)),
                ("authorization", &format!("Bearer {own}")),
            ],
        ),
        404,
        "a path no rule has",
    );
}
