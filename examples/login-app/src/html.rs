//! Pages. Everything shown that did not come from this file (scopes, claims, client names, the
//! upstream's body, error text) goes through [`escape`]: it may come from a hostile client
//! registration or a hostile query string.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// `s` with the five HTML-significant characters replaced, safe in text and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page around `body` (already escaped HTML), with `title` escaped here.
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let title = escape(title);
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Portcullis example</title><style>{STYLE}</style></head>\
         <body><main><p class=\"brand\">Portcullis example app</p><h1>{title}</h1>{body}</main></body></html>"
    );
    (status, Html(html)).into_response()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1c1e21;margin:0}\
main{max-width:46rem;margin:2rem auto;background:#fff;padding:1.5rem 2rem;border-radius:8px;\
box-shadow:0 1px 3px rgba(0,0,0,.15)}.brand{color:#666;font-size:.85rem;margin:0}\
h1{margin-top:.3rem}table{border-collapse:collapse;width:100%}td,th{text-align:left;\
padding:.3rem .5rem;border-bottom:1px solid #e3e3e3;vertical-align:top}\
code,pre{font-family:ui-monospace,monospace;font-size:.85rem;word-break:break-all}\
pre{background:#f4f5f7;padding:.6rem;white-space:pre-wrap}.ok{color:#117a2b;font-weight:600}\
.bad{color:#b00020;font-weight:600}button,.button{font-size:1rem;padding:.45rem 1.1rem;\
margin-right:.5rem;border-radius:5px;border:1px solid #2f5fd0;background:#2f5fd0;color:#fff;\
text-decoration:none;display:inline-block;cursor:pointer}button.secondary{background:#fff;\
color:#2f5fd0}label{display:block;margin:.6rem 0}input{font-size:1rem;padding:.3rem;width:16rem}";

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_and_quotes_are_neutralised() {
        assert_eq!(
            escape(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }
}
