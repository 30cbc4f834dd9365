use super::*;

fn regexp(p: &str) -> UrlPattern {
    UrlPattern::compile(p, MatchingStrategy::Regexp).unwrap()
}

fn glob(p: &str) -> UrlPattern {
    UrlPattern::compile(p, MatchingStrategy::Glob).unwrap()
}

#[test]
fn strategy_serde_is_lowercase_and_defaults_to_regexp() {
    assert_eq!(MatchingStrategy::default(), MatchingStrategy::Regexp);
    assert_eq!(
        serde_json::to_string(&MatchingStrategy::Glob).unwrap(),
        "\"glob\""
    );
    let s: MatchingStrategy = serde_json::from_str("\"regexp\"").unwrap();
    assert_eq!(s, MatchingStrategy::Regexp);
}

#[test]
fn unbalanced_delimiters_are_rejected() {
    for p in [
        "<",
        ">",
        ">>",
        "><>",
        "foo.bar<var",
        "foo.bar>var",
        "foo.bar<<>var",
    ] {
        assert!(
            matches!(
                UrlPattern::compile(p, MatchingStrategy::Glob),
                Err(PatternError::Unbalanced { .. })
            ),
            "{p}"
        );
    }
    assert_eq!(
        sections("foo.bar<<>><>tt<>").unwrap(),
        vec![(7, 11), (11, 13), (15, 17)]
    );
}

#[test]
fn invalid_regex_is_a_compile_error() {
    let e = UrlPattern::compile("https://h/<(unclosed>", MatchingStrategy::Regexp).unwrap_err();
    assert!(matches!(e, PatternError::Regex { .. }), "{e}");
}

#[test]
fn regexp_literal_parts_are_escaped_and_anchored() {
    let p = regexp("https://api.example.com/a+b/<.*>");
    assert!(p.is_match("https://api.example.com/a+b/x").unwrap());
    assert!(!p.is_match("https://apiXexample.com/a+b/x").unwrap());
    assert!(!p.is_match("https://api.example.com/aab/x").unwrap());
    assert!(!p.is_match("xhttps://api.example.com/a+b/x").unwrap());
    let p = regexp("https://h/<[0-9]+>");
    assert!(!p.is_match("https://h/12/extra").unwrap());
    assert_eq!(p.literal_prefix(), "https://h/");
}

#[test]
fn regexp_captures_follow_oathkeeper() {
    assert_eq!(
        regexp("urn:foo:<.*>").captures("urn:foo:user").unwrap(),
        Some(vec!["user".into()])
    );
    assert_eq!(
        regexp("urn:foo:<.*>:<.*>")
            .captures("urn:foo:user:one")
            .unwrap(),
        Some(vec!["user".to_string(), "one".to_string()])
    );
    assert_eq!(
        regexp("urn:foo:<foo|bar>").captures("urn:foo:bar").unwrap(),
        Some(vec!["bar".into()])
    );
    assert_eq!(
        regexp("urn:foo:<.?>").captures("urn:foo:user").unwrap(),
        None
    );
    // Inner groups follow their section's group; a group that did not participate is empty.
    assert_eq!(
        regexp("https://h/<(a)|(b)>/x")
            .captures("https://h/b/x")
            .unwrap(),
        Some(vec!["b".to_string(), String::new(), "b".to_string()])
    );
}

#[test]
fn regexp_supports_lookahead_and_posix_classes() {
    let p = regexp("https://h/users/<(?!admin).*>");
    assert!(p.is_match("https://h/users/alice").unwrap());
    assert!(!p.is_match("https://h/users/admin").unwrap());
    assert!(!p.is_match("https://h/users/admin/x").unwrap());
    assert_eq!(
        p.captures("https://h/users/bob").unwrap(),
        Some(vec!["bob".into()])
    );

    let p = regexp("https://h/items/<[[:digit:]]*>");
    assert!(p.is_match("https://h/items/123").unwrap());
    assert!(p.is_match("https://h/items/").unwrap());
    assert!(!p.is_match("https://h/items/12a").unwrap());
}

