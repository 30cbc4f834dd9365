//! A real Envoy for tests. The builder writes a bootstrap (JSON, which is YAML) into a temp dir
//! and spawns `ENVOY_BIN`; admin and listener bind port 0 and the harness reads the actual
//! ports back, so parallel tests never collide (`--use-dynamic-base-id` does the same for
//! Envoy's shared memory). The HTTP filter under test is delivered by ECDS from a watched file,
//! so `set_filter_config` swaps the plugin configuration of a running Envoy.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::paths;

/// Name of the ECDS-delivered filter; appears in stats as
/// `extension_config_discovery.http_filter.portcullis.*`.
pub const FILTER_NAME: &str = "portcullis";
/// `vm_id` shared by all instances of the filter in one Envoy.
pub const VM_ID: &str = "portcullis";

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const JWT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP filter in front of the router.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Router only.
    None,
    /// A wasm module delivered by ECDS, `configuration` as its plugin configuration string.
    Wasm {
        wasm: PathBuf,
        configuration: String,
    },
    /// Native `envoy.filters.http.jwt_authn` with this `JwtAuthentication` config (no `@type`).
    JwtAuthn(Value),
    /// A filter delivered by ECDS from a file someone else writes (the control plane's
    /// manifests mode); its directory is watched.
    EcdsFile(PathBuf),
}

/// How the connection manager treats the path before filters and routing see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathNormalization {
    /// What Portcullis ships (`make run`, this harness's default): `normalize_path`,
    /// `merge_slashes`, and `path_with_escaped_slashes_action: REJECT_REQUEST`.
    Hardened,
    /// `normalize_path: true` alone (roughly Istio's default `BASE` normalization).
    NormalizeOnly,
    /// Envoy's own defaults: the path reaches filters and the upstream as the client sent it.
    EnvoyDefaults,
}

impl PathNormalization {
    fn hcm_settings(self) -> Value {
        match self {
            Self::Hardened => json!({
                "normalize_path": true,
                "merge_slashes": true,
                "path_with_escaped_slashes_action": "REJECT_REQUEST",
            }),
            Self::NormalizeOnly => json!({"normalize_path": true}),
            Self::EnvoyDefaults => json!({}),
        }
    }
}

/// Header the router adds naming the backend a request was routed to, when the builder has
/// [`EnvoyBuilder::backend`]s.
pub const BACKEND_HEADER: &str = "x-portcullis-backend";

/// How to start an Envoy; see [`Envoy::builder`].
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    upstream_port: u16,
    filter: Filter,
    clusters: BTreeMap<String, u16>,
    path_normalization: PathNormalization,
    /// (name, path prefix, port), routed before the default upstream.
    backends: Vec<(String, String, u16)>,
    /// Certificate chain and key files: the listener speaks TLS.
    tls: Option<(PathBuf, PathBuf)>,
    concurrency: u32,
    log_level: String,
    component_log_level: Option<String>,
}

/// The result of a configuration update through ECDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigUpdate {
    /// Envoy accepted it (`update_success` went up).
    Applied,
    /// Envoy rejected it and keeps the previous one (`update_rejected` went up).
    Rejected,
}

impl EnvoyBuilder {
    /// The filter under test: `dist/filter.wasm` (or `PORTCULLIS_WASM`) with `config` JSON.
    pub fn portcullis(self, config: &Value) -> Self {
        self.wasm(paths::filter_wasm(), &config.to_string())
    }

    /// Any wasm module with a configuration string.
    pub fn wasm(mut self, wasm: impl Into<PathBuf>, configuration: &str) -> Self {
        self.filter = Filter::Wasm {
            wasm: wasm.into(),
            configuration: configuration.to_owned(),
        };
        self
    }

    /// Native jwt_authn with the given `JwtAuthentication` config.
    pub fn jwt_authn(mut self, config: Value) -> Self {
        self.filter = Filter::JwtAuthn(config);
        self
    }

