//! The registry the OAuth2Client controller writes through, against an in-process service.

use super::*;
use portcullis::keys::Alg;
use portcullis::server::Config;
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
    let reg = ServiceRegistry::new(Arc::clone(&svc));
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
    let reg = ServiceRegistry::new(Arc::clone(&svc));
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
    let err = ServiceRegistry::new(Arc::clone(&svc))
        .upsert(hydra("taken", "c/default"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistrationError::NotManaged { client_id } if client_id == "taken"),
        "{err}"
    );
    assert!(
        svc.clients
            .authenticate_secret("taken", "keep-this-one")
            .await
            .is_ok()
    );
}

/// The review's takeover: `mine` in team-b names team-a's `billing-svc` in its Secret.
#[tokio::test]
async fn a_client_id_of_another_namespace_is_refused_and_survives_the_intruders_deletion() {
    let (svc, _dir) = service();
    let reg = ServiceRegistry::new(Arc::clone(&svc));
    let mut billing = hydra("billing-svc", "billing/team-a");
    billing.scope = "billing.admin".into();
    reg.upsert(billing).await.unwrap();
    for intruder in ["mine/team-b", "billing/team-b", "other/team-a"] {
        let mut takeover = hydra("billing-svc", intruder);
        takeover.client_secret = "chosen-by-team-b".into();
        takeover.scope = "everything".into();
        let err = reg.upsert(takeover).await.unwrap_err();
        assert!(
            matches!(&err, RegistrationError::OwnedByAnother { owner, .. } if owner == "billing/team-a"),
            "{intruder}: {err:?}"
        );
        assert_eq!(err.code(), "CLIENT_ID_CONFLICT");
        assert!(!err.to_string().contains("team-a"), "{err}");
        // Deleting the refused resource removes nothing of team-a's.
        reg.remove(intruder).await.unwrap();
    }
    let kept = svc.clients.get("billing-svc").unwrap();
    assert_eq!(
        (kept.owner.as_str(), kept.scope.as_str()),
        ("billing/team-a", "billing.admin")
    );
    assert!(
        svc.clients
            .authenticate_secret("billing-svc", "secret-of-billing-svc")
            .await
            .is_ok()
    );
    assert!(
        svc.clients
            .authenticate_secret("billing-svc", "chosen-by-team-b")
            .await
            .is_err()
    );
    // Its owner still updates it.
    let mut update = hydra("billing-svc", "billing/team-a");
    update.scope = "billing.read".into();
    reg.upsert(update).await.unwrap();
    assert_eq!(
        svc.clients.get("billing-svc").unwrap().scope,
        "billing.read"
    );
}

/// Two namespaces racing for a fresh client_id: exactly one gets it.
#[tokio::test]
async fn concurrent_claims_on_a_new_client_id_register_one_owner() {
    let (svc, _dir) = service();
    let reg = ServiceRegistry::new(Arc::clone(&svc));
    let (a, b) = tokio::join!(
        reg.upsert(hydra("fresh", "a/team-a")),
        reg.upsert(hydra("fresh", "b/team-b"))
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let owner = svc.clients.get("fresh").unwrap().owner;
    assert_eq!(owner, if a.is_ok() { "a/team-a" } else { "b/team-b" });
}

#[test]
fn lease_defaults() {
    let lock = lease_lock(Some("ns".into()));
    assert_eq!(lock.namespace, "ns");
    assert_eq!(lock.name, "portcullis-controller");
    assert!(!lock.holder.is_empty());
}

/// The wiring: with a (mock) API server, `run` takes the Lease and then starts both
/// controllers, which list Rules, Services, OAuth2Clients and Secrets.
#[tokio::test]
async fn run_takes_the_lease_then_starts_both_controllers() {
    use http::{Method, Request, Response};
    use kube::client::Body;
    let (mock, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(mock, "default");
    let (svc, _dir) = service();
    let settings = Settings {
        global: GlobalConfig::default(),
        render: RenderOptions::default(),
        namespaces: Namespaces::default(),
        lease_namespace: Some("ns".into()),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(client, svc, settings, async {
        let _ = stop_rx.await;
    }));
    let mut next = async || {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
            .await
            .expect("a request")
            .expect("client alive");
        (req.method().clone(), req.uri().path().to_string(), send)
    };
    let reply = |send: tower_test::mock::SendResponse<Response<Body>>, code: u16, body: Value| {
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    };
    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";
    let (m, p, send) = next().await;
    assert_eq!(
        (m, p.as_str()),
        (Method::GET, &*format!("{lease_path}/portcullis-controller"))
    );
    reply(
        send,
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    );
    let (m, p, send) = next().await;
    assert_eq!((m, p.as_str()), (Method::POST, lease_path));
    reply(
        send,
        201,
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "portcullis-controller", "namespace": "ns", "resourceVersion": "1"}, "spec": {}}),
    );
    // Everything per watched namespace (the default kyma-system and default): a Rule in any
    // other namespace is never read, and no cluster-wide RBAC is needed.
    let expected = [
        "/apis/oathkeeper.ory.sh/v1alpha1/namespaces/kyma-system/rules",
        "/apis/oathkeeper.ory.sh/v1alpha1/namespaces/default/rules",
        "/api/v1/namespaces/kyma-system/services",
        "/api/v1/namespaces/default/services",
        "/apis/hydra.ory.sh/v1alpha1/namespaces/kyma-system/oauth2clients",
        "/apis/hydra.ory.sh/v1alpha1/namespaces/default/oauth2clients",
        "/api/v1/namespaces/kyma-system/secrets",
        "/api/v1/namespaces/default/secrets",
    ];
    let mut seen = std::collections::BTreeSet::new();
    while !expected.iter().all(|p| seen.contains(*p)) {
        let (m, p, send) = next().await;
        assert_eq!(m, Method::GET, "{p}");
        assert!(
            p.contains("/namespaces/kyma-system/") || p.contains("/namespaces/default/"),
            "a request outside the watched namespaces: {p}"
        );
        seen.insert(p);
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
        );
    }
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run stops")
        .unwrap();
}
