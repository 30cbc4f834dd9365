//! OpenID Connect Front-Channel Logout 1.0: after a logout, the browser gets a page that loads
//! each participating client's `frontchannel_logout_uri` in a hidden iframe (with `iss` and
//! `sid` when the client set `frontchannel_logout_session_required`), then goes on to the
//! post-logout redirect, as Hydra's logout page does.
//!
//! The page's one script is constant, allowed by its hash in the Content-Security-Policy, so
//! nothing else can run there; every URL is HTML-escaped into attributes. The script moves on
//! when every frame has loaded, or after [`GIVE_UP_MS`] so a dead relying party cannot hold the
//! browser; without JavaScript the frames load and a link continues.

use crate::browser_session::Participant;
use crate::crypto::sha256;
use crate::oauth2_error::append_query;
use crate::server::Service;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use portcullis_core::error_handler::html_escape;
use std::sync::LazyLock;

/// How long the page waits for the frames before it continues anyway.
pub const GIVE_UP_MS: u32 = 4000;

const SCRIPT: &str = "(function(){var next=document.getElementById('next').href,done=false;\
function go(){if(!done){done=true;window.location.replace(next);}}\
var frames=document.querySelectorAll('iframe[data-src]'),left=frames.length;\
frames.forEach(function(f){f.addEventListener('load',function(){if(--left<=0)go();});\
f.src=f.getAttribute('data-src');});if(left===0)go();setTimeout(go,4000);})();";

static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(sha256(SCRIPT.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; frame-src http: https:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

/// The front-channel URIs to load for `ended` (registered URIs only, with `iss` and `sid` if
/// the client asks for them).
pub fn frame_urls(svc: &Service, ended: &[Participant]) -> Vec<String> {
    ended
        .iter()
        .filter_map(|p| {
            let record = svc.clients.lookup(&p.client_id)?;
            let c = &record.client;
            if c.frontchannel_logout_uri.is_empty() {
                return None;
            }
            Some(if c.frontchannel_logout_session_required {
                append_query(
                    &c.frontchannel_logout_uri,
                    &[("iss", svc.config.issuer.as_str()), ("sid", p.sid.as_str())],
                )
            } else {
                c.frontchannel_logout_uri.clone()
            })
        })
        .collect()
}

/// The logout page: `frames` in iframes, then `next`.
pub fn page(frames: &[String], next: &str) -> Response {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Signing out</title></head>\
         <body><p>Signing out&hellip;</p>\n",
    );
    for f in frames {
        let f = html_escape(f);
        html.push_str(&format!(
            "<iframe data-src=\"{f}\" width=\"0\" height=\"0\" style=\"display:none\"></iframe>\n\
             <noscript><iframe src=\"{f}\" width=\"0\" height=\"0\"></iframe></noscript>\n"
        ));
    }
    html.push_str(&format!(
        "<p><a id=\"next\" href=\"{}\">Continue</a></p>\n<script>{SCRIPT}</script></body></html>\n",
        html_escape(next)
    ));
    let mut resp = (StatusCode::OK, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(&CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_gives_up_when_the_constant_says() {
        assert!(SCRIPT.contains(&format!("setTimeout(go,{GIVE_UP_MS})")));
    }

    #[tokio::test]
    async fn urls_are_escaped_into_attributes() {
        let resp = page(
            &["https://rp.example/fc?a=1&b=\"><script>x</script>".to_string()],
            "https://rp.example/bye?state=s&x='y'",
        );
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_string();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains(
            "data-src=\"https://rp.example/fc?a=1&amp;b=&#34;&gt;&lt;script&gt;x&lt;/script&gt;\""
        ));
        assert!(body.contains("href=\"https://rp.example/bye?state=s&amp;x=&#39;y&#39;\""));
        assert_eq!(body.matches("<script>").count(), 1);
        assert!(csp.contains("script-src 'sha256-"));
    }
}