    /// The HTTP filter comes from the ECDS file at `path`, written by someone else (it must
    /// exist before [`Self::start`]: Envoy waits for a filter's first config).
    pub fn ecds_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.filter = Filter::EcdsFile(path.into());
        self
    }

    pub fn no_filter(mut self) -> Self {
        self.filter = Filter::None;
        self
    }

    /// A static cluster `name` -> `127.0.0.1:port` (for `dispatch_http_call` targets).
    pub fn cluster(mut self, name: &str, port: u16) -> Self {
        self.clusters.insert(name.to_owned(), port);
        self
    }

    /// Path handling of the connection manager (default [`PathNormalization::Hardened`]).
    pub fn path_normalization(mut self, p: PathNormalization) -> Self {
        self.path_normalization = p;
        self
    }

    /// Routes paths starting with `prefix` to `127.0.0.1:port` (cluster `name`), ahead of the
    /// default upstream. Every route then adds [`BACKEND_HEADER`] with its cluster name, so a
    /// test sees which backend a request reached (the default one is `upstream`).
    pub fn backend(mut self, name: &str, prefix: &str, port: u16) -> Self {
        self.backends
            .push((name.to_owned(), prefix.to_owned(), port));
        self
    }

    /// The listener terminates TLS with this PEM certificate chain and key.
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Worker threads (default 1).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// `-l` (default `warning`; `PORTCULLIS_ENVOY_LOG` overrides the default).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    /// `--component-log-level`, e.g. `wasm:debug`.
    pub fn component_log_level(mut self, spec: &str) -> Self {
        self.component_log_level = Some(spec.to_owned());
        self
    }

    /// The bootstrap this builder produces (for inspection or `envoy --mode validate`).
    pub fn bootstrap(&self, ecds_path: &Path) -> Value {
        let mut http_filters = Vec::new();
        match &self.filter {
            Filter::None => {}
            Filter::Wasm { .. } | Filter::EcdsFile(_) => {
                let dir = ecds_path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                http_filters.push(json!({
                    "name": FILTER_NAME,
                    "config_discovery": {
                        "config_source": {
                            "resource_api_version": "V3",
                            "path_config_source": {
                                "path": ecds_path,
                                "watched_directory": {"path": dir},
                            },
                        },
                        "type_urls": [WASM_TYPE],
                    },
                }));
            }
            Filter::JwtAuthn(config) => {
                let mut typed = config.clone();
                if let Some(obj) = typed.as_object_mut() {
                    obj.insert("@type".into(), json!(JWT_TYPE));
                }
                http_filters
                    .push(json!({"name": "envoy.filters.http.jwt_authn", "typed_config": typed}));
            }
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        let mut clusters = vec![static_cluster("upstream", self.upstream_port)];
        clusters.extend(
            self.clusters
                .iter()
                .map(|(name, port)| static_cluster(name, *port)),
        );
        let route = |prefix: &str, cluster: &str| {
            let mut r = json!({"match": {"prefix": prefix}, "route": {"cluster": cluster}});
            if !self.backends.is_empty() {
                r["request_headers_to_add"] = json!([{
                    "header": {"key": BACKEND_HEADER, "value": cluster},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }]);
            }
            r
        };
        let mut routes = Vec::new();
        for (name, prefix, port) in &self.backends {
            clusters.push(static_cluster(name, *port));
            routes.push(route(prefix, name));
        }
        routes.push(route("/", "upstream"));
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "codec_type": "AUTO",
            "route_config": {
                "name": "local",
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": routes,
                }],
            },
            "http_filters": http_filters,
        });
        if let (Some(hcm), Value::Object(settings)) =
            (hcm.as_object_mut(), self.path_normalization.hcm_settings())
        {
            hcm.extend(settings);
        }
        let mut chain = json!({"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        }]});
        if let Some((cert, key)) = &self.tls {
            chain["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {"tls_certificates": [{
                        "certificate_chain": {"filename": cert},
                        "private_key": {"filename": key},
                    }]},
                },
            });
        }
        json!({
            "node": {"id": "portcullis-e2e", "cluster": "portcullis-e2e"},
            "admin": {"address": socket(0)},
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": socket(0),
                    "filter_chains": [chain],
                }],
                "clusters": clusters,
            },
        })
    }

    /// Writes the files and starts Envoy; panics (with Envoy's log tail) if it is not serving
    /// within 30 s.
    pub fn start(self) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-envoy-")
            .tempdir()
            .expect("creating a temp dir");
        let ecds_dir = dir.path().join("ecds");
        fs::create_dir_all(&ecds_dir).expect("creating the ECDS dir");
        let ecds_path = match &self.filter {
            Filter::EcdsFile(path) => path.clone(),
            _ => ecds_dir.join("filter.json"),
        };
        if let Filter::Wasm {
            wasm,
            configuration,
        } = &self.filter
        {
            assert!(
                wasm.is_file(),
                "wasm module {} not found (run `make wasm`, or set PORTCULLIS_WASM / PORTCULLIS_NOOP_WASM)",
                wasm.display()
            );
            write_ecds(dir.path(), &ecds_path, wasm, configuration);
        }
        let bootstrap_path = dir.path().join("envoy.yaml");
        fs::write(&bootstrap_path, self.bootstrap(&ecds_path).to_string())
            .expect("writing the bootstrap");
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let bin = paths::envoy_bin();
        assert!(
            bin.is_file(),
            "Envoy binary {} not found (run `make envoy`, or set ENVOY_BIN)",
            bin.display()
        );
        let log = fs::File::create(&log_path).expect("creating the Envoy log");
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&bootstrap_path)
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["-l", &self.log_level])
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log);
        if let Some(spec) = &self.component_log_level {
            cmd.args(["--component-log-level", spec]);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let mut envoy = Envoy {
            child,
            dir,
            ecds_path,
            log_path,
            wasm: match &self.filter {
                Filter::Wasm { wasm, .. } => Some(wasm.clone()),
                _ => None,
            },
            admin_port: 0,
            port: 0,
            client: crate::client(),
        };
        envoy.wait_ready(&admin_path);
        envoy
    }
}

