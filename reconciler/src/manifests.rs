//! Manifests mode (no Kubernetes): the same YAML manifests read from a directory. Loads every
//! `*.yaml`/`*.yml`/`*.json` file (multi-document YAML) into typed `OAuth2Client`, `Rule`,
//! `Secret` and `Service` objects; a bad document is reported with its file, document index and
//! field while the good ones still load. Renders the desired resources as multi-document YAML for
//! GitOps review, and writes an Envoy ECDS file per workload (atomically, so a watching Envoy
//! never reads half a file).

use crate::crd::{OAuth2Client, Rule};
use crate::global::GlobalConfig;
use crate::rule_set::{
    self, DesiredState, RenderOptions, ServiceInfo, Workload, wasm_filter_config,
};
use k8s_openapi::api::core::v1::{Secret, Service};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// An object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub file: PathBuf,
    /// 0-based index of the document in its file.
    pub index: usize,
    pub object: T,
}

/// A document that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct DocumentError {
    pub file: PathBuf,
    pub index: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Path of the offending field (`spec.grantTypes[0]`), empty when the document as a whole is
    /// bad (YAML syntax).
    pub field: String,
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.index)?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} {n})")?,
            (Some(k), None) => write!(f, " ({k})")?,
            _ => {}
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The directory itself could not be read.
#[derive(Debug, Error)]
#[error("cannot read manifests directory {}: {source}", dir.display())]
pub struct DirError {
    pub dir: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Everything loaded from a directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    pub clients: Vec<Located<OAuth2Client>>,
    pub rules: Vec<Located<Rule>>,
    pub secrets: Vec<Located<Secret>>,
    pub services: Vec<Located<Service>>,
    /// Documents that were skipped on purpose (unknown kinds).
    pub notes: Vec<String>,
    pub errors: Vec<DocumentError>,
}

impl Manifests {
    pub fn service_infos(&self) -> Vec<ServiceInfo> {
        self.services
            .iter()
            .filter_map(|s| ServiceInfo::from_service(&s.object))
            .collect()
    }

    pub fn rule_objects(&self) -> Vec<Rule> {
        self.rules.iter().map(|r| r.object.clone()).collect()
    }

    /// The desired state for the loaded rules and services.
    pub fn desired_state(&self, global: &GlobalConfig, opts: &RenderOptions) -> DesiredState {
        rule_set::desired_state(&self.rule_objects(), &self.service_infos(), global, opts)
    }
}

/// Loads every manifest file directly in `dir` (sorted by name; subdirectories are not read).
pub fn load_dir(dir: &Path) -> Result<Manifests, DirError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DirError {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    let mut out = Manifests::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&file, &text, &mut out),
            Err(e) => out.errors.push(DocumentError {
                file: file.clone(),
                index: 0,
                kind: None,
                name: None,
                field: String::new(),
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    Ok(out)
}

/// Loads the documents of one file's text into `out`.
pub fn load_text(file: &Path, text: &str, out: &mut Manifests) {
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |kind: Option<String>, name: Option<String>, field: String, message: String| {
            DocumentError {
                file: file.to_path_buf(),
                index,
                kind,
                name,
                field,
                message,
            }
        };
        let value: Value = match <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                out.errors.push(err(None, None, String::new(), e));
                // A syntax error leaves the rest of the stream unreadable.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().map(String::from);
        let name = value["metadata"]["name"].as_str().map(String::from);
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let Some(k) = kind.clone() else {
            out.errors
                .push(err(None, name, "kind".into(), "missing".into()));
            continue;
        };
        if name.as_deref().is_none_or(str::is_empty) {
            out.errors
                .push(err(kind, None, "metadata.name".into(), "required".into()));
            continue;
        }
        // Names and namespaces become file names here (ECDS files, Secret manifests).
        if let Some(n) = name.as_deref().filter(|n| !crate::dns::is_subdomain(n)) {
            let message = format!("{n:?} is not a DNS-1123 name (lower-case a-z, 0-9, '-', '.')");
            out.errors
                .push(err(kind, name, "metadata.name".into(), message));
            continue;
        }
        if let Some(ns) = value["metadata"]["namespace"].as_str()
            && !crate::dns::is_label(ns)
        {
            let message = format!("{ns:?} is not a DNS-1123 label (lower-case a-z, 0-9, '-')");
            out.errors
                .push(err(kind, name, "metadata.namespace".into(), message));
            continue;
        }
        let file_buf = file.to_path_buf();
        let result = match (group, k.as_str()) {
            ("hydra.ory.sh", "OAuth2Client") => typed::<OAuth2Client>(value)
                .and_then(|c| check_client(&c).map(|()| c))
                .map(|c| {
                    out.clients.push(Located {
                        file: file_buf.clone(),
                        index,
                        object: c,
                    });
                }),
            ("oathkeeper.ory.sh", "Rule") => typed::<Rule>(value).map(|r| {
                out.rules.push(Located {
                    file: file_buf.clone(),
                    index,
                    object: r,
                });
            }),
            ("", "Secret") => typed::<Secret>(value).map(|s| {
                out.secrets.push(Located {
                    file: file_buf.clone(),
                    index,
                    object: s,
                });
            }),
            ("", "Service") => typed::<Service>(value).map(|s| {
                out.services.push(Located {
                    file: file_buf.clone(),
                    index,
                    object: s,
                });
            }),
            _ => {
                out.notes.push(format!(
                    "{}: document {index} ({k} {}): kind {api_version}/{k} ignored",
                    file.display(),
                    name.as_deref().unwrap_or_default()
                ));
                Ok(())
            }
        };
        if let Err((field, message)) = result {
            out.errors.push(err(kind, name, field, message));
        }
    }
}

