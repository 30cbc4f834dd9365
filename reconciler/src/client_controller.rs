//! The OAuth2Client controller (Kubernetes mode): watches `OAuth2Client`s and the Secrets they
//! name, and carries out [`plan_client`] — reads the Secret, creates it when absent (create only:
//! a Secret someone else created first is picked up on the next pass, never overwritten),
//! registers the client in the token service through [`ClientRegistry`], and writes the status.
//! A finalizer lets deletion remove the client (unless `deletionPolicy: orphan`). Failures go to
//! the status and requeue with exponential backoff; nothing here exits the process.
//!
//! A `client_id` belongs to the OAuth2Client it was first registered for: another resource (in
//! another namespace, or under another name) whose Secret names it is refused
//! (`Ready=False`, `CLIENT_ID_CONFLICT`, and a Warning event), and the registry never writes
//! over or deletes the owner's client for it ([`ClientRegistry`]).

use crate::client::{
    ClientPlan, FINALIZER, HydraClient, RegistrationError, deletes_client, plan_client,
};
use crate::crd::OAuth2Client;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Field manager of the controller's writes.
pub const FIELD_MANAGER: &str = "portcullis";

/// The token service, as the controller needs it (same process: no HTTP hop).
pub trait ClientRegistry: Send + Sync + 'static {
    /// Creates or replaces the client `client.client_id`, unless that id is registered for
    /// another owner or outside the controller ([`crate::client::check_ownership`]); the check
    /// and the write must be atomic against other upserts.
    fn upsert(
        &self,
        client: HydraClient,
    ) -> impl Future<Output = Result<(), RegistrationError>> + Send;
    /// Removes the client registered for `owner` (`<name>/<namespace>`).
    fn remove(&self, owner: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// Which namespaces the controller serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    All,
    Only(Vec<String>),
}

impl Default for Namespaces {
    /// `kyma-system` and `default`, as in Kyma's documentation.
    fn default() -> Self {
        Namespaces::Only(vec!["kyma-system".into(), "default".into()])
    }
}

impl Namespaces {
    pub fn contains(&self, ns: &str) -> bool {
        match self {
            Namespaces::All => true,
            Namespaces::Only(list) => list.iter().any(|n| n == ns),
        }
    }
}

/// Shared state of the controller.
pub struct ClientContext<R> {
    pub client: Client,
    pub registry: R,
    pub namespaces: Namespaces,
    /// Generates `(client_id, client_secret)` for clients without a Secret.
    pub generate: Box<dyn Fn() -> (String, String) + Send + Sync>,
    /// RFC 3339 time now (injectable for tests).
    pub now: Box<dyn Fn() -> String + Send + Sync>,
    /// Kubernetes events on the OAuth2Client (refused registrations).
    recorder: Recorder,
    failures: Mutex<HashMap<ObjectRef<OAuth2Client>, u32>>,
}

impl<R: ClientRegistry> ClientContext<R> {
    pub fn new(
        client: Client,
        registry: R,
        namespaces: Namespaces,
        generate: Box<dyn Fn() -> (String, String) + Send + Sync>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok().filter(|v| !v.is_empty()),
        };
        ClientContext {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            registry,
            namespaces,
            generate,
            now: Box::new(now_rfc3339),
            failures: Mutex::new(HashMap::new()),
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("OAuth2Client has no namespace")]
    NoNamespace,
    #[error("reading Secret {namespace}/{name}: {source}")]
    ReadSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating Secret {namespace}/{name}: {source}")]
    CreateSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("registering client {owner}: {source}")]
    Register {
        owner: String,
        #[source]
        source: RegistrationError,
    },
    #[error("removing client {owner}: {message}")]
    Remove { owner: String, message: String },
    #[error("writing status of OAuth2Client {owner}: {source}")]
    Status {
        owner: String,
        #[source]
        source: kube::Error,
    },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ClientError>>),
}

/// Reconciles one OAuth2Client (the function the controller runs; public for tests and for a
/// caller that drives reconciles itself).
pub async fn reconcile<R: ClientRegistry>(
    obj: Arc<OAuth2Client>,
    ctx: Arc<ClientContext<R>>,
) -> Result<Action, ClientError> {
    let namespace = obj.namespace().ok_or(ClientError::NoNamespace)?;
    if !ctx.namespaces.contains(&namespace) {
        return Ok(Action::await_change());
    }
    let api: Api<OAuth2Client> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Event::Apply(c) => apply(&c, &namespace, &ctx).await,
            Event::Cleanup(c) => cleanup(&c, &namespace, &ctx).await,
        }
    })
    .await
    .map_err(|e| ClientError::Finalizer(Box::new(e)))
}

