//! Small cryptographic building blocks: OS randomness, base64url, SHA-256, and the system secret
//! that encrypts private keys at rest (AES-256-GCM).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the operating system random generator failed")]
    Random,
    #[error("decrypting a stored private key failed: wrong system secret or corrupt data")]
    Decrypt,
    #[error("encrypting a private key failed")]
    Encrypt,
    #[error("system secret: {0}")]
    Secret(String),
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| CryptoError::Random)?;
    Ok(buf)
}

pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn b64url_decode(data: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(data.trim_end_matches('=')).ok()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key that encrypts private signing keys at rest. Derived with SHA-256 from the configured
/// system secret, so any string of sufficient length works (as Hydra's `secrets.system`).
pub struct SystemSecret {
    key: LessSafeKey,
}

impl std::fmt::Debug for SystemSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemSecret(..)")
    }
}

const MIN_SECRET_LEN: usize = 16;

impl SystemSecret {
    pub fn from_secret(secret: &str) -> Result<Self, CryptoError> {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(CryptoError::Secret(format!(
                "must be at least {MIN_SECRET_LEN} characters long"
            )));
        }
        let derived = sha256(secret.as_bytes());
        let unbound = UnboundKey::new(&AES_256_GCM, &derived).map_err(|_| CryptoError::Encrypt)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Loads the secret from `file`, else `env_value`, else `<data_dir>/secrets.key` (generated
    /// with mode 0600 when missing). The bool is true when the generated fallback was used.
    pub fn load(
        file: Option<&Path>,
        env_value: Option<&str>,
        data_dir: &Path,
    ) -> Result<(Self, bool), CryptoError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CryptoError::Secret(format!("reading {}: {e}", path.display())))?;
            return Ok((Self::from_secret(&text)?, false));
        }
        if let Some(value) = env_value.filter(|v| !v.trim().is_empty()) {
            return Ok((Self::from_secret(value)?, false));
        }
        let path = data_dir.join("secrets.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Self::from_secret(&text)?, true)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(|e| {
                    CryptoError::Secret(format!("creating {}: {e}", data_dir.display()))
                })?;
                let secret = b64url(&random_bytes::<32>()?);
                write_private_file(&path, secret.as_bytes())
                    .map_err(|e| CryptoError::Secret(format!("writing {}: {e}", path.display())))?;
                Ok((Self::from_secret(&secret)?, true))
            }
            Err(e) => Err(CryptoError::Secret(format!(
                "reading {}: {e}",
                path.display()
            ))),
        }
    }

    /// `nonce || ciphertext || tag`, bound to `context` (e.g. the key id) as associated data.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(plain.to_vec())
    }
}

#[cfg(unix)]
fn write_private_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let s = SystemSecret::from_secret("0123456789abcdef-secret").unwrap();
        let sealed = s.seal(b"private key", "kid-1").unwrap();
        assert_eq!(s.open(&sealed, "kid-1").unwrap(), b"private key");
        assert!(s.open(&sealed, "kid-2").is_err());
        let other = SystemSecret::from_secret("another-secret-0123456").unwrap();
        assert!(other.open(&sealed, "kid-1").is_err());
    }

    #[test]
    fn short_secret_refused() {
        assert!(SystemSecret::from_secret("short").is_err());
    }

    #[test]
    fn generated_secret_file_is_private_and_stable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("not-yet-created");
        let dir = dir.as_path();
        let (a, generated) = SystemSecret::load(None, None, dir).unwrap();
        assert!(generated);
        let sealed = a.seal(b"x", "c").unwrap();
        let (b, _) = SystemSecret::load(None, None, dir).unwrap();
        assert_eq!(b.open(&sealed, "c").unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("secrets.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn env_secret_wins_over_generated() {
        let dir = tempfile::tempdir().unwrap();
        let (_, generated) =
            SystemSecret::load(None, Some("from-env-secret-value"), dir.path()).unwrap();
        assert!(!generated);
        assert!(!dir.path().join("secrets.key").exists());
    }
}
