//! The real `portcullis` binary as a child process, for end-to-end tests of the control plane:
//! free loopback ports, its own data directory, its log captured to a file. The binary is
//! `PORTCULLIS_BIN`, else `<repo>/target/debug/portcullis`, brought up to date once per test
//! process with `cargo build -p portcullis-cli --bin portcullis` (a no-op when it is current), so the suite never
//! tests a stale binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::{paths, ports};

static BUILD: Once = Once::new();

/// The `portcullis` binary, built (once per process) unless `PORTCULLIS_BIN` names one.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::repo_root().join("target"));
    let bin = target.join("debug").join("portcullis");
    BUILD.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "portcullis-cli", "--bin", "portcullis"])
            .current_dir(paths::repo_root())
            .status()
            .expect("running cargo build -p portcullis-cli");
        assert!(status.success(), "cargo build -p portcullis-cli failed");
    });
    assert!(bin.is_file(), "{} not found", bin.display());
    bin
}

/// A running control plane; killed on drop.
pub struct ControlPlane {
    child: Child,
    pub public_port: u16,
    pub admin_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// `portcullis serve` with `args` added (e.g. `--manifests DIR`), on free ports; waits for
    /// `/health/ready` on both ports (30 s).
    pub fn start(args: &[&str]) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-cp-")
            .tempdir()
            .expect("creating a temp dir");
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("portcullis.log");
        let [public_port, admin_port] = ports::free_ports::<2>();
        let log = fs::File::create(&log_path).expect("creating the control plane log");
        let child = Command::new(binary())
            .args(["--log-level", "info,portcullis=debug", "serve"])
            .args(["--public-addr", &format!("127.0.0.1:{public_port}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--wasm")
            .arg(paths::filter_wasm())
            .args(["--secrets-system", "e2e-system-secret-0123456789"])
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning portcullis");
        let mut cp = ControlPlane {
            child,
            public_port,
            admin_port,
            data_dir,
            log_path,
            _dir: dir,
        };
        cp.wait_ready();
        cp
    }

    fn wait_ready(&mut self) {
        let client = crate::client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("portcullis exited ({status})\n{}", self.log());
            }
            let ok = |url: String| {
                client
                    .get(url)
                    .send()
                    .is_ok_and(|r| r.status().is_success())
            };
            if ok(self.public_url("/health/ready")) && ok(self.admin_url("/health/ready")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "portcullis not ready within 30 s\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn public_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public_port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// The process id (its memory is read from `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A `client_credentials` token (Basic auth), or the error status and body.
    pub fn token(&self, id: &str, secret: &str, scope: &str) -> Result<String, (u16, String)> {
        let resp = crate::client()
            .post(self.public_url("/oauth2/token"))
            .basic_auth(id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&scope={}",
                scope.replace(' ', "+")
            ))
            .send()
            .expect("POST /oauth2/token");
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().unwrap_or_default();
        match body["access_token"].as_str() {
            Some(t) if status == 200 => Ok(t.to_owned()),
            _ => Err((status, body.to_string())),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` exists (and is not empty).
pub fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the ECDS file of workload `app` in namespace `default` (its name ends in a hash of
/// the selector: `portcullis-<app>-<hash>.default.json`) and returns its path.
pub fn wait_for_ecds(dir: &Path, app: &str) -> PathBuf {
    let prefix = format!("portcullis-{app}-");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = fs::read_dir(dir).ok().and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with(&prefix) && name.ends_with(".default.json")
            })
        });
        if let Some(path) = found {
            wait_for_file(&path, Duration::from_secs(5));
            return path;
        }
        assert!(
            Instant::now() < deadline,
            "no ECDS file {prefix}*.default.json in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
