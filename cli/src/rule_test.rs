//! `portcullis test`: evaluates one request against Rule manifests (or Oathkeeper access rule
//! files) with the filter's own core and prints the trace. Callouts go to the URLs the rules
//! name, from this machine.

use crate::callout_client::CalloutClient;
use portcullis_core::rule_tester::{Need, RuleTester, TestRequest};
use portcullis_core::trace::{HandlerTrace, MatchTrace, Trace};
use portcullis_reconciler::global::GlobalConfig;
use portcullis_reconciler::manifests;
use portcullis_reconciler::rule_set::access_rule;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why a test could not run (exit status 2): the input, not the decision, is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Manifest(String),
    #[error("{} holds no Rule manifests or access rules", .0.display())]
    NoRules(PathBuf),
    #[error("--config {}: {message}", path.display())]
    Global { path: PathBuf, message: String },
    #[error("the rules do not compile: {0}")]
    Compile(String),
    #[error("{0}")]
    Request(#[from] portcullis_core::rule_tester::TestRequestError),
}

/// The filter configuration document for the rules at `rules` (a file or a directory) under the
/// global config at `global` (default: every handler enabled), as `portcullis render` builds it.
pub fn filter_config(rules: &Path, global: Option<&Path>) -> Result<Value, TestError> {
    let global = match global {
        None => GlobalConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| TestError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            GlobalConfig::from_yaml(&text).map_err(|e| TestError::Global {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        }
    };
    let access_rules = load_rules(rules)?;
    Ok(global.filter_config(&access_rules))
}

fn load_rules(path: &Path) -> Result<Vec<Value>, TestError> {
    let read_err = |source| TestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let loaded = if meta.is_dir() {
        manifests::load_dir(path).map_err(|e| TestError::Manifest(e.to_string()))?
    } else {
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        // A file of Oathkeeper access rules (a JSON or YAML list) is taken as it is.
        if let Ok(Value::Array(list)) = serde_yaml::from_str::<Value>(&text)
            && !list.is_empty()
            && list.iter().all(|r| r.get("match").is_some())
        {
            return Ok(list);
        }
        let mut out = manifests::Manifests::default();
        manifests::load_text(path, &text, &mut out);
        out
    };
    if let Some(e) = loaded.errors.first() {
        return Err(TestError::Manifest(e.to_string()));
    }
    if loaded.rules.is_empty() {
        return Err(TestError::NoRules(path.to_path_buf()));
    }
    Ok(loaded
        .rules
        .iter()
        .map(|r| access_rule(&r.object))
        .collect())
}

/// Compiles `config`, evaluates `request`, and answers every need over HTTP.
pub async fn run(config: &Value, request: &TestRequest, now: u64) -> Result<Trace, TestError> {
    let tester = RuleTester::from_json(config.to_string().as_bytes())
        .map_err(|e| TestError::Compile(e.to_string()))?;
    let client = CalloutClient::new(true);
    let mut run = tester.start(request, now)?;
    loop {
        match run.advance() {
            Need::Done => return Ok(run.into_trace()),
            Need::Keys(urls) => {
                for url in urls {
                    let get = portcullis_core::rule_tester::CalloutRequest {
                        method: "GET".into(),
                        url: url.clone(),
                        headers: vec![("accept".into(), "application/json".into())],
                        body: String::new(),
                        timeout_ms: crate::callout_client::MAX_TIMEOUT.as_millis() as u64,
                    };
                    match client.call(&get).await {
                        Ok(r) => run.keys_fetched(&url, Ok((r.status, &r.body))),
                        Err(e) => run.keys_fetched(&url, Err(e.to_string())),
                    }
                }
            }
            Need::Callout(c) => {
                let answer = client.call(&c).await;
                run.callout_done(&c, answer.ok());
            }
        }
    }
}

/// The trace as people read it.
pub fn render_text(trace: &Trace) -> String {
    let mut out = String::new();
    let r = &trace.request;
    let _ = writeln!(out, "request     {} {}", r.method, r.url);
    match &trace.matching {
        None => {
            let _ = writeln!(out, "match       refused before matching");
        }
        Some(MatchTrace::Matched { rule, .. }) => {
            let _ = writeln!(out, "match       rule {rule}");
        }
        Some(MatchTrace::NoMatch) => {
            let _ = writeln!(out, "match       no rule matches");
        }
        Some(MatchTrace::Ambiguous { rules }) => {
            let _ = writeln!(out, "match       overlapping rules: {}", rules.join(", "));
        }
        Some(MatchTrace::Failed { rule, error }) => {
            let _ = writeln!(out, "match       rule {rule} failed: {error}");
        }
    }
    for k in &trace.keys {
        let what = match (&k.keys, &k.error) {
            (Some(n), _) => format!("{n} keys"),
            (None, Some(e)) => format!("failed: {e}"),
            (None, None) => "failed".to_string(),
        };
        let _ = writeln!(out, "keys        {} -> {what}", k.url);
    }
    for c in &trace.callouts {
        let status = c.status.map_or("no answer".to_string(), |s| s.to_string());
        let _ = writeln!(out, "callout     {} {} -> {status}", c.method, c.url);
    }
    for a in &trace.authenticators {
        let _ = writeln!(out, "authn       {}", handler_line(a));
    }
    for a in &trace.authorizer {
        let _ = writeln!(out, "authz       {}", handler_line(a));
    }
    if !trace.mutators.is_empty() {
        let _ = writeln!(out, "mutators    {}", trace.mutators.join(", "));
    }
    let d = &trace.decision;
    if d.allowed {
        let _ = writeln!(out, "decision    ALLOW");
        for (k, v) in &d.set_headers {
            let _ = writeln!(out, "  set       {k}: {v}");
        }
        for k in &d.remove_headers {
            let _ = writeln!(out, "  remove    {k}");
        }
    } else {
        let _ = writeln!(
            out,
            "decision    DENY {} ({})",
            d.status,
            d.reason.unwrap_or("")
        );
        if let Some(m) = &d.message {
            let _ = writeln!(out, "  cause     {m}");
        }
        for (k, v) in &d.response_headers {
            let _ = writeln!(out, "  header    {k}: {v}");
        }
        let _ = writeln!(out, "  body      {}", d.body);
    }
    out
}

fn handler_line(h: &HandlerTrace) -> String {
    let v = &h.verdict;
    let mut line = format!("{:<22} {}", h.handler, v.outcome);
    if let Some(s) = &v.subject {
        let _ = write!(line, " subject={s}");
    }
    if let Some(r) = v.reason {
        let _ = write!(line, " reason={r}");
    }
    if let Some(m) = &v.message {
        let _ = write!(line, ": {m}");
    }
    if let Some(c) = &v.callout {
        let _ = write!(line, " -> {c}");
    }
    line
}
