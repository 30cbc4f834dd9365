//! The subset of Go's `text/template` that Oathkeeper rules use in mutators and `remote_json`
//! payloads, compiled once at config load and rendered against a [`Session`] per request.
//!
//! Supported actions: `{{ X }}`, `{{ print X Y ... }}` (Go's `fmt.Sprint` spacing: a space
//! between two operands when neither is a string), `{{ printIndex .MatchContext.RegexpCaptureGroups N }}`,
//! `{{ .Header.Get "Name" }}`, `{{ .MatchContext.Header.Get "Name" }}`, comments `{{/* */}}`, and
//! the trim markers `{{- ` / ` -}}`. Operands are string literals and the fields `.Subject`,
//! `.Extra[.key...]`, `.MatchContext.URL`, `.MatchContext.Method`,
//! `.MatchContext.RegexpCaptureGroups`. Values print as Go's `%v` prints what `encoding/json`
//! decoded (numbers are float64: `3`, `1.5`, `1e+21`; arrays `[a b]`; objects `map[k:v]`).
//! A missing key or a JSON `null` at the top of an operand prints nothing (Go would print
//! `<no value>`/`<nil>`, which no header or payload wants). Everything else is refused at compile
//! time, so a rule that would behave differently from Oathkeeper never loads.
//!
//! A `remote_json` payload is compiled with [`Template::compile_json`]: every interpolated value
//! is written JSON-string-escaped, so a client-chosen query parameter, capture group, header or
//! claim cannot close the string it sits in and add members (`","action":"read`). Oathkeeper
//! writes them raw; the literal text of the template is the rule author's and is kept as written.

use crate::session::{Session, header_get};
use serde_json::{Map, Value};
use std::fmt::Write;
use thiserror::Error;

/// A template that does not compile, with the byte offset of the offending action.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("template action {action:?} at byte {position}: {message}")]
pub struct TemplateError {
    pub action: String,
    pub position: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Subject,
    Extra(Vec<String>),
    Url,
    Method,
    CaptureGroups,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Str(String),
    Field(Field),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Print(Vec<Operand>),
    PrintIndex(usize),
    HeaderGet { request: bool, name: String },
}

/// How interpolated values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Escaping {
    /// As Go's `text/template` prints them (header values, URLs).
    #[default]
    Raw,
    /// As the inside of a JSON string: values cannot end the string they are written into.
    JsonString,
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    nodes: Vec<Node>,
    escaping: Escaping,
}

/// The rendering buffer: literal text goes in as written, interpolated values through the
/// template's escaping.
struct Out<'a> {
    buf: &'a mut String,
    escaping: Escaping,
}

impl Out<'_> {
    fn value(&mut self, s: &str) {
        match self.escaping {
            Escaping::Raw => self.buf.push_str(s),
            Escaping::JsonString => json_string_escape_into(s, self.buf),
        }
    }
}

