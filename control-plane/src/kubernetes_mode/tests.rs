//! The registry the OAuth2Client controller writes through, against an in-process service.

use super::*;
use crate::keys::Alg;
use crate::server::Config;
use serde_json::json;

fn service() -> (Arc<Service>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path().to_path_buf());
    c.signing_alg = Alg::ES256;
    c.secrets_system = Some("unit-test-system-secret".into());
    (Service::open(c).unwrap(), dir)
}

fn hydra(id: &str, owner: &str) -> HydraClient {
    HydraClient {
        client_id: id.into(),
        client_secret: format!("secret-of-{id}"),
        grant_types: vec!["client_credentials".into()],
        scope: "read".into(),
        token_endpoint_auth_method: "client_secret_basic".into(),
        owner: owner.into(),
        ..HydraClient::default()
    }
}

#[tokio::test]
async fn upsert_registers_marked_clients_and_drops_a_rotated_client_id() {
    let (svc, _dir) = service();
    let reg = ServiceRegistry(Arc::clone(&svc));
    reg.upsert(hydra("one", "c/default")).await.unwrap();
    let c = svc.clients.get("one").unwrap();
    assert_eq!(c.metadata[MANAGED_BY_KEY], "kubernetes");
    assert!(
        svc.clients
            .authenticate_secret("one", "secret-of-one")
            .await
            .is_ok()
    );
    // The Secret now names another client_id: the old client goes.
    reg.upsert(hydra("two", "c/default")).await.unwrap();
    assert!(svc.clients.get("one").is_none());
    assert!(svc.clients.get("two").is_some());
}

#[tokio::test]
async fn remove_deletes_only_the_controllers_clients_of_that_owner() {
    let (svc, _dir) = service();
    let reg = ServiceRegistry(Arc::clone(&svc));
    reg.upsert(hydra("mine", "c/default")).await.unwrap();
    reg.upsert(hydra("other", "d/default")).await.unwrap();
    svc.clients
        .create(
            serde_json::from_value(json!({"client_id": "admin", "owner": "c/default",
                "grant_types": ["client_credentials"]}))
            .unwrap(),
        )
        .await
        .unwrap();
    reg.remove("c/default").await.unwrap();
    assert!(svc.clients.get("mine").is_none());
    assert!(svc.clients.get("other").is_some());
    assert!(svc.clients.get("admin").is_some());
    // Removing again (a retried cleanup) is fine.
    reg.remove("c/default").await.unwrap();
}

#[tokio::test]
async fn an_admin_api_client_is_not_taken_over() {
    let (svc, _dir) = service();
    svc.clients
        .create(
            serde_json::from_value(
                json!({"client_id": "taken", "client_secret": "keep-this-one",
                "grant_types": ["client_credentials"]}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let err = ServiceRegistry(Arc::clone(&svc))
        .upsert(hydra("taken", "c/default"))
        .await
        .unwrap_err();
    assert!(err.contains("taken"), "{err}");
    assert!(
        svc.clients
            .authenticate_secret("taken", "keep-this-one")
            .await
            .is_ok()
    );
}

#[test]
fn lease_defaults() {
    let lock = lease_lock(Some("ns".into()));
    assert_eq!(lock.namespace, "ns");
    assert_eq!(lock.name, "portcullis-controller");
    assert!(!lock.holder.is_empty());
}