/// Deserializes with the path of the field at fault.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        (if path == "." { String::new() } else { path }, inner)
    })
}

/// What the CRD schema enforces beyond types (the API server would reject these).
fn check_client(c: &OAuth2Client) -> Result<(), (String, String)> {
    if c.spec.grant_types.is_empty() {
        return Err((
            "spec.grantTypes".into(),
            "at least one grant type is required".into(),
        ));
    }
    if !crate::dns::is_subdomain(&c.spec.secret_name) {
        return Err((
            "spec.secretName".into(),
            format!(
                "{:?} is not a DNS-1123 name (lower-case a-z, 0-9, '-', '.')",
                c.spec.secret_name
            ),
        ));
    }
    Ok(())
}

/// A client's credentials from its Secret: `client_id`/`client_secret` (Kyma's docs) or
/// `CLIENT_ID`/`CLIENT_SECRET` (newer Maester), from `data` (base64 in the manifest) or
/// `stringData`. `None` when either is missing or not UTF-8.
pub fn secret_credentials(secret: &Secret) -> Option<(String, String)> {
    let get = |keys: [&str; 2]| -> Option<String> {
        keys.iter().find_map(|k| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(*k).cloned())
                .or_else(|| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(*k))
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                })
        })
    };
    Some((
        get(["client_id", "CLIENT_ID"])?,
        get(["client_secret", "CLIENT_SECRET"])?,
    ))
}

/// The result of [`render`].
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Multi-document YAML of the resources, with the rules that are not ready as comments.
    pub yaml: String,
    /// Manifest errors and rules that are not ready, one line each (for stderr).
    pub problems: Vec<String>,
    pub state: DesiredState,
}

/// Renders the resources the reconciler would apply for the manifests in `dir`.
pub fn render(
    dir: &Path,
    global: &GlobalConfig,
    opts: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let manifests = load_dir(dir)?;
    let state = manifests.desired_state(global, opts);
    let mut problems: Vec<String> = manifests.errors.iter().map(ToString::to_string).collect();
    for o in &state.rules {
        if !o.ready() {
            problems.push(format!(
                "Rule {}/{}: {}: {}",
                o.namespace,
                o.name,
                o.reason.as_str(),
                o.message
            ));
        }
    }
    let mut yaml = String::new();
    for p in &problems {
        yaml.push_str("# ");
        yaml.push_str(&p.replace('\n', " "));
        yaml.push('\n');
    }
    for r in state.resources() {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(&r)?);
    }
    Ok(Rendered {
        yaml,
        problems,
        state,
    })
}

#[derive(Debug, Error)]
pub enum RenderError {
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error("cannot render YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The ECDS file for one workload: a `DiscoveryResponse` (the format Envoy's
/// `path_config_source` reads) holding one `TypedExtensionConfig` named `portcullis` that runs
/// the wasm filter from the local file `wasm_path` with `filter_config`.
pub fn ecds_document(filter_config: &Value, wasm_path: &str) -> Value {
    let code = json!({"local": {"filename": wasm_path}});
    let version: String = Sha256::digest(filter_config.to_string().as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({
        "version_info": version,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "portcullis",
            "typed_config": wasm_filter_config(code, filter_config),
        }],
    })
}

/// Where [`write_ecds_files`] puts a workload's file: `<resource-name>.<namespace>.json`.
pub fn ecds_file_name(workload: &Workload) -> String {
    format!("{}.{}.json", workload.resource_name(), workload.namespace)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over `path` (Envoy's file watch sees one complete move).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o644)
}

/// [`write_atomic`] with the file's permission bits (Unix; ignored elsewhere).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What [`write_ecds_files`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EcdsWrite {
    /// Files (re)written because their content changed.
    pub written: Vec<PathBuf>,
    /// Files already up to date.
    pub unchanged: Vec<PathBuf>,
    /// ECDS files in the directory for workloads that no longer have rules. They are left alone:
    /// Envoy keeps a filter's last config when its ECDS file goes away, so what "no rules"
    /// should mean for a running Envoy is the caller's decision.
    pub stale: Vec<PathBuf>,
}

impl fmt::Display for EcdsWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} written, {} unchanged",
            self.written.len(),
            self.unchanged.len()
        )
    }
}

