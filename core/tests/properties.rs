//! Properties of rule matching and path canonicalisation, checked on random inputs (proptest).

use portcullis_core::matcher::{IndexEntry, Lookup, MatchingStrategy, RuleIndex, UrlPattern};
use portcullis_core::url::canonical_path;
use proptest::prelude::*;

// ---- the rule index finds exactly what trying every rule finds ----

fn scheme() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "http",
        "https",
        "<http|https>",
        "<https?>",
        "<[a-z]+>",
    ])
}

fn host() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a.test",
        "b.test",
        "A.Test",
        "<[^/]+>",
        "<[ab]\\.test>",
        "<.*>",
        "<(a|c)>.test",
    ])
}

fn segment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "x",
        "y",
        "x1",
        "<.*>",
        "<[^/]+>",
        "<x|y>",
        "<(?=x).*>",
        "<x(?!1)>",
        "<\\d+>",
        "",
    ])
}

fn rule_pattern() -> impl Strategy<Value = String> {
    (scheme(), host(), prop::collection::vec(segment(), 0..3))
        .prop_map(|(s, h, segs)| format!("{s}://{h}/{}", segs.join("/")))
}

fn methods() -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(vec!["GET", "POST", "DELETE"], 1..=3)
        .prop_map(|m| m.into_iter().map(String::from).collect())
}

fn url() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["http", "https"]),
        prop::sample::select(vec!["a.test", "b.test", "c.test", "a", "c"]),
        prop::collection::vec(prop::sample::select(vec!["x", "y", "x1", "12", ""]), 0..4),
    )
        .prop_map(|(s, h, segs)| format!("{s}://{h}/{}", segs.join("/")))
}

/// What the index must answer: every rule tried in order.
fn brute_force(entries: &[IndexEntry], method: &str, url: &str) -> Lookup {
    let mut hits = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if !e.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            continue;
        }
        match e.pattern.is_match(url) {
            Ok(true) => hits.push(i),
            Ok(false) => {}
            Err(error) => return Lookup::Failed { rule: i, error },
        }
    }
    match hits.as_slice() {
        [] => Lookup::NoMatch,
        [rule] => Lookup::Matched {
            rule: *rule,
            captures: Vec::new(),
        },
        _ => Lookup::Ambiguous(hits),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_index_finds_what_trying_every_rule_finds(
        rules in prop::collection::vec((rule_pattern(), methods()), 1..12),
        requests in prop::collection::vec((prop::sample::select(vec!["GET", "POST", "get"]), url()), 1..16),
    ) {
        let entries: Vec<IndexEntry> = rules
            .iter()
            .filter_map(|(p, m)| {
                Some(IndexEntry {
                    methods: m.clone(),
                    pattern: UrlPattern::compile(p, MatchingStrategy::Regexp).ok()?,
                    captures: false,
                })
            })
            .collect();
        let index = RuleIndex::new(entries.clone());
        for (method, url) in &requests {
            let want = brute_force(&entries, method, url);
            let got = match index.find(method, url) {
                Lookup::Matched { rule, .. } => Lookup::Matched { rule, captures: Vec::new() },
                other => other,
            };
            prop_assert_eq!(got, want, "{} {}", method, url);
        }
    }
}

// ---- glob and regexp strategies against simple references ----

/// One glob token (gobwas dialect, separators `.` and `/`).
#[derive(Debug, Clone)]
enum Glob {
    Lit(char),
    Star,
    SuperStar,
    One,
    Class(Vec<char>, bool),
    Alt(Vec<Vec<Glob>>),
}

fn glob_token(depth: u32) -> BoxedStrategy<Glob> {
    let leaf = prop_oneof![
        prop::sample::select(vec!['a', 'b', '.', '/']).prop_map(Glob::Lit),
        Just(Glob::Star),
        Just(Glob::SuperStar),
        Just(Glob::One),
        (
            prop::sample::subsequence(vec!['a', 'b', '.'], 1..=2),
            any::<bool>()
        )
            .prop_map(|(c, neg)| Glob::Class(c, neg)),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        4 => leaf,
        1 => prop::collection::vec(prop::collection::vec(glob_token(depth - 1), 0..3), 1..3)
            .prop_map(Glob::Alt),
    ]
    .boxed()
}

fn glob_source(tokens: &[Glob]) -> String {
    let mut s = String::new();
    for t in tokens {
        match t {
            Glob::Lit(c) => s.push(*c),
            Glob::Star => s.push('*'),
            Glob::SuperStar => s.push_str("**"),
            Glob::One => s.push('?'),
            Glob::Class(cs, neg) => {
                s.push('[');
                if *neg {
                    s.push('!');
                }
                s.extend(cs);
                s.push(']');
            }
            Glob::Alt(alts) => {
                s.push('{');
                let parts: Vec<String> = alts.iter().map(|a| glob_source(a)).collect();
                s.push_str(&parts.join(","));
                s.push('}');
            }
        }
    }
    s
}

/// `*` next to `*` in the source would read as `**`: keep such sequences out.
fn well_formed(tokens: &[Glob]) -> bool {
    let stars = |t: &Glob| matches!(t, Glob::Star | Glob::SuperStar);
    tokens.windows(2).all(|w| !(stars(&w[0]) && stars(&w[1])))
        && tokens.iter().all(|t| match t {
            Glob::Alt(alts) => alts.iter().all(|a| well_formed(a)),
            _ => true,
        })
}

