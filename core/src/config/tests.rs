use super::*;
use serde_json::json;

fn base(rules: Value) -> Value {
    json!({
        "authenticators": {
            "noop": {"enabled": true},
            "anonymous": {"enabled": true, "config": {"subject": "guest"}},
            "jwt": {"enabled": true, "config": {"jwks_urls": ["http://auth.local:4444/.well-known/jwks.json"], "scope_strategy": "wildcard"}},
            "oauth2_introspection": {"enabled": true, "config": {"introspection_url": "http://auth.local:4445/admin/oauth2/introspect"}},
            "cookie_session": {"enabled": false}
        },
        "authorizers": {"allow": {"enabled": true}, "deny": {"enabled": true}},
        "mutators": {"noop": {"enabled": true}, "header": {"enabled": true, "config": {"headers": {}}}},
        "errors": {"fallback": ["json"], "handlers": {"json": {"enabled": true}}},
        "clusters": {"http://auth.local:4444": "auth_public"},
        "rules": rules
    })
}

fn rule(id: &str, url: &str, authn: &str) -> Value {
    json!({
        "id": id,
        "match": {"url": url, "methods": ["GET"]},
        "authenticators": [{"handler": authn}],
        "authorizer": {"handler": "allow"},
        "mutators": [{"handler": "noop"}]
    })
}

fn compile(v: Value) -> Result<Engine, ConfigErrors> {
    Engine::from_json(v.to_string().as_bytes())
}

fn errors(v: Value) -> Vec<ConfigError> {
    match compile(v) {
        Ok(_) => panic!("configuration should have been rejected"),
        Err(e) => e.0,
    }
}

#[test]
fn compiles_a_valid_configuration() {
    let engine = compile(base(json!([
        rule("a", "http://svc/a", "noop"),
        rule("b", "http://svc/b", "jwt"),
        rule("c", "http://svc/c", "oauth2_introspection"),
    ])))
    .unwrap();
    assert_eq!(engine.rule_count(), 3);
    let sources = engine.jwks_sources();
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].endpoint.cluster, "auth_public");
    assert_eq!(sources[0].ttl_ms, 30_000);
    assert_eq!(sources[0].max_wait_ms, 1_000);
    assert_eq!(sources[0].max_stale_ms, DEFAULT_JWKS_MAX_STALE_MS);
}

#[test]
fn jwks_max_stale_is_configurable_and_checked() {
    let mut cfg = base(json!([rule("b", "http://svc/b", "jwt")]));
    cfg["jwks_max_stale"] = json!("90s");
    let engine = compile(cfg.clone()).unwrap();
    assert_eq!(engine.jwks_sources()[0].max_stale_ms, 90_000);
    cfg["jwks_max_stale"] = json!("forever");
    let e = errors(cfg);
    assert!(
        e.iter()
            .any(|e| e.to_string().starts_with("jwks_max_stale: ")),
        "{e:?}"
    );
}

#[test]
fn invalid_json_is_rejected() {
    let e = Engine::from_json(b"{not json").unwrap_err();
    assert!(matches!(e.0[0], ConfigError::Json(_)));
}

#[test]
fn disabled_handler_is_rejected_naming_rule_and_field() {
    let mut r = rule("needs-cookie", "http://svc/x", "cookie_session");
    r["authenticators"] = json!([{"handler": "noop"}, {"handler": "cookie_session"}]);
    let errs = errors(base(json!([r])));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].rule_id(), Some("needs-cookie"));
    let msg = errs[0].to_string();
    assert!(msg.contains("authenticators[1].handler"), "{msg}");
    assert!(msg.contains("not enabled"), "{msg}");
}

#[test]
fn unknown_handler_is_rejected() {
    let mut r = rule("r", "http://svc/x", "noop");
    r["authorizer"] = json!({"handler": "keto_engine_acp_ory"});
    let msg = errors(base(json!([r])))[0].to_string();
    assert!(msg.contains("authorizer.handler"), "{msg}");
}

#[test]
fn every_bad_rule_is_reported_not_just_the_first() {
    let errs = errors(base(json!([
        rule("ok", "http://svc/ok", "noop"),
        rule("bad-regex", "http://svc/<[>", "noop"),
        rule("bad-handler", "http://svc/h", "nope"),
    ])));
    let ids: Vec<_> = errs.iter().filter_map(|e| e.rule_id()).collect();
    assert_eq!(ids, vec!["bad-regex", "bad-handler"]);
    assert!(errs[0].to_string().contains("match.url"));
}

