//! Unicode property classes (`\p{...}`, `\P{...}`, `\pL`) are refused in URL patterns, by the
//! core itself and the same way in every build.
//!
//! Their tables (general categories, scripts, ages, boolean properties, segmentation) are most
//! of the regex engine's data, and the filter is loaded into every sidecar, so the filter build
//! leaves them out. The control plane's native build gets them anyway (other crates enable
//! them and Cargo unifies features): if the regex engine decided, the control plane would
//! accept rules every filter then refuses. Checking the text first makes both refuse the same
//! patterns with the same error. Perl classes (`\w`, `\d`, `\s`, `\b`) and case-insensitive
//! matching keep their (small) tables and stay Unicode-aware.

/// `Err` naming the first property class in `expr` (a regular expression in `regex` or
/// `fancy-regex` syntax). A `\` always takes the next character with it, inside brackets too,
/// so `\\p` (a literal backslash, then `p`) is not a class. A `\p` in an `(?x)` comment is
/// refused as well: a harmless over-refusal, identical in both builds.
pub(super) fn refuse(expr: &str) -> Result<(), String> {
    let mut chars = expr.char_indices();
    while let Some((at, c)) = chars.next() {
        if c != '\\' {
            continue;
        }
        if let Some((_, 'p' | 'P')) = chars.next() {
            return Err(format!(
                "Unicode property class {:?} is not supported (the filter carries no Unicode \
                 property tables); use explicit ranges such as [a-zA-Z] or \\w",
                spelling(&expr[at..])
            ));
        }
    }
    Ok(())
}

/// The class at the start of `rest` (`\p{Greek}`, `\pL`), as written.
fn spelling(rest: &str) -> &str {
    let end = if rest[2..].starts_with('{') {
        rest.find('}').map_or(rest.len(), |close| close + 1)
    } else {
        rest.char_indices().nth(3).map_or(rest.len(), |(i, _)| i)
    };
    &rest[..end]
}
