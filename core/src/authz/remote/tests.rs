use super::*;
use crate::config::HandlerSection;
use serde_json::json;

fn compile(config: Value) -> Result<RemoteAuthorizer, ConfigError> {
    let clusters = BTreeMap::from([("http://authz.local".to_string(), "authz".to_string())]);
    let none = BTreeMap::<String, HandlerSection>::new();
    let globals = Globals {
        clusters: &clusters,
        authenticators: &none,
        authorizers: &none,
        mutators: &none,
    };
    RemoteAuthorizer::compile(&globals, "r", "authorizer", config)
}

#[test]
fn posts_body_content_type_and_rendered_headers() {
    let a = compile(json!({
        "remote": "http://authz.local/check",
        "headers": {"X-Subject": "{{ print .Subject }}", "X-Empty": "{{ print .Extra.none }}"},
    }))
    .unwrap();
    assert_eq!(a.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    let req = Request::new(
        "PUT",
        "http",
        "svc",
        "/x",
        [
            ("content-type", "text/plain"),
            ("authorization", "Bearer t"),
        ],
    );
    let session = Session {
        subject: "alice\r\nx-evil: 1".into(),
        ..Default::default()
    };
    let AuthzStep::Callout(c) = a.authorize(&req, &session, b"hello") else {
        panic!("expected a callout")
    };
    assert_eq!((c.method, c.body.as_slice()), ("POST", &b"hello"[..]));
    assert_eq!(c.endpoint.cluster, "authz");
    assert_eq!(
        c.headers,
        vec![
            ("content-type".to_string(), "text/plain".to_string()),
            ("authorization".to_string(), "Bearer t".to_string()),
            ("x-subject".to_string(), "alice  x-evil: 1".to_string()),
        ]
    );
}

#[test]
fn answers_map_to_oathkeeper_statuses() {
    let a = compile(json!({"remote": "http://authz.local/check", "forward_response_headers_to_upstream": ["X-Id"]}))
        .unwrap();
    let resp = |status| CalloutResponse {
        status,
        headers: vec![
            ("x-id".into(), "42".into()),
            ("x-other".into(), "no".into()),
        ],
        body: Vec::new(),
    };
    match a.digest(Some(&resp(200))) {
        AuthzStep::Allow { forward } => assert_eq!(forward, vec![("x-id".into(), "42".into())]),
        other => panic!("{other:?}"),
    }
    let denied = |r: Option<&CalloutResponse>| match a.digest(r) {
        AuthzStep::Deny(e) => e.kind.status(),
        other => panic!("{other:?}"),
    };
    assert_eq!(denied(Some(&resp(403))), 403);
    for s in [201, 401, 404, 429, 500] {
        assert_eq!(denied(Some(&resp(s))), 500, "{s}");
    }
    assert_eq!(denied(None), 500);
}

#[test]
fn config_is_checked() {
    for (cfg, field) in [
        (json!({}), "authorizer.config.remote"),
        (json!({"remote": "file:///x"}), "authorizer.config.remote"),
        (json!({"remote": "http://a/", "unknown": 1}), "unknown"),
        (
            json!({"remote": "http://a/", "max_body_bytes": 0}),
            "authorizer.config.max_body_bytes",
        ),
        (
            json!({"remote": "http://a/", "headers": {"Bad Name": "x"}}),
            "authorizer.config.headers.Bad Name",
        ),
        (
            json!({"remote": "http://a/", "headers": {"X": "{{ if }}"}}),
            "authorizer.config.headers.X",
        ),
        (
            json!({"remote": "http://a/", "retry": {"give_up_after": "x"}}),
            "authorizer.config.retry.give_up_after",
        ),
    ] {
        let e = compile(cfg.clone()).unwrap_err().to_string();
        assert!(e.contains(field), "{cfg}: {e}");
    }
    assert_eq!(
        compile(json!({"remote": "http://a/", "max_body_bytes": 10}))
            .unwrap()
            .max_body_bytes,
        10
    );
    let r = body_too_large(10);
    assert_eq!(r.status, 413);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], 413);
    assert_eq!(v["error"]["reason"], "request_body_too_large");
    let r = body_not_received(10_000);
    assert_eq!(r.status, 408);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["reason"], "request_body_not_received");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_on_headers_stop_iteration")
    );
}
