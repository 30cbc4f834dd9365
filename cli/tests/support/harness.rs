//! Starts the real `portcullis` binary on loopback for black-box tests: free ports, a temporary
//! data directory, waiting for readiness, SIGTERM/SIGKILL, and small HTTP helpers that speak the
//! token service's wire format (form bodies, Basic credentials, JWT verification against the
//! published JWKS with an independent JOSE library).
//!
//! With `PORTCULLIS_TEST_STORE=postgres` every server gets its own database on a throwaway
//! PostgreSQL server ([`postgres`]), so the same suites run against both stores.
#![allow(dead_code)]

// The throwaway server is the token service library's test support (its store tests use it too).
#[path = "../../../control-plane/tests/support/postgres.rs"]
pub mod postgres;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The key set Hydra (and so we) sign access tokens with.
pub const ACCESS_TOKEN_SET: &str = "hydra.jwt.access-token";

/// A running `portcullis serve`; killed (SIGKILL) on drop.
pub struct Server {
    child: Option<Child>,
    pub public_port: u16,
    pub admin_port: u16,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    /// A command the binary runs under (e.g. `nsenter` into a mount namespace); empty: none.
    launcher: Vec<String>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// Waits until the wall clock (the one the server reads) is past Unix second `t`: what a test
/// of expiry waits for, instead of a fixed sleep that a busy machine may outrun or fall behind.
pub async fn wait_until_past(t: i64) {
    while now() <= t {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// One HTTP client for everything: never follows redirects (an OAuth2 client must not).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

impl Server {
    /// Starts on fresh ports with a new temporary data directory (kept alive by `dir`).
    pub async fn start(dir: &Path, extra_args: &[&str]) -> Server {
        Server::start_with_env(dir, extra_args, &[]).await
    }

    /// Like [`Server::start`] with extra environment variables (`PORTCULLIS_*` settings).
    pub async fn start_with_env(dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_under(&[], dir, extra_args, env).await
    }

    /// Like [`Server::start_with_env`], the binary run as the last argument of `launcher`.
    pub async fn start_under(
        launcher: &[String],
        dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut env_all: Vec<(String, String)> = Vec::new();
        if postgres::enabled() && !extra.iter().any(|a| a == "--dsn") {
            // One database per data directory: a test that starts a server again on the same
            // directory (new flags, same state) finds its clients and keys, as with SQLite.
            static DATABASES: std::sync::Mutex<Vec<(std::path::PathBuf, String)>> =
                std::sync::Mutex::new(Vec::new());
            let mut dbs = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
            let dsn = match dbs.iter().find(|(d, _)| d == dir) {
                Some((_, dsn)) => dsn.clone(),
                None => {
                    let dsn = postgres::shared().create_database();
                    dbs.push((dir.to_path_buf(), dsn.clone()));
                    dsn
                }
            };
            drop(dbs);
            extra.push("--dsn".into());
            extra.push(dsn);
            // Replicas must share the system secret; a test's own secret settings win.
            env_all.push((
                "PORTCULLIS_SECRETS_SYSTEM".into(),
                postgres::SYSTEM_SECRET.into(),
            ));
        }
        env_all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env = env_all;
        // A port found free may be taken again before the binary binds it: retry on new ports.
        let mut last_log = String::new();
        for _ in 0..3 {
            let (public_port, admin_port) = (free_port(), free_port());
            if public_port == admin_port {
                continue;
            }
            let mut s = Server::spawn(
                launcher,
                dir,
                public_port,
                admin_port,
                extra.clone(),
                env.clone(),
            );
            if s.wait_ready(Duration::from_secs(30)).await {
                return s;
            }
            last_log = s.log();
            s.kill();
        }
        panic!("portcullis did not become ready; log:\n{last_log}");
    }

    /// Starts again on the same ports and data directory (after a stop or kill).
    pub async fn restart(&mut self) {
        self.kill();
        let mut last_log = String::new();
        for _ in 0..20 {
            let mut s = Server::spawn(
                &self.launcher,
                &self.data_dir,
                self.public_port,
                self.admin_port,
                self.extra_args.clone(),
                self.env.clone(),
            );
            if s.wait_ready(Duration::from_secs(30)).await {
                self.child = s.child.take();
                self.log_path = s.log_path.clone();
                return;
            }
            last_log = s.log();
            s.kill();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("portcullis did not restart; log:\n{last_log}");
    }

    fn spawn(
        launcher: &[String],
        dir: &Path,
        public_port: u16,
        admin_port: u16,
        extra_args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Server {
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log_path = dir.with_file_name(format!("portcullis-{public_port}-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("create log file");
        let log2 = log.try_clone().expect("clone log file");
        let bin = env!("CARGO_BIN_EXE_portcullis");
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .arg("serve")
            .arg("--public-addr")
            .arg(format!("127.0.0.1:{public_port}"))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--data-dir")
            .arg(dir)
            .args(&extra_args)
            .env_remove("PORTCULLIS_ISSUER")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn portcullis");
        Server {
            child: Some(child),
            public_port,
            admin_port,
            data_dir: dir.to_path_buf(),
            log_path,
            extra_args,
            env,
            launcher: launcher.to_vec(),
        }
    }

    async fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let client = http();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            let p = client
                .get(format!("{}/health/ready", self.public()))
                .send()
                .await;
            let a = client
                .get(format!("{}/health/ready", self.admin()))
                .send()
                .await;
            if let (Ok(p), Ok(a)) = (p, a)
                && p.status() == 200
                && a.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn public(&self) -> String {
        format!("http://127.0.0.1:{}", self.public_port)
    }

    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The issuer the binary defaults to: `http://<public-addr>`.
    pub fn issuer(&self) -> String {
        self.public()
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.public())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after `limit`.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log line {needle:?} not seen within {limit:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL, like `kill -9`: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns without waiting.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut().expect("server running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "portcullis did not exit within {limit:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM, then a clean exit (status 0) is required.
    pub async fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(20)).await;
        assert!(
            status.success(),
            "exit status after SIGTERM: {status}; log:\n{}",
            self.log()
        );
    }

    // ---- admin API helpers ----

    /// `POST /admin/clients`; asserts 201 and returns the created client (with its secret).
    pub async fn create_client(&self, body: Value) -> Value {
        let resp = http()
            .post(format!("{}/admin/clients", self.admin()))
            .json(&body)
            .send()
            .await
            .expect("POST /admin/clients");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert_eq!(status, 201, "creating client {body}: {text}");
        serde_json::from_str(&text).expect("client JSON")
    }

    /// A client_credentials client with `scope` and `audience`; returns (id, secret).
    pub async fn cc_client(&self, scope: &str, audience: &[&str]) -> (String, String) {
        let c = self
            .create_client(json!({
                "client_name": "test",
                "grant_types": ["client_credentials"],
                "scope": scope,
                "audience": audience,
            }))
            .await;
        (str_field(&c, "client_id"), str_field(&c, "client_secret"))
    }

    /// `POST /oauth2/token` with Basic credentials and a form; returns (status, headers, JSON).
    pub async fn token_basic(&self, id: &str, secret: &str, form: &[(&str, &str)]) -> Reply {
        let resp = http()
            .post(self.token_endpoint())
            .header("authorization", basic(id, secret))
            .form(form)
            .send()
            .await
            .expect("POST /oauth2/token");
        Reply::from(resp).await
    }

    /// A client_credentials access token (asserts 200).
    pub async fn token(&self, id: &str, secret: &str, extra: &[(&str, &str)]) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        let r = self.token_basic(id, secret, &form).await;
        assert_eq!(r.status, 200, "token request: {}", r.body);
        str_field(&r.json, "access_token")
    }

    /// `POST /admin/oauth2/introspect`.
    pub async fn introspect(&self, token: &str) -> Value {
        let r = Reply::from(
            http()
                .post(format!("{}/admin/oauth2/introspect", self.admin()))
                .form(&[("token", token)])
                .send()
                .await
                .expect("introspect"),
        )
        .await;
        assert_eq!(r.status, 200, "introspection: {}", r.body);
        r.json
    }

    pub async fn jwks(&self) -> Value {
        let r = Reply::from(
            http()
                .get(format!("{}/.well-known/jwks.json", self.public()))
                .send()
                .await
                .expect("jwks"),
        )
        .await;
        assert_eq!(r.status, 200, "jwks: {}", r.body);
        r.json
    }

    /// Verifies `token`'s signature against the published JWKS (josekit, OpenSSL-backed: shares
    /// no code with the server) and returns (header, claims).
    pub async fn verify(&self, token: &str) -> (Value, Value) {
        verify_with_jwks(token, &self.jwks().await)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- portcullis log ----\n{}", self.log());
        }
        self.kill();
    }
}

/// A temporary directory for one server: the data dir is `<tmp>/data`, logs sit beside it.
pub struct TestDir {
    pub tmp: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }
}

/// A response read whole: status, headers, text, and JSON (Null when not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    pub json: Value,
}

impl Reply {
    pub async fn from(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("response body");
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            json,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    }

    /// An RFC 6749 5.2 error: the status, `{"error","error_description"}` JSON, no caching.
    pub fn assert_oauth_error(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "status of {}", self.body);
        assert_eq!(self.json["error"], error, "error code in {}", self.body);
        assert!(
            self.json["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "error_description missing in {}",
            self.body
        );
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "content-type {ct}");
        assert_no_store(self);
    }
}

pub fn assert_no_store(r: &Reply) {
    let cc = r.header("cache-control").unwrap_or_default();
    assert!(
        cc.to_ascii_lowercase().contains("no-store"),
        "Cache-Control: no-store missing (got {cc:?}) on {} {}",
        r.status,
        r.body
    );
}

pub fn str_field(v: &Value, name: &str) -> String {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} missing in {v}"))
        .to_string()
}

/// `application/x-www-form-urlencoded` encoding of one value (space as `+`), as RFC 6749 2.3.1
/// requires for Basic credentials.
pub fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `Authorization: Basic` value with form-encoded id and secret.
pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", form_encode(id), form_encode(secret)))
    )
}

