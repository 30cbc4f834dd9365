//! Desired state of the Rule reconciler, as a pure function of its inputs: the `Rule` resources,
//! the Services that name workloads, and the global handler config. Each rule is converted to
//! the filter's access-rule JSON (Oathkeeper Maester's defaults and ids), validated with the
//! core, assigned to a target workload, checked for overlaps with the other rules of that
//! workload, and compiled with them into one filter config per workload, rendered as an Istio
//! `WasmPlugin` or `EnvoyFilter`. Every rule gets an outcome for its status.
//!
//! # Target workload
//! 1. `spec.selector.matchLabels`, in the rule's namespace.
//! 2. Else the Service named by `upstream.url`'s host: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`
//!    or `<svc>.<ns>.svc.<cluster-domain>` (a bare `<svc>` is in the rule's namespace); its
//!    `spec.selector` is the workload. The Service must be among the inputs (from the API
//!    server, or a Service manifest in manifests mode): a guessed `app=<svc>` label could put
//!    the filter on pods nobody meant.
//! 3. Otherwise the rule is `Ready=False`, reason `NoTarget`, and is enforced nowhere.
//!
//! # Namespaces are the tenant boundary
//! A rule is enforced only on workloads of its own namespace. A Service host in another
//! namespace is refused (`CrossNamespace`) unless the operator's global config lists the rule's
//! namespace under `cross_namespace_targets` for the target namespace
//! ([`GlobalConfig::allows_target`]).
//!
//! # Resource names
//! Each workload's resource is named `portcullis-<app>-<hash of the selector>`
//! ([`Workload::resource_name`]). Should two selectors of one namespace still map to one name,
//! neither resource is emitted and both rules report `NameCollision`: one workload silently
//! losing its filter to the other's is the failure this prevents.
//!
//! # Invalid rules fail closed
//! A rule that fails validation is reported (`Invalid`) and, when its `match` is usable, is
//! replaced in its workload's config by a stand-in with the same id and match that answers 401
//! (`unauthorized` / `deny`), as Oathkeeper keeps matching rules that failed validation: a typo
//! in a handler config must not open the URLs the rule protected.

use crate::core_seam;
use crate::crd::{Condition, READY, Rule, RuleHandler, RuleStatus, Validation, set_condition};
use crate::global::{GlobalConfig, istio_cluster};
use crate::overlap::{Candidate, find_overlaps};
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The owner label on every resource the reconciler writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "portcullis";
/// Annotation listing the rule ids compiled into a resource.
pub const RULES_ANNOTATION: &str = "portcullis.io/rules";
/// What Kubernetes stores in one object, with headroom for metadata (etcd's limit is 1.5 MiB).
pub const MAX_RESOURCE_BYTES: usize = 1536 * 1024;

/// A Service, as far as target resolution needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
}

impl ServiceInfo {
    /// From a Kubernetes Service (namespace `default` when unset, as `kubectl apply` does).
    pub fn from_service(svc: &Service) -> Option<ServiceInfo> {
        Some(ServiceInfo {
            name: svc.metadata.name.clone()?,
            namespace: svc
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            selector: svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default(),
        })
    }
}

