//! Private JWKs (RFC 7517/7518 `d` members) turned into a key that signs JWS, for the `id_token`
//! mutator. The private members are converted once, when the key set is parsed, into the DER
//! jsonwebtoken's RustCrypto signers read (PKCS#1 for RSA, PKCS#8 for EC and Ed25519), and the
//! key is proven to match its public half by signing and verifying a probe: a key set whose `d`
//! does not belong to its `n`/`x` would otherwise mint tokens nobody can verify.
//!
//! Nothing here prints key material: [`SigningKey`]'s `Debug` shows the kid and algorithm only.

use crate::jwks::{Algorithm, Key, alg_name, der};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use serde_json::Value;
use std::str::FromStr;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SigningKeyError {
    #[error("the key set holds no private key")]
    NoPrivateKey,
    #[error("the private key {kid:?} declares no `alg` (required to know how to sign)")]
    NoAlg { kid: String },
    #[error(
        "the private key {kid:?} has alg {alg:?}, which cannot sign id tokens (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA can)"
    )]
    UnsupportedAlg { kid: String, alg: String },
    #[error("the private key {kid:?} lacks or has a malformed member {member:?}")]
    Member { kid: String, member: &'static str },
    #[error("the private key {kid:?} does not match its public half")]
    Mismatch { kid: String },
}

/// A private key ready to sign, with its JWS header (`alg`, `kid`, `typ`) encoded once.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    /// `base64url(header)`, the first part of every token this key signs.
    header_b64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// A compact JWS of `payload` (the JSON claims).
    pub fn sign(&self, payload: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 400);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = jsonwebtoken::crypto::sign(token.as_bytes(), &self.encoding, self.alg)?;
        token.push('.');
        token.push_str(&signature);
        Ok(token)
    }

    /// The signing key of a private JWK `obj` whose public half parsed as `public`; `None` when
    /// `obj` holds no private member.
    pub(crate) fn from_jwk(
        obj: &Value,
        public: &Key,
    ) -> Option<Result<SigningKey, SigningKeyError>> {
        obj.get("d")?;
        Some(Self::build(obj, public))
    }

    fn build(obj: &Value, public: &Key) -> Result<SigningKey, SigningKeyError> {
        let kid = public.kid().to_string();
        let alg_text = obj
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| SigningKeyError::NoAlg { kid: kid.clone() })?;
        let unsupported = || SigningKeyError::UnsupportedAlg {
            kid: kid.clone(),
            alg: alg_text.to_string(),
        };
        let alg = Algorithm::from_str(alg_text).map_err(|_| unsupported())?;
        use Algorithm::*;
        if matches!(alg, HS256 | HS384 | HS512) || !public.supports(alg) {
            return Err(unsupported());
        }
        let member = |name: &'static str| {
            let s = obj.get(name).and_then(Value::as_str);
            s.and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
                .filter(|b| !b.is_empty())
                .ok_or_else(|| SigningKeyError::Member {
                    kid: kid.clone(),
                    member: name,
                })
        };
        let encoding = match alg {
            ES256 | ES384 => {
                let (len, curve) = if alg == ES256 {
                    (32, der::OID_P256)
                } else {
                    (48, der::OID_P384)
                };
                let d = fixed(member("d")?, len).ok_or_else(|| SigningKeyError::Member {
                    kid: kid.clone(),
                    member: "d",
                })?;
                let mut point = vec![0x04];
                point.extend_from_slice(&member("x")?);
                point.extend_from_slice(&member("y")?);
                EncodingKey::from_ec_der(&der::ec_pkcs8(curve, &d, &point))
            }
            EdDSA => {
                let d = member("d")?;
                if d.len() != 32 {
                    return Err(SigningKeyError::Member { kid, member: "d" });
                }
                EncodingKey::from_ed_der(&der::ed25519_pkcs8(&d))
            }
            _ => {
                let parts = ["n", "e", "d", "p", "q", "dp", "dq", "qi"]
                    .into_iter()
                    .map(member)
                    .collect::<Result<Vec<_>, _>>()?;
                EncodingKey::from_rsa_der(&der::rsa_pkcs1(&parts))
            }
        };
        let header = serde_json::json!({"alg": alg_name(alg), "kid": kid, "typ": "JWT"});
        let key = SigningKey {
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            kid,
            alg,
            encoding,
        };
        // Parsing a key set is rare (a fetch); minting unverifiable tokens would not be.
        const PROBE: &[u8] = b"portcullis signing key probe";
        let matches = jsonwebtoken::crypto::sign(PROBE, &key.encoding, alg)
            .ok()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .is_some_and(|sig| public.verify_rust(alg, PROBE, &sig));
        if !matches {
            return Err(SigningKeyError::Mismatch { kid: key.kid });
        }
        Ok(key)
    }
}