/// Appends `s` escaped for the inside of a JSON string (RFC 8259 §7): `"`, `\\` and control
/// characters, plus U+2028/U+2029, which JSON allows raw but JavaScript-based parsers do not.
fn json_string_escape_into(s: &str, out: &mut String) {
    let needs = |c: char| {
        matches!(
            c,
            '"' | '\\' | '\u{0}'..='\u{1f}' | '\u{7f}' | '\u{2028}' | '\u{2029}'
        )
    };
    let mut rest = s;
    while let Some(i) = rest.find(needs) {
        out.push_str(&rest[..i]);
        let Some(c) = rest[i..].chars().next() else {
            break;
        };
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.push_str(rest);
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Field(Vec<String>),
    Str(String),
    Int(i64),
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Byte index of the `}}` closing an action that starts at `from`, skipping string literals.
fn find_close(src: &str, from: usize) -> Option<usize> {
    let b = src.as_bytes();
    let mut i = from;
    while i + 1 < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b[i + 1] == b'}' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn lex(body: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = body.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if is_space(c) {
            chars.next();
        } else if c == '.' {
            let mut segments = Vec::new();
            while chars.peek().is_some_and(|&(_, c)| c == '.') {
                chars.next();
                let mut seg = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' {
                        seg.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if seg.is_empty() {
                    return Err(
                        "a field path needs a name after '.' ('.' alone is not supported)".into(),
                    );
                }
                segments.push(seg);
            }
            tokens.push(Token::Field(segments));
        } else if c.is_alphabetic() || c == '_' {
            let mut ident = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c.is_alphanumeric() || c == '_' {
                    ident.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(Token::Ident(ident));
        } else if c.is_ascii_digit() || c == '-' {
            let mut num = String::new();
            num.push(c);
            chars.next();
            while let Some(&(_, c)) = chars.peek() {
                if c.is_ascii_digit() {
                    num.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            let n = num
                .parse::<i64>()
                .map_err(|_| format!("invalid number {num:?}"))?;
            tokens.push(Token::Int(n));
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string literal".into()),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, 't')) => s.push('\t'),
                        Some((_, 'r')) => s.push('\r'),
                        Some((_, '\\')) => s.push('\\'),
                        Some((_, '"')) => s.push('"'),
                        Some((_, '\'')) => s.push('\''),
                        other => {
                            return Err(format!(
                                "unsupported escape {:?} in string literal",
                                other.map(|x| x.1)
                            ));
                        }
                    },
                    Some((_, c)) => s.push(c),
                }
            }
            tokens.push(Token::Str(s));
        } else if c == '`' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated raw string literal".into()),
                    Some((_, '`')) => break,
                    Some((_, c)) => s.push(c),
                }
            }
            tokens.push(Token::Str(s));
        } else {
            let what = match c {
                '|' => "pipelines ('|') are not supported".to_string(),
                '(' | ')' => "parenthesised expressions are not supported".to_string(),
                '$' => "variables are not supported".to_string(),
                _ => format!("unexpected character {c:?} at action offset {start}"),
            };
            return Err(what);
        }
    }
    Ok(tokens)
}

fn field(segments: &[String]) -> Result<Field, String> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["Subject"] => Ok(Field::Subject),
        ["Extra", rest @ ..] => Ok(Field::Extra(rest.iter().map(|k| k.to_string()).collect())),
        ["MatchContext", "URL"] => Ok(Field::Url),
        ["MatchContext", "Method"] => Ok(Field::Method),
        ["MatchContext", "RegexpCaptureGroups"] => Ok(Field::CaptureGroups),
        _ => Err(format!(
            "unsupported field .{} (use .Subject, .Extra..., .MatchContext.URL, .MatchContext.Method, \
             .MatchContext.RegexpCaptureGroups, .Header.Get or .MatchContext.Header.Get)",
            segments.join(".")
        )),
    }
}

fn operand(token: Token) -> Result<Operand, String> {
    match token {
        Token::Str(s) => Ok(Operand::Str(s)),
        Token::Field(f) => Ok(Operand::Field(field(&f)?)),
        Token::Int(n) => Err(format!("number {n} is not a supported operand")),
        Token::Ident(i) => Err(format!("function {i:?} is not supported as an argument")),
    }
}

fn action(body: &str) -> Result<Option<Node>, String> {
    let trimmed = body.trim_matches(is_space);
    if trimmed.starts_with("/*") {
        return if trimmed.ends_with("*/") && trimmed.len() >= 4 {
            Ok(None)
        } else {
            Err("unclosed comment".into())
        };
    }
    let mut tokens = lex(trimmed)?.into_iter();
    let Some(first) = tokens.next() else {
        return Err("empty action".into());
    };
    let rest: Vec<Token> = tokens.collect();
    match first {
        Token::Ident(name) if name == "print" => Ok(Some(Node::Print(
            rest.into_iter().map(operand).collect::<Result<_, _>>()?,
        ))),
        Token::Ident(name) if name == "printIndex" => match rest.as_slice() {
            [Token::Field(f), Token::Int(n)] if field(f) == Ok(Field::CaptureGroups) => {
                // A negative index prints nothing, like Oathkeeper's bounds check.
                Ok(Some(
                    usize::try_from(*n).map_or(Node::Text(String::new()), Node::PrintIndex),
                ))
            }
            _ => Err(
                "printIndex takes .MatchContext.RegexpCaptureGroups and an integer index".into(),
            ),
        },
        Token::Ident(name) => Err(match name.as_str() {
            "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block"
            | "break" | "continue" => {
                format!("{name:?} is not supported (only print, printIndex and field paths are)")
            }
            _ => format!("function {name:?} is not supported (only print and printIndex are)"),
        }),
        Token::Field(segments) => {
            let s: Vec<&str> = segments.iter().map(String::as_str).collect();
            let request = match s.as_slice() {
                ["Header", "Get"] => Some(false),
                ["MatchContext", "Header", "Get"] => Some(true),
                _ => None,
            };
            if let Some(request) = request {
                return match rest.as_slice() {
                    [Token::Str(name)] => Ok(Some(Node::HeaderGet {
                        request,
                        name: name.clone(),
                    })),
                    _ => Err("Header.Get takes exactly one string argument".into()),
                };
            }
            if !rest.is_empty() {
                return Err("a field cannot take arguments".into());
            }
            Ok(Some(Node::Print(vec![Operand::Field(field(&segments)?)])))
        }
        Token::Str(s) if rest.is_empty() => Ok(Some(Node::Print(vec![Operand::Str(s)]))),
        Token::Str(_) | Token::Int(_) => Err("a literal cannot take arguments".into()),
    }
}

