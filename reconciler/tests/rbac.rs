//! `istio/rbac.yaml` grants exactly the verbs the controllers call, no more: each entry below
//! names the call that needs it. A new API call fails this test until both the table and the
//! RBAC file say so; a verb left in the file that nothing calls fails it too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

type Grants = BTreeMap<(String, String), BTreeSet<String>>;

/// `(apiGroup, resource) -> verbs` of the role `name` in `file`.
fn grants(file: &str, kind: &str, name: &str) -> Grants {
    let docs = documents(file);
    let role = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not in {file}"));
    let mut out = Grants::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                let verbs = out
                    .entry((
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                    ))
                    .or_default();
                for v in rule["verbs"].as_array().unwrap() {
                    assert!(verbs.insert(v.as_str().unwrap().to_string()), "{v} twice");
                }
            }
        }
    }
    out
}

fn table(entries: &[(&str, &str, &[&str])]) -> Grants {
    entries
        .iter()
        .map(|(g, r, verbs)| {
            (
                (g.to_string(), r.to_string()),
                verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_what_the_controllers_call() {
    let namespace = table(&[
        // client_controller::run: Controller (list + watch); finalizer(): JSON patch.
        ("hydra.ory.sh", "oauth2clients", &["list", "watch", "patch"]),
        // client_controller::write_status: patch_status (server-side apply).
        ("hydra.ory.sh", "oauth2clients/status", &["patch"]),
        // Secrets created with a blockOwnerDeletion owner reference to the client.
        ("hydra.ory.sh", "oauth2clients/finalizers", &["update"]),
        // client_controller::apply: get_opt, create; run: watches (list + watch).
        ("", "secrets", &["get", "list", "watch", "create"]),
        // client_controller::refused_event: Recorder::publish (create; patch for a series).
        ("events.k8s.io", "events", &["create", "patch"]),
        // rule_controller::run: reflectors (list + watch).
        ("oathkeeper.ory.sh", "rules", &["list", "watch"]),
        // kube_apply::patch_rule_status.
        ("oathkeeper.ory.sh", "rules/status", &["patch"]),
        ("", "services", &["list", "watch"]),
        // kube_apply: managed_resources (list), apply_changes (server-side apply, which creates
        // as `create`, and delete).
        (
            "extensions.istio.io",
            "wasmplugins",
            &["list", "create", "patch", "delete"],
        ),
    ]);
    assert_eq!(
        grants("istio/rbac.yaml", "ClusterRole", "portcullis-namespace"),
        namespace
    );
    // leader::run_as_leader: get_opt, create, replace.
    assert_eq!(
        grants("istio/rbac.yaml", "Role", "portcullis-leader-election"),
        table(&[(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"]
        )])
    );
    // --output=envoyfilter only, from its own file.
    assert_eq!(
        grants(
            "istio/rbac-envoyfilter.yaml",
            "ClusterRole",
            "portcullis-envoyfilter"
        ),
        table(&[(
            "networking.istio.io",
            "envoyfilters",
            &["list", "create", "patch", "delete"],
        )])
    );
}

/// Nothing cluster-wide, and every namespace the Deployment watches has its RoleBinding.
#[test]
fn rbac_is_granted_in_the_watched_namespaces_only() {
    let docs = documents("istio/rbac.yaml");
    assert!(
        !docs.iter().any(|d| d["kind"] == "ClusterRoleBinding"),
        "no cluster-wide binding"
    );
    let bound: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" && d["roleRef"]["name"] == "portcullis-namespace")
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    let deployment = std::fs::read_to_string(repo_root().join("istio/deployment.yaml")).unwrap();
    let watched: BTreeSet<&str> = deployment
        .lines()
        .find_map(|l| l.trim().strip_prefix("- --watch-namespaces="))
        .expect("--watch-namespaces in istio/deployment.yaml")
        .split(',')
        .collect();
    assert_eq!(bound, watched);
    let envoyfilter = documents("istio/rbac-envoyfilter.yaml");
    let ef: BTreeSet<&str> = envoyfilter
        .iter()
        .filter(|d| d["kind"] == "RoleBinding")
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(ef, watched);
}
