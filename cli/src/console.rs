//! The web console at `/console` on the admin port: static assets embedded in the binary (no CDN),
//! the read-only JSON endpoints the pages need beyond the Hydra admin API (rules in either mode,
//! keys), the rule tester's callout proxy, and its token request (`mint`). Everything sits
//! behind the admin port's guard (Host allow-list, same-origin only), applied here too because
//! these routes are merged after it.
//!
//! The callout proxy (`POST /console/api/callout`) is what keeps the tester honest without
//! becoming an open proxy: it calls only a URL the submitted configuration names for a handler
//! (`jwks_urls`, `introspection_url`, `remote`, ...), only with GET or POST, with a bounded
//! time and body, and only public addresses unless the URL's origin is one the deployed
//! configuration (or this control plane itself) already calls.

use crate::callout_client::CalloutClient;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use portcullis::admin_guard::AllowedHosts;
use portcullis::keys::ACCESS_TOKEN_SET;
use portcullis::oauth2_error::{ErrorCode, OAuth2Error};
use portcullis::server::Service;
use portcullis_core::rule_tester::CalloutRequest;
use portcullis_reconciler::global::{GlobalConfig, urls_named_by};
use portcullis_reconciler::manifests;
use portcullis_reconciler::rule_set::{DesiredState, RenderOptions};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

/// The pages' Content-Security-Policy: nothing from elsewhere, no inline script; the tester
/// needs `wasm-unsafe-eval` to compile its module.
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The embedded assets: path under `/console/`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../console/index.html"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/console.css"),
    ),
    (
        "tester/portcullis_tester_wasm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/tester/portcullis_tester_wasm.js"),
    ),
    (
        "tester/portcullis_tester_wasm_bg.wasm",
        "application/wasm",
        include_bytes!("../console/tester/portcullis_tester_wasm_bg.wasm"),
    ),
];

/// Where manifests mode reads its input: the rules page recomputes the desired state from it,
/// exactly as the sync does.
#[derive(Debug, Clone)]
pub struct ManifestsSource {
    pub dir: PathBuf,
    pub global: GlobalConfig,
}

pub use rules::KubernetesSource;

#[derive(Clone)]
pub struct Console {
    svc: Arc<Service>,
    manifests: Option<Arc<ManifestsSource>>,
    kubernetes: Option<Arc<KubernetesSource>>,
    /// For public targets.
    public_only: Arc<CalloutClient>,
    /// For origins the deployed configuration already calls.
    trusted: Arc<CalloutClient>,
}

impl Console {
    pub fn new(svc: Arc<Service>, manifests: Option<ManifestsSource>) -> Self {
        Self {
            svc,
            manifests: manifests.map(Arc::new),
            kubernetes: None,
            public_only: Arc::new(CalloutClient::new(false)),
            trusted: Arc::new(CalloutClient::new(true)),
        }
    }

    /// Kubernetes mode: the rules page reads the served namespaces' Rules and Services.
    pub fn with_kubernetes(mut self, source: KubernetesSource) -> Self {
        self.kubernetes = Some(Arc::new(source));
        self
    }
}

/// The console's routes, with the admin guard.
pub fn router(console: Console) -> Router {
    let allowed = AllowedHosts::new(&console.svc.config.admin_hosts);
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/api/rules", get(rules))
        .route("/console/api/keys", get(keys))
        .route("/console/api/callout", post(callout))
        .route("/console/api/token", post(mint::mint))
        .route("/console/{*path}", get(asset))
        .with_state(console)
        .layer(axum::middleware::from_fn_with_state(
            allowed,
            portcullis::admin_guard::guard,
        ))
}

async fn index() -> Response {
    serve_asset("")
}

async fn asset(Path(path): Path<String>) -> Response {
    serve_asset(&path)
}