/// The pods that enforce a set of rules: a namespace and a label selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// A DNS-1123 label naming this workload's resource: `portcullis-<app>-<hash>`, where
    /// `<app>` is the `app` (or `app.kubernetes.io/name`, else every value) label, sanitised
    /// and cut to 41 characters, and `<hash>` 40 bits of SHA-256 over the whole selector
    /// (every key and value), so two selectors differing anywhere (`app: web` and
    /// `app.kubernetes.io/name: web`, or values sharing a long prefix) get different names.
    pub fn resource_name(&self) -> String {
        let app = self
            .labels
            .get("app")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .cloned()
            .unwrap_or_else(|| self.labels.values().cloned().collect::<Vec<_>>().join("-"));
        let mut base: String = app
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        base = base.trim_matches('-').to_string();
        // 11 ("portcullis-") + 41 + 1 + 10 = 63, the DNS-1123 label limit.
        base.truncate(41);
        let base = base.trim_end_matches('-');
        let mut h = Sha256::new();
        for (k, v) in &self.labels {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        let hex: String = h.finalize()[..5]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if base.is_empty() {
            format!("portcullis-{hex}")
        } else {
            format!("portcullis-{base}-{hex}")
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.namespace)?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// How a rule's target was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    Selector,
    Service,
}

/// Why a rule has no target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Nothing names a workload (reason `NoTarget`).
    #[error("{0}")]
    NoTarget(String),
    /// The Service is in another namespace, which does not admit this rule's (reason
    /// `CrossNamespace`).
    #[error(
        "spec.upstream.url names Service {target}/{service}, outside the Rule's namespace {from}; a Rule is enforced only on workloads of its own namespace (the operator may allow {from} under cross_namespace_targets.{target} in the global config)"
    )]
    CrossNamespace {
        from: String,
        target: String,
        service: String,
    },
}

impl TargetError {
    fn reason(&self) -> Reason {
        match self {
            Self::NoTarget(_) => Reason::NoTarget,
            Self::CrossNamespace { .. } => Reason::CrossNamespace,
        }
    }
}

/// The target workload of `rule` (see the module docs), or why there is none.
pub fn rule_target(
    rule: &Rule,
    services: &[ServiceInfo],
    global: &GlobalConfig,
) -> Result<(Workload, TargetSource), TargetError> {
    let no = |m: String| TargetError::NoTarget(m);
    let namespace = rule_namespace(rule);
    if let Some(sel) = &rule.spec.selector {
        if sel.match_labels.is_empty() {
            return Err(no("spec.selector.matchLabels is empty".into()));
        }
        return Ok((
            Workload {
                namespace,
                labels: sel.match_labels.clone(),
            },
            TargetSource::Selector,
        ));
    }
    let Some(url) = rule.spec.upstream.as_ref().and_then(|u| u.url.as_deref()) else {
        return Err(no(
            "no spec.selector and no spec.upstream.url to find the target Service".into(),
        ));
    };
    let host = url_host(url).ok_or_else(|| no(format!("spec.upstream.url {url:?} has no host")))?;
    let labels: Vec<&str> = host.split('.').collect();
    let (svc, svc_ns) = match labels.as_slice() {
        [svc] => (*svc, namespace.as_str()),
        [svc, ns] | [svc, ns, "svc", ..] => (*svc, *ns),
        _ => {
            return Err(no(format!(
                "spec.upstream.url host {host:?} is not a Service name (<svc>[.<ns>[.svc[.<domain>]]]); set spec.selector"
            )));
        }
    };
    if !crate::dns::is_label(svc) || !crate::dns::is_label(svc_ns) {
        return Err(no(format!(
            "spec.upstream.url host {host:?} is not a Service name; set spec.selector"
        )));
    }
    let known = services
        .iter()
        .find(|s| s.name == svc && s.namespace == svc_ns);
    // `<a>.<b>` could as well be an external name: unless it is a known Service, "no known
    // Service" says more than "another namespace" (both refuse it).
    let surely_in_cluster = labels.len() != 2;
    if !global.allows_target(&namespace, svc_ns) && (known.is_some() || surely_in_cluster) {
        return Err(TargetError::CrossNamespace {
            from: namespace.clone(),
            target: svc_ns.to_string(),
            service: svc.to_string(),
        });
    }
    let Some(s) = known.filter(|_| global.allows_target(&namespace, svc_ns)) else {
        return Err(no(format!(
            "spec.upstream.url host {host:?} names no known Service {svc_ns}/{svc}; create the Service (in manifests mode: a Service manifest) or set spec.selector"
        )));
    };
    if s.selector.is_empty() {
        return Err(no(format!(
            "Service {svc_ns}/{svc} has no selector (headless or external); set spec.selector"
        )));
    }
    Ok((
        Workload {
            namespace: svc_ns.to_string(),
            labels: s.selector.clone(),
        },
        TargetSource::Service,
    ))
}

