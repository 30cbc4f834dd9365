//! One request's way through a rule: match -> authenticators -> authorizer -> mutators, as a
//! resumable state machine. The host drives it: whenever the evaluation needs something only the
//! host can do (keys not fetched yet, an introspection or authorizer call) it returns that need
//! as a [`Step`] and picks up where it stopped once the host hands the answer back.

use crate::authn::{Authenticator, AuthnStep, Caches};
use crate::authz::AuthzStep;
use crate::callout::{Callout, CalloutResponse};
use crate::config::Engine;
use crate::error_handler::{ErrorKind, PolicyError, Response, json_error};
use crate::host::Host;
use crate::matcher::Lookup;
use crate::mutator::MutateStep;
use crate::request::Request;
use crate::session::{Session, method_name};
use crate::trace::Observer;
use crate::url::{canonical_path, check_host, match_target, push_origin};
use std::sync::Arc;

/// The request may go on to the workload, with these header changes.
#[derive(Debug, PartialEq, Eq)]
pub struct Allow<'e> {
    pub rule_id: &'e str,
    /// Incoming headers to drop first, as the client spelled them: those any rule's mutators
    /// or authorizer set (see [`Engine::is_managed`]). Only names the request carries.
    pub remove_headers: Vec<String>,
    /// Headers to set (lower-case names).
    pub set_headers: Vec<(String, String)>,
}

/// The request is answered by the filter.
#[derive(Debug)]
pub struct Deny<'e> {
    pub rule_id: Option<&'e str>,
    /// Short machine-readable cause, for metrics and logs.
    pub reason: &'static str,
    /// Human-readable cause, for logs.
    pub message: String,
    pub response: Response,
}

