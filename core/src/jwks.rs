//! RFC 7517 JSON Web Key Sets: parse the keys we can verify with, find them by `kid`, hand the
//! host's native verifier a SubjectPublicKeyInfo DER, and verify in pure Rust when it cannot.
//!
//! A key set is fetched from a remote party, so anything we do not understand in it (other key
//! types, curves, encryption keys) is skipped rather than fatal: one exotic key must not lock out
//! the tokens signed with the others.

use crate::signing_key::{SigningKey, SigningKeyError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::DecodingKey;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("JWKS is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("JWKS has no `keys` array")]
    NoKeys,
}

/// The kind of public key, which fixes the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

/// One verification key from a key set.
#[derive(Clone)]
pub struct Key {
    kid: String,
    alg: Option<Algorithm>,
    family: KeyFamily,
    decoding: DecodingKey,
    spki: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `alg` the key set declared for this key, if any.
    pub fn alg(&self) -> Option<Algorithm> {
        self.alg
    }

    pub fn family(&self) -> KeyFamily {
        self.family
    }

    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// SubjectPublicKeyInfo DER, the form Envoy's `verify_signature` takes.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// True when `alg` belongs to this key's family and matches the declared `alg`, if any.
    pub fn supports(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let family_ok = match self.family {
            KeyFamily::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyFamily::EcP256 => alg == ES256,
            KeyFamily::EcP384 => alg == ES384,
            KeyFamily::Ed25519 => alg == EdDSA,
        };
        family_ok && self.alg.is_none_or(|declared| declared == alg)
    }

    /// Verifies `signature` (raw JWS bytes: r‖s for ECDSA) over `message` in pure Rust.
    pub fn verify_rust(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if !self.supports(alg) {
            return false;
        }
        let Some(provider) = jsonwebtoken::crypto::CryptoProvider::try_get_default() else {
            return false;
        };
        match (provider.verifier_factory)(&alg, &self.decoding) {
            Ok(verifier) => verifier.verify(message, &signature.to_vec()).is_ok(),
            Err(_) => false,
        }
    }
}

/// The usable signing keys of one JWKS document, in document order.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    fingerprint: u64,
    /// The first key with private members, for the `id_token` mutator (`None`: none has).
    signer: Option<Result<Arc<SigningKey>, SigningKeyError>>,
}