/// The host of an absolute URL (lower-case, without userinfo and port).
fn url_host(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?;
    let host = match authority.rfind(':') {
        Some(i) if !authority.contains(']') || authority.rfind(']') < Some(i) => &authority[..i],
        _ => authority,
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn rule_namespace(rule: &Rule) -> String {
    rule.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// Oathkeeper Maester's rule id: `<name>.<namespace>`.
pub fn rule_id(rule: &Rule) -> String {
    format!(
        "{}.{}",
        rule.metadata.name.as_deref().unwrap_or_default(),
        rule_namespace(rule)
    )
}

fn handler_json(h: &RuleHandler) -> Value {
    match &h.config {
        Some(c) => json!({"handler": h.handler, "config": c}),
        None => json!({"handler": h.handler}),
    }
}

fn default_handler(name: &str) -> RuleHandler {
    RuleHandler {
        handler: name.into(),
        config: None,
    }
}

/// The rule in the filter's (Oathkeeper's) JSON shape, with Maester's defaults: authenticators
/// `[unauthorized]`, authorizer `deny`, mutators `[noop]` (or the legacy single `mutator`);
/// handler configs copied verbatim.
pub fn access_rule(rule: &Rule) -> Value {
    let s = &rule.spec;
    let authenticators = match &s.authenticators {
        Some(list) if !list.is_empty() => list.iter().map(handler_json).collect(),
        _ => vec![handler_json(&default_handler("unauthorized"))],
    };
    let authorizer = handler_json(s.authorizer.as_ref().unwrap_or(&default_handler("deny")));
    let mutators: Vec<Value> = match (&s.mutators, &s.mutator) {
        (Some(list), _) if !list.is_empty() => list.iter().map(handler_json).collect(),
        (_, Some(m)) => vec![handler_json(m)],
        _ => vec![handler_json(&default_handler("noop"))],
    };
    let errors: Vec<Value> = s.errors.iter().flatten().map(handler_json).collect();
    let upstream = s.upstream.clone().unwrap_or_default();
    json!({
        "id": rule_id(rule),
        "version": "",
        "description": "",
        "match": {"url": s.r#match.url, "methods": s.r#match.methods},
        "upstream": {
            "url": upstream.url.unwrap_or_default(),
            "preserve_host": upstream.preserve_host.unwrap_or(false),
            "strip_path": upstream.strip_path.unwrap_or_default(),
        },
        "authenticators": authenticators,
        "authorizer": authorizer,
        "mutators": mutators,
        "errors": errors,
    })
}

/// The fail-closed stand-in for an invalid rule: same id and match, always 401.
fn stand_in(rule: &Value) -> Value {
    json!({
        "id": rule["id"],
        "version": "",
        "description": "stand-in for an invalid rule: always 401",
        "match": rule["match"],
        "upstream": rule["upstream"],
        "authenticators": [{"handler": "unauthorized"}],
        "authorizer": {"handler": "deny"},
        "mutators": [{"handler": "noop"}],
        "errors": [],
    })
}

/// Why a rule is (not) ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Valid, targeted, compiled into its workload's config.
    Applied,
    /// Failed validation (enforced as a 401 stand-in when its match is usable).
    Invalid,
    /// No target workload could be determined: enforced nowhere.
    NoTarget,
    /// Applied, but some request can match it and another rule of the same workload.
    Overlapping,
    /// The workload's config exceeds what one Kubernetes object can hold: not applied.
    ConfigTooLarge,
    /// Writing the workload's resource failed (set by the caller that writes it).
    ApplyFailed,
    /// The target Service is in another namespace that does not admit this rule's: enforced
    /// nowhere.
    CrossNamespace,
    /// Another workload's resource would get the same name: neither is emitted.
    NameCollision,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "Applied",
            Self::Invalid => "Invalid",
            Self::NoTarget => "NoTarget",
            Self::Overlapping => "Overlapping",
            Self::ConfigTooLarge => "ConfigTooLarge",
            Self::ApplyFailed => "ApplyFailed",
            Self::CrossNamespace => "CrossNamespace",
            Self::NameCollision => "NameCollision",
        }
    }
}

/// What happened to one rule, for its status.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleOutcome {
    pub name: String,
    pub namespace: String,
    pub id: String,
    pub generation: Option<i64>,
    pub target: Option<Workload>,
    pub target_source: Option<TargetSource>,
    /// ORY's `validation.valid`: the rule passed the filter's validation.
    pub valid: bool,
    pub validation_error: Option<String>,
    pub reason: Reason,
    pub message: String,
}

