//! Carrying the Rule reconciler's desired state out against the Kubernetes API: server-side apply
//! of the changed WasmPlugin/EnvoyFilter resources, deletion of the stale ones, and status
//! patches of the rules. Every write is attempted; failures are collected (never a process exit)
//! so the caller can requeue with backoff.

use crate::client_controller::Namespaces;
use crate::crd::{Rule, RuleStatus};
use crate::rule_set::{Changes, MANAGED_BY, MANAGED_BY_LABEL, Output, ResourceKey};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use thiserror::Error;

/// Field manager of every write (server-side apply ownership).
pub const FIELD_MANAGER: &str = "portcullis";

/// A write that failed.
#[derive(Debug, Error)]
#[error("{action} {kind} {namespace}/{name}: {source}")]
pub struct WriteError {
    pub action: &'static str,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// The API resource of an Istio kind this crate writes.
pub fn api_resource(kind: &str) -> Option<ApiResource> {
    let (group, version, plural) = match kind {
        "WasmPlugin" => ("extensions.istio.io", "v1alpha1", "wasmplugins"),
        "EnvoyFilter" => ("networking.istio.io", "v1alpha3", "envoyfilters"),
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

fn output_kind(output: Output) -> &'static str {
    match output {
        Output::WasmPlugin => "WasmPlugin",
        Output::EnvoyFilter => "EnvoyFilter",
    }
}

/// The resources of `output`'s kind that carry the owner label, in the served namespaces: the
/// "previous" state to diff against after a restart (resources under names an older version
/// used are among them, so the first sync deletes them once their successors are written).
pub async fn managed_resources(
    client: &Client,
    output: Output,
    namespaces: &Namespaces,
) -> Result<Vec<Value>, kube::Error> {
    let kind = output_kind(output);
    let Some(ar) = api_resource(kind) else {
        return Ok(Vec::new());
    };
    let apis: Vec<Api<DynamicObject>> = match namespaces {
        Namespaces::All => vec![Api::all_with(client.clone(), &ar)],
        Namespaces::Only(list) => list
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, &ar))
            .collect(),
    };
    let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let mut out = Vec::new();
    for api in apis {
        for o in api.list(&lp).await?.items {
            out.push(json!({
                "apiVersion": ar.api_version,
                "kind": kind,
                "metadata": {"name": o.name_any(), "namespace": o.namespace().unwrap_or_default()},
            }));
        }
    }
    Ok(out)
}

/// Applies `changes`: server-side apply (forced: this controller owns these objects) of each
/// changed resource, then deletion of the stale ones (already gone is fine).
pub async fn apply_changes(client: &Client, changes: &Changes) -> Vec<WriteError> {
    let mut errors = Vec::new();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for resource in &changes.apply {
        let key = ResourceKey::of(resource);
        let Some(ar) = api_resource(&key.kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &ar);
        if let Err(source) = api.patch(&key.name, &pp, &Patch::Apply(resource)).await {
            errors.push(write_error("apply", &key, source));
        }
    }
    for key in &changes.delete {
        let Some(ar) = api_resource(&key.kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &ar);
        match api.delete(&key.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => errors.push(write_error("delete", key, source)),
        }
    }
    errors
}

fn write_error(action: &'static str, key: &ResourceKey, source: kube::Error) -> WriteError {
    WriteError {
        action,
        kind: key.kind.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        source,
    }
}

/// Writes a rule's status with server-side apply on the status subresource.
pub async fn patch_rule_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &RuleStatus,
) -> Result<(), WriteError> {
    let api: Api<Rule> = Api::namespaced(client.clone(), namespace);
    let body = json!({
        "apiVersion": "oathkeeper.ory.sh/v1alpha1",
        "kind": "Rule",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| WriteError {
        action: "patch status of",
        kind: "Rule".into(),
        namespace: namespace.into(),
        name: name.into(),
        source,
    })
}

#[cfg(test)]
mod tests;
