//! Times the per-request path natively (cache-hit JWT, 100 rules), to see what the core costs
//! apart from the host: `cargo run --release -p portcullis-core --example hotpath`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::authn::Caches;
use portcullis_core::config::Engine;
use portcullis_core::host::{Host, KeyLookup};
use portcullis_core::jwks::{Algorithm, Key, KeySet};
use portcullis_core::pipeline::{Evaluation, Step};
use portcullis_core::request::Request;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

struct H(Arc<KeySet>);
impl Host for H {
    fn now(&self) -> u64 {
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
        &json!({"sub": "bench", "exp": 1_800_000_000u64, "aud": ["a"], "scp": ["read"]}),
        &enc,
    )
    .unwrap();
    let mut host = H(keys);
    let mut caches = Caches::new(10_000);
    let req = Request {
        method: "GET".into(),
        scheme: "http".into(),
        authority: "127.0.0.1:10000".into(),
        path: "/api/resource".into(),
        headers: vec![
            ("authorization".into(), format!("Bearer {token}")),
            ("user-agent".into(), "wrk".into()),
            ("accept".into(), "*/*".into()),
        ],
        remote_ip: None,
    };
    let n = 200_000;
    let start = Instant::now();
    for _ in 0..n {
        let mut ev = Evaluation::new(req.clone());
        match ev.advance(&engine, &mut host, &mut caches) {
            Step::Allow(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let per = start.elapsed() / n;
    println!("cache-hit evaluation, 100 rules: {per:?} per request (native)");
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
        std::hint::black_box(req.clone());
    }
    println!("  and cloning the request: {:?}", start.elapsed() / n);
}