impl RuleOutcome {
    pub fn ready(&self) -> bool {
        self.reason == Reason::Applied
    }

    /// The status to write, given the current one (keeps `lastTransitionTime` when `Ready` does
    /// not change) and the time now (RFC 3339).
    pub fn status(&self, previous: Option<&RuleStatus>, now: &str) -> RuleStatus {
        let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
        set_condition(
            &mut conditions,
            Condition {
                type_: READY.into(),
                status: if self.ready() { "True" } else { "False" }.into(),
                reason: Some(self.reason.as_str().into()),
                message: Some(self.message.clone()),
                observed_generation: self.generation,
                last_transition_time: Some(now.into()),
            },
        );
        RuleStatus {
            observed_generation: self.generation,
            validation: Some(Validation {
                valid: Some(self.valid),
                validation_error: self.validation_error.clone(),
            }),
            target: self.target.as_ref().map(ToString::to_string),
            conditions,
        }
    }
}

/// Which Istio resource carries a workload's filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    WasmPlugin,
    EnvoyFilter,
}

/// How to render resources.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub output: Output,
    /// Where sidecars fetch the filter module (`http(s)://`, `oci://` or `file://`).
    pub module_url: String,
    /// Hex SHA-256 of the module (required by Envoy for `http(s)` modules).
    pub module_sha256: String,
    /// Resources larger than this (serialized JSON) are not emitted.
    pub max_resource_bytes: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            output: Output::WasmPlugin,
            module_url: String::new(),
            module_sha256: String::new(),
            max_resource_bytes: MAX_RESOURCE_BYTES,
        }
    }
}

/// One workload's compiled filter config and rendered resource.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    pub workload: Workload,
    pub rule_ids: Vec<String>,
    pub filter_config: Value,
    pub resource: Value,
}

/// Everything the reconciler should make true.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredState {
    /// Workloads with at least one enforced rule and a config that fits.
    pub workloads: BTreeMap<Workload, WorkloadConfig>,
    /// One outcome per input rule, in input order.
    pub rules: Vec<RuleOutcome>,
}

impl DesiredState {
    /// The rendered resources, in workload order.
    pub fn resources(&self) -> Vec<Value> {
        self.workloads
            .values()
            .map(|w| w.resource.clone())
            .collect()
    }
}

struct Pending {
    outcome: RuleOutcome,
    /// The JSON to enforce (the rule, or its stand-in), if any.
    enforce: Option<Value>,
}

