//! Scope strategies: does a granted scope satisfy a required one?
//!
//! The same four strategies as ORY's (fosite's) `exact`, `hierarchic`, `wildcard` and `none`, so
//! the token service that grants scopes and the filter that checks them agree on every string.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeStrategy {
    #[default]
    None,
    Exact,
    Hierarchic,
    Wildcard,
}

impl ScopeStrategy {
    /// Parses a strategy name as written in ORY's configuration (case-insensitive; empty = none).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "" | "none" => Some(Self::None),
            "exact" => Some(Self::Exact),
            "hierarchic" => Some(Self::Hierarchic),
            "wildcard" => Some(Self::Wildcard),
            _ => None,
        }
    }

    /// True when one of `granted` satisfies `required`. `None` performs no local check and
    /// always answers true: callers that must not skip the check (the JWT authenticator) treat
    /// a `None` strategy with required scopes as a configuration error instead.
    pub fn satisfied<S: AsRef<str>>(self, granted: &[S], required: &str) -> bool {
        match self {
            Self::None => true,
            Self::Exact => granted.iter().any(|g| g.as_ref() == required),
            Self::Hierarchic => granted.iter().any(|g| hierarchic(g.as_ref(), required)),
            Self::Wildcard => granted.iter().any(|g| wildcard(g.as_ref(), required)),
        }
    }

    /// True when every required scope is satisfied.
    pub fn all_satisfied<S: AsRef<str>, R: AsRef<str>>(
        self,
        granted: &[S],
        required: &[R],
    ) -> bool {
        required.iter().all(|r| self.satisfied(granted, r.as_ref()))
    }
}

/// `foo` satisfies `foo` and `foo.bar`, but `foo.bar` does not satisfy `foo`.
fn hierarchic(granted: &str, required: &str) -> bool {
    if granted == required {
        return true;
    }
    let mut g = granted.split('.');
    let mut r = required.split('.');
    loop {
        match (g.next(), r.next()) {
            (None, _) => return true,
            (Some(_), None) => return false,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Segment-wise match where `*` stands for one non-empty segment, and a trailing `*` for one or
/// more segments (fosite's WildcardScopeStrategy).
fn wildcard(granted: &str, required: &str) -> bool {
    if granted == required {
        return true;
    }
    let g: Vec<&str> = granted.split('.').collect();
    let r: Vec<&str> = required.split('.').collect();
    for (i, want) in r.iter().enumerate() {
        let Some(have) = g.get(i) else {
            return false;
        };
        if *have == "*" && !want.is_empty() {
            if i == g.len() - 1 {
                return true;
            }
            continue;
        }
        if have != want {
            return false;
        }
    }
    g.len() == r.len()
}

#[cfg(test)]
mod tests {
    use super::ScopeStrategy::*;

    #[test]
    fn exact_needs_equality() {
        assert!(Exact.satisfied(&["read", "write"], "write"));
        assert!(!Exact.satisfied(&["read"], "read.all"));
    }

    #[test]
    fn hierarchic_parent_grants_children() {
        assert!(Hierarchic.satisfied(&["foo"], "foo.bar"));
        assert!(Hierarchic.satisfied(&["foo.bar"], "foo.bar"));
        assert!(!Hierarchic.satisfied(&["foo.bar"], "foo"));
        assert!(!Hierarchic.satisfied(&["foo"], "foobar"));
        assert!(!Hierarchic.satisfied(&["foo.baz"], "foo.bar.baz"));
    }

    #[test]
    fn wildcard_segments() {
        assert!(Wildcard.satisfied(&["foo.*"], "foo.bar"));
        assert!(Wildcard.satisfied(&["foo.*"], "foo.bar.baz"));
        assert!(!Wildcard.satisfied(&["foo.*"], "foo"));
        assert!(Wildcard.satisfied(&["foo.*.baz"], "foo.bar.baz"));
        assert!(!Wildcard.satisfied(&["foo.*.baz"], "foo.bar.qux"));
        assert!(!Wildcard.satisfied(&["foo.*.baz"], "foo.bar"));
        assert!(Wildcard.satisfied(&["read"], "read"));
        assert!(!Wildcard.satisfied(&["read"], "read.all"));
        assert!(!Wildcard.satisfied(&["foo.*"], "foo."));
    }

    #[test]
    fn none_checks_nothing() {
        let empty: [&str; 0] = [];
        assert!(None.satisfied(&empty, "anything"));
    }

    #[test]
    fn all_required_must_hold() {
        assert!(Exact.all_satisfied(&["a", "b"], &["a", "b"]));
        assert!(!Exact.all_satisfied(&["a"], &["a", "b"]));
    }
}
