//! Times the per-request path (cache-hit JWT, 100 rules), to see what the core costs apart from
//! the host: natively with `cargo run --release -p portcullis-core --example hotpath`, or in V8
//! (the engine Envoy embeds, through Node.js) with `make bench-core`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::authn::Caches;
use portcullis_core::config::Engine;
use portcullis_core::host::{Host, KeyLookup};
use portcullis_core::jwks::{Algorithm, Key, KeySet};
use portcullis_core::pipeline::{Evaluation, Step};
use portcullis_core::request::RequestBuilder;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

struct H(Arc<KeySet>);
impl Host for H {
    fn now(&mut self) -> u64 {
        1_700_000_000
    }
    fn keys(&mut self, _: &str) -> KeyLookup {
        KeyLookup::Ready(self.0.clone())
    }
    fn unknown_kid(&mut self, _: &[String]) -> bool {
        false
    }
    fn verify_native(&mut self, _: Algorithm, _: &Key, _: &[u8], _: &[u8]) -> Option<bool> {
        None
    }
}

fn main() {
    let pem = include_str!("../tests/fixtures/ec256.pem");
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    // Derive the public JWK from the fixture via jsonwebtoken's own conversion.
    let public = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    let mut public = serde_json::to_value(public).unwrap();
    public["kid"] = json!("k");
    let keys = Arc::new(KeySet::parse(json!({"keys": [public]}).to_string().as_bytes()).unwrap());
    let mut rules: Vec<_> = (0..99)
        .map(|i| json!({"id": format!("r{i}"), "match": {"url": format!("http://<[^/]+>/svc-{i:02}/<.*>"), "methods": ["GET"]},
            "authenticators": [{"handler": "jwt"}], "authorizer": {"handler": "allow"}, "mutators": [{"handler": "header"}]}))
        .collect();
    rules.push(json!({"id": "bench", "match": {"url": "http://<[^/]+>/api/<.*>", "methods": ["GET"]},
        "authenticators": [{"handler": "jwt"}], "authorizer": {"handler": "allow"}, "mutators": [{"handler": "header"}]}));
    let cfg = json!({
        "authenticators": {"jwt": {"enabled": true, "config": {"jwks_urls": ["http://127.0.0.1:1/jwks.json"], "allowed_algorithms": ["ES256"]}}},
        "authorizers": {"allow": {"enabled": true}},
        "mutators": {"header": {"enabled": true, "config": {"headers": {"X-User": "{{ print .Subject }}"}}}},
        "rules": rules
    });
    let engine = Engine::from_json(cfg.to_string().as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("k".into());
    let token = jsonwebtoken::encode(
        &header,
        // Padded to the size of the benchmark's RS256 tokens (~630 bytes).
        &json!({"sub": "bench", "exp": 1_800_000_000u64, "aud": ["a"], "scp": ["read"], "pad": "p".repeat(300)}),
        &enc,
    )
    .unwrap();
    let mut host = H(keys);
    let mut caches = Caches::new(10_000);
    // What Envoy hands the filter for a wrk request, pseudo-headers first.
    let authorization = format!("Bearer {token}");
    let entries: Vec<(&[u8], &[u8])> = vec![
        (b":authority", b"127.0.0.1:10000"),
        (b":path", b"/api/resource"),
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b"authorization", authorization.as_bytes()),
        (b"user-agent", b"wrk"),
        (b"accept", b"*/*"),
        (b"x-forwarded-proto", b"http"),
        (b"x-request-id", b"5b6c0f4e-51b1-4c35-9b35-5a4e3f3f2b1e"),
    ];
    let read = || {
        let bytes = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut b = RequestBuilder::new(bytes, entries.len());
        for (k, v) in &entries {
            b.entry(k, v);
        }
        b.build()
    };
    let n: u32 = std::env::var("HOTPATH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let start = Instant::now();
    for _ in 0..n {
        let mut ev = Evaluation::new(read());
        match ev.advance(&engine, &mut host, &mut caches) {
            Step::Allow(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let per = start.elapsed() / n;
    println!("cache-hit evaluation, 100 rules: {per:?} per request");
    let keyer = portcullis_core::cache::Keyer::default();
    let start = Instant::now();
    let mut acc = 0u128;
    for _ in 0..n {
        acc ^= keyer.key(&[b"http://127.0.0.1:1/jwks.json", token.as_bytes()]);
    }
    println!(
        "  of which the cache key of a {}-byte token: {:?} (checksum {acc:x})",
        token.len(),
        start.elapsed() / n
    );
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(read());
    }
    println!("  and building the request: {:?}", start.elapsed() / n);
}