fn serve_asset(path: &str) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return OAuth2Error::not_found("The requested resource does not exist.").into_response();
    };
    let mut resp = (StatusCode::OK, *bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Every Rule with its Ready condition, grouped by workload, and each workload's filter
/// configuration with its rendered size against the limit.
async fn rules(State(console): State<Console>) -> Response {
    if let Some(source) = console.kubernetes.clone() {
        return match rules::kubernetes_view(&source).await {
            Ok(v) => Json(v).into_response(),
            // The admin sees why (RBAC, API server down): the page is theirs alone.
            Err(e) => OAuth2Error::new(
                ErrorCode::TemporarilyUnavailable,
                format!("listing the served namespaces' Rules and Services: {e}"),
            )
            .into_response(),
        };
    }
    let Some(source) = console.manifests.clone() else {
        return Json(json!({
            "available": false,
            "reason": "this control plane serves neither manifests nor Kubernetes mode"
        }))
        .into_response();
    };
    let answer = tokio::task::spawn_blocking(move || rules::manifests_view(&source)).await;
    match answer {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => OAuth2Error::unavailable(e).into_response(),
        Err(e) => OAuth2Error::server_error(e).into_response(),
    }
}

/// The access-token JWKS, each key's age, and the next scheduled rotation.
async fn keys(State(console): State<Console>) -> Response {
    let svc = &console.svc;
    let now = portcullis::clock::now();
    let ring = svc.keys.ring();
    let period = svc
        .config
        .key_rotation
        .and_then(|p| i64::try_from(p.as_secs()).ok());
    let keys: Vec<Value> = ring
        .keys()
        .iter()
        .rev()
        .map(|k| {
            json!({
                "set": k.set,
                "kid": k.kid,
                "alg": k.alg.as_str(),
                "created_at": k.created_at,
                "age_seconds": now.saturating_sub(k.created_at),
                "retired_at": k.expires_at,
            })
        })
        .collect();
    let next_rotation = period.and_then(|p| {
        ring.current(ACCESS_TOKEN_SET)
            .map(|k| k.created_at.saturating_add(p))
    });
    Json(json!({
        "now": now,
        "jwks": ring.jwks(ACCESS_TOKEN_SET, now),
        "keys": keys,
        "rotation_period_seconds": period,
        "next_rotation": next_rotation,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct CalloutBody {
    /// The filter configuration the page is testing.
    config: Value,
    request: CalloutRequest,
}

/// Makes one of the tester's callouts (see the module doc for what it refuses).
async fn callout(
    State(console): State<Console>,
    portcullis::request::Json(body): portcullis::request::Json<CalloutBody>,
) -> Response {
    let url = body.request.url.as_str();
    if !urls_named_by(&body.config).iter().any(|u| u == url) {
        return OAuth2Error::new(
            ErrorCode::RequestForbidden,
            format!("{url} is not a URL the submitted configuration's handlers call"),
        )
        .into_response();
    }
    let Some(target) = origin(url) else {
        return OAuth2Error::invalid_request(format!("{url} is not an absolute http(s) URL"))
            .into_response();
    };
    let source = console.manifests.clone();
    let own = [
        console.svc.config.issuer.clone(),
        format!("http://{}", console.svc.config.admin_addr),
    ];
    let mut trusted = tokio::task::spawn_blocking(move || trusted_origins(source.as_deref(), &own))
        .await
        .unwrap_or_default();
    // Kubernetes mode: the origins the deployed Rules call are typically cluster-internal
    // (Hydra's admin Service, an in-cluster authorizer), so they are read from the API server
    // only when the target is not already trusted. If that read fails, only public addresses.
    if !trusted.contains(&target)
        && let Some(k8s) = console.kubernetes.clone()
    {
        match rules::kubernetes_state(&k8s).await {
            Ok(state) => trusted.extend(origins_of(&state)),
            Err(e) => tracing::info!(
                error = %e,
                "console callout: the deployed Rules could not be read; public addresses only"
            ),
        }
    }
    let client = if trusted.contains(&target) {
        &console.trusted
    } else {
        &console.public_only
    };
    match client.call(&body.request).await {
        Ok(r) => {
            let headers: Vec<(String, String)> = r.headers;
            Json(json!({
                "status": r.status,
                "headers": headers,
                "body": String::from_utf8_lossy(&r.body),
            }))
            .into_response()
        }
        Err(e) => {
            tracing::info!(url, error = %e, "console callout refused or failed");
            let code = match e {
                crate::callout_client::CalloutError::NonPublic(_)
                | crate::callout_client::CalloutError::Method(_) => ErrorCode::RequestForbidden,
                _ => ErrorCode::TemporarilyUnavailable,
            };
            OAuth2Error::new(code, e.to_string()).into_response()
        }
    }
}

/// `scheme://host[:port]` of an absolute http(s) URL, normalised (default ports dropped).
fn origin(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return None;
    }
    Some(u.origin().ascii_serialization())
}

/// Origins the deployed configuration calls, and this control plane's own.
fn trusted_origins(source: Option<&ManifestsSource>, own: &[String]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = own.iter().filter_map(|u| origin(u)).collect();
    let Some(source) = source else { return out };
    let Ok(loaded) = manifests::load_dir(&source.dir) else {
        return out;
    };
    let state = loaded.desired_state(&source.global, &RenderOptions::default());
    out.extend(origins_of(&state));
    out
}

/// Origins of every URL a workload's rendered configuration calls.
fn origins_of(state: &DesiredState) -> BTreeSet<String> {
    state
        .workloads
        .values()
        .flat_map(|w| urls_named_by(&w.filter_config))
        .filter_map(|u| origin(&u))
        .collect()
}

/// The hash `make console-wasm` records in `console/tester/SOURCES.sha256`: `sha256sum` of the
/// `sha256sum` lines (`<hex>  <path>`, sorted by path) of every source the bundle is built from.
/// A test compares it with the tree, so a core change cannot ship with a stale tester.
pub fn bundle_sources_hash(root: &std::path::Path) -> std::io::Result<String> {
    fn walk(root: &std::path::Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
        let path = root.join(rel);
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                let name = entry?.file_name();
                walk(root, &format!("{rel}/{}", name.to_string_lossy()), out)?;
            }
        } else {
            out.push(rel.to_string());
        }
        Ok(())
    }
    let mut files = Vec::new();
    for rel in BUNDLE_SOURCES {
        walk(root, rel, &mut files)?;
    }
    files.sort();
    let mut lines = String::new();
    for f in files {
        let bytes = std::fs::read(root.join(&f))?;
        lines.push_str(&portcullis::crypto::hex(&portcullis::crypto::sha256(
            &bytes,
        )));
        lines.push_str("  ");
        lines.push_str(&f);
        lines.push('\n');
    }
    Ok(portcullis::crypto::hex(&portcullis::crypto::sha256(
        lines.as_bytes(),
    )))
}

/// What the tester bundle is built from (relative to the workspace root; the Makefile's
/// `console-wasm` hashes the same list).
const BUNDLE_SOURCES: [&str; 4] = [
    "core/Cargo.toml",
    "core/src",
    "tester-wasm/Cargo.toml",
    "tester-wasm/src",
];

mod mint;
mod rules;

#[cfg(test)]
mod tests;
