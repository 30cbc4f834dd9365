//! Mutators: what the upstream learns about the caller. Oathkeeper's `noop` and `header`.

use crate::config::{ConfigError, EmptyConfig, Globals, HandlerKind, parse_handler_config};
use crate::rule::Handler;
use crate::session::Session;
use crate::template::Template;
use serde::Deserialize;
use std::collections::BTreeMap;

mod hydrator;
pub(crate) use hydrator::HydrateStep;
pub use hydrator::{HydratedSession, Hydrator};

#[derive(Debug)]
pub enum Mutator {
    Noop,
    /// Header name (as configured) and the template of its value.
    Header(Vec<(String, Template)>),
    /// Calls out: the pipeline drives it (see [`Hydrator`]).
    Hydrator(Box<Hydrator>),
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
            "hydrator" => {
                Hydrator::compile(globals, rule, field, config).map(|h| Self::Hydrator(Box::new(h)))
            }
            other => Err(ConfigError::rule(
                rule,
                format!("{field}.handler"),
                format!(
                    "unknown or unsupported mutator {other:?} (supported: noop, header, hydrator)"
                ),
            )),
        }
    }

    pub(crate) fn header_names(&self) -> impl Iterator<Item = &str> {
        let headers: &[(String, Template)] = match self {
            Self::Header(h) => h,
            Self::Noop | Self::Hydrator(_) => &[],
        };
        headers.iter().map(|(n, _)| n.as_str())
    }

    pub(crate) fn reads_captures(&self) -> bool {
        match self {
            Self::Header(h) => h.iter().any(|(_, t)| t.reads_captures()),
            // The session it sends carries the capture groups.
            Self::Hydrator(_) => true,
            Self::Noop => false,
        }
    }

    pub(crate) fn reads_request_headers(&self) -> bool {
        match self {
            Self::Header(h) => h.iter().any(|(_, t)| t.reads_request_headers()),
            // The session it sends carries the request's headers.
            Self::Hydrator(_) => true,
            Self::Noop => false,
        }
    }

    /// Renders this mutator's headers into the session (later mutators see earlier ones).
    pub(crate) fn mutate(&self, session: &mut Session) {
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
    }
}
