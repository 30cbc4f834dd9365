//! Detecting access rules of one workload that can match the same request. Oathkeeper answers
//! 500 at request time when more than one rule matches; we report such pairs when the rules load.
//!
//! Two rules overlap when they share an HTTP method and
//! - their URL patterns are identical, or
//! - a sample URL built from one rule's pattern matches the other rule's compiled pattern.
//!
//! Samples replace each `<...>` part by candidates (the empty string, short words, a path with a
//! slash, a dotted word, the alternatives of a simple `(a|b)` group, and the literal words of the
//! other rule's URL) and keep only those the rule's own pattern matches; at most
//! [`MAX_SAMPLES`] per pair and direction. Limits: this is a search for a witness, not a proof —
//! two patterns whose common URLs need an unusual string (`<[0-9]{7}>` against `<.*7.*>`) may
//! go unreported; every reported overlap is real (the witness URL matches both rules). Patterns
//! that do not compile are compared by identity only.

use crate::core_seam::{CompiledPattern, compile_pattern};

/// Upper bound on sample URLs tried per rule pair and direction.
pub const MAX_SAMPLES: usize = 256;

/// A rule as the overlap check sees it.
pub struct Candidate<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub methods: &'a [String],
}

/// An overlap between two rules with a URL both match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub first: String,
    pub second: String,
    pub method: String,
    pub witness: String,
}

