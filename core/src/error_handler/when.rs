//! `when` conditions of error handlers: error kind, `Accept`/`Content-Type` and remote IP.

use std::net::IpAddr;

use serde_json::Value;

use super::{Cidr, ErrorKind, PolicyError};
use crate::request::Request;

/// One `when` entry; all its parts must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Condition {
    errors: Option<Vec<ErrorKind>>,
    accept: Vec<MediaType>,
    content_type: Vec<MediaType>,
    cidrs: Vec<Cidr>,
    respect_forwarded_for: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MediaType {
    main: String,
    sub: String,
}

impl MediaType {
    /// `type/subtype` with parameters dropped, lower-cased.
    fn parse(s: &str) -> Option<MediaType> {
        let essence = s.split(';').next()?.trim().to_ascii_lowercase();
        let (main, sub) = essence.split_once('/')?;
        let (main, sub) = (main.trim(), sub.trim());
        if main.is_empty() || sub.is_empty() || sub.contains('/') {
            return None;
        }
        Some(MediaType {
            main: main.to_owned(),
            sub: sub.to_owned(),
        })
    }
}

impl Condition {
    pub fn matches(&self, error: &PolicyError, req: &Request) -> bool {
        if self
            .errors
            .as_ref()
            .is_some_and(|kinds| !kinds.contains(&error.kind))
        {
            return false;
        }
        if !self.accept.is_empty() && !accepts_any(req.header("accept"), &self.accept) {
            return false;
        }
        if !self.content_type.is_empty() {
            // Same matcher as `accept`, over the request's media type(s) without parameters.
            if !accepts_any(req.header("content-type"), &self.content_type) {
                return false;
            }
        }
        if !self.cidrs.is_empty() && !self.ip_matches(req) {
            return false;
        }
        true
    }

    fn ip_matches(&self, req: &Request) -> bool {
        let in_range = |s: &str| {
            s.trim()
                .parse::<IpAddr>()
                .is_ok_and(|ip| self.cidrs.iter().any(|c| c.contains(ip)))
        };
        if req.remote_ip.as_deref().is_some_and(in_range) {
            return true;
        }
        self.respect_forwarded_for
            && req
                .headers()
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
                .flat_map(|(_, v)| v.split(','))
                .any(in_range)
    }
}

/// Oathkeeper's `matchesAcceptMIME`: some media type of the request's header (q values ignored,
/// as Oathkeeper ignores them) equals a listed type, or a listed `*/*` / `type/*` covers it. A
/// wildcard in the request only matches the same wildcard listed: `Accept: */*` does not select a
/// handler listing `text/html`. A missing header counts as `application/octet-stream`.
fn accepts_any(header: Option<&str>, listed: &[MediaType]) -> bool {
    let header = header
        .filter(|h| !h.trim().is_empty())
        .unwrap_or("application/octet-stream");
    header.split(',').filter_map(MediaType::parse).any(|a| {
        listed.iter().any(|m| {
            let any_of_main = m.sub == "*" && (m.main == "*" || m.main == a.main);
            any_of_main || (m.main == a.main && m.sub == a.sub)
        })
    })
}

type FieldError = (String, String);

fn err(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    (field.into(), problem.into())
}

fn string_list(v: &Value, field: &str) -> Result<Vec<String>, FieldError> {
    let Value::Array(items) = v else {
        return Err(err(field, "must be a list of strings"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .map(str::to_owned)
                .ok_or_else(|| err(format!("{field}[{i}]"), "must be a string"))
        })
        .collect()
}

fn media_list(v: &Value, field: &str) -> Result<Vec<MediaType>, FieldError> {
    string_list(v, field)?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            MediaType::parse(s).ok_or_else(|| {
                err(
                    format!("{field}[{i}]"),
                    format!("\"{s}\" is not a media type"),
                )
            })
        })
        .collect()
}

fn object<'a>(
    v: &'a Value,
    field: &str,
    allowed: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, FieldError> {
    let Value::Object(m) = v else {
        return Err(err(field, "must be an object"));
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(err(format!("{field}.{k}"), "unknown field"));
    }
    Ok(m)
}

/// Compiles a `when` list; errors carry the field path (e.g. `when[0].error[1]`).
pub(super) fn compile(v: &Value) -> Result<Vec<Condition>, FieldError> {
    let Value::Array(items) = v else {
        return Err(err("when", "must be a list of conditions"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| compile_condition(item, &format!("when[{i}]")))
        .collect()
}

fn compile_condition(v: &Value, field: &str) -> Result<Condition, FieldError> {
    let m = object(v, field, &["error", "request"])?;
    let mut cond = Condition::default();
    if let Some(errors) = m.get("error").filter(|v| !v.is_null()) {
        let f = format!("{field}.error");
        let names = string_list(errors, &f)?;
        let kinds = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                ErrorKind::from_when_name(n)
                    .ok_or_else(|| err(format!("{f}[{i}]"), format!("unknown error name \"{n}\"")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // An empty list restricts nothing, as in Oathkeeper.
        if !kinds.is_empty() {
            cond.errors = Some(kinds);
        }
    }
    if let Some(request) = m.get("request").filter(|v| !v.is_null()) {
        let f = format!("{field}.request");
        let r = object(request, &f, &["header", "remote_ip"])?;
        if let Some(header) = r.get("header").filter(|v| !v.is_null()) {
            let f = format!("{f}.header");
            let h = object(header, &f, &["accept", "content_type"])?;
            if let Some(a) = h.get("accept").filter(|v| !v.is_null()) {
                cond.accept = media_list(a, &format!("{f}.accept"))?;
            }
            if let Some(c) = h.get("content_type").filter(|v| !v.is_null()) {
                cond.content_type = media_list(c, &format!("{f}.content_type"))?;
            }
        }
        if let Some(ip) = r.get("remote_ip").filter(|v| !v.is_null()) {
            let f = format!("{f}.remote_ip");
            let ipm = object(ip, &f, &["match", "respect_forwarded_for_header"])?;
            if let Some(list) = ipm.get("match").filter(|v| !v.is_null()) {
                let fm = format!("{f}.match");
                cond.cidrs = string_list(list, &fm)?
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        Cidr::parse(s).ok_or_else(|| {
                            err(format!("{fm}[{i}]"), format!("\"{s}\" is not a CIDR"))
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            match ipm.get("respect_forwarded_for_header") {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) => cond.respect_forwarded_for = *b,
                Some(_) => {
                    return Err(err(
                        format!("{f}.respect_forwarded_for_header"),
                        "must be a boolean",
                    ));
                }
            }
        }
    }
    Ok(cond)
}
