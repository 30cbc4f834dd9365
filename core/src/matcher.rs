//! Oathkeeper's `<...>` URL patterns, compiled once, and the index that finds the rule a request
//! matches without trying every rule.
//!
//! A pattern is literal text with sections between `<` and `>` (nested pairs count, as in
//! Oathkeeper's `delimiterIndices`). With the `regexp` strategy each section is a regular
//! expression wrapped in a capture group and the literal text is escaped; the whole is anchored.
//! With `glob` each section is a glob whose separators are `.` and `/`. See [`glob`] for the glob
//! dialect.

mod glob;
mod property_class;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::OnceLock;
use thiserror::Error;

/// Backtracking steps one regexp match may take before it fails closed. Patterns without
/// lookaround or backreferences never backtrack (fancy-regex hands them to the linear `regex`
/// crate); this only bounds the ones that need the backtracking VM.
pub const BACKTRACK_LIMIT: usize = 100_000;

/// `access_rules.matching_strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchingStrategy {
    #[default]
    Regexp,
    Glob,
}

/// A `match.url` that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatternError {
    #[error("pattern {pattern:?}: unbalanced '<' '>' delimiters")]
    Unbalanced { pattern: String },
    #[error("pattern {pattern:?}: invalid regular expression: {message}")]
    Regex { pattern: String, message: String },
    #[error("pattern {pattern:?}: invalid glob: {message}")]
    Glob { pattern: String, message: String },
}

/// A match that could not be decided: the caller must deny.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MatchError {
    #[error("pattern {pattern:?}: regular expression exceeded its backtracking limit")]
    BacktrackLimit { pattern: String },
    #[error("pattern {pattern:?}: regular expression failed: {message}")]
    Runtime { pattern: String, message: String },
}

#[derive(Debug, Clone)]
enum Compiled {
    /// No `<...>` section: plain string equality, whatever the strategy.
    Literal,
    Regexp(LazyRegex),
    Glob(regex::Regex),
}

/// A `regexp` pattern's engine, built on first use. Built, one costs tens of KB (forward and
/// reverse NFAs, engine tables), and every worker VM holds its own copy of every rule: 1,000
/// rules took ~36 MB per worker, for rules a worker mostly never evaluates one by one (the
/// index finds candidates, the any-host `RegexSet` decides most matches). The expression is
/// checked when the configuration compiles, so a bad one is still refused there.
#[derive(Debug, Clone)]
struct LazyRegex {
    expr: String,
    built: OnceLock<Result<fancy_regex::Regex, String>>,
}

impl LazyRegex {
    fn build(expr: &str) -> Result<fancy_regex::Regex, fancy_regex::Error> {
        fancy_regex::RegexBuilder::new(expr)
            .backtrack_limit(BACKTRACK_LIMIT)
            .build()
    }

