//! The string access rules are matched against: `scheme://host/path`, query excluded, host
//! lower-cased, path percent-decoded, and only ever a canonical path.
//!
//! Why decoded: Oathkeeper matches Go's `url.URL.Path`, which `net/url` has already
//! percent-decoded (`/a%20b` is matched as `/a b`). We receive Envoy's raw `:path`, so we decode
//! the same way; otherwise `/%61dmin` would slip past a rule written for `/admin` while the
//! workload, decoding too, serves `/admin`. Malformed escapes (`%zz`, a lone `%`) are kept as
//! literal text: they cannot produce a byte this module refuses.
//!
//! Why refused rather than cleaned: the filter never rewrites `:path`, so whatever Envoy's router
//! and the workload do with a path, they do with the one the client sent. Resolving `..` or
//! decoding `%2F` here would judge one path and forward another (`/admin/..%2Fpublic/x` was judged
//! as `/public/x` and served by the admin backend). A path that could be read two ways — dot
//! segments raw or encoded, encoded `/` or `\`, raw `\`, empty segments, `;` path parameters,
//! control bytes, escapes that are not UTF-8 — is refused instead (the caller answers 400), so
//! every path that is matched has one reading, and it is the one the workload gets. A single
//! trailing slash stays allowed (`/api/` is distinct from `/api` for Oathkeeper and for routers).

use std::borrow::Cow;
use thiserror::Error;

/// Why a path is not canonical. The messages are sent to the client, who wrote the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotRooted,
    #[error("the path has a '.' or '..' segment (raw or percent-encoded)")]
    DotSegment,
    #[error("the path has an empty segment ('//')")]
    EmptySegment,
    #[error("the path has a percent-encoded '/' or '\\' (%2F, %5C)")]
    EncodedSeparator,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a ';' (path parameters are not accepted)")]
    PathParameter,
    #[error("the path has a control character (raw or percent-encoded)")]
    ControlCharacter,
    #[error("the path has percent-escapes that do not decode to UTF-8")]
    NotUtf8,
}

/// Why a host is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HostError {
    #[error(
        "the host has a character not allowed in a host name ('/', '?', '#', '@', '\\', whitespace or a control character)"
    )]
    Character,
    #[error("the host ends with more than one '.'")]
    TrailingDots,
}

/// The path (without query) as rules see it: percent-decoded, after checking in one pass that it
/// is canonical. Borrows when there is nothing to decode, which is the common case.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotRooted);
    }
    let mut escapes = false;
    // The current segment, decoded: its length and whether every byte so far was a '.'.
    let (mut len, mut dots) = (0usize, true);
    let mut i = 1;
    while i < b.len() {
        let raw = b[i];
        if raw == b'/' {
            segment_end(len, dots, false)?;
            (len, dots) = (0, true);
            i += 1;
            continue;
        }
        let byte = match escape_at(b, i) {
            Some(decoded) => {
                escapes = true;
                i += 3;
                if decoded == b'/' || decoded == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                decoded
            }
            None => {
                i += 1;
                if raw == b'\\' {
                    return Err(PathError::Backslash);
                }
                raw
            }
        };
        if byte == b';' {
            return Err(PathError::PathParameter);
        }
        if byte < 0x20 || byte == 0x7f {
            return Err(PathError::ControlCharacter);
        }
        len += 1;
        dots &= byte == b'.';
    }
    segment_end(len, dots, true)?;
    if !escapes {
        return Ok(Cow::Borrowed(path));
    }
    String::from_utf8(decode(b))
        .map(Cow::Owned)
        .map_err(|_| PathError::NotUtf8)
}

/// Checks a finished segment: never `.` or `..`; empty only as the last one (the root, or a
/// trailing slash).
fn segment_end(len: usize, dots: bool, last: bool) -> Result<(), PathError> {
    match len {
        0 if last => Ok(()),
        0 => Err(PathError::EmptySegment),
        1 | 2 if dots => Err(PathError::DotSegment),
        _ => Ok(()),
    }
}

/// The byte a valid `%XX` escape at `i` stands for.
fn escape_at(b: &[u8], i: usize) -> Option<u8> {
    if b.get(i) != Some(&b'%') {
        return None;
    }
    let h = hex(*b.get(i + 1)?)?;
    let l = hex(*b.get(i + 2)?)?;
    Some(h << 4 | l)
}

