//! The web console in a real browser: the control plane in manifests mode serves `/console` on
//! its admin port; headless Chromium (fresh profile) checks the clients and rules pages show the
//! resources of the manifests directory, including an invalid rule's reason, then drives the
//! rule tester (the policy core compiled to wasm32-unknown-unknown, running in the page) through
//! allow, 401, 403 and no-match, asserting that each status is the one a real Envoy with the
//! filter answers for the same request (parity over one vector set), then with a token minted in
//! the page from a client picked in the list. Screenshots of every page
//! go to `target/console-screenshots/`; a 100-rule decision is timed in the page and printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::control_plane::{ControlPlane, wait_for_ecds};
use portcullis_e2e::webdriver::Browser;
use portcullis_e2e::{Envoy, Upstream, paths};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "console-client";
const CLIENT_SECRET: &str = "console-secret-value-1234";

fn manifests(dir: &Path, cp: &ControlPlane) {
    fs::write(
        dir.join("service.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin, namespace: default}\nspec: {selector: {app: httpbin}}\n",
    )
    .unwrap();
    let rule = |name: &str, path: &str, authn: &str, authz: &str| {
        format!(
            "---\napiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  upstream: {{url: 'http://httpbin.default.svc.cluster.local:8000'}}\n  match: {{url: '<http|https>://<[^/]+>{path}', methods: [GET]}}\n  authenticators: [{authn}]\n  authorizer: {{handler: {authz}}}\n  mutators: [{{handler: header, config: {{headers: {{X-User: '{{{{ print .Subject }}}}'}}}}}}]\n"
        )
    };
    let jwt = format!(
        "{{handler: jwt, config: {{jwks_urls: ['{}'], required_scope: [read], scope_strategy: wildcard}}}}",
        cp.public_url("/.well-known/jwks.json")
    );
    let mut rules = String::new();
    rules += &rule("open", "/anything/open", "{handler: anonymous}", "allow");
    rules += &rule("headers", "/headers", &jwt, "allow");
    rules += &rule("admin", "/admin", "{handler: anonymous}", "deny");
    rules += &rule("broken", "/broken", "{handler: no_such_handler}", "allow");
    fs::write(dir.join("rules.yaml"), rules).unwrap();
}

fn client_manifest(dir: &Path) {
    fs::write(
        dir.join("client.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: console, namespace: default}}\ntype: Opaque\nstringData: {{client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}}}\n---\napiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: console, namespace: default}}\nspec:\n  grantTypes: [client_credentials]\n  scope: read write\n  audience: [httpbin]\n  secretName: console\n"
        ),
    )
    .unwrap();
}

fn envoy_status(envoy: &Envoy, path: &str, token: Option<&str>) -> u16 {
    let mut req = portcullis_e2e::client().get(envoy.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().unwrap().status().as_u16()
}

fn screenshots() -> PathBuf {
    let dir = paths::repo_root().join("target/console-screenshots");
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_console_shows_resources_and_its_tester_decides_as_envoy_does() {
    let dir = tempfile::tempdir().unwrap();
    client_manifest(dir.path());
    let cp = ControlPlane::start(&["--manifests", dir.path().to_str().unwrap()]);
    manifests(dir.path(), &cp);
    let ecds = wait_for_ecds(&cp.data_dir.join("ecds"), "httpbin");
    let upstream = Upstream::start();
    let envoy = Envoy::builder(upstream.port())
        .ecds_file(&ecds)
        .cluster("portcullis_public", cp.public_port)
        .cluster("portcullis_admin", cp.admin_port)
        .start();
    let token = cp.token(CLIENT_ID, CLIENT_SECRET, "read").unwrap();

    // The shared vector set: (path, token, what it exercises).
    let vectors: [(&str, Option<&str>, u16); 6] = [
        ("/anything/open", None, 200),
        ("/headers", Some(&token), 200),
        ("/headers", None, 401),
        ("/admin", None, 403),
        ("/nothing/here", None, 404),
        // The invalid rule is enforced as its fail-closed stand-in.
        ("/broken", None, 401),
    ];
    // Envoy picks the ECDS file up asynchronously: wait for the first decision.
    let deadline = Instant::now() + Duration::from_secs(30);
    while envoy_status(&envoy, "/anything/open", None) != 200 {
        assert!(Instant::now() < deadline, "{}", envoy.log_tail(40));
        std::thread::sleep(Duration::from_millis(100));
    }
    let envoy_statuses: Vec<u16> = vectors
        .iter()
        .map(|(path, token, _)| envoy_status(&envoy, path, *token))
        .collect();
    let expected: Vec<u16> = vectors.iter().map(|v| v.2).collect();
    assert_eq!(envoy_statuses, expected, "Envoy itself");

    let shots = screenshots();
    let browser = Browser::start();

    // Clients: the manifest's client with its grant types and audience, never its secret.
    browser.goto(&cp.admin_url("/console#clients"));
    let row = browser.text(&format!("tr[data-client='{CLIENT_ID}']"));
    assert!(row.contains("client_credentials"), "{row}");
    assert!(row.contains("httpbin"), "{row}");
    assert!(!browser.source().contains(CLIENT_SECRET));
    browser.screenshot(&shots.join("clients.png"));

    // Rules: grouped by workload, the invalid rule with its reason and the field at fault.
    browser.goto(&cp.admin_url("/console#rules"));
    let broken = browser.text("tr[data-rule='default/broken']");
    assert!(broken.contains("Invalid"), "{broken}");
    assert!(broken.contains("no_such_handler"), "{broken}");
    let good = browser.text("tr[data-rule='default/headers']");
    assert!(good.contains("Applied") && good.contains("True"), "{good}");
    let group = browser.text("div[data-workload='default/app=httpbin']");
    assert!(group.contains("bytes of 1572864"), "{group}");
    browser.screenshot(&shots.join("rules.png"));

    // Keys: the signing key and its age.
    browser.goto(&cp.admin_url("/console#keys"));
    let key = browser.text("#keys-table tbody tr");
    assert!(key.contains("current"), "{key}");
    browser.wait_for("body[data-page='keys']");
    browser.screenshot(&shots.join("keys.png"));

    // The tester, preloaded with the workload's compiled configuration.
    browser.goto(&cp.admin_url("/console#tester"));
    browser.wait_for("body[data-tester-ready='true']");
    for (i, (path, token, _)) in vectors.iter().enumerate() {
        browser.type_into("#t-url", &envoy.url(path));
        browser.type_into("#t-token", token.unwrap_or(""));
        browser.click("#t-run");
        browser.wait_for(&format!("body[data-tester-runs='{}']", i + 1));
        let status: u16 = browser.text("#t-status").parse().unwrap_or_else(|_| {
            panic!(
                "{path}: no status; error {:?}\n{}",
                browser.text("#t-error"),
                cp.log()
            )
        });
        assert_eq!(
            status,
            envoy_statuses[i],
            "{path}: the tester and Envoy disagree; trace:\n{}",
            browser.source()
        );
        if *path == "/headers" && token.is_some() {
            // The trace shows the key fetch (through the control plane) and the subject.
            let steps = browser.text("#t-steps");
            assert!(
                steps.contains("jwks.json") && steps.contains("keys"),
                "{steps}"
            );
            assert!(steps.contains(&format!("subject {CLIENT_ID}")), "{steps}");
            browser.screenshot(&shots.join("tester-allow.png"));
        }
        if *path == "/headers" && token.is_none() {
            browser.screenshot(&shots.join("tester-401.png"));
        }
    }

    // A token minted in the page from the client picked in the list (its secret pasted, a
    // narrower scope chosen): a real token from the token service, allowed by the tester and
    // by Envoy alike. A wrong secret gets the token endpoint's refusal, and no token.
    browser.click("#mint summary");
    browser.click(&format!("#m-client option[value='{CLIENT_ID}']"));
    browser.type_into("#m-secret", "not-the-secret");
    browser.click("#m-run");
    browser.wait_for("body[data-mints='1']");
    let refused = browser.text("#m-result");
    assert!(refused.contains("authentication failed"), "{refused}");
    browser.type_into("#t-token", "");
    browser.type_into("#m-secret", CLIENT_SECRET);
    browser.type_into("#m-scope", "read");
    browser.click("#m-run");
    browser.wait_for("body[data-mints='2']");
    let minted = browser.execute_async("arguments[0](document.querySelector('#t-token').value)");
    let minted = minted.as_str().unwrap_or_default().to_string();
    assert_eq!(
        minted.split('.').count(),
        3,
        "{minted:?}: {}",
        browser.text("#m-result")
    );
    // The secret does not stay in the page.
    let left = browser.execute_async("arguments[0](document.querySelector('#m-secret').value)");
    assert_eq!(left, "");
    assert_eq!(
        envoy_status(&envoy, "/headers", Some(&minted)),
        200,
        "Envoy, minted token"
    );
    browser.type_into("#t-url", &envoy.url("/headers"));
    browser.click("#t-run");
    browser.wait_for(&format!("body[data-tester-runs='{}']", vectors.len() + 1));
    assert_eq!(
        browser.text("#t-status"),
        "200",
        "{}",
        browser.text("#t-steps")
    );
    assert!(
        browser
            .text("#t-steps")
            .contains(&format!("subject {CLIENT_ID}"))
    );
    browser.screenshot(&shots.join("tester-minted.png"));

    // A 100-rule decision in the page: reported, not asserted.
    let bench = browser.execute_async(
        "const done = arguments[0]; window.portcullis.benchmark(2000).then(done, (e) => done({error: String(e)}));",
    );
    assert_eq!(bench["allowed"], 2000, "{bench}");
    eprintln!(
        "console tester: {} ms per decision over {} rules ({} iterations, headless Chromium)",
        bench["ms_per_decision"], bench["rules"], bench["iterations"]
    );
    fs::write(shots.join("benchmark.json"), bench.to_string()).unwrap();
}
