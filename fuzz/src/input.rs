//! Splitting one fuzz input into the several values a target needs.

/// The first byte (a selector) and the rest.
pub fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (*first, rest),
        None => (0, data),
    }
}

/// Text before and after the first newline (the second empty when there is none).
pub fn two_lines(data: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(data);
    match text.split_once('\n') {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (text.into_owned(), String::new()),
    }
}
