//! The rules page's data: every Rule with its Ready condition and reason, grouped by the
//! workload that enforces it, and each workload's compiled filter configuration with its
//! rendered size against the limit.
//!
//! Both modes compute it with the reconciler's own [`desired_state`] from the inputs its sync
//! uses (the manifests directory, or the served namespaces' Rules and Services), so every
//! replica can answer, not only the leader. In Kubernetes mode each Rule also carries the Ready
//! condition the leader last wrote on it (`written`): only that one knows a failed write
//! (`ApplyFailed`) or a change not reconciled yet.

use super::ManifestsSource;
use k8s_openapi::api::core::v1::Service as KubeService;
use kube::api::{Api, ListParams};
use portcullis_reconciler::client_controller::Namespaces;
use portcullis_reconciler::crd::{Condition, READY, Rule};
use portcullis_reconciler::global::GlobalConfig;
use portcullis_reconciler::manifests;
use portcullis_reconciler::rule_set::{
    DesiredState, MAX_RESOURCE_BYTES, RenderOptions, ServiceInfo, desired_state,
};
use serde_json::{Value, json};

/// What Kubernetes mode reconciles, as the Rule controller is given it.
#[derive(Clone)]
pub struct KubernetesSource {
    pub client: kube::Client,
    pub global: GlobalConfig,
    pub render: RenderOptions,
    pub namespaces: Namespaces,
}

pub(super) fn manifests_view(source: &ManifestsSource) -> Result<Value, String> {
    let loaded = manifests::load_dir(&source.dir).map_err(|e| e.to_string())?;
    let state = loaded.desired_state(&source.global, &RenderOptions::default());
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    let mut v = view(&state, MAX_RESOURCE_BYTES, None);
    v["mode"] = "manifests".into();
    v["errors"] = errors.into();
    Ok(v)
}

pub(super) async fn kubernetes_view(source: &KubernetesSource) -> Result<Value, kube::Error> {
    let (rules, services) = list(source).await?;
    let state = desired_state(&rules, &services, &source.global, &source.render);
    let written: Vec<Option<&Condition>> = rules
        .iter()
        .map(|r| {
            r.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        })
        .collect();
    let mut v = view(&state, source.render.max_resource_bytes, Some(&written));
    v["mode"] = "kubernetes".into();
    v["errors"] = json!([]);
    Ok(v)
}

/// The state Kubernetes mode reconciles right now: what the deployed rules call, for the tester's
/// callout proxy.
pub(super) async fn kubernetes_state(
    source: &KubernetesSource,
) -> Result<DesiredState, kube::Error> {
    let (rules, services) = list(source).await?;
    Ok(desired_state(
        &rules,
        &services,
        &source.global,
        &source.render,
    ))
}

/// The served namespaces' Rules and Services, one list call per namespace and kind (the
/// controller's RBAC: nothing cluster-wide unless every namespace is served).
async fn list(source: &KubernetesSource) -> Result<(Vec<Rule>, Vec<ServiceInfo>), kube::Error> {
    let c = &source.client;
    let scopes: Vec<(Api<Rule>, Api<KubeService>)> = match &source.namespaces {
        Namespaces::All => vec![(Api::all(c.clone()), Api::all(c.clone()))],
        Namespaces::Only(list) => list
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(c.clone(), ns),
                    Api::namespaced(c.clone(), ns),
                )
            })
            .collect(),
    };
    let params = ListParams::default();
    let mut rules = Vec::new();
    let mut services = Vec::new();
    for (rule_api, service_api) in scopes {
        rules.extend(rule_api.list(&params).await?.items);
        services.extend(
            service_api
                .list(&params)
                .await?
                .items
                .iter()
                .filter_map(ServiceInfo::from_service),
        );
    }
    Ok((rules, services))
}

/// `written`: per rule (in the state's order), the Ready condition on the object, if any.
fn view(state: &DesiredState, limit: usize, written: Option<&[Option<&Condition>]>) -> Value {
    let rules: Vec<Value> = state
        .rules
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut r = json!({
                "name": o.name,
                "namespace": o.namespace,
                "id": o.id,
                "workload": o.target.as_ref().map(ToString::to_string),
                "ready": o.ready(),
                "reason": o.reason.as_str(),
                "message": o.message,
                "valid": o.valid,
                "validation_error": o.validation_error,
            });
            if let Some(written) = written {
                r["written"] = match written.get(i).copied().flatten() {
                    Some(c) => json!({
                        "ready": c.status == "True",
                        "status": c.status,
                        "reason": c.reason,
                        "message": c.message,
                        "observed_generation": c.observed_generation,
                    }),
                    None => Value::Null,
                };
            }
            r
        })
        .collect();
    let workloads: Vec<Value> = state
        .workloads
        .values()
        .map(|w| {
            let resource_bytes = serde_json::to_vec(&w.resource).map_or(0, |v| v.len());
            json!({
                "workload": w.workload.to_string(),
                "resource_name": w.workload.resource_name(),
                "rule_ids": w.rule_ids,
                "filter_config": w.filter_config,
                "resource_bytes": resource_bytes,
                "limit_bytes": limit,
            })
        })
        .collect();
    json!({
        "available": true,
        "rules": rules,
        "workloads": workloads,
    })
}