#[test]
fn catastrophic_backtracking_fails_closed() {
    // Lookahead forces the backtracking VM; nested quantifiers then explode on a near-miss.
    let p = regexp("https://h/<(?=a)(a|aa)+b>");
    let url = format!("https://h/{}", "a".repeat(64));
    assert!(matches!(
        p.is_match(&url),
        Err(MatchError::BacktrackLimit { .. })
    ));
    assert!(matches!(
        p.captures(&url),
        Err(MatchError::BacktrackLimit { .. })
    ));
    // The same pattern still answers quickly when it matches.
    assert!(p.is_match("https://h/aab").unwrap());
}

#[test]
fn glob_examples_from_oathkeeper() {
    let cases: &[(&str, &str, bool)] = &[
        ("urn:foo:<?>", "urn:foo:user", false),
        ("urn:foo:<?>", "urn:foo:u", true),
        ("urn:foo:<?>", "urn:foo:", false),
        ("urn:foo:<?>&&<?>", "urn:foo:w&&r", true),
        ("urn:foo:<?>?<?>", "urn:foo:w&r", false),
        ("urn:foo:<?>?<?>", "urn:foo:w?r", true),
        ("urn:foo:<*>", "urn:foo:user", true),
        ("urn:foo:<*>", "urn:foo:", true),
        ("urn:foo:<*>:<*>", "urn:foo:usr:swen", true),
        ("*:foo:<*>:<*>", "urn:foo:usr:swen", false),
        ("*:foo:<*>:<*>", "*:foo:usr:swen", true),
        ("urn:foo:<*>:role:<?>", "urn:foo:usr:role:a", true),
        ("urn:foo:<*>:role:<?>", "urn:foo:usr:role:admin", false),
        ("urn:foo:<m[a,o,u]n>", "urn:foo:moon", false),
        ("urn:foo:<m[a,o,u]n>", "urn:foo:man", true),
        ("urn:foo:<m[!a,o,u]n>", "urn:foo:man", false),
        ("urn:foo:<m[!a,o,u]n>", "urn:foo:min", true),
        (
            "http://example.com/<*>",
            "http://example.com/foo/bar",
            false,
        ),
    ];
    for &(pattern, url, want) in cases {
        assert_eq!(
            glob(pattern).is_match(url).unwrap(),
            want,
            "{pattern} vs {url}"
        );
    }
}