#[test]
fn rule_config_merges_over_global_config() {
    // The global jwt config has jwks_urls; the rule only adds a scope. Merged, it is valid.
    let mut r = rule("r", "http://svc/x", "jwt");
    r["authenticators"][0]["config"] = json!({"required_scope": ["read"]});
    assert!(compile(base(json!([r]))).is_ok());
    // A rule overriding jwks_urls with a non-http URL fails on that field.
    let mut r = rule("r", "http://svc/x", "jwt");
    r["authenticators"][0]["config"] = json!({"jwks_urls": ["file:///keys.json"]});
    let msg = errors(base(json!([r])))[0].to_string();
    assert!(msg.contains("jwks_urls[0]"), "{msg}");
}

#[test]
fn unknown_handler_config_keys_are_rejected() {
    let mut r = rule("r", "http://svc/x", "jwt");
    r["authenticators"][0]["config"] = json!({"requried_scope": ["typo"]});
    let msg = errors(base(json!([r])))[0].to_string();
    assert!(msg.contains("requried_scope"), "{msg}");
}

#[test]
fn symmetric_and_unknown_algorithms_are_rejected() {
    for alg in ["HS256", "none", "XX999"] {
        let mut r = rule("r", "http://svc/x", "jwt");
        r["authenticators"][0]["config"] = json!({"allowed_algorithms": [alg]});
        let msg = errors(base(json!([r])))[0].to_string();
        assert!(msg.contains("allowed_algorithms[0]"), "{alg}: {msg}");
    }
}

#[test]
fn bad_template_and_header_name_are_rejected() {
    let mut r = rule("r", "http://svc/x", "noop");
    r["mutators"] = json!([{"handler": "header", "config": {"headers": {"X-User": "{{ if .Subject }}x{{ end }}"}}}]);
    let msg = errors(base(json!([r])))[0].to_string();
    assert!(msg.contains("mutators[0].config.headers.X-User"), "{msg}");
    let mut r = rule("r", "http://svc/x", "noop");
    r["mutators"] = json!([{"handler": "header", "config": {"headers": {"Bad Name": "x"}}}]);
    assert!(
        errors(base(json!([r])))[0]
            .to_string()
            .contains("not a valid HTTP header name")
    );
}

#[test]
fn duplicate_rule_ids_are_rejected() {
    let errs = errors(base(json!([
        rule("same", "http://svc/a", "noop"),
        rule("same", "http://svc/b", "noop")
    ])));
    assert!(errs[0].to_string().contains("duplicate rule id"));
}

#[test]
fn bad_durations_are_rejected() {
    let mut r = rule("r", "http://svc/x", "oauth2_introspection");
    r["authenticators"][0]["config"] = json!({"cache": {"enabled": true, "ttl": "soon"}});
    let msg = errors(base(json!([r])))[0].to_string();
    assert!(msg.contains("cache.ttl"), "{msg}");
    for key in ["give_up_after", "max_delay"] {
        let mut r = rule("r", "http://svc/x", "oauth2_introspection");
        r["authenticators"][0]["config"] = json!({"retry": {key: "later"}});
        let msg = errors(base(json!([r])))[0].to_string();
        assert!(
            msg.contains(&format!("authenticators[0].config.retry.{key}")),
            "{msg}"
        );
    }
}

#[test]
fn validate_rule_matches_compile() {
    let raw: FilterConfig = serde_json::from_value(base(json!([]))).unwrap();
    let good: AccessRule = serde_json::from_value(rule("g", "http://svc/<.*>", "noop")).unwrap();
    assert!(Engine::validate_rule(&raw, &good).is_ok());
    let bad: AccessRule = serde_json::from_value(rule("b", "http://svc/<(>", "noop")).unwrap();
    let e = Engine::validate_rule(&raw, &bad).unwrap_err();
    assert_eq!(e.0[0].rule_id(), Some("b"));
}

#[test]
fn merge_is_deep() {
    let mut a = json!({"x": {"y": 1, "z": 2}, "k": [1]});
    merge_json(&mut a, &json!({"x": {"y": 3}, "k": [2, 3]}));
    assert_eq!(a, json!({"x": {"y": 3, "z": 2}, "k": [2, 3]}));
}

#[test]
fn keto_engine_acp_ory_is_refused_with_the_reason() {
    let mut cfg = base(json!([{
        "id": "keto",
        "match": {"url": "http://svc/x", "methods": ["GET"]},
        "authenticators": [{"handler": "noop"}],
        "authorizer": {"handler": "keto_engine_acp_ory"},
        "mutators": [{"handler": "noop"}]
    }]));
    cfg["authorizers"]["keto_engine_acp_ory"] =
        json!({"enabled": true, "config": {"base_url": "http://keto"}});
    let e = errors(cfg);
    assert_eq!(e[0].rule_id(), Some("keto"));
    let msg = e[0].to_string();
    assert!(
        msg.contains("authorizer.handler") && msg.contains("Keto removed"),
        "{msg}"
    );
}