/// `bytes` left-padded with zeros to exactly `len` (a scalar may be sent without leading zeros).
fn fixed(bytes: Vec<u8>, len: usize) -> Option<Vec<u8>> {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let significant = &bytes[first..];
    if significant.len() > len {
        return None;
    }
    let mut out = vec![0; len - significant.len()];
    out.extend_from_slice(significant);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::KeySet;
    use serde_json::json;

    pub(crate) fn private_jwk(kid: &str) -> Value {
        let text = match kid {
            "rsa" => include_str!("../tests/fixtures/rsa.private.jwk.json"),
            "ec256" => include_str!("../tests/fixtures/ec256.private.jwk.json"),
            _ => include_str!("../tests/fixtures/ed.private.jwk.json"),
        };
        serde_json::from_str(text).unwrap()
    }

    fn signer(jwk: &Value) -> Result<std::sync::Arc<SigningKey>, String> {
        let set = KeySet::parse(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
        set.signer().map_err(|e| e.to_string())
    }

    #[test]
    fn every_family_signs_tokens_its_public_half_verifies() {
        for (kid, alg) in [
            ("rsa", Algorithm::RS256),
            ("ec256", Algorithm::ES256),
            ("ed", Algorithm::EdDSA),
        ] {
            let key = signer(&private_jwk(kid)).unwrap();
            assert_eq!(key.alg(), alg);
            let token = key.sign(br#"{"sub":"alice"}"#).unwrap();
            let (message, sig) = token.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            let public = crate::testkeys::key_set();
            assert!(
                public
                    .find(kid)
                    .unwrap()
                    .verify_rust(alg, message.as_bytes(), &sig)
            );
            let header: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(token.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(header["kid"], kid);
            assert_eq!(header["alg"], alg_name(alg));
        }
    }

    #[test]
    fn debug_never_shows_private_members() {
        let jwk = private_jwk("ec256");
        let key = signer(&jwk).unwrap();
        let d = jwk["d"].as_str().unwrap();
        assert!(!format!("{key:?}").contains(d));
        let set = KeySet::parse(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
        assert!(!format!("{set:?}").contains(d));
    }

    #[test]
    fn unusable_private_keys_are_named() {
        let mut no_alg = private_jwk("rsa");
        no_alg.as_object_mut().unwrap().remove("alg");
        assert!(signer(&no_alg).unwrap_err().contains("declares no `alg`"));

        let mut hs = private_jwk("ed");
        hs["alg"] = json!("HS256");
        // A contradicting alg makes the public key unusable too: no signer.
        assert!(signer(&hs).is_err());

        let mut missing = private_jwk("rsa");
        missing.as_object_mut().unwrap().remove("qi");
        assert!(signer(&missing).unwrap_err().contains("\"qi\""));

        // The EC private scalar of another key: refused rather than minting unverifiable tokens.
        let mut mismatch = private_jwk("ec256");
        mismatch["d"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert!(signer(&mismatch).unwrap_err().contains("does not match"));

        let mut short = private_jwk("ed");
        short["d"] = json!("AAAA");
        assert!(signer(&short).unwrap_err().contains("\"d\""));
    }

    #[test]
    fn public_only_sets_have_no_signer() {
        let set = crate::testkeys::key_set();
        assert!(
            set.signer()
                .unwrap_err()
                .to_string()
                .contains("no private key")
        );
    }
}
