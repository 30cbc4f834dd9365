//! The rule tester: evaluates one request against a configuration with the filter's own
//! [`Evaluation`], recording a [`Trace`]. Like the pipeline it does no I/O: when the evaluation
//! needs keys or a callout, [`TestRun::advance`] hands that need to its caller (the CLI fetches
//! over HTTP, the browser through the control plane) and resumes with the answer.

use crate::authn::Caches;
use crate::callout::CalloutResponse;
use crate::config::{ConfigErrors, Engine, FilterConfig};
use crate::host::{Host, KeyLookup};
use crate::jwks::{Key, KeySet};
use crate::pipeline::{Evaluation, Step};
use crate::request::Request;
use crate::trace::{
    CalloutTrace, Decision, HandlerTrace, KeysTrace, MatchEvent, MatchTrace, Recorder, Trace,
    TracedRequest,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;

/// Each resumption answers a need, so this many means the evaluation is going in circles.
const MAX_STEPS: usize = 64;

/// A request as people write it for the tester.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TestRequest {
    pub method: String,
    /// Absolute `http(s)://host[:port]/path[?query]`: the scheme stands for the connection's.
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// A bearer token, sent as `Authorization: Bearer ...`.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TestRequestError {
    #[error("request must be 'METHOD URL', e.g. 'GET https://api.example.com/path'")]
    Line,
    #[error("method {0:?} is not an HTTP method token")]
    Method(String),
    #[error("URL {0:?} must be absolute http:// or https:// with a host")]
    Url(String),
    #[error("header {0:?} must be 'Name: value'")]
    Header(String),
}

