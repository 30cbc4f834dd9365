//! The authentication session that flows through a rule's pipeline: who the subject is, what the
//! authenticators learned (`extra`), the headers mutators set, and what the rule matched. Plain
//! data: templates and the `remote_json` authorizer read it.

use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

/// Oathkeeper's `AuthenticationSession`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    /// Shared with the verified-token cache, like `extra`.
    pub subject: Arc<str>,
    /// Shared with the verified-token cache: a cache hit costs no copy of the claims.
    pub extra: Arc<Map<String, Value>>,
    /// Headers set by mutators, in the order they were set.
    pub header: Vec<(String, String)>,
    pub match_context: MatchContext,
}

impl Default for Session {
    /// Shares one empty subject and one empty `extra`: a session is made for every request, and
    /// most get both replaced by a cached token's.
    fn default() -> Self {
        Self {
            subject: empty_subject(),
            extra: empty_extra(),
            header: Vec::new(),
            match_context: MatchContext::default(),
        }
    }
}

static EMPTY_SUBJECT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
static EMPTY_EXTRA: LazyLock<Arc<Map<String, Value>>> = LazyLock::new(|| Arc::new(Map::new()));

/// The empty subject, shared (no allocation).
pub fn empty_subject() -> Arc<str> {
    Arc::clone(&EMPTY_SUBJECT)
}

/// An empty `extra`, shared (no allocation).
pub fn empty_extra() -> Arc<Map<String, Value>> {
    Arc::clone(&EMPTY_EXTRA)
}

/// What the request looked like and what the matched rule captured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MatchContext {
    pub regexp_capture_groups: Vec<String>,
    /// The full request URL, query included.
    pub url: String,
    /// Borrowed for the common methods: one allocation less per request.
    pub method: Cow<'static, str>,
    /// Request headers.
    pub header: Vec<(String, String)>,
}

/// `method` as a [`MatchContext::method`].
pub fn method_name(method: &str) -> Cow<'static, str> {
    const COMMON: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    match COMMON.iter().find(|m| **m == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.to_string()),
    }
}

/// First value of `name` in `headers`, compared case-insensitively (Go's `http.Header.Get`).
pub fn header_get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_get_is_case_insensitive_and_first_wins() {
        let h = vec![
            ("X-A".to_string(), "1".to_string()),
            ("x-a".to_string(), "2".to_string()),
        ];
        assert_eq!(header_get(&h, "x-A"), Some("1"));
        assert_eq!(header_get(&h, "x-b"), None);
    }

    #[test]
    fn serializes_as_plain_data() {
        let s = Session {
            subject: "alice".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["subject"], "alice");
        assert_eq!(v["match_context"]["url"], "");
    }
}
