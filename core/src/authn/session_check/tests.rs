use super::*;
use crate::config::HandlerSection;
use serde_json::json;

fn compile(handler: &str, config: Value) -> Result<SessionCheckAuthenticator, ConfigError> {
    let clusters = BTreeMap::from([("http://sessions.local".to_string(), "sessions".to_string())]);
    let none = BTreeMap::<String, HandlerSection>::new();
    let globals = Globals {
        clusters: &clusters,
        authenticators: &none,
        authorizers: &none,
        mutators: &none,
    };
    SessionCheckAuthenticator::compile(&globals, "r", "authenticators[0]", handler, config)
}

fn cookie_session(config: Value) -> SessionCheckAuthenticator {
    let mut c = json!({"check_session_url": "http://sessions.local/sessions/whoami?x=1"});
    crate::config::merge_json(&mut c, &config);
    compile("cookie_session", c).unwrap()
}

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    Request::new(method, "http", "app.local", path, headers.iter().copied())
}

fn ok(body: &str) -> CalloutResponse {
    CalloutResponse {
        status: 200,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn cookie_session_responsibility() {
    let any = cookie_session(json!({}));
    assert!(!any.responsible(&req("GET", "/", &[])));
    assert!(!any.responsible(&req("GET", "/", &[("cookie", "  ; =x")])));
    assert!(any.responsible(&req("GET", "/", &[("cookie", "a=1")])));
    let only = cookie_session(json!({"only": ["sid"]}));
    assert!(!only.responsible(&req("GET", "/", &[("cookie", "other=1; xsid=2")])));
    assert!(only.responsible(&req("GET", "/", &[("cookie", "other=1; sid=2")])));
    // A cookie is matched by its exact name.
    assert!(!only.responsible(&req("GET", "/", &[("cookie", "SID=2")])));
}

#[test]
fn bearer_token_responsibility_and_prefix() {
    let a = compile(
        "bearer_token",
        json!({"check_session_url": "http://sessions.local/check", "prefix": "ory_st_"}),
    )
    .unwrap();
    assert!(!a.responsible(&req("GET", "/", &[])));
    assert!(!a.responsible(&req("GET", "/", &[("authorization", "Bearer other")])));
    assert!(!a.responsible(&req("GET", "/", &[("authorization", "Basic ory_st_x")])));
    assert!(a.responsible(&req("GET", "/", &[("authorization", "bEaReR ory_st_x")])));
    let q = compile(
        "bearer_token",
        json!({"check_session_url": "http://sessions.local/check", "token_from": {"query_parameter": "t"}}),
    )
    .unwrap();
    assert!(q.responsible(&req("GET", "/?t=abc", &[])));
    assert!(!q.responsible(&req("GET", "/?t=", &[])));
}

#[test]
fn the_check_call_follows_prepare_request() {
    let a = cookie_session(json!({
        "forward_http_headers": ["X-Trace", "Authorization"],
        "additional_headers": {"X-Tenant": "t1", "Cookie": "overridden=1"},
    }));
    let r = req(
        "DELETE",
        "/api/items?page=2",
        &[
            ("cookie", "sid=s"),
            ("x-trace", "t"),
            ("x-secret", "no"),
            ("authorization", "Bearer b"),
        ],
    );
    let c = a.callout(&r).unwrap();
    assert_eq!(c.method, "DELETE");
    assert_eq!(c.endpoint.cluster, "sessions");
    // The request's path, the check URL's query (preserve_query defaults to true).
    assert_eq!(c.endpoint.path, "/api/items?x=1");
    assert!(c.body.is_empty());
    let h = |n: &str| {
        c.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h("x-trace"), Some("t"));
    assert_eq!(h("authorization"), Some("Bearer b"));
    assert_eq!(h("x-secret"), None);
    assert_eq!(h("x-tenant"), Some("t1"));
    assert_eq!(h("cookie"), Some("overridden=1"), "additional headers win");
    assert_eq!(h("x-forwarded-host"), None);

    let b = cookie_session(json!({
        "preserve_path": true, "preserve_query": false, "preserve_host": true,
        "force_method": "GET", "additional_headers": {"X-Forwarded-Host": "spoof"}
    }));
    let c = b.callout(&r).unwrap();
    assert_eq!(c.method, "GET");
    assert_eq!(c.endpoint.path, "/sessions/whoami?page=2");
    let h = |n: &str| {
        c.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        h("x-forwarded-host"),
        Some("app.local"),
        "preserve_host beats additional_headers"
    );
    assert_eq!(h("x-trace"), None, "only Cookie is forwarded by default");
    assert_eq!(h("cookie"), Some("sid=s"));
    let c = b.callout(&req("GET", "/p", &[("cookie", "a=1")])).unwrap();
    assert_eq!(
        c.endpoint.path, "/sessions/whoami",
        "no request query, none sent"
    );
}

#[test]
fn answers_are_read_with_gjson_paths() {
    let a = cookie_session(json!({"subject_from": "identity.id", "extra_from": "@this"}));
    let s = a
        .judge(Some(&ok(r#"{"identity": {"id": "u1"}, "active": true}"#)))
        .unwrap();
    assert_eq!(&*s.subject, "u1");
    assert_eq!(s.extra["active"], json!(true));
    // Oathkeeper: a missing subject is the empty subject, and a missing extra an empty one.
    let d = cookie_session(json!({}));
    let s = d.judge(Some(&ok("{}"))).unwrap();
    assert_eq!((&*s.subject, s.extra.len()), ("", 0));
    let bearer = compile(
        "bearer_token",
        json!({"check_session_url": "http://sessions.local/c"}),
    )
    .unwrap();
    assert_eq!(
        &*bearer.judge(Some(&ok(r#"{"sub": "b"}"#))).unwrap().subject,
        "b"
    );
}

#[test]
fn bad_answers_never_authenticate() {
    let a = cookie_session(json!({}));
    let status = |r: Option<&CalloutResponse>| a.judge(r).unwrap_err().kind.status();
    assert_eq!(status(None), 403, "unreachable");
    for code in [201, 204, 302, 401, 403, 429, 500] {
        let mut r = ok(r#"{"subject": "x"}"#);
        r.status = code;
        assert_eq!(status(Some(&r)), 401, "{code}");
    }
    assert_eq!(status(Some(&ok("<html>"))), 500, "garbage");
    assert_eq!(status(Some(&ok(""))), 500, "empty body");
    assert_eq!(
        status(Some(&ok(r#"{"subject": 7}"#))),
        403,
        "subject not a string"
    );
    assert_eq!(
        status(Some(&ok(r#"{"subject": "x", "extra": [1]}"#))),
        403,
        "extra not an object"
    );
}

#[test]
fn config_errors_name_the_field() {
    let url = "http://sessions.local/c";
    for (handler, cfg, field) in [
        ("cookie_session", json!({}), "check_session_url"),
        (
            "cookie_session",
            json!({"check_session_url": "ftp://x"}),
            "check_session_url",
        ),
        (
            "cookie_session",
            json!({"check_session_url": url, "subject_from": "a.*"}),
            "subject_from",
        ),
        (
            "cookie_session",
            json!({"check_session_url": url, "extra_from": "a|b"}),
            "extra_from",
        ),
        (
            "cookie_session",
            json!({"check_session_url": url, "force_method": "BREW"}),
            "force_method",
        ),
        (
            "cookie_session",
            json!({"check_session_url": url, "prefix": "x"}),
            "prefix",
        ),
        (
            "cookie_session",
            json!({"check_session_url": url, "forward_http_headers": ["bad name"]}),
            "forward_http_headers[0]",
        ),
        (
            "cookie_session",
            json!({"check_session_url": url, "additional_headers": {"X-A": "a\r\nb"}}),
            "additional_headers.X-A",
        ),
        (
            "cookie_session",
            json!({"check_session_url": url, "cache": {"enabled": true, "ttl": "soon"}}),
            "cache.ttl",
        ),
        (
            "cookie_session",
            json!({"check_session_url": url, "timeout": "never"}),
            "timeout",
        ),
        (
            "bearer_token",
            json!({"check_session_url": url, "only": ["a"]}),
            "only",
        ),
        (
            "bearer_token",
            json!({"check_session_url": url, "token_from": {"header": "a", "cookie": "b"}}),
            "token_from",
        ),
    ] {
        let e = compile(handler, cfg.clone()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("authenticators[0].config.{field}")),
            "{handler} {cfg}: {e}"
        );
    }
    assert!(
        compile(
            "cookie_session",
            json!({"check_session_url": url, "unknown": 1})
        )
        .is_err()
    );
}
