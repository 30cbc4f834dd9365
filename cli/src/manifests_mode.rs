//! Manifests mode (`portcullis serve --manifests DIR`): the reconcilers without Kubernetes.
//! Every change of the directory is synced in one pass: clients are registered in the token
//! service in-process (generated credentials written back as 0600 Secret manifests), clients
//! whose manifest disappeared are removed, and one Envoy ECDS file per workload is written. A
//! workload that lost its last rule gets a disabled filter config (the ECDS way of deleting the
//! filter: Envoy keeps a filter's last config when its file goes away).
//!
//! Clients this mode registers carry [`MANAGED_BY_KEY`] in their `metadata`, so clients created
//! through the admin API are never touched.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use portcullis::client::Client;
use portcullis::server::Service;
use portcullis::store::ClientFilter;
use portcullis_reconciler::client::{
    ClientPlan, ExistingClient, HydraClient, RegistrationError, check_ownership, deletes_client,
};
use portcullis_reconciler::global::{ClusterNaming, GlobalConfig};
use portcullis_reconciler::manifests::{
    DocumentError, Manifests, ecds_document, plan_clients, write_atomic, write_ecds_files,
    write_secret_manifest,
};
use portcullis_reconciler::rule_set::{Reason, RenderOptions};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `metadata` key marking a client registered from a manifest; its value is `manifests`.
pub const MANAGED_BY_KEY: &str = "portcullis.io/managed-by";
/// `metadata` key holding the OAuth2Client's `deletionPolicy` (`delete` or `orphan`), so a
/// client whose manifest is gone can still be handled as it asked.
pub const DELETION_POLICY_KEY: &str = "portcullis.io/deletion-policy";
const MANAGED_BY_MANIFESTS: &str = "manifests";

/// Default Envoy cluster names for the control plane's own origins in a plain Envoy.
pub const PUBLIC_CLUSTER: &str = "portcullis_public";
pub const ADMIN_CLUSTER: &str = "portcullis_admin";

/// The global config of manifests mode when none is given: every handler enabled, and the
/// control plane's public and admin origins mapped to the Envoy clusters `public_cluster` and
/// `admin_cluster` (`cluster_naming: explicit`: a plain Envoy has no Istio outbound clusters).
pub fn default_global_config(
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    public_cluster: &str,
    admin_cluster: &str,
) -> GlobalConfig {
    let mut g = GlobalConfig {
        cluster_naming: ClusterNaming::Explicit,
        ..GlobalConfig::default()
    };
    add_own_clusters(
        &mut g,
        public_addr,
        admin_addr,
        public_cluster,
        admin_cluster,
    );
    g.mutators.entry("id_token".into()).or_default().enabled = true;
    wire_id_token_keys(&mut g, public_addr, admin_addr);
    g
}

/// Points the `id_token` mutator at this control plane's id-token key set (see
/// [`portcullis::id_token_keys`]) when its `jwks_url` is unset or a `file://` URL — what an
/// Oathkeeper configuration such as Kyma's (`file:///etc/secrets/jwks.json`) names, and a sidecar
/// cannot read — and defaults `issuer_url` to the public origin. An http(s) `jwks_url` is kept.
/// True when `jwks_url` now names this control plane (its admin origin must then be reachable:
/// see [`add_own_clusters`]).
pub fn wire_id_token_keys(
    g: &mut GlobalConfig,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
) -> bool {
    let Some(id_token) = g.mutators.get_mut("id_token") else {
        return false;
    };
    let config = id_token
        .config
        .get_or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(config) = config.as_object_mut() else {
        return false;
    };
    let local = config
        .get("jwks_url")
        .and_then(serde_json::Value::as_str)
        .is_none_or(|u| u.starts_with("file://"));
    if local {
        let url = format!(
            "{}{}",
            own_origin(admin_addr),
            portcullis::id_token_keys::PRIVATE_JWKS_PATH
        );
        tracing::info!(jwks_url = %url, "id_token mutator signs with the control plane's id-token key set");
        config.insert("jwks_url".into(), url.into());
    }
    config
        .entry("issuer_url")
        .or_insert_with(|| format!("{}/", own_origin(public_addr)).into());
    local
}