fn is_sep(c: char) -> bool {
    c == '.' || c == '/'
}

/// A backtracking matcher written from the dialect's description.
fn glob_ref(tokens: &[Glob], text: &[char]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    match first {
        Glob::Lit(c) => text.first() == Some(c) && glob_ref(rest, &text[1..]),
        Glob::One => text.first().is_some_and(|c| !is_sep(*c)) && glob_ref(rest, &text[1..]),
        Glob::Class(cs, neg) => {
            text.first().is_some_and(|c| cs.contains(c) != *neg) && glob_ref(rest, &text[1..])
        }
        Glob::Star => (0..=text.len())
            .take_while(|&n| text[..n].iter().all(|c| !is_sep(*c)))
            .any(|n| glob_ref(rest, &text[n..])),
        Glob::SuperStar => (0..=text.len()).any(|n| glob_ref(rest, &text[n..])),
        Glob::Alt(alts) => alts.iter().any(|alt| {
            let mut joined = alt.clone();
            joined.extend_from_slice(rest);
            glob_ref(&joined, text)
        }),
    }
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!['a', 'b', '.', '/', 'c']), 0..8)
        .prop_map(|c| c.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn glob_sections_match_like_the_reference(
        tokens in prop::collection::vec(glob_token(1), 0..5).prop_filter("**", |t| well_formed(t)),
        inputs in prop::collection::vec(text(), 1..8),
    ) {
        let source = format!("http://h/<{}>", glob_source(&tokens));
        let pattern = UrlPattern::compile(&source, MatchingStrategy::Glob)
            .map_err(|e| TestCaseError::fail(format!("{source}: {e}")))?;
        for input in &inputs {
            let chars: Vec<char> = input.chars().collect();
            let want = glob_ref(&tokens, &chars);
            let got = pattern.is_match(&format!("http://h/{input}")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, want, "{} vs {}", source, input);
        }
    }

    #[test]
    fn regexp_sections_match_like_the_reference(
        parts in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec!["a", "/", ".", "a.b", "(", "+", "*"]).prop_map(|l| (false, l)),
                prop::sample::select(vec!["[^/]+", ".*", "a|b", "\\d*", "[a.]{1,2}", "(a)(b)?"]).prop_map(|r| (true, r)),
            ],
            0..5,
        ),
        inputs in prop::collection::vec(
            prop::collection::vec(prop::sample::select(vec!["a", "b", ".", "/", "1", "(", "+", "*"]), 0..8)
                .prop_map(|c| c.concat()),
            1..8,
        ),
    ) {
        // The reference: literal text matched literally, each section as a whole-match regex
        // group, the whole anchored; `regex` (linear, no lookaround) against the core's
        // `fancy-regex` evaluation.
        let mut source = String::from("http://h/");
        let mut reference = String::from("^http://h/");
        for (is_re, text) in &parts {
            if *is_re {
                source.push_str(&format!("<{text}>"));
                reference.push_str(&format!("({text})"));
            } else {
                source.push_str(text);
                reference.push_str(&regex::escape(text));
            }
        }
        reference.push('$');
        let reference = regex::Regex::new(&reference).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let pattern = UrlPattern::compile(&source, MatchingStrategy::Regexp)
            .map_err(|e| TestCaseError::fail(format!("{source}: {e}")))?;
        for input in &inputs {
            let url = format!("http://h/{input}");
            prop_assert_eq!(pattern.is_match(&url).ok(), Some(reference.is_match(&url)), "{} vs {}", source, url);
        }
    }
}

// ---- path canonicalisation ----

fn raw_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "/", "a", ".", "..", "%", "%2e", "%2E", "%2F", "%5c", "%25", "%41", "%C3", "%A9",
            "%00", ";", "\\", "%zz", "b", "%7f", "%3B",
        ]),
        0..10,
    )
    .prop_map(|p| format!("/{}", p.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Accepted paths have one reading: the decoded form, with only `%` encoded again, is
    /// accepted and decodes to itself (decoding is idempotent on what it produces), and a path
    /// without escapes is accepted unchanged.
    #[test]
    fn an_accepted_path_has_one_reading(path in raw_path()) {
        if let Ok(decoded) = canonical_path(&path) {
            if !path.contains('%') {
                prop_assert_eq!(&*decoded, path.as_str());
            }
            let again = decoded.replace('%', "%25");
            let reread = canonical_path(&again).map(|c| c.into_owned());
            prop_assert_eq!(reread, Ok(decoded.to_string()), "{}", path);
            prop_assert!(!decoded.contains("//") && !decoded.contains('\\') && !decoded.contains(';'));
            prop_assert!(!decoded.split('/').any(|s| s == "." || s == ".."), "{}", decoded);
        }
    }

    /// Refusal depends on the path, not on what follows it: appending a clean segment never
    /// turns a refused path into an accepted one, nor the reverse.
    #[test]
    fn refusal_is_decided_consistently(path in raw_path()) {
        prop_assume!(!path.ends_with('/'));
        let longer = format!("{path}/a");
        prop_assert_eq!(
            canonical_path(&path).is_ok(),
            canonical_path(&longer).is_ok(),
            "{} vs {}", path, longer
        );
    }
}
