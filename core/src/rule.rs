//! Serde model of an Oathkeeper access rule, in Oathkeeper's own JSON shape (snake_case keys),
//! plus the shape checks Oathkeeper's validator reports before a rule is used.
//!
//! Unknown fields are ignored and absent ones take their zero value, as Go's `encoding/json` does,
//! so any rule file Oathkeeper loads deserialises here too.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One access rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessRule {
    pub id: String,
    pub version: String,
    pub description: String,
    pub r#match: RuleMatch,
    /// Proxy-mode only; in a sidecar the upstream is the workload itself, so this is carried but
    /// never used to reroute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    pub authenticators: Vec<Handler>,
    pub authorizer: Handler,
    pub mutators: Vec<Handler>,
    pub errors: Vec<Handler>,
}

/// `match`: the URL pattern (with `<...>` sections) and the methods the rule applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuleMatch {
    pub url: String,
    pub methods: Vec<String>,
}

/// `upstream` of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Upstream {
    pub url: String,
    pub preserve_host: bool,
    pub strip_path: String,
}

/// A handler reference: its name and an optional rule-level config merged over the global one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Handler {
    pub handler: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// A rule whose shape Oathkeeper would refuse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    #[error("rule {id:?}: match.url must not be empty")]
    EmptyMatchUrl { id: String },
    #[error("rule {id:?}: authenticators must contain at least one handler")]
    NoAuthenticators { id: String },
    #[error("rule {id:?}: authenticators[{index}].handler must not be empty")]
    EmptyAuthenticator { id: String, index: usize },
    #[error("rule {id:?}: authorizer.handler must not be empty")]
    EmptyAuthorizer { id: String },
    #[error("rule {id:?}: mutators must contain at least one handler")]
    NoMutators { id: String },
    #[error("rule {id:?}: mutators[{index}].handler must not be empty")]
    EmptyMutator { id: String, index: usize },
}

impl AccessRule {
    /// Checks the shape Oathkeeper's rule validator checks (handler names and configs are checked
    /// later, against the handlers the configuration enables).
    pub fn validate(&self) -> Result<(), RuleError> {
        let id = || self.id.clone();
        if self.r#match.url.is_empty() {
            return Err(RuleError::EmptyMatchUrl { id: id() });
        }
        if self.authenticators.is_empty() {
            return Err(RuleError::NoAuthenticators { id: id() });
        }
        if let Some(index) = self
            .authenticators
            .iter()
            .position(|h| h.handler.is_empty())
        {
            return Err(RuleError::EmptyAuthenticator { id: id(), index });
        }
        if self.authorizer.handler.is_empty() {
            return Err(RuleError::EmptyAuthorizer { id: id() });
        }
        if self.mutators.is_empty() {
            return Err(RuleError::NoMutators { id: id() });
        }
        if let Some(index) = self.mutators.iter().position(|h| h.handler.is_empty()) {
            return Err(RuleError::EmptyMutator { id: id(), index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> AccessRule {
        serde_json::from_value(json!({
            "id": "foo",
            "version": "v0.40.0",
            "match": {"url": "https://api.example.com/users/<.*>", "methods": ["GET", "POST"]},
            "upstream": {"url": "http://users", "preserve_host": true, "strip_path": "/api"},
            "authenticators": [{"handler": "jwt", "config": {"jwks_urls": ["https://k/jwks"]}}],
            "authorizer": {"handler": "allow"},
            "mutators": [{"handler": "header", "config": {"headers": {"X-User": "{{ print .Subject }}"}}}],
            "errors": [{"handler": "json"}],
            "some_future_field": 42
        }))
        .unwrap()
    }

    #[test]
    fn parses_oathkeeper_json() {
        let r = sample();
        assert_eq!(r.id, "foo");
        assert_eq!(r.r#match.methods, vec!["GET", "POST"]);
        let up = r.upstream.as_ref().unwrap();
        assert!(up.preserve_host);
        assert_eq!(up.strip_path, "/api");
        assert_eq!(r.authenticators[0].handler, "jwt");
        assert_eq!(
            r.authenticators[0].config.as_ref().unwrap()["jwks_urls"][0],
            "https://k/jwks"
        );
        assert_eq!(r.authorizer.config, None);
        assert_eq!(r.errors[0].handler, "json");
        assert!(r.validate().is_ok());
    }

    #[test]
    fn missing_fields_take_zero_values() {
        let r: AccessRule = serde_json::from_value(json!({"id": "x"})).unwrap();
        assert_eq!(r.r#match.url, "");
        assert!(r.upstream.is_none());
        assert!(r.errors.is_empty());
    }

    #[test]
    fn round_trips_through_serialize() {
        let r = sample();
        let back: AccessRule = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["match"]["url"], "https://api.example.com/users/<.*>");
        assert_eq!(v["upstream"]["preserve_host"], true);
    }

    #[test]
    fn validate_reports_rule_and_field() {
        let mut r = sample();
        r.r#match.url.clear();
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "rule \"foo\": match.url must not be empty"
        );

        let mut r = sample();
        r.authenticators.clear();
        assert_eq!(
            r.validate(),
            Err(RuleError::NoAuthenticators { id: "foo".into() })
        );

        let mut r = sample();
        r.authorizer.handler.clear();
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "rule \"foo\": authorizer.handler must not be empty"
        );

        let mut r = sample();
        r.mutators.clear();
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "rule \"foo\": mutators must contain at least one handler"
        );

        let mut r = sample();
        r.mutators.push(Handler::default());
        assert_eq!(
            r.validate(),
            Err(RuleError::EmptyMutator {
                id: "foo".into(),
                index: 1
            })
        );
    }
}
