//! One sync pass at a time against an in-process token service and temp directories.

use super::*;
use portcullis::keys::Alg;
use portcullis::server::Config;
use portcullis_reconciler::manifests::load_dir;

struct Fixture {
    svc: Arc<Service>,
    settings: Settings,
    _data: tempfile::TempDir,
    _manifests: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let manifests = tempfile::tempdir().unwrap();
    let mut c = Config::new(data.path().to_path_buf());
    c.signing_alg = Alg::ES256;
    c.secrets_system = Some("unit-test-system-secret".into());
    let public = c.public_addr;
    let admin = c.admin_addr;
    let svc = Service::open(c).unwrap();
    Fixture {
        svc,
        settings: Settings {
            dir: manifests.path().to_path_buf(),
            ecds_dir: data.path().join("ecds"),
            wasm_path: "/opt/filter.wasm".into(),
            global: default_global_config(public, admin, PUBLIC_CLUSTER, ADMIN_CLUSTER),
        },
        _data: data,
        _manifests: manifests,
    }
}

impl Fixture {
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.settings.dir.join(name), text).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.settings.dir.join(name)).unwrap();
    }

    async fn sync(&self) -> SyncReport {
        let m = load_dir(&self.settings.dir).unwrap();
        sync(&self.svc, &self.settings, &m).await
    }

    fn ecds(&self) -> Value {
        let path = self.settings.ecds_dir.join(HTTPBIN_ECDS.as_str());
        let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let cfg = doc["resources"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
            .to_string();
        serde_json::from_str(&cfg).unwrap()
    }
}

fn client_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  grantTypes: [client_credentials]\n  scope: read\n  secretName: {name}-secret\n{extra}"
    )
}

fn secret_yaml(name: &str, id: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-secret, namespace: default}}\nstringData: {{CLIENT_ID: {id}, CLIENT_SECRET: secret-{id}}}\n"
    )
}

/// The Service the rules name: without it a rule has no target.
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin, namespace: default}\nspec: {selector: {app: httpbin}}\n";

static HTTPBIN_ECDS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    portcullis_reconciler::manifests::ecds_file_name(&portcullis_reconciler::rule_set::Workload {
        namespace: "default".into(),
        labels: [("app".to_string(), "httpbin".to_string())].into(),
    })
});

const RULE: &str = "apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: r, namespace: default}\nspec:\n  upstream: {url: 'http://httpbin.default.svc:8000'}\n  match: {url: 'http://127.0.0.1:4444/<.*>', methods: [GET]}\n  authenticators: [{handler: jwt, config: {jwks_urls: ['http://127.0.0.1:4444/.well-known/jwks.json']}}]\n  authorizer: {handler: allow}\n";

