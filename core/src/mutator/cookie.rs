//! Oathkeeper's `cookie` mutator: templated cookies merged into the request's `Cookie` header.
//! A configured cookie replaces every cookie of the same name the client sent; the client's
//! other cookies are kept, in their order, followed by the configured ones in config order
//! (Oathkeeper emits them in Go's random map order).
//!
//! A rendered value comes from the session (claims, headers, the URL), so a client can shape it:
//! bytes that are not allowed in a cookie value (RFC 6265 `cookie-octet`: no `;`, `,`, space,
//! quote, backslash or control) are dropped, so a value cannot end its cookie and start another.

use super::valid_header_name;
use crate::config::ConfigError;
use crate::request::Request;
use crate::session::Session;
use crate::template::Template;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CookieConfig {
    cookies: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct CookieMutator {
    cookies: Vec<(String, Template)>,
}

fn cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

impl CookieMutator {
    pub(crate) fn compile(rule: &str, field: &str, c: CookieConfig) -> Result<Self, ConfigError> {
        if c.cookies.is_empty() {
            return Err(ConfigError::rule(
                rule,
                format!("{field}.config.cookies"),
                "must name at least one cookie",
            ));
        }
        let mut cookies = Vec::with_capacity(c.cookies.len());
        for (name, value) in c.cookies {
            let f = format!("{field}.config.cookies.{name}");
            // A cookie name is an HTTP token, like a header name.
            if !valid_header_name(&name) {
                return Err(ConfigError::rule(rule, f, "is not a valid cookie name"));
            }
            let t = Template::compile(&value).map_err(|e| ConfigError::rule(rule, &f, e))?;
            cookies.push((name, t));
        }
        Ok(Self { cookies })
    }

    pub(crate) fn reads_captures(&self) -> bool {
        self.cookies.iter().any(|(_, t)| t.reads_captures())
    }

    pub(crate) fn reads_request_headers(&self) -> bool {
        self.cookies.iter().any(|(_, t)| t.reads_request_headers())
    }

    pub(crate) fn mutate(&self, req: &Request, session: &mut Session) {
        let configured = |name: &str| self.cookies.iter().any(|(n, _)| n == name);
        let mut out = String::with_capacity(64);
        // A `Cookie` an earlier mutator set is what this one builds on; else the client's.
        let earlier = session
            .header
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v.clone());
        let mut keep = |pair: &str| {
            let pair = pair.trim();
            let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
            if !pair.is_empty() && !configured(name) {
                if !out.is_empty() {
                    out.push_str("; ");
                }
                out.push_str(pair);
            }
        };
        match &earlier {
            Some(v) => v.split(';').for_each(&mut keep),
            None => req
                .headers()
                .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                .flat_map(|(_, v)| v.split(';'))
                .for_each(&mut keep),
        }
        let mut value = String::new();
        for (name, t) in &self.cookies {
            value.clear();
            t.render(session, &mut value);
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(name);
            out.push('=');
            out.extend(value.bytes().filter(|b| cookie_octet(*b)).map(char::from));
        }
        session
            .header
            .retain(|(k, _)| !k.eq_ignore_ascii_case("cookie"));
        session.header.push(("cookie".to_string(), out));
    }
}
