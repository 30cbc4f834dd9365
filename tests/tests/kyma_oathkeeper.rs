//! Kyma's shipped Oathkeeper configuration (`examples/kyma-oathkeeper/`), loaded as users load
//! it: `portcullis serve --manifests DIR --global-config oathkeeper.yaml` with the example Rules,
//! the ECDS file it writes in a real Envoy, and the control plane standing in for Hydra under
//! Hydra's Kyma service names (Istio outbound cluster names in the Envoy). Decisions of every
//! handler the configuration enables; the id_token checked with the published public keys by
//! josekit; the `hydrator` (Compass's tenant mapping, a scripted server here) feeding `id_token`
//! and `header` in one rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::control_plane::{ControlPlane, wait_for_ecds};
use portcullis_e2e::paths::repo_root;
use portcullis_e2e::scripted::{Answer, Scripted};
use portcullis_e2e::stack::Reply;
use portcullis_e2e::{Envoy, Upstream};
use serde_json::Value;
use std::fs;
use std::time::{Duration, Instant};

const HOST: &str = "httpbin.local.kyma.dev";
const HYDRA_PUBLIC: &str = "outbound|4444||ory-hydra-public.kyma-system.svc.cluster.local";
const HYDRA_ADMIN: &str = "outbound|4445||ory-hydra-admin.kyma-system.svc.cluster.local";
const COMPASS: &str = "outbound|3000||compass-director.compass-system.svc.cluster.local";

const CLIENT: &str = "apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default}
spec: {selector: {app: httpbin}}
---
apiVersion: v1
kind: Secret
metadata: {name: machine, namespace: default}
type: Opaque
stringData: {client_id: machine-client, client_secret: machine-secret-0123456789}
---
apiVersion: hydra.ory.sh/v1alpha1
kind: OAuth2Client
metadata: {name: machine, namespace: default}
spec:
  grantTypes: [client_credentials]
  scope: read write
  secretName: machine
";

fn get(envoy: &Envoy, path: &str, authorization: Option<&str>) -> Reply {
    let auth = authorization
        .map(|a| format!("\r\nAuthorization: {a}"))
        .unwrap_or_default();
    portcullis_e2e::raw::http1(
        envoy.port(),
        &format!("GET {path} HTTP/1.1\r\nHost: {HOST}{auth}"),
    )
}

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

