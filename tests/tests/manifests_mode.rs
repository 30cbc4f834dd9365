//! Manifests mode end to end: the real `portcullis` binary reconciles an OAuth2Client, its
//! Secret and two Rules from a directory; a real Envoy gets the filter config from the ECDS
//! file the control plane writes, and calls the control plane for JWKS and introspection.

// Integration tests: helpers outside #[test] fns may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::control_plane::{ControlPlane, wait_for_ecds, wait_for_file};
use portcullis_e2e::{Envoy, Upstream};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "demo-client";
const CLIENT_SECRET: &str = "demo-secret-value-1234";

/// The Service the rules' `upstream.url` names: a rule's workload is its Service's selector.
const HTTPBIN_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default}
spec: {selector: {app: httpbin}}
";

fn client_manifests(dir: &Path) {
    fs::write(dir.join("httpbin-service.yaml"), HTTPBIN_SERVICE).unwrap();
    fs::write(
        dir.join("client.yaml"),
        format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: demo, namespace: default}}
type: Opaque
stringData: {{client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}}}
---
apiVersion: hydra.ory.sh/v1alpha1
kind: OAuth2Client
metadata: {{name: demo, namespace: default}}
spec:
  grantTypes: [client_credentials]
  scope: read write
  secretName: demo
"
        ),
    )
    .unwrap();
}

/// `GET /headers`: jwt, scope `read`, then `authorizer`.
fn jwt_rule(cp: &ControlPlane, authorizer: &str) -> String {
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
      scope_strategy: wildcard
  authorizer: {{handler: {authorizer}}}
  mutators:
  - handler: header
    config: {{headers: {{X-User: '{{{{ print .Subject }}}}'}}}}
",
        cp.public_url("/.well-known/jwks.json")
    )
}

/// `POST /post`: introspection, scope `write`.
fn introspection_rule(cp: &ControlPlane) -> String {
    format!(
        "apiVersion: oathkeeper.ory.sh/v1alpha1
kind: Rule
metadata: {{name: post, namespace: default}}
spec:
  upstream: {{url: 'http://httpbin.default.svc.cluster.local:8000'}}
  match: {{url: '<http|https>://<.*>/post', methods: [POST]}}
  authenticators:
  - handler: oauth2_introspection
    config:
      introspection_url: '{}'
      required_scope: [write]
      scope_strategy: exact
  authorizer: {{handler: allow}}
  mutators: [{{handler: noop}}]
",
        cp.admin_url("/admin/oauth2/introspect")
    )
}

fn status(envoy: &Envoy, method: &str, path: &str, token: Option<&str>) -> u16 {
    let client = portcullis_e2e::client();
    let mut req = match method {
        "POST" => client.post(envoy.url(path)).body("x"),
        _ => client.get(envoy.url(path)),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().unwrap().status().as_u16()
}

/// Polls until the request answers `want` (the control plane polls its directory and Envoy
/// reloads the ECDS file, so a change takes a moment).
fn eventually(
    envoy: &Envoy,
    cp: &ControlPlane,
    method: &str,
    path: &str,
    token: Option<&str>,
    want: u16,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = 0;
    while Instant::now() < deadline {
        last = status(envoy, method, path, token);
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{method} {path} answered {last}, not {want}, within 15 s\n--- control plane ---\n{}\n--- envoy ---\n{}",
        cp.log(),
        envoy.log_tail(40)
    );
}

fn yaml_field<'a>(doc: &'a serde_yaml::Value, path: &[&str]) -> &'a serde_yaml::Value {
    path.iter().fold(doc, |v, k| &v[*k])
}