/// Decodes `%XX` escapes as Go's `url.PathUnescape` would; malformed escapes are kept literally.
fn decode(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match escape_at(b, i) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Refuses a host (with its port, as in `:authority`) that could make the match target say
/// something the host header does not: a `/`, `?` or `#` would move text into the path, a `@`
/// or `\` would read as userinfo or a separator to some parsers.
pub fn check_host(authority: &str) -> Result<(), HostError> {
    if authority
        .bytes()
        .any(|c| matches!(c, b'/' | b'?' | b'#' | b'@' | b'\\' | 0..=0x20 | 0x7f))
    {
        return Err(HostError::Character);
    }
    if split_port(authority).0.ends_with("..") {
        return Err(HostError::TrailingDots);
    }
    Ok(())
}

/// `host` and `:port` (with its colon, or empty) of an authority; an IPv6 literal keeps its
/// brackets.
fn split_port(authority: &str) -> (&str, &str) {
    match authority.rfind(':') {
        Some(i) if !authority[..i].contains(':') || authority[..i].ends_with(']') => {
            authority.split_at(i)
        }
        _ => (authority, ""),
    }
}

/// Appends `scheme://host[:port]` with the host as Envoy's virtual hosts, DNS and the workload
/// read it: ASCII lower case, one trailing dot dropped, and the scheme's default port (or an
/// empty one) dropped as RFC 3986 §6.2.3 does (`ADMIN.test.:80` over http is `admin.test`).
pub fn push_origin(out: &mut String, scheme: &str, authority: &str) {
    out.push_str(scheme);
    out.push_str("://");
    let (host, port) = split_port(authority);
    let host = host.strip_suffix('.').unwrap_or(host);
    for c in host.chars() {
        out.push(c.to_ascii_lowercase());
    }
    if !is_default_port(scheme, port) {
        out.push_str(port);
    }
}

/// `:port` (with its colon) is empty or the default of `scheme`.
fn is_default_port(scheme: &str, port: &str) -> bool {
    match port {
        ":" => true,
        ":80" => scheme.eq_ignore_ascii_case("http"),
        ":443" => scheme.eq_ignore_ascii_case("https"),
        _ => false,
    }
}

/// `scheme://authority/path`: the string rules are matched against. `path` is a
/// [`canonical_path`] (decoded, without the query); the host is normalised by [`push_origin`].
pub fn match_target(scheme: &str, authority: &str, path: &str) -> String {
    let mut s = String::with_capacity(scheme.len() + 3 + authority.len() + path.len());
    push_origin(&mut s, scheme, authority);
    s.push_str(path);
    s
}

/// A rule's `match.url` with its literal scheme and host lower-cased and a trailing dot of a
/// literal host dropped, so that it compares with [`match_target`]'s normalised host. Text in
/// `<...>` sections is left alone. Borrows when there is nothing to change.
pub fn normalize_pattern_origin(pattern: &str) -> Cow<'_, str> {
    let Some(scheme_end) = pattern.find("://") else {
        return Cow::Borrowed(pattern);
    };
    // The authority ends at the first '/' outside `<...>`.
    let mut level = 0usize;
    let mut end = pattern.len();
    for (i, c) in pattern.bytes().enumerate().skip(scheme_end + 3) {
        match c {
            b'<' => level += 1,
            b'>' => level = level.saturating_sub(1),
            b'/' if level == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let origin = &pattern[..end];
    let authority = &origin[scheme_end + 3..];
    let literal = !authority.contains('<');
    let (host, port) = split_port(authority);
    let dot = literal && host.ends_with('.');
    let default_port = literal && is_default_port(&pattern[..scheme_end], port);
    let upper = {
        let mut level = 0usize;
        origin.bytes().any(|c| {
            match c {
                b'<' => level += 1,
                b'>' => level = level.saturating_sub(1),
                _ => {}
            }
            level == 0 && c.is_ascii_uppercase()
        })
    };
    if !dot && !upper && !default_port {
        return Cow::Borrowed(pattern);
    }
    let mut out = String::with_capacity(pattern.len());
    let mut level = 0usize;
    for c in origin.chars() {
        match c {
            '<' => level += 1,
            '>' => level = level.saturating_sub(1),
            _ => {}
        }
        out.push(if level == 0 {
            c.to_ascii_lowercase()
        } else {
            c
        });
    }
    if dot || default_port {
        out.truncate(scheme_end + 3 + host.len() - usize::from(dot));
        if !default_port {
            out.push_str(port);
        }
    }
    out.push_str(&pattern[end..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_pass_and_borrow() {
        for p in [
            "/",
            "/abc",
            "/a/b/c",
            "/api/",
            "/a/b/..c/.d",
            "/a/...",
            "/file.json",
            "/a%zz/%",
        ] {
            assert!(
                matches!(canonical_path(p), Ok(Cow::Borrowed(b)) if b == p),
                "{p:?}"
            );
        }
    }

    #[test]
    fn unreserved_and_other_escapes_are_decoded() {
        let ok = |p: &str| canonical_path(p).map(Cow::into_owned);
        assert_eq!(ok("/%61dmin"), Ok("/admin".into()));
        assert_eq!(ok("/a%20b"), Ok("/a b".into()));
        assert_eq!(ok("/file%2Ejson"), Ok("/file.json".into()));
        assert_eq!(ok("/caf%C3%A9"), Ok("/café".into()));
        assert_eq!(ok("/bad%zz/%4"), Ok("/bad%zz/%4".into()));
        assert_eq!(ok("/a%252e%252e"), Ok("/a%2e%2e".into()));
    }

    #[test]
    fn every_non_canonical_spelling_is_refused() {
        use PathError::*;
        let cases = [
            ("", NotRooted),
            ("*", NotRooted),
            ("admin", NotRooted),
            ("/admin/../public/x", DotSegment),
            ("/admin/./x", DotSegment),
            ("/admin/..", DotSegment),
            ("/admin/.", DotSegment),
            ("/..", DotSegment),
            ("/admin/%2e%2e/public", DotSegment),
            ("/admin/%2E%2e/public", DotSegment),
            ("/admin/.%2e/public", DotSegment),
            ("/admin/%2e/public", DotSegment),
            ("/admin/..%2Fpublic/x", EncodedSeparator),
            ("/admin/x/..%2f..%2Fpublic/y", EncodedSeparator),
            ("/admin/%2e%2e%2Fpublic/x", EncodedSeparator),
            ("/a%5Cb", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/a\\b", Backslash),
            ("/admin//../public/x", EmptySegment),
            ("//admin", EmptySegment),
            ("/admin//x", EmptySegment),
            ("/admin//", EmptySegment),
            ("/public/..;/admin/x", PathParameter),
            ("/a;b=c", PathParameter),
            ("/a%3Bb", PathParameter),
            ("/a%00b", ControlCharacter),
            ("/a%0ab", ControlCharacter),
            ("/a%7f", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/a%ff", NotUtf8),
            ("/%C0%AE%C0%AE/admin", NotUtf8),
        ];
        for (path, want) in cases {
            assert_eq!(canonical_path(path), Err(want), "{path:?}");
        }
    }

    #[test]
    fn every_short_path_is_refused_exactly_when_it_has_a_dot_or_empty_segment() {
        // Over a small alphabet: the one-pass check agrees with splitting into segments.
        let alphabet = ['/', '.', 'a'];
        let mut paths = vec![String::from("/")];
        for _ in 0..6 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(longer);
        }
        for p in &paths {
            let segments: Vec<&str> = p[1..].split('/').collect();
            let (last, inner) = segments.split_last().unwrap();
            let bad =
                inner.iter().any(|s| matches!(*s, "" | "." | "..")) || matches!(*last, "." | "..");
            assert_eq!(canonical_path(p).is_err(), bad, "{p:?}");
        }
    }

    #[test]
    fn hosts_are_lower_cased_without_trailing_dot() {
        assert_eq!(
            match_target("https", "ADMIN.Test", "/x"),
            "https://admin.test/x"
        );
        assert_eq!(
            match_target("http", "admin.test.", "/x"),
            "http://admin.test/x"
        );
        assert_eq!(
            match_target("http", "admin.test.:8080", "/"),
            "http://admin.test:8080/"
        );
        assert_eq!(
            match_target("http", "Admin.test.:80", "/"),
            "http://admin.test/"
        );
        assert_eq!(
            match_target("http", "admin.test:", "/"),
            "http://admin.test/"
        );
        assert_eq!(match_target("http", "h:443", "/"), "http://h:443/");
        assert_eq!(match_target("https", "h:443", "/"), "https://h/");
        assert_eq!(match_target("https", "h:80", "/"), "https://h:80/");
        assert_eq!(
            match_target("http", "[::1]:8080", "/"),
            "http://[::1]:8080/"
        );
        assert_eq!(match_target("http", "[::1]:80", "/"), "http://[::1]/");
        assert_eq!(match_target("http", "[::1]", "/"), "http://[::1]/");
    }

    #[test]
    fn hosts_that_would_move_text_are_refused() {
        for h in [
            "www.example.com/public",
            "a?b",
            "a#b",
            "user@host",
            "a\\b",
            "a b",
            "a\tb",
            "host..",
            "host..:80",
        ] {
            assert!(check_host(h).is_err(), "{h:?}");
        }
        for h in ["a.example.com", "a.example.com.", "h:8080", "[::1]:80", ""] {
            assert_eq!(check_host(h), Ok(()), "{h:?}");
        }
    }

    #[test]
    fn pattern_origins_are_normalised_outside_sections() {
        let n = |p| normalize_pattern_origin(p).into_owned();
        assert_eq!(n("HTTP://Admin.Test/A/<.*>"), "http://admin.test/A/<.*>");
        assert_eq!(n("http://admin.test./x"), "http://admin.test/x");
        assert_eq!(n("http://admin.test.:8080/x"), "http://admin.test:8080/x");
        assert_eq!(n("http://admin.test.:80/x"), "http://admin.test/x");
        assert_eq!(n("https://Admin.test:443/x"), "https://admin.test/x");
        assert_eq!(n("https://admin.test:80/x"), "https://admin.test:80/x");
        assert_eq!(
            n("<https?>://admin.test:80/x"),
            "<https?>://admin.test:80/x"
        );
        assert_eq!(
            n("<HTTP|https>://<[A-Z]+>.Test/x"),
            "<HTTP|https>://<[A-Z]+>.test/x"
        );
        assert!(matches!(
            normalize_pattern_origin("<http|https>://<[^/]+>/Public/<.*>"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            normalize_pattern_origin("/no-scheme"),
            Cow::Borrowed(_)
        ));
    }
}