#[test]
fn kyma_oathkeeper_configuration_loads_and_decides_as_oathkeeper() {
    let example = repo_root().join("examples/kyma-oathkeeper");
    let manifests = tempfile::tempdir().unwrap();
    fs::copy(
        example.join("rules.yaml"),
        manifests.path().join("rules.yaml"),
    )
    .unwrap();
    fs::write(manifests.path().join("client.yaml"), CLIENT).unwrap();
    let global = example.join("oathkeeper.yaml");
    let cp = ControlPlane::start(&[
        "--manifests",
        manifests.path().to_str().unwrap(),
        "--global-config",
        global.to_str().unwrap(),
        // The filter calls Hydra's admin service by its Kyma name.
        "--admin-hosts",
        "ory-hydra-admin.kyma-system.svc.cluster.local",
    ]);
    let ecds = wait_for_ecds(&cp.data_dir.join("ecds"), "httpbin");
    let upstream = Upstream::start();
    // Compass's tenant mapping: the session back, with the tenant of its subject.
    let compass = Scripted::start();
    compass.on("/tenant-mapping", |r| {
        let mut s = r.json();
        let tenant = format!("tenant-of-{}", s["subject"].as_str().unwrap_or(""));
        s["extra"] = serde_json::json!({"tenant": tenant});
        Answer::json(200, s)
    });
    let envoy = Envoy::builder(upstream.port())
        .cluster(COMPASS, compass.port())
        .ecds_file(&ecds)
        .cluster(HYDRA_PUBLIC, cp.public_port)
        .cluster(HYDRA_ADMIN, cp.admin_port)
        .cluster("portcullis_public", cp.public_port)
        .cluster("portcullis_admin", cp.admin_port)
        .start();

    // oauth2_client_credentials + id_token + header + cookie, all from the global config.
    let creds = basic("machine-client", "machine-secret-0123456789");
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let r = get(&envoy, "/machine/orders", Some(&creds));
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        reply.status,
        200,
        "{}\n--- control plane ---\n{}\n--- envoy ---\n{}",
        reply.body,
        cp.log(),
        envoy.log_tail(40)
    );
    let echo = reply.echo();
    assert_eq!(echo.header("x-server"), Some("oathkeeper"));
    assert_eq!(echo.header("cookie"), Some("processedWith=oathkeeper"));
    let token = echo
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("the id_token replaces the Basic credentials")
        .to_string();
    // Verified with the public half the control plane publishes.
    let published: Value = portcullis_e2e::client()
        .get(cp.public_url("/.well-known/id-token/jwks.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let header = josekit::jwt::decode_header(&token).unwrap();
    let kid = header.claim("kid").and_then(Value::as_str).unwrap();
    let jwk = published["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap();
    assert!(jwk.get("d").is_none());
    let jwk = josekit::jwk::Jwk::from_map(jwk.as_object().unwrap().clone()).unwrap();
    let verifier = josekit::jws::ES256.verifier_from_jwk(&jwk).unwrap();
    let (claims, _) = josekit::jwt::decode_with_verifier(&token, &verifier).unwrap();
    assert_eq!(claims.subject(), Some("machine-client"));
    assert_eq!(claims.issuer(), Some("https://oathkeeper.local.kyma.dev/"));
    let (iat, exp) = (claims.issued_at().unwrap(), claims.expires_at().unwrap());
    assert_eq!(exp.duration_since(iat).unwrap(), Duration::from_secs(60));

    assert_eq!(
        get(
            &envoy,
            "/machine/orders",
            Some(&basic("machine-client", "wrong"))
        )
        .status,
        401
    );
    assert_eq!(get(&envoy, "/machine/orders", None).status, 401);

    // jwt (wildcard scopes) and oauth2_introspection (exact) against the token service.
    let read = cp
        .token("machine-client", "machine-secret-0123456789", "read")
        .unwrap();
    let write = cp
        .token("machine-client", "machine-secret-0123456789", "write")
        .unwrap();
    let bearer = |t: &str| format!("Bearer {t}");
    let r = get(&envoy, "/jwt/a", Some(&bearer(&read)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.echo().header("x-server"), Some("oathkeeper"));
    assert_eq!(get(&envoy, "/jwt/a", Some(&bearer(&write))).status, 401);
    assert_eq!(get(&envoy, "/jwt/a", None).status, 401);
    assert_eq!(
        get(&envoy, "/introspect/a", Some(&bearer(&write))).status,
        200
    );
    assert_eq!(
        get(&envoy, "/introspect/a", Some(&bearer(&read))).status,
        403
    );
    assert_eq!(
        get(&envoy, "/introspect/a", Some("Bearer not-a-token")).status,
        401
    );

    // hydrator -> id_token -> header in one rule: both mutators see what the hydrator added.
    let r = get(&envoy, "/tenant/a", Some(&creds));
    assert_eq!(
        r.status,
        200,
        "{}\n--- envoy ---\n{}",
        r.body,
        envoy.log_tail(40)
    );
    let echo = r.echo();
    assert_eq!(echo.header("x-tenant"), Some("tenant-of-machine-client"));
    let token = echo
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("an id_token")
        .to_string();
    let (claims, _) = josekit::jwt::decode_with_verifier(&token, &verifier).unwrap();
    assert_eq!(claims.subject(), Some("machine-client"));
    assert_eq!(
        claims.claim("tenant").and_then(Value::as_str),
        Some("tenant-of-machine-client")
    );
    let calls = compass.requests("/tenant-mapping");
    assert_eq!(calls.len(), 1, "hydrator called once");
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].json()["subject"], "machine-client");
    // The tenant mapping down: 500, never forwarded without its session.
    compass.on("/tenant-mapping", |_| {
        Answer::json(503, serde_json::json!({}))
    });
    assert_eq!(get(&envoy, "/tenant/a", Some(&creds)).status, 500);

    // anonymous with Kyma's subject, deny, unauthorized, and no rule.
    let r = get(&envoy, "/public/a", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().header("x-user"), Some("anonymous"));
    assert_eq!(get(&envoy, "/closed/a", None).status, 403);
    assert_eq!(get(&envoy, "/never/a", None).status, 401);
    assert_eq!(get(&envoy, "/elsewhere", None).status, 404);
}