#[test]
fn manifests_mode_issues_tokens_and_enforces_rules_in_a_running_envoy() {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path();
    client_manifests(dir);
    // The rules name the control plane's ports, known only once it runs: start it on the
    // client alone, then add the rules (which also exercises the directory watch).
    let cp = ControlPlane::start(&["--manifests", dir.to_str().unwrap()]);
    fs::write(dir.join("headers.yaml"), jwt_rule(&cp, "allow")).unwrap();
    fs::write(dir.join("post.yaml"), introspection_rule(&cp)).unwrap();
    let ecds = wait_for_ecds(&cp.data_dir.join("ecds"), "httpbin");

    let upstream = Upstream::start();
    let envoy = Envoy::builder(upstream.port())
        .ecds_file(&ecds)
        .cluster("portcullis_public", cp.public_port)
        .cluster("portcullis_admin", cp.admin_port)
        .start();

    // The Secret's credentials work for a token.
    let read = cp.token(CLIENT_ID, CLIENT_SECRET, "read").unwrap();
    let write = cp.token(CLIENT_ID, CLIENT_SECRET, "write").unwrap();
    assert_eq!(
        cp.token(CLIENT_ID, "wrong-secret", "read").unwrap_err().0,
        401
    );

    eventually(&envoy, &cp, "GET", "/headers", Some(&read), 200);
    assert_eq!(status(&envoy, "GET", "/headers", None), 401);
    // jwt without the required scope: 401 (as Oathkeeper's jwt authenticator).
    assert_eq!(status(&envoy, "GET", "/headers", Some(&write)), 401);
    // Introspection: good token 200, wrong scope 403, none 401.
    assert_eq!(status(&envoy, "POST", "/post", Some(&write)), 200);
    assert_eq!(status(&envoy, "POST", "/post", Some(&read)), 403);
    assert_eq!(status(&envoy, "POST", "/post", None), 401);
    // Unmatched paths of a protected workload are denied (no rule: 404).
    assert_eq!(status(&envoy, "GET", "/other", Some(&read)), 404);

    // Editing a Rule file changes the decision in the running Envoy.
    fs::write(dir.join("headers.yaml"), jwt_rule(&cp, "deny")).unwrap();
    eventually(&envoy, &cp, "GET", "/headers", Some(&read), 403);

    // A bad manifest is reported with its file and field; the good ones still apply.
    fs::write(
        dir.join("broken.yaml"),
        "apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: broken, namespace: default}\nspec:\n  match: {methods: [GET]}\n",
    )
    .unwrap();
    fs::write(dir.join("headers.yaml"), jwt_rule(&cp, "allow")).unwrap();
    eventually(&envoy, &cp, "GET", "/headers", Some(&read), 200);
    cp.wait_for_log("broken.yaml", Duration::from_secs(5));
    assert!(
        cp.log()
            .lines()
            .any(|l| l.contains("broken.yaml") && l.contains("spec.match") && l.contains("url")),
        "{}",
        cp.log()
    );

    // An OAuth2Client without a Secret: credentials are generated, written back 0600, and work.
    fs::write(
        dir.join("generated.yaml"),
        "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {name: gen, namespace: default}\nspec:\n  grantTypes: [client_credentials]\n  scope: read\n  secretName: gen-secret\n",
    )
    .unwrap();
    let secret_file = dir.join("gen-secret.default.secret.yaml");
    wait_for_file(&secret_file, Duration::from_secs(15));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode of {}", secret_file.display());
    }
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(&secret_file).unwrap()).unwrap();
    let decode = |key: &str| {
        use base64::Engine;
        let b64 = yaml_field(&doc, &["data", key]).as_str().unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    let (gen_id, gen_secret) = (decode("client_id"), decode("client_secret"));
    // The Secret is written before the client is registered (credentials are never registered
    // unless they were saved), so the token may take a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let gen_token = loop {
        match cp.token(&gen_id, &gen_secret, "read") {
            Ok(t) => break t,
            Err(e) => assert!(Instant::now() < deadline, "{e:?}\n{}", cp.log()),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eventually(&envoy, &cp, "GET", "/headers", Some(&gen_token), 200);
    // The written-back Secret is read on the next pass and keeps the same credentials.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cp
        .log()
        .lines()
        .any(|l| l.contains("client unchanged") && l.contains(&gen_id))
    {
        assert!(
            Instant::now() < deadline,
            "no pass read the written-back Secret\n{}",
            cp.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cp.token(&gen_id, &gen_secret, "read").is_ok());

    // Deleting the rules removes enforcement: the workload's filter is disabled.
    fs::remove_file(dir.join("broken.yaml")).unwrap();
    fs::remove_file(dir.join("headers.yaml")).unwrap();
    fs::remove_file(dir.join("post.yaml")).unwrap();
    eventually(&envoy, &cp, "GET", "/headers", None, 200);
    assert_eq!(status(&envoy, "POST", "/post", None), 200);
    let disabled: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&ecds).unwrap()).unwrap();
    let config = disabled["resources"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap();
    assert!(config.contains("\"disabled\":true"), "{config}");

    // Deleting an OAuth2Client manifest removes its client.
    fs::remove_file(dir.join("client.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match cp.token(CLIENT_ID, CLIENT_SECRET, "read") {
            Err((401, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "client still works: {other:?}\n{}",
                cp.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cp.token(&gen_id, &gen_secret, "read").is_ok());
}

#[test]
fn render_prints_resources_and_fails_readably_on_a_bad_directory() {
    let manifests = tempfile::tempdir().unwrap();
    fs::write(manifests.path().join("svc.yaml"), HTTPBIN_SERVICE).unwrap();
    fs::write(
        manifests.path().join("rule.yaml"),
        "apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: r, namespace: default}\nspec:\n  upstream: {url: 'http://httpbin.default.svc.cluster.local:8000'}\n  match: {url: 'http://httpbin.example.com/<.*>', methods: [GET]}\n  authenticators: [{handler: anonymous}]\n  authorizer: {handler: allow}\n",
    )
    .unwrap();
    fs::write(
        manifests.path().join("bad.yaml"),
        "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {name: c}\nspec: {secretName: s}\n",
    )
    .unwrap();
    let bin = portcullis_e2e::control_plane::binary();
    let out = std::process::Command::new(&bin)
        .args(["render", "--manifests"])
        .arg(manifests.path())
        .args(["--wasm-url", "http://cp.example/filter.wasm"])
        .args(["--wasm-sha256", &"ab".repeat(32)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.starts_with("# "), "{yaml}");
    assert!(yaml.contains("bad.yaml"), "{yaml}");
    assert!(yaml.contains("kind: WasmPlugin"), "{yaml}");
    assert!(
        yaml.contains("url: http://cp.example/filter.wasm"),
        "{yaml}"
    );
    assert!(yaml.contains(&"ab".repeat(32)), "{yaml}");

    let out = std::process::Command::new(&bin)
        .args(["render", "--output", "envoyfilter", "--manifests"])
        .arg(manifests.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("kind: EnvoyFilter")
    );

    let out = std::process::Command::new(&bin)
        .args(["render", "--manifests"])
        .arg(manifests.path().join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing"), "{err}");

    let out = std::process::Command::new(&bin)
        .arg("crds")
        .output()
        .unwrap();
    let crds = String::from_utf8(out.stdout).unwrap();
    assert!(
        crds.contains("rules.oathkeeper.ory.sh") && crds.contains("oauth2clients.hydra.ory.sh")
    );
}

/// The review's `harmless` Rule: written in `dev`, naming a Service of `shop`. It must not put a
/// filter on `shop`'s workload, and says why.
#[test]
fn render_puts_no_rule_of_one_namespace_on_another() {
    let manifests = tempfile::tempdir().unwrap();
    fs::write(
        manifests.path().join("shop.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: checkout, namespace: shop}\nspec: {selector: {app: checkout}}\n",
    )
    .unwrap();
    fs::write(
        manifests.path().join("harmless.yaml"),
        "apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: harmless, namespace: dev}\nspec:\n  upstream: {url: 'http://checkout.shop.svc.cluster.local:8080'}\n  match: {url: 'http://checkout.example.com/<.*>', methods: [GET]}\n  authenticators: [{handler: anonymous}]\n  authorizer: {handler: allow}\n---\napiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: guessed, namespace: dev}\nspec:\n  upstream: {url: 'http://nosuchservice.dev.svc.cluster.local'}\n  match: {url: 'http://other.example.com/<.*>', methods: [GET]}\n  authenticators: [{handler: anonymous}]\n  authorizer: {handler: allow}\n",
    )
    .unwrap();
    let out = std::process::Command::new(portcullis_e2e::control_plane::binary())
        .args(["render", "--manifests"])
        .arg(manifests.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(!yaml.contains("kind: WasmPlugin"), "{yaml}");
    assert!(
        yaml.lines()
            .any(|l| l.starts_with("# Rule dev/harmless: CrossNamespace")
                && l.contains("shop/checkout")),
        "{yaml}"
    );
    // No Service `nosuchservice` in dev: no guessed `app=nosuchservice` workload either.
    assert!(
        yaml.lines()
            .any(|l| l.starts_with("# Rule dev/guessed: NoTarget")),
        "{yaml}"
    );
}

/// The review's client takeover in manifests mode: `mine` in team-b names team-a's client_id.
#[test]
fn manifests_mode_refuses_a_client_id_owned_by_another_namespace() {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path();
    let client = |name: &str, ns: &str, secret: &str, scope: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData: {{client_id: billing-svc, client_secret: {secret}}}\n---\napiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  grantTypes: [client_credentials]\n  scope: {scope}\n  secretName: {name}\n"
        )
    };
    fs::write(
        dir.join("a.yaml"),
        client("billing", "team-a", "team-a-secret-1", "billing.admin"),
    )
    .unwrap();
    let cp = ControlPlane::start(&["--manifests", dir.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while cp
        .token("billing-svc", "team-a-secret-1", "billing.admin")
        .is_err()
    {
        assert!(Instant::now() < deadline, "{}", cp.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::write(
        dir.join("b.yaml"),
        client("mine", "team-b", "team-b-chosen-1", "billing.admin"),
    )
    .unwrap();
    cp.wait_for_log("CLIENT_ID_CONFLICT", Duration::from_secs(15));
    assert!(
        cp.token("billing-svc", "team-a-secret-1", "billing.admin")
            .is_ok(),
        "{}",
        cp.log()
    );
    assert_eq!(
        cp.token("billing-svc", "team-b-chosen-1", "billing.admin")
            .unwrap_err()
            .0,
        401
    );
    // Removing the refused manifest leaves team-a's client alone.
    let synced = cp.log().matches("manifests synced").count();
    fs::remove_file(dir.join("b.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while cp.log().matches("manifests synced").count() <= synced {
        assert!(Instant::now() < deadline, "{}", cp.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        cp.token("billing-svc", "team-a-secret-1", "billing.admin")
            .is_ok(),
        "{}",
        cp.log()
    );
}

#[test]
fn serve_kubernetes_without_a_cluster_fails_with_one_line() {
    let bin = portcullis_e2e::control_plane::binary();
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&bin)
        .args(["serve", "--kubernetes", "--data-dir"])
        .arg(home.path().join("data"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBECONFIG")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("portcullis:"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("--kubernetes"), "{err}");
}
