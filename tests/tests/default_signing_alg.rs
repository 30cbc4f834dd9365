//! Issue 9: a token service started with its defaults issues tokens that Oathkeeper's own `jwt`
//! default accepts. Kyma's Oathkeeper configuration sets no `allowed_algorithms`, and then the
//! jwt authenticator accepts RS256 only; while the token service's default was ES256, every
//! token it issued was refused (401) by such a configuration.
//!
//! Run with `PORTCULLIS_SIGNING_ALG=ES256` (inherited by the control plane) to see the old
//! default fail this test.

// Integration tests: helpers outside #[test] fns may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::control_plane::{ControlPlane, wait_for_ecds};
use portcullis_e2e::{Envoy, Upstream};
use std::fs;
use std::time::{Duration, Instant};

#[test]
fn default_tokens_pass_oathkeepers_default_jwt_algorithms() {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path();
    fs::write(
        dir.join("client.yaml"),
        "apiVersion: v1
kind: Secret
metadata: {name: kyma, namespace: default}
type: Opaque
stringData: {client_id: kyma-client, client_secret: kyma-secret-value-1234}
---
apiVersion: hydra.ory.sh/v1alpha1
kind: OAuth2Client
metadata: {name: kyma, namespace: default}
spec:
  grantTypes: [client_credentials]
  scope: read
  secretName: kyma
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default}
spec: {selector: {app: httpbin}}
",
    )
    .unwrap();
    // An Oathkeeper configuration as Kyma writes it: jwt without allowed_algorithms.
    let global = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        global.path(),
        "authenticators:
  jwt:
    enabled: true
    config:
      scope_strategy: wildcard
authorizers:
  allow: {enabled: true}
mutators:
  noop: {enabled: true}
# A plain Envoy (no Istio outbound clusters): the control plane names its own.
cluster_naming: explicit
",
    )
    .unwrap();
    let cp = ControlPlane::start(&[
        "--manifests",
        dir.to_str().unwrap(),
        "--global-config",
        global.path().to_str().unwrap(),
    ]);
    fs::write(
        dir.join("rule.yaml"),
        format!(
            "apiVersion: oathkeeper.ory.sh/v1alpha1
kind: Rule
metadata: {{name: headers, namespace: default}}
spec:
  upstream: {{url: 'http://httpbin.default.svc.cluster.local:8000'}}
  match: {{url: '<http|https>://<.*>/headers', methods: [GET]}}
  authenticators:
  - handler: jwt
    config:
      jwks_urls: ['{}']
      required_scope: [read]
  authorizer: {{handler: allow}}
  mutators: [{{handler: noop}}]
",
            cp.public_url("/.well-known/jwks.json")
        ),
    )
    .unwrap();
    let ecds = wait_for_ecds(&cp.data_dir.join("ecds"), "httpbin");
    let upstream = Upstream::start();
    let envoy = Envoy::builder(upstream.port())
        .ecds_file(&ecds)
        .cluster("portcullis_public", cp.public_port)
        .cluster("portcullis_admin", cp.admin_port)
        .start();
    let token = cp
        .token("kyma-client", "kyma-secret-value-1234", "read")
        .unwrap();
    let client = portcullis_e2e::client();
    // The ECDS file and the JWKS are picked up asynchronously (404, then 401 until the keys
    // arrive): poll for the answer with a deadline instead of waiting a fixed time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = 0;
    while Instant::now() < deadline {
        last = client
            .get(envoy.url("/headers"))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .status()
            .as_u16();
        if last == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        last,
        200,
        "a default token under Oathkeeper's default jwt algorithms\n--- control plane ---\n{}\n--- envoy ---\n{}",
        cp.log(),
        envoy.log_tail(40)
    );
}
