//! Translates one `<...>` glob section (gobwas/glob dialect with separators `.` and `/`, as
//! Oathkeeper compiles it) into `regex` syntax, which matches in linear time.
//!
//! `*` is any run of non-separators (possibly empty), `**` any run at all, `?` exactly one
//! non-separator, `[abc]` / `[a-z]` a class (a comma inside is literal), `[!abc]` its negation,
//! `{a,b}` alternation of sub-globs, `\x` a literal `x`.

use std::iter::Peekable;
use std::str::Chars;

const NOT_SEPARATOR: &str = "[^./]";

pub(super) fn translate(glob: &str, out: &mut String) -> Result<(), String> {
    let mut chars = glob.chars().peekable();
    match sequence(&mut chars, out, false)? {
        None => Ok(()),
        Some(c) => Err(format!("unexpected {c:?}")),
    }
}

/// Translates until the end or, inside braces, until a `,` or `}` (returned, consumed).
fn sequence(
    chars: &mut Peekable<Chars<'_>>,
    out: &mut String,
    in_braces: bool,
) -> Result<Option<char>, String> {
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if chars.peek() == Some(&'*') {
                    while chars.peek() == Some(&'*') {
                        chars.next();
                    }
                    out.push_str("(?s:.*)");
                } else {
                    out.push_str(NOT_SEPARATOR);
                    out.push('*');
                }
            }
            '?' => out.push_str(NOT_SEPARATOR),
            '[' => class(chars, out)?,
            '{' => {
                out.push_str("(?:");
                loop {
                    match sequence(chars, out, true)? {
                        Some(',') => out.push('|'),
                        Some('}') => break,
                        _ => return Err("unclosed '{'".to_string()),
                    }
                }
                out.push(')');
            }
            ',' | '}' if in_braces => return Ok(Some(c)),
            '\\' => match chars.next() {
                Some(lit) => push_literal(out, lit),
                None => return Err("trailing '\\'".to_string()),
            },
            other => push_literal(out, other),
        }
    }
    Ok(None)
}

fn push_literal(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

fn class(chars: &mut Peekable<Chars<'_>>, out: &mut String) -> Result<(), String> {
    out.push('[');
    if chars.peek() == Some(&'!') {
        chars.next();
        out.push('^');
    }
    let mut empty = true;
    loop {
        let Some(c) = chars.next() else {
            return Err("unclosed '['".to_string());
        };
        match c {
            ']' if !empty => break,
            ']' => return Err("empty character class".to_string()),
            '-' if !empty && chars.peek().is_some_and(|&n| n != ']') => out.push('-'),
            _ => {
                // Inside a class, escape everything that is special to `regex` classes.
                if matches!(c, '\\' | '[' | ']' | '^' | '-' | '&' | '~') {
                    out.push('\\');
                }
                out.push(c);
                empty = false;
            }
        }
    }
    out.push(']');
    Ok(())
}
