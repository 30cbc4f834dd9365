use super::*;
use crate::crd::RuleStatus;

fn rule(yaml: &str) -> Rule {
    serde_yaml::from_str(yaml).unwrap()
}

fn rule_at(name: &str, ns: &str, spec: &str) -> Rule {
    let spec = spec.replace('\n', "\n  ");
    rule(&format!(
        "apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata:\n  name: {name}\n  namespace: {ns}\n  generation: 3\nspec:\n  {spec}"
    ))
}

fn svc(name: &str, ns: &str, selector: &[(&str, &str)]) -> ServiceInfo {
    ServiceInfo {
        name: name.into(),
        namespace: ns.into(),
        selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn opts() -> RenderOptions {
    RenderOptions {
        module_url: "http://portcullis.kyma-system.svc.cluster.local:8080/filter.wasm".into(),
        module_sha256: "ab".repeat(32),
        ..RenderOptions::default()
    }
}

const JWT_RULE: &str = r#"upstream:
  url: http://httpbin.default.svc.cluster.local:8000
match:
  url: <http|https>://httpbin.example.com/headers
  methods: [GET]
authenticators:
  - handler: jwt
    config:
      jwks_urls: [http://portcullis.kyma-system.svc.cluster.local:4444/.well-known/jwks.json]
      required_scope: [read]
authorizer:
  handler: allow
mutators:
  - handler: header
    config:
      headers:
        X-User: "{{ print .Subject }}""#;

#[test]
fn access_rule_applies_maester_defaults_and_snake_cases_the_spec() {
    let r = rule_at(
        "minimal",
        "prod",
        "upstream: {url: 'http://a.b', stripPath: /api, preserveHost: true}\nmatch: {url: 'http://x/<.*>', methods: [GET]}",
    );
    let j = access_rule(&r);
    assert_eq!(j["id"], "minimal.prod");
    assert_eq!(j["authenticators"], json!([{"handler": "unauthorized"}]));
    assert_eq!(j["authorizer"], json!({"handler": "deny"}));
    assert_eq!(j["mutators"], json!([{"handler": "noop"}]));
    assert_eq!(j["errors"], json!([]));
    assert_eq!(
        j["upstream"],
        json!({"url": "http://a.b", "strip_path": "/api", "preserve_host": true})
    );
    assert_eq!(
        j["match"],
        json!({"url": "http://x/<.*>", "methods": ["GET"]})
    );
}

#[test]
fn access_rule_copies_handler_configs_verbatim_and_reads_legacy_mutator() {
    let j = access_rule(&rule_at("jwt", "default", JWT_RULE));
    assert_eq!(
        j["authenticators"][0]["config"]["jwks_urls"][0],
        "http://portcullis.kyma-system.svc.cluster.local:4444/.well-known/jwks.json"
    );
    assert_eq!(
        j["mutators"][0]["config"]["headers"]["X-User"],
        "{{ print .Subject }}"
    );
    let legacy = rule_at(
        "old",
        "default",
        "match: {url: 'http://gh.ij', methods: [GET]}\nmutator: {handler: header, config: {headers: {A: b}}}",
    );
    assert_eq!(
        access_rule(&legacy)["mutators"],
        json!([{"handler": "header", "config": {"headers": {"A": "b"}}}])
    );
}

#[test]
fn target_from_selector_or_service() {
    let g = GlobalConfig::default();
    let sel = rule_at(
        "s",
        "ns1",
        "selector: {matchLabels: {app: api, tier: web}}\nmatch: {url: 'http://x/', methods: [GET]}",
    );
    assert_eq!(
        rule_target(&sel, &[], &g).unwrap(),
        (
            Workload {
                namespace: "ns1".into(),
                labels: labels(&[("app", "api"), ("tier", "web")])
            },
            TargetSource::Selector
        )
    );

    let services = [svc(
        "httpbin",
        "default",
        &[("app", "httpbin"), ("version", "v1")],
    )];
    let by_svc = rule_at("j", "default", JWT_RULE);
    let (w, src) = rule_target(&by_svc, &services, &g).unwrap();
    assert_eq!(src, TargetSource::Service);
    assert_eq!(w.labels, labels(&[("app", "httpbin"), ("version", "v1")]));

    let bare = rule_at(
        "b",
        "team",
        "upstream: {url: 'http://orders:8080/x'}\nmatch: {url: 'http://x/', methods: [GET]}",
    );
    let orders = [svc("orders", "team", &[("app", "orders-v2")])];
    assert_eq!(
        rule_target(&bare, &orders, &g).unwrap().0,
        Workload {
            namespace: "team".into(),
            labels: labels(&[("app", "orders-v2")])
        }
    );
}

/// No guessed `app=<svc>` label: a Service nobody knows is no target.
#[test]
fn an_unknown_service_is_no_target_not_an_app_label() {
    let g = GlobalConfig::default();
    for url in [
        "http://orders:8080/x",
        "http://orders.team",
        "http://orders.team.svc",
        "http://orders.team.svc.cluster.local:80",
    ] {
        let r = rule_at(
            "b",
            "team",
            &format!("upstream: {{url: '{url}'}}\nmatch: {{url: 'http://x/', methods: [GET]}}"),
        );
        let e = rule_target(&r, &[svc("orders", "other", &[("app", "orders")])], &g).unwrap_err();
        assert!(
            matches!(&e, TargetError::NoTarget(m) if m.contains("no known Service team/orders")),
            "{url}: {e}"
        );
        let state = desired_state(&[r], &[], &g, &opts());
        assert!(state.workloads.is_empty());
        assert_eq!(state.rules[0].reason, Reason::NoTarget);
    }
}

/// The review's `harmless` Rule in `dev` naming a Service of `shop`, in every spelling.
#[test]
fn a_service_in_another_namespace_is_refused_unless_the_operator_allows_it() {
    let shop = [svc("checkout", "shop", &[("app", "checkout")])];
    let mut g = GlobalConfig::default();
    for url in [
        "http://checkout.shop",
        "http://checkout.shop:8080/x",
        "http://checkout.shop.svc",
        "http://checkout.shop.svc.cluster.local",
        "http://CHECKOUT.Shop.svc.cluster.local",
        "http://user@checkout.shop.svc.cluster.local:80/",
    ] {
        let r = rule_at(
            "harmless",
            "dev",
            &format!(
                "upstream: {{url: '{url}'}}\nmatch: {{url: 'http://x/', methods: [GET]}}\nauthenticators: [{{handler: anonymous}}]\nauthorizer: {{handler: allow}}"
            ),
        );
        let e = rule_target(&r, &shop, &g).unwrap_err();
        assert!(
            matches!(e, TargetError::CrossNamespace { .. }),
            "{url}: {e}"
        );
        let state = desired_state(std::slice::from_ref(&r), &shop, &g, &opts());
        assert!(state.workloads.is_empty(), "{url}");
        let o = &state.rules[0];
        assert_eq!(o.reason, Reason::CrossNamespace);
        assert!(
            o.message.contains("shop/checkout") && o.message.contains("dev"),
            "{}",
            o.message
        );
        assert_eq!(o.status(None, "t").conditions[0].status, "False");
    }
    // Opt-in on the target side, by exact source namespace.
    g.cross_namespace_targets
        .insert("shop".into(), vec!["dev".into()]);
    let r = rule_at(
        "harmless",
        "dev",
        "upstream: {url: 'http://checkout.shop'}\nmatch: {url: 'http://x/', methods: [GET]}",
    );
    assert_eq!(rule_target(&r, &shop, &g).unwrap().0.namespace, "shop");
    let other = rule_at(
        "harmless",
        "dev2",
        "upstream: {url: 'http://checkout.shop'}\nmatch: {url: 'http://x/', methods: [GET]}",
    );
    assert!(matches!(
        rule_target(&other, &shop, &g),
        Err(TargetError::CrossNamespace { .. })
    ));
}

#[test]
fn rules_without_a_determinable_target_are_reported() {
    let cases = [
        (
            "match: {url: 'http://x/', methods: [GET]}",
            "no spec.selector",
        ),
        (
            "upstream: {url: 'http://abc.example.com/'}\nmatch: {url: 'http://x/', methods: [GET]}",
            "not a Service name",
        ),
        (
            "upstream: {url: 'http://db.default'}\nmatch: {url: 'http://x/', methods: [GET]}",
            "has no selector",
        ),
        (
            "selector: {matchLabels: {}}\nmatch: {url: 'http://x/', methods: [GET]}",
            "empty",
        ),
    ];
    let services = [svc("db", "default", &[])];
    for (spec, needle) in cases {
        let e = rule_target(
            &rule_at("n", "default", spec),
            &services,
            &GlobalConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(needle), "{spec}: {e}");
    }
    let state = desired_state(
        &[rule_at("n", "default", cases[0].0)],
        &[],
        &GlobalConfig::default(),
        &opts(),
    );
    assert!(state.workloads.is_empty());
    assert_eq!(state.rules[0].reason, Reason::NoTarget);
    let status = state.rules[0].status(None, "2026-01-01T00:00:00Z");
    assert_eq!(status.conditions[0].status, "False");
    assert_eq!(status.conditions[0].reason.as_deref(), Some("NoTarget"));
    assert_eq!(
        status.validation,
        Some(Validation {
            valid: Some(true),
            validation_error: None
        })
    );
}

#[test]
fn valid_rules_compile_into_one_wasm_plugin_per_workload() {
    let rules = [
        rule_at("jwt", "default", JWT_RULE),
        rule_at(
            "intro",
            "default",
            "upstream: {url: 'http://httpbin.default.svc.cluster.local:8000'}\nmatch: {url: '<http|https>://httpbin.example.com/<(post|put)>', methods: [POST, PUT]}\nauthenticators: [{handler: oauth2_introspection, config: {introspection_url: 'http://portcullis.kyma-system.svc.cluster.local:4445/admin/oauth2/introspect'}}]\nauthorizer: {handler: allow}",
        ),
        rule_at(
            "other",
            "shop",
            "selector: {matchLabels: {app: orders}}\nmatch: {url: 'http://orders/<.*>', methods: [GET]}\nauthenticators: [{handler: anonymous}]\nauthorizer: {handler: allow}",
        ),
    ];
    let services = [svc(
        "httpbin",
        "default",
        &[("app", "httpbin"), ("version", "v1")],
    )];
    let state = desired_state(&rules, &services, &GlobalConfig::default(), &opts());
    assert!(
        state.rules.iter().all(|r| r.reason == Reason::Applied),
        "{:#?}",
        state.rules
    );
    assert_eq!(state.workloads.len(), 2);

    let httpbin = Workload {
        namespace: "default".into(),
        labels: labels(&[("app", "httpbin"), ("version", "v1")]),
    };
    let wc = &state.workloads[&httpbin];
    assert_eq!(wc.rule_ids, ["intro.default", "jwt.default"]);
    let r = &wc.resource;
    assert_eq!(r["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(r["kind"], "WasmPlugin");
    assert_eq!(r["metadata"]["namespace"], "default");
    assert!(
        r["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("portcullis-httpbin-")
    );
    assert_eq!(r["metadata"]["labels"][MANAGED_BY_LABEL], "portcullis");
    assert_eq!(
        r["metadata"]["annotations"][RULES_ANNOTATION],
        "intro.default,jwt.default"
    );
    assert_eq!(
        r["spec"]["selector"]["matchLabels"],
        json!({"app": "httpbin", "version": "v1"})
    );
    assert_eq!(r["spec"]["phase"], "AUTHN");
    assert_eq!(r["spec"]["failStrategy"], "FAIL_CLOSE");
    assert_eq!(r["spec"]["url"], opts().module_url);
    assert_eq!(r["spec"]["sha256"], "ab".repeat(32));
    let cfg = &r["spec"]["pluginConfig"];
    assert_eq!(cfg, &wc.filter_config);
    assert_eq!(cfg["rules"].as_array().unwrap().len(), 2);
    assert_eq!(cfg["rules"][1]["id"], "jwt.default");
    assert!(cfg["authenticators"]["jwt"]["enabled"].as_bool().unwrap());
    assert_eq!(
        cfg["clusters"]["http://portcullis.kyma-system.svc.cluster.local:4444"],
        "outbound|4444||portcullis.kyma-system.svc.cluster.local"
    );
    let orders = Workload {
        namespace: "shop".into(),
        labels: labels(&[("app", "orders")]),
    };
    assert_eq!(
        state.workloads[&orders].resource["metadata"]["name"],
        orders.resource_name()
    );
    assert!(orders.resource_name().starts_with("portcullis-orders-"));
    let status = state.rules[0].status(None, "t0");
    assert_eq!(
        status.target.as_deref(),
        Some("default/app=httpbin,version=v1")
    );
    assert_eq!(status.conditions[0].status, "True");
    assert_eq!(status.observed_generation, Some(3));
}

#[test]
fn invalid_rules_are_reported_and_fail_closed() {
    let bad = rule_at(
        "bad",
        "default",
        "selector: {matchLabels: {app: api}}\nmatch: {url: 'http://api/<.*>', methods: [GET]}\nauthenticators: [{handler: cookie_session}]\nauthorizer: {handler: allow}",
    );
    let state = desired_state(&[bad], &[], &GlobalConfig::default(), &opts());
    let o = &state.rules[0];
    assert_eq!(o.reason, Reason::Invalid);
    assert!(!o.valid);
    let err = o.validation_error.as_deref().unwrap();
    assert!(
        err.contains("authenticators[0].config.check_session_url: is required"),
        "{err}"
    );
    assert!(o.message.contains("401"), "{}", o.message);
    let wc = state.workloads.values().next().expect("stand-in enforced");
    let standin = &wc.filter_config["rules"][0];
    assert_eq!(standin["id"], "bad.default");
    assert_eq!(
        standin["authenticators"],
        json!([{"handler": "unauthorized"}])
    );
    assert_eq!(standin["authorizer"], json!({"handler": "deny"}));
    let status = o.status(None, "t");
    assert_eq!(status.validation.as_ref().unwrap().valid, Some(false));
    assert_eq!(status.conditions[0].reason.as_deref(), Some("Invalid"));

    // A rule whose match is unusable cannot even fail closed: enforced nowhere.
    let unusable = rule_at(
        "worse",
        "default",
        "selector: {matchLabels: {app: api}}\nmatch: {url: 'http://api/<(>', methods: [GET]}",
    );
    let state = desired_state(&[unusable], &[], &GlobalConfig::default(), &opts());
    assert_eq!(state.rules[0].reason, Reason::Invalid);
    assert!(
        state.rules[0]
            .validation_error
            .as_deref()
            .unwrap()
            .contains("match.url")
    );
    assert!(state.workloads.is_empty());
}

#[test]
fn overlapping_rules_are_reported_on_both() {
    let a = rule_at(
        "all",
        "default",
        "selector: {matchLabels: {app: api}}\nmatch: {url: 'http://api/<.*>', methods: [GET, POST]}\nauthenticators: [{handler: anonymous}]\nauthorizer: {handler: allow}",
    );
    let b = rule_at(
        "admin",
        "default",
        "selector: {matchLabels: {app: api}}\nmatch: {url: 'http://api/admin', methods: [GET]}\nauthenticators: [{handler: noop}]\nauthorizer: {handler: deny}",
    );
    let c = rule_at(
        "elsewhere",
        "default",
        "selector: {matchLabels: {app: other}}\nmatch: {url: 'http://api/admin', methods: [GET]}\nauthenticators: [{handler: noop}]\nauthorizer: {handler: deny}",
    );
    let state = desired_state(&[a, b, c], &[], &GlobalConfig::default(), &opts());
    assert_eq!(state.rules[0].reason, Reason::Overlapping);
    assert!(
        state.rules[0].message.contains("\"admin.default\"")
            && state.rules[0].message.contains("GET http://api/admin"),
        "{}",
        state.rules[0].message
    );
    assert_eq!(state.rules[1].reason, Reason::Overlapping);
    assert!(state.rules[1].message.contains("\"all.default\""));
    assert_eq!(
        state.rules[2].reason,
        Reason::Applied,
        "other workload: no overlap"
    );
    // Still enforced: the filter fails closed on the shared URLs, as Oathkeeper does.
    assert_eq!(state.workloads.len(), 2);
}

#[test]
fn a_config_over_the_size_limit_is_not_emitted() {
    let rules: Vec<Rule> = (0..3)
        .map(|i| rule_at(&format!("r{i}"), "default", &format!("selector: {{matchLabels: {{app: big}}}}\nmatch: {{url: 'http://big/{i}', methods: [GET]}}\nauthorizer: {{handler: allow}}")))
        .chain([rule_at("small", "default", "selector: {matchLabels: {app: small}}\nmatch: {url: 'http://small/', methods: [GET]}")])
        .collect();
    let probe = desired_state(&rules, &[], &GlobalConfig::default(), &opts());
    let small_size = serde_json::to_vec(&probe.resources()[1]).unwrap().len();
    let limited = RenderOptions {
        max_resource_bytes: small_size + 10,
        ..opts()
    };
    let state = desired_state(&rules, &[], &GlobalConfig::default(), &limited);
    assert_eq!(state.workloads.len(), 1);
    assert_eq!(
        state.workloads.keys().next().unwrap().labels["app"],
        "small"
    );
    for o in &state.rules[..3] {
        assert_eq!(o.reason, Reason::ConfigTooLarge);
        assert!(o.message.contains("default/app=big"), "{}", o.message);
    }
    assert_eq!(state.rules[3].reason, Reason::Applied);
}

#[test]
fn envoy_filter_output_inserts_the_wasm_filter_before_the_router() {
    let o = RenderOptions {
        output: Output::EnvoyFilter,
        ..opts()
    };
    let state = desired_state(
        &[rule_at("j", "default", JWT_RULE)],
        &[svc("httpbin", "default", &[("app", "httpbin")])],
        &GlobalConfig::default(),
        &o,
    );
    let r = &state.resources()[0];
    assert_eq!(r["apiVersion"], "networking.istio.io/v1alpha3");
    assert_eq!(r["kind"], "EnvoyFilter");
    assert_eq!(
        r["metadata"]["name"],
        Workload {
            namespace: "default".into(),
            labels: labels(&[("app", "httpbin")])
        }
        .resource_name()
    );
    assert_eq!(
        r["spec"]["workloadSelector"]["labels"],
        json!({"app": "httpbin"})
    );
    let p = &r["spec"]["configPatches"][0];
    assert_eq!(p["applyTo"], "HTTP_FILTER");
    assert_eq!(p["match"]["context"], "SIDECAR_INBOUND");
    assert_eq!(
        p["match"]["listener"]["filterChain"]["filter"]["name"],
        "envoy.filters.network.http_connection_manager"
    );
    assert_eq!(
        p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    assert_eq!(p["patch"]["operation"], "INSERT_BEFORE");
    let tc = &p["patch"]["value"]["typed_config"];
    assert_eq!(
        tc["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    let vm = &tc["config"]["vm_config"];
    assert_eq!(vm["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(vm["code"]["remote"]["http_uri"]["uri"], o.module_url);
    assert_eq!(
        vm["code"]["remote"]["http_uri"]["cluster"],
        "outbound|8080||portcullis.kyma-system.svc.cluster.local"
    );
    assert_eq!(vm["code"]["remote"]["sha256"], o.module_sha256);
    assert_eq!(tc["config"]["failure_policy"], "FAIL_CLOSED");
    assert_eq!(
        tc["config"]["allow_on_headers_stop_iteration"], true,
        "remote authorizers need the body before the headers go on"
    );
    let conf = &tc["config"]["configuration"];
    assert_eq!(
        conf["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    let parsed: Value = serde_json::from_str(conf["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        parsed,
        state.workloads.values().next().unwrap().filter_config
    );
}

#[test]
fn diff_returns_only_changed_workloads() {
    let a = rule_at(
        "a",
        "default",
        "selector: {matchLabels: {app: a}}\nmatch: {url: 'http://a/', methods: [GET]}",
    );
    let b = rule_at(
        "b",
        "default",
        "selector: {matchLabels: {app: b}}\nmatch: {url: 'http://b/', methods: [GET]}",
    );
    let g = GlobalConfig::default();
    let before = desired_state(&[a.clone(), b.clone()], &[], &g, &opts()).resources();
    assert!(diff(&before, &before).is_empty());

    let mut b2 = b.clone();
    b2.spec.r#match.methods.push("POST".into());
    let after = desired_state(&[a.clone(), b2], &[], &g, &opts()).resources();
    let changes = diff(&before, &after);
    assert_eq!(changes.apply.len(), 1);
    let b_name = Workload {
        namespace: "default".into(),
        labels: labels(&[("app", "b")]),
    }
    .resource_name();
    assert_eq!(changes.apply[0]["metadata"]["name"], b_name.as_str());
    assert!(changes.delete.is_empty());

    let after = desired_state(&[a], &[], &g, &opts()).resources();
    let changes = diff(&before, &after);
    assert!(changes.apply.is_empty());
    assert_eq!(changes.delete.len(), 1);
    assert_eq!(changes.delete[0].name, b_name);
    assert_eq!(changes.delete[0].kind, "WasmPlugin");
}

#[test]
fn status_keeps_transition_time_and_other_conditions() {
    let o = RuleOutcome {
        name: "r".into(),
        namespace: "default".into(),
        id: "r.default".into(),
        generation: Some(2),
        target: None,
        target_source: None,
        valid: true,
        validation_error: None,
        reason: Reason::NoTarget,
        message: "m".into(),
    };
    let first = o.status(None, "t1");
    let again = o.status(Some(&first), "t2");
    assert_eq!(again.conditions.len(), 1);
    assert_eq!(
        again.conditions[0].last_transition_time.as_deref(),
        Some("t1")
    );
    let mut prev = RuleStatus::default();
    prev.conditions.push(Condition {
        type_: "Other".into(),
        status: "True".into(),
        ..Condition::default()
    });
    assert_eq!(o.status(Some(&prev), "t").conditions.len(), 2);
}

#[test]
fn resource_names_are_dns_labels_and_distinct() {
    let w = |l: &[(&str, &str)]| Workload {
        namespace: "n".into(),
        labels: labels(l),
    };
    let simple = w(&[("app", "httpbin")]).resource_name();
    assert!(simple.starts_with("portcullis-httpbin-"), "{simple}");
    let a = w(&[("app", "httpbin"), ("version", "v1")]).resource_name();
    let b = w(&[("app", "httpbin"), ("version", "v2")]).resource_name();
    assert_ne!(a, b);
    let weird = w(&[("app", "My_App.v1")]).resource_name();
    assert!(weird.starts_with("portcullis-my-app-v1-"), "{weird}");
    let long = w(&[("app", &"x".repeat(80))]).resource_name();
    assert!(long.len() <= 63, "{long}");
    // The review's collisions: one app label under two keys, and two long values sharing their
    // first 52 characters.
    let web = w(&[("app", "web")]).resource_name();
    let k8s_web = w(&[("app.kubernetes.io/name", "web")]).resource_name();
    assert_ne!(web, k8s_web);
    let prefix = "p".repeat(52);
    let long_a = w(&[("app", &format!("{prefix}-a"))]).resource_name();
    let long_b = w(&[("app", &format!("{prefix}-b"))]).resource_name();
    assert_ne!(long_a, long_b);
    for name in [
        simple,
        a,
        b,
        weird,
        long,
        web,
        k8s_web,
        long_a,
        long_b,
        w(&[("tier", "web")]).resource_name(),
        w(&[("x", "---")]).resource_name(),
    ] {
        assert!(crate::dns::is_label(&name), "{name}");
    }
}

/// Two workloads whose selectors map to one resource name: neither resource is emitted, both
/// rules say why (never Applied while the other's resource overwrites theirs).
#[test]
fn a_name_collision_fails_closed_on_both_rules() {
    let g = GlobalConfig::default();
    let rules = [
        rule_at(
            "web",
            "n",
            "selector: {matchLabels: {app: web}}\nmatch: {url: 'http://x/a', methods: [GET]}\nauthenticators: [{handler: anonymous}]\nauthorizer: {handler: allow}",
        ),
        rule_at(
            "k8s-web",
            "n",
            "selector: {matchLabels: {app.kubernetes.io/name: web}}\nmatch: {url: 'http://x/b', methods: [GET]}\nauthenticators: [{handler: anonymous}]\nauthorizer: {handler: allow}",
        ),
    ];
    let state = desired_state(&rules, &[], &g, &opts());
    // Today's names differ, so both are applied...
    assert_eq!(state.workloads.len(), 2);
    assert!(state.rules.iter().all(RuleOutcome::ready));
    // ...and were two resources ever to share a name, both sides are reported.
    let mut forced = state.clone();
    let first_name = forced.workloads.values().next().unwrap().resource["metadata"]["name"].clone();
    for wc in forced.workloads.values_mut() {
        wc.resource["metadata"]["name"] = first_name.clone();
    }
    forced.fail_closed_on_name_collisions();
    assert!(forced.workloads.is_empty() && forced.resources().is_empty());
    for o in &forced.rules {
        assert_eq!(o.reason, Reason::NameCollision, "{o:?}");
        assert!(
            o.message.contains(first_name.as_str().unwrap()),
            "{}",
            o.message
        );
        assert_eq!(o.status(None, "t").conditions[0].status, "False");
    }
    let mut resources: Vec<(Workload, Value)> = state
        .workloads
        .values()
        .map(|wc| (wc.workload.clone(), wc.resource.clone()))
        .collect();
    resources[1].1["metadata"]["name"] = resources[0].1["metadata"]["name"].clone();
    let found = name_collisions(resources.iter().map(|(w, r)| (w, r)));
    assert_eq!(found.len(), 2, "{found:?}");
    // Different namespaces or kinds do not collide.
    resources[1].1["metadata"]["namespace"] = json!("other");
    assert!(name_collisions(resources.iter().map(|(w, r)| (w, r))).is_empty());
}

#[test]
fn handler_configs_are_validated_by_the_core_as_the_filter_would() {
    let cases = [
        // jwt without jwks_urls
        (
            "authenticators: [{handler: jwt, config: {required_scope: [read]}}]",
            "authenticators[0]",
        ),
        // a template the filter cannot render
        (
            "authenticators: [{handler: noop}]\nmutators: [{handler: header, config: {headers: {X-User: '{{ .Subject | upper }}'}}}]",
            "mutators[0]",
        ),
        // introspection without its URL
        (
            "authenticators: [{handler: oauth2_introspection}]",
            "authenticators[0]",
        ),
    ];
    for (handlers, field) in cases {
        let r = rule_at(
            "r",
            "default",
            &format!(
                "selector: {{matchLabels: {{app: api}}}}\nmatch: {{url: 'http://api/<.*>', methods: [GET]}}\nauthorizer: {{handler: allow}}\n{handlers}"
            ),
        );
        let state = desired_state(&[r], &[], &GlobalConfig::default(), &opts());
        let o = &state.rules[0];
        assert_eq!(o.reason, Reason::Invalid, "{handlers}");
        let err = o.validation_error.as_deref().unwrap();
        assert!(
            err.contains(field) && err.contains("r.default"),
            "{handlers}: {err}"
        );
        // Fails closed: the stand-in answers 401 for the rule's URLs.
        let standin = &state.workloads.values().next().unwrap().filter_config["rules"][0];
        assert_eq!(
            standin["authenticators"],
            json!([{"handler": "unauthorized"}])
        );
    }
}

#[test]
fn emitted_configs_compile_in_the_core_engine_with_both_strategies() {
    let state = desired_state(
        &[rule_at("j", "default", JWT_RULE)],
        &[svc("httpbin", "default", &[("app", "httpbin")])],
        &GlobalConfig::default(),
        &opts(),
    );
    let cfg = &state.workloads.values().next().unwrap().filter_config;
    portcullis_core::config::Engine::from_json(&serde_json::to_vec(cfg).unwrap()).unwrap();

    let glob = GlobalConfig::from_yaml("access_rules: {matching_strategy: glob}").unwrap();
    let a = rule_at(
        "a",
        "default",
        "selector: {matchLabels: {app: g}}\nmatch: {url: 'http://g/<**>', methods: [GET]}\nauthenticators: [{handler: anonymous}]\nauthorizer: {handler: allow}",
    );
    let b = rule_at(
        "b",
        "default",
        "selector: {matchLabels: {app: g}}\nmatch: {url: 'http://g/admin/<*>', methods: [GET]}\nauthenticators: [{handler: noop}]\nauthorizer: {handler: deny}",
    );
    let state = desired_state(&[a, b], &[], &glob, &opts());
    assert_eq!(
        state.rules[0].reason,
        Reason::Overlapping,
        "{:?}",
        state.rules[0]
    );
    assert_eq!(state.rules[1].reason, Reason::Overlapping);
    let cfg = &state.workloads.values().next().unwrap().filter_config;
    assert_eq!(cfg["access_rules"]["matching_strategy"], "glob");
    portcullis_core::config::Engine::from_json(&serde_json::to_vec(cfg).unwrap()).unwrap();
}