impl Template {
    /// A template whose values are written raw (mutator headers, `remote_json` headers).
    pub fn compile(src: &str) -> Result<Template, TemplateError> {
        Self::compile_with(src, Escaping::Raw)
    }

    /// A template rendering a JSON document: every interpolated value is JSON-string-escaped.
    pub fn compile_json(src: &str) -> Result<Template, TemplateError> {
        Self::compile_with(src, Escaping::JsonString)
    }

    fn compile_with(src: &str, escaping: Escaping) -> Result<Template, TemplateError> {
        let mut nodes: Vec<Node> = Vec::new();
        let mut pos = 0;
        let mut trim_next_left = false;
        while pos <= src.len() {
            let Some(open) = src[pos..].find("{{").map(|o| o + pos) else {
                push_text(&mut nodes, &src[pos..], trim_next_left, false);
                break;
            };
            let mut body_start = open + 2;
            let trim_left =
                src[body_start..].starts_with('-') && src[body_start + 1..].starts_with(is_space);
            if trim_left {
                body_start += 1;
            }
            push_text(&mut nodes, &src[pos..open], trim_next_left, trim_left);
            let err = |message: String, end: usize| TemplateError {
                action: src[open..end.min(src.len())].to_string(),
                position: open,
                message,
            };
            let Some(close) = find_close(src, body_start) else {
                return Err(err("unclosed action (no '}}')".into(), src.len()));
            };
            let mut body_end = close;
            let bytes = src.as_bytes();
            trim_next_left = false;
            if close > body_start
                && bytes[close - 1] == b'-'
                && close - 1 > body_start
                && is_space(bytes[close - 2] as char)
            {
                body_end = close - 1;
                trim_next_left = true;
            }
            match action(&src[body_start..body_end]) {
                Ok(Some(node)) => nodes.push(node),
                Ok(None) => {}
                Err(message) => return Err(err(message, close + 2)),
            }
            pos = close + 2;
        }
        Ok(Template { nodes, escaping })
    }

    /// Appends the rendering to `out`. Never fails: anything missing renders empty.
    pub fn render(&self, session: &Session, out: &mut String) {
        let mut out = Out {
            buf: out,
            escaping: self.escaping,
        };
        for node in &self.nodes {
            match node {
                Node::Text(t) => out.buf.push_str(t),
                Node::PrintIndex(i) => {
                    if let Some(g) = session.match_context.regexp_capture_groups.get(*i) {
                        out.value(g);
                    }
                }
                Node::HeaderGet { request, name } => {
                    let headers = if *request {
                        &session.match_context.header
                    } else {
                        &session.header
                    };
                    if let Some(v) = header_get(headers, name) {
                        out.value(v);
                    }
                }
                Node::Print(operands) => {
                    let mut prev_string = true;
                    for (n, op) in operands.iter().enumerate() {
                        let is_string = operand_is_string(op, session);
                        if n > 0 && !is_string && !prev_string {
                            out.buf.push(' ');
                        }
                        write_operand(op, session, &mut out);
                        prev_string = is_string;
                    }
                }
            }
        }
    }

    pub fn render_to_string(&self, session: &Session) -> String {
        let mut out = String::new();
        self.render(session, &mut out);
        out
    }

    /// True when the template reads the URL pattern's capture groups.
    pub fn reads_captures(&self) -> bool {
        self.nodes.iter().any(|n| match n {
            Node::PrintIndex(_) => true,
            Node::Print(ops) => ops
                .iter()
                .any(|o| matches!(o, Operand::Field(Field::CaptureGroups))),
            _ => false,
        })
    }

