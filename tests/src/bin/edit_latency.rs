//! Rule edit → new decision in a running Envoy, manifests mode (issue 13; `make bench-edit`):
//! the real `portcullis serve --manifests DIR` and a real Envoy fed by its ECDS file. Each edit
//! flips a Rule's authorizer between `allow` and `deny` and times, from the file's write, until
//! a request gets the new decision. Prints every edit and the median.
//!
//! usage: edit_latency [EDITS] (default 20). The control plane polls its directory every 500 ms
//! by default (`PORTCULLIS_POLL_INTERVAL`), which bounds the median from below by about half
//! of that.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use portcullis_e2e::control_plane::{ControlPlane, wait_for_ecds};
use portcullis_e2e::{Envoy, Upstream};

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default}
spec: {selector: {app: httpbin}}
";

/// The Rule every edit rewrites; `authorizer` decides 200 (`allow`) or 403 (`deny`).
fn rule(authorizer: &str) -> String {
    format!(
        "apiVersion: oathkeeper.ory.sh/v1alpha1
kind: Rule
metadata: {{name: edited, namespace: default}}
spec:
  upstream: {{url: 'http://httpbin.default.svc.cluster.local:8000'}}
  match: {{url: '<http|https>://<[^/]+>/headers', methods: [GET]}}
  authenticators: [{{handler: anonymous}}]
  authorizer: {{handler: {authorizer}}}
  mutators: [{{handler: noop}}]
"
    )
}

fn status(client: &reqwest::blocking::Client, envoy: &Envoy) -> Result<u16> {
    Ok(client.get(envoy.url("/headers")).send()?.status().as_u16())
}

/// Polls (every millisecond, no sleep-then-assert) until the decision is `want`; the time taken.
fn until(client: &reqwest::blocking::Client, envoy: &Envoy, want: u16) -> Result<Duration> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    loop {
        let got = status(client, envoy)?;
        if got == want {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            bail!("still {got}, not {want}, 30 s after the edit");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn write(dir: &Path, authorizer: &str) -> Result<()> {
    // Written aside and renamed, as editors and `kubectl`-style tools do: the control plane never
    // reads half a file.
    let tmp = dir.join(".edited.yaml.tmp");
    fs::write(&tmp, rule(authorizer)).context("writing the rule")?;
    fs::rename(&tmp, dir.join("edited.yaml")).context("renaming the rule")
}

fn main() -> Result<()> {
    let edits: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("EDITS must be a number")?,
        None => 20,
    };
    let manifests = tempfile::tempdir()?;
    let dir = manifests.path();
    fs::write(dir.join("httpbin-service.yaml"), SERVICE)?;
    write(dir, "allow")?;
    let cp = ControlPlane::start(&["--manifests", dir.to_str().context("temp dir path")?]);
    let ecds = wait_for_ecds(&cp.data_dir.join("ecds"), "httpbin");
    let upstream = Upstream::start();
    let envoy = Envoy::builder(upstream.port())
        .ecds_file(&ecds)
        .cluster("portcullis_public", cp.public_port)
        .cluster("portcullis_admin", cp.admin_port)
        .start();
    let client = portcullis_e2e::client();
    until(&client, &envoy, 200).context("the first decision")?;

    let mut times = Vec::with_capacity(edits);
    for i in 0..edits {
        let (authorizer, want) = if i % 2 == 0 {
            ("deny", 403)
        } else {
            ("allow", 200)
        };
        write(dir, authorizer)?;
        let took = until(&client, &envoy, want)
            .with_context(|| format!("edit {}: {}", i + 1, envoy.log_tail(20)))?;
        println!(
            "edit {:2} -> {authorizer:5}: {:6.0} ms",
            i + 1,
            took.as_secs_f64() * 1e3
        );
        times.push(took);
    }
    times.sort();
    let median = match times.len() {
        0 => bail!("no edits"),
        n if n % 2 == 1 => times[n / 2],
        n => (times[n / 2 - 1] + times[n / 2]) / 2,
    };
    println!(
        "Rule edit -> new decision (manifests mode), {edits} edits: median {:.0} ms, min {:.0} ms, max {:.0} ms (target <= 1000 ms)",
        median.as_secs_f64() * 1e3,
        times.first().map_or(0.0, |t| t.as_secs_f64() * 1e3),
        times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3),
    );
    Ok(())
}