/// The origin Envoy reaches `addr` at (a wildcard or loopback bind as `127.0.0.1`).
fn own_origin(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// Adds the control plane's origins (unless already named) to `g.clusters`. A wildcard bind
/// address is reachable as `127.0.0.1` and `localhost`.
pub fn add_own_clusters(
    g: &mut GlobalConfig,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    public_cluster: &str,
    admin_cluster: &str,
) {
    for (addr, cluster) in [(public_addr, public_cluster), (admin_addr, admin_cluster)] {
        for origin in origins(addr) {
            g.clusters
                .entry(origin)
                .or_insert_with(|| cluster.to_string());
        }
    }
}

fn origins(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut out = Vec::new();
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        out.push(format!("http://127.0.0.1:{port}"));
        out.push(format!("http://localhost:{port}"));
    }
    if !addr.ip().is_unspecified() {
        out.push(format!("http://{addr}"));
    }
    out.sort();
    out.dedup();
    out
}

/// The filter module served on the public port (`GET /filter.wasm`, `GET /filter.wasm.sha256`).
#[derive(Clone)]
pub struct WasmModule {
    pub bytes: Option<Arc<Vec<u8>>>,
    pub sha256: String,
    pub path: PathBuf,
}

impl WasmModule {
    /// Reads the module; a missing file is logged (the routes then answer 404) rather than fatal,
    /// as the token service works without it.
    pub fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => {
                let sha256 = portcullis::crypto::hex(&portcullis::crypto::sha256(&bytes));
                WasmModule {
                    bytes: Some(Arc::new(bytes)),
                    sha256,
                    path: path.to_path_buf(),
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "filter module not readable: GET /filter.wasm answers 404 (build it with `make wasm`)");
                WasmModule {
                    bytes: None,
                    sha256: String::new(),
                    path: path.to_path_buf(),
                }
            }
        }
    }

    /// Routes serving the module and its SHA-256 (hex).
    pub fn router(&self) -> Router {
        let m = self.clone();
        let m2 = self.clone();
        Router::new()
            .route(
                "/filter.wasm",
                get(move || {
                    let m = m.clone();
                    async move {
                        match &m.bytes {
                            Some(b) => (
                                [(header::CONTENT_TYPE, "application/wasm")],
                                b.as_ref().clone(),
                            )
                                .into_response(),
                            None => not_found(),
                        }
                    }
                }),
            )
            .route(
                "/filter.wasm.sha256",
                get(move || {
                    let m = m2.clone();
                    async move {
                        if m.bytes.is_some() {
                            (
                                [(header::CONTENT_TYPE, "text/plain")],
                                format!("{}\n", m.sha256),
                            )
                                .into_response()
                        } else {
                            not_found()
                        }
                    }
                }),
            )
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "not_found", "error_description": "the filter module is not available"})),
    )
        .into_response()
}

/// Settings of manifests mode.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub ecds_dir: PathBuf,
    /// Absolute path of the filter module, as the ECDS files name it.
    pub wasm_path: String,
    pub global: GlobalConfig,
}

/// What one sync did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SyncReport {
    pub registered: Vec<String>,
    pub removed: Vec<String>,
    pub secrets_written: Vec<PathBuf>,
    pub ecds_written: Vec<PathBuf>,
    pub ecds_disabled: Vec<PathBuf>,
    pub errors: Vec<String>,
}

/// Credentials for a client without a Secret: a UUID and 32 random bytes (base64url).
fn generate_credentials() -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let secret = portcullis::secret::generate_secret()
        .unwrap_or_else(|_| portcullis::crypto::b64url(uuid::Uuid::new_v4().as_bytes()));
    (id, secret)
}