#[derive(Debug)]
pub enum Step<'e> {
    Allow(Allow<'e>),
    Deny(Deny<'e>),
    /// Make this call and hand the answer to [`Evaluation::callout_done`].
    Callout(Callout),
    /// Keys for a JWKS URL are still being fetched: wait for them (at most `max_wait_ms`), then
    /// call [`Evaluation::advance`] again, or [`Evaluation::keys_timed_out`] first.
    WaitForKeys {
        max_wait_ms: u64,
    },
    /// The rule's authorizer reads the request body: hand it to [`Evaluation::body_received`]
    /// once the stream has ended, then call [`Evaluation::advance`] again. A body longer than
    /// `max_bytes` is refused by the host (see [`crate::authz::body_too_large`]).
    WaitForBody {
        max_bytes: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Match,
    Authenticate(usize),
    Authorize,
    /// The index of the next mutator to run.
    Mutate(usize),
    Finished,
}

/// The evaluation of one request. Owns the request so that it can be resumed later; holds no
/// reference to the engine, so a config reload mid-request is harmless (the host keeps the
/// engine the request started with).
///
/// `O` watches the evaluation's steps for the rule tester's trace; the filter's `()` observes
/// nothing and compiles to the same code as no observer at all.
#[derive(Debug)]
pub struct Evaluation<O: Observer = ()> {
    req: Request,
    rule: usize,
    stage: Stage,
    session: Session,
    keys_timed_out: bool,
    /// The answer to the last callout, consumed by the stage that asked for it.
    response: Option<Option<CalloutResponse>>,
    forward: Vec<(String, String)>,
    /// The request body, once read (only rules whose authorizer reads it wait for it).
    body: Option<Vec<u8>>,
    observer: O,
}

impl Evaluation {
    pub fn new(req: Request) -> Self {
        Self::observed(req, ())
    }
}

impl<O: Observer> Evaluation<O> {
    /// An evaluation that reports each step to `observer`.
    pub fn observed(req: Request, observer: O) -> Self {
        Self {
            req,
            rule: 0,
            stage: Stage::Match,
            session: Session::default(),
            keys_timed_out: false,
            response: None,
            forward: Vec::new(),
            body: None,
            observer,
        }
    }

    /// The whole request body. A request that ended with its headers has an empty one, and
    /// the host says so up front.
    pub fn body_received(&mut self, body: Vec<u8>) {
        self.body = Some(body);
    }

    /// The most body bytes the matched rule reads, while it still needs them; `None` when the
    /// rule does not read the body (or has it, or no rule matched yet).
    pub fn wants_body(&self, engine: &Engine) -> Option<usize> {
        match self.stage {
            Stage::Match | Stage::Finished => None,
            _ if self.body.is_some() => None,
            _ => engine.rules.get(self.rule)?.authorizer.body_limit(),
        }
    }

    pub fn observer(&self) -> &O {
        &self.observer
    }

    pub fn observer_mut(&mut self) -> &mut O {
        &mut self.observer
    }

    /// The rule that matched, once matching has happened.
    pub fn rule_id<'e>(&self, engine: &'e Engine) -> Option<&'e str> {
        match self.stage {
            Stage::Match => None,
            _ => engine.rules.get(self.rule).map(|r| r.id.as_str()),
        }
    }

    pub fn request(&self) -> &Request {
        &self.req
    }

    /// Hands back the answer to the last [`Step::Callout`]; `None` when the call failed
    /// (timeout, reset, unknown cluster).
    pub fn callout_done(&mut self, response: Option<CalloutResponse>) {
        self.response = Some(response);
    }

    /// The keys did not arrive within `jwks_max_wait`: authenticate with what is there.
    pub fn keys_timed_out(&mut self) {
        self.keys_timed_out = true;
    }

    /// Runs until a decision or a need of the host.
    pub fn advance<'e>(
        &mut self,
        engine: &'e Engine,
        host: &mut dyn Host,
        caches: &mut Caches,
    ) -> Step<'e> {
        loop {
            match self.stage {
                Stage::Match => {
                    if engine.disabled {
                        self.stage = Stage::Finished;
                        return Step::Allow(Allow {
                            rule_id: "",
                            remove_headers: Vec::new(),
                            set_headers: Vec::new(),
                        });
                    }
                    if let Err(deny) = self.match_rule(engine) {
                        self.stage = Stage::Finished;
                        return Step::Deny(deny);
                    }
                    self.stage = Stage::Authenticate(0);
                }
                Stage::Authenticate(i) => {
                    let rule = &engine.rules[self.rule];
                    let Some(authenticator) = rule.authenticators.get(i) else {
                        return self.deny(
                            engine,
                            PolicyError::new(
                                ErrorKind::Unauthorized,
                                "no_credentials",
                                "no authenticator was responsible for this request's credentials",
                            ),
                        );
                    };
                    let step = self.authenticate(authenticator, host, caches);
                    self.observer
                        .authenticator(i, crate::trace::authn_verdict(&step));
                    match step {
                        AuthnStep::Success { subject, extra } => {
                            self.session.subject = subject;
                            self.session.extra = extra;
                            self.stage = Stage::Authorize;
                        }
                        AuthnStep::NotResponsible => self.stage = Stage::Authenticate(i + 1),
                        AuthnStep::Fail(e) => return self.deny(engine, e),
                        AuthnStep::WaitForKeys => {
                            let max_wait_ms = match authenticator {
                                Authenticator::Jwt(j) => j.max_wait_ms,
                                _ => 0,
                            };
                            return Step::WaitForKeys { max_wait_ms };
                        }
                        AuthnStep::Callout(c) => return Step::Callout(c),
                    }
                }
                Stage::Authorize => {
                    let authorizer = &engine.rules[self.rule].authorizer;
                    let step = match self.response.take() {
                        Some(response) => authorizer.digest(response.as_ref()),
                        None => {
                            authorizer.authorize(&self.req, &self.session, self.body.as_deref())
                        }
                    };
                    self.observer.authorizer(crate::trace::authz_verdict(&step));
                    match step {
                        AuthzStep::Allow { forward } => {
                            self.forward = forward;
                            self.stage = Stage::Mutate(0);
                        }
                        AuthzStep::Deny(e) => return self.deny(engine, e),
                        AuthzStep::Callout(c) => return Step::Callout(c),
                        AuthzStep::NeedBody => {
                            return Step::WaitForBody {
                                max_bytes: authorizer.body_limit().unwrap_or(0),
                            };
                        }
                    }
                }
                Stage::Mutate(first) => {
                    let rule = &engine.rules[self.rule];
                    for (i, m) in rule.mutators.iter().enumerate().skip(first) {
                        let timed_out = self.keys_timed_out;
                        // Only the mutator that called out is run again with an answer.
                        let response = if i == first {
                            self.response.take()
                        } else {
                            None
                        };
                        let step = m.mutate(
                            &self.req,
                            &mut self.session,
                            host,
                            caches,
                            timed_out,
                            response,
                        );
                        match step {
                            MutateStep::Done => {}
                            MutateStep::WaitForKeys => {
                                self.stage = Stage::Mutate(i);
                                return Step::WaitForKeys {
                                    max_wait_ms: m.max_wait_ms(),
                                };
                            }
                            MutateStep::Callout(c) => {
                                self.stage = Stage::Mutate(i);
                                return Step::Callout(c);
                            }
                            MutateStep::Fail(e) => return self.deny(engine, e),
                        }
                    }
                    self.stage = Stage::Finished;
                    let mut set_headers = std::mem::take(&mut self.session.header);
                    set_headers.append(&mut self.forward);
                    // Allocates only when the client sent a managed header.
                    let mut remove_headers: Vec<String> = Vec::new();
                    for (name, _) in self.req.headers() {
                        if engine.is_managed(name) && !remove_headers.iter().any(|n| n == name) {
                            remove_headers.push(name.to_string());
                        }
                    }
                    return Step::Allow(Allow {
                        rule_id: &rule.id,
                        remove_headers,
                        set_headers,
                    });
                }
                Stage::Finished => {
                    return Step::Deny(Deny {
                        rule_id: None,
                        reason: "evaluation_finished",
                        message: "evaluation resumed after it finished".to_string(),
                        response: engine.errors.respond_without_rule(
                            &PolicyError::new(
                                ErrorKind::InternalServerError,
                                "evaluation_finished",
                                "evaluation resumed after it finished",
                            ),
                            &self.req,
                            &self.full_url(),
                        ),
                    });
                }
            }
        }
    }

    fn authenticate(
        &mut self,
        authenticator: &Authenticator,
        host: &mut dyn Host,
        caches: &mut Caches,
    ) -> AuthnStep {
        match authenticator {
            Authenticator::Noop => AuthnStep::Success {
                subject: crate::session::empty_subject(),
                extra: crate::session::empty_extra(),
            },
            Authenticator::Anonymous { subject } => {
                if self.req.header("authorization").is_some() {
                    AuthnStep::NotResponsible
                } else {
                    AuthnStep::Success {
                        subject: Arc::from(subject.as_str()),
                        extra: crate::session::empty_extra(),
                    }
                }
            }
            Authenticator::Unauthorized => AuthnStep::Fail(PolicyError::new(
                ErrorKind::Unauthorized,
                "authenticator_unauthorized",
                "access is always denied by the unauthorized authenticator",
            )),
            Authenticator::Jwt(j) => j.authenticate(&self.req, host, caches, self.keys_timed_out),
            Authenticator::Introspection(a) => match self.response.take() {
                Some(response) => a.digest(&self.req, host, caches, response.as_ref()),
                None => a.authenticate(&self.req, host, caches),
            },
            Authenticator::ClientCredentials(a) => match self.response.take() {
                Some(response) => a.digest(&self.req, host, response.as_ref()),
                None => a.authenticate(&self.req, host, caches),
            },
            Authenticator::SessionCheck(a) => match self.response.take() {
                Some(response) => a.digest(&self.req, host, caches, response.as_ref()),
                None => a.authenticate(&self.req, host, caches),
            },
        }
    }

    /// Scheme and host rules are matched against: the connection's scheme and `:authority`, or,
    /// when forwarded headers are trusted, what the trusted proxy in front appended last (every
    /// element before it was written by whoever sent the request to that proxy).
    fn scheme_and_host(&self, engine: &Engine) -> Result<(&'static str, &str), PolicyError> {
        let mut scheme = self.req.scheme();
        let mut host = self.req.authority();
        if engine.trust_forwarded_headers {
            if let Some(p) = self.last_forwarded("x-forwarded-proto") {
                scheme = if p.eq_ignore_ascii_case("https") {
                    "https"
                } else if p.eq_ignore_ascii_case("http") {
                    "http"
                } else {
                    return Err(PolicyError::new(
                        ErrorKind::BadRequest,
                        "invalid_forwarded_proto",
                        "X-Forwarded-Proto must be http or https",
                    ));
                };
            }
            if let Some(h) = self.last_forwarded("x-forwarded-host") {
                host = h;
            }
        }
        check_host(host)
            .map_err(|e| PolicyError::new(ErrorKind::BadRequest, "invalid_host", e.to_string()))?;
        Ok((scheme, host))
    }

    /// The last comma-separated element of the last `name` header, trimmed.
    fn last_forwarded(&self, name: &str) -> Option<&str> {
        let value = self
            .req
            .headers()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .last()?
            .1;
        value.rsplit(',').next().map(str::trim)
    }

    fn full_url(&self) -> String {
        format!(
            "{}://{}{}",
            self.req.scheme(),
            self.req.authority(),
            self.req.path()
        )
    }

    /// Refuses, before any rule runs, a request whose path or host could be read two ways: a
    /// clear 400 in the filter's JSON error format, whatever the error handlers say (they are
    /// for decisions of rules; this request never got to one).
    fn refuse<'e>(&self, error: PolicyError) -> Deny<'e> {
        Deny {
            rule_id: None,
            reason: error.reason,
            response: json_error(&error),
            message: error.message,
        }
    }

    fn match_rule<'e>(&mut self, engine: &'e Engine) -> Result<(), Deny<'e>> {
        let (scheme, host) = self.scheme_and_host(engine).map_err(|e| self.refuse(e))?;
        let raw_path = self.req.path_only();
        let path = canonical_path(raw_path).map_err(|e| {
            self.refuse(PolicyError::new(
                ErrorKind::BadRequest,
                "invalid_path",
                e.to_string(),
            ))
        })?;
        let target = match_target(scheme, host, &path);
        // The URL templates and error handlers see keeps the query and the percent-escapes;
        // without either it is the match target itself, and costs no second string.
        let query = self.req.query();
        let full_url = if query.is_none() && !raw_path.contains('%') {
            None
        } else {
            let mut u = String::with_capacity(
                scheme.len() + 3 + host.len() + raw_path.len() + query.map_or(0, |q| q.len() + 1),
            );
            push_origin(&mut u, scheme, host);
            u.push_str(raw_path);
            if let Some(q) = query {
                u.push('?');
                u.push_str(q);
            }
            Some(u)
        };
        let lookup = engine.index.find(self.req.method(), &target);
        self.observer.matched(&lookup);
        let error = match lookup {
            Lookup::Matched { rule, captures } => {
                self.rule = rule;
                let ctx = &mut self.session.match_context;
                ctx.regexp_capture_groups = captures;
                ctx.url = full_url.unwrap_or(target);
                ctx.method = method_name(self.req.method());
                if engine.rules[rule].needs_request_headers {
                    ctx.header = self
                        .req
                        .headers()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                }
                return Ok(());
            }
            Lookup::NoMatch => PolicyError::new(
                ErrorKind::NotFound,
                "no_rule",
                format!("requested url {target} does not match any rules"),
            ),
            Lookup::Ambiguous(ids) => {
                let names: Vec<&str> = ids
                    .iter()
                    .filter_map(|i| engine.rules.get(*i).map(|r| r.id.as_str()))
                    .collect();
                PolicyError::new(
                    ErrorKind::InternalServerError,
                    "ambiguous_rules",
                    format!(
                        "requested url {target} matches more than one rule: {}",
                        names.join(", ")
                    ),
                )
            }
            Lookup::Failed { rule, error } => PolicyError::new(
                ErrorKind::InternalServerError,
                "match_failed",
                format!(
                    "matching rule {:?} against {target} failed: {error}",
                    engine.rules.get(rule).map_or("", |r| r.id.as_str())
                ),
            ),
        };
        Err(Deny {
            rule_id: None,
            reason: error.reason,
            message: error.message.clone(),
            response: engine.errors.respond_without_rule(
                &error,
                &self.req,
                full_url.as_deref().unwrap_or(&target),
            ),
        })
    }

    fn deny<'e>(&mut self, engine: &'e Engine, error: PolicyError) -> Step<'e> {
        self.stage = Stage::Finished;
        let rule = &engine.rules[self.rule];
        let response = rule
            .errors
            .respond(&error, &self.req, &self.session.match_context.url);
        Step::Deny(Deny {
            rule_id: Some(&rule.id),
            reason: error.reason,
            message: error.message,
            response,
        })
    }
}

#[cfg(test)]
mod tests;