    fn get(&self) -> Result<&fancy_regex::Regex, &str> {
        self.built
            .get_or_init(|| Self::build(&self.expr).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }
}

/// A compiled `match.url`.
#[derive(Debug, Clone)]
pub struct UrlPattern {
    source: String,
    strategy: MatchingStrategy,
    /// Byte length of the text before the first `<`.
    prefix_len: usize,
    compiled: Compiled,
    /// The anchored expression, when the linear `regex` crate accepts it (no lookaround or
    /// backreferences): such patterns can be matched together in one `RegexSet` pass.
    linear: Option<String>,
}

/// Byte ranges `[start, end)` of top-level `<...>` sections, delimiters included.
fn sections(pattern: &str) -> Result<Vec<(usize, usize)>, PatternError> {
    let mut level = 0usize;
    let mut start = 0;
    let mut out = Vec::new();
    for (i, b) in pattern.bytes().enumerate() {
        match b {
            b'<' => {
                level += 1;
                if level == 1 {
                    start = i;
                }
            }
            b'>' => {
                if level == 0 {
                    return Err(PatternError::Unbalanced {
                        pattern: pattern.to_string(),
                    });
                }
                level -= 1;
                if level == 0 {
                    out.push((start, i + 1));
                }
            }
            _ => {}
        }
    }
    if level != 0 {
        return Err(PatternError::Unbalanced {
            pattern: pattern.to_string(),
        });
    }
    Ok(out)
}

impl UrlPattern {
    /// Compiles `pattern`; its literal scheme and host are lower-cased first (see
    /// [`crate::url::normalize_pattern_origin`]), as request hosts are before matching.
    pub fn compile(pattern: &str, strategy: MatchingStrategy) -> Result<UrlPattern, PatternError> {
        let pattern = &*crate::url::normalize_pattern_origin(pattern);
        let secs = sections(pattern)?;
        let prefix_len = secs.first().map_or(pattern.len(), |s| s.0);
        let mut linear = None;
        let compiled = if secs.is_empty() {
            linear = Some(format!("^{}$", regex::escape(pattern)));
            Compiled::Literal
        } else {
            let mut re = String::with_capacity(pattern.len() * 2);
            re.push('^');
            let mut end = 0;
            for &(s, e) in &secs {
                re.push_str(&regex::escape(&pattern[end..s]));
                let inner = &pattern[s + 1..e - 1];
                match strategy {
                    MatchingStrategy::Regexp => {
                        property_class::refuse(inner).map_err(|message| PatternError::Regex {
                            pattern: pattern.to_string(),
                            message,
                        })?;
                        re.push('(');
                        re.push_str(inner);
                        re.push(')');
                    }
                    MatchingStrategy::Glob => {
                        glob::translate(inner, &mut re).map_err(|message| PatternError::Glob {
                            pattern: pattern.to_string(),
                            message,
                        })?;
                    }
                }
                end = e;
            }
            re.push_str(&regex::escape(&pattern[end..]));
            re.push('$');
            if strategy == MatchingStrategy::Glob || regex::Regex::new(&re).is_ok() {
                linear = Some(re.clone());
            }
            match strategy {
                MatchingStrategy::Regexp => {
                    // Built to be checked, then dropped: see `LazyRegex`.
                    LazyRegex::build(&re).map_err(|e| PatternError::Regex {
                        pattern: pattern.to_string(),
                        message: e.to_string(),
                    })?;
                    Compiled::Regexp(LazyRegex {
                        expr: re,
                        built: OnceLock::new(),
                    })
                }
                MatchingStrategy::Glob => {
                    regex::Regex::new(&re)
                        .map(Compiled::Glob)
                        .map_err(|e| PatternError::Glob {
                            pattern: pattern.to_string(),
                            message: e.to_string(),
                        })?
                }
            }
        };
        Ok(UrlPattern {
            source: pattern.to_string(),
            strategy,
            prefix_len,
            compiled,
            linear,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn strategy(&self) -> MatchingStrategy {
        self.strategy
    }

    /// The literal text before the first `<`: every URL this pattern matches starts with it.
    pub fn literal_prefix(&self) -> &str {
        &self.source[..self.prefix_len]
    }

    /// For the common Oathkeeper shape `<http|https>://<[^/]+>/path...` (scheme `http`, `https`
    /// or one of `<http|https>`, `<https|http>`, `<https?>`; host exactly `<[^/]+>` or
    /// `<[^/]*>`), the literal path text after the host, starting with `/`. Such a host cannot
    /// match a `/`, so every URL this pattern matches has its first `/` after `://` where that
    /// text begins: the rule can be indexed by path like host-bound rules are by host.
    pub fn any_host_path_prefix(&self) -> Option<&str> {
        if self.strategy != MatchingStrategy::Regexp {
            return None;
        }
        let s = self.source.as_str();
        let after_scheme = [
            "http://",
            "https://",
            "<http|https>://",
            "<https|http>://",
            "<https?>://",
        ]
        .iter()
        .find_map(|scheme| s.strip_prefix(scheme))?;
        let path = ["<[^/]+>", "<[^/]*>"]
            .iter()
            .find_map(|host| after_scheme.strip_prefix(host))?;
        if !path.starts_with('/') {
            return None;
        }
        Some(path.find('<').map_or(path, |end| &path[..end]))
    }

    /// For Kyma's shape `<http|https>://HOST/path...` (scheme one of `<http|https>`,
    /// `<https|http>`, `<https?>`, or with `glob` `<{http,https}>`, `<{https,http}>`; host and
    /// the path's first `/` literal), the literal prefix a matching URL starts with, once per
    /// scheme. Such a rule can be indexed by host like one whose scheme is literal, instead of
    /// joining the `RegexSet` every request runs.
    pub fn scheme_choice_prefixes(&self) -> Option<[String; 2]> {
        let schemes: &[&str] = match self.strategy {
            MatchingStrategy::Regexp => &["<http|https>://", "<https|http>://", "<https?>://"],
            MatchingStrategy::Glob => &["<{http,https}>://", "<{https,http}>://"],
        };
        let rest = schemes
            .iter()
            .find_map(|scheme| self.source.strip_prefix(scheme))?;
        let literal = rest.find('<').map_or(rest, |end| &rest[..end]);
        if !literal.contains('/') {
            return None;
        }
        Some([format!("http://{literal}"), format!("https://{literal}")])
    }

    fn runtime_error(&self, e: fancy_regex::Error) -> MatchError {
        match e {
            fancy_regex::Error::RuntimeError(fancy_regex::RuntimeError::BacktrackLimitExceeded) => {
                MatchError::BacktrackLimit {
                    pattern: self.source.clone(),
                }
            }
            other => MatchError::Runtime {
                pattern: self.source.clone(),
                message: other.to_string(),
            },
        }
    }

    /// The built engine of a `regexp` pattern; a build that fails now (it succeeded when the
    /// configuration compiled) denies.
    fn regexp<'a>(&self, lazy: &'a LazyRegex) -> Result<&'a fancy_regex::Regex, MatchError> {
        lazy.get().map_err(|message| MatchError::Runtime {
            pattern: self.source.clone(),
            message: message.to_string(),
        })
    }

    pub fn is_match(&self, url: &str) -> Result<bool, MatchError> {
        match &self.compiled {
            Compiled::Literal => Ok(url == self.source),
            Compiled::Glob(re) => Ok(re.is_match(url)),
            Compiled::Regexp(lazy) => self
                .regexp(lazy)?
                .is_match(url)
                .map_err(|e| self.runtime_error(e)),
        }
    }

    /// `None` when `url` does not match; otherwise Oathkeeper's `RegexpCaptureGroups`: every
    /// group of the compiled expression but the whole match, in order of their opening
    /// parenthesis (one per `<...>` section, plus any groups inside it), a group that did not
    /// take part being the empty string. Glob and literal patterns capture nothing.
    pub fn captures(&self, url: &str) -> Result<Option<Vec<String>>, MatchError> {
        match &self.compiled {
            Compiled::Literal | Compiled::Glob(_) => Ok(self.is_match(url)?.then(Vec::new)),
            Compiled::Regexp(lazy) => {
                let re = self.regexp(lazy)?;
                let Some(caps) = re.captures(url).map_err(|e| self.runtime_error(e))? else {
                    return Ok(None);
                };
                Ok(Some(
                    (1..caps.len())
                        .map(|i| {
                            caps.get(i)
                                .map_or(String::new(), |m| m.as_str().to_string())
                        })
                        .collect(),
                ))
            }
        }
    }
}

/// One rule as the index sees it; its position in the input is its rule number.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub methods: Vec<String>,
    pub pattern: UrlPattern,
    /// Whether the rule's templates read the capture groups; when not, a match skips the
    /// (slower) capturing pass.
    pub captures: bool,
}

/// Result of looking a request up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No rule matches: Oathkeeper answers 404.
    NoMatch,
    Matched {
        rule: usize,
        captures: Vec<String>,
    },
    /// More than one rule matches (ascending rule numbers): Oathkeeper answers 500.
    Ambiguous(Vec<usize>),
    /// A pattern could not be evaluated: deny.
    Failed {
        rule: usize,
        error: MatchError,
    },
}

