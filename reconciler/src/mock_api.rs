//! Test support: a scripted kube API server (`tower_test::mock`), one expected request at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::Value;
use std::time::Duration;
use tower_test::mock::Handle;

pub(crate) type ApiServer = Handle<Request<Body>, Response<Body>>;

/// Waits for the next request, asserts its method and URI, answers `status` with `reply`, and
/// returns the request's JSON body (`Null` when empty).
pub(crate) async fn expect(
    handle: &mut ApiServer,
    method: Method,
    uri: &str,
    status: StatusCode,
    reply: Value,
) -> Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {uri}"))
        .expect("client dropped");
    assert_eq!(
        (req.method(), req.uri().to_string().as_str()),
        (&method, uri)
    );
    let bytes = req.into_body().collect_bytes().await.unwrap();
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    }
}
