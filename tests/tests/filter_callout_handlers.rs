//! `cookie_session`, `bearer_token`, the `remote` authorizer and the `hydrator` mutator in a real
//! Envoy (issue 10), against a scripted server that records what each handler sent: allowed and
//! denied paths, not-responsible chains, their config keys, a session store or API that is down,
//! slow or answers garbage (never allowed), caches, the body bound, and config errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use portcullis_e2e::authserver::Recorded;
use portcullis_e2e::ports::free_port;
use portcullis_e2e::scripted::{Answer, Scripted};
use portcullis_e2e::stack::{Stack, config};
use portcullis_e2e::{ConfigUpdate, client};
use serde_json::{Value, json};

const SCRIPTED: &str = "scripted";
/// A cluster whose endpoint accepts no connections.
const DEAD: &str = "dead";
/// The `remote` rule's `max_body_bytes`.
const BODY_BOUND: usize = 64 * 1024;

fn header(headers: Value) -> Value {
    json!({"handler": "header", "config": {"headers": headers}})
}

fn rule(id: &str, path: &str, authn: Value, authz: Value, mutators: Value) -> Value {
    json!({
        "id": id,
        "match": {"url": format!("http://<[^/]+>{path}"), "methods": ["GET", "POST", "PUT"]},
        "authenticators": authn,
        "authorizer": authz,
        "mutators": mutators
    })
}

fn rules(dead: &str) -> Value {
    let anonymous = || json!({"handler": "anonymous", "config": {"subject": "guest"}});
    let allow = || json!({"handler": "allow"});
    json!([
        rule(
            "session",
            "/session/<.*>",
            json!([
                {"handler": "cookie_session", "config": {
                    "subject_from": "identity.id",
                    "extra_from": "@this",
                    "forward_http_headers": ["X-Trace"],
                    "additional_headers": {"X-Check": "1"},
                    "preserve_host": true,
                    "preserve_query": false,
                    "force_method": "GET",
                    "timeout": "500ms"
                }},
                {"handler": "bearer_token", "config": {"prefix": "tok_"}},
                anonymous()
            ]),
            allow(),
            json!([header(json!({
                "X-User": "{{ print .Subject }}",
                "X-Email": "{{ print .Extra.identity.traits.email }}"
            }))])
        ),
        rule(
            "cached",
            "/cached",
            json!([{"handler": "cookie_session", "config": {
                "check_session_url": format!("{}/sessions/cached", "SCRIPTED_ORIGIN"),
                "preserve_path": true,
                "subject_from": "identity.id",
                "cache": {"enabled": true, "ttl": "30s"}
            }}]),
            allow(),
            json!([header(json!({"X-User": "{{ print .Subject }}"}))])
        ),
        rule(
            "session-down",
            "/session-down",
            json!([{"handler": "cookie_session", "config": {"check_session_url": dead}}]),
            allow(),
            json!([{"handler": "noop"}])
        ),
        rule(
            "remote",
            "/remote/<.*>",
            json!([anonymous()]),
            json!({"handler": "remote", "config": {
                "headers": {
                    "X-Subject": "{{ print .Subject }}",
                    "X-Nothing": "{{ print .Extra.none }}",
                    "X-Decision": "{{ .MatchContext.Header.Get \"X-Decision\" }}"
                },
                "forward_response_headers_to_upstream": ["X-Authz-Id"],
                "max_body_bytes": BODY_BOUND
            }}),
            json!([{"handler": "noop"}])
        ),
        rule(
            "remote-down",
            "/remote-down",
            json!([anonymous()]),
            json!({"handler": "remote", "config": {"remote": dead}}),
            json!([{"handler": "noop"}])
        ),
        rule(
            "hydrator-down",
            "/hydrator-down",
            json!([anonymous()]),
            allow(),
            json!([{"handler": "hydrator", "config": {"api": {"url": dead}}}])
        ),
        rule(
            "plain",
            "/plain",
            json!([anonymous()]),
            allow(),
            json!([{"handler": "noop"}])
        ),
        rule(
            "hydrated",
            "/hydrated/<[0-9]+>",
            json!([anonymous()]),
            allow(),
            json!([
                header(json!({"X-Before": "b"})),
                {"handler": "hydrator", "config": {
                    "api": {"auth": {"basic": {"username": "hy", "password": "dra"}},
                            "retry": {"give_up_after": "500ms", "max_delay": "100ms"}},
                    "cache": {"enabled": true}
                }},
                header(json!({"X-Tenant": "{{ print .Extra.tenant }}"}))
            ])
        ),
    ])
}