/// FNV-1a, for the index's own tables: their keys come from the configuration and requests only
/// look them up (nothing a client sends is inserted), so collision resistance buys nothing, and
/// SipHash's setup cost on short keys showed on every request.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

type FnvMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// Rules whose literal prefixes share one `scheme://host`, grouped by their whole literal prefix.
#[derive(Debug, Clone, Default)]
struct PrefixTable {
    by_prefix: FnvMap<String, Vec<usize>>,
    /// Distinct prefix lengths, ascending: a URL is probed once per length, not once per rule.
    lengths: Vec<usize>,
}

/// All rules, indexed by the literal text their patterns start with.
///
/// A rule whose literal prefix contains the whole `scheme://host/` goes into that host's
/// [`PrefixTable`]; a lookup probes the table once per distinct prefix length with the URL's own
/// prefix of that length, so only rules whose literal prefix the URL starts with are evaluated.
/// Rules with a `<...>` in the scheme or host (`<http|https>://<[^/]+>/...`, common in
/// Oathkeeper rules) cannot be bucketed by host: those the linear `regex` crate accepts are
/// matched all at once by one `RegexSet` pass over the URL; the rest (lookaround) go to a list
/// checked with `starts_with`. Every rule that can match is a candidate, so all matches are
/// found (needed for `Ambiguous`).
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    entries: Vec<IndexEntry>,
    hosts: FnvMap<String, PrefixTable>,
    /// Rules of any host (see [`UrlPattern::any_host_path_prefix`]), by literal path prefix.
    any_host: PrefixTable,
    /// Fallback rules matched together, and the rule number of each set member.
    fallback_set: Option<regex::RegexSet>,
    fallback_set_rules: Vec<usize>,
    fallback: Vec<usize>,
}

