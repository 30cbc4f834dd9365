//! The bindings as the page sees them, compiled to `wasm32-unknown-unknown` and run by
//! `wasm-bindgen-test-runner` in Node (`make tester-wasm-test`, part of `make test`): the
//! exported `Tester`/`Run` classes, JSON across the boundary, and errors as `Error` values the
//! page catches, never a trap (after one, the module keeps working).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_tester_wasm::{Run, Tester};
use serde_json::{Value, json};
use wasm_bindgen::prelude::JsError;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::wasm_bindgen_test;

const JWKS_URL: &str = "https://issuer.test/.well-known/jwks.json";
const INTROSPECT_URL: &str = "https://issuer.test/oauth2/introspect";
/// A fixed ES256 key (kid `tester-1`) and tokens it signed: `alice` with scope `read`, `bob`
/// with scope `write`; both valid from 1700000000 to 1700003600.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"tester-1","alg":"ES256","use":"sig","x":"mP7gkQti0Y77RB3eY5GmC5IN1BR2C_7EX6GrfRy05d8","y":"cprSUbTl3c4EcKvVGU4DcsFR5bgCn9NjQMAVmNmxPvU"}]}"#;
const ALICE: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6InRlc3Rlci0xIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImlzcyI6Imh0dHBzOi8vaXNzdWVyLnRlc3QvIiwic2NwIjpbInJlYWQiXSwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDB9.j8cvsEcv0__U5IP4xFT_NVolHuwENtozwzfdFxt9wi5_K3TTIvZt_u4mE5kU7C7vGD4jngsPlRH9ytpToVgOwA";
const BOB: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6InRlc3Rlci0xIiwidHlwIjoiSldUIn0.eyJzdWIiOiJib2IiLCJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0LyIsInNjcCI6WyJ3cml0ZSJdLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMH0.XBisTG25YVdZqpaZYjZGayc20jtrwArX8yN5hj-tDwZ9CeHzDoeojZfdZ1shE3wUMa5cI_aL9hxNYP_wiuYsog";
const NOW: f64 = 1_700_000_100.0;

fn config() -> String {
    let rule = |id: &str, path: &str, authn: Value, authz: &str| {
        json!({"id": id, "match": {"url": format!("https://api.test{path}"), "methods": ["GET"]},
            "authenticators": [authn], "authorizer": {"handler": authz},
            "mutators": [{"handler": "header", "config": {"headers": {"X-User": "{{ print .Subject }}"}}}]})
    };
    json!({
        "authenticators": {
            "anonymous": {"enabled": true},
            "jwt": {"enabled": true, "config": {"jwks_urls": [JWKS_URL], "scope_strategy": "exact",
                "allowed_algorithms": ["ES256"]}},
            "oauth2_introspection": {"enabled": true, "config": {"introspection_url": INTROSPECT_URL}}
        },
        "authorizers": {"allow": {"enabled": true}, "deny": {"enabled": true}},
        "mutators": {"header": {"enabled": true}},
        "rules": [
            rule("reports", "/reports", json!({"handler": "jwt", "config": {"required_scope": ["read"]}}), "allow"),
            rule("admin", "/admin", json!({"handler": "anonymous"}), "deny"),
            rule("opaque", "/opaque", json!({"handler": "oauth2_introspection"}), "allow"),
        ]
    })
    .to_string()
}

fn tester() -> Tester {
    Tester::new(&config()).unwrap_or_else(|e| panic!("{}", message(e)))
}

fn start(t: &Tester, path: &str, token: Option<&str>) -> Run {
    let req = json!({"method": "GET", "url": format!("https://api.test{path}"), "headers": [], "token": token});
    t.start(&req.to_string(), NOW)
        .unwrap_or_else(|e| panic!("{}", message(e)))
}

fn advance(run: &mut Run) -> Value {
    serde_json::from_str(&run.advance()).unwrap()
}

/// What the page's `catch (e)` gets: an `Error` with a message.
fn message(e: JsError) -> String {
    let value = JsValue::from(e);
    assert!(value.is_instance_of::<js_sys::Error>(), "{value:?}");
    String::from(js_sys::Error::from(value).message())
}

/// Runs to the end, answering the JWKS fetch with `JWKS`.
fn decide(t: &Tester, path: &str, token: Option<&str>) -> Value {
    let mut run = start(t, path, token);
    let mut out = advance(&mut run);
    if out["need"] == "keys" {
        assert_eq!(out["urls"], json!([JWKS_URL]), "{out}");
        run.keys_fetched(JWKS_URL, 200, JWKS);
        out = advance(&mut run);
    }
    assert_eq!(out["need"], "done", "{out}");
    out["trace"].clone()
}

#[wasm_bindgen_test]
fn allow_after_the_key_fetch_with_the_subject_and_headers_in_the_trace() {
    let t = tester();
    assert_eq!(t.rule_count(), 3);
    let trace = decide(&t, "/reports", Some(ALICE));
    assert_eq!(trace["decision"]["allowed"], true, "{trace}");
    assert_eq!(trace["matching"]["outcome"], "matched");
    assert_eq!(trace["matching"]["rule"], "reports");
    assert_eq!(trace["keys"][0]["url"], JWKS_URL);
    assert_eq!(trace["keys"][0]["keys"], 1, "{trace}");
    let authn = trace["authenticators"].as_array().unwrap();
    assert_eq!(authn.last().unwrap()["subject"], "alice", "{trace}");
    assert_eq!(
        trace["decision"]["set_headers"],
        json!([["x-user", "alice"]]),
        "{trace}"
    );
}

