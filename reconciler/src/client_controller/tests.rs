//! Each scenario scripts the API server (method, path, answer) and asserts the bodies the
//! controller sent and the calls it made to the token service.

use super::*;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::Value;
use tower_test::mock;

use crate::mock_api::{ApiServer, expect};

#[derive(Clone, Default)]
struct FakeRegistry {
    calls: Arc<Mutex<Vec<String>>>,
    fail: bool,
    /// `client_id` -> owner of clients registered before the test.
    owned: Arc<Mutex<HashMap<String, String>>>,
}

impl ClientRegistry for FakeRegistry {
    fn upsert(
        &self,
        client: HydraClient,
    ) -> impl Future<Output = Result<(), RegistrationError>> + Send {
        self.calls.lock().unwrap().push(format!(
            "upsert {} {} {}",
            client.client_id, client.client_secret, client.scope
        ));
        let fail = self.fail;
        let owned = self.owned.lock().unwrap().get(&client.client_id).cloned();
        async move {
            if fail {
                return Err(RegistrationError::Failed("store unavailable".into()));
            }
            crate::client::check_ownership(
                &client,
                owned.as_deref().map(|owner| crate::client::ExistingClient {
                    owner,
                    managed: true,
                }),
            )
        }
    }
    fn remove(&self, owner: &str) -> impl Future<Output = Result<(), String>> + Send {
        self.calls.lock().unwrap().push(format!("remove {owner}"));
        async { Ok(()) }
    }
}

fn context(registry: FakeRegistry) -> (Arc<ClientContext<FakeRegistry>>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let mut ctx = ClientContext::new(
        Client::new(service, "default"),
        registry,
        Namespaces::default(),
        Box::new(|| ("gen-id".into(), "gen-secret-value".into())),
    );
    ctx.now = Box::new(|| "2026-11-29T00:00:00Z".into());
    (Arc::new(ctx), handle)
}

fn oauth2client(extra_meta: &str, extra_spec: &str) -> Arc<OAuth2Client> {
    Arc::new(
        serde_yaml::from_str(&format!(
            "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata:\n  name: c\n  namespace: default\n  uid: uid-1\n  generation: 2\n{extra_meta}spec:\n  grantTypes: [client_credentials]\n  scope: read write\n  secretName: c-secret\n{extra_spec}"
        ))
        .unwrap(),
    )
}

const WITH_FINALIZER: &str = "  finalizers: [hydra.ory.sh/finalizer]\n";

fn status_of(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

const SECRET_PATH: &str = "/api/v1/namespaces/default/secrets/c-secret";
const STATUS_PATH: &str = "/apis/hydra.ory.sh/v1alpha1/namespaces/default/oauth2clients/c/status?&force=true&fieldManager=portcullis";

#[tokio::test]
async fn an_existing_secret_is_used_and_ready_is_reported() {
    let registry = FakeRegistry::default();
    let (ctx, mut api) = context(registry.clone());
    let obj = oauth2client(WITH_FINALIZER, "");
    let reply = serde_json::to_value(&*obj).unwrap();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, SECRET_PATH, StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c-secret", "namespace": "default"},
                   "data": {"client_id": "aWQtMQ==", "client_secret": "c2VjcmV0LTE="}})).await;
        expect(&mut api, Method::PATCH, STATUS_PATH, StatusCode::OK, reply).await
    });
    let action = reconcile(obj, ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    let status = server.await.unwrap();
    assert_eq!(
        registry.calls.lock().unwrap().as_slice(),
        ["upsert id-1 secret-1 read write"]
    );
    assert_eq!(status["kind"], "OAuth2Client");
    let s = &status["status"];
    assert_eq!(s["observedGeneration"], 2);
    assert_eq!(s["conditions"][0]["type"], "Ready");
    assert_eq!(s["conditions"][0]["status"], "True");
    assert_eq!(s["conditions"][0]["reason"], "Registered");
    assert_eq!(
        s["conditions"][0]["lastTransitionTime"],
        "2026-11-29T00:00:00Z"
    );
    assert!(s.get("reconciliationError").is_none());
}

