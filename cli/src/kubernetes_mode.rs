//! Kubernetes mode (`portcullis serve --kubernetes`): the Rule and OAuth2Client controllers of
//! `portcullis-reconciler`, run only while this replica holds the leader Lease, with clients
//! registered in the token service in-process ([`ServiceRegistry`]). Controllers back off on
//! failed writes; nothing here ends the process.

use crate::manifests_mode::{MANAGED_BY_KEY, to_client};
use portcullis::server::Service;
use portcullis::store::ClientFilter;
use portcullis_reconciler::client::{
    ExistingClient, HydraClient, RegistrationError, check_ownership,
};
use portcullis_reconciler::client_controller::{self, ClientContext, ClientRegistry, Namespaces};
use portcullis_reconciler::global::GlobalConfig;
use portcullis_reconciler::leader::{LeaseLock, run_as_leader};
use portcullis_reconciler::rule_controller;
use portcullis_reconciler::rule_set::RenderOptions;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const MANAGED_BY_KUBERNETES: &str = "kubernetes";

/// The token service as the OAuth2Client controller's registry. Clients it registers are marked
/// in `metadata` ([`MANAGED_BY_KEY`]: `kubernetes`); only those are ever removed, and only for
/// their owner. The controller reconciles objects concurrently, so the ownership check and the
/// write happen under one lock: two namespaces racing for a fresh `client_id` cannot both pass.
#[derive(Clone)]
pub struct ServiceRegistry {
    svc: Arc<Service>,
    claims: Arc<tokio::sync::Mutex<()>>,
}

impl ServiceRegistry {
    pub fn new(svc: Arc<Service>) -> Self {
        ServiceRegistry {
            svc,
            claims: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    async fn managed_by_owner(&self, owner: &str) -> Result<Vec<String>, String> {
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let filter = ClientFilter {
                owner: Some(owner.to_string()),
                ..ClientFilter::default()
            };
            let page = self
                .svc
                .clients
                .list_filtered(500, token.as_deref(), filter)
                .await
                .map_err(|e| e.to_string())?;
            ids.extend(
                page.clients
                    .into_iter()
                    .filter(|c| {
                        c.metadata.get(MANAGED_BY_KEY).and_then(Value::as_str)
                            == Some(MANAGED_BY_KUBERNETES)
                    })
                    .map(|c| c.client_id),
            );
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return Ok(ids),
            }
        }
    }
}

impl ClientRegistry for ServiceRegistry {
    async fn upsert(&self, client: HydraClient) -> Result<(), RegistrationError> {
        let failed = |e: String| RegistrationError::Failed(e);
        let id = client.client_id.clone();
        let _claim = self.claims.lock().await;
        let existing = self.svc.clients.get(&id);
        check_ownership(
            &client,
            existing.as_ref().map(|e| ExistingClient {
                owner: &e.owner,
                managed: e.metadata.get(MANAGED_BY_KEY).and_then(Value::as_str)
                    == Some(MANAGED_BY_KUBERNETES),
            }),
        )?;
        // Deletion policy is the finalizer's business in this mode.
        let c = to_client(&client, false, MANAGED_BY_KUBERNETES).map_err(failed)?;
        self.svc
            .clients
            .upsert(c)
            .await
            .map_err(|e| failed(e.to_string()))?;
        // A Secret whose client_id changed leaves the old client behind: remove it.
        for old in self.managed_by_owner(&client.owner).await.map_err(failed)? {
            if old != id {
                self.svc
                    .clients
                    .delete(&old)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            }
        }
        Ok(())
    }

    async fn remove(&self, owner: &str) -> Result<(), String> {
        for id in self.managed_by_owner(owner).await? {
            match self.svc.clients.delete(&id).await {
                Ok(()) | Err(portcullis::client::ClientError::NotFound(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

/// Settings of Kubernetes mode.
#[derive(Debug, Clone)]
pub struct Settings {
    pub global: GlobalConfig,
    pub render: RenderOptions,
    pub namespaces: Namespaces,
    /// Namespace of the Lease [default: `POD_NAMESPACE`, else `kyma-system`].
    pub lease_namespace: Option<String>,
}

/// The leader Lease for this replica (holder: `POD_NAME`, `HOSTNAME`, or a random id).
pub fn lease_lock(namespace: Option<String>) -> LeaseLock {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    LeaseLock {
        namespace: namespace
            .or_else(|| env("POD_NAMESPACE"))
            .unwrap_or_else(|| "kyma-system".into()),
        name: "portcullis-controller".into(),
        holder: env("POD_NAME")
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        duration: Duration::from_secs(15),
    }
}

fn generate() -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let secret = portcullis::secret::generate_secret()
        .unwrap_or_else(|_| portcullis::crypto::b64url(uuid::Uuid::new_v4().as_bytes()));
    (id, secret)
}

/// Runs both controllers while leader, until `stop` resolves.
pub async fn run(
    client: kube::Client,
    svc: Arc<Service>,
    settings: Settings,
    stop: impl std::future::Future<Output = ()>,
) {
    let lock = lease_lock(settings.lease_namespace.clone());
    tracing::info!(lease = %format!("{}/{}", lock.namespace, lock.name), holder = %lock.holder,
        namespaces = ?settings.namespaces, url = %settings.render.module_url, "Kubernetes mode");
    let work = || {
        let ctx = Arc::new(ClientContext::new(
            client.clone(),
            ServiceRegistry::new(Arc::clone(&svc)),
            settings.namespaces.clone(),
            Box::new(generate),
        ));
        let rules = rule_controller::run(
            client.clone(),
            settings.global.clone(),
            settings.render.clone(),
            settings.namespaces.clone(),
            Duration::from_millis(500),
        );
        async move {
            tokio::join!(rules, client_controller::run(ctx));
        }
    };
    tokio::select! {
        _ = run_as_leader(client.clone(), lock, work) => {}
        _ = stop => {}
    }
}

#[cfg(test)]
mod tests;
