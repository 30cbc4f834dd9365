//! The one place this crate calls into `portcullis-core`: validating a rule exactly as the filter
//! would, compiling a whole filter config, and compiling URL patterns for the overlap check.
//! Keeping it here means the rest of the crate works on plain JSON in the filter's format.

use serde_json::Value;

/// A compiled URL pattern: does a URL (`scheme://host/path`) match it?
pub type CompiledPattern = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Validates one rule (filter JSON shape) against the global sections of `filter_config`
/// (its `rules` are ignored). The error lists every problem, naming rule and field.
pub fn validate_rule(filter_config: &Value, rule: &Value) -> Result<(), String> {
    interim::validate_rule(filter_config, rule)
}

/// Compiles a whole filter config as the filter will on load: a last check that the config a
/// workload receives is one its filter accepts.
pub fn compile_config(filter_config: &Value) -> Result<(), String> {
    interim::compile_config(filter_config)
}

/// Compiles a URL pattern with the given matching strategy.
pub fn compile_pattern(strategy: &str, pattern: &str) -> Result<CompiledPattern, String> {
    interim::compile_pattern(strategy, pattern)
}

/// Until `portcullis_core::config` lands in this branch: the checks the core makes that this
/// crate can make without it (handler names enabled, methods, the URL pattern compiles).
mod interim {
    use super::CompiledPattern;
    use serde_json::Value;

    pub fn validate_rule(cfg: &Value, rule: &Value) -> Result<(), String> {
        let id = rule["id"].as_str().unwrap_or_default();
        let mut problems = Vec::new();
        let strategy = cfg["access_rules"]["matching_strategy"]
            .as_str()
            .unwrap_or("regexp");
        if let Err(e) = compile_pattern(strategy, rule["match"]["url"].as_str().unwrap_or_default())
        {
            problems.push(format!("rule {id:?}: match.url: {e}"));
        }
        for (i, m) in rule["match"]["methods"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let ok = m.as_str().is_some_and(|m| {
                !m.is_empty()
                    && m.bytes()
                        .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
            });
            if !ok {
                problems.push(format!(
                    "rule {id:?}: match.methods[{i}]: {m} is not an HTTP method"
                ));
            }
        }
        let mut check = |section: &str, field: String, h: &Value| {
            let name = h["handler"].as_str().unwrap_or_default();
            if cfg[section][name]["enabled"] != Value::Bool(true) {
                problems.push(format!(
                    "rule {id:?}: {field}.handler: {name:?} is not enabled in the global configuration ({section}.{name}.enabled)"
                ));
            }
        };
        for (i, h) in rule["authenticators"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            check("authenticators", format!("authenticators[{i}]"), h);
        }
        check("authorizers", "authorizer".into(), &rule["authorizer"]);
        for (i, h) in rule["mutators"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            check("mutators", format!("mutators[{i}]"), h);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    pub fn compile_config(cfg: &Value) -> Result<(), String> {
        let mut problems = Vec::new();
        for rule in cfg["rules"].as_array().into_iter().flatten() {
            if let Err(e) = validate_rule(cfg, rule) {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    pub fn compile_pattern(strategy: &str, pattern: &str) -> Result<CompiledPattern, String> {
        if strategy != "regexp" {
            return Err(format!(
                "matching strategy {strategy:?} is not supported yet"
            ));
        }
        let mut re = String::from("^");
        let mut rest = pattern;
        while let Some(open) = rest.find('<') {
            re.push_str(&fancy_regex::escape(&rest[..open]));
            let mut depth = 0usize;
            let mut close = None;
            for (i, c) in rest[open..].char_indices() {
                match c {
                    '<' => depth += 1,
                    '>' => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(open + i);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let close = close.ok_or_else(|| format!("unbalanced '<' in {pattern:?}"))?;
            re.push('(');
            re.push_str(&rest[open + 1..close]);
            re.push(')');
            rest = &rest[close + 1..];
        }
        re.push_str(&fancy_regex::escape(rest));
        re.push('$');
        let compiled = fancy_regex::Regex::new(&re).map_err(|e| e.to_string())?;
        Ok(Box::new(move |url: &str| {
            compiled.is_match(url).unwrap_or(false)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn regexp_patterns_are_anchored_and_quote_literals() {
        let p = compile_pattern("regexp", "<http|https>://a.b/users/<(?!admin).*>").unwrap();
        assert!(p("https://a.b/users/bob"));
        assert!(!p("https://a.b/users/admin"));
        assert!(!p("https://aXb/users/bob"), "literal dot must be quoted");
        assert!(compile_pattern("regexp", "http://x/<(>").is_err());
    }

    #[test]
    fn validation_reports_disabled_handlers_by_field() {
        let cfg = crate::global::GlobalConfig::default().filter_config(&[]);
        let good = json!({"id": "r", "match": {"url": "http://x/<.*>", "methods": ["GET"]},
            "authenticators": [{"handler": "noop"}], "authorizer": {"handler": "allow"}, "mutators": [{"handler": "noop"}]});
        assert_eq!(validate_rule(&cfg, &good), Ok(()));
        let mut bad = good.clone();
        bad["authenticators"][0]["handler"] = json!("cookie_session");
        bad["match"]["methods"] = json!(["G ET"]);
        let e = validate_rule(&cfg, &bad).unwrap_err();
        assert!(
            e.contains("authenticators[0].handler") && e.contains("cookie_session"),
            "{e}"
        );
        assert!(e.contains("match.methods[0]"), "{e}");
    }
}
