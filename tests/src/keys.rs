//! Test key material and token minting. Keys (RSA 2048, EC P-256, EC P-384, Ed25519) are
//! generated once per test process with the `openssl` CLI (fresh keys every run, no secrets in
//! the repository); JWKs come from jsonwebtoken's own key parsing, so the key set and the
//! signatures always agree. Also crafts the bad tokens a verifier must reject.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The issuer `claims` puts in tokens.
pub const ISSUER: &str = "https://issuer.portcullis.test/";
/// The audience `claims` puts in tokens.
pub const AUDIENCE: &str = "https://api.portcullis.test";

/// One key pair: PEMs, its `kid` and its public JWK (with `kid`, `use: sig`).
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub kid: String,
    /// Algorithm the key is minted with by default (RSA also serves RS384/512, PS*).
    pub alg: Algorithm,
    pub private_pem: String,
    pub public_pem: String,
    pub jwk: Value,
}

/// The process-wide test keys.
#[derive(Debug)]
pub struct Keys {
    pub rsa: KeyPair,
    pub ec256: KeyPair,
    pub ec384: KeyPair,
    pub ed25519: KeyPair,
}

static KEYS: OnceLock<Keys> = OnceLock::new();

/// The test keys, generated on first use.
pub fn keys() -> &'static Keys {
    KEYS.get_or_init(|| Keys {
        rsa: generate(
            "rsa-1",
            Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        ec256: generate(
            "ec256-1",
            Algorithm::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        ec384: generate(
            "ec384-1",
            Algorithm::ES384,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        ed25519: generate("ed25519-1", Algorithm::EdDSA, &["-algorithm", "ED25519"]),
    })
}

impl Keys {
    /// `{"keys": [...]}` with all four public keys.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.rsa.jwk, self.ec256.jwk, self.ec384.jwk, self.ed25519.jwk]})
    }

    /// The key that signs `alg`.
    pub fn for_alg(&self, alg: Algorithm) -> &KeyPair {
        match alg {
            Algorithm::ES256 => &self.ec256,
            Algorithm::ES384 => &self.ec384,
            Algorithm::EdDSA => &self.ed25519,
            _ => &self.rsa,
        }
    }
}

fn openssl(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "running `openssl {}`: {e} (is the openssl CLI installed?)",
                args.join(" ")
            )
        });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("writing openssl stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("waiting for openssl");
    assert!(
        out.status.success(),
        "`openssl {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("openssl output is PEM text")
}

fn generate(kid: &str, alg: Algorithm, genpkey_args: &[&str]) -> KeyPair {
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey_args);
    let private_pem = openssl(&args, None);
    let public_pem = openssl(&["pkey", "-pubout"], Some(&private_pem));
    let key = encoding_key(alg, &private_pem);
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&key, alg).expect("JWK from a fresh key"))
            .expect("serializing a JWK");
    if let Some(obj) = jwk.as_object_mut() {
        obj.insert("kid".into(), json!(kid));
        obj.insert("use".into(), json!("sig"));
        // One RSA key signs RS*/PS* tokens: pinning `alg` in its JWK would forbid that.
        if matches!(alg, Algorithm::RS256) {
            obj.remove("alg");
        }
    }
    KeyPair {
        kid: kid.to_owned(),
        alg,
        private_pem,
        public_pem,
        jwk,
    }
}

fn encoding_key(alg: Algorithm, private_pem: &str) -> EncodingKey {
    let pem = private_pem.as_bytes();
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    }
    .unwrap_or_else(|e| panic!("loading the {alg:?} test key: {e}"))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Typical valid claims: `sub`, `iss` = [`ISSUER`], `aud` = [[`AUDIENCE`]], `iat`/`nbf` now,
/// `exp` in one hour, `scp` = `scopes`. Tests tweak the returned object.
pub fn claims(sub: &str, scopes: &[&str]) -> Value {
    let now = now();
    json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "scp": scopes,
    })
}

/// A token signed with the test key for `alg`, header `kid` = `kid` (pass a kid that is not in
/// the JWKS to test unknown keys).
pub fn mint(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let pair = keys().for_alg(alg);
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &encoding_key(pair.alg, &pair.private_pem))
        .unwrap_or_else(|e| panic!("minting a {alg:?} token: {e}"))
}

/// [`mint`] with the key's own kid.
pub fn mint_default(alg: Algorithm, claims: &Value) -> String {
    mint(alg, &keys().for_alg(alg).kid.clone(), claims)
}

/// A token signed with the test key for `alg` under exactly the JOSE `header` given (for
/// headers `jsonwebtoken` cannot write: `crit`, `b64`, `zip`, odd `typ`s).
pub fn mint_with_header(alg: Algorithm, header: &Value, claims: &Value) -> String {
    let pair = keys().for_alg(alg);
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &encoding_key(pair.alg, &pair.private_pem),
        alg,
    )
    .unwrap_or_else(|e| panic!("signing a {alg:?} token: {e}"));
    format!("{signing_input}.{sig}")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `alg: none`, empty signature.
pub fn alg_none(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": keys().rsa.kid});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// HS256 with the RSA public key's PEM as the HMAC secret (the classic key-confusion attack).
pub fn hs256_with_public_key(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(keys().rsa.kid.clone());
    let key = EncodingKey::from_secret(keys().rsa.public_pem.as_bytes())
        .expect("any bytes are an HMAC key");
    jsonwebtoken::encode(&header, claims, &key).expect("HS256 signing cannot fail")
}

/// `token` with one signature byte flipped (still valid base64url).
pub fn tampered_signature(token: &str) -> String {
    let (signed, sig) = token.rsplit_once('.').expect("a JWS has three parts");
    let mut raw = URL_SAFE_NO_PAD.decode(sig).expect("signature is base64url");
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    format!("{signed}.{}", b64(&raw))
}

/// `token` with its payload replaced by `claims`, signature kept (must fail verification).
pub fn tampered_payload(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().expect("a JWS has a header");
    let _ = parts.next();
    let sig = parts.next().expect("a JWS has a signature");
    format!("{header}.{}.{sig}", b64(claims.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    #[test]
    fn minted_tokens_verify_against_the_jwks() {
        for alg in [
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            let token = mint_default(alg, &claims("alice", &["read"]));
            let pair = keys().for_alg(alg);
            let jwk: Jwk = serde_json::from_value(pair.jwk.clone()).unwrap();
            let key = DecodingKey::from_jwk(&jwk).unwrap();
            let mut validation = Validation::new(alg);
            validation.set_audience(&[AUDIENCE]);
            validation.set_issuer(&[ISSUER]);
            let data = decode::<Value>(&token, &key, &validation).unwrap();
            assert_eq!(data.claims["sub"], "alice", "{alg:?}");
            let bad = tampered_signature(&token);
            assert!(
                decode::<Value>(&bad, &key, &validation).is_err(),
                "{alg:?} tampered"
            );
        }
    }

    #[test]
    fn crafted_tokens_have_the_expected_headers() {
        let none = alg_none(&claims("mallory", &[]));
        assert!(none.ends_with('.'));
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(none.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "none");
        let hs = hs256_with_public_key(&claims("mallory", &[]));
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(hs.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "HS256");
    }
}
