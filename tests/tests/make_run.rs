//! `make run` end to end: the same script (`scripts/run.sh --smoke`) on free ports with a fresh
//! data directory, non-interactively: it builds, starts the control plane in manifests mode,
//! the sample upstream and Envoy with the filter, then runs the curl commands it prints and
//! checks 200/401/403, and signs in through the example login app's pages (start, login,
//! consent, callback with the upstream's 200, logout) with curl. A second run on the same data
//! directory reuses the client. Afterwards no secret or private key the flow created appears
//! in a log line, a metric or a list response, and the files holding them are 0600.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis_e2e::{control_plane, make_run, ports};

fn smoke(data: &std::path::Path) -> String {
    let out = make_run::command(data)
        .arg("--smoke")
        .output()
        .expect("running scripts/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "run.sh --smoke failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout
}

#[test]
fn make_run_serves_the_seed_flow_and_keeps_its_data() {
    let data = tempfile::tempdir().unwrap();
    let first = smoke(data.path());
    for line in [
        "smoke: ok   GET /headers with a token (200)",
        "smoke: ok   GET /headers without a token (401)",
        "smoke: ok   POST /post with scope read only (403)",
        "smoke: ok   the callback verified the ID token",
        "smoke: ok   the upstream answered the access token",
        "smoke: ok   after logout, signing in asks for the password again",
        "smoke: 13 passed, 0 failed",
    ] {
        assert!(first.contains(line), "missing {line:?} in\n{first}");
    }
    assert!(
        first.contains("curl -i -H \"Authorization: Bearer $TOKEN\""),
        "{first}"
    );
    let client = |out: &str| {
        out.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("client")
                    .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
            })
            .unwrap()
    };
    // A second run reuses the data directory: same client, same credentials, still working.
    let second = smoke(data.path());
    assert_eq!(client(&first), client(&second));
    no_secret_leaks(data.path());
}

/// The secrets the flow created: generated client secrets, the demo password, the system secret
/// that seals the signing keys (raw, hex and base64).
fn created_secrets(data: &Path) -> Vec<(String, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data.join("manifests")).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".secret.yaml") {
            continue;
        }
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let secret = doc["data"]["client_secret"].as_str().unwrap();
        let secret = String::from_utf8(b64.decode(secret).unwrap()).unwrap();
        out.push((format!("client secret in {}", path.display()), secret));
    }
    assert!(
        out.len() >= 2,
        "the flow generated two client secrets: {out:?}"
    );
    let password = std::fs::read_to_string(data.join("demo-password")).unwrap();
    out.push(("demo password".into(), password.trim().to_string()));
    let system = std::fs::read(data.join("secrets.key")).unwrap();
    let hex: String = system.iter().map(|b| format!("{b:02x}")).collect();
    out.push(("system secret (hex)".into(), hex));
    out.push(("system secret (base64)".into(), b64.encode(&system)));
    if let Ok(text) = String::from_utf8(system) {
        out.push(("system secret".into(), text.trim().to_string()));
    }
    for (what, value) in &out {
        assert!(
            value.len() >= 8,
            "{what} is too short to search for: {value:?}"
        );
    }
    out
}

/// Files that hold secrets or sealed keys are readable by their owner only.
fn assert_private_files(data: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![
        data.join("secrets.key"),
        data.join("demo-password"),
        data.join("portcullis.sqlite"),
    ];
    for side in ["portcullis.sqlite-wal", "portcullis.sqlite-shm"] {
        if data.join(side).exists() {
            files.push(data.join(side));
        }
    }
    for entry in std::fs::read_dir(data.join("manifests")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".secret.yaml") {
            files.push(path);
        }
    }
    for f in files {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode of {}", f.display());
    }
}

/// Everything the flow logged, the filter configurations it rendered, and what the control plane lists and measures when started again
/// on its data (debug logging, a token issued and introspected): none holds a created secret,
/// and no key listing has a private member.
///
/// run.sh's own output is not searched: it prints the demo client's credentials in the curl
/// commands it shows, for the developer at that terminal to paste.
fn no_secret_leaks(data: &Path) {
    assert_private_files(data);
    let secrets = created_secrets(data);
    let mut texts: Vec<(String, String)> = Vec::new();
    let [public, admin] = ports::free_ports::<2>();
    let log_path = data.join("logs").join("secrets-check.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(control_plane::binary())
        .args(["--log-level", "debug", "serve"])
        .args(["--public-addr", &format!("127.0.0.1:{public}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--manifests")
        .arg(data.join("manifests"))
        .arg("--ecds-dir")
        .arg(data.join("ecds"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let http = portcullis_e2e::client();
    let get = |url: String| {
        let r = http.get(&url).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("http://127.0.0.1:{admin}/health/ready"))
        .send()
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "control plane not ready");
        assert!(child.try_wait().unwrap().is_none(), "control plane exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A token issued and introspected with one of the generated secrets, so that the metrics and
    // the debug log have seen a secret in use.
    let id_secret = &secrets[0].1;
    let clients: serde_json::Value =
        serde_json::from_str(&get(format!("http://127.0.0.1:{admin}/admin/clients")).1).unwrap();
    let mut token = None;
    for c in clients.as_array().unwrap() {
        let id = c["client_id"].as_str().unwrap();
        let r = http
            .post(format!("http://127.0.0.1:{public}/oauth2/token"))
            .basic_auth(id, Some(id_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .unwrap();
        if r.status() == 200 {
            let body: serde_json::Value = r.json().unwrap();
            token = body["access_token"].as_str().map(str::to_owned);
        }
    }
    let token = token.expect("a generated secret obtains a token");
    let r = http
        .post(format!("http://127.0.0.1:{admin}/admin/oauth2/introspect"))
        .form(&[("token", token.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut key_listings = Vec::new();
    for path in [
        "/admin/clients",
        "/admin/keys/hydra.jwt.access-token",
        "/admin/oauth2/auth/sessions/consent?subject=alice",
        "/admin/metrics/prometheus",
    ] {
        let (status, body) = get(format!("http://127.0.0.1:{admin}{path}"));
        assert_eq!(status, 200, "{path}: {body}");
        if path.contains("/keys/") {
            key_listings.push((path, body.clone()));
        }
        texts.push((path.to_string(), body));
    }
    let (status, jwks) = get(format!("http://127.0.0.1:{public}/.well-known/jwks.json"));
    assert_eq!(status, 200);
    key_listings.push(("/.well-known/jwks.json", jwks.clone()));
    texts.push(("/.well-known/jwks.json".into(), jwks));
    let _ = child.kill();
    let _ = child.wait();
    // Logs, and the filter configurations every sidecar receives.
    let logs = std::fs::read_dir(data.join("logs")).unwrap();
    for entry in logs.chain(std::fs::read_dir(data.join("ecds")).unwrap()) {
        let path = entry.unwrap().path();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        texts.push((path.display().to_string(), text));
    }
    assert!(texts.len() >= 10, "too little to search: {}", texts.len());
    for (source, text) in &texts {
        for (what, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} appears in {source}"
            );
        }
        assert!(
            !text.contains("PRIVATE KEY"),
            "a PEM private key appears in {source}"
        );
    }
    for (path, body) in key_listings {
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        let keys = doc["keys"].as_array().unwrap();
        assert!(!keys.is_empty(), "{path} lists no keys");
        for k in keys {
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(
                    k.get(private).is_none(),
                    "{path} has private member {private}: {k}"
                );
            }
        }
    }
}
