//! Test fixtures shared by the token modules: keys generated once with `openssl genpkey`, their
//! JWKS, a token signer and a scriptable [`Host`].

use crate::host::{Host, KeyLookup};
use crate::jwks::{Key, KeySet};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::Arc;

pub const RSA_PEM: &str = include_str!("../tests/fixtures/rsa.pem");
pub const EC256_PEM: &str = include_str!("../tests/fixtures/ec256.pem");
pub const EC384_PEM: &str = include_str!("../tests/fixtures/ec384.pem");
pub const ED25519_PEM: &str = include_str!("../tests/fixtures/ed25519.pem");
pub const RSA_SPKI: &[u8] = include_bytes!("../tests/fixtures/rsa.spki.der");
pub const EC256_SPKI: &[u8] = include_bytes!("../tests/fixtures/ec256.spki.der");
pub const EC384_SPKI: &[u8] = include_bytes!("../tests/fixtures/ec384.spki.der");
pub const ED25519_SPKI: &[u8] = include_bytes!("../tests/fixtures/ed25519.spki.der");

pub fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC256_PEM.as_bytes()).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(EC384_PEM.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED25519_PEM.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
    }
}

/// The kid each fixture key is published under.
pub fn kid_for(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ec256",
        Algorithm::ES384 => "ec384",
        Algorithm::EdDSA => "ed",
        _ => "rsa",
    }
}

/// A public JWK for the fixture key of `alg`, with `kid`; `declare_alg` keeps the `alg` member.
pub fn jwk(alg: Algorithm, kid: &str, declare_alg: bool) -> Value {
    let jwk = Jwk::from_encoding_key(&encoding_key(alg), alg).unwrap();
    let mut v = serde_json::to_value(jwk).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.insert("kid".into(), json!(kid));
    obj.insert("use".into(), json!("sig"));
    if !declare_alg {
        obj.remove("alg");
    }
    v
}

/// All four fixture keys; the RSA one without a declared alg so it serves RS* and PS*.
pub fn jwks_json() -> String {
    json!({"keys": [
        jwk(Algorithm::RS256, "rsa", false),
        jwk(Algorithm::ES256, "ec256", true),
        jwk(Algorithm::ES384, "ec384", true),
        jwk(Algorithm::EdDSA, "ed", true),
    ]})
    .to_string()
}

pub fn key_set() -> Arc<KeySet> {
    Arc::new(KeySet::parse(jwks_json().as_bytes()).unwrap())
}

pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg)).unwrap()
}

/// How [`TestHost::verify_native`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native {
    /// `None`: the host has no native crypto.
    Absent,
    /// Verify ES* for real with RustCrypto over the SPKI and DER signature (as Envoy would).
    EcdsaDer,
    /// Always answer this.
    Fixed(bool),
}

pub struct TestHost {
    pub now: u64,
    pub native: Native,
    pub native_calls: Vec<(Algorithm, Vec<u8>)>,
    pub unknown_kid_calls: Vec<Vec<String>>,
}

impl TestHost {
    pub fn new(now: u64, native: Native) -> Self {
        Self {
            now,
            native,
            native_calls: Vec::new(),
            unknown_kid_calls: Vec::new(),
        }
    }
}

impl Host for TestHost {
    fn now(&mut self) -> u64 {
        self.now
    }

    fn keys(&mut self, _jwks_url: &str) -> KeyLookup {
        KeyLookup::Ready(key_set())
    }

    fn unknown_kid(&mut self, jwks_urls: &[String]) -> bool {
        self.unknown_kid_calls.push(jwks_urls.to_vec());
        false
    }

    fn verify_native(
        &mut self,
        alg: Algorithm,
        key: &Key,
        message: &[u8],
        signature: &[u8],
    ) -> Option<bool> {
        self.native_calls.push((alg, signature.to_vec()));
        match self.native {
            Native::Absent => None,
            Native::Fixed(b) => Some(b),
            Native::EcdsaDer => {
                use p256::ecdsa::signature::Verifier;
                use p256::pkcs8::DecodePublicKey;
                match alg {
                    Algorithm::ES256 => {
                        let vk =
                            p256::ecdsa::VerifyingKey::from_public_key_der(key.spki_der()).ok()?;
                        let sig = p256::ecdsa::Signature::from_der(signature).ok()?;
                        Some(vk.verify(message, &sig).is_ok())
                    }
                    Algorithm::ES384 => {
                        let vk =
                            p384::ecdsa::VerifyingKey::from_public_key_der(key.spki_der()).ok()?;
                        let sig = p384::ecdsa::Signature::from_der(signature).ok()?;
                        Some(vk.verify(message, &sig).is_ok())
                    }
                    _ => None,
                }
            }
        }
    }
}