/// Computes the desired state (see the module docs).
pub fn desired_state(
    rules: &[Rule],
    services: &[ServiceInfo],
    global: &GlobalConfig,
    opts: &RenderOptions,
) -> DesiredState {
    let base = global.filter_config(&[]);
    let strategy = global.access_rules.matching_strategy.clone();
    let mut pending: Vec<Pending> = rules
        .iter()
        .map(|rule| evaluate(rule, services, global, &base))
        .collect();

    // Group enforced rules per workload; ids sorted so output is stable.
    let mut groups: BTreeMap<Workload, Vec<usize>> = BTreeMap::new();
    for (i, p) in pending.iter().enumerate() {
        if let (Some(w), Some(_)) = (&p.outcome.target, &p.enforce) {
            groups.entry(w.clone()).or_default().push(i);
        }
    }
    let mut workloads = BTreeMap::new();
    for (workload, mut members) in groups {
        members.sort_by(|a, b| pending[*a].outcome.id.cmp(&pending[*b].outcome.id));
        // A duplicate id (same name and namespace) cannot happen for API objects; in manifests
        // mode the later document is a mistake, reported as invalid.
        let mut seen = BTreeSet::new();
        members.retain(|&i| {
            let fresh = seen.insert(pending[i].outcome.id.clone());
            if !fresh {
                let p = &mut pending[i];
                p.outcome.valid = false;
                p.outcome.reason = Reason::Invalid;
                p.outcome.message = format!("another Rule has the same id {:?}", p.outcome.id);
                p.outcome.validation_error = Some(p.outcome.message.clone());
                p.enforce = None;
            }
            fresh
        });
        let methods: Vec<Vec<String>> = members
            .iter()
            .map(|&i| {
                let r = pending[i].enforce.as_ref();
                r.and_then(|r| r["match"]["methods"].as_array())
                    .map(|l| {
                        l.iter()
                            .filter_map(|m| m.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let urls: Vec<String> = members
            .iter()
            .map(|&i| {
                pending[i]
                    .enforce
                    .as_ref()
                    .and_then(|r| r["match"]["url"].as_str())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let candidates: Vec<Candidate<'_>> = members
            .iter()
            .enumerate()
            .map(|(k, &i)| Candidate {
                id: &pending[i].outcome.id,
                url: &urls[k],
                methods: &methods[k],
            })
            .collect();
        let overlaps = find_overlaps(&strategy, &candidates);
        drop(candidates);
        for o in overlaps {
            for (me, other) in [(&o.first, &o.second), (&o.second, &o.first)] {
                if let Some(&i) = members.iter().find(|&&i| &pending[i].outcome.id == me) {
                    let out = &mut pending[i].outcome;
                    let note = format!(
                        "overlaps with rule {other:?}: both match {} {} (the filter answers 500 for such requests)",
                        o.method, o.witness
                    );
                    if out.reason == Reason::Applied {
                        out.reason = Reason::Overlapping;
                        out.message = note;
                    } else if out.reason == Reason::Overlapping {
                        out.message.push_str("; ");
                        out.message.push_str(&note);
                    }
                }
            }
        }

        let rule_json: Vec<Value> = members
            .iter()
            .filter_map(|&i| pending[i].enforce.clone())
            .collect();
        let rule_ids: Vec<String> = members
            .iter()
            .map(|&i| pending[i].outcome.id.clone())
            .collect();
        let filter_config = global.filter_config(&rule_json);
        if let Err(e) = core_seam::compile_config(&filter_config) {
            // Every rule passed on its own, so this is a global problem (global handler config,
            // error handlers): the filter would refuse the config, so it is not emitted.
            for &i in &members {
                let out = &mut pending[i].outcome;
                out.reason = Reason::Invalid;
                out.message =
                    format!("the filter config of workload {workload} does not compile: {e}");
            }
            continue;
        }
        let resource = render(&workload, &rule_ids, &filter_config, opts);
        let size = serde_json::to_vec(&resource)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > opts.max_resource_bytes {
            for &i in &members {
                let out = &mut pending[i].outcome;
                out.reason = Reason::ConfigTooLarge;
                out.message = format!(
                    "the filter config of workload {workload} would be {size} bytes, over the {} bytes one Kubernetes object can hold; not applied (split the rules over more workloads or shorten handler configs)",
                    opts.max_resource_bytes
                );
            }
            continue;
        }
        workloads.insert(
            workload.clone(),
            WorkloadConfig {
                workload,
                rule_ids,
                filter_config,
                resource,
            },
        );
    }
    let mut state = DesiredState {
        workloads,
        rules: pending.into_iter().map(|p| p.outcome).collect(),
    };
    state.fail_closed_on_name_collisions();
    state
}

impl DesiredState {
    /// Drops every workload whose resource would share its kind, namespace and name with
    /// another's, and reports `NameCollision` on their rules: applying both would let the last
    /// write win while the other's rules still said `Applied`.
    pub fn fail_closed_on_name_collisions(&mut self) {
        let found = name_collisions(self.workloads.values().map(|w| (&w.workload, &w.resource)));
        for (workload, other) in found {
            let Some(wc) = self.workloads.remove(&workload) else {
                continue;
            };
            let name = wc.resource["metadata"]["name"].as_str().unwrap_or_default();
            for o in self
                .rules
                .iter_mut()
                .filter(|o| wc.rule_ids.contains(&o.id))
            {
                o.reason = Reason::NameCollision;
                o.message = format!(
                    "the resource of workload {workload} would have the same name ({name}) as that of workload {other}; neither is applied (change one selector)"
                );
            }
        }
    }
}

/// Every workload whose rendered resource has the same kind, namespace and name as another's,
/// with one of those others. Both sides are listed, so neither overwrites the other.
pub fn name_collisions<'a>(
    resources: impl Iterator<Item = (&'a Workload, &'a Value)>,
) -> Vec<(Workload, Workload)> {
    let mut by_key: BTreeMap<ResourceKey, Vec<&Workload>> = BTreeMap::new();
    for (w, r) in resources {
        by_key.entry(ResourceKey::of(r)).or_default().push(w);
    }
    let mut out = Vec::new();
    for group in by_key.values().filter(|g| g.len() > 1) {
        for (i, w) in group.iter().enumerate() {
            let other = group[if i == 0 { 1 } else { 0 }];
            out.push(((*w).clone(), other.clone()));
        }
    }
    out
}

fn evaluate(rule: &Rule, services: &[ServiceInfo], global: &GlobalConfig, base: &Value) -> Pending {
    let json = access_rule(rule);
    let target = rule_target(rule, services, global);
    let mut outcome = RuleOutcome {
        name: rule.metadata.name.clone().unwrap_or_default(),
        namespace: rule_namespace(rule),
        id: rule_id(rule),
        generation: rule.metadata.generation,
        target: target.as_ref().ok().map(|t| t.0.clone()),
        target_source: target.as_ref().ok().map(|t| t.1),
        valid: true,
        validation_error: None,
        reason: Reason::Applied,
        message: String::new(),
    };
    let validation = if rule.metadata.name.as_deref().unwrap_or_default().is_empty() {
        Err("metadata.name is required".to_string())
    } else {
        core_seam::validate_rule(&with_clusters(global, base, &json), &json)
    };
    let enforce = match validation {
        Ok(()) => Some(json),
        Err(e) => {
            outcome.valid = false;
            outcome.validation_error = Some(e.clone());
            outcome.reason = Reason::Invalid;
            let standin = stand_in(&json);
            let usable = core_seam::validate_rule(base, &standin).is_ok();
            outcome.message = if usable {
                format!("{e} (its URLs answer 401 until fixed)")
            } else {
                e
            };
            usable.then_some(standin)
        }
    };
    match (&target, &enforce) {
        (Err(why), _) => {
            if outcome.reason == Reason::Applied || why.reason() == Reason::CrossNamespace {
                outcome.reason = why.reason();
                outcome.message = why.to_string();
            } else {
                outcome.message = format!("{}; no target: {why}", outcome.message);
            }
            Pending {
                outcome,
                enforce: None,
            }
        }
        (Ok((w, source)), Some(_)) => {
            if outcome.reason == Reason::Applied {
                outcome.message = match source {
                    TargetSource::Selector => format!("enforced by workload {w}"),
                    TargetSource::Service => format!("enforced by workload {w} (from its Service)"),
                };
            }
            Pending { outcome, enforce }
        }
        (Ok(_), None) => Pending { outcome, enforce },
    }
}

/// `base` with the clusters the rule's own URLs need (so validation sees what compile will).
fn with_clusters(global: &GlobalConfig, base: &Value, rule: &Value) -> Value {
    let mut cfg = base.clone();
    let full = global.filter_config(std::slice::from_ref(rule));
    cfg["clusters"] = full["clusters"].clone();
    cfg
}

fn metadata(workload: &Workload, rule_ids: &[String]) -> Value {
    json!({
        "name": workload.resource_name(),
        "namespace": workload.namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        "annotations": {RULES_ANNOTATION: rule_ids.join(",")},
    })
}

/// The Istio resource for one workload.
pub fn render(
    workload: &Workload,
    rule_ids: &[String],
    filter_config: &Value,
    opts: &RenderOptions,
) -> Value {
    match opts.output {
        Output::WasmPlugin => {
            let mut spec = json!({
                "selector": {"matchLabels": workload.labels},
                "phase": "AUTHN",
                "url": opts.module_url,
                "pluginConfig": filter_config,
                "failStrategy": "FAIL_CLOSE",
                "match": [{"mode": "SERVER"}],
            });
            if !opts.module_sha256.is_empty() {
                spec["sha256"] = json!(opts.module_sha256);
            }
            json!({
                "apiVersion": "extensions.istio.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": metadata(workload, rule_ids),
                "spec": spec,
            })
        }
        Output::EnvoyFilter => {
            let cluster = istio_cluster(&opts.module_url)
                .map(|(_, c)| c)
                .unwrap_or_default();
            let code = json!({"remote": {
                "http_uri": {"uri": opts.module_url, "cluster": cluster, "timeout": "30s"},
                "sha256": opts.module_sha256,
            }});
            json!({
                "apiVersion": "networking.istio.io/v1alpha3",
                "kind": "EnvoyFilter",
                "metadata": metadata(workload, rule_ids),
                "spec": {
                    "workloadSelector": {"labels": workload.labels},
                    "configPatches": [{
                        "applyTo": "HTTP_FILTER",
                        "match": {
                            "context": "SIDECAR_INBOUND",
                            "listener": {"filterChain": {"filter": {
                                "name": "envoy.filters.network.http_connection_manager",
                                "subFilter": {"name": "envoy.filters.http.router"},
                            }}},
                        },
                        "patch": {
                            "operation": "INSERT_BEFORE",
                            "value": {
                                "name": "envoy.filters.http.wasm",
                                "typed_config": wasm_filter_config(code, filter_config),
                            },
                        },
                    }],
                },
            })
        }
    }
}

/// `envoy.extensions.filters.http.wasm.v3.Wasm` running the filter with `filter_config`.
/// `allow_on_headers_stop_iteration` (Envoy >= 1.35) lets the filter hold a request's headers
/// back while it reads the body a `remote` authorizer needs; without it Envoy never hands the
/// filter that body and such requests are refused.
pub fn wasm_filter_config(code: Value, filter_config: &Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": "portcullis",
            "root_id": "portcullis",
            "vm_config": {
                "vm_id": "portcullis",
                "runtime": "envoy.wasm.runtime.v8",
                "code": code,
            },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": filter_config.to_string(),
            },
            "failure_policy": "FAIL_CLOSED",
            "allow_on_headers_stop_iteration": true,
        },
    })
}

/// Identifies a rendered resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceKey {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    pub fn of(resource: &Value) -> ResourceKey {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        ResourceKey {
            api_version: s(&resource["apiVersion"]),
            kind: s(&resource["kind"]),
            namespace: s(&resource["metadata"]["namespace"]),
            name: s(&resource["metadata"]["name"]),
        }
    }
}

/// What to write after a change: only resources that are new or differ, and the ones to delete.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Changes {
    pub apply: Vec<Value>,
    pub delete: Vec<ResourceKey>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

/// The difference between the previous and the new desired resources.
pub fn diff(previous: &[Value], next: &[Value]) -> Changes {
    let before: BTreeMap<ResourceKey, &Value> =
        previous.iter().map(|r| (ResourceKey::of(r), r)).collect();
    let after: BTreeSet<ResourceKey> = next.iter().map(ResourceKey::of).collect();
    Changes {
        apply: next
            .iter()
            .filter(|r| before.get(&ResourceKey::of(r)) != Some(r))
            .cloned()
            .collect(),
        delete: before.into_keys().filter(|k| !after.contains(k)).collect(),
    }
}

#[cfg(test)]
mod tests;