#[test]
fn glob_separators_super_star_braces_and_ranges() {
    let p = glob("https://<*>.example.com/<**>");
    assert!(p.is_match("https://api.example.com/a/b.c/d").unwrap());
    assert!(!p.is_match("https://a.b.example.com/x").unwrap());
    assert!(
        glob("https://h/<{users,groups}>/<*>")
            .is_match("https://h/groups/1")
            .unwrap()
    );
    assert!(
        !glob("https://h/<{users,groups}>/<*>")
            .is_match("https://h/admins/1")
            .unwrap()
    );
    assert!(
        glob("https://h/<{a*,b}>")
            .is_match("https://h/abc")
            .unwrap()
    );
    assert!(glob("https://h/v<[0-9]>").is_match("https://h/v7").unwrap());
    assert!(!glob("https://h/v<[0-9]>").is_match("https://h/vx").unwrap());
    assert!(glob("https://h/<\\*>").is_match("https://h/*").unwrap());
    assert!(!glob("https://h/<\\*>").is_match("https://h/a").unwrap());
    // Regex metacharacters in a glob are literal.
    assert!(glob("https://h/<a+*>").is_match("https://h/a+b").unwrap());
    assert!(!glob("https://h/<a+*>").is_match("https://h/aab").unwrap());
    assert_eq!(
        glob("https://h/<*>").captures("https://h/x").unwrap(),
        Some(vec![])
    );
    for bad in ["https://h/<[abc>", "https://h/<{a,b>", "https://h/<[]>"] {
        assert!(
            matches!(
                UrlPattern::compile(bad, MatchingStrategy::Glob),
                Err(PatternError::Glob { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn pattern_without_sections_is_exact() {
    let p = regexp("https://h/a.b");
    assert!(p.is_match("https://h/a.b").unwrap());
    assert!(!p.is_match("https://h/aXb").unwrap());
    assert_eq!(p.literal_prefix(), "https://h/a.b");
    assert_eq!(p.captures("https://h/a.b").unwrap(), Some(vec![]));
}

fn entry(methods: &[&str], pattern: &str) -> IndexEntry {
    IndexEntry {
        captures: true,
        methods: methods.iter().map(|m| m.to_string()).collect(),
        pattern: regexp(pattern),
    }
}

#[test]
fn index_finds_single_match_with_captures() {
    let idx = RuleIndex::new(vec![
        entry(&["GET"], "https://h/users/<[0-9]+>"),
        entry(&["POST"], "https://h/users/<.*>"),
        entry(&["CUSTOM"], "https://h/custom"),
    ]);
    assert_eq!(
        idx.find("get", "https://h/users/42"),
        Lookup::Matched {
            rule: 0,
            captures: vec!["42".into()]
        }
    );
    assert_eq!(
        idx.find("POST", "https://h/users/x"),
        Lookup::Matched {
            rule: 1,
            captures: vec!["x".into()]
        }
    );
    assert_eq!(
        idx.find("custom", "https://h/custom"),
        Lookup::Matched {
            rule: 2,
            captures: vec![]
        }
    );
    assert_eq!(idx.find("GET", "https://h/users/x"), Lookup::NoMatch);
    assert_eq!(idx.find("GET", "https://other/users/1"), Lookup::NoMatch);
}

#[test]
fn index_reports_every_overlap_as_ambiguous() {
    let idx = RuleIndex::new(vec![
        entry(&["GET"], "https://h/<.*>"),
        entry(&["GET"], "https://h/users/<.*>"),
        entry(&["GET"], "<https?>://h/users/<.*>"),
        entry(&["GET"], "https://h/users/1"),
        entry(&["GET"], "https://h/other"),
    ]);
    assert_eq!(
        idx.find("GET", "https://h/users/1"),
        Lookup::Ambiguous(vec![0, 1, 2, 3])
    );
    assert_eq!(
        idx.find("GET", "http://h/users/2"),
        Lookup::Matched {
            rule: 2,
            captures: vec!["http".into(), "2".into()]
        }
    );
}

#[test]
fn index_fails_closed_on_backtrack_limit() {
    let idx = RuleIndex::new(vec![entry(&["GET"], "https://h/<(?=a)(a|aa)+b>")]);
    let url = format!("https://h/{}", "a".repeat(64));
    assert!(matches!(
        idx.find("GET", &url),
        Lookup::Failed {
            rule: 0,
            error: MatchError::BacktrackLimit { .. }
        }
    ));
}

#[test]
fn decoded_path_and_lower_cased_host_decide_which_rule_matches() {
    let idx = RuleIndex::new(vec![
        entry(&["GET"], "https://h/public/<.*>"),
        entry(&["GET"], "https://Admin.Test./admin"),
    ]);
    let path = crate::url::canonical_path("/%61dmin").unwrap();
    let target = crate::url::match_target("https", "ADMIN.test.", &path);
    assert_eq!(
        idx.find("GET", &target),
        Lookup::Matched {
            rule: 1,
            captures: vec![]
        }
    );
}

#[test]
fn thousand_rules_evaluate_only_a_few_patterns() {
    let mut entries = Vec::new();
    for i in 0..1000 {
        let host = format!("svc{}.example.com", i % 10);
        entries.push(entry(
            &["GET"],
            &format!("https://{host}/api/v1/resource{i}/<[0-9]+>"),
        ));
    }
    // One rule with a pattern in the host lands in the fallback list.
    entries.push(entry(&["GET"], "https://<[a-z]+>.internal/health"));
    let idx = RuleIndex::new(entries);

    let url = "https://svc7.example.com/api/v1/resource437/12";
    // Only rule 437 from its host's table, out of 1001: the fallback rule (its literal prefix
    // is just `https://`) is tried by the RegexSet pass, which does not match this URL.
    let mut candidates: Vec<usize> = idx.candidates(url).collect();
    candidates.sort_unstable();
    assert_eq!(candidates, vec![437]);
    let health: Vec<usize> = idx.candidates("https://db.internal/health").collect();
    assert_eq!(health, vec![1000]);
    assert_eq!(
        idx.find("GET", url),
        Lookup::Matched {
            rule: 437,
            captures: vec!["12".into()]
        }
    );

    // `resource43/` and `resource4/` are not prefixes of `resource437/`, so they were not
    // candidates above; a host nobody names only reaches the fallback list.
    let url = "https://db.internal/health";
    assert_eq!(idx.candidates(url).count(), 1);
    assert_eq!(
        idx.find("GET", url),
        Lookup::Matched {
            rule: 1000,
            captures: vec!["db".into()]
        }
    );

    assert_eq!(idx.candidates("https://unknown.example.com/api").count(), 0);
    assert_eq!(
        idx.find("GET", "https://unknown.example.com/api"),
        Lookup::NoMatch
    );
}

#[test]
fn any_host_rules_are_indexed_by_path() {
    // Oathkeeper-style rules whose host is `<[^/]+>` cannot be bucketed by host, but their
    // host cannot hold a `/`, so they are bucketed by the literal path after it.
    let mut entries: Vec<IndexEntry> = (0..100)
        .map(|i| entry(&["GET"], &format!("<http|https>://<[^/]+>/svc-{i:02}/<.*>")))
        .collect();
    // Lookaround, and a scheme written out: still by path.
    entries.push(entry(&["GET"], "http://<[^/]+>/users/<(?!admin).*>"));
    // A host pattern that can swallow a `/` goes to the one-pass set instead.
    entries.push(entry(&["GET"], "https://<.*>/deep/<.*>"));
    let idx = RuleIndex::new(entries);
    let candidates: Vec<usize> = idx.candidates("http://h:80/svc-42/x").collect();
    assert_eq!(candidates, vec![42], "one candidate out of 102");
    assert_eq!(
        idx.find("GET", "https://h/svc-07/a/b"),
        Lookup::Matched {
            rule: 7,
            captures: vec!["https".into(), "h".into(), "a/b".into()]
        }
    );
    assert_eq!(
        idx.find("GET", "http://h/users/bob"),
        Lookup::Matched {
            rule: 100,
            captures: vec!["h".into(), "bob".into()]
        }
    );
    assert_eq!(idx.find("GET", "http://h/users/admin"), Lookup::NoMatch);
    // `<[^/]+>` never spans a path segment; `<.*>` does, as in Oathkeeper.
    assert_eq!(idx.find("GET", "http://h/x/svc-01/y"), Lookup::NoMatch);
    assert_eq!(
        idx.find("GET", "https://h/x/deep/y"),
        Lookup::Matched {
            rule: 101,
            captures: vec!["h/x".into(), "y".into()]
        }
    );
}

#[test]
fn the_index_finds_what_trying_every_rule_finds() {
    let patterns = [
        "http://a.example/api/<.*>",
        "<http|https>://<[^/]+>/api/<.*>",
        "<https?>://<[^/]*>/api/v1/<[0-9]+>",
        "https://<[^/]+>/api",
        "http://<.*>/api/<.*>",
        "https://<[a-z]+>.internal/<.*>",
        "<http|https>://<[^/]+>/<(?!admin).*>",
        "http://a.example/<.*>",
        "https://b.example/api/v1/<[0-9]+>",
    ];
    let entries: Vec<IndexEntry> = patterns.iter().map(|p| entry(&["GET"], p)).collect();
    let brute: Vec<UrlPattern> = patterns.iter().map(|p| regexp(p)).collect();
    let idx = RuleIndex::new(entries);
    let hosts = [
        "a.example",
        "b.example",
        "x.internal",
        "",
        "h/api",
        "h:8080",
    ];
    let paths = [
        "/api",
        "/api/",
        "/api/v1/7",
        "/api/x",
        "/admin",
        "/x/api/y",
        "/",
    ];
    for scheme in ["http", "https"] {
        for host in hosts {
            for path in paths {
                let url = format!("{scheme}://{host}{path}");
                let mut all: Vec<usize> = (0..brute.len())
                    .filter(|&i| brute[i].is_match(&url).unwrap())
                    .collect();
                all.sort_unstable();
                let expected = match all.as_slice() {
                    [] => "none".to_string(),
                    [one] => format!("rule {one}"),
                    many => format!("ambiguous {many:?}"),
                };
                let got = match idx.find("GET", &url) {
                    Lookup::NoMatch => "none".to_string(),
                    Lookup::Matched { rule, .. } => format!("rule {rule}"),
                    Lookup::Ambiguous(r) => format!("ambiguous {r:?}"),
                    Lookup::Failed { .. } => "failed".to_string(),
                };
                assert_eq!(got, expected, "{url}");
            }
        }
    }
}

/// Every worker holds every rule: a `regexp` pattern's engine is built on its first
/// evaluation, not when the configuration compiles (a thousand rules took ~36 MB per worker),
/// while a bad expression is still refused at compile time.
#[test]
fn regexp_engines_are_built_on_first_use() {
    let built = |p: &UrlPattern| match &p.compiled {
        Compiled::Regexp(lazy) => lazy.built.get().is_some(),
        other => panic!("not a regexp pattern: {other:?}"),
    };
    let p = regexp("<http|https>://svc.example.com/api/<(?!admin).*>");
    assert!(!built(&p), "compiling the configuration builds no engine");
    let index = RuleIndex::new(vec![IndexEntry {
        methods: vec!["GET".into()],
        pattern: p.clone(),
        captures: false,
    }]);
    assert!(
        matches!(
            index.find("GET", "http://svc.example.com/api/users"),
            Lookup::Matched { rule: 0, .. }
        ),
        "decisions do not change"
    );
    assert!(matches!(
        index.find("GET", "http://svc.example.com/api/admin"),
        Lookup::NoMatch
    ));
    assert!(p.is_match("https://svc.example.com/api/x").unwrap());
    assert!(built(&p), "the first evaluation builds it");
    assert!(UrlPattern::compile("http://a/<(?!x>", MatchingStrategy::Regexp).is_err());
}

/// Kyma's `<http|https>://HOST/...` rules are found through the host table, for either scheme,
/// and never for another host; everything else they decide stays as before.
#[test]
fn scheme_choice_rules_are_indexed_by_host() {
    let index = RuleIndex::new(vec![
        entry(&["GET"], "<http|https>://svc.example.com/api/<.*>"),
        entry(&["GET"], "<https?>://svc.example.com/api/admin<.*>"),
        entry(&["GET"], "<http|https>://other.example.com/api/<.*>"),
        entry(&["GET"], "<http|https>://<[^/]+>/any/<.*>"),
    ]);
    assert!(index.fallback_set_rules.is_empty() || index.fallback_set_rules == [3]);
    let cands = |url| {
        let mut c: Vec<usize> = index.candidates(url).collect();
        c.sort_unstable();
        c
    };
    assert_eq!(cands("http://svc.example.com/api/x"), [0]);
    assert_eq!(cands("https://svc.example.com/api/x"), [0]);
    assert_eq!(cands("https://svc.example.com/api/admin/x"), [0, 1]);
    assert_eq!(cands("https://other.example.com/api/x"), [2]);
    assert!(matches!(
        index.find("GET", "https://svc.example.com/api/x"),
        Lookup::Matched { rule: 0, .. }
    ));
    assert!(matches!(
        index.find("GET", "http://svc.example.com/api/adminx"),
        Lookup::Ambiguous(_)
    ));
    assert!(matches!(
        index.find("GET", "ftp://svc.example.com/api/x"),
        Lookup::NoMatch
    ));
    assert!(matches!(
        index.find("GET", "https://svc.example.com.evil/api/x"),
        Lookup::NoMatch
    ));
    assert!(matches!(
        index.find("GET", "https://x.test/any/y"),
        Lookup::Matched { rule: 3, .. }
    ));
}

/// The same for `glob` rules written `<{http,https}>://HOST/...`: a 1,000-rule glob set ran
/// the `RegexSet` over every rule on every request (issue 13). Other scheme sections stay
/// unindexed, and still decide.
#[test]
fn glob_scheme_choice_rules_are_indexed_by_host() {
    let glob = |pattern: &str| IndexEntry {
        methods: vec!["GET".into()],
        pattern: UrlPattern::compile(pattern, MatchingStrategy::Glob).unwrap(),
        captures: false,
    };
    let index = RuleIndex::new(vec![
        glob("<{http,https}>://svc.example.com/api/<**>"),
        glob("<{https,http}>://other.example.com/api/<*>"),
        glob("<{http,https,ftp}>://svc.example.com/files/<**>"),
        glob("<{http,https}>://<*>/any/<**>"),
    ]);
    assert_eq!(index.fallback_set_rules, [2, 3]);
    let cands = |url| {
        let mut c: Vec<usize> = index.candidates(url).collect();
        c.sort_unstable();
        c
    };
    assert_eq!(cands("http://svc.example.com/api/x"), [0]);
    assert_eq!(cands("https://svc.example.com/api/x/y"), [0]);
    assert_eq!(cands("https://other.example.com/api/x"), [1]);
    assert!(cands("https://svc.example.com.evil/api/x").is_empty());
    let find = |url| index.find("GET", url);
    assert!(matches!(
        find("https://svc.example.com/api/x/y"),
        Lookup::Matched { rule: 0, .. }
    ));
    assert!(matches!(
        find("http://other.example.com/api/x"),
        Lookup::Matched { rule: 1, .. }
    ));
    // `*` stops at a separator, whatever the index found.
    assert_eq!(find("http://other.example.com/api/x/y"), Lookup::NoMatch);
    assert_eq!(find("ftp://svc.example.com/api/x"), Lookup::NoMatch);
    assert_eq!(find("httpx://svc.example.com/api/x"), Lookup::NoMatch);
    assert_eq!(find("https://svc.example.com.evil/api/x"), Lookup::NoMatch);
    assert!(matches!(
        find("ftp://svc.example.com/files/a"),
        Lookup::Matched { rule: 2, .. }
    ));
    assert!(matches!(
        find("https://localhost/any/a/b"),
        Lookup::Matched { rule: 3, .. }
    ));
    // A scheme section that merely starts like a choice is not one.
    let p = UrlPattern::compile(
        "<{http,https}x>://svc.example.com/a",
        MatchingStrategy::Glob,
    );
    assert_eq!(p.unwrap().scheme_choice_prefixes(), None);
}

/// Perl classes and case folding stay Unicode-aware; property classes are refused by the core
/// itself with a named error, so the filter (whose regex engine lacks their tables) and the
/// control plane (whose native build has them) accept exactly the same patterns.
#[test]
fn unicode_property_classes_are_refused_alike_in_every_build() {
    for ok in [
        r"\w+",
        r"\d+",
        r"\s*",
        r"(?i)straße",
        r"[[:alpha:]]+",
        // A literal backslash followed by `p` is no class.
        r"a\\p",
        r"[\\p]",
    ] {
        let p = UrlPattern::compile(&format!("http://a.test/<{ok}>"), MatchingStrategy::Regexp);
        assert!(p.is_ok(), "{ok}: {p:?}");
    }
    assert!(
        regexp(r"http://a.test/<\w+>")
            .is_match("http://a.test/αβγ")
            .unwrap()
    );
    assert!(
        regexp(r"http://a.test/<(?i)STRASSE|straße>")
            .is_match("http://a.test/STRAẞE")
            .unwrap()
    );
    // A glob's `\` is always a literal: it never reaches the regex engine as an escape.
    let glob = UrlPattern::compile(r"http://a.test/<[\p]{L}>", MatchingStrategy::Glob).unwrap();
    assert!(glob.is_match("http://a.test/pL").unwrap());
    assert!(!glob.is_match("http://a.test/x").unwrap());
    for (refused, named) in [
        (r"\p{L}+", r"\p{L}"),
        (r"\P{Greek}+", r"\P{Greek}"),
        (r"\pL+", r"\pL"),
        (r"[\p{Alphabetic}x]+", r"\p{Alphabetic}"),
        (r"\p{Age=6.0}", r"\p{Age=6.0}"),
        (
            r"\p{Grapheme_Cluster_Break=L}",
            r"\p{Grapheme_Cluster_Break=L}",
        ),
        (r"(?=\p{Lu})\w+", r"\p{Lu}"),
        (r"\\\p{N}", r"\p{N}"),
        (r"x\p", r"\p"),
        (r"\p{Greek", r"\p{Greek"),
    ] {
        let err = UrlPattern::compile(
            &format!("http://a.test/<{refused}>"),
            MatchingStrategy::Regexp,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!(
                "Unicode property class {named:?} is not supported"
            )),
            "{refused}: {err}"
        );
    }
}
