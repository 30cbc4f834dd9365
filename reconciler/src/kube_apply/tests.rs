//! Each scenario scripts the API server: it expects exactly these requests, in order, answers
//! them, and fails on a request that does not come within the timeout.

use super::*;
use crate::crd::{Condition, Validation};
use crate::rule_set::{Changes, diff};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use std::time::Duration;
use tower_test::mock::{self, Handle};

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

struct Expect {
    method: Method,
    uri: String,
    status: StatusCode,
    reply: Value,
}

/// Serves `script` and returns the bodies of the requests, in order.
async fn serve(mut handle: ApiServer, script: Vec<Expect>) -> Vec<Value> {
    let mut bodies = Vec::new();
    for e in script {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {} {}", e.method, e.uri))
            .expect("client dropped");
        assert_eq!(req.method(), e.method, "{}", req.uri());
        assert_eq!(req.uri().to_string(), e.uri);
        let bytes = req.into_body().collect_bytes().await.unwrap();
        bodies.push(if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        });
        send.send_response(
            Response::builder()
                .status(e.status)
                .body(Body::from(serde_json::to_vec(&e.reply).unwrap()))
                .unwrap(),
        );
    }
    bodies
}

fn plugin(name: &str, ns: &str, rules: &[&str]) -> Value {
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": ns, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "spec": {"selector": {"matchLabels": {"app": name}}, "phase": "AUTHN", "pluginConfig": {"rules": rules}},
    })
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

#[tokio::test]
async fn changed_resources_are_server_side_applied_and_stale_ones_deleted() {
    let (client, handle) = mock_client();
    let before = vec![
        plugin("a", "default", &["x"]),
        plugin("b", "default", &["y"]),
        plugin("c", "shop", &["z"]),
    ];
    let after = vec![
        plugin("a", "default", &["x"]),
        plugin("b", "default", &["y", "y2"]),
    ];
    let changes = diff(&before, &after);
    let server = tokio::spawn(serve(
        handle,
        vec![
            Expect {
                method: Method::PATCH,
                uri: "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins/b?&force=true&fieldManager=portcullis".into(),
                status: StatusCode::OK,
                reply: after[1].clone(),
            },
            Expect {
                method: Method::DELETE,
                uri: "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/c?".into(),
                status: StatusCode::OK,
                reply: plugin("c", "shop", &[]),
            },
        ],
    ));
    let errors = apply_changes(&client, &changes).await;
    assert!(errors.is_empty(), "{errors:?}");
    let bodies = server.await.unwrap();
    assert_eq!(
        bodies[0], after[1],
        "the apply body is the whole desired object"
    );
}

#[tokio::test]
async fn a_failed_write_is_reported_and_the_others_still_happen() {
    let (client, handle) = mock_client();
    let changes = Changes {
        apply: vec![plugin("a", "default", &[]), plugin("b", "default", &[])],
        delete: vec![ResourceKey {
            api_version: "extensions.istio.io/v1alpha1".into(),
            kind: "WasmPlugin".into(),
            namespace: "default".into(),
            name: "gone".into(),
        }],
    };
    let server = tokio::spawn(serve(
        handle,
        vec![
            Expect {
                method: Method::PATCH,
                uri: "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins/a?&force=true&fieldManager=portcullis".into(),
                status: StatusCode::UNPROCESSABLE_ENTITY,
                reply: json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422, "message": "spec.url: Required value"}),
            },
            Expect {
                method: Method::PATCH,
                uri: "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins/b?&force=true&fieldManager=portcullis".into(),
                status: StatusCode::OK,
                reply: plugin("b", "default", &[]),
            },
            Expect {
                method: Method::DELETE,
                uri: "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins/gone?".into(),
                status: StatusCode::NOT_FOUND,
                reply: not_found(),
            },
        ],
    ));
    let errors = apply_changes(&client, &changes).await;
    server.await.unwrap();
    assert_eq!(errors.len(), 1, "404 on delete is not an error: {errors:?}");
    let msg = errors[0].to_string();
    assert!(
        msg.contains("apply WasmPlugin default/a") && msg.contains("spec.url"),
        "{msg}"
    );
}