#[tokio::test]
async fn clients_from_secrets_are_registered_marked_and_removed_with_their_manifest() {
    let f = fixture();
    f.write(
        "a.yaml",
        &format!("{}---\n{}", client_yaml("a", ""), secret_yaml("a", "id-a")),
    );
    f.write(
        "b.yaml",
        &format!(
            "{}---\n{}",
            client_yaml("b", "  deletionPolicy: orphan\n"),
            secret_yaml("b", "id-b")
        ),
    );
    let admin_made = f
        .svc
        .clients
        .create(
            serde_json::from_value(
                json!({"client_id": "by-admin", "grant_types": ["client_credentials"]}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let r = f.sync().await;
    assert_eq!(r.registered, ["id-a", "id-b"], "{r:?}");
    let a = f.svc.clients.get("id-a").unwrap();
    assert_eq!(a.metadata[MANAGED_BY_KEY], "manifests");
    assert_eq!(a.owner, "a/default");
    assert!(
        f.svc
            .clients
            .authenticate_secret("id-a", "secret-id-a")
            .await
            .is_ok()
    );

    f.remove("a.yaml");
    f.remove("b.yaml");
    let r = f.sync().await;
    assert_eq!(r.removed, ["id-a"], "{r:?}");
    assert!(f.svc.clients.get("id-a").is_none());
    // deletionPolicy: orphan keeps the client; admin-API clients are never touched.
    assert!(f.svc.clients.get("id-b").is_some());
    assert!(f.svc.clients.get(&admin_made.client_id).is_some());
}

#[tokio::test]
async fn browser_client_settings_of_a_cr_reach_the_token_service() {
    let f = fixture();
    let spec = "  grantTypes: [authorization_code, refresh_token]\n  responseTypes: [code]\n  \
        scope: openid offline\n  secretName: web-secret\n  \
        redirectUris: ['https://app.example/cb']\n  \
        postLogoutRedirectUris: ['https://app.example/bye']\n  skipConsent: true\n  \
        backChannelLogoutURI: https://app.example/bc\n  backChannelLogoutSessionRequired: true\n  \
        frontChannelLogoutURI: https://app.example/fc\n  frontChannelLogoutSessionRequired: true\n  \
        tokenLifespans: {authorization_code_grant_access_token_lifespan: 5m, \
        authorization_code_grant_id_token_lifespan: 2m, refresh_token_grant_refresh_token_lifespan: 48h}\n";
    f.write(
        "web.yaml",
        &format!(
            "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: web, namespace: default}}\nspec:\n{spec}---\n{}",
            secret_yaml("web", "id-web")
        ),
    );
    let r = f.sync().await;
    assert_eq!(r.registered, ["id-web"], "{r:?}");
    let c = f.svc.clients.lookup("id-web").unwrap();
    assert_eq!(c.client.backchannel_logout_uri, "https://app.example/bc");
    assert!(c.client.backchannel_logout_session_required);
    assert_eq!(c.client.frontchannel_logout_uri, "https://app.example/fc");
    assert!(c.client.frontchannel_logout_session_required);
    assert!(c.client.skip_consent);
    assert_eq!(
        c.client.post_logout_redirect_uris,
        ["https://app.example/bye"]
    );
    assert_eq!(c.lifespans.code_access, Some(300));
    assert_eq!(c.lifespans.code_id, Some(120));
    assert_eq!(c.lifespans.refresh_refresh, Some(48 * 3600));
}

#[tokio::test]
async fn a_client_id_taken_through_the_admin_api_is_not_taken_over() {
    let f = fixture();
    f.svc
        .clients
        .create(serde_json::from_value(json!({"client_id": "id-a", "client_secret": "original-secret", "grant_types": ["client_credentials"]})).unwrap())
        .await
        .unwrap();
    f.write(
        "a.yaml",
        &format!("{}---\n{}", client_yaml("a", ""), secret_yaml("a", "id-a")),
    );
    let r = f.sync().await;
    assert!(r.registered.is_empty());
    assert!(
        r.errors.iter().any(|e| e.contains("CLIENT_ID_CONFLICT")
            && e.contains("not registered from an OAuth2Client")),
        "{r:?}"
    );
    assert!(
        f.svc
            .clients
            .authenticate_secret("id-a", "original-secret")
            .await
            .is_ok()
    );
}

fn ns_client_yaml(name: &str, ns: &str, scope: &str) -> String {
    format!(
        "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  grantTypes: [client_credentials]\n  scope: {scope}\n  secretName: {name}-secret\n"
    )
}

fn ns_secret_yaml(name: &str, ns: &str, id: &str, secret: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-secret, namespace: {ns}}}\nstringData: {{client_id: {id}, client_secret: {secret}}}\n"
    )
}