async fn apply<R: ClientRegistry>(
    c: &OAuth2Client,
    namespace: &str,
    ctx: &ClientContext<R>,
) -> Result<Action, ClientError> {
    let name = c.name_any();
    let owner = format!("{name}/{namespace}");
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret_name = &c.spec.secret_name;
    // A name that is no Secret name (`../x`) never reaches a request path; the plan refuses it.
    let secret = if crate::dns::is_subdomain(secret_name) {
        secrets
            .get_opt(secret_name)
            .await
            .map_err(|source| ClientError::ReadSecret {
                namespace: namespace.into(),
                name: secret_name.clone(),
                source,
            })?
    } else {
        None
    };
    let plan = plan_client(c, secret.as_ref(), || (ctx.generate)());
    let mut failure: Option<(&str, String)> = None;
    let mut error = None;
    if let Some(new_secret) = &plan.create_secret {
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match secrets.create(&pp, new_secret).await {
            Ok(_) => {}
            // Someone else created it since we looked (GitOps race): use theirs, next pass.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Err(source) => {
                let err = ClientError::CreateSecret {
                    namespace: namespace.into(),
                    name: secret_name.clone(),
                    source,
                };
                failure = Some(("SECRET_CREATION_FAILED", err.to_string()));
                error = Some(err);
            }
        }
    }
    let mut conflict = None;
    if let (None, Some(reg)) = (&failure, &plan.register)
        && let Err(source) = ctx.registry.upsert(reg.clone()).await
    {
        failure = Some((source.code(), source.to_string()));
        if source.is_conflict() {
            // The owner's name stays in the log: the status is readable by this namespace.
            tracing::warn!(client = %owner, client_id = %reg.client_id, error = ?source,
                "registration refused: the client_id is not this OAuth2Client's");
            conflict = Some(source);
        } else {
            error = Some(ClientError::Register {
                owner: owner.clone(),
                source,
            });
        }
    }
    let written = write_status(
        c,
        namespace,
        &plan,
        failure.as_ref().map(|(code, m)| (*code, m.as_str())),
        ctx,
    )
    .await?;
    if let Some(refused) = &conflict
        && written
    {
        refused_event(c, refused, ctx).await;
    }
    match error {
        Some(e) => Err(e),
        // The owner may delete its client later; no point retrying sooner.
        None if conflict.is_some() => Ok(Action::requeue(Duration::from_secs(300))),
        None if plan.ready() => Ok(Action::requeue(Duration::from_secs(600))),
        // Invalid Secret: wait for it to change (Secrets are watched).
        None => Ok(Action::await_change()),
    }
}

/// A Warning event on the refused OAuth2Client, once per change of its status (so periodic
/// retries do not flood). A failed event is logged, never fails the reconcile.
async fn refused_event<R: ClientRegistry>(
    c: &OAuth2Client,
    refused: &RegistrationError,
    ctx: &ClientContext<R>,
) {
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "ClientIdConflict".into(),
        note: Some(refused.to_string()),
        action: "Register".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &c.object_ref(&())).await {
        tracing::warn!(client = %c.name_any(), error = %e, "recording the refusal as an event failed");
    }
}

async fn write_status<R: ClientRegistry>(
    c: &OAuth2Client,
    namespace: &str,
    plan: &ClientPlan,
    failure: Option<(&str, &str)>,
    ctx: &ClientContext<R>,
) -> Result<bool, ClientError> {
    let status = plan.status(
        c.metadata.generation,
        c.status.as_ref(),
        failure,
        &(ctx.now)(),
    );
    if c.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let api: Api<OAuth2Client> = Api::namespaced(ctx.client.clone(), namespace);
    let body =
        json!({"apiVersion": "hydra.ory.sh/v1alpha1", "kind": "OAuth2Client", "status": status});
    api.patch_status(
        &c.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| true)
    .map_err(|source| ClientError::Status {
        owner: format!("{}/{namespace}", c.name_any()),
        source,
    })
}

async fn cleanup<R: ClientRegistry>(
    c: &OAuth2Client,
    namespace: &str,
    ctx: &ClientContext<R>,
) -> Result<Action, ClientError> {
    if deletes_client(c) {
        let owner = format!("{}/{namespace}", c.name_any());
        ctx.registry
            .remove(&owner)
            .await
            .map_err(|message| ClientError::Remove { owner, message })?;
    }
    Ok(Action::await_change())
}

/// Requeue after 2^n seconds (n = consecutive failures of this object), at most 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(9)).min(Duration::from_secs(300))
}

fn error_policy<R: ClientRegistry>(
    obj: Arc<OAuth2Client>,
    _err: &ClientError,
    ctx: Arc<ClientContext<R>>,
) -> Action {
    let key = ObjectRef::from_obj(&*obj);
    let n = match ctx.failures.lock() {
        Ok(mut map) => {
            let n = map.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    Action::requeue(backoff(n - 1))
}

/// Runs the controller until the watch streams end. Secrets are watched too: a change to a
/// Secret an OAuth2Client names reconciles that client (rotating its credentials).
///
/// With a namespace list, each namespace gets its own watches: the control plane then needs
/// read access to Secrets only there (the RBAC in `istio/rbac.yaml`), not cluster-wide.
pub async fn run<R: ClientRegistry + Send + Sync + 'static>(ctx: Arc<ClientContext<R>>) {
    match &ctx.namespaces {
        Namespaces::All => {
            let scope = (Api::all(ctx.client.clone()), Api::all(ctx.client.clone()));
            run_scope(ctx, scope.0, scope.1).await;
        }
        Namespaces::Only(list) => {
            let runs = list.iter().map(|ns| {
                let clients = Api::namespaced(ctx.client.clone(), ns);
                let secrets = Api::namespaced(ctx.client.clone(), ns);
                run_scope(ctx.clone(), clients, secrets)
            });
            futures::future::join_all(runs).await;
        }
    }
}

async fn run_scope<R: ClientRegistry>(
    ctx: Arc<ClientContext<R>>,
    clients: Api<OAuth2Client>,
    secrets: Api<Secret>,
) {
    let controller = Controller::new(clients, watcher::Config::default());
    let store = controller.store();
    let ctx_for_reset = ctx.clone();
    controller
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| {
                let ns = secret.namespace();
                let name = secret.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|c| c.namespace() == ns && c.spec.secret_name == name)
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Ok((obj, _)) = &result
                && let Ok(mut map) = ctx_for_reset.failures.lock()
            {
                map.remove(obj);
            }
            async {}
        })
        .await;
}

/// The current UTC time as RFC 3339 (`2026-01-02T03:04:05Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