/// Every overlapping pair among `rules` (each pair once, `first` before `second` in input order).
pub fn find_overlaps(strategy: &str, rules: &[Candidate<'_>]) -> Vec<Overlap> {
    let compiled: Vec<Option<CompiledPattern>> = rules
        .iter()
        .map(|r| compile_pattern(strategy, r.url).ok())
        .collect();
    let mut out = Vec::new();
    for i in 0..rules.len() {
        for j in i + 1..rules.len() {
            let (a, b) = (&rules[i], &rules[j]);
            let Some(method) = a
                .methods
                .iter()
                .find(|m| b.methods.iter().any(|n| n.eq_ignore_ascii_case(m)))
            else {
                continue;
            };
            let witness = if a.url == b.url {
                Some(
                    compiled[i]
                        .as_ref()
                        .and_then(|pa| samples(a.url, b.url).into_iter().find(|s| pa(s)))
                        .unwrap_or_else(|| a.url.to_string()),
                )
            } else {
                match (&compiled[i], &compiled[j]) {
                    (Some(pa), Some(pb)) => {
                        witness(a.url, pa, b.url, pb).or_else(|| witness(b.url, pb, a.url, pa))
                    }
                    _ => None,
                }
            };
            if let Some(witness) = witness {
                out.push(Overlap {
                    first: a.id.to_string(),
                    second: b.id.to_string(),
                    method: method.to_ascii_uppercase(),
                    witness,
                });
            }
        }
    }
    out
}

/// A sample of `own`'s pattern that `other` also matches.
fn witness(
    own: &str,
    own_p: &CompiledPattern,
    other: &str,
    other_p: &CompiledPattern,
) -> Option<String> {
    samples(own, other)
        .into_iter()
        .filter(|s| own_p(s))
        .find(|s| other_p(s))
}

enum Part<'a> {
    Literal(&'a str),
    Pattern(&'a str),
}

fn parts(pattern: &str) -> Vec<Part<'_>> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('<') {
        let mut depth = 0usize;
        let mut close = None;
        for (i, c) in rest[open..].char_indices() {
            match c {
                '<' => depth += 1,
                '>' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        close = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(close) = close else { break };
        out.push(Part::Literal(&rest[..open]));
        out.push(Part::Pattern(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push(Part::Literal(rest));
    out
}

/// Candidate strings for one `<...>` part.
fn candidates(inner: &str, other: &str) -> Vec<String> {
    let mut c: Vec<String> = ["", "a", "0", "x-1", "a/b", "a.b", "http", "https"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Alternatives of a simple group: `http|https`, `(post|put)`.
    let trimmed = inner.trim_start_matches('(').trim_end_matches(')');
    if trimmed.contains('|') {
        c.extend(
            trimmed
                .split('|')
                .filter(|w| {
                    w.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                })
                .map(String::from),
        );
    }
    // Literal words of the other rule, alone and as a path tail, so `<.*>` meets `/admin`.
    for part in parts(other) {
        if let Part::Literal(lit) = part {
            for w in lit.split(['/', ':']).filter(|w| !w.is_empty()) {
                c.push(w.to_string());
            }
            if let Some(i) = lit.find("://").map(|i| i + 3).or(Some(0)) {
                let tail = &lit[i..];
                if let Some(slash) = tail.find('/') {
                    c.push(tail[slash + 1..].to_string());
                }
            }
        }
    }
    c.sort();
    c.dedup();
    c
}

/// Sample URLs of `pattern`: the cartesian product of candidates, bounded by [`MAX_SAMPLES`].
fn samples(pattern: &str, other: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for part in parts(pattern) {
        match part {
            Part::Literal(l) => out.iter_mut().for_each(|s| s.push_str(l)),
            Part::Pattern(inner) => {
                let cands = candidates(inner, other);
                let mut next = Vec::with_capacity(out.len() * cands.len());
                'outer: for s in &out {
                    for c in &cands {
                        if next.len() >= MAX_SAMPLES {
                            break 'outer;
                        }
                        next.push(format!("{s}{c}"));
                    }
                }
                out = next;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn check(a: (&str, &[&str]), b: (&str, &[&str])) -> Vec<Overlap> {
        let (ma, mb) = (m(a.1), m(b.1));
        find_overlaps(
            "regexp",
            &[
                Candidate {
                    id: "a",
                    url: a.0,
                    methods: &ma,
                },
                Candidate {
                    id: "b",
                    url: b.0,
                    methods: &mb,
                },
            ],
        )
    }

    #[test]
    fn identical_patterns_with_a_shared_method_overlap() {
        let o = check(
            ("http://x/<.*>", &["GET", "POST"]),
            ("http://x/<.*>", &["post"]),
        );
        assert_eq!(o.len(), 1);
        assert_eq!(
            (
                o[0].first.as_str(),
                o[0].second.as_str(),
                o[0].method.as_str()
            ),
            ("a", "b", "POST")
        );
    }

    #[test]
    fn disjoint_methods_never_overlap() {
        assert!(check(("http://x/<.*>", &["GET"]), ("http://x/<.*>", &["POST"])).is_empty());
    }

    #[test]
    fn a_wildcard_overlaps_a_literal_path_with_a_real_witness() {
        let o = check(
            ("<http|https>://x/users/<.*>", &["GET"]),
            ("http://x/users/admin", &["GET"]),
        );
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].witness, "http://x/users/admin");
    }

    #[test]
    fn alternatives_are_sampled() {
        let o = check(
            ("http://x/<(post|put)>", &["POST"]),
            ("http://x/put", &["POST"]),
        );
        assert_eq!(o.len(), 1, "{o:?}");
    }

    #[test]
    fn lookahead_exclusions_are_respected() {
        assert!(
            check(
                ("http://x/users/<(?!admin).*>", &["GET"]),
                ("http://x/users/admin", &["GET"])
            )
            .is_empty()
        );
        assert!(check(("http://x/a/<.*>", &["GET"]), ("http://x/b/<.*>", &["GET"])).is_empty());
        assert!(check(("https://x/<.*>", &["GET"]), ("http://x/<.*>", &["GET"])).is_empty());
    }

    #[test]
    fn nested_wildcards_overlap() {
        let o = check(
            ("http://x/api/<.*>", &["GET"]),
            ("http://x/<.*>/v1", &["GET"]),
        );
        assert_eq!(o.len(), 1, "{o:?}");
    }

    #[test]
    fn sample_count_is_bounded() {
        let many = "http://x/<.*>/<.*>/<.*>/<.*>/<.*>";
        assert!(samples(many, "http://y/a/b/c/d/e/f").len() <= MAX_SAMPLES);
    }
}
