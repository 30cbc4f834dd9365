//! Bearer tokens and the key sets they are verified with.

use portcullis_core::host::{Host, KeyLookup};
use portcullis_core::jwks::{Key, KeySet, from_fetch};
use portcullis_core::jwt::{self, JwtRequirements};
use std::sync::{Arc, LazyLock};

use jsonwebtoken::{Algorithm, EncodingKey, jwk::Jwk};

/// The core's test keys (`core/tests/fixtures`), published as one JWKS.
static KEYS: LazyLock<Arc<KeySet>> = LazyLock::new(|| {
    let keys: Vec<serde_json::Value> = fixture_keys()
        .into_iter()
        .filter_map(|(kid, alg, key)| {
            let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).ok()?).ok()?;
            jwk["kid"] = kid.into();
            jwk["use"] = "sig".into();
            Some(jwk)
        })
        .collect();
    let doc = serde_json::json!({ "keys": keys }).to_string();
    Arc::new(KeySet::parse(doc.as_bytes()).unwrap_or_default())
});

/// (kid, algorithm, private key) of each fixture; the seed corpus holds tokens they signed.
pub fn fixture_keys() -> Vec<(&'static str, Algorithm, EncodingKey)> {
    const RSA: &str = include_str!("../../core/tests/fixtures/rsa.pem");
    const EC256: &str = include_str!("../../core/tests/fixtures/ec256.pem");
    const EC384: &str = include_str!("../../core/tests/fixtures/ec384.pem");
    const ED: &str = include_str!("../../core/tests/fixtures/ed25519.pem");
    let mut out = Vec::new();
    if let Ok(k) = EncodingKey::from_rsa_pem(RSA.as_bytes()) {
        out.push(("rsa", Algorithm::RS256, k));
    }
    if let Ok(k) = EncodingKey::from_ec_pem(EC256.as_bytes()) {
        out.push(("ec256", Algorithm::ES256, k));
    }
    if let Ok(k) = EncodingKey::from_ec_pem(EC384.as_bytes()) {
        out.push(("ec384", Algorithm::ES384, k));
    }
    if let Ok(k) = EncodingKey::from_ed_pem(ED.as_bytes()) {
        out.push(("ed", Algorithm::EdDSA, k));
    }
    out
}

/// A host with the fixture keys, a fixed clock and no native crypto (pure Rust verifies).
struct FixtureHost;

/// 2026-11-29: seeds carry `exp` after it.
const NOW: u64 = 1_795_000_000;

impl Host for FixtureHost {
    fn now(&mut self) -> u64 {
        NOW
    }
    fn keys(&mut self, _jwks_url: &str) -> KeyLookup {
        KeyLookup::Ready(Arc::clone(&KEYS))
    }
    fn unknown_kid(&mut self, _jwks_urls: &[String]) -> bool {
        false
    }
    fn verify_native(&mut self, _: Algorithm, _: &Key, _: &[u8], _: &[u8]) -> Option<bool> {
        None
    }
}

/// Any token text. Accepted only when an allowed asymmetric algorithm's signature, checked
/// again here with jsonwebtoken over the same key, holds, and the claims are in time.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = jwt::looks_like_jwt(token);
    let req = JwtRequirements {
        jwks_urls: vec!["fixture".into()],
        allowed_algorithms: vec![
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ],
        ..JwtRequirements::default()
    };
    let keys = [Arc::clone(&KEYS)];
    let Ok(verified) = jwt::authenticate(token, &keys, &req, &mut FixtureHost) else {
        return;
    };
    let parsed = match jwt::parse(token) {
        Ok(p) => p,
        Err(e) => panic!("accepted a token that does not parse: {e}"),
    };
    let alg: Algorithm = match parsed.alg.parse() {
        Ok(a) => a,
        Err(_) => panic!("accepted alg {:?}", parsed.alg),
    };
    assert!(
        req.allowed_algorithms.contains(&alg),
        "accepted alg {alg:?}"
    );
    let kid = parsed.kid.as_deref().unwrap_or_default();
    let Some(key) = KEYS.find(kid) else {
        panic!("accepted unknown kid {kid:?}");
    };
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(
        jsonwebtoken::crypto::verify(
            signature,
            parsed.signing_input.as_bytes(),
            key.decoding_key(),
            alg
        )
        .unwrap_or(false),
        "accepted a signature jsonwebtoken refuses"
    );
    assert!(
        verified.exp.is_none_or(|exp| exp >= NOW),
        "accepted an expired token"
    );
}

/// Any JWKS document, as a fetch answered it: parses or is refused; parsed keys are usable.
pub fn jwks(data: &[u8]) {
    let fetched = from_fetch(Some((200, data)));
    let parsed = KeySet::parse(data);
    assert_eq!(fetched.is_ok(), parsed.is_ok(), "fetch and parse disagree");
    if let Ok(set) = parsed {
        for key in set.keys() {
            assert!(set.find(key.kid()).is_some());
            let _ = (key.alg(), key.family(), key.spki_der());
            assert!(
                !key.verify_rust(Algorithm::ES256, b"message", &[0u8; 64]),
                "a zero signature verified"
            );
        }
    }
}