/// The filter config: the stack's, plus the four handlers pointed at the scripted server.
fn filter_config(auth: &portcullis_e2e::AuthServer, scripted: &Scripted, dead_port: u16) -> Value {
    let dead = format!("http://127.0.0.1:{dead_port}/x");
    let rules = rules(&dead)
        .to_string()
        .replace("SCRIPTED_ORIGIN", &scripted.origin());
    let mut c = config(auth, serde_json::from_str(&rules).unwrap());
    c["authenticators"]["cookie_session"] = json!({"enabled": true, "config": {
        "check_session_url": scripted.url("/sessions/whoami"), "only": ["sid"]}});
    c["authenticators"]["bearer_token"] = json!({"enabled": true, "config": {
        "check_session_url": scripted.url("/tokens/check"), "preserve_path": true}});
    c["authorizers"]["remote"] =
        json!({"enabled": true, "config": {"remote": scripted.url("/authz")}});
    c["mutators"]["hydrator"] =
        json!({"enabled": true, "config": {"api": {"url": scripted.url("/hydrate")}}});
    c["clusters"][scripted.origin()] = json!(SCRIPTED);
    c["clusters"][format!("http://127.0.0.1:{dead_port}")] = json!(DEAD);
    c
}

fn start() -> (Stack, Scripted, Value) {
    let scripted = Scripted::start();
    let dead_port = free_port();
    let mut cfg = Value::Null;
    let stack = Stack::start_custom(
        |auth| {
            cfg = filter_config(auth, &scripted, dead_port);
            cfg.clone()
        },
        |b| {
            b.cluster(SCRIPTED, scripted.port())
                .cluster(DEAD, dead_port)
        },
    );
    (stack, scripted, cfg)
}

fn session_store(r: &Recorded) -> Answer {
    let cookie = r.header("cookie").unwrap_or("");
    let sid = cookie
        .split(';')
        .find_map(|c| c.trim().strip_prefix("sid="))
        .unwrap_or("");
    match sid {
        "good" | "cached-1" | "cached-2" => Answer::json(
            200,
            json!({"identity": {"id": format!("user-{sid}"), "traits": {"email": "a@example.com"}}}),
        ),
        "garbage" => Answer::raw(200, "<html>not a session</html>"),
        "numeric" => Answer::json(200, json!({"identity": {"id": 7}})),
        "slow" => {
            Answer::json(200, json!({"identity": {"id": "late"}})).after(Duration::from_secs(3))
        }
        "limited" => Answer::json(429, json!({})).header("retry-after", "1"),
        _ => Answer::json(401, json!({"error": "no session"})),
    }
}