#[tokio::test]
async fn the_finalizer_is_added_before_anything_else() {
    let registry = FakeRegistry::default();
    let (ctx, mut api) = context(registry.clone());
    let obj = oauth2client("", "");
    let reply = serde_json::to_value(&*obj).unwrap();
    let server = tokio::spawn(async move {
        expect(
            &mut api,
            Method::PATCH,
            "/apis/hydra.ory.sh/v1alpha1/namespaces/default/oauth2clients/c?",
            StatusCode::OK,
            reply,
        )
        .await
    });
    let action = reconcile(obj, ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let patch = server.await.unwrap();
    assert_eq!(
        patch[1],
        json!({"op": "add", "path": "/metadata/finalizers", "value": ["hydra.ory.sh/finalizer"]})
    );
    assert!(registry.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_missing_secret_is_created_with_generated_credentials() {
    let registry = FakeRegistry::default();
    let (ctx, mut api) = context(registry.clone());
    let obj = oauth2client(WITH_FINALIZER, "");
    let reply = serde_json::to_value(&*obj).unwrap();
    let server = tokio::spawn(async move {
        expect(
            &mut api,
            Method::GET,
            SECRET_PATH,
            StatusCode::NOT_FOUND,
            status_of(404, "NotFound"),
        )
        .await;
        let created = expect(&mut api, Method::POST, "/api/v1/namespaces/default/secrets?&fieldManager=portcullis", StatusCode::CREATED,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c-secret", "namespace": "default"}})).await;
        let status = expect(&mut api, Method::PATCH, STATUS_PATH, StatusCode::OK, reply).await;
        (created, status)
    });
    reconcile(obj, ctx).await.unwrap();
    let (created, status) = server.await.unwrap();
    assert_eq!(created["metadata"]["name"], "c-secret");
    assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(
        created["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    assert_eq!(created["data"]["client_id"], "Z2VuLWlk");
    assert_eq!(
        registry.calls.lock().unwrap().as_slice(),
        ["upsert gen-id gen-secret-value read write"]
    );
    assert_eq!(
        status["status"]["conditions"][0]["reason"],
        "CredentialsGenerated"
    );
}

#[tokio::test]
async fn a_secret_created_by_someone_else_meanwhile_is_not_overwritten() {
    let registry = FakeRegistry::default();
    let (ctx, mut api) = context(registry.clone());
    let obj = oauth2client(WITH_FINALIZER, "");
    let server = tokio::spawn(async move {
        expect(
            &mut api,
            Method::GET,
            SECRET_PATH,
            StatusCode::NOT_FOUND,
            status_of(404, "NotFound"),
        )
        .await;
        expect(
            &mut api,
            Method::POST,
            "/api/v1/namespaces/default/secrets?&fieldManager=portcullis",
            StatusCode::CONFLICT,
            status_of(409, "AlreadyExists"),
        )
        .await;
        // Nothing else may come: no status, no overwrite.
        assert!(!matches!(
            tokio::time::timeout(Duration::from_millis(200), api.next_request()).await,
            Ok(Some(_))
        ));
    });
    let action = reconcile(obj, ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    server.await.unwrap();
    assert!(
        registry.calls.lock().unwrap().is_empty(),
        "generated credentials were not registered"
    );
}

#[tokio::test]
async fn a_registration_failure_goes_to_the_status_and_requeues() {
    let registry = FakeRegistry {
        fail: true,
        ..FakeRegistry::default()
    };
    let (ctx, mut api) = context(registry.clone());
    let obj = oauth2client(WITH_FINALIZER, "");
    let reply = serde_json::to_value(&*obj).unwrap();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, SECRET_PATH, StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c-secret"}, "data": {"CLIENT_ID": "aWQtMQ==", "CLIENT_SECRET": "c2VjcmV0LTE="}})).await;
        expect(&mut api, Method::PATCH, STATUS_PATH, StatusCode::OK, reply).await
    });
    let err = reconcile(obj.clone(), ctx.clone()).await.unwrap_err();
    assert!(err.to_string().contains("store unavailable"), "{err}");
    let status = server.await.unwrap();
    let s = &status["status"];
    assert_eq!(s["conditions"][0]["status"], "False");
    assert_eq!(s["conditions"][0]["reason"], "CLIENT_REGISTRATION_FAILED");
    assert_eq!(
        s["reconciliationError"]["statusCode"],
        "CLIENT_REGISTRATION_FAILED"
    );
    // Backoff grows per object.
    assert_eq!(
        error_policy(obj.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        error_policy(obj, &err, ctx),
        Action::requeue(Duration::from_secs(2))
    );
}

/// The review's takeover: this OAuth2Client's Secret names a client_id registered for an
/// OAuth2Client of another namespace.
#[tokio::test]
async fn a_client_id_owned_elsewhere_is_refused_with_a_condition_and_an_event() {
    let registry = FakeRegistry::default();
    registry
        .owned
        .lock()
        .unwrap()
        .insert("billing-svc".into(), "billing/team-a".into());
    let (ctx, mut api) = context(registry.clone());
    let obj = oauth2client(WITH_FINALIZER, "");
    let reply = serde_json::to_value(&*obj).unwrap();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, SECRET_PATH, StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c-secret", "namespace": "default"},
                   "stringData": {"client_id": "billing-svc", "client_secret": "chosen-by-intruder"}})).await;
        let status = expect(&mut api, Method::PATCH, STATUS_PATH, StatusCode::OK, reply).await;
        let event = expect(
            &mut api,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events?",
            StatusCode::CREATED,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": "2026-11-29T00:00:00.000000Z"}),
        )
        .await;
        // Nothing else: no Secret write, no finalizer change.
        assert!(!matches!(
            tokio::time::timeout(Duration::from_millis(200), api.next_request()).await,
            Ok(Some(_))
        ));
        (status, event)
    });
    let action = reconcile(obj, ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let (status, event) = server.await.unwrap();
    let s = &status["status"];
    assert_eq!(s["conditions"][0]["status"], "False");
    assert_eq!(s["conditions"][0]["reason"], "CLIENT_ID_CONFLICT");
    let message = s["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("billing-svc"), "{message}");
    assert!(
        !message.contains("team-a"),
        "the other tenant is not named: {message}"
    );
    assert_eq!(s["reconciliationError"]["statusCode"], "CLIENT_ID_CONFLICT");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "ClientIdConflict");
    assert_eq!(event["regarding"]["kind"], "OAuth2Client");
    assert_eq!(event["regarding"]["name"], "c");
    assert_eq!(event["regarding"]["namespace"], "default");
}

/// A `secretName` that is no Secret name never reaches a request path.
#[tokio::test]
async fn a_hostile_secret_name_is_refused_without_a_request_for_it() {
    let registry = FakeRegistry::default();
    let (ctx, mut api) = context(registry.clone());
    let mut obj = (*oauth2client(WITH_FINALIZER, "")).clone();
    obj.spec.secret_name = "../../kube-system/secrets/x".into();
    let obj = Arc::new(obj);
    let reply = serde_json::to_value(&*obj).unwrap();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::PATCH, STATUS_PATH, StatusCode::OK, reply).await
    });
    assert_eq!(reconcile(obj, ctx).await.unwrap(), Action::await_change());
    let status = server.await.unwrap();
    assert_eq!(status["status"]["conditions"][0]["status"], "False");
    assert_eq!(
        status["status"]["reconciliationError"]["statusCode"],
        "INVALID_SECRET"
    );
    assert!(registry.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn deletion_removes_the_client_then_the_finalizer() {
    for (spec, removed) in [("", true), ("  deletionPolicy: orphan\n", false)] {
        let registry = FakeRegistry::default();
        let (ctx, mut api) = context(registry.clone());
        let obj = oauth2client(
            &format!("{WITH_FINALIZER}  deletionTimestamp: '2026-11-29T00:00:00Z'\n"),
            spec,
        );
        let reply = serde_json::to_value(&*obj).unwrap();
        let server = tokio::spawn(async move {
            expect(
                &mut api,
                Method::PATCH,
                "/apis/hydra.ory.sh/v1alpha1/namespaces/default/oauth2clients/c?",
                StatusCode::OK,
                reply,
            )
            .await
        });
        reconcile(obj, ctx).await.unwrap();
        let patch = server.await.unwrap();
        assert_eq!(
            patch[1],
            json!({"op": "remove", "path": "/metadata/finalizers/0"})
        );
        let calls = registry.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            if removed {
                vec!["remove c/default".to_string()]
            } else {
                vec![]
            }
        );
    }
}

#[tokio::test]
async fn namespaces_outside_the_served_set_are_ignored() {
    let registry = FakeRegistry::default();
    let (ctx, mut api) = context(registry.clone());
    let mut obj = (*oauth2client("", "")).clone();
    obj.metadata.namespace = Some("team-a".into());
    assert_eq!(
        reconcile(Arc::new(obj), ctx).await.unwrap(),
        Action::await_change()
    );
    assert!(!matches!(
        tokio::time::timeout(Duration::from_millis(100), api.next_request()).await,
        Ok(Some(_))
    ));
    assert!(Namespaces::All.contains("team-a"));
}

#[test]
fn rfc3339_and_backoff() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    assert_eq!(backoff(0), Duration::from_secs(1));
    assert_eq!(backoff(3), Duration::from_secs(8));
    assert_eq!(backoff(40), Duration::from_secs(300));
}
