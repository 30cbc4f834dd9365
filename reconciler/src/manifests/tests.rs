use super::*;
use crate::rule_set::Reason;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn opts() -> RenderOptions {
    RenderOptions {
        module_url: "http://portcullis.kyma-system.svc.cluster.local:8080/filter.wasm".into(),
        module_sha256: "cd".repeat(32),
        ..RenderOptions::default()
    }
}

#[test]
fn loads_the_kyma_flow_from_a_directory() {
    let m = load_dir(&fixtures().join("kyma")).unwrap();
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    assert_eq!(m.clients.len(), 1);
    assert_eq!(m.rules.len(), 2);
    assert_eq!(m.secrets.len(), 1);
    assert_eq!(m.services.len(), 1);
    assert_eq!(m.rules[1].index, 1);
    assert!(m.rules[1].file.ends_with("03-rules.yaml"));
    let (id, secret) = secret_credentials(&m.secrets[0].object).unwrap();
    assert_eq!(id, "httpbin-client");
    assert_eq!(secret, "super-secret-value");
    assert_eq!(m.service_infos()[0].selector.len(), 2);
}

#[test]
fn bad_documents_are_reported_with_file_index_and_field_and_good_ones_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mixed.yaml"),
        "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {name: good}\nspec: {grantTypes: [client_credentials], secretName: s}\n\
         ---\napiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {name: bad-grant}\nspec: {grantTypes: [password], secretName: s}\n\
         ---\napiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {name: no-secret}\nspec: {grantTypes: [client_credentials]}\n\
         ---\napiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: no-url}\nspec: {match: {methods: [GET]}}\n\
         ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n\
         ---\napiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: ok}\nspec: {match: {url: 'http://x/', methods: [GET]}}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.yml"), "kind: Rule\n  : : [\n").unwrap();
    std::fs::write(dir.path().join("empty.json"), "{\"apiVersion\": \"v1\", \"kind\": \"Secret\", \"metadata\": {\"name\": \"s\"}, \"stringData\": {\"CLIENT_ID\": \"i\", \"CLIENT_SECRET\": \"sec\"}}").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();

    let m = load_dir(dir.path()).unwrap();
    assert_eq!(m.clients.len(), 1);
    assert_eq!(m.clients[0].object.metadata.name.as_deref(), Some("good"));
    assert_eq!(m.rules.len(), 1);
    assert_eq!(m.secrets.len(), 1);
    assert_eq!(
        secret_credentials(&m.secrets[0].object),
        Some(("i".into(), "sec".into()))
    );
    assert_eq!(m.notes.len(), 1);
    assert!(m.notes[0].contains("Deployment"), "{:?}", m.notes);

    let msgs: Vec<String> = m.errors.iter().map(ToString::to_string).collect();
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    assert!(msgs[0].contains("broken.yml: document 0"), "{}", msgs[0]);
    let find = |needle: &str| {
        msgs.iter()
            .find(|m| m.contains(needle))
            .cloned()
            .unwrap_or_else(|| panic!("{needle} in {msgs:#?}"))
    };
    let e = find("bad-grant");
    assert!(
        e.contains("mixed.yaml: document 1 (OAuth2Client bad-grant): spec.grantTypes[0]: "),
        "{e}"
    );
    let e = find("no-secret");
    assert!(e.contains("document 2") && e.contains("secretName"), "{e}");
    let e = find("no-url");
    assert!(
        e.contains("document 3 (Rule no-url): spec.match") && e.contains("url"),
        "{e}"
    );
}