#[tokio::test]
async fn envoy_filters_go_to_the_networking_api() {
    let (client, handle) = mock_client();
    let mut ef = plugin("a", "default", &[]);
    ef["apiVersion"] = json!("networking.istio.io/v1alpha3");
    ef["kind"] = json!("EnvoyFilter");
    let server = tokio::spawn(serve(
        handle,
        vec![Expect {
            method: Method::PATCH,
            uri: "/apis/networking.istio.io/v1alpha3/namespaces/default/envoyfilters/a?&force=true&fieldManager=portcullis".into(),
            status: StatusCode::OK,
            reply: ef.clone(),
        }],
    ));
    let errors = apply_changes(
        &client,
        &Changes {
            apply: vec![ef],
            delete: vec![],
        },
    )
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn rule_status_is_applied_on_the_status_subresource() {
    let (client, handle) = mock_client();
    let status = RuleStatus {
        observed_generation: Some(2),
        validation: Some(Validation {
            valid: Some(false),
            validation_error: Some("bad".into()),
        }),
        target: Some("default/app=a".into()),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: Some("Invalid".into()),
            message: Some("bad".into()),
            observed_generation: Some(2),
            last_transition_time: Some("2026-01-01T00:00:00Z".into()),
        }],
    };
    let server = tokio::spawn(serve(
        handle,
        vec![Expect {
            method: Method::PATCH,
            uri: "/apis/oathkeeper.ory.sh/v1alpha1/namespaces/team/rules/r1/status?&force=true&fieldManager=portcullis".into(),
            status: StatusCode::OK,
            reply: json!({"apiVersion": "oathkeeper.ory.sh/v1alpha1", "kind": "Rule", "metadata": {"name": "r1", "namespace": "team"},
                "spec": {"match": {"url": "http://x/", "methods": ["GET"]}}}),
        }],
    ));
    patch_rule_status(&client, "team", "r1", &status)
        .await
        .unwrap();
    let bodies = server.await.unwrap();
    assert_eq!(bodies[0]["apiVersion"], "oathkeeper.ory.sh/v1alpha1");
    assert_eq!(bodies[0]["kind"], "Rule");
    assert_eq!(
        bodies[0]["status"]["validation"],
        json!({"valid": false, "validationError": "bad"})
    );
    assert_eq!(bodies[0]["status"]["conditions"][0]["reason"], "Invalid");
    assert!(
        bodies[0].get("spec").is_none(),
        "status apply must not touch the spec"
    );
}

#[tokio::test]
async fn managed_resources_are_listed_by_owner_label() {
    let (client, handle) = mock_client();
    let server = tokio::spawn(serve(
        handle,
        vec![Expect {
            method: Method::GET,
            uri: "/apis/extensions.istio.io/v1alpha1/wasmplugins?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dportcullis".into(),
            status: StatusCode::OK,
            reply: json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPluginList", "metadata": {},
                "items": [plugin("a", "default", &["x"])]}),
        }],
    ));
    let found = managed_resources(&client, Output::WasmPlugin, &Namespaces::All)
        .await
        .unwrap();
    server.await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(ResourceKey::of(&found[0]).name, "a");
    // Deleting what is no longer desired works from this listing.
    let changes = diff(&found, &[]);
    assert_eq!(changes.delete.len(), 1);
    assert_eq!(changes.delete[0].kind, "WasmPlugin");
}

/// With `--watch-namespaces`, the listing (and so any deletion) stays in those namespaces.
#[tokio::test]
async fn managed_resources_are_listed_only_in_served_namespaces() {
    let (client, handle) = mock_client();
    let list = |ns: &str| Expect {
        method: Method::GET,
        uri: format!(
            "/apis/extensions.istio.io/v1alpha1/namespaces/{ns}/wasmplugins?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dportcullis"
        ),
        status: StatusCode::OK,
        reply: json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPluginList", "metadata": {},
            "items": [plugin("a", ns, &["x"])]}),
    };
    let server = tokio::spawn(serve(handle, vec![list("team-a"), list("team-b")]));
    let served = Namespaces::Only(vec!["team-a".into(), "team-b".into()]);
    let found = managed_resources(&client, Output::WasmPlugin, &served)
        .await
        .unwrap();
    server.await.unwrap();
    let namespaces: Vec<String> = found.iter().map(|r| ResourceKey::of(r).namespace).collect();
    assert_eq!(namespaces, ["team-a", "team-b"]);
}