/// The review's takeover in manifests mode: `mine` in team-b reuses team-a's `billing-svc`.
#[tokio::test]
async fn a_client_id_owned_by_another_manifest_is_not_taken_over() {
    let f = fixture();
    f.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            ns_client_yaml("billing", "team-a", "billing.admin"),
            ns_secret_yaml("billing", "team-a", "billing-svc", "team-a-secret")
        ),
    );
    let r = f.sync().await;
    assert_eq!(r.registered, ["billing-svc"], "{r:?}");
    f.write(
        "b.yaml",
        &format!(
            "{}---\n{}",
            ns_client_yaml("mine", "team-b", "everything"),
            ns_secret_yaml("mine", "team-b", "billing-svc", "team-b-chosen")
        ),
    );
    let r = f.sync().await;
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("mine/team-b") && e.contains("CLIENT_ID_CONFLICT")),
        "{r:?}"
    );
    let kept = f.svc.clients.get("billing-svc").unwrap();
    assert_eq!(
        (kept.owner.as_str(), kept.scope.as_str()),
        ("billing/team-a", "billing.admin")
    );
    assert!(
        f.svc
            .clients
            .authenticate_secret("billing-svc", "team-a-secret")
            .await
            .is_ok()
    );
    assert!(
        f.svc
            .clients
            .authenticate_secret("billing-svc", "team-b-chosen")
            .await
            .is_err()
    );
    // Removing the intruder's manifest leaves team-a's client alone.
    f.remove("b.yaml");
    let r = f.sync().await;
    assert!(r.removed.is_empty(), "{r:?}");
    assert!(
        f.svc
            .clients
            .authenticate_secret("billing-svc", "team-a-secret")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_client_id_asked_for_by_two_new_manifests_goes_to_neither() {
    let f = fixture();
    f.write(
        "a.yaml",
        &format!(
            "{}---\n{}---\n{}---\n{}",
            ns_client_yaml("one", "team-a", "read"),
            ns_secret_yaml("one", "team-a", "shared", "secret-one"),
            ns_client_yaml("two", "team-b", "write"),
            ns_secret_yaml("two", "team-b", "shared", "secret-two")
        ),
    );
    let r = f.sync().await;
    assert!(r.registered.is_empty(), "{r:?}");
    assert_eq!(
        r.errors
            .iter()
            .filter(|e| e.contains("asked for by several"))
            .count(),
        2,
        "{r:?}"
    );
    assert!(f.svc.clients.get("shared").is_none());
}

/// Renaming an OAuth2Client (its old manifest gone, same Secret) hands the client over in one
/// pass: the old owner's client is removed, then the new one registers.
#[tokio::test]
async fn a_renamed_client_gets_its_client_id_back_in_one_pass() {
    let f = fixture();
    f.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            ns_client_yaml("old", "team-a", "read"),
            ns_secret_yaml("old", "team-a", "renamed-id", "secret-old")
        ),
    );
    f.sync().await;
    f.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            ns_client_yaml("new", "team-a", "read"),
            ns_secret_yaml("new", "team-a", "renamed-id", "secret-new")
        ),
    );
    let r = f.sync().await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(f.svc.clients.get("renamed-id").unwrap().owner, "new/team-a");
    assert!(
        f.svc
            .clients
            .authenticate_secret("renamed-id", "secret-new")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn generated_credentials_are_written_back_and_reused() {
    let f = fixture();
    f.write("g.yaml", &client_yaml("g", ""));
    let r = f.sync().await;
    assert_eq!(r.secrets_written.len(), 1, "{r:?}");
    let m = load_dir(&f.settings.dir).unwrap();
    let secret = &m.secrets[0].object;
    let (id, sec) = portcullis_reconciler::manifests::secret_credentials(secret).unwrap();
    assert!(f.svc.clients.authenticate_secret(&id, &sec).await.is_ok());
    // The next pass uses the written Secret: same client, nothing generated.
    let r = f.sync().await;
    assert!(r.secrets_written.is_empty());
    assert_eq!(r.registered, [id]);
}

#[tokio::test]
async fn a_broken_secret_document_blocks_generation_and_removal() {
    let f = fixture();
    f.write(
        "a.yaml",
        &format!("{}---\n{}", client_yaml("a", ""), secret_yaml("a", "id-a")),
    );
    f.sync().await;
    // The Secret's file now fails to parse: its client must neither get new credentials nor
    // be removed.
    f.write("a.yaml", &client_yaml("a", ""));
    f.write(
        "s.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: a-secret}\ndata: {client_id: 12: 3}\n",
    );
    let r = f.sync().await;
    assert!(r.secrets_written.is_empty(), "{r:?}");
    assert!(r.removed.is_empty(), "{r:?}");
    assert!(!r.errors.is_empty());
    assert!(f.svc.clients.get("id-a").is_some());
}

#[tokio::test]
async fn rules_become_an_ecds_file_and_deleting_them_disables_the_filter() {
    let f = fixture();
    f.write("svc.yaml", SERVICE);
    f.write("r.yaml", RULE);
    let r = f.sync().await;
    assert_eq!(r.ecds_written.len(), 1, "{r:?}");
    assert!(
        HTTPBIN_ECDS.starts_with("portcullis-httpbin-"),
        "{}",
        *HTTPBIN_ECDS
    );
    let cfg = f.ecds();
    assert_eq!(cfg["rules"][0]["id"], "r.default");
    // Plain Envoy: the control plane's own origins map to the named static clusters.
    assert_eq!(cfg["clusters"]["http://127.0.0.1:4444"], PUBLIC_CLUSTER);
    assert_eq!(cfg["clusters"]["http://127.0.0.1:4445"], ADMIN_CLUSTER);
    assert!(portcullis_core::config::Engine::from_json(cfg.to_string().as_bytes()).is_ok());

    // A broken Rule document might be the workload's last rule: the filter stays.
    f.write("r.yaml", "apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: r, namespace: default}\nspec: {match: {}}\n");
    let r = f.sync().await;
    assert!(r.ecds_disabled.is_empty(), "{r:?}");
    assert_eq!(f.ecds()["rules"][0]["id"], "r.default");

    f.remove("r.yaml");
    let r = f.sync().await;
    assert_eq!(r.ecds_disabled.len(), 1, "{r:?}");
    let cfg = f.ecds();
    assert_eq!(cfg["disabled"], true);
    assert_eq!(cfg["rules"], json!([]));
    let engine = portcullis_core::config::Engine::from_json(cfg.to_string().as_bytes()).unwrap();
    assert!(engine.is_disabled());
    // Written once: the next pass leaves the file alone.
    assert!(f.sync().await.ecds_disabled.is_empty());
}

/// The review's `harmless` Rule: from `dev`, naming a Service of `shop`.
#[tokio::test]
async fn a_rule_naming_another_namespaces_service_gets_no_ecds_file() {
    let f = fixture();
    f.write(
        "shop.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: checkout, namespace: shop}\nspec: {selector: {app: checkout}}\n",
    );
    for url in [
        "http://checkout.shop",
        "http://checkout.shop.svc.cluster.local:8080",
    ] {
        f.write(
            "harmless.yaml",
            &format!("apiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {{name: harmless, namespace: dev}}\nspec:\n  upstream: {{url: '{url}'}}\n  match: {{url: 'http://x/<.*>', methods: [GET]}}\n  authenticators: [{{handler: anonymous}}]\n  authorizer: {{handler: allow}}\n"),
        );
        let r = f.sync().await;
        assert!(r.ecds_written.is_empty(), "{url}: {r:?}");
        assert!(
            r.errors
                .iter()
                .any(|e| e.contains("Rule dev/harmless") && e.contains("CrossNamespace")),
            "{url}: {r:?}"
        );
    }
    let files: Vec<_> = std::fs::read_dir(&f.settings.ecds_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "{files:?}");
}

/// Names become file names in this mode: hostile ones are refused before any file is written.
#[tokio::test]
async fn hostile_secret_names_and_namespaces_write_nothing_outside() {
    let f = fixture();
    f.write(
        "bad.yaml",
        "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {name: esc, namespace: default}\nspec:\n  grantTypes: [client_credentials]\n  secretName: ../outside/escaped\n---\napiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {name: r, namespace: ../../tmp}\nspec:\n  selector: {matchLabels: {app: x}}\n  match: {url: 'http://x/<.*>', methods: [GET]}\n",
    );
    let r = f.sync().await;
    assert!(
        r.secrets_written.is_empty() && r.ecds_written.is_empty(),
        "{r:?}"
    );
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("spec.secretName") && e.contains("DNS-1123")),
        "{r:?}"
    );
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("metadata.namespace") && e.contains("DNS-1123")),
        "{r:?}"
    );
    let parent = f.settings.dir.parent().unwrap();
    assert!(!parent.join("outside").exists());
    assert!(
        f.svc
            .clients
            .list(10, None)
            .await
            .unwrap()
            .clients
            .is_empty()
    );
}

