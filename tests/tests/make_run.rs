//! `make run` end to end: the same script (`scripts/run.sh --smoke`) on free ports with a fresh
//! data directory, non-interactively: it builds, starts the control plane in manifests mode,
//! the sample upstream and Envoy with the filter, then runs the curl commands it prints and
//! checks 200/401/403, and signs in through the example login app's pages (start, login,
//! consent, callback with the upstream's 200, logout) with curl. A second run on the same data
//! directory reuses the client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use portcullis_e2e::{paths, ports};

fn smoke(data: &std::path::Path) -> String {
    let out = Command::new("bash")
        .arg(paths::repo_root().join("scripts/run.sh"))
        .arg("--smoke")
        .env("PORTCULLIS_DATA", data)
        .env("PUBLIC_PORT", ports::free_port().to_string())
        .env("ADMIN_PORT", ports::free_port().to_string())
        .env("PROXY_PORT", ports::free_port().to_string())
        .env("UPSTREAM_PORT", ports::free_port().to_string())
        .env("ENVOY_ADMIN_PORT", ports::free_port().to_string())
        .env("LOGIN_APP_PORT", ports::free_port().to_string())
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
}
