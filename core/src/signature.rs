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
    let mut out =
        Vec::with_capacity(hash.len() + spki_der.len() + signature.len() + text.len() + 16);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_hash_only_for_pkcs1_and_ecdsa() {
        assert_eq!(native_hash(Algorithm::RS256), Some("sha256"));
        assert_eq!(native_hash(Algorithm::RS384), Some("sha384"));
        assert_eq!(native_hash(Algorithm::RS512), Some("sha512"));
        assert_eq!(native_hash(Algorithm::ES256), Some("sha256"));
        assert_eq!(native_hash(Algorithm::ES384), Some("sha384"));
        for alg in [
            Algorithm::PS256,
            Algorithm::PS512,
            Algorithm::EdDSA,
            Algorithm::HS256,
        ] {
            assert_eq!(native_hash(alg), None, "{alg:?}");
        }
    }

    #[test]
    fn encodes_verify_args_as_protobuf() {
        let out = encode_verify_args("sha256", &[1, 2], &[3], b"hi");
        let want = [
            &[0x0a, 6][..],
            b"sha256",
            &[0x12, 2, 1, 2],
            &[0x1a, 1, 3],
            &[0x22, 2],
            b"hi",
        ]
        .concat();
        assert_eq!(out, want);
        // Multi-byte varint length for a 300-byte key.
        let out = encode_verify_args("sha256", &[7u8; 300], &[], &[]);
        assert_eq!(&out[8..11], &[0x12, 0xac, 0x02]);
        assert_eq!(out.len(), 8 + 3 + 300 + 2 + 2);
    }

    #[test]
    fn decodes_verify_result() {
        assert_eq!(
            decode_verify_result(&[0x08, 0x01]),
            Some((true, String::new()))
        );
        let mut buf = vec![0x08, 0x00, 0x12, 0x03];
        buf.extend_from_slice(b"bad");
        assert_eq!(decode_verify_result(&buf), Some((false, "bad".into())));
        // Unknown varint, fixed64, fixed32 and bytes fields are skipped.
        let buf = [
            0x18, 0x96, 0x01, 0x21, 0, 0, 0, 0, 0, 0, 0, 0, 0x2d, 0, 0, 0, 0, 0x3a, 1, 9, 0x08, 1,
        ];
        assert_eq!(decode_verify_result(&buf), Some((true, String::new())));
        assert_eq!(decode_verify_result(&[]), Some((false, String::new())));
        assert_eq!(decode_verify_result(&[0x12, 0x05, b'a']), None);
        assert_eq!(decode_verify_result(&[0x08]), None);
        assert_eq!(decode_verify_result(&[0x0b]), None);
    }

    #[test]
    fn ecdsa_der_matches_rustcrypto_p256() {
        let mut rs = [0u8; 64];
        rs[0] = 0x80; // high bit set: needs a 0x00 pad
        rs[1..32].fill(0x01);
        rs[34] = 0x7f; // two leading zero bytes in s: must be stripped
        rs[35..].fill(0x02);
        let ours = ecdsa_jws_to_der(&rs, 32).unwrap();
        let theirs = p256::ecdsa::Signature::from_slice(&rs).unwrap().to_der();
        assert_eq!(ours, theirs.as_bytes());
        assert_eq!(&ours[..5], &[0x30, 0x43, 0x02, 0x21, 0x00]);
    }

    #[test]
    fn ecdsa_der_matches_rustcrypto_p384() {
        let mut rs = [0x11u8; 96];
        rs[0] = 0xff;
        rs[48] = 0x00;
        let ours = ecdsa_jws_to_der(&rs, 48).unwrap();
        let theirs = p384::ecdsa::Signature::from_slice(&rs).unwrap().to_der();
        assert_eq!(ours, theirs.as_bytes());
    }

    #[test]
    fn ecdsa_der_rejects_wrong_length() {
        assert_eq!(ecdsa_jws_to_der(&[1u8; 63], 32), None);
        assert_eq!(ecdsa_jws_to_der(&[], 0), None);
    }
}