    /// True when the template reads the request's headers (`.MatchContext.Header.Get`), so the
    /// pipeline must keep a copy of them in the session.
    pub fn reads_request_headers(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n, Node::HeaderGet { request: true, .. }))
    }

    /// True when the template has no actions (the text is its own rendering).
    pub fn is_static(&self) -> bool {
        self.nodes.iter().all(|n| matches!(n, Node::Text(_)))
    }
}

fn push_text(nodes: &mut Vec<Node>, text: &str, trim_left: bool, trim_right: bool) {
    let mut t = text;
    if trim_left {
        t = t.trim_start_matches(is_space);
    }
    if trim_right {
        t = t.trim_end_matches(is_space);
    }
    if !t.is_empty() {
        nodes.push(Node::Text(t.to_string()));
    }
}

fn extra_value<'a>(extra: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = extra.get(first)?;
    for key in rest {
        v = v.as_object()?.get(key)?;
    }
    Some(v)
}

fn operand_is_string(op: &Operand, session: &Session) -> bool {
    match op {
        Operand::Str(_) => true,
        Operand::Field(Field::Subject | Field::Url | Field::Method) => true,
        Operand::Field(Field::CaptureGroups) => false,
        Operand::Field(Field::Extra(path)) => {
            !path.is_empty() && matches!(extra_value(&session.extra, path), Some(Value::String(_)))
        }
    }
}

fn write_operand(op: &Operand, session: &Session, out: &mut Out<'_>) {
    match op {
        Operand::Str(s) => out.value(s),
        Operand::Field(Field::Subject) => out.value(&session.subject),
        Operand::Field(Field::Url) => out.value(&session.match_context.url),
        Operand::Field(Field::Method) => out.value(&session.match_context.method),
        Operand::Field(Field::CaptureGroups) => {
            out.buf.push('[');
            for (i, g) in session
                .match_context
                .regexp_capture_groups
                .iter()
                .enumerate()
            {
                if i > 0 {
                    out.buf.push(' ');
                }
                out.value(g);
            }
            out.buf.push(']');
        }
        Operand::Field(Field::Extra(path)) if path.is_empty() => write_map(&session.extra, out),
        Operand::Field(Field::Extra(path)) => match extra_value(&session.extra, path) {
            None | Some(Value::Null) => {}
            Some(v) => write_value(v, out),
        },
    }
}

/// Go's `%v` of a value `encoding/json` decoded into `interface{}`.
fn write_value(v: &Value, out: &mut Out<'_>) {
    match v {
        Value::Null => out.buf.push_str("<nil>"),
        Value::Bool(b) => out.buf.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_go_float(n.as_f64().unwrap_or(f64::NAN), out.buf),
        Value::String(s) => out.value(s),
        Value::Array(items) => {
            out.buf.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.buf.push(' ');
                }
                write_value(item, out);
            }
            out.buf.push(']');
        }
        Value::Object(map) => write_map(map, out),
    }
}

fn write_map(map: &Map<String, Value>, out: &mut Out<'_>) {
    // Go's fmt sorts map keys.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    out.buf.push_str("map[");
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.buf.push(' ');
        }
        out.value(k);
        out.buf.push(':');
        if let Some(v) = map.get(k) {
            write_value(v, out);
        }
    }
    out.buf.push(']');
}

