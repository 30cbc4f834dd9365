//! Access rules in a real Envoy: the other authenticators, authorizers, mutators, error
//! handlers, both matching strategies, and configuration reloads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis_e2e::ConfigUpdate;
use portcullis_e2e::keys::{claims, mint_default};
use portcullis_e2e::stack::{Stack, config, rule, subject_headers};
use serde_json::json;

fn simple(id: &str, url: &str, authn: &str, authz: &str) -> serde_json::Value {
    rule(
        id,
        url,
        json!([{"handler": authn}]),
        json!({"handler": authz}),
        subject_headers(),
    )
}

#[test]
fn noop_anonymous_unauthorized_allow_deny_and_header_mutator() {
    let stack = Stack::start(json!([
        simple("noop", "http://<[^/]+>/noop", "noop", "allow"),
        rule(
            "anon",
            "http://<[^/]+>/anon",
            json!([{"handler": "anonymous", "config": {"subject": "guest"}}]),
            json!({"handler": "allow"}),
            subject_headers()
        ),
        simple("unauth", "http://<[^/]+>/unauth", "unauthorized", "allow"),
        simple("deny", "http://<[^/]+>/deny", "noop", "deny"),
        rule(
            "plain",
            "http://<[^/]+>/plain",
            json!([{"handler": "noop"}]),
            json!({"handler": "allow"}),
            json!([{"handler": "noop"}])
        ),
    ]));
    let r = stack.get("/noop", &[("x-user", "forged")]);
    stack.expect(&r, 200, "noop");
    assert_eq!(
        r.echo().header("x-user"),
        Some(""),
        "a forged X-User never reaches the upstream"
    );

    let r = stack.get("/anon", &[]);
    stack.expect(&r, 200, "anonymous");
    assert_eq!(r.echo().header("x-user"), Some("guest"));
    // anonymous is not responsible when credentials are present; nothing else is configured.
    stack.expect(
        &stack.get("/anon", &[("authorization", "Bearer x")]),
        401,
        "anonymous with credentials",
    );

    let r = stack.get("/unauth", &[]);
    stack.expect(&r, 401, "unauthorized");
    assert_eq!(
        r.json(),
        json!({"error": {"code": 401, "status": "Unauthorized", "message": "The request could not be authorized"}})
    );
    assert_eq!(r.header("content-type"), Some("application/json"));

    let r = stack.get("/deny", &[]);
    stack.expect(&r, 403, "deny");
    assert_eq!(r.json()["error"]["status"], "Forbidden");

    // The noop mutator leaves headers alone, except those other rules manage: the workload
    // trusts X-User from them, so it is never let through from the client.
    let r = stack.get("/plain", &[("x-user", "forged"), ("x-custom", "kept")]);
    stack.expect(&r, 200, "noop mutator");
    assert_eq!(r.echo().header("x-user"), None);
    assert_eq!(r.echo().header("x-custom"), Some("kept"));

    stack.expect(&stack.get("/elsewhere", &[]), 404, "no rule");
    stack.wait_until(Duration::from_secs(3), "metrics", || {
        stack.metric("denied_no_rule") >= 1
    });
    assert!(stack.metric("requests_allowed") >= 3);
}