impl TestRequest {
    /// Parses `METHOD URL`.
    pub fn parse_line(line: &str) -> Result<Self, TestRequestError> {
        let mut parts = line.split_whitespace();
        let (Some(method), Some(url), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TestRequestError::Line);
        };
        Ok(Self {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            token: None,
        })
    }

    /// Adds a `Name: value` header.
    pub fn add_header(&mut self, line: &str) -> Result<(), TestRequestError> {
        let (name, value) = line
            .split_once(':')
            .filter(|(n, _)| is_token(n.trim()))
            .ok_or_else(|| TestRequestError::Header(line.to_string()))?;
        self.headers
            .push((name.trim().to_string(), value.trim().to_string()));
        Ok(())
    }

    /// The request as the filter would see it from Envoy.
    pub fn to_request(&self) -> Result<Request, TestRequestError> {
        if !is_token(&self.method) {
            return Err(TestRequestError::Method(self.method.clone()));
        }
        let bad_url = || TestRequestError::Url(self.url.clone());
        let (scheme, rest) = self.url.split_once("://").ok_or_else(bad_url)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad_url());
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || !path.starts_with('/') {
            return Err(bad_url());
        }
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if let Some(t) = &self.token {
            headers.retain(|(k, _)| k != "authorization");
            headers.push(("authorization".to_string(), format!("Bearer {t}")));
        }
        let mut req = Request::new(
            &self.method.to_ascii_uppercase(),
            &scheme,
            authority,
            path,
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        req.remote_ip = Some("127.0.0.1".to_string());
        Ok(req)
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Handler names of one rule, for the trace (the engine keeps compiled handlers only).
#[derive(Debug, Clone)]
struct RuleNames {
    id: String,
    authenticators: Vec<String>,
    authorizer: String,
    mutators: Vec<String>,
}

/// A compiled configuration to test requests against.
#[derive(Debug, Clone)]
pub struct RuleTester {
    engine: Arc<Engine>,
    names: Arc<[RuleNames]>,
}

impl RuleTester {
    /// Compiles a configuration document exactly as the filter does.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigErrors> {
        let raw: FilterConfig = serde_json::from_slice(bytes)
            .map_err(|e| ConfigErrors(vec![crate::config::ConfigError::Json(e.to_string())]))?;
        Self::compile(&raw)
    }

    pub fn compile(raw: &FilterConfig) -> Result<Self, ConfigErrors> {
        let engine = Engine::compile(raw.clone())?;
        // The engine keeps the rules in the document's order (any failing rule fails it all).
        let names = raw
            .rules
            .iter()
            .map(|r| RuleNames {
                id: r.id.clone(),
                authenticators: r.authenticators.iter().map(|h| h.handler.clone()).collect(),
                authorizer: r.authorizer.handler.clone(),
                mutators: r.mutators.iter().map(|h| h.handler.clone()).collect(),
            })
            .collect();
        Ok(Self {
            engine: Arc::new(engine),
            names,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Starts evaluating `request` at `now` (seconds since the Unix epoch).
    pub fn start(&self, request: &TestRequest, now: u64) -> Result<TestRun, TestRequestError> {
        let req = request.to_request()?;
        let traced = TracedRequest {
            method: req.method().to_string(),
            url: request.url.clone(),
            headers: req
                .headers()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Ok(TestRun {
            tester: self.clone(),
            eval: Evaluation::observed(req, Recorder::default()),
            host: TesterHost {
                now,
                keys: HashMap::new(),
                wanted: Vec::new(),
            },
            caches: Caches::new(16),
            trace: Trace {
                request: traced,
                ..Trace::default()
            },
            steps: 0,
            awaiting_callout: false,
        })
    }
}

/// What a [`TestRun`] needs from its caller next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Fetch these JWKS URLs (GET) and hand each answer to [`TestRun::keys_fetched`].
    Keys(Vec<String>),
    /// Make this call and hand the answer to [`TestRun::callout_done`].
    Callout(CalloutRequest),
    /// The evaluation is over: [`TestRun::trace`] holds the whole account.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct CalloutRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body, as text (handlers send JSON or form bodies).
    pub body: String,
    pub timeout_ms: u64,
}

/// One request's evaluation in the tester, resumable like the filter's.
#[derive(Debug)]
pub struct TestRun {
    tester: RuleTester,
    eval: Evaluation<Recorder>,
    host: TesterHost,
    caches: Caches,
    trace: Trace,
    steps: usize,
    awaiting_callout: bool,
}

impl TestRun {
    /// Runs until the decision or a need.
    pub fn advance(&mut self) -> Need {
        loop {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                self.eval.keys_timed_out();
            }
            let engine = Arc::clone(&self.tester.engine);
            let step = self.eval.advance(&engine, &mut self.host, &mut self.caches);
            match step {
                Step::WaitForKeys { .. } => {
                    let wanted = std::mem::take(&mut self.host.wanted);
                    if wanted.is_empty() || self.steps > MAX_STEPS {
                        // Every key set was fetched: authenticate with what there is, as the
                        // filter does when `jwks_max_wait` runs out.
                        self.eval.keys_timed_out();
                        continue;
                    }
                    return Need::Keys(wanted);
                }
                // The tester's requests carry no body: the same as a request that ends with
                // its headers, which the filter authorizes with an empty body.
                Step::WaitForBody { .. } => {
                    self.eval.body_received(Vec::new());
                    continue;
                }
                Step::Callout(c) => {
                    self.awaiting_callout = true;
                    let request = CalloutRequest {
                        method: c.method.to_string(),
                        url: c.endpoint.url.clone(),
                        headers: c.headers,
                        body: String::from_utf8_lossy(&c.body).into_owned(),
                        timeout_ms: c.timeout_ms,
                    };
                    return Need::Callout(request);
                }
                Step::Allow(a) => {
                    self.trace.decision = Decision {
                        allowed: true,
                        rule: (!a.rule_id.is_empty()).then(|| a.rule_id.to_string()),
                        set_headers: a.set_headers,
                        remove_headers: a.remove_headers,
                        ..Decision::default()
                    };
                    self.finish();
                    return Need::Done;
                }
                Step::Deny(d) => {
                    self.trace.decision = Decision {
                        allowed: false,
                        status: d.response.status,
                        rule: d.rule_id.map(str::to_string),
                        reason: Some(d.reason),
                        message: Some(d.message),
                        response_headers: d.response.headers,
                        body: d.response.body,
                        ..Decision::default()
                    };
                    self.finish();
                    return Need::Done;
                }
            }
        }
    }

    /// The answer for a JWKS URL of [`Need::Keys`]: `Ok((status, body))`, or `Err` with why the
    /// fetch failed.
    pub fn keys_fetched(&mut self, url: &str, answer: Result<(u16, &[u8]), String>) {
        let parsed = match answer {
            Ok((200, body)) => KeySet::parse(body).map_err(|e| e.to_string()),
            Ok((status, _)) => Err(format!("answered status {status}")),
            Err(e) => Err(e),
        };
        let (lookup, entry) = match parsed {
            Ok(set) => {
                let n = set.len();
                (
                    KeyLookup::Ready(Arc::new(set)),
                    KeysTrace {
                        url: url.to_string(),
                        keys: Some(n),
                        error: None,
                    },
                )
            }
            Err(e) => (
                KeyLookup::Unavailable,
                KeysTrace {
                    url: url.to_string(),
                    keys: None,
                    error: Some(e),
                },
            ),
        };
        self.host.keys.insert(url.to_string(), lookup);
        self.trace.keys.push(entry);
    }

    /// The answer to the last [`Need::Callout`]; `None` when the call failed.
    pub fn callout_done(&mut self, request: &CalloutRequest, response: Option<CalloutResponse>) {
        if !std::mem::take(&mut self.awaiting_callout) {
            return;
        }
        self.trace.callouts.push(CalloutTrace {
            method: request.method.clone(),
            url: request.url.clone(),
            status: response.as_ref().map(|r| r.status),
        });
        self.eval.callout_done(response);
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    pub fn into_trace(self) -> Trace {
        self.trace
    }

    /// Puts rule and handler names on what the recorder saw.
    fn finish(&mut self) {
        let rec = self.eval.observer();
        let names = &self.tester.names;
        let id = |i: usize| names.get(i).map_or_else(String::new, |n| n.id.clone());
        self.trace.matching = rec.matched.as_ref().map(|m| match m {
            MatchEvent::Matched { rule, captures } => MatchTrace::Matched {
                rule: id(*rule),
                captures: captures.clone(),
            },
            MatchEvent::NoMatch => MatchTrace::NoMatch,
            MatchEvent::Ambiguous(rules) => MatchTrace::Ambiguous {
                rules: rules.iter().map(|r| id(*r)).collect(),
            },
            MatchEvent::Failed { rule, error } => MatchTrace::Failed {
                rule: id(*rule),
                error: error.clone(),
            },
        });
        let Some(MatchEvent::Matched { rule, .. }) = rec.matched else {
            return;
        };
        let Some(rule) = names.get(rule) else {
            return;
        };
        self.trace.authenticators = rec
            .authenticators
            .iter()
            .map(|(i, v)| HandlerTrace {
                handler: rule.authenticators.get(*i).cloned().unwrap_or_default(),
                verdict: v.clone(),
            })
            .collect();
        self.trace.authorizer = rec
            .authorizer
            .iter()
            .map(|v| HandlerTrace {
                handler: rule.authorizer.clone(),
                verdict: v.clone(),
            })
            .collect();
        if self.trace.decision.allowed {
            self.trace.mutators = rule.mutators.clone();
        }
    }
}

/// The tester's host: keys come from the caller, the clock is the caller's, and signatures are
/// verified in pure Rust (the filter's fallback, giving the same answers as Envoy's crypto).
#[derive(Debug)]
struct TesterHost {
    now: u64,
    keys: HashMap<String, KeyLookup>,
    /// JWKS URLs asked for and not fetched yet.
    wanted: Vec<String>,
}

impl Host for TesterHost {
    fn now(&mut self) -> u64 {
        self.now
    }

    fn keys(&mut self, jwks_url: &str) -> KeyLookup {
        match self.keys.get(jwks_url) {
            Some(k) => k.clone(),
            None => {
                if !self.wanted.iter().any(|u| u == jwks_url) {
                    self.wanted.push(jwks_url.to_string());
                }
                KeyLookup::Pending
            }
        }
    }

    fn unknown_kid(&mut self, _jwks_urls: &[String]) -> bool {
        // The keys were fetched for this very request: a re-fetch would say the same.
        false
    }

    fn verify_native(
        &mut self,
        _alg: jsonwebtoken::Algorithm,
        _key: &Key,
        _message: &[u8],
        _signature: &[u8],
    ) -> Option<bool> {
        None
    }
}

#[cfg(test)]
mod tests;
