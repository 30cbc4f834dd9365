//! The one place this crate calls into `portcullis-core`: validating a rule exactly as the filter
//! would, compiling a whole filter config, and compiling URL patterns for the overlap check.
//! Keeping it here means the rest of the crate works on plain JSON in the filter's format.

use portcullis_core::config::{Engine, FilterConfig};
use portcullis_core::matcher::{MatchingStrategy, UrlPattern};
use portcullis_core::rule::AccessRule;
use serde_json::Value;

/// A compiled URL pattern: does a URL (`scheme://host/path`) match it?
pub type CompiledPattern = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Validates one rule (filter JSON shape) against the global sections of `filter_config`
/// (its `rules` are ignored) with the core's `Engine::validate_rule`, exactly as the filter
/// compiles it. The error lists every problem, naming rule and field.
pub fn validate_rule(filter_config: &Value, rule: &Value) -> Result<(), String> {
    let mut global = filter_config.clone();
    global["rules"] = Value::Array(Vec::new());
    let cfg: FilterConfig =
        serde_json::from_value(global).map_err(|e| format!("global configuration: {e}"))?;
    let id = rule["id"].as_str().unwrap_or_default().to_string();
    let rule: AccessRule =
        serde_json::from_value(rule.clone()).map_err(|e| format!("rule {id:?}: {e}"))?;
    Engine::validate_rule(&cfg, &rule).map_err(|e| e.to_string())
}

/// Compiles a whole filter config as the filter will on load: a last check that the config a
/// workload receives is one its filter accepts.
pub fn compile_config(filter_config: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(filter_config).map_err(|e| e.to_string())?;
    Engine::from_json(&bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Compiles a URL pattern with the given matching strategy (`regexp` or `glob`).
pub fn compile_pattern(strategy: &str, pattern: &str) -> Result<CompiledPattern, String> {
    let strategy: MatchingStrategy = serde_json::from_value(Value::String(strategy.to_string()))
        .map_err(|e| format!("matching strategy {strategy:?}: {e}"))?;
    let compiled = UrlPattern::compile(pattern, strategy).map_err(|e| e.to_string())?;
    // A match that cannot be decided (backtracking limit) counts as no match: the overlap check
    // then reports nothing rather than a false witness.
    Ok(Box::new(move |url: &str| {
        compiled.is_match(url).unwrap_or(false)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn regexp_and_glob_patterns_compile_with_the_core_matcher() {
        let p = compile_pattern("regexp", "<http|https>://a.b/users/<(?!admin).*>").unwrap();
        assert!(p("https://a.b/users/bob"));
        assert!(!p("https://a.b/users/admin"));
        assert!(!p("https://aXb/users/bob"), "literal dot must be quoted");
        assert!(compile_pattern("regexp", "http://x/<(>").is_err());
        let g = compile_pattern("glob", "http://x/<**>").unwrap();
        assert!(g("http://x/a/b.c"));
        assert!(compile_pattern("Glob", "http://x/").is_err());
    }

    #[test]
    fn validation_reports_disabled_handlers_by_field() {
        let cfg = crate::global::GlobalConfig::default().filter_config(&[]);
        let good = json!({"id": "r", "match": {"url": "http://x/<.*>", "methods": ["GET"]},
            "authenticators": [{"handler": "noop"}], "authorizer": {"handler": "allow"}, "mutators": [{"handler": "noop"}]});
        assert_eq!(validate_rule(&cfg, &good), Ok(()));
        let mut bad = good.clone();
        bad["authorizer"]["handler"] = json!("keto_engine_acp_ory");
        let e = validate_rule(&cfg, &bad).unwrap_err();
        assert!(
            e.contains("authorizer.handler") && e.contains("keto_engine_acp_ory"),
            "{e}"
        );
        let mut cfg_with = cfg.clone();
        cfg_with["rules"] = json!([good]);
        assert_eq!(compile_config(&cfg_with), Ok(()));
    }
}
