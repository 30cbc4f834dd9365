//! The string access rules are matched against: `scheme://host/path`, query excluded, path
//! percent-decoded and cleaned.
//!
//! Why decoded: Oathkeeper matches Go's `url.URL.Path`, which `net/url` has already
//! percent-decoded (`/a%20b` is matched as `/a b`, `%2F` as `/`). We receive Envoy's raw `:path`,
//! so we decode the same way; otherwise `/%61dmin` would slip past a rule written for `/admin`.
//! Malformed escapes (`%zz`, a lone `%`) are kept as literal text rather than rejected: they cannot
//! produce `/` or `.`, so they cannot change which segments the path has.
//!
//! Why cleaned: `.` and `..` segments and repeated slashes are resolved with Go's `path.Clean`
//! algorithm before matching, so `/public/../admin` is matched as `/admin` (the upstream would
//! resolve it that way too). Two deliberate differences from `path.Clean`, both to keep rules that
//! work in Oathkeeper working here: a trailing slash is kept (Oathkeeper matches the path as
//! received, so `https://h/api/` rules must still match `/api/`), and the result is always rooted
//! (an empty path is `/`).

use std::borrow::Cow;

/// Go's `path.Clean`, rooted, keeping a trailing slash. Borrows when the input is already clean.
pub fn clean_path(path: &str) -> Cow<'_, str> {
    if is_clean(path) {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(clean_owned(path))
    }
}

fn clean_owned(path: &str) -> String {
    let bytes = path.as_bytes();
    let n = bytes.len();
    let mut out: Vec<u8> = Vec::with_capacity(n + 1);
    out.push(b'/');
    let mut r = 0;
    while r < n {
        // An empty or `.` segment adds nothing.
        let empty = bytes[r] == b'/' || (bytes[r] == b'.' && (r + 1 == n || bytes[r + 1] == b'/'));
        if empty {
            r += 1;
        } else if bytes[r] == b'.'
            && r + 1 < n
            && bytes[r + 1] == b'.'
            && (r + 2 == n || bytes[r + 2] == b'/')
        {
            r += 2;
            // Back up to the previous slash; `..` at the root stays at the root.
            while out.len() > 1 && out[out.len() - 1] != b'/' {
                out.pop();
            }
            if out.len() > 1 {
                out.pop();
            }
        } else {
            if out.len() > 1 {
                out.push(b'/');
            }
            while r < n && bytes[r] != b'/' {
                out.push(bytes[r]);
                r += 1;
            }
        }
    }
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    if trailing && out.len() > 1 {
        out.push(b'/');
    }
    // Only whole segments were copied, split at ASCII '/', so the bytes stay valid UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

/// One pass over the bytes: this runs on every request, and each substring search would set up
/// a searcher of its own. Clean means: rooted, and no segment after a slash is `.`, `..` or
/// empty, except an empty last one (the kept trailing slash).
fn is_clean(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut i = 1;
    loop {
        let rest = &b[i.min(b.len())..];
        let end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
        let last = end == rest.len();
        match &rest[..end] {
            b"." | b".." => return false,
            b"" if !last => return false,
            _ if last => return true,
            _ => i += end + 1,
        }
    }
}

/// Decodes `%XX` escapes as Go's `url.PathUnescape` would for a path; malformed escapes are kept
/// literally. Bytes that decode to invalid UTF-8 are replaced with U+FFFD (Go keeps the raw bytes;
/// a rule cannot name them in a UTF-8 pattern either way).
pub fn decode_path(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `scheme://authority/path`: the string rules are matched against. `path` must not carry the
/// query; it is decoded and cleaned here. `authority` keeps its port, as Go's `URL.Host` does.
pub fn match_target(scheme: &str, authority: &str, path: &str) -> String {
    let decoded = decode_path(path);
    let cleaned = clean_path(&decoded);
    let mut s = String::with_capacity(scheme.len() + 3 + authority.len() + cleaned.len());
    s.push_str(scheme);
    s.push_str("://");
    s.push_str(authority);
    s.push_str(&cleaned);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go_path_clean_for_rooted_paths() {
        let cases = [
            ("", "/"),
            ("/", "/"),
            ("/abc", "/abc"),
            ("/a/b/c", "/a/b/c"),
            ("//abc", "/abc"),
            ("/abc//def//ghi", "/abc/def/ghi"),
            ("/./abc", "/abc"),
            ("/abc/./def", "/abc/def"),
            ("/abc/def/ghi/../jkl", "/abc/def/jkl"),
            ("/abc/def/../../..", "/"),
            ("/../abc", "/abc"),
            ("/public/../admin", "/admin"),
            ("abc/def", "/abc/def"),
            ("/a/b/..c/.d", "/a/b/..c/.d"),
        ];
        for (input, want) in cases {
            assert_eq!(clean_path(input), want, "clean_path({input:?})");
        }
    }

    #[test]
    fn fast_clean_check_agrees_with_cleaning() {
        // Every path over a small alphabet up to length 6: the fast check must say "clean"
        // exactly when cleaning changes nothing.
        let alphabet = ['/', '.', 'a'];
        let mut paths = vec![String::new()];
        for _ in 0..6 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(longer);
        }
        paths.sort();
        paths.dedup();
        for p in &paths {
            let cleaned = clean_owned(p);
            assert_eq!(
                is_clean(p),
                cleaned == *p,
                "path {p:?} cleans to {cleaned:?}"
            );
        }
    }

    #[test]
    fn clean_keeps_trailing_slash() {
        assert_eq!(clean_path("/abc/"), "/abc/");
        assert_eq!(clean_path("/abc//"), "/abc/");
        assert_eq!(clean_path("/abc/def/.."), "/abc/");
        assert_eq!(clean_path("/abc/."), "/abc/");
        assert_eq!(clean_path("/.."), "/");
    }

    #[test]
    fn clean_borrows_when_already_clean() {
        assert!(matches!(clean_path("/users/123"), Cow::Borrowed(_)));
        assert!(matches!(clean_path("/users//123"), Cow::Owned(_)));
    }

    #[test]
    fn decode_handles_valid_and_malformed_escapes() {
        assert_eq!(decode_path("/a%20b"), "/a b");
        assert_eq!(decode_path("/%61dmin"), "/admin");
        assert_eq!(decode_path("/x%2Fy"), "/x/y");
        assert_eq!(decode_path("/bad%zz/%"), "/bad%zz/%");
        assert_eq!(decode_path("/end%4"), "/end%4");
        assert_eq!(decode_path("/caf%C3%A9"), "/café");
    }

    #[test]
    fn target_is_scheme_host_clean_path() {
        assert_eq!(
            match_target("https", "api.example.com", "/a/./b"),
            "https://api.example.com/a/b"
        );
        assert_eq!(match_target("http", "h:8080", ""), "http://h:8080/");
        // Encoded traversal resolves after decoding, as it would upstream.
        assert_eq!(
            match_target("http", "h", "/public/%2e%2e/admin"),
            "http://h/admin"
        );
        assert_eq!(
            match_target("http", "h", "/public/..%2Fadmin"),
            "http://h/admin"
        );
    }
}