#[tokio::test]
async fn the_module_is_served_with_its_sha256() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.wasm");
    std::fs::write(&path, b"\0asm-bytes").unwrap();
    let m = WasmModule::load(&path);
    let get = |uri: &str| {
        m.router().oneshot(
            axum::http::Request::get(uri)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
    };
    let resp = get("/filter.wasm").await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/wasm");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"\0asm-bytes");
    let resp = get("/filter.wasm.sha256").await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body).trim(),
        portcullis::crypto::hex(&portcullis::crypto::sha256(b"\0asm-bytes"))
    );
    let missing = WasmModule::load(&dir.path().join("none.wasm"));
    let resp = missing
        .router()
        .oneshot(
            axum::http::Request::get("/filter.wasm")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[test]
fn id_token_signs_with_the_control_planes_key_set_unless_an_http_url_is_given() {
    let public: std::net::SocketAddr = "127.0.0.1:4444".parse().unwrap();
    let admin: std::net::SocketAddr = "0.0.0.0:4445".parse().unwrap();
    let g = default_global_config(public, admin, PUBLIC_CLUSTER, ADMIN_CLUSTER);
    let id_token = &g.mutators["id_token"];
    assert!(id_token.enabled);
    let c = id_token.config.as_ref().unwrap();
    assert_eq!(
        c["jwks_url"],
        "http://127.0.0.1:4445/admin/id-token/private-jwks.json"
    );
    assert_eq!(c["issuer_url"], "http://127.0.0.1:4444/");
    // The admin origin is mapped to the admin cluster, so the filter can fetch the keys.
    assert_eq!(g.clusters["http://127.0.0.1:4445"], ADMIN_CLUSTER);

    // Kyma's Oathkeeper configuration names a file in the Oathkeeper pod: replaced.
    let mut kyma = portcullis_reconciler::global::GlobalConfig::from_yaml(
        "mutators:\n  id_token:\n    enabled: true\n    config:\n      issuer_url: https://oathkeeper.example.com/\n      jwks_url: file:///etc/secrets/jwks.json\n      ttl: 60s\n",
    )
    .unwrap();
    wire_id_token_keys(&mut kyma, public, admin);
    let c = kyma.mutators["id_token"].config.as_ref().unwrap();
    assert_eq!(
        c["jwks_url"],
        "http://127.0.0.1:4445/admin/id-token/private-jwks.json"
    );
    assert_eq!(c["issuer_url"], "https://oathkeeper.example.com/");
    assert_eq!(c["ttl"], "60s");

    // An operator's own key server is kept.
    let mut own = portcullis_reconciler::global::GlobalConfig::from_yaml(
        "mutators:\n  id_token:\n    enabled: true\n    config:\n      jwks_url: https://keys.example.com/private.json\n",
    )
    .unwrap();
    wire_id_token_keys(&mut own, public, admin);
    assert_eq!(
        own.mutators["id_token"].config.as_ref().unwrap()["jwks_url"],
        "https://keys.example.com/private.json"
    );
}