/// The token service's client for a planned registration, marked as owned by this mode.
pub fn to_client(h: &HydraClient, orphan: bool, managed_by: &str) -> Result<Client, String> {
    let mut v = serde_json::to_value(h).map_err(|e| e.to_string())?;
    let mut meta = match v.get("metadata").cloned() {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(other) => {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    meta.insert(MANAGED_BY_KEY.into(), json!(managed_by));
    meta.insert(
        DELETION_POLICY_KEY.into(),
        json!(if orphan { "orphan" } else { "delete" }),
    );
    v["metadata"] = Value::Object(meta);
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn managed_by(c: &Client) -> Option<&str> {
    c.metadata.get(MANAGED_BY_KEY).and_then(Value::as_str)
}

fn orphaned(c: &Client) -> bool {
    c.metadata
        .get(DELETION_POLICY_KEY)
        .and_then(Value::as_str)
        .is_some_and(|p| p.eq_ignore_ascii_case("orphan"))
}

/// Every client in the token service (all pages).
pub async fn all_clients(svc: &Service) -> Result<Vec<Client>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = svc
            .clients
            .list_filtered(500, token.as_deref(), ClientFilter::default())
            .await
            .map_err(|e| e.to_string())?;
        out.extend(page.clients);
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

fn error_kind_is(e: &DocumentError, kinds: &[&str]) -> bool {
    // A document whose kind is unknown (YAML syntax error) could be any of them.
    e.kind.as_deref().is_none_or(|k| kinds.contains(&k))
}

/// Syncs the token service and the ECDS files with `manifests`.
pub async fn sync(svc: &Service, settings: &Settings, manifests: &Manifests) -> SyncReport {
    let mut report = SyncReport::default();
    for e in &manifests.errors {
        tracing::error!(file = %e.file.display(), field = %e.field, "bad manifest: {e}");
        report.errors.push(e.to_string());
    }
    for n in &manifests.notes {
        tracing::info!("{n}");
    }
    sync_clients(svc, settings, manifests, &mut report).await;
    sync_rules(settings, manifests, &mut report);
    report
}

async fn sync_clients(
    svc: &Service,
    settings: &Settings,
    manifests: &Manifests,
    report: &mut SyncReport,
) {
    // A broken OAuth2Client or Secret document may be a client we know or the Secret of one:
    // neither generate credentials (that could replace the user's Secret) nor remove clients
    // until it is fixed.
    let uncertain = manifests
        .errors
        .iter()
        .any(|e| error_kind_is(e, &["OAuth2Client", "Secret"]));
    let plans = plan_clients(manifests, generate_credentials);
    // Who asks for which client_id: two manifests asking for one nobody holds get neither.
    let mut claims: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (located, plan) in &plans {
        if let Some(h) = &plan.register {
            claims
                .entry(h.client_id.as_str())
                .or_default()
                .push(owner_of(&located.object));
        }
    }
    let mut wanted_ids: BTreeSet<String> = BTreeSet::new();
    // Refused because another owner holds the client_id: retried once that client is removed
    // below (its manifest is gone), so a renamed OAuth2Client gets its client back in one pass.
    let mut refused: Vec<usize> = Vec::new();
    // Owners whose client could not be (re)registered this time: their current client stays.
    let mut kept_owners: BTreeSet<String> = BTreeSet::new();
    for (index, (located, plan)) in plans.iter().enumerate() {
        let c = &located.object;
        let owner = owner_of(c);
        let file = located.file.display().to_string();
        if plan.create_secret.is_some() && uncertain {
            tracing::warn!(client = %owner, file = %file,
                "not generating credentials while manifests have errors (the missing Secret may be in a broken document)");
            kept_owners.insert(owner);
            continue;
        }
        if let Some(secret) = &plan.create_secret {
            match write_secret_manifest(&settings.dir, secret) {
                Ok(path) => {
                    tracing::info!(client = %owner, path = %path.display(),
                        "generated credentials written as a Secret manifest (0600)");
                    report.secrets_written.push(path);
                }
                Err(e) => {
                    // Registering credentials nobody can read would lock the client out.
                    let msg = format!(
                        "OAuth2Client {owner} ({file}): cannot write its Secret manifest: {e}"
                    );
                    tracing::error!("{msg}");
                    report.errors.push(msg);
                    kept_owners.insert(owner);
                    continue;
                }
            }
        }
        let claimants = plan
            .register
            .as_ref()
            .and_then(|h| claims.get(h.client_id.as_str()))
            .map_or(&[][..], Vec::as_slice);
        let ok = register(svc, &owner, &file, c, plan, claimants, report).await;
        if ok.is_err() {
            kept_owners.insert(owner);
        }
        match (&plan.register, ok) {
            (Some(h), Ok(())) => {
                wanted_ids.insert(h.client_id.clone());
            }
            (Some(_), Err(RegistrationError::OwnedByAnother { .. })) => refused.push(index),
            _ => {}
        }
    }
    if uncertain {
        tracing::warn!("manifests have errors: no client is removed until they are fixed");
        return;
    }
    let clients = match all_clients(svc).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "listing clients failed; none removed");
            report.errors.push(format!("listing clients: {e}"));
            return;
        }
    };
    for c in clients {
        if managed_by(&c) != Some(MANAGED_BY_MANIFESTS)
            || wanted_ids.contains(&c.client_id)
            || kept_owners.contains(&c.owner)
        {
            continue;
        }
        if orphaned(&c) {
            tracing::debug!(client_id = %c.client_id, owner = %c.owner, "client orphaned (deletionPolicy: orphan)");
            continue;
        }
        match svc.clients.delete(&c.client_id).await {
            Ok(()) => {
                tracing::info!(client_id = %c.client_id, owner = %c.owner, "client removed: its OAuth2Client manifest is gone");
                report.removed.push(c.client_id);
            }
            Err(e) => {
                tracing::error!(client_id = %c.client_id, error = %e, "removing client failed");
                report
                    .errors
                    .push(format!("removing client {}: {e}", c.client_id));
            }
        }
    }
    for index in refused {
        let Some((located, plan)) = plans.get(index) else {
            continue;
        };
        let freed = plan
            .register
            .as_ref()
            .is_some_and(|h| report.removed.contains(&h.client_id));
        if !freed {
            continue;
        }
        let c = &located.object;
        let owner = owner_of(c);
        let file = located.file.display().to_string();
        let claimants = plan
            .register
            .as_ref()
            .and_then(|h| claims.get(h.client_id.as_str()))
            .map_or(&[][..], Vec::as_slice);
        let mut retry = SyncReport::default();
        if register(svc, &owner, &file, c, plan, claimants, &mut retry)
            .await
            .is_ok()
        {
            // The refusal reported in the first pass is stale now.
            let prefix = format!("OAuth2Client {owner} ({file}): ");
            report.errors.retain(|e| !e.starts_with(&prefix));
        }
        report.registered.extend(retry.registered);
        report.errors.extend(retry.errors);
    }
}