fn socket(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(port)}}]}],
        },
    })
}

/// The ECDS resource for a wasm filter, as a file-based DiscoveryResponse.
pub fn ecds_resource(wasm: &Path, configuration: &str) -> Value {
    json!({
        "version_info": next_version().to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": FILTER_NAME,
            "typed_config": {
                "@type": WASM_TYPE,
                "config": {
                    "name": FILTER_NAME,
                    "root_id": "",
                    "vm_config": {
                        "vm_id": VM_ID,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm}},
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": configuration,
                    },
                    "failure_policy": "FAIL_CLOSED",
                    // The filter reads the body a `remote` authorizer needs while holding the
                    // headers back (Envoy >= 1.35).
                    "allow_on_headers_stop_iteration": true,
                },
            },
        }],
    })
}

fn next_version() -> u64 {
    static VERSION: AtomicU64 = AtomicU64::new(1);
    VERSION.fetch_add(1, Ordering::Relaxed)
}

/// Writes the resource next to the watched dir and renames it in, so Envoy never reads a
/// half-written file.
fn write_ecds(tmp_dir: &Path, ecds_path: &Path, wasm: &Path, configuration: &str) {
    let staging = tmp_dir.join(format!("filter.json.{}", next_version()));
    fs::write(&staging, ecds_resource(wasm, configuration).to_string())
        .expect("writing the ECDS file");
    fs::rename(&staging, ecds_path).expect("renaming the ECDS file into place");
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    ecds_path: PathBuf,
    log_path: PathBuf,
    wasm: Option<PathBuf>,
    admin_port: u16,
    port: u16,
    client: reqwest::blocking::Client,
}

impl Envoy {
    /// A builder routing everything to `127.0.0.1:upstream_port`, no filter, 1 worker.
    pub fn builder(upstream_port: u16) -> EnvoyBuilder {
        EnvoyBuilder {
            upstream_port,
            filter: Filter::None,
            clusters: BTreeMap::new(),
            path_normalization: PathNormalization::Hardened,
            backends: Vec::new(),
            tls: None,
            concurrency: 1,
            log_level: std::env::var("PORTCULLIS_ENVOY_LOG")
                .unwrap_or_else(|_| "warning".to_owned()),
            component_log_level: None,
        }
    }

    /// The listener port.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// `http://127.0.0.1:PORT{path}` on the listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// `http://127.0.0.1:ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    /// The temp dir holding bootstrap, ECDS file and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// GET an admin endpoint (e.g. `/clusters`, `/config_dump`) as text.
    pub fn admin_get(&self, path: &str) -> String {
        self.client
            .get(self.admin_url(path))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET admin {path}: {e}\n{}", self.log_tail(40)))
    }

    /// Admin `/stats` as text (`name: value` lines).
    pub fn stats(&self) -> String {
        self.admin_get("/stats")
    }

    /// The value of counter/gauge `name`, if Envoy has it.
    pub fn stat(&self, name: &str) -> Option<u64> {
        parse_stat(&self.stats(), name)
    }