#[test]
fn introspection_authenticator() {
    let stack = Stack::start(json!([
        rule(
            "read",
            "http://<[^/]+>/read",
            json!([{"handler": "oauth2_introspection", "config": {"required_scope": ["read"]}}]),
            json!({"handler": "allow"}),
            subject_headers()
        ),
        rule(
            "nocache",
            "http://<[^/]+>/nocache",
            json!([{"handler": "oauth2_introspection", "config": {"cache": {"enabled": false}}}]),
            json!({"handler": "allow"}),
            subject_headers()
        ),
        rule(
            "aud",
            "http://<[^/]+>/aud",
            json!([{"handler": "oauth2_introspection", "config": {"target_audience": ["api"], "trusted_issuers": ["https://issuer"]}}]),
            json!({"handler": "allow"}),
            subject_headers()
        ),
        rule(
            "chain",
            "http://<[^/]+>/chain",
            json!([{"handler": "jwt"}, {"handler": "oauth2_introspection"}]),
            json!({"handler": "allow"}),
            subject_headers()
        ),
    ]));
    let auth = &stack.auth;
    auth.set_introspection("reader", json!({"active": true, "sub": "svc-a", "client_id": "svc-a", "scope": "read write", "aud": ["api"], "iss": "https://issuer"}));
    auth.set_introspection(
        "writer",
        json!({"active": true, "sub": "svc-b", "client_id": "svc-b", "scope": "write"}),
    );
    auth.set_introspection(
        "refresh",
        json!({"active": true, "sub": "svc-c", "scope": "read", "token_use": "refresh_token"}),
    );
    auth.set_introspection(
        "expired",
        json!({"active": true, "sub": "svc-d", "scope": "read", "exp": 1000}),
    );

    let r = stack.get_with_token("/read", "reader");
    stack.expect(&r, 200, "active token with scope");
    assert_eq!(r.echo().header("x-user"), Some("svc-a"));
    assert_eq!(r.echo().header("x-client"), Some("svc-a"));
    let call = auth.requests("/introspect").pop().unwrap();
    assert_eq!(call.method, "POST");
    assert_eq!(call.form().get("token").map(String::as_str), Some("reader"));
    assert_eq!(
        call.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );

    stack.expect(
        &stack.get_with_token("/read", "writer"),
        403,
        "missing scope",
    );
    stack.expect(
        &stack.get_with_token("/read", "refresh"),
        403,
        "not an access token",
    );
    stack.expect(&stack.get_with_token("/read", "expired"), 401, "expired");
    stack.expect(&stack.get_with_token("/read", "unknown"), 401, "inactive");
    stack.expect(&stack.get("/read", &[]), 401, "no token");
    stack.expect(
        &stack.get_with_token("/aud", "reader"),
        200,
        "audience and issuer",
    );
    stack.expect(
        &stack.get_with_token("/aud", "writer"),
        403,
        "wrong audience",
    );

    // The default cache keeps a good answer a few seconds; a revoked token stops working after.
    let before = auth.hits("/introspect");
    stack.expect(&stack.get_with_token("/read", "reader"), 200, "cached");
    assert_eq!(auth.hits("/introspect"), before, "answered from the cache");
    auth.remove_introspection("reader");
    stack.wait_until(Duration::from_secs(10), "revocation to take effect", || {
        stack.get_with_token("/read", "reader").status == 401
    });

    // With the cache disabled every request is introspected.
    auth.set_introspection("live", json!({"active": true, "sub": "svc-e"}));
    let before = auth.hits("/introspect");
    stack.expect(&stack.get_with_token("/nocache", "live"), 200, "no cache 1");
    stack.expect(&stack.get_with_token("/nocache", "live"), 200, "no cache 2");
    assert_eq!(auth.hits("/introspect"), before + 2);
    auth.remove_introspection("live");
    stack.expect(
        &stack.get_with_token("/nocache", "live"),
        401,
        "revoked, no cache",
    );

    // jwt then introspection: an opaque token falls through to introspection, a JWT does not.
    auth.set_introspection("opaque", json!({"active": true, "sub": "svc-f"}));
    let r = stack.get_with_token("/chain", "opaque");
    stack.expect(&r, 200, "opaque via chain");
    assert_eq!(r.echo().header("x-user"), Some("svc-f"));
    let jwt = mint_default(Algorithm::RS256, &claims("jwt-user", &[]));
    let r = stack.get_with_token("/chain", &jwt);
    stack.expect(&r, 200, "jwt via chain");
    assert_eq!(r.echo().header("x-user"), Some("jwt-user"));

    // The endpoint failing is an error, never an allow.
    auth.set_fixed("/introspect", 500, json!({}));
    stack.expect(
        &stack.get_with_token("/nocache", "anything"),
        500,
        "introspection endpoint failing",
    );
}

