//! What the rule tester shows: a step-by-step account of one request's evaluation, produced by
//! the same [`Evaluation`](crate::pipeline::Evaluation) the filter runs.
//!
//! The pipeline reports its steps to an [`Observer`]. The filter's observer is `()`, whose
//! methods are empty and inline away, so enforcing pays nothing for the tester; the tester's
//! [`Recorder`] keeps the steps, and [`crate::rule_tester`] turns them into a [`Trace`] with
//! rule and handler names, the host's key fetches and callouts, and the decision.

use crate::authn::AuthnStep;
use crate::authz::AuthzStep;
use crate::callout::Callout;
use crate::error_handler::PolicyError;
use crate::matcher::Lookup;
use serde::Serialize;

/// Watches an evaluation. Every method defaults to doing nothing.
pub trait Observer {
    /// The rule lookup's outcome (before any handler runs).
    #[inline]
    fn matched(&mut self, _lookup: &Lookup) {}
    /// Authenticator number `index` of the matched rule gave `verdict`. An authenticator that
    /// waited for keys or called out reports again once resumed.
    #[inline]
    fn authenticator(&mut self, _index: usize, _verdict: Verdict<'_>) {}
    /// The matched rule's authorizer gave `verdict`.
    #[inline]
    fn authorizer(&mut self, _verdict: Verdict<'_>) {}
}

impl Observer for () {}

/// One handler's answer, borrowed from the pipeline's own step (building it allocates nothing).
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'a> {
    /// Authenticated (with this subject) or, for an authorizer, allowed.
    Success {
        subject: Option<&'a str>,
    },
    /// No credential of this authenticator's kind: the chain moves on.
    NotResponsible,
    Failed(&'a PolicyError),
    WaitingForKeys,
    /// The authorizer reads the request body first.
    WaitingForBody,
    Callout(&'a Callout),
}

pub(crate) fn authn_verdict(step: &AuthnStep) -> Verdict<'_> {
    match step {
        AuthnStep::Success { subject, .. } => Verdict::Success {
            subject: Some(subject),
        },
        AuthnStep::NotResponsible => Verdict::NotResponsible,
        AuthnStep::Fail(e) => Verdict::Failed(e),
        AuthnStep::WaitForKeys => Verdict::WaitingForKeys,
        AuthnStep::Callout(c) => Verdict::Callout(c),
    }
}

pub(crate) fn authz_verdict(step: &AuthzStep) -> Verdict<'_> {
    match step {
        AuthzStep::Allow { .. } => Verdict::Success { subject: None },
        AuthzStep::Deny(e) => Verdict::Failed(e),
        AuthzStep::Callout(c) => Verdict::Callout(c),
        AuthzStep::NeedBody => Verdict::WaitingForBody,
    }
}

/// Keeps every step an evaluation reports, by rule and handler index.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub matched: Option<MatchEvent>,
    /// (authenticator index, verdict), in order.
    pub authenticators: Vec<(usize, HandlerVerdict)>,
    pub authorizer: Vec<HandlerVerdict>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchEvent {
    Matched { rule: usize, captures: Vec<String> },
    NoMatch,
    Ambiguous(Vec<usize>),
    Failed { rule: usize, error: String },
}

impl Observer for Recorder {
    fn matched(&mut self, lookup: &Lookup) {
        self.matched = Some(match lookup {
            Lookup::NoMatch => MatchEvent::NoMatch,
            Lookup::Matched { rule, captures } => MatchEvent::Matched {
                rule: *rule,
                captures: captures.clone(),
            },
            Lookup::Ambiguous(rules) => MatchEvent::Ambiguous(rules.clone()),
            Lookup::Failed { rule, error } => MatchEvent::Failed {
                rule: *rule,
                error: error.to_string(),
            },
        });
    }

    fn authenticator(&mut self, index: usize, verdict: Verdict<'_>) {
        self.authenticators
            .push((index, HandlerVerdict::from(verdict)));
    }

    fn authorizer(&mut self, verdict: Verdict<'_>) {
        self.authorizer.push(HandlerVerdict::from(verdict));
    }
}

/// A handler's verdict as the trace shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandlerVerdict {
    /// `success`, `not_responsible`, `failed`, `waiting_for_keys` or `callout`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The stable reason of a failure (e.g. `jwt_expired`, `jwt_kid_unknown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What exactly failed (which claim, which key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The URL a callout goes to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callout: Option<String>,
}

impl From<Verdict<'_>> for HandlerVerdict {
    fn from(v: Verdict<'_>) -> Self {
        let mut out = HandlerVerdict {
            outcome: "",
            subject: None,
            reason: None,
            message: None,
            callout: None,
        };
        match v {
            Verdict::Success { subject } => {
                out.outcome = "success";
                out.subject = subject.map(str::to_string);
            }
            Verdict::NotResponsible => out.outcome = "not_responsible",
            Verdict::Failed(e) => {
                out.outcome = "failed";
                out.reason = Some(e.reason);
                out.message = Some(e.message.clone());
            }
            Verdict::WaitingForKeys => out.outcome = "waiting_for_keys",
            Verdict::WaitingForBody => out.outcome = "waiting_for_body",
            Verdict::Callout(c) => {
                out.outcome = "callout";
                out.callout = Some(c.endpoint.url.clone());
            }
        }
        out
    }
}

/// The whole account of one request, as the tester prints it (JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trace {
    pub request: TracedRequest,
    /// `None` when the request was refused before matching (unreadable host or path) or the
    /// filter is disabled.
    pub matching: Option<MatchTrace>,
    pub authenticators: Vec<HandlerTrace>,
    pub authorizer: Vec<HandlerTrace>,
    /// Mutators of the matched rule, in order, when the request got that far.
    pub mutators: Vec<String>,
    /// JWKS documents the host fetched for this evaluation.
    pub keys: Vec<KeysTrace>,
    /// Calls the host made for the handlers (introspection, remote authorizers).
    pub callouts: Vec<CalloutTrace>,
    pub decision: Decision,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TracedRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MatchTrace {
    Matched {
        rule: String,
        captures: Vec<String>,
    },
    NoMatch,
    /// More than one rule matches: the filter refuses with 500 and names them.
    Ambiguous {
        rules: Vec<String>,
    },
    Failed {
        rule: String,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandlerTrace {
    pub handler: String,
    #[serde(flatten)]
    pub verdict: HandlerVerdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeysTrace {
    pub url: String,
    /// Keys found in the document; `None` when the fetch or parse failed.
    pub keys: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CalloutTrace {
    pub method: String,
    pub url: String,
    /// The answer's status; `None` when the call failed (the filter's reset/timeout).
    pub status: Option<u16>,
}

/// What the filter does with the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// For a denial, the status the filter answers; 0 for an allow (the workload answers).
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Response headers of a denial (e.g. `WWW-Authenticate`, `Location`).
    pub response_headers: Vec<(String, String)>,
    /// Response body of a denial, exactly as sent.
    pub body: String,
    /// Request headers an allow sets (mutators, forwarded authorizer headers).
    pub set_headers: Vec<(String, String)>,
    /// Request headers an allow strips first (managed names the client sent).
    pub remove_headers: Vec<String>,
}
