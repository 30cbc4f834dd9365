//! Manifests from Kyma's documentation flow and ORY's Maester samples validate against the
//! generated CRD schemas (so a schema that would reject them cannot ship), and manifests missing
//! a required field are rejected.
//!
//! The CRD's `openAPIV3Schema` is turned into JSON Schema the way the API server reads it:
//! `nullable` admits `null`, `x-kubernetes-preserve-unknown-fields` admits any keys, and every
//! other object rejects unknown keys (what `kubectl apply` does with strict field validation, the
//! default since Kubernetes 1.27).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn to_json_schema(node: &Value) -> Value {
    let Value::Object(obj) = node else {
        return node.clone();
    };
    let mut out = Map::new();
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    for (k, v) in obj {
        match k.as_str() {
            "properties" => {
                let props = v
                    .as_object()
                    .map(|p| {
                        p.iter()
                            .map(|(n, s)| (n.clone(), to_json_schema(s)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" | "not" => {
                out.insert(k.clone(), to_json_schema(v));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let list = v
                    .as_array()
                    .map(|l| l.iter().map(to_json_schema).collect())
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Array(list));
            }
            "nullable" | "format" => {}
            k if k.starts_with("x-kubernetes-") => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        out.remove("type");
        out.insert("type".into(), json!(["integer", "string"]));
    }
    if obj.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
        if let Some(Value::Array(e)) = out.get_mut("enum") {
            e.push(Value::Null);
        }
    }
    if obj.get("type") == Some(&json!("object"))
        && !preserve
        && obj.contains_key("properties")
        && !obj.contains_key("additionalProperties")
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

struct Schemas {
    by_kind: Vec<(String, String, jsonschema::Validator)>,
}

impl Schemas {
    fn new() -> Self {
        let mut by_kind = Vec::new();
        for crd in portcullis_reconciler::crd::crds() {
            let crd = serde_json::to_value(&crd).unwrap();
            let group = crd["spec"]["group"].as_str().unwrap().to_string();
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
            for v in crd["spec"]["versions"].as_array().unwrap() {
                let api_version = format!("{group}/{}", v["name"].as_str().unwrap());
                let mut schema = to_json_schema(&v["schema"]["openAPIV3Schema"]);
                // The API server adds these to every CRD schema itself.
                let props = schema["properties"].as_object_mut().unwrap();
                props.insert("apiVersion".into(), json!({"type": "string"}));
                props.insert("kind".into(), json!({"type": "string"}));
                props.insert("metadata".into(), json!({"type": "object"}));
                let validator = jsonschema::validator_for(&schema).unwrap();
                by_kind.push((api_version, kind.clone(), validator));
            }
        }
        Schemas { by_kind }
    }

    /// `None` for kinds these CRDs do not define; `Some(errors)` otherwise.
    fn validate(&self, doc: &Value) -> Option<Vec<String>> {
        let api_version = doc["apiVersion"].as_str()?;
        let kind = doc["kind"].as_str()?;
        let (_, _, validator) = self.by_kind.iter().find(|(a, k, _)| {
            k == kind && (a == api_version || a.split('/').next() == api_version.split('/').next())
        })?;
        Some(
            validator
                .iter_errors(doc)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect(),
        )
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {dir}");
    files
}

fn assert_all_valid(dir: &str) -> usize {
    let schemas = Schemas::new();
    let mut checked = 0;
    for file in files(dir) {
        for (i, doc) in documents(&file).iter().enumerate() {
            if let Some(errors) = schemas.validate(doc) {
                assert!(
                    errors.is_empty(),
                    "{} document {i} rejected: {errors:?}",
                    file.display()
                );
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn kyma_documentation_flow_manifests_validate() {
    assert_eq!(assert_all_valid("kyma"), 3);
}

#[test]
fn ory_maester_samples_validate() {
    assert_eq!(assert_all_valid("ory"), 5);
}

#[test]
fn manifests_missing_required_fields_are_rejected() {
    let schemas = Schemas::new();
    let expect = [
        ("missing-grant-types.yaml", "grantTypes"),
        ("missing-secret-name.yaml", "secretName"),
        ("unknown-grant-type.yaml", "password"),
        ("missing-match.yaml", "match"),
        ("match-without-url.yaml", "url"),
        ("handler-without-name.yaml", "handler"),
    ];
    for (file, needle) in expect {
        let docs = documents(&fixtures().join("invalid").join(file));
        let errors = schemas.validate(&docs[0]).expect("a CRD kind");
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{file}: expected an error mentioning {needle:?}, got {errors:?}"
        );
    }
}

#[test]
fn unknown_spec_fields_are_rejected_but_free_form_config_is_not() {
    let schemas = Schemas::new();
    let mut rule = json!({
        "apiVersion": "oathkeeper.ory.sh/v1alpha1",
        "kind": "Rule",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {
            "match": {"url": "http://x/<.*>", "methods": ["GET"]},
            "authenticators": [{"handler": "jwt", "config": {"anything": {"goes": [1, 2]}}}],
            "selector": {"matchLabels": {"app": "x"}}
        }
    });
    assert_eq!(schemas.validate(&rule), Some(vec![]));
    rule["spec"]["matchh"] = json!({});
    let errors = schemas.validate(&rule).unwrap();
    assert!(errors.iter().any(|e| e.contains("matchh")), "{errors:?}");
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml")
        ) && !path.to_string_lossy().ends_with(".secret.yaml")
        {
            out.push(path);
        }
    }
}

/// What the deployment and the examples ship: every document parses, and every custom resource
/// among them validates against the generated CRDs.
#[test]
fn istio_and_example_manifests_parse_and_validate() {
    let schemas = Schemas::new();
    let mut files = Vec::new();
    yaml_files(&repo_root().join("istio"), &mut files);
    yaml_files(&repo_root().join("examples"), &mut files);
    files.sort();
    let (mut documents_read, mut custom_resources) = (0, 0);
    for file in &files {
        for (i, doc) in documents(file).iter().enumerate() {
            documents_read += 1;
            if let Some(errors) = schemas.validate(doc) {
                assert!(
                    errors.is_empty(),
                    "{} document {i} rejected: {errors:?}",
                    file.display()
                );
                custom_resources += 1;
            }
        }
    }
    assert!(
        documents_read >= 15,
        "only {documents_read} documents in {files:?}"
    );
    assert!(
        custom_resources >= 6,
        "only {custom_resources} custom resources in {files:?}"
    );
}

/// `portcullis render` for `examples/` is what `examples/rendered.yaml` (linked from the docs)
/// shows. Regenerate with `PORTCULLIS_BLESS=1 cargo test -p portcullis-reconciler --test schemas`.
#[test]
fn rendered_examples_match_the_documented_output() {
    use portcullis_reconciler::global::GlobalConfig;
    use portcullis_reconciler::rule_set::RenderOptions;
    let opts = RenderOptions {
        module_url: "http://portcullis-public.portcullis-system.svc.cluster.local:4444/filter.wasm"
            .into(),
        module_sha256: "<sha256 of dist/filter.wasm>".into(),
        ..RenderOptions::default()
    };
    let rendered = portcullis_reconciler::manifests::render(
        &repo_root().join("examples"),
        &GlobalConfig::default(),
        &opts,
    )
    .unwrap();
    assert!(rendered.problems.is_empty(), "{:?}", rendered.problems);
    let path = repo_root().join("examples/rendered.yaml");
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(&path, &rendered.yaml).unwrap();
    }
    // Compared as data, not text: key order depends on whether serde_json's `preserve_order`
    // is unified into the build (it is in a whole-workspace build).
    let parse = |text: &str| -> Vec<Value> {
        serde_yaml::Deserializer::from_str(text)
            .map(|d| {
                let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
                serde_json::to_value(v).unwrap()
            })
            .filter(|v| !v.is_null())
            .collect()
    };
    let documented = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        parse(&documented) == parse(&rendered.yaml),
        "examples/rendered.yaml is out of date: run PORTCULLIS_BLESS=1 cargo test -p portcullis-reconciler --test schemas"
    );
    assert!(
        rendered.yaml.contains("kind: WasmPlugin"),
        "{}",
        rendered.yaml
    );
    assert!(
        rendered.yaml.contains("failStrategy: FAIL_CLOSE"),
        "{}",
        rendered.yaml
    );
}
