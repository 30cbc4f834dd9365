//! Wire helpers for Envoy's `verify_signature` foreign function: the hand-rolled protobuf of its
//! arguments and result, and the JWS ECDSA `r‖s` → DER conversion BoringSSL expects.

use crate::jwks::der;
use jsonwebtoken::Algorithm;

/// The hash name Envoy's `verify_signature` takes for `alg`, when Envoy can verify it at all.
/// Envoy verifies RSA with PKCS#1 v1.5 only, so PS* (PSS) and EdDSA stay on the pure-Rust path;
/// HS* is never verified against a public key.
pub fn native_hash(alg: Algorithm) -> Option<&'static str> {
    match alg {
        Algorithm::RS256 | Algorithm::ES256 => Some("sha256"),
        Algorithm::RS384 | Algorithm::ES384 => Some("sha384"),
        Algorithm::RS512 => Some("sha512"),
        _ => None,
    }
}

/// The field length of `r` and `s` in a JWS ECDSA signature, for ES* algorithms.
pub fn ecdsa_field_len(alg: Algorithm) -> Option<usize> {
    match alg {
        Algorithm::ES256 => Some(32),
        Algorithm::ES384 => Some(48),
        _ => None,
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Protobuf `VerifySignatureArguments {1: hash_function, 2: public_key (DER), 3: signature,
/// 4: text}`.
pub fn encode_verify_args(hash: &str, spki_der: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hash.len() + spki_der.len() + signature.len() + text.len() + 16);
    put_bytes(&mut out, 1, hash.as_bytes());
    put_bytes(&mut out, 2, spki_der);
    put_bytes(&mut out, 3, signature);
    put_bytes(&mut out, 4, text);
    out
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Protobuf `VerifySignatureResult {1: result bool, 2: error string}`. Unknown fields are skipped;
/// a truncated or malformed message is `None` (callers treat that as "cannot verify natively").
pub fn decode_verify_result(buf: &[u8]) -> Option<(bool, String)> {
    let mut pos = 0;
    let mut result = false;
    let mut error = String::new();
    while pos < buf.len() {
        let tag = get_varint(buf, &mut pos)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = get_varint(buf, &mut pos)?;
                if field == 1 {
                    result = v != 0;
                }
            }
            1 => pos = pos.checked_add(8).filter(|p| *p <= buf.len())?,
            5 => pos = pos.checked_add(4).filter(|p| *p <= buf.len())?,
            2 => {
                let len = usize::try_from(get_varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len())?;
                if field == 2 {
                    error = String::from_utf8_lossy(&buf[pos..end]).into_owned();
                }
                pos = end;
            }
            _ => return None,
        }
    }
    Some((result, error))
}

/// Converts a JWS ECDSA signature (`r‖s`, each `field_len` bytes) into an ASN.1 DER
/// `SEQUENCE { INTEGER r, INTEGER s }`. `None` when the length is wrong.
pub fn ecdsa_jws_to_der(sig: &[u8], field_len: usize) -> Option<Vec<u8>> {
    if field_len == 0 || sig.len() != 2 * field_len {
        return None;
    }
    let (r, s) = sig.split_at(field_len);
    let mut ints = der::uint(r);
    ints.extend_from_slice(&der::uint(s));
    Some(der::tlv(0x30, &ints))
}