/// `<name>/<namespace>`: the owner recorded on the client (as in Kubernetes mode).
fn owner_of(c: &portcullis_reconciler::crd::OAuth2Client) -> String {
    format!(
        "{}/{}",
        c.metadata.name.as_deref().unwrap_or_default(),
        c.metadata.namespace.as_deref().unwrap_or("default")
    )
}

/// Registers one planned client unless its `client_id` is someone else's (see
/// [`check_ownership`]) or contested by several manifests; problems go to `report`.
async fn register(
    svc: &Service,
    owner: &str,
    file: &str,
    c: &portcullis_reconciler::crd::OAuth2Client,
    plan: &ClientPlan,
    claimants: &[String],
    report: &mut SyncReport,
) -> Result<(), RegistrationError> {
    let Some(h) = &plan.register else {
        let msg = format!(
            "OAuth2Client {owner} ({file}): {}: {}",
            plan.reason.as_str(),
            plan.message
        );
        tracing::error!("{msg}");
        report.errors.push(msg);
        return Err(RegistrationError::Failed(plan.message.clone()));
    };
    let result = register_checked(svc, h, c, claimants).await;
    match &result {
        Ok(what) => {
            tracing::info!(client = %owner, client_id = %h.client_id, file = %file, "client {what}");
            report.registered.push(h.client_id.clone());
        }
        Err(e) => {
            let msg = format!("OAuth2Client {owner} ({file}): {}: {e}", e.code());
            tracing::error!(other_owner = ?e, "{msg}");
            report.errors.push(msg);
        }
    }
    result.map(|_| ())
}

async fn register_checked(
    svc: &Service,
    h: &HydraClient,
    c: &portcullis_reconciler::crd::OAuth2Client,
    claimants: &[String],
) -> Result<&'static str, RegistrationError> {
    let client = to_client(h, !deletes_client(c), MANAGED_BY_MANIFESTS)
        .map_err(RegistrationError::Failed)?;
    let existing = svc.clients.get(&client.client_id);
    // Taking over a client someone registered through the admin API, or for another
    // OAuth2Client, would change its credentials under them.
    check_ownership(
        h,
        existing.as_ref().map(|e| ExistingClient {
            owner: &e.owner,
            managed: managed_by(e) == Some(MANAGED_BY_MANIFESTS),
        }),
    )?;
    if existing.is_none() && claimants.len() > 1 {
        return Err(RegistrationError::Contested {
            client_id: h.client_id.clone(),
            owners: claimants.join(", "),
        });
    }
    match svc.clients.upsert(client).await {
        Ok(portcullis::client::UpsertOutcome::Created(_)) => Ok("registered"),
        Ok(portcullis::client::UpsertOutcome::Updated(_)) => Ok("updated"),
        Ok(portcullis::client::UpsertOutcome::Unchanged(_)) => Ok("unchanged"),
        Err(e) => Err(RegistrationError::Failed(format!(
            "registering failed: {e}"
        ))),
    }
}