/// The path of a match target (`scheme://host/path`): from the first `/` after `://`.
fn path_of(url: &str) -> Option<&str> {
    let after = url.find("://")? + 3;
    url[after..].find('/').map(|slash| &url[after + slash..])
}

impl PrefixTable {
    fn insert(&mut self, prefix: &str, rule: usize) {
        self.by_prefix
            .entry(prefix.to_string())
            .or_default()
            .push(rule);
        if let Err(pos) = self.lengths.binary_search(&prefix.len()) {
            self.lengths.insert(pos, prefix.len());
        }
    }

    /// Rules whose prefix `text` starts with: one probe per distinct prefix length.
    fn matching<'a>(&'a self, text: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.lengths
            .iter()
            .take_while(move |&&l| l <= text.len())
            .filter(move |&&l| text.is_char_boundary(l))
            .filter_map(move |&l| self.by_prefix.get(&text[..l]))
            .flatten()
            .copied()
    }
}

/// `scheme://host` of a URL or literal prefix, if the text holds it up to the path's `/`.
fn host_key(s: &str) -> Option<&str> {
    let after = s.find("://")? + 3;
    let slash = s[after..].find('/')? + after;
    Some(&s[..slash])
}

impl RuleIndex {
    pub fn new(entries: Vec<IndexEntry>) -> RuleIndex {
        let mut hosts: FnvMap<String, PrefixTable> = FnvMap::default();
        let mut any_host = PrefixTable::default();
        let mut fallback = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let prefix = e.pattern.literal_prefix();
            if let Some(key) = host_key(prefix) {
                hosts.entry(key.to_string()).or_default().insert(prefix, i);
            } else if let Some(prefixes) = e.pattern.scheme_choice_prefixes() {
                for prefix in &prefixes {
                    if let Some(key) = host_key(prefix) {
                        hosts.entry(key.to_string()).or_default().insert(prefix, i);
                    }
                }
            } else if let Some(path) = e.pattern.any_host_path_prefix() {
                any_host.insert(path, i);
            } else {
                fallback.push(i);
            }
        }
        let (linear, fallback): (Vec<usize>, Vec<usize>) = fallback
            .into_iter()
            .partition(|&i| entries[i].pattern.linear.is_some());
        let fallback_set = (!linear.is_empty())
            .then(|| {
                regex::RegexSet::new(
                    linear
                        .iter()
                        .filter_map(|&i| entries[i].pattern.linear.as_deref()),
                )
                .ok()
            })
            .flatten();
        // Should the set not build (size limits), every fallback rule is checked one by one.
        let (fallback_set_rules, fallback) = match fallback_set {
            Some(_) => (linear, fallback),
            None => (Vec::new(), linear.into_iter().chain(fallback).collect()),
        };
        RuleIndex {
            entries,
            hosts,
            any_host,
            fallback_set,
            fallback_set_rules,
            fallback,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entry(&self, rule: usize) -> Option<&IndexEntry> {
        self.entries.get(rule)
    }

    /// Rules whose pattern could match `url` (their literal prefix is a prefix of it), in no
    /// particular order. Only these are evaluated by [`RuleIndex::find`].
    pub fn candidates<'a>(&'a self, url: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.candidates_known(url).map(|(i, _)| i)
    }

