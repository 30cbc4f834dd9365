//! A scripted API server checks the exact writes of a sync: the first sync reads what a previous
//! run left, applies the desired resources, deletes the stale ones and writes statuses; a second
//! sync with nothing changed writes nothing.

use super::*;
use crate::rule_set::{MANAGED_BY, MANAGED_BY_LABEL};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::json;
use tower_test::mock;

use crate::mock_api::expect;

fn rule(name: &str, app: &str) -> Rule {
    serde_yaml::from_str(&format!(
        "apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {{name: {name}, namespace: default, generation: 1}}\nspec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  match: {{url: 'http://{app}/<.*>', methods: [GET]}}\n  authenticators: [{{handler: anonymous}}]\n  authorizer: {{handler: allow}}\n"
    ))
    .unwrap()
}

fn opts() -> RenderOptions {
    RenderOptions {
        module_url: "http://portcullis.kyma-system.svc:8080/filter.wasm".into(),
        module_sha256: "00".repeat(32),
        ..RenderOptions::default()
    }
}

const LIST: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dportcullis";

fn served() -> Namespaces {
    Namespaces::Only(vec!["default".into()])
}

/// The name of the `app: web` workload's resource.
fn web_name() -> String {
    crate::rule_set::Workload {
        namespace: "default".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
    }
    .resource_name()
}

/// Also the migration to hashed names: `portcullis-web`, written under the old naming, is
/// deleted once its successor is applied.
#[tokio::test]
async fn first_sync_applies_desired_deletes_stale_and_writes_statuses_then_nothing() {
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut rules = vec![rule("r1", "web")];
    let new_path = format!(
        "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins/{}?&force=true&fieldManager=portcullis",
        web_name()
    );
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, LIST, StatusCode::OK, json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPluginList", "metadata": {},
            "items": [{"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                "metadata": {"name": "portcullis-web", "namespace": "default", "labels": {MANAGED_BY_LABEL: MANAGED_BY}}, "spec": {}}]
        })).await;
        let applied = expect(&mut api, Method::PATCH, &new_path,
            StatusCode::OK, json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": web_name(), "namespace": "default"}})).await;
        expect(&mut api, Method::DELETE, "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins/portcullis-web?",
            StatusCode::OK, json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "portcullis-web", "namespace": "default"}})).await;
        let status = expect(&mut api, Method::PATCH,
            "/apis/oathkeeper.ory.sh/v1alpha1/namespaces/default/rules/r1/status?&force=true&fieldManager=portcullis",
            StatusCode::OK, json!({"apiVersion": "oathkeeper.ory.sh/v1alpha1", "kind": "Rule", "metadata": {"name": "r1", "namespace": "default"},
                "spec": {"match": {"url": "http://web/", "methods": ["GET"]}}})).await;
        (applied, status, api)
    });
    let mut state = SyncState::new(served());
    let report = sync_once(
        &client,
        &mut state,
        &rules,
        &[],
        &GlobalConfig::default(),
        &opts(),
        "t0",
    )
    .await;
    let (applied, status, mut api) = server.await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((report.applied, report.deleted, report.statuses), (1, 1, 1));
    assert_eq!(
        applied["spec"]["selector"]["matchLabels"],
        json!({"app": "web"})
    );
    assert_eq!(status["status"]["conditions"][0]["reason"], "Applied");
    assert_eq!(status["status"]["target"], "default/app=web");

    // The rule now carries that status; nothing changed: no request at all.
    rules[0].status = serde_json::from_value(status["status"].clone()).unwrap();
    let report = sync_once(
        &client,
        &mut state,
        &rules,
        &[],
        &GlobalConfig::default(),
        &opts(),
        "t1",
    )
    .await;
    assert!(report.errors.is_empty());
    assert_eq!((report.applied, report.deleted, report.statuses), (0, 0, 0));
    drop(client);
    assert!(!matches!(
        tokio::time::timeout(Duration::from_millis(100), api.next_request()).await,
        Ok(Some(_))
    ));
}