fn sync_rules(settings: &Settings, manifests: &Manifests, report: &mut SyncReport) {
    let state = manifests.desired_state(&settings.global, &RenderOptions::default());
    let files: BTreeMap<(String, String), String> = manifests
        .rules
        .iter()
        .filter_map(|r| {
            Some((
                (
                    r.object.metadata.namespace.clone().unwrap_or_default(),
                    r.object.metadata.name.clone()?,
                ),
                r.file.display().to_string(),
            ))
        })
        .collect();
    for o in &state.rules {
        let file = files
            .get(&(o.namespace.clone(), o.name.clone()))
            .or_else(|| files.get(&(String::new(), o.name.clone())))
            .cloned()
            .unwrap_or_default();
        let target = o
            .target
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        match o.reason {
            Reason::Applied => {
                tracing::info!(rule = %o.id, name = %o.name, namespace = %o.namespace, %target, "rule applied");
            }
            Reason::Overlapping => {
                tracing::warn!(rule = %o.id, name = %o.name, namespace = %o.namespace, %file, %target,
                    "rule Overlapping: {}", o.message);
            }
            _ => {
                let msg = format!(
                    "Rule {}/{} (id {}, {file}): {}: {}",
                    o.namespace,
                    o.name,
                    o.id,
                    o.reason.as_str(),
                    o.message
                );
                tracing::error!("{msg}");
                report.errors.push(msg);
            }
        }
    }
    let written = match write_ecds_files(&settings.ecds_dir, &state, &settings.wasm_path) {
        Ok(w) => w,
        Err(e) => {
            let msg = format!(
                "writing ECDS files into {}: {e}",
                settings.ecds_dir.display()
            );
            tracing::error!("{msg}");
            report.errors.push(msg);
            return;
        }
    };
    for p in &written.written {
        tracing::info!(path = %p.display(), "ECDS file written");
    }
    report.ecds_written = written.written;
    if written.stale.is_empty() {
        return;
    }
    // A rule document that failed to load may be the last rule of a workload: disabling its
    // filter then would open what the rule protected.
    if manifests.errors.iter().any(|e| error_kind_is(e, &["Rule"])) {
        tracing::warn!(
            "manifests have errors: workloads without rules keep their last filter config until they are fixed"
        );
        return;
    }
    let mut disabled = settings.global.filter_config(&[]);
    disabled["disabled"] = json!(true);
    let mut bytes = match serde_json::to_vec_pretty(&ecds_document(&disabled, &settings.wasm_path))
    {
        Ok(b) => b,
        Err(e) => {
            report.errors.push(e.to_string());
            return;
        }
    };
    bytes.push(b'\n');
    for path in written.stale {
        if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        match write_atomic(&path, &bytes) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "workload has no rules left: its filter is disabled");
                report.ecds_disabled.push(path);
            }
            Err(e) => {
                let msg = format!("writing {}: {e}", path.display());
                tracing::error!("{msg}");
                report.errors.push(msg);
            }
        }
    }
}

/// Watches `settings.dir` (polling every `interval`) and syncs on every change until `stop`
/// resolves.
pub async fn run(
    svc: Arc<Service>,
    settings: Settings,
    interval: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let dir = settings.dir.clone();
    let watcher = async move {
        portcullis_reconciler::manifests::watch_dir(&dir, interval, |loaded| {
            tx.send(loaded).is_ok()
        })
        .await;
    };
    let syncer = async {
        while let Some(mut loaded) = rx.recv().await {
            // Only the newest load matters when changes came in during a sync.
            while let Ok(newer) = rx.try_recv() {
                loaded = newer;
            }
            match loaded {
                Ok(m) => {
                    let r = sync(&svc, &settings, &m).await;
                    tracing::info!(
                        clients = r.registered.len(),
                        removed = r.removed.len(),
                        ecds_written = r.ecds_written.len(),
                        ecds_disabled = r.ecds_disabled.len(),
                        problems = r.errors.len(),
                        "manifests synced"
                    );
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
    };
    tokio::select! {
        _ = watcher => {}
        _ = syncer => {}
        _ = stop => {}
    }
}

#[cfg(test)]
mod tests;