    /// Polls `name` until `pred` holds; returns the value. Panics with the stat's last value and
    /// the log tail on timeout.
    pub fn wait_for_stat(&self, name: &str, pred: impl Fn(u64) -> bool, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.stat(name);
            if let Some(v) = value.filter(|v| pred(*v)) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "stat {name} did not reach the expected value within {timeout:?} (last: {value:?})\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The Envoy process id (its memory is read from `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the Envoy process in bytes (`VmRSS`), when `/proc` has it.
    pub fn rss_bytes(&self) -> Option<u64> {
        crate::process::rss_bytes(self.pid())
    }

    /// The last `lines` lines of Envoy's stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Replaces the wasm filter's plugin configuration through ECDS and waits (10 s) until
    /// Envoy applied or rejected it. Workers switch over right after; poll if a test needs
    /// the very next request to see it.
    pub fn set_filter_config(&self, configuration: &str) -> ConfigUpdate {
        let wasm = self
            .wasm
            .clone()
            .unwrap_or_else(|| panic!("set_filter_config: this Envoy has no wasm filter"));
        self.set_filter(&wasm, configuration)
    }

    /// [`Self::set_filter_config`] with a JSON value.
    pub fn set_filter_json(&self, config: &Value) -> ConfigUpdate {
        self.set_filter_config(&config.to_string())
    }

    /// Replaces module and configuration through ECDS.
    pub fn set_filter(&self, wasm: &Path, configuration: &str) -> ConfigUpdate {
        let reload = format!("extension_config_discovery.http_filter.{FILTER_NAME}.update_success");
        let fail = format!("extension_config_discovery.http_filter.{FILTER_NAME}.update_rejected");
        let stats = self.stats();
        let (reload0, fail0) = (
            parse_stat(&stats, &reload).unwrap_or(0),
            parse_stat(&stats, &fail).unwrap_or(0),
        );
        write_ecds(self.dir.path(), &self.ecds_path, wasm, configuration);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.stats();
            if parse_stat(&stats, &reload).unwrap_or(0) > reload0 {
                return ConfigUpdate::Applied;
            }
            if parse_stat(&stats, &fail).unwrap_or(0) > fail0 {
                return ConfigUpdate::Rejected;
            }
            if Instant::now() >= deadline {
                panic!(
                    "ECDS update neither applied nor rejected within 10 s\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn wait_ready(&mut self, admin_path: &Path) {
        let deadline = Instant::now() + START_TIMEOUT;
        let fail = |envoy: &mut Envoy, why: &str| -> ! {
            let status = envoy.child.try_wait().ok().flatten();
            panic!(
                "Envoy did not become ready: {why} (exit status: {status:?})\nbootstrap: {}\n--- envoy log tail ---\n{}",
                envoy.dir.path().join("envoy.yaml").display(),
                envoy.log_tail(60)
            );
        };
        // The admin address file appears once admin is bound.
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                fail(self, &format!("process exited with {status}"));
            }
            if let Some(port) = fs::read_to_string(admin_path)
                .ok()
                .and_then(|s| parse_port(s.trim()))
            {
                self.admin_port = port;
                break;
            }
            if Instant::now() >= deadline {
                fail(self, "admin address file never appeared");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // /ready is LIVE once initialisation (incl. listener warming by ECDS) is done.
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                fail(self, &format!("process exited with {status}"));
            }
            let ready = self
                .client
                .get(self.admin_url("/ready"))
                .send()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                let listeners: Option<Value> = self
                    .client
                    .get(self.admin_url("/listeners?format=json"))
                    .send()
                    .and_then(|r| r.json())
                    .ok();
                let port = listeners.as_ref().and_then(|l| {
                    l["listener_statuses"]
                        .as_array()?
                        .iter()
                        .find(|s| s["name"] == "main")?["local_address"]["socket_address"]["port_value"]
                        .as_u64()
                });
                if let Some(port) = port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0 && crate::ports::is_listening(*p))
                {
                    self.port = port;
                    return;
                }
            }
            if Instant::now() >= deadline {
                fail(self, &format!("not ready within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- envoy log tail ({}) ---\n{}",
                self.log_path.display(),
                self.log_tail(40)
            );
        }
    }
}

fn parse_port(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn parse_stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_parsed_by_exact_name() {
        let text = "a.b: 3\na.b.c: 7\nx: No recorded values\n";
        assert_eq!(parse_stat(text, "a.b"), Some(3));
        assert_eq!(parse_stat(text, "a.b.c"), Some(7));
        assert_eq!(parse_stat(text, "a"), None);
        assert_eq!(parse_stat(text, "x"), None);
    }

    #[test]
    fn admin_address_port() {
        assert_eq!(parse_port("127.0.0.1:9901"), Some(9901));
        assert_eq!(parse_port("garbage"), None);
    }
}