fn b64_json(part: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url JWT part");
    serde_json::from_slice(&bytes).expect("JSON JWT part")
}

/// The unverified (header, claims) of a JWT.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS compact token: {token}");
    (b64_json(parts[0]), b64_json(parts[1]))
}

/// Verifies a JWS with the key of the header's `kid` in `jwks`, using josekit.
pub fn verify_with_jwks(token: &str, jwks: &Value) -> (Value, Value) {
    let (header, _) = jwt_parts(token);
    let kid = str_field(&header, "kid");
    let alg = str_field(&header, "alg");
    let set = josekit::jwk::JwkSet::from_bytes(serde_json::to_vec(jwks).expect("jwks bytes"))
        .expect("JWKS parses with josekit");
    let keys = set.get(&kid);
    assert_eq!(keys.len(), 1, "kid {kid} must be in the JWKS exactly once");
    let jwk = keys[0];
    assert_eq!(jwk.key_use(), Some("sig"), "JWK use of {kid}");
    if let Some(a) = jwk.algorithm() {
        assert_eq!(a, alg, "JWK alg of {kid}");
    }
    let (payload, _) = match alg.as_str() {
        "RS256" => {
            let v = josekit::jws::RS256
                .verifier_from_jwk(jwk)
                .expect("RS256 verifier");
            josekit::jwt::decode_with_verifier(token, &v)
        }
        "ES256" => {
            let v = josekit::jws::ES256
                .verifier_from_jwk(jwk)
                .expect("ES256 verifier");
            josekit::jwt::decode_with_verifier(token, &v)
        }
        "EdDSA" => {
            let v = josekit::jws::EdDSA
                .verifier_from_jwk(jwk)
                .expect("EdDSA verifier");
            josekit::jwt::decode_with_verifier(token, &v)
        }
        other => panic!("unexpected alg {other}"),
    }
    .unwrap_or_else(|e| panic!("signature of {token} does not verify: {e}"));
    (header, Value::Object(payload.claims_set().clone()))
}