/// Writes one ECDS file per workload of `state` into `dir`, rewriting only those whose content
/// changed (an unchanged file is not touched, so Envoy does not reload it).
pub fn write_ecds_files(
    dir: &Path,
    state: &DesiredState,
    wasm_path: &str,
) -> std::io::Result<EcdsWrite> {
    std::fs::create_dir_all(dir)?;
    let mut out = EcdsWrite::default();
    for wc in state.workloads.values() {
        // Loading refuses such namespaces already; this keeps any other caller inside `dir`.
        if !crate::dns::is_label(&wc.workload.namespace) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "namespace {:?} is not a DNS-1123 label: no ECDS file written",
                    wc.workload.namespace
                ),
            ));
        }
        let path = dir.join(ecds_file_name(&wc.workload));
        let mut bytes = serde_json::to_vec_pretty(&ecds_document(&wc.filter_config, wasm_path))
            .map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
            out.unchanged.push(path);
        } else {
            write_atomic(&path, &bytes)?;
            out.written.push(path);
        }
    }
    let current: Vec<PathBuf> = out.written.iter().chain(&out.unchanged).cloned().collect();
    let mut stale: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("portcullis-") && name.ends_with(".json") && !current.contains(p)
        })
        .collect();
    stale.sort();
    out.stale = stale;
    Ok(out)
}

/// Plans every loaded OAuth2Client against the Secrets in the same directory (matched by
/// namespace and `secretName`). `generate` is called once per client without a Secret.
pub fn plan_clients(
    manifests: &Manifests,
    mut generate: impl FnMut() -> (String, String),
) -> Vec<(Located<OAuth2Client>, crate::client::ClientPlan)> {
    manifests
        .clients
        .iter()
        .map(|c| {
            let ns = c.object.metadata.namespace.as_deref().unwrap_or("default");
            let secret = manifests.secrets.iter().map(|s| &s.object).find(|s| {
                s.metadata.name.as_deref() == Some(c.object.spec.secret_name.as_str())
                    && s.metadata.namespace.as_deref().unwrap_or("default") == ns
            });
            (
                c.clone(),
                crate::client::plan_client(&c.object, secret, &mut generate),
            )
        })
        .collect()
}

/// Writes a generated Secret back into the manifests directory as
/// `<name>.<namespace>.secret.yaml`, readable by the owner only (0600), atomically.
pub fn write_secret_manifest(dir: &Path, secret: &Secret) -> std::io::Result<PathBuf> {
    let name = secret.metadata.name.as_deref().unwrap_or("secret");
    let ns = secret.metadata.namespace.as_deref().unwrap_or("default");
    // Loading refuses such names already; this keeps any other caller inside `dir`.
    if !crate::dns::is_subdomain(name) || !crate::dns::is_label(ns) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("Secret {ns}/{name}: not DNS-1123 names, not written"),
        ));
    }
    let path = dir.join(format!("{name}.{ns}.secret.yaml"));
    let mut secret = secret.clone();
    // Owner references point at API objects; in a directory they mean nothing.
    secret.metadata.owner_references = None;
    let yaml = crate::client::secret_manifest(&secret).map_err(std::io::Error::other)?;
    write_atomic_mode(&path, yaml.as_bytes(), 0o600)?;
    Ok(path)
}

/// A cheap fingerprint of the manifest files in `dir` (names, sizes, modification times), for
/// polling a directory for changes without reading every file.
pub fn fingerprint(dir: &Path) -> std::io::Result<[u8; 32]> {
    let mut entries: Vec<(String, u64, u128)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let ext = path
                .extension()
                .and_then(|x| x.to_str())
                .unwrap_or_default()
                .to_string();
            if !matches!(ext.as_str(), "yaml" | "yml" | "json") {
                return None;
            }
            let meta = e.metadata().ok()?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            Some((
                e.file_name().to_string_lossy().into_owned(),
                meta.len(),
                mtime,
            ))
        })
        .collect();
    entries.sort();
    let mut h = Sha256::new();
    for (name, len, mtime) in entries {
        h.update(name.as_bytes());
        h.update(len.to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    Ok(h.finalize().into())
}

/// Polls `dir` every `interval` (no inotify dependency; Kubernetes-style manifests change
/// rarely) and calls `on_change` with the freshly loaded manifests once at start and whenever
/// the directory's [`fingerprint`] changes. Stops when `on_change` returns `false`. An unreadable
/// directory is passed on as an error (and retried on the next change of its fingerprint).
pub async fn watch_dir(
    dir: &Path,
    interval: std::time::Duration,
    mut on_change: impl FnMut(Result<Manifests, DirError>) -> bool,
) {
    let mut last: Option<Result<[u8; 32], String>> = None;
    loop {
        let now = fingerprint(dir).map_err(|e| e.to_string());
        if last.as_ref() != Some(&now) {
            last = Some(now);
            if !on_change(load_dir(dir)) {
                return;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests;