#[wasm_bindgen_test]
fn denials_carry_the_status_and_the_failing_step() {
    let t = tester();
    // No token: the only authenticator is not responsible.
    let trace = decide(&t, "/reports", None);
    assert_eq!(trace["decision"]["status"], 401, "{trace}");
    assert_eq!(trace["decision"]["allowed"], false);
    // A valid token without the required scope.
    let trace = decide(&t, "/reports", Some(BOB));
    assert_ne!(trace["decision"]["allowed"], true, "{trace}");
    let last = trace["authenticators"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["outcome"], "failed", "{trace}");
    assert!(
        last["message"].as_str().unwrap().contains("read"),
        "{trace}"
    );
    // A forged signature (alice's claims, bob's signature) is refused after the key fetch.
    let (head, _) = ALICE.rsplit_once('.').unwrap();
    let (_, sig) = BOB.rsplit_once('.').unwrap();
    let trace = decide(&t, "/reports", Some(&format!("{head}.{sig}")));
    assert_eq!(trace["decision"]["status"], 401, "{trace}");
    // The authorizer says no.
    let trace = decide(&t, "/admin", None);
    assert_eq!(trace["decision"]["status"], 403, "{trace}");
    assert_eq!(trace["authorizer"][0]["outcome"], "failed", "{trace}");
    // No rule.
    let trace = decide(&t, "/nothing", None);
    assert_eq!(trace["decision"]["status"], 404, "{trace}");
    assert_eq!(trace["matching"]["outcome"], "no_match");
    // Another method than the rule's is no match either.
    let req = json!({"method": "DELETE", "url": "https://api.test/admin", "headers": []});
    let mut run = t.start(&req.to_string(), NOW).unwrap();
    assert_eq!(advance(&mut run)["trace"]["decision"]["status"], 404);
}

#[wasm_bindgen_test]
fn a_callout_is_surfaced_then_resumed_with_the_answer() {
    let t = tester();
    let mut run = start(&t, "/opaque", Some("opaque-token"));
    let out = advance(&mut run);
    assert_eq!(out["need"], "callout", "{out}");
    assert_eq!(out["request"]["url"], INTROSPECT_URL);
    assert_eq!(out["request"]["method"], "POST");
    assert!(
        out["request"]["body"]
            .as_str()
            .unwrap()
            .contains("token=opaque-token"),
        "{out}"
    );
    run.callout_done(
        200,
        r#"[["content-type","application/json"]]"#,
        r#"{"active":true,"sub":"svc-7"}"#,
    );
    let out = advance(&mut run);
    assert_eq!(out["need"], "done", "{out}");
    let trace = &out["trace"];
    assert_eq!(trace["decision"]["allowed"], true, "{trace}");
    assert_eq!(trace["callouts"][0]["url"], INTROSPECT_URL);
    assert_eq!(trace["callouts"][0]["status"], 200);
    assert_eq!(
        trace["decision"]["set_headers"],
        json!([["x-user", "svc-7"]])
    );

    // The same callout failing (the control plane refused it) fails closed.
    let mut run = start(&t, "/opaque", Some("opaque-token"));
    assert_eq!(advance(&mut run)["need"], "callout");
    run.callout_failed();
    let out = advance(&mut run);
    assert_eq!(out["need"], "done", "{out}");
    assert_eq!(out["trace"]["decision"]["allowed"], false, "{out}");
}

#[wasm_bindgen_test]
fn bad_rules_and_requests_are_error_values_and_the_module_survives() {
    let unknown_handler = config().replace(r#""handler":"deny""#, r#""handler":"no_such_handler""#);
    assert_ne!(unknown_handler, config());
    let cases = [
        ("{", "JSON"),
        (r#"{"rules": {}}"#, "sequence"),
        (unknown_handler.as_str(), "no_such_handler"),
        (
            r#"{"rules":[{"id":"x","match":{"url":"https://a/<(>","methods":["GET"]},"authenticators":[{"handler":"noop"}],"authorizer":{"handler":"allow"},"mutators":[{"handler":"noop"}]}]}"#,
            "x",
        ),
    ];
    for (doc, needle) in cases {
        let Err(e) = Tester::new(doc) else {
            panic!("{doc} compiled");
        };
        let msg = message(e);
        assert!(!msg.is_empty() && msg.contains(needle), "{doc}: {msg}");
    }
    let t = tester();
    for req in [
        "not json",
        r#"{"method":"GET","url":"ftp://api.test/x"}"#,
        r#"{"method":"G ET","url":"https://api.test/x"}"#,
        r#"{"method":"GET","url":"https://api.test/a/../admin"}"#,
    ] {
        match t.start(req, NOW) {
            Err(e) => assert!(!message(e).is_empty(), "{req}"),
            // A non-canonical path is refused by the core as the filter refuses it.
            Ok(mut run) => {
                let out = advance(&mut run);
                assert_eq!(out["trace"]["decision"]["allowed"], false, "{req}: {out}");
            }
        }
    }
    // Answers nobody asked for are ignored; the module still decides.
    let mut run = start(&t, "/admin", None);
    run.callout_done(200, "not json", "");
    run.keys_fetched(JWKS_URL, 200, "garbage");
    assert_eq!(advance(&mut run)["trace"]["decision"]["status"], 403);
    assert_eq!(
        decide(&t, "/reports", Some(ALICE))["decision"]["allowed"],
        true
    );
}
