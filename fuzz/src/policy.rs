//! Access rules: the filter configuration, `match.url` patterns, request paths, templates.

use crate::input::{selector, two_lines};
use portcullis_core::config::Engine;
use portcullis_core::matcher::{IndexEntry, Lookup, MatchingStrategy, RuleIndex, UrlPattern};
use portcullis_core::session::Session;
use portcullis_core::template::Template;
use portcullis_core::url::{canonical_path, check_host, match_target};
use std::sync::Arc;

/// A whole filter configuration (what the control plane renders and Envoy delivers): compiles
/// or is refused with errors, never panics; a compiled one answers its own questions.
pub fn filter_config(data: &[u8]) {
    if let Ok(engine) = Engine::from_json(data) {
        assert_eq!(engine.rule_ids().count(), engine.rule_count());
        let _ = (
            engine.needs_remote_ip(),
            engine.is_disabled(),
            engine.jwks_sources(),
        );
    }
}

/// A pattern (first line, strategy chosen by the first byte) and a URL (second line): a
/// pattern that compiles matches without panicking, its captures agree with `is_match`, and a
/// one-rule index finds exactly what the pattern matches.
pub fn url_pattern(data: &[u8]) {
    let (sel, rest) = selector(data);
    let strategy = if sel % 2 == 0 {
        MatchingStrategy::Regexp
    } else {
        MatchingStrategy::Glob
    };
    let (pattern, url) = two_lines(rest);
    let Ok(compiled) = UrlPattern::compile(&pattern, strategy) else {
        return;
    };
    let Ok(hit) = compiled.is_match(&url) else {
        return; // backtracking limit: the filter denies
    };
    if let Ok(captures) = compiled.captures(&url) {
        assert_eq!(captures.is_some(), hit, "captures disagree with is_match");
    }
    let index = RuleIndex::new(vec![IndexEntry {
        methods: vec!["GET".into()],
        pattern: compiled,
        captures: false,
    }]);
    match index.find("GET", &url) {
        Lookup::Matched { rule: 0, .. } => assert!(hit, "index matched what the pattern does not"),
        Lookup::NoMatch => assert!(!hit, "index missed what the pattern matches"),
        Lookup::Failed { .. } => {}
        other => panic!("one rule, unexpected lookup {other:?}"),
    }
}

/// A request path (first line) and host (second line). An accepted path has one reading: its
/// decoded form, percent-encoded again (only `%` itself), is accepted and decodes to the same
/// text, and it holds nothing that is refused raw. A path without escapes is returned as is.
pub fn path_canonical(data: &[u8]) {
    let (path, host) = two_lines(data);
    if let Ok(decoded) = canonical_path(&path) {
        if !path.contains('%') {
            assert_eq!(decoded, path, "a path without escapes was changed");
        }
        let reencoded = decoded.replace('%', "%25");
        let reread = canonical_path(&reencoded).map(|c| c.into_owned());
        assert_eq!(
            reread,
            Ok(decoded.to_string()),
            "the decoded form of {path:?} reads differently"
        );
        let target = match_target("http", "h", &path);
        assert!(target.starts_with("http://h/"), "{target}");
    }
    if check_host(&host).is_ok() {
        let target = match_target("https", &host, "/");
        // The host cannot move text into the path: the first '/' after the origin is ours.
        let after = &target["https://".len()..];
        assert_eq!(after.find('/'), Some(after.len() - 1), "{target}");
    }
}

/// A template (selector: raw or JSON-escaped): compiles or is refused, renders without panic.
/// And whatever the subject, a JSON template's output is valid JSON that reads it back.
pub fn template(data: &[u8]) {
    let (sel, rest) = selector(data);
    let src = String::from_utf8_lossy(rest);
    let session = Session {
        subject: Arc::from(src.as_ref()),
        extra: Arc::new(
            serde_json::json!({"a": {"b": [1, "two", null]}, "s": src.as_ref()})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
        ..Session::default()
    };
    let compiled = if sel % 2 == 0 {
        Template::compile(&src)
    } else {
        Template::compile_json(&src)
    };
    if let Ok(t) = compiled {
        let _ = t.render_to_string(&session);
    }
    if let Ok(t) =
        Template::compile_json(r#"{"sub": "{{ print .Subject }}", "s": "{{ .Extra.s }}"}"#)
    {
        let out = t.render_to_string(&session);
        let doc: serde_json::Value = match serde_json::from_str(&out) {
            Ok(doc) => doc,
            Err(e) => panic!("JSON template rendered invalid JSON ({e}): {out}"),
        };
        assert_eq!(doc["sub"], src.as_ref());
        assert_eq!(doc["s"], src.as_ref());
    }
}
