//! Signing keys: generation (RSA-2048, P-256, Ed25519), encrypted persistence, the JWKS, JWT
//! signing and verification of our own tokens, and rotation. The newest key of a set whose
//! `created_at` has come signs; a rotated-out key keeps its public half in the JWKS until every
//! token it signed has expired.
//!
//! A scheduled rotation pre-publishes: the new key is stored with a `created_at` in the future
//! and is in the JWKS from the moment it is stored, but signs only from `created_at` on. A
//! verifier that re-fetches the JWKS on a timer, or at most every few seconds on an unknown
//! `kid` (the filter: 5 s, an allowance a flood of invented kids can use up), has the key
//! before the first token it signed arrives. Storing the activation time as `created_at` needs
//! no new column in either store, and every replica reaches the same answer from its clock.

use crate::clock;
use crate::crypto::{CryptoError, SystemSecret, b64url};
use crate::store::{Store, StoreError, StoredKey};
// AWS-LC rather than ring for signing: its RSA is about twice as fast here (3,900 vs 2,000
// RSA-2048 signatures/s per core), and RSA signing is what bounds RS256 tokens/s.
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

/// Hydra's name for the set that signs access tokens.
pub const ACCESS_TOKEN_SET: &str = "hydra.jwt.access-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Alg {
    RS256,
    ES256,
    EdDSA,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s {
            "RS256" => Ok(Self::RS256),
            "ES256" => Ok(Self::ES256),
            "EdDSA" | "ED25519" | "Ed25519" => Ok(Self::EdDSA),
            other => Err(KeyError::UnsupportedAlg(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported signing algorithm {0:?}: expected RS256, ES256 or EdDSA")]
    UnsupportedAlg(String),
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("stored key {kid:?} is unusable: {detail}")]
    Load { kid: String, detail: String },
    #[error("signing failed")]
    Sign,
    #[error("no signing key in set {0:?}")]
    NoKey(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Signer {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One usable key: private half loaded into ring, public half as JWK.
pub struct SigningKey {
    pub set: String,
    pub kid: String,
    pub alg: Alg,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    signer: Signer,
    public_jwk: Value,
    /// `base64url({"alg","kid","typ":"JWT"})`, computed once.
    header_b64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("set", &self.set)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn generate_pkcs8(alg: Alg) -> Result<Vec<u8>, KeyError> {
    let rng = SystemRandom::new();
    match alg {
        Alg::RS256 => RsaKeyPair::generate(KeySize::Rsa2048)
            .and_then(|kp| kp.as_der())
            .map(|der| der.as_ref().to_vec())
            .map_err(|e| KeyError::Generate(e.to_string())),
        Alg::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(|e| KeyError::Generate(e.to_string()))
        }
        Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| KeyError::Generate(e.to_string())),
    }
}

impl SigningKey {
    fn from_pkcs8(
        set: &str,
        kid: &str,
        alg: Alg,
        der: &[u8],
        created_at: i64,
        expires_at: Option<i64>,
    ) -> Result<Self, KeyError> {
        let load = |detail: String| KeyError::Load {
            kid: kid.to_string(),
            detail,
        };
        let (signer, mut jwk) = match alg {
            Alg::RS256 => {
                let kp = RsaKeyPair::from_pkcs8(der).map_err(|e| load(e.to_string()))?;
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public_key());
                let jwk = json!({"kty": "RSA", "n": b64url(&c.n), "e": b64url(&c.e)});
                (Signer::Rsa(kp), jwk)
            }
            Alg::ES256 => {
                let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| load(e.to_string()))?;
                let point = kp.public_key().as_ref();
                if point.len() != 65 {
                    return Err(load("unexpected P-256 point length".into()));
                }
                let jwk = json!({"kty": "EC", "crv": "P-256",
                    "x": b64url(&point[1..33]), "y": b64url(&point[33..65])});
                (Signer::Ecdsa(kp), jwk)
            }
            Alg::EdDSA => {
                let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| load(e.to_string()))?;
                let jwk = json!({"kty": "OKP", "crv": "Ed25519",
                    "x": b64url(kp.public_key().as_ref())});
                (Signer::Ed25519(kp), jwk)
            }
        };
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("kid".into(), json!(kid));
            obj.insert("alg".into(), json!(alg.as_str()));
            obj.insert("use".into(), json!("sig"));
        }
        let header = json!({"alg": alg.as_str(), "kid": kid, "typ": "JWT"});
        Ok(Self {
            set: set.to_string(),
            kid: kid.to_string(),
            alg,
            created_at,
            expires_at,
            signer,
            public_jwk: jwk,
            header_b64: b64url(header.to_string().as_bytes()),
        })
    }

    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    /// The key as a private JWK (RFC 7518 `d`), for the filter's `id_token` mutator; `None` for
    /// RSA, whose private components AWS-LC does not hand out.
    pub fn private_jwk(&self) -> Option<Value> {
        use aws_lc_rs::encoding::AsBigEndian;
        let d = match &self.signer {
            Signer::Ecdsa(kp) => {
                let bin: aws_lc_rs::encoding::EcPrivateKeyBin<'static> =
                    kp.private_key().as_be_bytes().ok()?;
                b64url(bin.as_ref())
            }
            Signer::Ed25519(kp) => {
                let bin: aws_lc_rs::encoding::Curve25519SeedBin<'static> =
                    kp.seed().ok()?.as_be_bytes().ok()?;
                b64url(bin.as_ref())
            }
            Signer::Rsa(_) => return None,
        };
        let mut jwk = self.public_jwk.clone();
        jwk.as_object_mut()?.insert("d".into(), json!(d));
        Some(jwk)
    }

    /// A compact JWS over `claims` with header `{alg, kid, typ: "JWT"}`.
    pub fn sign_jwt<C: Serialize>(
        &self,
        claims: &C,
        rng: &SystemRandom,
    ) -> Result<String, KeyError> {
        self.sign_with_header(&self.header_b64, claims, rng)
    }

    /// A compact JWS with an explicit `typ` (RFC 8725 3.11), e.g. `logout+jwt`, so that the
    /// token cannot pass where a plain JWT (an access token) is expected.
    pub fn sign_typed_jwt<C: Serialize>(
        &self,
        typ: &str,
        claims: &C,
        rng: &SystemRandom,
    ) -> Result<String, KeyError> {
        let header = json!({"alg": self.alg.as_str(), "kid": self.kid, "typ": typ});
        self.sign_with_header(&b64url(header.to_string().as_bytes()), claims, rng)
    }

    fn sign_with_header<C: Serialize>(
        &self,
        header_b64: &str,
        claims: &C,
        rng: &SystemRandom,
    ) -> Result<String, KeyError> {
        let claims = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
        let mut out = String::with_capacity(header_b64.len() + claims.len() * 4 / 3 + 360);
        out.push_str(header_b64);
        out.push('.');
        out.push_str(&b64url(&claims));
        let sig = match &self.signer {
            Signer::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&signature::RSA_PKCS1_SHA256, rng, out.as_bytes(), &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                sig
            }
            Signer::Ecdsa(kp) => kp
                .sign(rng, out.as_bytes())
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
            Signer::Ed25519(kp) => kp.sign(out.as_bytes()).as_ref().to_vec(),
        };
        out.push('.');
        out.push_str(&b64url(&sig));
        Ok(out)
    }

    /// Verifies a signature made by this key over `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.signer {
            Signer::Rsa(kp) => signature::UnparsedPublicKey::new(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                kp.public_key().as_ref(),
            )
            .verify(message, sig)
            .is_ok(),
            Signer::Ecdsa(kp) => signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                kp.public_key().as_ref(),
            )
            .verify(message, sig)
            .is_ok(),
            Signer::Ed25519(kp) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, kp.public_key().as_ref())
                    .verify(message, sig)
                    .is_ok()
            }
        }
    }

    fn in_jwks(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// Keys loaded in memory, oldest first. Replaced wholesale on change (copy-on-write).
#[derive(Default)]
pub struct KeyRing {
    keys: Vec<Arc<SigningKey>>,
}

impl KeyRing {
    /// The key of `set` that signs now.
    pub fn current(&self, set: &str) -> Option<&Arc<SigningKey>> {
        self.current_at(set, clock::now())
    }

    /// The key of `set` that signs at `now`: the newest one whose `created_at` has come (a
    /// pre-published key waits; the key it replaces, retired but still published, signs
    /// until then).
    pub fn current_at(&self, set: &str, now: i64) -> Option<&Arc<SigningKey>> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.set == set && k.created_at <= now && k.in_jwks(now))
    }

    /// The newest non-retired key of `set`: the current one, or the one pre-published to
    /// replace it.
    pub fn newest(&self, set: &str) -> Option<&Arc<SigningKey>> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.set == set && k.expires_at.is_none())
    }

    pub fn find(&self, set: &str, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.set == set && k.kid == kid)
    }

    /// RFC 7517 set of the public keys of `set` still published at `now`.
    pub fn jwks(&self, set: &str, now: i64) -> Value {
        let keys: Vec<&Value> = self
            .keys
            .iter()
            .rev()
            .filter(|k| k.set == set && k.in_jwks(now))
            .map(|k| &k.public_jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// Every loaded key, oldest first (the console lists them with their ages).
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    pub fn has_set(&self, set: &str, now: i64) -> bool {
        self.keys.iter().any(|k| k.set == set && k.in_jwks(now))
    }
}

/// Owns the key ring, persists keys through the store, and rotates.
pub struct KeyService {
    store: Arc<dyn Store>,
    secret: SystemSecret,
    ring: RwLock<Arc<KeyRing>>,
    pub rng: SystemRandom,
}

impl KeyService {
    /// Loads every stored key (decrypting with `secret`).
    pub fn load(store: Arc<dyn Store>, secret: SystemSecret) -> Result<Self, KeyError> {
        let svc = Self {
            store,
            secret,
            ring: RwLock::new(Arc::new(KeyRing::default())),
            rng: SystemRandom::new(),
        };
        svc.reload()?;
        Ok(svc)
    }

    pub fn reload(&self) -> Result<(), KeyError> {
        let mut keys = Vec::new();
        for stored in self.store.list_keys()? {
            let alg: Alg = stored.alg.parse()?;
            let der = self.secret.open(
                &stored.private_sealed,
                &seal_context(&stored.set, &stored.kid),
            )?;
            keys.push(Arc::new(SigningKey::from_pkcs8(
                &stored.set,
                &stored.kid,
                alg,
                &der,
                stored.created_at,
                stored.expires_at,
            )?));
        }
        if let Ok(mut ring) = self.ring.write() {
            *ring = Arc::new(KeyRing { keys });
        }
        Ok(())
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().map(|r| Arc::clone(&r)).unwrap_or_default()
    }

    /// Generates a key in `set`, published at once and signing after `prepublish` seconds
    /// (0: at once), and schedules older keys of the set to leave the JWKS `max_token_ttl`
    /// seconds after that (when every token they signed has expired).
    /// Blocking (RSA generation takes a while): call from a blocking context.
    pub fn rotate(
        &self,
        set: &str,
        alg: Alg,
        kid: Option<String>,
        max_token_ttl: i64,
        prepublish: i64,
    ) -> Result<Arc<SigningKey>, KeyError> {
        let kid = kid
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let der = generate_pkcs8(alg)?;
        let now = clock::now().saturating_add(prepublish.max(0));
        // Load it once before persisting: a key ring must never hold an unusable key.
        SigningKey::from_pkcs8(set, &kid, alg, &der, now, None)?;
        self.store.insert_key(&StoredKey {
            set: set.to_string(),
            kid: kid.clone(),
            alg: alg.as_str().to_string(),
            private_sealed: self.secret.seal(&der, &seal_context(set, &kid))?,
            created_at: now,
            expires_at: None,
        })?;
        // A small margin covers tokens signed in the instant before the swap and clock skew.
        self.store.retire_keys(
            set,
            &kid,
            crate::lifespan::expiry(now, max_token_ttl).saturating_add(60),
        )?;
        self.reload()?;
        tracing::info!(set, kid = %kid, alg = %alg, signs_from = now, "signing key created");
        self.ring()
            .find(set, &kid)
            .cloned()
            .ok_or_else(|| KeyError::NoKey(set.to_string()))
    }

    /// Makes sure `set` has a current key of `alg`, rotating if not.
    pub fn ensure_current(&self, set: &str, alg: Alg, max_token_ttl: i64) -> Result<(), KeyError> {
        let ring = self.ring();
        match ring.newest(set) {
            Some(k) if k.alg == alg => Ok(()),
            _ => self.rotate(set, alg, None, max_token_ttl, 0).map(|_| ()),
        }
    }

    /// Removes one key (or the whole set when `kid` is None); returns whether anything went.
    pub fn delete(&self, set: &str, kid: Option<&str>) -> Result<bool, KeyError> {
        let ring = self.ring();
        let mut any = false;
        for k in ring.keys.iter().filter(|k| k.set == set) {
            if kid.is_none_or(|kid| kid == k.kid) {
                any |= self.store.delete_key(set, &k.kid)?;
            }
        }
        self.reload()?;
        Ok(any)
    }
}

fn seal_context(set: &str, kid: &str) -> String {
    format!("{set}\0{kid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::b64url_decode;
    use crate::store::sqlite::SqliteStore;

    fn service(dir: &std::path::Path) -> KeyService {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir).unwrap());
        let secret = SystemSecret::from_secret("test-system-secret-123").unwrap();
        KeyService::load(store, secret).unwrap()
    }

    fn verify_compact(key: &SigningKey, jwt: &str) -> bool {
        let (msg, sig) = jwt.rsplit_once('.').unwrap();
        key.verify(msg.as_bytes(), &b64url_decode(sig).unwrap())
    }

    #[test]
    fn every_alg_signs_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        for alg in [Alg::ES256, Alg::EdDSA, Alg::RS256] {
            let key = svc.rotate("s", alg, None, 3600, 0).unwrap();
            let jwt = key.sign_jwt(&json!({"sub": "x"}), &svc.rng).unwrap();
            let header: Value =
                serde_json::from_slice(&b64url_decode(jwt.split('.').next().unwrap()).unwrap())
                    .unwrap();
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["kid"], key.kid.as_str());
            assert_eq!(header["typ"], "JWT");
            assert!(verify_compact(&key, &jwt));
            let tampered = jwt.replacen('.', ".e30", 1);
            assert!(!verify_compact(&key, &tampered));
        }
    }

    #[test]
    fn rotation_with_a_huge_lifespan_neither_wraps_nor_lingers_for_years() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        svc.rotate("s", Alg::ES256, Some("k1".into()), 3600, 0)
            .unwrap();
        // Once `now + i64::MAX` wrapped negative: the old key was purged at once and every
        // token it signed died.
        svc.rotate("s", Alg::ES256, Some("k2".into()), i64::MAX, 0)
            .unwrap();
        let now = clock::now();
        let retired = svc.ring().find("s", "k1").unwrap().expires_at.unwrap();
        assert!(retired > now, "retired at {retired}, now {now}");
        let ceiling = crate::lifespan::secs(crate::lifespan::CEILING);
        assert!(retired <= now + ceiling + 61, "retired at {retired}");
    }

    #[test]
    fn rotation_keeps_old_public_key_until_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let k1 = svc
            .rotate("s", Alg::ES256, Some("k1".into()), 3600, 0)
            .unwrap();
        let k2 = svc
            .rotate("s", Alg::ES256, Some("k2".into()), 3600, 0)
            .unwrap();
        let ring = svc.ring();
        assert_eq!(ring.current("s").unwrap().kid, "k2");
        let now = clock::now();
        let kids = |v: Value| -> Vec<String> {
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(kids(ring.jwks("s", now)), ["k2", "k1"]);
        // After the longest token lifetime (plus margin) the old key leaves the JWKS.
        assert_eq!(kids(ring.jwks("s", now + 3600 + 61)), ["k2"]);
        assert!(ring.find("s", &k1.kid).unwrap().expires_at.is_some());
        assert!(k2.expires_at.is_none());
    }

    #[test]
    fn keys_persist_encrypted_across_restart() {
        let dir = tempfile::tempdir().unwrap();
        let jwt;
        {
            let svc = service(dir.path());
            svc.ensure_current(ACCESS_TOKEN_SET, Alg::EdDSA, 3600)
                .unwrap();
            let key = svc.ring().current(ACCESS_TOKEN_SET).cloned().unwrap();
            jwt = key.sign_jwt(&json!({"a": 1}), &svc.rng).unwrap();
        }
        let svc = service(dir.path());
        let key = svc.ring().current(ACCESS_TOKEN_SET).cloned().unwrap();
        assert!(verify_compact(&key, &jwt));
        // Same alg: no new key on restart.
        svc.ensure_current(ACCESS_TOKEN_SET, Alg::EdDSA, 3600)
            .unwrap();
        assert_eq!(
            svc.ring().jwks(ACCESS_TOKEN_SET, clock::now())["keys"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // A wrong system secret cannot load them.
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let wrong = SystemSecret::from_secret("wrong-system-secret-000").unwrap();
        assert!(KeyService::load(store, wrong).is_err());
    }

    #[test]
    fn rsa_jwk_has_modulus_and_exponent() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let key = svc.rotate("s", Alg::RS256, None, 60, 0).unwrap();
        let jwk = key.public_jwk();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(
            b64url_decode(jwk["n"].as_str().unwrap()).unwrap().len(),
            256
        );
        assert_eq!(jwk["use"], "sig");
    }

    #[test]
    fn a_prepublished_key_is_in_the_jwks_before_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        svc.rotate("s", Alg::ES256, Some("k1".into()), 3600, 0)
            .unwrap();
        let k2 = svc
            .rotate("s", Alg::ES256, Some("k2".into()), 3600, 30)
            .unwrap();
        let ring = svc.ring();
        let now = clock::now();
        let kids = |v: Value| -> Vec<String> {
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect()
        };
        // Published at once, signing only once its time has come; the old key signs until then.
        assert_eq!(kids(ring.jwks("s", now)), ["k2", "k1"]);
        assert_eq!(ring.current_at("s", now).unwrap().kid, "k1");
        assert_eq!(ring.current_at("s", k2.created_at - 1).unwrap().kid, "k1");
        assert_eq!(ring.current_at("s", k2.created_at).unwrap().kid, "k2");
        assert_eq!(ring.newest("s").unwrap().kid, "k2");
        assert!(k2.created_at >= now + 29, "signs from {}", k2.created_at);
        // The old key outlives its last signature by the longest token lifetime.
        let retired = ring.find("s", "k1").unwrap().expires_at.unwrap();
        assert!(retired > k2.created_at + 3600, "retired at {retired}");
        assert_eq!(kids(ring.jwks("s", retired + 1)), ["k2"]);
        // A restart in the window keeps the pending key and does not rotate again.
        let svc = service(dir.path());
        svc.ensure_current("s", Alg::ES256, 3600).unwrap();
        assert_eq!(svc.ring().newest("s").unwrap().kid, "k2");
        assert_eq!(svc.ring().current_at("s", now).unwrap().kid, "k1");
    }
}