#[tokio::test]
async fn a_failed_apply_is_retried_next_sync_and_reported_on_the_rules() {
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let rules = vec![rule("r1", "web")];
    let path = format!(
        "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins/{}?&force=true&fieldManager=portcullis",
        web_name()
    );
    let path = path.as_str().to_owned();
    let status_path = "/apis/oathkeeper.ory.sh/v1alpha1/namespaces/default/rules/r1/status?&force=true&fieldManager=portcullis";
    let rule_reply = json!({"apiVersion": "oathkeeper.ory.sh/v1alpha1", "kind": "Rule", "metadata": {"name": "r1", "namespace": "default"},
        "spec": {"match": {"url": "http://web/", "methods": ["GET"]}}});
    let ok_plugin = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": web_name(), "namespace": "default"}});
    let server = tokio::spawn(async move {
        expect(
            &mut api,
            Method::GET,
            LIST,
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
        )
        .await;
        expect(&mut api, Method::PATCH, &path, StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd timeout"})).await;
        let failed_status = expect(
            &mut api,
            Method::PATCH,
            status_path,
            StatusCode::OK,
            rule_reply.clone(),
        )
        .await;
        // Second sync: the same apply again (it was not remembered as written).
        expect(&mut api, Method::PATCH, &path, StatusCode::OK, ok_plugin).await;
        let ok_status = expect(
            &mut api,
            Method::PATCH,
            status_path,
            StatusCode::OK,
            rule_reply,
        )
        .await;
        (failed_status, ok_status)
    });
    let mut state = SyncState::new(served());
    let first = sync_once(
        &client,
        &mut state,
        &rules,
        &[],
        &GlobalConfig::default(),
        &opts(),
        "t0",
    )
    .await;
    assert_eq!(first.errors.len(), 1);
    assert!(first.errors[0].to_string().contains("etcd timeout"));
    let second = sync_once(
        &client,
        &mut state,
        &rules,
        &[],
        &GlobalConfig::default(),
        &opts(),
        "t1",
    )
    .await;
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    let (failed_status, ok_status) = server.await.unwrap();
    assert_eq!(
        failed_status["status"]["conditions"][0]["reason"],
        "ApplyFailed"
    );
    assert_eq!(failed_status["status"]["conditions"][0]["status"], "False");
    assert_eq!(ok_status["status"]["conditions"][0]["reason"], "Applied");
}

/// The review's `harmless` Rule in `dev` naming `shop`'s Service (both namespaces watched): no
/// WasmPlugin anywhere, and the Rule says why.
#[tokio::test]
async fn a_rule_naming_another_namespaces_service_writes_nothing_but_its_status() {
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let harmless: Rule = serde_yaml::from_str(
        "apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: harmless, namespace: dev, generation: 1}\nspec:\n  upstream: {url: 'http://checkout.shop.svc.cluster.local:8080'}\n  match: {url: 'http://checkout/<.*>', methods: [GET]}\n  authenticators: [{handler: anonymous}]\n  authorizer: {handler: allow}\n",
    )
    .unwrap();
    let services = [ServiceInfo {
        name: "checkout".into(),
        namespace: "shop".into(),
        selector: [("app".to_string(), "checkout".to_string())].into(),
    }];
    let server = tokio::spawn(async move {
        let empty = json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []});
        for ns in ["dev", "shop"] {
            expect(&mut api, Method::GET,
                &format!("/apis/extensions.istio.io/v1alpha1/namespaces/{ns}/wasmplugins?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dportcullis"),
                StatusCode::OK, empty.clone()).await;
        }
        // No apply: straight to the Rule's status.
        let status = expect(&mut api, Method::PATCH,
            "/apis/oathkeeper.ory.sh/v1alpha1/namespaces/dev/rules/harmless/status?&force=true&fieldManager=portcullis",
            StatusCode::OK, json!({"apiVersion": "oathkeeper.ory.sh/v1alpha1", "kind": "Rule", "metadata": {"name": "harmless", "namespace": "dev"},
                "spec": {"match": {"url": "http://checkout/", "methods": ["GET"]}}})).await;
        assert!(!matches!(
            tokio::time::timeout(Duration::from_millis(200), api.next_request()).await,
            Ok(Some(_))
        ));
        status
    });
    let mut state = SyncState::new(Namespaces::Only(vec!["dev".into(), "shop".into()]));
    let report = sync_once(
        &client,
        &mut state,
        &[harmless],
        &services,
        &GlobalConfig::default(),
        &opts(),
        "t0",
    )
    .await;
    let status = server.await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((report.applied, report.statuses), (0, 1));
    let condition = &status["status"]["conditions"][0];
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "CrossNamespace");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("shop/checkout"),
        "{condition}"
    );
}