/// Go's `%v` for float64: shortest representation, exponent form when the decimal exponent is
/// below -4 or at least 21, written `e+XX` / `e-XX` with at least two digits.
fn write_go_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..21).contains(&exp) {
        let _ = write!(out, "{f}");
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "{mantissa}e{sign}{:02}", exp.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MatchContext;
    use serde_json::json;

    fn session() -> Session {
        let extra = json!({
            "name": "alice",
            "n": 3, "half": 1.5, "big": 1e21, "tiny": 0.00001, "exp": 1700000000,
            "ok": true, "nothing": null,
            "roles": ["a", "b", 2],
            "nested": {"deep": {"value": "x"}, "k": 1}
        });
        Session {
            subject: "sub-1".into(),
            extra: std::sync::Arc::new(extra.as_object().unwrap().clone()),
            header: vec![("X-Set".into(), "mutated".into())],
            match_context: MatchContext {
                regexp_capture_groups: vec!["users".into(), "42".into()],
                url: "https://h/users/42?x=1".into(),
                method: "GET".into(),
                header: vec![
                    ("Authorization".into(), "Bearer t".into()),
                    ("X-Trace".into(), "abc".into()),
                ],
            },
        }
    }

    fn render(src: &str) -> String {
        Template::compile(src).unwrap().render_to_string(&session())
    }

    #[test]
    fn text_and_fields() {
        assert_eq!(render("hello"), "hello");
        assert_eq!(render(""), "");
        assert_eq!(render("{{ print .Subject }}"), "sub-1");
        assert_eq!(render("id={{.Subject}}!"), "id=sub-1!");
        assert_eq!(
            render("{{ .MatchContext.URL }} {{ .MatchContext.Method }}"),
            "https://h/users/42?x=1 GET"
        );
        assert_eq!(render("{{ print .Extra.nested.deep.value }}"), "x");
        assert_eq!(
            render(
                "[{{ print .Extra.missing }}][{{ .Extra.nested.none.x }}][{{ .Extra.nothing }}]"
            ),
            "[][][]"
        );
        assert_eq!(render("{{ .Extra.name.sub }}"), "");
    }

    #[test]
    fn values_print_like_go() {
        assert_eq!(
            render("{{ .Extra.n }}|{{ .Extra.half }}|{{ .Extra.big }}|{{ .Extra.tiny }}"),
            "3|1.5|1e+21|1e-05"
        );
        assert_eq!(render("{{ .Extra.exp }}"), "1700000000");
        assert_eq!(render("{{ .Extra.ok }}"), "true");
        assert_eq!(render("{{ .Extra.roles }}"), "[a b 2]");
        assert_eq!(render("{{ .Extra.nested }}"), "map[deep:map[value:x] k:1]");
        assert_eq!(
            render("{{ .MatchContext.RegexpCaptureGroups }}"),
            "[users 42]"
        );
    }

    #[test]
    fn print_index_and_bounds() {
        assert_eq!(
            render("{{ printIndex .MatchContext.RegexpCaptureGroups 1 }}"),
            "42"
        );
        assert_eq!(
            render("<{{ printIndex .MatchContext.RegexpCaptureGroups 5 }}>"),
            "<>"
        );
        assert_eq!(
            render("<{{ printIndex .MatchContext.RegexpCaptureGroups -1 }}>"),
            "<>"
        );
    }

    #[test]
    fn print_spacing_follows_sprint() {
        assert_eq!(render(r#"{{ print "a" .Subject }}"#), "asub-1");
        assert_eq!(render("{{ print .Extra.n .Extra.half }}"), "3 1.5");
        assert_eq!(render(r#"{{ print .Extra.n "x" .Extra.half }}"#), "3x1.5");
        assert_eq!(render("{{ print .Extra.name .Extra.n }}"), "alice3");
        assert_eq!(render("{{ print }}"), "");
        assert_eq!(render(r#"{{ "lit\"}}\n" }}"#), "lit\"}}\n");
    }

    #[test]
    fn header_get_is_case_insensitive() {
        assert_eq!(
            render(r#"{{ .MatchContext.Header.Get "authorization" }}"#),
            "Bearer t"
        );
        assert_eq!(render(r#"{{ .Header.Get "x-set" }}"#), "mutated");
        assert_eq!(render(r#"<{{ .Header.Get "X-Missing" }}>"#), "<>");
    }

    #[test]
    fn trim_markers_and_comments() {
        assert_eq!(render("a  \n {{- .Subject -}} \n b"), "asub-1b");
        assert_eq!(render("a {{- .Subject }} b"), "asub-1 b");
        assert_eq!(render("x{{/* note */}}y"), "xy");
    }

    #[test]
    fn remote_json_payload_renders() {
        let t = Template::compile(r#"{"subject": "{{ print .Subject }}", "resource": "{{ printIndex .MatchContext.RegexpCaptureGroups 0 }}"}"#)
            .unwrap();
        let v: Value = serde_json::from_str(&t.render_to_string(&session())).unwrap();
        assert_eq!(v, json!({"subject": "sub-1", "resource": "users"}));
    }

    /// Every hostile spelling a client controls, through every kind of interpolation.
    #[test]
    fn json_payload_values_cannot_leave_their_string() {
        let hostile = [
            r#"","action":"read"#,
            "report\",\"namespace\":\"public",
            r"back\slash\",
            "ctl\u{0}\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}",
            "ls\u{2028}ps\u{2029}",
            "é✓😀",
        ];
        for h in hostile {
            let mut s = session();
            s.subject = h.into();
            s.match_context.regexp_capture_groups = vec![h.into()];
            s.match_context.url = format!("https://h/docs/1?x={h}");
            s.match_context.method = h.to_string().into();
            s.match_context.header = vec![("X-H".into(), h.into())];
            s.header = vec![("X-M".into(), h.into())];
            s.extra = std::sync::Arc::new(
                json!({"c": h, "nested": {"c": h}, "list": [h], h: 1})
                    .as_object()
                    .unwrap()
                    .clone(),
            );
            let t = Template::compile_json(
                r#"{"sub":"{{ print .Subject }}","cap":"{{ printIndex .MatchContext.RegexpCaptureGroups 0 }}","url":"{{ .MatchContext.URL }}","m":"{{ .MatchContext.Method }}","h":"{{ .MatchContext.Header.Get "x-h" }}","mh":"{{ .Header.Get "x-m" }}","c":"{{ .Extra.c }}","n":"{{ print "x" .Extra.nested.c }}","l":"{{ .Extra.list }}","all":"{{ .MatchContext.RegexpCaptureGroups }}","e":"{{ .Extra }}","action":"delete"}"#,
            )
            .unwrap();
            let body = t.render_to_string(&s);
            let v: Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{h:?}: {e}: {body}"));
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 12, "{h:?}: {body}");
            assert_eq!(v["action"], "delete", "{h:?}");
            for k in ["sub", "cap", "m", "h", "mh", "c"] {
                assert_eq!(v[k], h, "{k} of {h:?}");
            }
            assert_eq!(v["url"], format!("https://h/docs/1?x={h}"));
            assert_eq!(v["n"], format!("x{h}"));
            assert_eq!(v["l"], format!("[{h}]"));
            assert_eq!(v["all"], format!("[{h}]"));
            assert!(
                !body.contains('\u{2028}') && !body.contains('\u{0}'),
                "{body}"
            );
        }
    }

    #[test]
    fn json_escaping_leaves_literal_text_and_numbers_alone() {
        let t =
            Template::compile_json(r#"{"n": {{ .Extra.n }}, "s": "{{ .Subject }}", "q": "\""}"#)
                .unwrap();
        assert_eq!(
            t.render_to_string(&session()),
            r#"{"n": 3, "s": "sub-1", "q": "\""}"#
        );
        // A value outside a string cannot add members: its quotes are escaped, so the payload
        // stops being JSON (and the authorizer refuses to send it).
        let mut s = session();
        s.subject = r#"1, "action": "read""#.into();
        let t = Template::compile_json(r#"{"n": {{ .Subject }}}"#).unwrap();
        assert!(serde_json::from_str::<Value>(&t.render_to_string(&s)).is_err());
    }

    #[test]
    fn header_templates_stay_raw() {
        let mut s = session();
        s.subject = r#"a"b\c"#.into();
        let t = Template::compile("{{ .Subject }}").unwrap();
        assert_eq!(t.render_to_string(&s), r#"a"b\c"#);
    }

    #[test]
    fn unsupported_syntax_is_rejected_with_position() {
        let cases = [
            ("ab{{ .Subject | upper }}", 2),
            ("{{ if .Subject }}x{{ end }}", 0),
            ("{{ range .Extra.roles }}{{ end }}", 0),
            ("{{ upper .Subject }}", 0),
            ("{{ .subject }}", 0),
            ("{{ .Header }}", 0),
            ("{{ $x := 1 }}", 0),
            ("{{ printIndex .Extra.roles 0 }}", 0),
            ("{{ .Subject", 0),
            ("x {{ }}", 2),
            ("{{ .MatchContext.Header.Get }}", 0),
            ("{{ print (.Subject) }}", 0),
        ];
        for (src, position) in cases {
            let e = Template::compile(src).unwrap_err();
            assert_eq!(e.position, position, "{src}: {e}");
            assert!(e.action.starts_with("{{"), "{src}: {e}");
        }
        let e = Template::compile("{{ .Subject | upper }}").unwrap_err();
        assert!(e.to_string().contains("pipelines"), "{e}");
    }

    #[test]
    fn static_templates_are_known() {
        assert!(Template::compile("plain").unwrap().is_static());
        assert!(!Template::compile("{{ .Subject }}").unwrap().is_static());
    }
}