impl KeySet {
    /// Parses a JWKS document. Invalid JSON or a missing `keys` array is an error; keys that are
    /// not for signatures, of unsupported type/curve, or with malformed members are skipped.
    pub fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| JwksError::InvalidJson(e.to_string()))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeys)?;
        let mut keys = Vec::with_capacity(entries.len());
        let mut signer = None;
        for entry in entries {
            let Some(key) = parse_key(entry) else {
                continue;
            };
            if signer.is_none() {
                signer = SigningKey::from_jwk(entry, &key).map(|r| r.map(Arc::new));
            }
            keys.push(key);
        }
        let mut fingerprint = fingerprint_of(&keys);
        if let Some(Ok(s)) = &signer {
            // Which key signs is part of the set's identity: tokens it minted are re-minted
            // when it changes.
            fingerprint = combined_fingerprint([fingerprint, fingerprint_of_signer(s)]);
        }
        Ok(KeySet {
            keys,
            fingerprint,
            signer,
        })
    }

    /// The key `id_token` signs with: the set's first private key.
    pub fn signer(&self) -> Result<Arc<SigningKey>, SigningKeyError> {
        match &self.signer {
            Some(s) => s.clone(),
            None => Err(SigningKeyError::NoPrivateKey),
        }
    }

    /// First key with this `kid`.
    pub fn find(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Stable hash of the key material (kid, alg, family, SPKI of every key, in order), so a
    /// cache can tell that keys were rotated.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// Why a JWKS fetch did not produce a key set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("no response (timeout, reset or unknown cluster)")]
    NoResponse,
    #[error("status {0}")]
    Status(u16),
    #[error(transparent)]
    Invalid(#[from] JwksError),
}

/// Judges a JWKS endpoint's answer. A 200 with a valid document is the issuer's key set from now
/// on, even when it holds no usable key: an issuer that removed its keys must not have them kept.
/// Anything else (no answer, another status, a body that is no JWKS) is a failed fetch: the keys
/// already known keep serving, but only while [`still_trusted`].
pub fn from_fetch(response: Option<(u16, &[u8])>) -> Result<KeySet, FetchError> {
    match response {
        None => Err(FetchError::NoResponse),
        Some((200, body)) => Ok(KeySet::parse(body)?),
        Some((status, _)) => Err(FetchError::Status(status)),
    }
}

/// Whether keys last fetched successfully at `fetched_at_ms` may still verify tokens at
/// `now_ms`: for their TTL, then at most `max_stale_ms` longer while refreshes fail. Past that
/// the keys are dropped and their tokens refused: a key the issuer removed while its endpoint
/// is unreachable must not stay trusted forever.
pub fn still_trusted(fetched_at_ms: u64, ttl_ms: u64, max_stale_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(fetched_at_ms) <= ttl_ms.saturating_add(max_stale_ms)
}

/// One fingerprint over several key sets (in order), for cache entries verified against all of
/// a rule's `jwks_urls`: any rotation in any of them changes it.
///
/// Computed on every request, so it only mixes the per-set fingerprints (themselves SHA-256
/// derived when the set was parsed); key sets come from trusted endpoints, so the mix needs no
/// collision resistance against an adversary, only order sensitivity.
pub fn combined_fingerprint(fingerprints: impl IntoIterator<Item = u64>) -> u64 {
    let mut all = fingerprints.into_iter();
    let Some(first) = all.next() else {
        return 0;
    };
    all.fold(first, |acc, fp| {
        (acc.rotate_left(23) ^ fp).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

fn fingerprint_of(keys: &[Key]) -> u64 {
    let mut h = Sha256::new();
    for k in keys {
        for part in [
            k.kid.as_bytes(),
            k.alg.map_or("", alg_name).as_bytes(),
            family_name(k.family).as_bytes(),
            &k.spki,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

fn fingerprint_of_signer(s: &SigningKey) -> u64 {
    let mut h = Sha256::new();
    h.update(b"signer\0");
    h.update(s.kid().as_bytes());
    h.update(alg_name(s.alg()).as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

fn family_name(f: KeyFamily) -> &'static str {
    match f {
        KeyFamily::Rsa => "RSA",
        KeyFamily::EcP256 => "P-256",
        KeyFamily::EcP384 => "P-384",
        KeyFamily::Ed25519 => "Ed25519",
    }
}

/// The JOSE name of an algorithm (`RS256`, ...).
pub fn alg_name(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        ES256 => "ES256",
        ES384 => "ES384",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        EdDSA => "EdDSA",
        _ => "unknown",
    }
}

fn b64_member(obj: &Value, name: &str) -> Option<Vec<u8>> {
    let s = obj.get(name)?.as_str()?;
    // Some issuers pad their base64url; RFC 7518 says not to, but tolerating it costs nothing.
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn parse_key(obj: &Value) -> Option<Key> {
    if let Some(usage) = obj.get("use")
        && usage.as_str() != Some("sig")
    {
        return None;
    }
    // A key without kid can never be selected: Oathkeeper requires tokens to carry one.
    let kid = obj.get("kid")?.as_str()?.to_owned();
    let alg = match obj.get("alg") {
        None | Some(Value::Null) => None,
        Some(v) => Some(Algorithm::from_str(v.as_str()?).ok()?),
    };
    let (family, decoding, spki) = match obj.get("kty")?.as_str()? {
        "RSA" => {
            let n = strip_zeros(b64_member(obj, "n")?);
            let e = strip_zeros(b64_member(obj, "e")?);
            if n.is_empty() || e.is_empty() {
                return None;
            }
            let spki = der::rsa_spki(&n, &e);
            (
                KeyFamily::Rsa,
                DecodingKey::from_rsa_raw_components(&n, &e),
                spki,
            )
        }
        "EC" => {
            let (family, len, curve_oid) = match obj.get("crv")?.as_str()? {
                "P-256" => (KeyFamily::EcP256, 32, der::OID_P256),
                "P-384" => (KeyFamily::EcP384, 48, der::OID_P384),
                _ => return None,
            };
            let x = b64_member(obj, "x")?;
            let y = b64_member(obj, "y")?;
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let spki = der::ec_spki(curve_oid, &point);
            (family, DecodingKey::from_ec_der(&point), spki)
        }
        "OKP" => {
            if obj.get("crv")?.as_str()? != "Ed25519" {
                return None;
            }
            let x = b64_member(obj, "x")?;
            if x.len() != 32 {
                return None;
            }
            let spki = der::ed25519_spki(&x);
            (KeyFamily::Ed25519, DecodingKey::from_ed_der(&x), spki)
        }
        _ => return None,
    };
    let key = Key {
        kid,
        alg,
        family,
        decoding,
        spki,
    };
    // A declared alg that contradicts the key type (e.g. an RSA key marked ES256, or HS256)
    // makes the key unusable; skip it rather than keep a key that can verify nothing.
    if let Some(a) = alg
        && !key.supports(a)
    {
        return None;
    }
    Some(key)
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let first = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    v.drain(..first);
    v
}

/// Just enough DER to build SubjectPublicKeyInfo structures.
pub(crate) mod der {
    pub const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    pub const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    pub const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    pub const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        out.push(tag);
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(bytes.len() - 1);
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    /// Unsigned big-endian magnitude as a minimal positive INTEGER.
    pub fn uint(magnitude: &[u8]) -> Vec<u8> {
        let first = magnitude
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(magnitude.len());
        let m = &magnitude[first..];
        let mut content = Vec::with_capacity(m.len() + 1);
        if m.first().is_none_or(|b| b & 0x80 != 0) {
            content.push(0);
        }
        content.extend_from_slice(m);
        tlv(0x02, &content)
    }

    fn bit_string(bytes: &[u8]) -> Vec<u8> {
        let mut content = Vec::with_capacity(bytes.len() + 1);
        content.push(0); // no unused bits
        content.extend_from_slice(bytes);
        tlv(0x03, &content)
    }

    fn spki(algorithm: &[u8], public_key: &[u8]) -> Vec<u8> {
        let mut body = tlv(0x30, algorithm);
        body.extend_from_slice(&bit_string(public_key));
        tlv(0x30, &body)
    }

    pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
        let mut alg = tlv(0x06, OID_RSA);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut ints = uint(n);
        ints.extend_from_slice(&uint(e));
        spki(&alg, &tlv(0x30, &ints))
    }

    pub fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
        let mut alg = tlv(0x06, OID_EC_PUBLIC_KEY);
        alg.extend_from_slice(&tlv(0x06, curve_oid));
        spki(&alg, point)
    }

    pub fn ed25519_spki(x: &[u8]) -> Vec<u8> {
        spki(&tlv(0x06, OID_ED25519), x)
    }

    /// RFC 8017 `RSAPrivateKey` (version 0) of `[n, e, d, p, q, dp, dq, qi]`.
    pub fn rsa_pkcs1(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0x02, 0x01, 0x00];
        for p in parts {
            body.extend_from_slice(&uint(p));
        }
        tlv(0x30, &body)
    }

    fn pkcs8(algorithm: &[u8], private_key: &[u8]) -> Vec<u8> {
        let mut body = vec![0x02, 0x01, 0x00];
        body.extend_from_slice(&tlv(0x30, algorithm));
        body.extend_from_slice(&tlv(0x04, private_key));
        tlv(0x30, &body)
    }

    /// RFC 5958 PKCS#8 around an RFC 5915 `ECPrivateKey` with its public point.
    pub fn ec_pkcs8(curve_oid: &[u8], d: &[u8], point: &[u8]) -> Vec<u8> {
        let mut ec = vec![0x02, 0x01, 0x01];
        ec.extend_from_slice(&tlv(0x04, d));
        ec.extend_from_slice(&tlv(0xa1, &bit_string(point)));
        let mut alg = tlv(0x06, OID_EC_PUBLIC_KEY);
        alg.extend_from_slice(&tlv(0x06, curve_oid));
        pkcs8(&alg, &tlv(0x30, &ec))
    }

    /// RFC 8410 PKCS#8 of an Ed25519 seed.
    pub fn ed25519_pkcs8(seed: &[u8]) -> Vec<u8> {
        pkcs8(&tlv(0x06, OID_ED25519), &tlv(0x04, seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::*;
    use serde_json::json;

    #[test]
    fn a_valid_200_replaces_the_keys_even_when_empty() {
        let empty = from_fetch(Some((200, br#"{"keys":[]}"#))).unwrap();
        assert!(empty.is_empty());
        assert_ne!(empty.fingerprint(), key_set().fingerprint());
        // Only keys the filter cannot use: also an empty set, not a failure.
        let enc = from_fetch(Some((200, br#"{"keys":[{"kty":"oct","k":"AA"}]}"#))).unwrap();
        assert!(enc.is_empty());
    }

    #[test]
    fn other_answers_are_failed_fetches() {
        assert_eq!(from_fetch(None).unwrap_err(), FetchError::NoResponse);
        for status in [404, 500, 204, 301] {
            assert_eq!(
                from_fetch(Some((status, br#"{"keys":[]}"#))).unwrap_err(),
                FetchError::Status(status)
            );
        }
        assert_eq!(
            from_fetch(Some((200, b"{}"))).unwrap_err(),
            FetchError::Invalid(JwksError::NoKeys)
        );
        assert!(matches!(
            from_fetch(Some((200, b"<html>"))),
            Err(FetchError::Invalid(JwksError::InvalidJson(_)))
        ));
    }

    #[test]
    fn stale_keys_serve_for_a_bounded_time() {
        let (fetched, ttl, stale) = (1_000, 30_000, 600_000);
        assert!(still_trusted(fetched, ttl, stale, fetched));
        assert!(still_trusted(fetched, ttl, stale, fetched + ttl + stale));
        assert!(!still_trusted(
            fetched,
            ttl,
            stale,
            fetched + ttl + stale + 1
        ));
        assert!(!still_trusted(fetched, ttl, 0, fetched + ttl + 1));
        assert!(still_trusted(fetched, u64::MAX, u64::MAX, u64::MAX));
    }

    #[test]
    fn parses_all_four_families_with_spki_matching_openssl() {
        let set = key_set();
        assert_eq!(set.len(), 4);
        let cases = [
            ("rsa", KeyFamily::Rsa, RSA_SPKI),
            ("ec256", KeyFamily::EcP256, EC256_SPKI),
            ("ec384", KeyFamily::EcP384, EC384_SPKI),
            ("ed", KeyFamily::Ed25519, ED25519_SPKI),
        ];
        for (kid, family, spki) in cases {
            let key = set.find(kid).unwrap();
            assert_eq!(key.family(), family, "{kid}");
            assert_eq!(key.spki_der(), spki, "{kid}: SPKI differs from openssl's");
        }
        assert!(set.find("nope").is_none());
    }

    #[test]
    fn skips_unusable_keys_but_keeps_the_rest() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "kid": "badb64", "n": "!!", "e": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "kid": "x448", "crv": "X448", "x": "AA"},
            {"kty": "RSA", "kid": "hs-declared", "alg": "HS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "weird-alg", "alg": "XX999", "n": "AQAB", "e": "AQAB"},
            jwk(Algorithm::ES256, "good", true),
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.find("good").is_some());
    }

    #[test]
    fn rejects_non_jwks() {
        assert!(matches!(
            KeySet::parse(b"not json"),
            Err(JwksError::InvalidJson(_))
        ));
        assert_eq!(KeySet::parse(b"{}").unwrap_err(), JwksError::NoKeys);
        assert_eq!(
            KeySet::parse(br#"{"keys": {}}"#).unwrap_err(),
            JwksError::NoKeys
        );
        assert!(KeySet::parse(br#"{"keys": []}"#).unwrap().is_empty());
    }

    #[test]
    fn supports_checks_family_and_declared_alg() {
        let set = key_set();
        let rsa = set.find("rsa").unwrap();
        for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
            assert!(rsa.supports(alg));
        }
        assert!(!rsa.supports(Algorithm::ES256));
        assert!(!rsa.supports(Algorithm::HS256));
        let ec = set.find("ec256").unwrap();
        assert!(ec.supports(Algorithm::ES256));
        assert!(!ec.supports(Algorithm::ES384));
        let declared = json!({"keys": [jwk(Algorithm::RS256, "r", true)]});
        let set = KeySet::parse(declared.to_string().as_bytes()).unwrap();
        let r = set.find("r").unwrap();
        assert_eq!(r.alg(), Some(Algorithm::RS256));
        assert!(r.supports(Algorithm::RS256));
        assert!(!r.supports(Algorithm::PS256));
    }

    #[test]
    fn fingerprint_tracks_key_material() {
        let a = key_set();
        let b = key_set();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let fewer = json!({"keys": [jwk(Algorithm::RS256, "rsa", false)]});
        let c = KeySet::parse(fewer.to_string().as_bytes()).unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        let renamed = json!({"keys": [jwk(Algorithm::RS256, "rsa2", false)]});
        let d = KeySet::parse(renamed.to_string().as_bytes()).unwrap();
        assert_ne!(c.fingerprint(), d.fingerprint());
        let (a, c) = (a.clone(), std::sync::Arc::new(c));
        assert_eq!(
            combined_fingerprint([a.fingerprint(), c.fingerprint()]),
            combined_fingerprint([key_set().fingerprint(), c.fingerprint()])
        );
        assert_ne!(
            combined_fingerprint([a.fingerprint(), c.fingerprint()]),
            combined_fingerprint([c.fingerprint(), a.fingerprint()])
        );
    }

    #[test]
    fn verify_rust_accepts_good_and_rejects_tampered() {
        let set = key_set();
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            let token = sign(alg, None, &json!({"sub": "x"}));
            let (input, sig) = token.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            let key = set.find(kid_for(alg)).unwrap();
            assert!(key.verify_rust(alg, input.as_bytes(), &sig), "{alg:?}");
            let mut other = input.as_bytes().to_vec();
            other.push(b'x');
            assert!(!key.verify_rust(alg, &other, &sig), "{alg:?} tampered");
        }
    }

    #[test]
    fn der_lengths_use_long_form() {
        let long = der::tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der::tlv(0x04, &[0u8; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(der::uint(&[0x00, 0x00]), vec![0x02, 0x01, 0x00]);
    }
}