    /// Candidates, each with whether it is already known to match (found by the `RegexSet`).
    fn candidates_known<'a>(&'a self, url: &'a str) -> impl Iterator<Item = (usize, bool)> + 'a {
        let key = host_key(url).unwrap_or(url);
        let table = self.hosts.get(key);
        let from_table = table
            .into_iter()
            .flat_map(move |t| t.matching(url))
            .map(|i| (i, false));
        let from_any_host = path_of(url)
            .into_iter()
            .flat_map(move |path| self.any_host.matching(path))
            .map(|i| (i, false));
        let from_set = self
            .fallback_set
            .iter()
            .flat_map(move |set| set.matches(url).into_iter())
            .filter_map(move |k| self.fallback_set_rules.get(k).map(|&i| (i, true)));
        let from_fallback = self
            .fallback
            .iter()
            .copied()
            .filter(move |&i| url.starts_with(self.entries[i].pattern.literal_prefix()))
            .map(|i| (i, false));
        from_table
            .chain(from_any_host)
            .chain(from_set)
            .chain(from_fallback)
    }

    /// The one rule matching `method` and `url` (a [`crate::url::match_target`] string).
    pub fn find(&self, method: &str, url: &str) -> Lookup {
        // Nearly every request matches exactly one rule: only a second match allocates.
        let mut first: Option<usize> = None;
        let mut others: Vec<usize> = Vec::new();
        for (i, known) in self.candidates_known(url) {
            let entry = &self.entries[i];
            if !entry.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
                continue;
            }
            let hit = known
                || match entry.pattern.is_match(url) {
                    Ok(hit) => hit,
                    Err(error) => return Lookup::Failed { rule: i, error },
                };
            if hit {
                match first {
                    None => first = Some(i),
                    Some(_) => others.push(i),
                }
            }
        }
        let Some(rule) = first else {
            return Lookup::NoMatch;
        };
        if !others.is_empty() {
            others.push(rule);
            others.sort_unstable();
            return Lookup::Ambiguous(others);
        }
        if !self.entries[rule].captures {
            return Lookup::Matched {
                rule,
                captures: Vec::new(),
            };
        }
        match self.entries[rule].pattern.captures(url) {
            Ok(Some(captures)) => Lookup::Matched { rule, captures },
            Ok(None) => Lookup::NoMatch,
            Err(error) => Lookup::Failed { rule, error },
        }
    }
}

#[cfg(test)]
mod tests;
