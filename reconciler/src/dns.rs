//! Kubernetes' DNS-1123 name rules. The API server enforces them on object names; manifests
//! mode has no API server, and there names become file names (ECDS files, Secret manifests), so
//! a `..` or `/` must never get that far.

/// A DNS-1123 label (namespaces, Services): 1-63 of `a-z0-9-`, alphanumeric at both ends.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (most object names, Secrets among them): at most 253 characters of
/// dot-separated labels.
pub fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for ok in ["a", "team-a", "x0", "a.b-c"] {
            assert!(is_subdomain(ok), "{ok}");
        }
        assert!(is_label("team-a"));
        for bad in [
            "",
            "..",
            "../outside/escaped",
            "a/b",
            "a..b",
            ".a",
            "a.",
            "-a",
            "A",
            "a_b",
            "a\0b",
            "é",
        ] {
            assert!(!is_subdomain(bad), "{bad:?}");
            assert!(!is_label(bad), "{bad:?}");
        }
        assert!(!is_label("a.b"));
        assert!(!is_label(&"a".repeat(64)));
        assert!(!is_subdomain(&"a".repeat(254)));
    }
}