#[test]
fn missing_directory_is_an_error() {
    let e = load_dir(Path::new("/nonexistent/portcullis")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/portcullis"));
}

#[test]
fn render_produces_reviewable_yaml_for_the_kyma_flow() {
    let r = render(&fixtures().join("kyma"), &GlobalConfig::default(), &opts()).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&r.yaml)
        .map(|d| {
            serde_json::to_value(<serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["kind"], "WasmPlugin");
    assert_eq!(
        docs[0]["spec"]["selector"]["matchLabels"],
        json!({"app": "httpbin", "version": "v1"})
    );
    assert_eq!(
        docs[0]["spec"]["pluginConfig"]["rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(r.state.rules.iter().all(|o| o.reason == Reason::Applied));

    let ef = render(
        &fixtures().join("kyma"),
        &GlobalConfig::default(),
        &RenderOptions {
            output: rule_set::Output::EnvoyFilter,
            ..opts()
        },
    )
    .unwrap();
    assert!(ef.yaml.contains("kind: EnvoyFilter"));
}

#[test]
fn render_lists_rules_that_are_not_ready_as_comments() {
    let r = render(&fixtures().join("ory"), &GlobalConfig::default(), &opts()).unwrap();
    // ORY's samples proxy to external hosts (`abc.ef`) or name none: no target is determinable;
    // sample 3 uses a glob pattern under the default regexp strategy.
    assert!(
        r.yaml
            .lines()
            .any(|l| l.starts_with("# Rule default/sample-rule-1: NoTarget")),
        "{}",
        r.yaml
    );
    assert!(
        r.yaml
            .lines()
            .any(|l| l.starts_with("# Rule default/sample-rule-3: Invalid")
                && l.contains("match.url")),
        "{}",
        r.yaml
    );
    assert!(!r.yaml.contains("\n---"), "no resources: {}", r.yaml);
    assert_eq!(r.problems.len(), 3);
}

#[test]
fn ecds_document_runs_the_local_module_with_the_config() {
    let cfg = json!({"rules": [], "clusters": {}});
    let d = ecds_document(&cfg, "/etc/envoy/filter.wasm");
    let res = &d["resources"][0];
    assert_eq!(
        res["@type"],
        "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
    );
    assert_eq!(res["name"], "portcullis");
    let tc = &res["typed_config"];
    assert_eq!(
        tc["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    assert_eq!(
        tc["config"]["vm_config"]["code"]["local"]["filename"],
        "/etc/envoy/filter.wasm"
    );
    assert_eq!(
        tc["config"]["vm_config"]["runtime"],
        "envoy.wasm.runtime.v8"
    );
    assert_eq!(tc["config"]["failure_policy"], "FAIL_CLOSED");
    assert_eq!(tc["config"]["configuration"]["value"], cfg.to_string());
    assert_ne!(
        d["version_info"],
        ecds_document(&json!({"rules": [1]}), "/x")["version_info"]
    );
}

#[test]
fn ecds_files_are_written_atomically_and_only_when_changed() {
    let out = tempfile::tempdir().unwrap();
    let m = load_dir(&fixtures().join("kyma")).unwrap();
    let state = m.desired_state(&GlobalConfig::default(), &opts());
    let first = write_ecds_files(out.path(), &state, "/filter.wasm").unwrap();
    assert_eq!(first.written.len(), 1);
    let path = &first.written[0];
    assert!(
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(".default.json")
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let conf = doc["resources"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap();
    let conf: Value = serde_json::from_str(conf).unwrap();
    assert_eq!(conf["rules"].as_array().unwrap().len(), 2);

    let again = write_ecds_files(out.path(), &state, "/filter.wasm").unwrap();
    assert!(again.written.is_empty());
    assert_eq!(again.unchanged.len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
}

#[test]
fn write_atomic_replaces_content() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.json");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert!(write_atomic(&dir.path().join("missing/f.json"), b"x").is_err());
}

#[test]
fn clients_are_planned_against_secrets_in_the_directory_and_generated_ones_written_back() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("kyma/01-client.yaml"),
        dir.path().join("01-client.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("02-more.yaml"),
        "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {name: fresh, namespace: default}\nspec: {grantTypes: [client_credentials], secretName: fresh-creds, scope: read}\n",
    )
    .unwrap();
    let before = fingerprint(dir.path()).unwrap();
    let m = load_dir(dir.path()).unwrap();
    let mut n = 0;
    let plans = plan_clients(&m, || {
        n += 1;
        (format!("gen-{n}"), "generated-secret".into())
    });
    assert_eq!(plans.len(), 2);
    let kyma = &plans[0].1;
    assert_eq!(kyma.register.as_ref().unwrap().client_id, "httpbin-client");
    assert!(kyma.create_secret.is_none());
    let fresh = &plans[1].1;
    assert_eq!(fresh.register.as_ref().unwrap().client_id, "gen-1");
    let path = write_secret_manifest(dir.path(), fresh.create_secret.as_ref().unwrap()).unwrap();
    assert!(path.ends_with("fresh-creds.default.secret.yaml"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_ne!(
        fingerprint(dir.path()).unwrap(),
        before,
        "a new file changes the fingerprint"
    );

    // The written Secret loads back and now provides the same credentials: no regeneration.
    let m = load_dir(dir.path()).unwrap();
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    let plans = plan_clients(&m, || panic!("must not generate again"));
    assert_eq!(plans[1].1.register.as_ref().unwrap().client_id, "gen-1");
    assert_eq!(
        plans[1].1.register.as_ref().unwrap().client_secret,
        "generated-secret"
    );
}

#[tokio::test]
async fn watch_dir_reloads_on_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rule.yaml");
    let rule = |methods: &str| {
        format!(
            "apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {{name: r}}\nspec: {{match: {{url: 'http://x/', methods: [{methods}]}}}}\n"
        )
    };
    std::fs::write(&path, rule("GET")).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
    let seen2 = seen.clone();
    let dir_path = dir.path().to_path_buf();
    let watcher = tokio::spawn(async move {
        watch_dir(&dir_path, std::time::Duration::from_millis(10), move |m| {
            let m = m.unwrap();
            let mut s = seen2.lock().unwrap();
            s.push(
                m.rules
                    .iter()
                    .flat_map(|r| r.object.spec.r#match.methods.clone())
                    .collect(),
            );
            s.len() < 3
        })
        .await
    });
    let wait_for = |n: usize| {
        let seen = seen.clone();
        async move {
            for _ in 0..300 {
                if seen.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("no reload {n}");
        }
    };
    wait_for(1).await;
    std::fs::write(&path, rule("GET, POST")).unwrap();
    wait_for(2).await;
    std::fs::remove_file(&path).unwrap();
    wait_for(3).await;
    tokio::time::timeout(std::time::Duration::from_secs(3), watcher)
        .await
        .unwrap()
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            vec!["GET".to_string()],
            vec!["GET".into(), "POST".into()],
            vec![]
        ]
    );
}
