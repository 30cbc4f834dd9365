use super::*;
use crate::config::HandlerSection;
use std::collections::BTreeMap;

fn compile(config: Value) -> Result<Hydrator, ConfigError> {
    let clusters = BTreeMap::from([("http://api.local".to_string(), "api".to_string())]);
    let none = BTreeMap::<String, HandlerSection>::new();
    let globals = Globals {
        clusters: &clusters,
        authenticators: &none,
        authorizers: &none,
        mutators: &none,
    };
    Hydrator::compile(&globals, "r", "mutators[0]", config)
}

fn session() -> Session {
    let mut extra = Map::new();
    extra.insert("tenant".into(), json!("t1"));
    Session {
        subject: "alice".into(),
        extra: Arc::new(extra),
        header: vec![("x-user".into(), "alice".into())],
        match_context: MatchContext {
            regexp_capture_groups: vec!["7".into()],
            url: "http://app.local/items/a%20b?q=1".into(),
            method: Cow::Borrowed("GET"),
            header: vec![
                ("accept".into(), "a".into()),
                ("x-multi".into(), "1".into()),
                ("x-multi".into(), "2".into()),
            ],
        },
    }
}

#[test]
fn the_session_has_oathkeepers_shape() {
    let v = session_json(&session());
    assert_eq!(v["subject"], "alice");
    assert_eq!(v["extra"], json!({"tenant": "t1"}));
    assert_eq!(v["header"], json!({"X-User": ["alice"]}));
    let ctx = &v["match_context"];
    assert_eq!(ctx["regexp_capture_groups"], json!(["7"]));
    assert_eq!(ctx["method"], "GET");
    assert_eq!(
        ctx["header"],
        json!({"Accept": ["a"], "X-Multi": ["1", "2"]})
    );
    let url = &ctx["url"];
    assert_eq!(
        (
            &url["Scheme"],
            &url["Host"],
            &url["Path"],
            &url["RawPath"],
            &url["RawQuery"]
        ),
        (
            &json!("http"),
            &json!("app.local"),
            &json!("/items/a b"),
            &json!("/items/a%20b"),
            &json!("q=1")
        )
    );
    assert_eq!(url["User"], Value::Null);
}

#[test]
fn an_answer_replaces_the_session_but_not_the_subject() {
    let mut s = session();
    let answer = json!({
        "subject": "alice",
        "extra": {"tenant": "t2", "roles": ["a"]},
        "header": {"X-Tenant": ["t2", "ignored"]},
        "match_context": {"regexp_capture_groups": ["8"], "method": "POST",
            "url": {"Scheme": "https", "Host": "h", "Path": "/p", "RawQuery": "z=1"},
            "header": {"Accept": ["b"]}}
    });
    apply(
        &mut s,
        parse_answer(answer.to_string().as_bytes(), "alice").unwrap(),
    );
    assert_eq!(&*s.subject, "alice");
    assert_eq!(s.extra["tenant"], "t2");
    assert_eq!(s.header, vec![("x-tenant".to_string(), "t2".to_string())]);
    assert_eq!(s.match_context.url, "https://h/p?z=1");
    assert_eq!(s.match_context.method, "POST");
    assert_eq!(s.match_context.regexp_capture_groups, vec!["8".to_string()]);
    // As Oathkeeper: what the answer leaves out is gone.
    apply(
        &mut s,
        parse_answer(br#"{"subject": "alice"}"#, "alice").unwrap(),
    );
    assert!(s.extra.is_empty() && s.header.is_empty());
    assert_eq!(s.match_context, MatchContext::default());
}

#[test]
fn bad_answers_are_errors() {
    for body in [
        r#"{"subject": "mallory", "extra": {}}"#,
        r#"{"extra": {}}"#,
        r#"{"subject": "alice", "header": {"X-A": "not a list"}}"#,
        r#"{"subject": "alice", "header": {"Bad Name": ["x"]}}"#,
        r#"{"subject": "alice", "extra": []}"#,
        "not json",
    ] {
        assert!(parse_answer(body.as_bytes(), "alice").is_err(), "{body}");
    }
    let s = parse_answer(
        br#"{"subject": "alice", "header": {"X-A": ["a\r\nb"]}}"#,
        "alice",
    )
    .unwrap();
    assert_eq!(s.header[0].1, "a  b");
}

#[test]
fn config_is_checked() {
    let h = compile(json!({"api": {"url": "http://api.local/hydrate",
        "auth": {"basic": {"username": "u", "password": "p"}},
        "retry": {"give_up_after": "2s", "max_delay": "100ms"}},
        "cache": {"enabled": true}}))
    .unwrap();
    assert_eq!(h.authorization.as_deref(), Some("Basic dTpw"));
    assert_eq!((h.timeout_ms, h.cache_ms), (2_000, Some(60_000)));
    assert_eq!(h.endpoint.cluster, "api");
    let h = compile(json!({"api": {"url": "http://api.local/h"}})).unwrap();
    assert_eq!(
        (h.timeout_ms, h.cache_ms, h.authorization),
        (1_000, None, None)
    );
    for (cfg, field) in [
        (json!({}), "mutators[0].config"),
        (json!({"api": {}}), "mutators[0].config.api.url"),
        (
            json!({"api": {"url": "nope"}}),
            "mutators[0].config.api.url",
        ),
        (
            json!({"api": {"url": "http://a/", "retry": {"give_up_after": "x"}}}),
            "mutators[0].config.api.retry.give_up_after",
        ),
        (
            json!({"api": {"url": "http://a/", "retry": {"max_delay": "x"}}}),
            "mutators[0].config.api.retry.max_delay",
        ),
        (
            json!({"api": {"url": "http://a/"}, "cache": {"enabled": true, "ttl": "x"}}),
            "mutators[0].config.cache.ttl",
        ),
        (
            json!({"api": {"url": "http://a/", "auth": {"basic": {"username": "u"}}}}),
            "mutators[0].config",
        ),
    ] {
        let e = compile(cfg.clone()).unwrap_err().to_string();
        assert!(e.contains(field), "{cfg}: {e}");
    }
}

#[test]
fn the_cache_key_ignores_per_request_ids_only() {
    let h =
        compile(json!({"api": {"url": "http://api.local/h"}, "cache": {"enabled": true}})).unwrap();
    let caches = Caches::new(1);
    let with = |name: &str, value: &str| {
        let mut s = session();
        s.match_context.header.push((name.into(), value.into()));
        h.cache_key(&caches, &s)
    };
    assert_eq!(with("x-request-id", "1"), with("x-request-id", "2"));
    assert_eq!(with("traceparent", "a"), with("traceparent", "b"));
    assert_ne!(with("x-tenant", "1"), with("x-tenant", "2"));
    let mut other = session();
    other.subject = "bob".into();
    assert_ne!(
        h.cache_key(&caches, &session()),
        h.cache_key(&caches, &other)
    );
}