fn post(stack: &Stack, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client()
        .post(stack.envoy.url(path))
        .timeout(Duration::from_secs(30))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", stack.envoy.log_tail(60)));
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

#[test]
fn session_check_remote_and_hydrator_callouts() {
    let (stack, scripted, cfg) = start();
    scripted.on("/session/profile", session_store);
    scripted.on("/sessions/cached", session_store);
    scripted.on("/tokens/check", |r| {
        if r.header("authorization") == Some("Bearer tok_good") {
            Answer::json(200, json!({"sub": "service-a", "extra": {"k": "v"}}))
        } else {
            Answer::json(403, json!({}))
        }
    });

    // --- cookie_session: the check call carries what the config says, and only that.
    let r = stack.get(
        "/session/profile?page=2",
        &[
            ("cookie", "sid=good; other=1"),
            ("x-trace", "t-1"),
            ("x-private", "secret"),
            ("authorization", "Basic not-forwarded"),
            ("x-user", "forged"),
        ],
    );
    stack.expect(&r, 200, "good session cookie");
    let echo = r.echo();
    assert_eq!(echo.header("x-user"), Some("user-good"), "subject_from");
    assert_eq!(
        echo.header("x-email"),
        Some("a@example.com"),
        "extra_from @this"
    );
    let calls = scripted.requests("/session/profile");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, "GET", "force_method");
    assert_eq!(
        call.query.as_deref(),
        Some("page=2"),
        "preserve_query: false"
    );
    assert_eq!(call.header("cookie"), Some("sid=good; other=1"));
    assert_eq!(call.header("x-trace"), Some("t-1"), "forward_http_headers");
    assert_eq!(call.header("x-check"), Some("1"), "additional_headers");
    assert_eq!(
        call.header("x-forwarded-host"),
        Some(format!("127.0.0.1:{}", stack.envoy.port()).as_str()),
        "preserve_host"
    );
    assert_eq!(call.header("x-private"), None, "not allowlisted");
    assert_eq!(call.header("authorization"), None, "not allowlisted");

    // Without a cache, the same cookie is checked again.
    stack.expect(
        &stack.get("/session/profile", &[("cookie", "sid=good")]),
        200,
        "again",
    );
    assert_eq!(scripted.hits("/session/profile"), 2, "no cache by default");

    // Refused, unreachable, slow, garbage or odd answers never let the request through.
    for (sid, status) in [
        ("bad", 401),
        ("limited", 401),
        ("garbage", 500),
        ("numeric", 403),
        ("slow", 401),
    ] {
        let cookie = format!("sid={sid}");
        let r = stack.get("/session/profile", &[("cookie", &cookie)]);
        stack.expect(&r, status, sid);
    }
    // Envoy answers a call it cannot make (refused, timed out) with its own 503/504: non-200.
    stack.expect(
        &stack.get("/session-down", &[("cookie", "sid=good")]),
        401,
        "session store down",
    );

    // --- not responsible: the chain moves on to bearer_token, then anonymous.
    scripted.clear();
    for (what, headers) in [
        ("no cookie", vec![]),
        ("other cookie", vec![("cookie", "xsid=good; session=good")]),
        ("cookie name in another case", vec![("cookie", "SID=good")]),
    ] {
        let r = stack.get("/session/profile", &headers);
        stack.expect(&r, 200, what);
        assert_eq!(r.echo().header("x-user"), Some("guest"), "{what}");
    }
    assert_eq!(scripted.hits("/session/profile"), 0, "nobody was asked");
    assert_eq!(scripted.hits("/tokens/check"), 0, "no token, no call");
    let r = stack.get_with_token("/session/profile", "tok_good");
    stack.expect(&r, 200, "bearer token");
    assert_eq!(
        r.echo().header("x-user"),
        Some("service-a"),
        "subject_from sub"
    );
    let calls = scripted.requests("/tokens/check");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header("authorization"), Some("Bearer tok_good"));
    // A token without the prefix, or another scheme, is not bearer_token's: anonymous.
    for auth in ["Bearer other", "Basic tok_good"] {
        let r = stack.get("/session/profile", &[("authorization", auth)]);
        // anonymous is not responsible when Authorization is present: nobody is.
        stack.expect(&r, 401, auth);
    }
    assert_eq!(
        scripted.hits("/tokens/check"),
        1,
        "prefix checked before any call"
    );
    stack.expect(
        &stack.get_with_token("/session/profile", "tok_bad"),
        401,
        "token refused",
    );

    // --- the opt-in cache: one call per credential within the TTL.
    for _ in 0..3 {
        let r = stack.get("/cached", &[("cookie", "sid=cached-1")]);
        stack.expect(&r, 200, "cached");
        assert_eq!(r.echo().header("x-user"), Some("user-cached-1"));
    }
    assert_eq!(scripted.hits("/sessions/cached"), 1, "cache hits");
    let r = stack.get("/cached", &[("cookie", "sid=cached-2")]);
    assert_eq!(r.echo().header("x-user"), Some("user-cached-2"));
    stack.expect(&stack.get("/cached", &[("cookie", "sid=bad")]), 401, "bad");
    stack.expect(&stack.get("/cached", &[("cookie", "sid=bad")]), 401, "bad");
    assert_eq!(
        scripted.hits("/sessions/cached"),
        4,
        "failures are not cached"
    );

    // --- remote: 200 allows (forwarding the listed headers), 403 denies, anything else 500.
    scripted.on("/authz", |r| match r.header("x-decision").unwrap_or("") {
        "allow" => Answer::json(200, json!({})).header("x-authz-id", "7"),
        "deny" => Answer::json(403, json!({})),
        "slow" => Answer::json(200, json!({})).after(Duration::from_secs(3)),
        _ => Answer::json(502, json!({})),
    });
    let r = stack.get(
        "/remote/doc",
        &[
            ("x-decision", "allow"),
            ("content-type", "text/plain"),
            ("authorization", "Bearer t"),
            ("x-authz-id", "forged"),
        ],
    );
    // anonymous is not responsible with an Authorization header: send the rest without it.
    stack.expect(&r, 401, "anonymous steps aside for Authorization");
    let r = stack.get(
        "/remote/doc",
        &[
            ("x-decision", "allow"),
            ("content-type", "text/plain"),
            ("x-authz-id", "forged"),
        ],
    );
    stack.expect(&r, 200, "allowed by the remote authorizer");
    assert_eq!(
        r.echo().header("x-authz-id"),
        Some("7"),
        "forwarded, forged one replaced"
    );
    let calls = scripted.requests("/authz");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "POST");
    assert_eq!(
        calls[0].body, "",
        "a request without a body posts an empty one"
    );
    assert_eq!(calls[0].header("content-type"), Some("text/plain"));
    assert_eq!(
        calls[0].header("x-subject"),
        Some("guest"),
        "templated header"
    );
    assert_eq!(calls[0].header("x-nothing"), None, "empty template skipped");
    for (decision, status) in [("deny", 403), ("boom", 500), ("slow", 500)] {
        let r = stack.get("/remote/doc", &[("x-decision", decision)]);
        stack.expect(&r, status, decision);
    }
    assert_eq!(
        stack.get("/remote-down", &[]).status,
        500,
        "authorizer down"
    );
    // An empty body ends with the headers: it is authorized like a GET.
    let (status, text) = post(
        &stack,
        "/remote/doc",
        Vec::new(),
        &[("x-decision", "allow")],
    );
    assert_eq!(status, 200, "{text}");

    // --- remote with a body: the headers wait while the filter reads it, the authorizer gets
    // exactly the client's body and content type, and only then does the request go on.
    scripted.clear();
    let doc = r#"{"doc":"a","tags":["x","y"],"n":1}"#;
    let (status, text) = post(
        &stack,
        "/remote/with-body",
        doc.into(),
        &[
            ("x-decision", "allow"),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(status, 200, "{text}");
    let echo: portcullis_e2e::Echo = serde_json::from_str(&text).unwrap();
    assert_eq!(echo.body, doc, "the upstream got the body");
    assert_eq!(echo.header("x-authz-id"), Some("7"));
    let calls = scripted.requests("/authz");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body, doc, "the authorizer got exactly the body");
    assert_eq!(calls[0].header("content-type"), Some("application/json"));
    assert_eq!(calls[0].method, "POST");

    // Denied: the upstream never saw the request, body or not.
    let (status, text) = post(
        &stack,
        "/remote/denied",
        doc.into(),
        &[("x-decision", "deny"), ("content-type", "application/json")],
    );
    assert_eq!(status, 403, "{text}");
    assert_eq!(scripted.requests("/authz")[1].body, doc);
    assert!(stack.upstream.requests("/remote/denied").is_empty());

    // A chunked body arriving in pieces is read whole before anyone is asked.
    let pieces: [&[u8]; 4] = [b"{\"part\":", b"\"one\",", b"\"two\":", b"[1,2,3]}"];
    let head = "PUT /remote/chunked HTTP/1.1\r\nhost: localhost\r\nx-decision: allow\r\ncontent-type: application/json";
    let r = portcullis_e2e::raw::http1_chunked(stack.envoy.port(), head, &pieces);
    assert_eq!(r.status, 200, "{}", r.body);
    let whole = pieces.concat();
    assert_eq!(scripted.requests("/authz")[2].body.as_bytes(), whole);
    let seen = stack.upstream.requests("/remote/chunked");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body.as_bytes(),
        whole,
        "the upstream got every piece"
    );
    let r = portcullis_e2e::raw::http1_chunked(
        stack.envoy.port(),
        &head
            .replace("/remote/chunked", "/remote/chunked-denied")
            .replace("x-decision: allow", "x-decision: deny"),
        &pieces,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(stack.upstream.requests("/remote/chunked-denied").is_empty());
    assert_eq!(scripted.hits("/authz"), 4);

    // Past the rule's bound: 413, nobody asked, nothing forwarded; at the bound: read.
    scripted.clear();
    let (status, text) = post(
        &stack,
        "/remote/too-large",
        vec![b'x'; BODY_BOUND + 1],
        &[("x-decision", "allow")],
    );
    assert_eq!(status, 413, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["reason"], "request_body_too_large", "{text}");
    let too_many: Vec<Vec<u8>> = (0..9).map(|_| vec![b'y'; BODY_BOUND / 8]).collect();
    let too_many: Vec<&[u8]> = too_many.iter().map(Vec::as_slice).collect();
    let r = portcullis_e2e::raw::http1_chunked(
        stack.envoy.port(),
        "POST /remote/too-large HTTP/1.1\r\nhost: localhost\r\nx-decision: allow",
        &too_many,
    );
    assert_eq!(r.status, 413, "chunked past the bound: {}", r.body);
    assert_eq!(scripted.hits("/authz"), 0);
    assert!(stack.upstream.requests("/remote/too-large").is_empty());
    let (status, text) = post(
        &stack,
        "/remote/at-bound",
        vec![b'x'; BODY_BOUND],
        &[("x-decision", "allow")],
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(scripted.requests("/authz")[0].body.len(), BODY_BOUND);

    // A rule without `remote` never holds the body: one larger than Envoy's buffer limit
    // (1 MiB, past which a held body is refused with 413) streams to the workload (whose own
    // limit is 2 MB).
    let big = 1536 * 1024;
    let (status, text) = post(&stack, "/plain", vec![b'y'; big], &[]);
    assert_eq!(status, 200, "{text}");
    let echo: portcullis_e2e::Echo = serde_json::from_str(&text).unwrap();
    assert_eq!(echo.body.len(), big);

    // --- hydrator: the session goes out in Oathkeeper's shape, the answer replaces it.
    scripted.on("/hydrate", |r| {
        let mut s = r.json();
        let path = s["match_context"]["url"]["Path"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let id = path.rsplit('/').next().unwrap_or("").to_owned();
        match id.as_str() {
            "13" => s["subject"] = json!("root"),
            "14" => return Answer::json(500, json!({})),
            "15" => return Answer::json(200, s).after(Duration::from_secs(3)),
            "16" => return Answer::raw(200, "garbage"),
            _ => {}
        }
        s["extra"] = json!({"tenant": format!("t-{id}")});
        s["header"] = json!({"X-Hydrated": ["yes"]});
        Answer::json(200, s)
    });
    let r = stack.get("/hydrated/42?x=1", &[("x-in", "v")]);
    stack.expect(&r, 200, "hydrated");
    let echo = r.echo();
    assert_eq!(
        echo.header("x-tenant"),
        Some("t-42"),
        "later mutators see the new extra"
    );
    assert_eq!(echo.header("x-hydrated"), Some("yes"));
    assert_eq!(
        echo.header("x-before"),
        None,
        "the answer replaced the headers"
    );
    let calls = scripted.requests("/hydrate");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(
        call.header("authorization"),
        Some("Basic aHk6ZHJh"),
        "api.auth.basic"
    );
    let sent = call.json();
    assert_eq!(sent["subject"], "guest");
    assert_eq!(sent["extra"], json!({}));
    assert_eq!(sent["header"], json!({"X-Before": ["b"]}));
    assert_eq!(sent["match_context"]["method"], "GET");
    let host = format!("127.0.0.1:{}", stack.envoy.port());
    assert_eq!(
        sent["match_context"]["regexp_capture_groups"],
        json!([host, "42"])
    );
    assert_eq!(sent["match_context"]["url"]["RawQuery"], "x=1");
    assert_eq!(sent["match_context"]["header"]["X-In"], json!(["v"]));
    // Cached: the same session is not sent twice.
    let r = stack.get("/hydrated/42?x=1", &[("x-in", "v")]);
    assert_eq!(r.echo().header("x-tenant"), Some("t-42"));
    assert_eq!(scripted.hits("/hydrate"), 1, "cache hit");
    for id in ["13", "14", "15", "16"] {
        let r = stack.get(&format!("/hydrated/{id}"), &[]);
        stack.expect(&r, 500, &format!("hydrator case {id}"));
    }
    stack.expect(&stack.get("/hydrator-down", &[]), 500, "hydrator API down");

    // --- config errors: refused naming the rule and field; the last good config stays.
    let mut bad = cfg.clone();
    let bad_rules = json!([
        rule(
            "bad-gjson",
            "/a",
            json!([{"handler": "cookie_session", "config": {"subject_from": "identity.*"}}]),
            json!({"handler": "allow"}),
            json!([{"handler": "noop"}])
        ),
        rule(
            "bad-method",
            "/b",
            json!([{"handler": "bearer_token", "config": {"force_method": "BREW"}}]),
            json!({"handler": "allow"}),
            json!([{"handler": "noop"}])
        ),
        rule(
            "keto",
            "/c",
            json!([{"handler": "noop"}]),
            json!({"handler": "keto_engine_acp_ory"}),
            json!([{"handler": "noop"}])
        ),
        rule(
            "no-api",
            "/d",
            json!([{"handler": "noop"}]),
            json!({"handler": "allow"}),
            json!([{"handler": "hydrator", "config": {"api": {"url": ""}}}])
        ),
        rule(
            "bad-remote",
            "/e",
            json!([{"handler": "noop"}]),
            json!({"handler": "remote", "config": {"headers": {"X-A": "{{ .Nope }}"}}}),
            json!([{"handler": "noop"}])
        ),
    ]);
    bad["rules"] = bad_rules;
    bad["authorizers"]["keto_engine_acp_ory"] = json!({"enabled": true});
    assert_eq!(stack.envoy.set_filter_json(&bad), ConfigUpdate::Rejected);
    let log = stack.envoy.log_tail(400);
    for needle in [
        "rule \"bad-gjson\": authenticators[0].config.subject_from",
        "rule \"bad-method\": authenticators[0].config.force_method",
        "rule \"keto\": authorizer.handler: keto_engine_acp_ory",
        "rule \"no-api\": mutators[0].config.api.url: is required",
        "rule \"bad-remote\": authorizer.config.headers.X-A",
    ] {
        assert!(log.contains(needle), "{needle} not in\n{log}");
    }
    stack.expect(
        &stack.get("/session/profile", &[("cookie", "sid=good")]),
        200,
        "the last good config still serves",
    );
}

/// A request whose body arrives while its decision is still pending (a slow authorizer) waits
/// for the decision: the body never carries it past the filter. Uses only handlers older than
/// this change, so it runs against the baseline module too.
#[test]
fn a_pending_decision_holds_the_body_back() {
    let scripted = Scripted::start();
    scripted.on("/slow-authz", |_| {
        Answer::json(403, json!({})).after(Duration::from_millis(1500))
    });
    let stack = Stack::start_custom(
        |auth| {
            let mut c = config(
                auth,
                json!([rule(
                    "slow",
                    "/upload",
                    json!([{"handler": "anonymous"}]),
                    json!({"handler": "remote_json", "config": {
                        "remote": scripted.url("/slow-authz"),
                        "payload": "{}",
                        "retry": {"give_up_after": "10s"}
                    }}),
                    json!([{"handler": "noop"}])
                )]),
            );
            c["clusters"][scripted.origin()] = json!(SCRIPTED);
            c
        },
        |b| b.cluster(SCRIPTED, scripted.port()),
    );
    let (status, body) = post(&stack, "/upload", vec![b'z'; 50_000], &[]);
    assert_eq!(
        status, 403,
        "the upstream answered before the authorizer: {body}"
    );
    assert_eq!(scripted.hits("/slow-authz"), 1);
}

/// Without the plugin's `allow_on_headers_stop_iteration` Envoy never hands the filter the body
/// of a request whose headers it holds back: a `remote` rule then refuses a request with a body
/// (408 once no byte came within the filter's 10 s), asking nobody and forwarding nothing,
/// while bodiless requests are still authorized.
#[test]
fn without_the_stop_iteration_knob_a_body_is_never_authorized_blind() {
    let scripted = Scripted::start();
    scripted.on("/authz", |_| Answer::json(200, json!({})));
    let dir = tempfile::tempdir().unwrap();
    let ecds = dir.path().join("filter.json");
    let stack = Stack::start_custom(
        |auth| {
            let mut c = config(
                auth,
                json!([rule(
                    "remote",
                    "/remote/<.*>",
                    json!([{"handler": "anonymous"}]),
                    json!({"handler": "remote", "config": {"remote": scripted.url("/authz")}}),
                    json!([{"handler": "noop"}])
                )]),
            );
            c["authorizers"]["remote"] = json!({"enabled": true});
            c["clusters"][scripted.origin()] = json!(SCRIPTED);
            let mut resource = portcullis_e2e::envoy::ecds_resource(
                &portcullis_e2e::paths::filter_wasm(),
                &c.to_string(),
            );
            let plugin = &mut resource["resources"][0]["typed_config"]["config"];
            assert!(
                plugin
                    .as_object_mut()
                    .unwrap()
                    .remove("allow_on_headers_stop_iteration")
                    .is_some(),
                "the harness sets the knob"
            );
            std::fs::write(&ecds, resource.to_string()).unwrap();
            c
        },
        |b| b.cluster(SCRIPTED, scripted.port()).ecds_file(&ecds),
    );
    stack.expect(
        &stack.get("/remote/no-body", &[]),
        200,
        "a request without a body",
    );
    let (status, text) = post(&stack, "/remote/with-body", b"{\"a\":1}".to_vec(), &[]);
    assert_eq!(status, 408, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["reason"], "request_body_not_received", "{text}");
    assert_eq!(
        scripted.hits("/authz"),
        1,
        "only the bodiless request was asked"
    );
    assert!(stack.upstream.requests("/remote/with-body").is_empty());
}
