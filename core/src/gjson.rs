//! The part of GJSON's path syntax Oathkeeper configurations use in `subject_from` and
//! `extra_from`: dotted keys (`identity.traits.email`, `\.` for a dot inside a key), array
//! indexes (`groups.0`), `#` (an array's length; `#.key` collects `key` from each element) and
//! `@this` (the whole document). Everything else GJSON has (wildcards, queries, modifiers other
//! than `@this`, multipaths, pipes) is refused when the configuration is compiled, so a path
//! never quietly selects something other than what it selects in Oathkeeper.

use serde_json::Value;
use std::borrow::Cow;
use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("GJSON path {path:?}: {message}")]
pub struct GjsonError {
    path: String,
    message: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// An object member, or an array element when the key is a number.
    Key(String),
    /// `#`: the array's length when last, else the rest of the path applied to every element.
    Each,
}

/// A compiled path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GjsonPath {
    steps: Vec<Step>,
}

impl GjsonPath {
    pub fn compile(path: &str) -> Result<Self, GjsonError> {
        let err = |message| GjsonError {
            path: path.to_string(),
            message,
        };
        if path == "@this" {
            return Ok(Self { steps: Vec::new() });
        }
        if path.is_empty() {
            return Err(err("is empty"));
        }
        let mut steps = Vec::new();
        let mut key = String::new();
        let mut chars = path.chars();
        let finish = |key: &mut String, steps: &mut Vec<Step>| -> Result<(), GjsonError> {
            if key.is_empty() {
                return Err(err(
                    "has an empty component (`..`, or a leading or trailing dot)",
                ));
            }
            let k = std::mem::take(key);
            steps.push(if k == "#" { Step::Each } else { Step::Key(k) });
            Ok(())
        };
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped) => key.push(escaped),
                    None => return Err(err("ends with a lone backslash")),
                },
                '.' => finish(&mut key, &mut steps)?,
                '*' | '?' => {
                    return Err(err(
                        "uses a wildcard (`*`, `?`), which the filter does not support",
                    ));
                }
                '|' | ',' | '[' | ']' | '{' | '}' | '(' | ')' | '=' | '!' | '<' | '>' | '%' => {
                    return Err(err(
                        "uses GJSON queries, pipes or multipaths, which the filter does not support; only dotted keys, array indexes, `#` and `@this` are",
                    ));
                }
                '@' if key.is_empty() => {
                    return Err(err(
                        "uses a GJSON modifier; only `@this` (the whole document) is supported",
                    ));
                }
                _ => key.push(c),
            }
        }
        finish(&mut key, &mut steps)?;
        Ok(Self { steps })
    }

    /// The selected value, or `None` when the path leads nowhere (GJSON's "does not exist").
    pub fn get<'v>(&self, doc: &'v Value) -> Option<Cow<'v, Value>> {
        select(&self.steps, doc)
    }
}

fn select<'v>(steps: &[Step], doc: &'v Value) -> Option<Cow<'v, Value>> {
    let Some((first, rest)) = steps.split_first() else {
        return Some(Cow::Borrowed(doc));
    };
    match first {
        Step::Key(k) => {
            let next = match doc {
                Value::Object(m) => m.get(k)?,
                Value::Array(a) => a.get(k.parse::<usize>().ok()?)?,
                _ => return None,
            };
            select(rest, next)
        }
        Step::Each => {
            let Value::Array(items) = doc else {
                return None;
            };
            if rest.is_empty() {
                return Some(Cow::Owned(Value::from(items.len())));
            }
            // As GJSON: elements the rest of the path does not reach are left out.
            let collected: Vec<Value> = items
                .iter()
                .filter_map(|item| select(rest, item).map(Cow::into_owned))
                .collect();
            Some(Cow::Owned(Value::Array(collected)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get(path: &str, doc: &Value) -> Option<Value> {
        GjsonPath::compile(path)
            .unwrap()
            .get(doc)
            .map(Cow::into_owned)
    }

    #[test]
    fn paths_oathkeeper_users_write() {
        let doc = json!({
            "subject": "alice",
            "identity": {"id": "i-1", "traits": {"email": "a@example.com"}},
            "groups": ["admin", "dev"],
            "sessions": [{"id": "s1"}, {"id": "s2"}, {"other": 1}],
            "a.b": {"c": 3}
        });
        assert_eq!(get("subject", &doc), Some(json!("alice")));
        assert_eq!(
            get("identity.traits.email", &doc),
            Some(json!("a@example.com"))
        );
        assert_eq!(get("groups.1", &doc), Some(json!("dev")));
        assert_eq!(get("groups.#", &doc), Some(json!(2)));
        assert_eq!(get("sessions.#.id", &doc), Some(json!(["s1", "s2"])));
        assert_eq!(get("sessions.0.id", &doc), Some(json!("s1")));
        assert_eq!(get(r"a\.b.c", &doc), Some(json!(3)));
        assert_eq!(get("@this", &doc), Some(doc.clone()));
        assert_eq!(get("missing", &doc), None);
        assert_eq!(get("groups.9", &doc), None);
        assert_eq!(get("subject.x", &doc), None);
        assert_eq!(get("groups.x", &doc), None);
        assert_eq!(get("subject.#", &doc), None);
    }

    #[test]
    fn unsupported_syntax_is_refused_with_a_reason() {
        for path in [
            "",
            "a..b",
            ".a",
            "a.",
            "a.*",
            "a?c",
            "friends.#(age>40)",
            "a|b",
            "{a,b}",
            "a.@reverse",
            "@pretty",
            "a\\",
        ] {
            let e = GjsonPath::compile(path).unwrap_err().to_string();
            assert!(e.contains(&format!("{path:?}")), "{path}: {e}");
        }
    }
}
