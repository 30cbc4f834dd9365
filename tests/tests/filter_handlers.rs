//! Handler holes closed in issue 14, each in a real Envoy: client text injected into
//! `remote_json` payloads, introspection answers reused across differently shaped calls, keys
//! kept after the issuer dropped them, and JOSE headers the filter does not implement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis_e2e::keys::{self, claims, mint_default, mint_with_header};
use portcullis_e2e::stack::{Stack, config, rule, subject_headers};
use serde_json::{Value, json};

/// Sends `request_head` (request line and headers, without the final blank line) to Envoy as
/// written, so the target can hold bytes an HTTP client library would percent-encode.
/// Returns the status and the body.
fn raw(stack: &Stack, request_head: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", stack.envoy.port())).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!("{request_head}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The method, a capture group, the URL (query included) and a header, each inside a string.
const PAYLOAD: &str = r#"{"action": "{{ .MatchContext.Method }}", "doc": "{{ printIndex .MatchContext.RegexpCaptureGroups 1 }}", "url": "{{ .MatchContext.URL }}", "trace": "{{ .MatchContext.Header.Get "X-Trace" }}"}"#;

#[test]
fn remote_json_payload_values_cannot_add_members() {
    let stack = Stack::start(json!([{
        "id": "docs",
        "match": {"url": "http://<[^/]+>/docs/<.*>", "methods": ["GET", "DELETE"]},
        "authenticators": [{"handler": "anonymous"}],
        "authorizer": {"handler": "remote_json", "config": {"payload": PAYLOAD}},
        "mutators": [{"handler": "noop"}]
    }]));
    // The authorizer allows reads only, and reads the payload as a last-wins JSON parser does
    // (a repeated `action` member overrides the first).
    stack.auth.set_authz(|req| {
        let action = req.json()["action"].as_str().unwrap_or("").to_lowercase();
        if action == "get" || action == "read" {
            200
        } else {
            403
        }
    });
    let host = "Host: docs.test";
    let (status, _) = raw(&stack, &format!("GET /docs/1 HTTP/1.1\r\n{host}"));
    assert_eq!(status, 200, "a plain read");
    let (status, _) = raw(&stack, &format!("DELETE /docs/1 HTTP/1.1\r\n{host}"));
    assert_eq!(status, 403, "a plain delete");

    // The query, a header and a capture group each try to close their string and append
    // `"action":"read"`; JSON escaping keeps each inside its own string.
    let attempts = [
        (
            "query",
            format!("DELETE /docs/1?x=\",\"action\":\"read HTTP/1.1\r\n{host}"),
        ),
        (
            "query with backslash",
            format!("DELETE /docs/1?x=\\\",\"action\":\"read HTTP/1.1\r\n{host}"),
        ),
        (
            "header",
            format!("DELETE /docs/1 HTTP/1.1\r\n{host}\r\nX-Trace: \",\"action\":\"read"),
        ),
        (
            "capture",
            format!("DELETE /docs/report%22,%22action%22:%22read HTTP/1.1\r\n{host}"),
        ),
        (
            "capture with %5C",
            format!("DELETE /docs/r%5C%22,%22action%22:%22read HTTP/1.1\r\n{host}"),
        ),
        (
            "U+2028 in the header",
            format!("DELETE /docs/1 HTTP/1.1\r\n{host}\r\nX-Trace: a\u{2028}\",\"action\":\"read"),
        ),
    ];
    for (what, request) in attempts {
        stack.auth.clear_requests();
        let (status, body) = raw(&stack, &request);
        assert_ne!(
            status, 200,
            "{what}: the injected action was obeyed: {body}"
        );
        for call in stack.auth.requests("/authz") {
            let payload: Value = serde_json::from_str(&call.body)
                .unwrap_or_else(|e| panic!("{what}: payload is not JSON ({e}): {}", call.body));
            assert_eq!(payload["action"], "DELETE", "{what}: {}", call.body);
            assert!(
                payload["doc"] == "1" || payload["doc"].as_str().unwrap().contains("action"),
                "{what}: the capture is the path after /docs/: {}",
                call.body
            );
            assert_eq!(
                call.body.matches("\"action\":").count(),
                1,
                "{what}: a second action member: {}",
                call.body
            );
            assert_eq!(
                payload.as_object().unwrap().len(),
                4,
                "{what}: {}",
                call.body
            );
        }
        // Requests with a plain target reach the authorizer: its answer is what denied them.
        if what == "query" || what == "header" {
            assert_eq!(status, 403, "{what}");
            assert_eq!(stack.auth.hits("/authz"), 1, "{what}");
        }
    }
}

/// Resource servers `a` and `b` share an introspection endpoint that answers by the header each
/// sends: `token-a` is good for `a` only. An answer cached at `a` must not open `b`.
#[test]
fn introspection_answers_are_not_shared_across_differently_shaped_calls() {
    let introspect = |cfg: Value| json!([{"handler": "oauth2_introspection", "config": cfg}]);
    let stack = Stack::start(json!([
        rule(
            "rs-a",
            "http://<[^/]+>/a",
            introspect(json!({"introspection_request_headers": {"X-Resource-Server": "a"}})),
            json!({"handler": "allow"}),
            subject_headers()
        ),
        rule(
            "rs-b",
            "http://<[^/]+>/b",
            introspect(json!({"introspection_request_headers": {"X-Resource-Server": "b"}})),
            json!({"handler": "allow"}),
            subject_headers()
        ),
        rule(
            "two-scopes",
            "http://<[^/]+>/scopes",
            introspect(json!({"required_scope": ["a", "b"]})),
            json!({"handler": "allow"}),
            subject_headers()
        ),
        rule(
            "one-scope",
            "http://<[^/]+>/scope",
            introspect(json!({"required_scope": ["a b"]})),
            json!({"handler": "allow"}),
            subject_headers()
        ),
        rule(
            "host",
            "http://<[^/]+>/host",
            introspect(json!({"preserve_host": true})),
            json!({"handler": "allow"}),
            subject_headers()
        ),
    ]));
    stack.auth.set_introspection_fn(|req| {
        let token = req.form().get("token").cloned().unwrap_or_default();
        let active = match token.as_str() {
            "token-a" => req.header("x-resource-server") == Some("a"),
            "token-host" => req.header("x-forwarded-host") == Some("a.test"),
            "token-scope" => true,
            _ => false,
        };
        if active {
            json!({"active": true, "sub": token, "scope": "a b"})
        } else {
            json!({"active": false})
        }
    });
    stack.expect(&stack.get_with_token("/b", "token-a"), 401, "token a at b");
    stack.expect(&stack.get_with_token("/a", "token-a"), 200, "token a at a");
    stack.expect(
        &stack.get_with_token("/a", "token-a"),
        200,
        "token a at a again",
    );
    stack.expect(
        &stack.get_with_token("/b", "token-a"),
        401,
        "token a at b after a success at a",
    );

    stack.expect(
        &stack.get_with_token("/scopes", "token-scope"),
        200,
        "scopes a and b",
    );
    stack.expect(
        &stack.get_with_token("/scope", "token-scope"),
        403,
        "the one scope `a b` after a success with scopes a and b",
    );

    let at = |host: &str| {
        stack.get(
            "/host",
            &[("host", host), ("authorization", "Bearer token-host")],
        )
    };
    stack.expect(&at("a.test"), 200, "preserve_host at a.test");
    stack.expect(&at("b.test"), 401, "preserve_host at b.test after a.test");
    let hosts: Vec<String> = stack
        .auth
        .requests("/introspect")
        .iter()
        .filter_map(|r| r.header("x-forwarded-host").map(str::to_string))
        .collect();
    assert_eq!(hosts, ["a.test", "b.test"], "each host introspected once");
}

fn jwt_rule(id: &str, path: &str, jwt_config: Value) -> Value {
    rule(
        id,
        &format!("http://<[^/]+>{path}"),
        json!([{"handler": "jwt", "config": jwt_config}]),
        json!({"handler": "allow"}),
        subject_headers(),
    )
}

/// The issuer publishes an empty key set: its old keys stop verifying at the next refresh.
#[test]
fn an_empty_jwks_replaces_the_keys() {
    let stack = Stack::start(json!([jwt_rule("j", "/j", json!({"jwks_ttl": "1s"}))]));
    let token = mint_default(Algorithm::RS256, &claims("alice", &[]));
    stack.expect(&stack.get_with_token("/j", &token), 200, "before rotation");
    stack.auth.set_jwks(json!({"keys": []}));
    stack.wait_until(
        Duration::from_secs(30),
        "the empty key set to replace the keys",
        || stack.get_with_token("/j", &token).status == 401,
    );
    stack.auth.set_jwks(keys::keys().jwks());
    stack.wait_until(Duration::from_secs(30), "the keys to come back", || {
        stack.get_with_token("/j", &token).status == 200
    });
}

/// The JWKS endpoint answers 404 from now on: keys serve for `jwks_max_stale` past their TTL,
/// then their tokens are refused (fail closed) until a fetch succeeds again.
#[test]
fn keys_that_cannot_be_refreshed_expire_after_jwks_max_stale() {
    let stack = Stack::start_with(|auth| {
        let mut c = config(
            auth,
            json!([jwt_rule("j", "/j", json!({"jwks_ttl": "1s"}))]),
        );
        c["jwks_max_stale"] = json!("2s");
        c
    });
    let token = mint_default(Algorithm::RS256, &claims("alice", &[]));
    stack.expect(&stack.get_with_token("/j", &token), 200, "fresh keys");
    stack.auth.fail_jwks(404);
    stack.wait_until(
        Duration::from_secs(30),
        "stale keys to stop serving",
        || stack.get_with_token("/j", &token).status == 401,
    );
    stack.wait_until(Duration::from_secs(5), "the expiry metric", || {
        stack.metric("jwks_expired") >= 1
    });
    stack.auth.set_jwks(keys::keys().jwks());
    stack.wait_until(Duration::from_secs(30), "the keys to come back", || {
        stack.get_with_token("/j", &token).status == 200
    });
}

#[test]
fn jose_headers_and_claims_the_filter_does_not_implement_are_refused() {
    let stack = Stack::start(json!([jwt_rule("j", "/j", json!({}))]));
    let kid = keys::keys().for_alg(Algorithm::RS256).kid.clone();
    let header = |extra: Value| {
        let mut h = json!({"alg": "RS256", "kid": kid});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let good = claims("alice", &[]);
    for typ in ["JWT", "at+jwt", "application/at+jwt", "AT+JWT"] {
        let token = mint_with_header(Algorithm::RS256, &header(json!({"typ": typ})), &good);
        stack.expect(&stack.get_with_token("/j", &token), 200, typ);
    }
    let token = mint_with_header(Algorithm::RS256, &header(json!({})), &good);
    stack.expect(&stack.get_with_token("/j", &token), 200, "no typ");

    let with_claim = |name: &str, v: Value| {
        let mut c = good.clone();
        c[name] = v;
        c
    };
    let cases = [
        (
            "crit exp",
            header(json!({"crit": ["exp"], "exp": 1})),
            good.clone(),
        ),
        ("crit empty", header(json!({"crit": []})), good.clone()),
        ("crit null", header(json!({"crit": null})), good.clone()),
        (
            "b64 false",
            header(json!({"b64": false, "crit": ["b64"]})),
            good.clone(),
        ),
        ("b64 alone", header(json!({"b64": true})), good.clone()),
        ("zip", header(json!({"zip": "DEF"})), good.clone()),
        ("typ JOSE", header(json!({"typ": "JOSE"})), good.clone()),
        (
            "typ dpop+jwt",
            header(json!({"typ": "dpop+jwt"})),
            good.clone(),
        ),
        (
            "typ logout+jwt",
            header(json!({"typ": "logout+jwt"})),
            good.clone(),
        ),
        ("sub number", header(json!({})), with_claim("sub", json!(5))),
        (
            "iss array",
            header(json!({})),
            with_claim("iss", json!([keys::ISSUER])),
        ),
        ("jti number", header(json!({})), with_claim("jti", json!(1))),
        (
            "exp string",
            header(json!({})),
            with_claim("exp", json!((keys::now() + 600).to_string())),
        ),
        (
            "aud with a number",
            header(json!({})),
            with_claim("aud", json!([keys::AUDIENCE, 1])),
        ),
    ];
    for (what, h, c) in cases {
        let token = mint_with_header(Algorithm::RS256, &h, &c);
        let reply = stack.get_with_token("/j", &token);
        stack.expect(&reply, 401, what);
    }
}