#[test]
fn remote_json_authorizer() {
    let stack = Stack::start(json!([rule(
        "items",
        "http://<[^/]+>/items/<[0-9]+>",
        json!([{"handler": "anonymous", "config": {"subject": "bob"}}]),
        json!({"handler": "remote_json", "config": {
            "payload": "{\"subject\": \"{{ print .Subject }}\", \"item\": \"{{ printIndex .MatchContext.RegexpCaptureGroups 1 }}\"}",
            "forward_response_headers_to_upstream": ["X-Tenant"]
        }}),
        subject_headers(),
    )]));
    stack
        .auth
        .set_authz(|req| if req.json()["item"] == "7" { 403 } else { 200 });
    let r = stack.get("/items/42", &[]);
    stack.expect(&r, 200, "remote allows");
    let call = stack.auth.requests("/authz").pop().unwrap();
    assert_eq!(call.json(), json!({"subject": "bob", "item": "42"}));
    assert_eq!(call.header("content-type"), Some("application/json"));
    stack.expect(&stack.get("/items/7", &[]), 403, "remote denies");
    stack.auth.set_authz(|_| 503);
    stack.expect(&stack.get("/items/1", &[]), 500, "remote fails");
}

#[test]
fn error_handlers_with_when_and_fallback() {
    let errors = json!([
        {"handler": "redirect", "config": {"to": "https://login.example.com/start", "return_to_query_param": "return_to",
            "when": [{"error": ["unauthorized"], "request": {"header": {"accept": ["text/html"]}}}]}},
        {"handler": "www_authenticate", "config": {"realm": "api", "when": [{"error": ["unauthorized"]}]}}
    ]);
    let mut r = simple("web", "http://<[^/]+>/web", "unauthorized", "allow");
    r["errors"] = errors;
    let stack = Stack::start(json!([
        r,
        simple("deny", "http://<[^/]+>/deny", "noop", "deny")
    ]));

    let browser = stack.get("/web?x=1", &[("accept", "text/html")]);
    stack.expect(&browser, 302, "browser redirected");
    let location = browser.header("location").unwrap();
    assert!(
        location.starts_with("https://login.example.com/start?return_to="),
        "{location}"
    );
    assert!(location.contains("%2Fweb%3Fx%3D1"), "{location}");

    let api = stack.get("/web", &[("accept", "application/json")]);
    stack.expect(&api, 401, "API client challenged");
    assert_eq!(api.header("www-authenticate"), Some("Basic realm=\"api\""));

    // The rule's handlers only cover 401: a 403 elsewhere falls back to json.
    let denied = stack.get("/deny", &[("accept", "text/html")]);
    stack.expect(&denied, 403, "fallback json");
    assert_eq!(denied.json()["error"]["code"], 403);
}

#[test]
fn glob_matching_strategy() {
    let stack = Stack::start_with(|auth| {
        let mut c = config(
            auth,
            json!([
                simple(
                    "files",
                    "http://127.0.0.1:<*>/files/<**>",
                    "anonymous",
                    "allow"
                ),
                simple(
                    "one",
                    "http://<{127,localhost}>.0.0.1:<*>/v<[12]>/item",
                    "anonymous",
                    "deny"
                ),
                simple(
                    "single",
                    "http://127.0.0.1:<*>/one/<*>",
                    "anonymous",
                    "allow"
                ),
            ]),
        );
        c["access_rules"] = json!({"matching_strategy": "glob"});
        c
    });
    stack.expect(&stack.get("/files/a/b/c.txt", &[]), 200, "** crosses /");
    stack.expect(&stack.get("/v1/item", &[]), 403, "class");
    stack.expect(&stack.get("/v3/item", &[]), 404, "outside class");
    stack.expect(&stack.get("/one/a", &[]), 200, "* within a segment");
    stack.expect(&stack.get("/one/a/b", &[]), 404, "* does not cross /");
}

