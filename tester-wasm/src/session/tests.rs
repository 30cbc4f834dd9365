use super::*;
use serde_json::{Value, json};

fn config() -> String {
    json!({
        "authenticators": {
            "anonymous": {"enabled": true},
            "jwt": {"enabled": true, "config": {"jwks_urls": ["http://auth.local/jwks.json"]}},
            "oauth2_introspection": {"enabled": true, "config": {"introspection_url": "http://auth.local/introspect"}}
        },
        "authorizers": {"allow": {"enabled": true}, "deny": {"enabled": true}},
        "mutators": {"noop": {"enabled": true}},
        "rules": [
            {"id": "open", "match": {"url": "http://api.local/open", "methods": ["GET"]},
             "authenticators": [{"handler": "anonymous"}], "authorizer": {"handler": "allow"},
             "mutators": [{"handler": "noop"}]},
            {"id": "jwt", "match": {"url": "http://api.local/jwt", "methods": ["GET"]},
             "authenticators": [{"handler": "jwt"}], "authorizer": {"handler": "allow"},
             "mutators": [{"handler": "noop"}]},
            {"id": "opaque", "match": {"url": "http://api.local/opaque", "methods": ["GET"]},
             "authenticators": [{"handler": "oauth2_introspection"}], "authorizer": {"handler": "deny"},
             "mutators": [{"handler": "noop"}]}
        ]
    })
    .to_string()
}

fn start(url: &str, token: Option<&str>) -> RunSession {
    let t = TesterSession::new(&config()).unwrap();
    assert_eq!(t.rule_count(), 3);
    let req = json!({"method": "GET", "url": url, "headers": [["X-A", "1"]], "token": token});
    t.start(&req.to_string(), 1_700_000_000.0).unwrap()
}

fn advance(run: &mut RunSession) -> Value {
    serde_json::from_str(&run.advance()).unwrap()
}

#[test]
fn allow_and_no_match_come_back_as_done_with_a_trace() {
    let mut run = start("http://api.local/open", None);
    let out = advance(&mut run);
    assert_eq!(out["need"], "done");
    assert_eq!(out["trace"]["decision"]["allowed"], true);
    assert_eq!(out["trace"]["matching"]["rule"], "open");
    let mut run = start("http://api.local/nothing", None);
    let out = advance(&mut run);
    assert_eq!(out["trace"]["decision"]["status"], 404);
    assert_eq!(out["trace"]["matching"]["outcome"], "no_match");
}

#[test]
fn keys_are_asked_for_and_a_failed_fetch_is_a_401() {
    let mut run = start("http://api.local/jwt", Some("a.b.c"));
    let out = advance(&mut run);
    // A token that is not even a JWT fails before keys are needed.
    assert_eq!(out["need"], "done");
    assert_eq!(out["trace"]["decision"]["status"], 401);
    let header = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ"; // {"alg":"RS256","kid":"k"}
    let token = format!("{header}.eyJzdWIiOiJhIn0.c2ln");
    let mut run = start("http://api.local/jwt", Some(&token));
    let out = advance(&mut run);
    assert_eq!(out["need"], "keys", "{out}");
    assert_eq!(out["urls"][0], "http://auth.local/jwks.json");
    run.keys_fetched(
        "http://auth.local/jwks.json",
        Err("refused by the control plane"),
    );
    let out = advance(&mut run);
    assert_eq!(out["need"], "done");
    assert_eq!(out["trace"]["decision"]["status"], 401);
    assert_eq!(
        out["trace"]["keys"][0]["error"],
        "refused by the control plane"
    );
}

#[test]
fn callouts_round_trip_and_are_recorded() {
    let mut run = start("http://api.local/opaque", Some("opaque-token"));
    let out = advance(&mut run);
    assert_eq!(out["need"], "callout");
    assert_eq!(out["request"]["url"], "http://auth.local/introspect");
    assert_eq!(out["request"]["method"], "POST");
    run.callout_done(Some((
        200,
        r#"[["content-type","application/json"]]"#,
        r#"{"active":true,"sub":"svc"}"#,
    )));
    let out = advance(&mut run);
    assert_eq!(out["need"], "done");
    let trace = &out["trace"];
    assert_eq!(trace["callouts"][0]["status"], 200);
    assert_eq!(trace["authenticators"][1]["subject"], "svc");
    assert_eq!(trace["authorizer"][0]["reason"], "authorizer_deny");
    assert_eq!(trace["decision"]["status"], 403);
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    assert!(TesterSession::new("{").err().unwrap().contains("JSON"));
    let t = TesterSession::new(&config()).unwrap();
    assert!(t.start("[]", 0.0).is_err());
    let err = t
        .start(r#"{"method":"GET","url":"ftp://x/"}"#, f64::NAN)
        .err()
        .unwrap();
    assert!(err.contains("ftp://x/"), "{err}");
    // An answer nobody asked for is ignored.
    let mut run = start("http://api.local/open", None);
    run.callout_done(Some((200, "not json", "")));
    assert_eq!(advance(&mut run)["trace"]["decision"]["allowed"], true);
}
