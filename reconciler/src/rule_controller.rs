//! The Rule controller (Kubernetes mode). Rules are compiled per workload, so a change to one
//! Rule (or to a Service that names a workload) is handled by recomputing the whole desired state
//! from the watched Rules and Services, then writing only what changed: the resources of changed
//! workloads ([`diff`]) and the statuses that differ. A failed write is retried with backoff and
//! reported on the status of the workload's rules; the process never exits over it.
//!
//! Rules, Services and the managed resources are watched and listed only in the served
//! namespaces (`--watch-namespaces`): a Rule elsewhere is never read, so it is enforced nowhere.

use crate::client_controller::{Namespaces, backoff, now_rfc3339};
use crate::crd::{Rule, RuleStatus};
use crate::global::GlobalConfig;
use crate::kube_apply::{WriteError, apply_changes, managed_resources, patch_rule_status};
use crate::rule_set::{Reason, RenderOptions, ResourceKey, ServiceInfo, desired_state, diff};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the controller remembers between syncs.
#[derive(Debug, Default)]
pub struct SyncState {
    /// The resources last written successfully; `None` until read from the API server once
    /// (so resources left by a previous run can be deleted).
    applied: Option<Vec<Value>>,
    /// Where resources left by a previous run are looked for (the served namespaces).
    namespaces: Namespaces,
}

impl SyncState {
    pub fn new(namespaces: Namespaces) -> Self {
        SyncState {
            applied: None,
            namespaces,
        }
    }
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub applied: usize,
    pub deleted: usize,
    pub statuses: usize,
    pub errors: Vec<WriteError>,
}

/// One sync: desired state from `rules` and `services`, then the writes that differ.
pub async fn sync_once(
    client: &Client,
    state: &mut SyncState,
    rules: &[Rule],
    services: &[ServiceInfo],
    global: &GlobalConfig,
    opts: &RenderOptions,
    now: &str,
) -> SyncReport {
    let mut report = SyncReport::default();
    let previous = match state.applied.take() {
        Some(p) => p,
        None => match managed_resources(client, opts.output, &state.namespaces).await {
            Ok(p) => p,
            Err(source) => {
                report.errors.push(WriteError {
                    action: "list",
                    kind: format!("{:?}", opts.output),
                    namespace: String::new(),
                    name: String::new(),
                    source,
                });
                return report;
            }
        },
    };
    let mut desired = desired_state(rules, services, global, opts);
    let next = desired.resources();
    let changes = diff(&previous, &next);
    let errors = apply_changes(client, &changes).await;
    report.applied = changes.apply.len();
    report.deleted = changes.delete.len();

    // Remember what is now true: the new resources, except failed writes keep the old version
    // (so the next sync retries them).
    let failed: Vec<ResourceKey> = errors
        .iter()
        .map(|e| ResourceKey {
            api_version: String::new(),
            kind: e.kind.clone(),
            namespace: e.namespace.clone(),
            name: e.name.clone(),
        })
        .collect();
    let is_failed = |k: &ResourceKey| {
        failed
            .iter()
            .any(|f| f.kind == k.kind && f.namespace == k.namespace && f.name == k.name)
    };
    let mut applied: BTreeMap<ResourceKey, Value> = BTreeMap::new();
    for r in &previous {
        let k = ResourceKey::of(r);
        if is_failed(&k) {
            applied.insert(k, r.clone());
        }
    }
    for r in &next {
        let k = ResourceKey::of(r);
        // A failed write that was never written before is not remembered: the next diff
        // applies it again.
        if !is_failed(&k) {
            applied.insert(k, r.clone());
        }
    }
    state.applied = Some(applied.into_values().collect());

    // Rules of a workload whose write failed are not enforced as desired.
    for e in &errors {
        for wc in desired.workloads.values() {
            if wc.resource["metadata"]["name"] == e.name.as_str()
                && wc.workload.namespace == e.namespace
            {
                for o in desired
                    .rules
                    .iter_mut()
                    .filter(|o| wc.rule_ids.contains(&o.id))
                {
                    o.reason = Reason::ApplyFailed;
                    o.message = e.to_string();
                }
            }
        }
    }
    report.errors = errors;

    for (rule, outcome) in rules.iter().zip(&desired.rules) {
        let status: RuleStatus = outcome.status(rule.status.as_ref(), now);
        if rule.status.as_ref() == Some(&status) {
            continue;
        }
        match patch_rule_status(client, &outcome.namespace, &outcome.name, &status).await {
            Ok(()) => report.statuses += 1,
            Err(e) => report.errors.push(e),
        }
    }
    report
}

/// Runs the Rule controller: watches Rules and Services in `namespaces`, and syncs after each
/// burst of changes (waiting `debounce` for the burst to settle). Failed syncs are retried with
/// exponential backoff.
pub async fn run(
    client: Client,
    global: GlobalConfig,
    opts: RenderOptions,
    namespaces: Namespaces,
    debounce: Duration,
) {
    let scopes: Vec<(Api<Rule>, Api<Service>)> = match &namespaces {
        Namespaces::All => vec![(Api::all(client.clone()), Api::all(client.clone()))],
        Namespaces::Only(list) => list
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                )
            })
            .collect(),
    };
    let mut rule_stores = Vec::new();
    let mut service_stores = Vec::new();
    let mut events = Vec::new();
    for (rule_api, service_api) in scopes {
        let (rules, rules_writer) = reflector::store::<Rule>();
        let (services, services_writer) = reflector::store::<Service>();
        rule_stores.push(rules);
        service_stores.push(services);
        events.push(
            reflector(rules_writer, watcher(rule_api, watcher::Config::default()))
                .default_backoff()
                .map(|_| ())
                .boxed(),
        );
        events.push(
            reflector(
                services_writer,
                watcher(service_api, watcher::Config::default()),
            )
            .default_backoff()
            .map(|_| ())
            .boxed(),
        );
    }
    let mut triggers = stream::select_all(events);
    let mut state = SyncState::new(namespaces.clone());
    let mut failures = 0u32;
    loop {
        let pending = if failures > 0 {
            // Retry after the backoff, or earlier if something changes.
            tokio::time::timeout(backoff(failures - 1), triggers.next())
                .await
                .ok()
        } else {
            Some(triggers.next().await)
        };
        if matches!(pending, Some(None)) {
            return;
        }
        // Let a burst of events (initial list, kubectl apply -f dir) settle into one sync.
        while let Ok(Some(())) = tokio::time::timeout(debounce, triggers.next()).await {}
        let rule_list: Vec<Rule> = rule_stores
            .iter()
            .flat_map(|s| s.state())
            .map(|r| (*r).clone())
            .collect();
        let service_list: Vec<ServiceInfo> = service_stores
            .iter()
            .flat_map(|s| s.state())
            .filter_map(|s| ServiceInfo::from_service(&s))
            .collect();
        let report = sync_once(
            &client,
            &mut state,
            &rule_list,
            &service_list,
            &global,
            &opts,
            &now_rfc3339(),
        )
        .await;
        failures = if report.errors.is_empty() {
            0
        } else {
            failures.saturating_add(1)
        };
        for e in &report.errors {
            tracing::warn!(error = %e, failures, "rule sync write failed; retrying with backoff");
        }
    }
}

#[cfg(test)]
mod tests;