#[test]
fn regexp_matching_with_lookahead_and_path_cleaning() {
    let stack = Stack::start(json!([
        simple(
            "users",
            "http://<[^/]+>/users/<(?!admin).*>",
            "anonymous",
            "allow"
        ),
        simple("admin", "http://<[^/]+>/admin<.*>", "anonymous", "deny"),
        simple("a", "http://<[^/]+>/dup/<.*>", "anonymous", "allow"),
        simple("b", "http://<[^/]+>/dup/x<.*>", "anonymous", "allow"),
    ]));
    stack.expect(&stack.get("/users/alice", &[]), 200, "lookahead passes");
    stack.expect(
        &stack.get("/users/admin", &[]),
        404,
        "lookahead excludes admin",
    );
    // (the client resolves the dot segment; raw spellings are in request_identity.rs)
    stack.expect(
        &stack.get("/users/../admin/x", &[]),
        403,
        "traversal lands on admin",
    );
    stack.expect(
        &stack.get("/dup/xyz", &[]),
        500,
        "overlapping rules fail closed",
    );
    stack.expect(&stack.get("/dup/abc", &[]), 200, "only one rule");
}

#[test]
fn config_reload_changes_the_decision_and_bad_config_keeps_the_last_good_one() {
    let open = json!([simple("r", "http://<[^/]+>/<.*>", "anonymous", "allow")]);
    let closed = json!([simple("r", "http://<[^/]+>/<.*>", "anonymous", "deny")]);
    let stack = Stack::start(open);
    stack.expect(&stack.get("/x", &[]), 200, "before reload");

    assert_eq!(
        stack.envoy.set_filter_json(&config(&stack.auth, closed)),
        ConfigUpdate::Applied
    );
    stack.wait_until(Duration::from_secs(5), "reload to deny", || {
        stack.get("/x", &[]).status == 403
    });

    // Broken configurations are rejected by name and the last good one stays in force.
    let mut bad = config(
        &stack.auth,
        json!([simple("broken", "http://<[^/]+>/<(>", "anonymous", "allow")]),
    );
    assert_eq!(stack.envoy.set_filter_json(&bad), ConfigUpdate::Rejected);
    bad["authenticators"]["anonymous"]["enabled"] = json!(false);
    bad["rules"] = json!([simple("r", "http://<[^/]+>/<.*>", "anonymous", "allow")]);
    assert_eq!(stack.envoy.set_filter_json(&bad), ConfigUpdate::Rejected);
    assert_eq!(
        stack.envoy.set_filter_config("{not json"),
        ConfigUpdate::Rejected
    );
    // Each rejection was counted before `set_filter_json` returned, and a rejected
    // configuration never reaches the workers: no wait is needed before asking.
    for _ in 0..5 {
        stack.expect(&stack.get("/x", &[]), 403, "still the last good config");
    }
    let log = stack.envoy.log_tail(200);
    assert!(log.contains("rule \"broken\": match.url"), "{log}");
}

#[test]
fn without_a_good_configuration_everything_is_denied() {
    let upstream = portcullis_e2e::Upstream::start();
    let envoy = portcullis_e2e::Envoy::builder(upstream.port())
        .wasm(
            portcullis_e2e::paths::filter_wasm(),
            "{\"rules\": [{\"id\": \"x\"}]}",
        )
        .start();
    let status = portcullis_e2e::client()
        .get(envoy.url("/anything"))
        .send()
        .unwrap()
        .status();
    assert!(status.is_server_error(), "got {status}");
}

#[test]
fn a_header_value_that_is_not_utf8_is_evaluated_and_traps_nothing() {
    // HTTP/1 allows obs-text bytes in values; the SDK's header reader panics on them, which
    // would trap the VM and stop every later request.
    let stack = Stack::start(json!([simple(
        "noop",
        "http://<[^/]+>/noop",
        "noop",
        "allow"
    )]));
    let latin1 = reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap();
    for _ in 0..3 {
        let r = portcullis_e2e::client()
            .get(stack.envoy.url("/noop"))
            .header("x-latin1", latin1.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", stack.envoy.log_tail(20));
    }
    stack.expect(&stack.get("/noop", &[]), 200, "a plain request afterwards");
}
