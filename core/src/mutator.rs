//! Mutators: what the upstream learns about the caller. Oathkeeper's `noop`, `header`,
//! `cookie`, `id_token` and `hydrator`.

mod cookie;
mod id_token;

pub use cookie::CookieMutator;
pub use id_token::{CachedIdToken, IdTokenMutator};

use crate::authn::Caches;
use crate::callout::{Callout, CalloutResponse};
use crate::config::{
    ConfigError, EmptyConfig, Globals, HandlerKind, JwksSource, parse_handler_config,
};
use crate::error_handler::PolicyError;
use crate::host::Host;
use crate::request::Request;
use crate::rule::Handler;
use crate::session::Session;
use crate::template::Template;
use serde::Deserialize;
use std::collections::BTreeMap;

mod hydrator;
pub use hydrator::{HydratedSession, Hydrator};

#[derive(Debug)]
pub enum Mutator {
    Noop,
    /// Header name (as configured) and the template of its value.
    Header(Vec<(String, Template)>),
    Cookie(CookieMutator),
    IdToken(Box<IdTokenMutator>),
    /// Calls out (see [`Hydrator`]).
    Hydrator(Box<Hydrator>),
}

/// Where a mutator left the request. The mutate stage is resumable: on anything but `Done`
/// or `Fail` the pipeline stops at this mutator and runs it again once the host has what it
/// asked for (the keys, or the callout's answer, handed to it as `response`).
#[derive(Debug)]
pub(crate) enum MutateStep {
    Done,
    /// The key set it signs with is still being fetched.
    WaitForKeys,
    /// Make this call; the mutator is run again with the answer.
    Callout(Callout),
    Fail(PolicyError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderConfig {
    headers: BTreeMap<String, String>,
}

/// An RFC 9110 token: what a header name may be (shared by every handler that sets headers).
pub(crate) fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Mutator {
    pub(crate) fn compile(
        globals: &Globals<'_>,
        rule: &str,
        field: &str,
        handler: &Handler,
        jwks: &mut Vec<JwksSource>,
    ) -> Result<Self, ConfigError> {
        let config = globals.handler_config(HandlerKind::Mutator, rule, field, handler)?;
        match handler.handler.as_str() {
            "noop" => {
                parse_handler_config::<EmptyConfig>(rule, field, config)?;
                Ok(Self::Noop)
            }
            "header" => {
                let c: HeaderConfig = parse_handler_config(rule, field, config)?;
                let mut headers = Vec::with_capacity(c.headers.len());
                for (name, value) in c.headers {
                    let f = format!("{field}.config.headers.{name}");
                    if !valid_header_name(&name) || name.starts_with(':') {
                        return Err(ConfigError::rule(
                            rule,
                            f,
                            "is not a valid HTTP header name",
                        ));
                    }
                    let t =
                        Template::compile(&value).map_err(|e| ConfigError::rule(rule, &f, e))?;
                    // Lower-cased once here rather than on every request.
                    headers.push((name.to_ascii_lowercase(), t));
                }
                Ok(Self::Header(headers))
            }
            "cookie" => {
                let c = parse_handler_config(rule, field, config)?;
                Ok(Self::Cookie(CookieMutator::compile(rule, field, c)?))
            }
            "id_token" => Ok(Self::IdToken(Box::new(IdTokenMutator::compile(
                globals, rule, field, config, jwks,
            )?))),
            "hydrator" => {
                Hydrator::compile(globals, rule, field, config).map(|h| Self::Hydrator(Box::new(h)))
            }
            other => Err(ConfigError::rule(
                rule,
                format!("{field}.handler"),
                format!(
                    "unknown or unsupported mutator {other:?} (supported: noop, header, cookie, id_token, hydrator)"
                ),
            )),
        }
    }

    /// Headers stripped from every allowed request. `cookie` and `id_token` are not listed:
    /// they replace `Cookie` and `Authorization` on their own rules, and stripping those from
    /// every other rule would break them.
    pub(crate) fn header_names(&self) -> impl Iterator<Item = &str> {
        let headers: &[(String, Template)] = match self {
            Self::Header(h) => h,
            Self::Noop | Self::Cookie(_) | Self::IdToken(_) | Self::Hydrator(_) => &[],
        };
        headers.iter().map(|(n, _)| n.as_str())
    }

    pub(crate) fn reads_captures(&self) -> bool {
        match self {
            Self::Header(h) => h.iter().any(|(_, t)| t.reads_captures()),
            Self::Cookie(c) => c.reads_captures(),
            Self::IdToken(i) => i.reads_captures(),
            // The session it sends carries the capture groups.
            Self::Hydrator(_) => true,
            Self::Noop => false,
        }
    }

    pub(crate) fn reads_request_headers(&self) -> bool {
        match self {
            Self::Header(h) => h.iter().any(|(_, t)| t.reads_request_headers()),
            Self::Cookie(c) => c.reads_request_headers(),
            Self::IdToken(i) => i.reads_request_headers(),
            // The session it sends carries the request's headers.
            Self::Hydrator(_) => true,
            Self::Noop => false,
        }
    }

    /// How long a request may wait for what [`MutateStep::WaitForKeys`] waits for.
    pub(crate) fn max_wait_ms(&self) -> u64 {
        match self {
            Self::IdToken(i) => i.max_wait_ms(),
            _ => 0,
        }
    }

    /// Renders this mutator's headers into the session (later mutators see earlier ones).
    /// `response` is the answer to this mutator's own [`MutateStep::Callout`] when it is run
    /// again after one (`Some(None)`: the call failed).
    pub(crate) fn mutate(
        &self,
        req: &Request,
        session: &mut Session,
        host: &mut dyn Host,
        caches: &mut Caches,
        keys_timed_out: bool,
        response: Option<Option<CalloutResponse>>,
    ) -> MutateStep {
        match self {
            Self::Cookie(c) => c.mutate(req, session),
            Self::IdToken(i) => return i.mutate(session, host, caches, keys_timed_out),
            Self::Hydrator(h) => {
                return match response {
                    Some(r) => h.digest(session, host, caches, r.as_ref()),
                    None => h.hydrate(session, host, caches),
                };
            }
            Self::Header(_) | Self::Noop => {}
        }
        if let Self::Header(headers) = self {
            for (name, t) in headers {
                let mut value = String::with_capacity(64);
                t.render(session, &mut value);
                // Header values cannot carry line breaks; a claim containing one must not
                // split the header.
                if value.contains(['\r', '\n']) {
                    value = value.replace(['\r', '\n'], " ");
                }
                session
                    .header
                    .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
                session.header.push((name.clone(), value));
            }
        }
        MutateStep::Done
    }
}
