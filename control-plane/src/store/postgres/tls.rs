//! libpq's TLS parameters, which the driver does not parse: `sslmode` up to `verify-ca` and
//! `verify-full`, `sslrootcert` (a PEM file, or `system`), and a client certificate in
//! `sslcert`/`sslkey`. They are taken out of the DSN here and turned into the rustls
//! configuration; the driver is left with `disable`, `prefer` or `require`.
//!
//! Fail closed: no mode accepts a certificate that does not chain to a trusted CA. `require`
//! and `prefer` check the host name as well (stricter than libpq, which checks nothing in
//! `require`); `verify-ca` skips only the host name, so it needs a CA of the operator's own
//! (with the web PKI trusted, any public certificate would pass). A `verify-*` mode is asked
//! of the driver as `require`, so a server without TLS is refused, never used in plaintext.

use super::ConfigError;
use postgres::config::SslMode;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    Disable,
    /// libpq's (and the driver's) default.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the web PKI.
    System,
}

/// The TLS parameters of a DSN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: Mode,
    pub root_cert: Option<RootCert>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

const TAKEN: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsParams {
    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "sslmode" => {
                self.mode = match value {
                    "disable" => Mode::Disable,
                    "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    _ => {
                        return Err(ConfigError::Dsn(format!(
                            "sslmode={value:?}: use disable, prefer, require, verify-ca or \
                             verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => {
                self.root_cert = Some(if value == "system" {
                    RootCert::System
                } else {
                    RootCert::File(PathBuf::from(value))
                });
            }
            "sslcert" => self.client_cert = Some(PathBuf::from(value)),
            "sslkey" => self.client_key = Some(PathBuf::from(value)),
            _ => {}
        }
        Ok(())
    }

    /// What the driver is asked for.
    pub fn driver_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

/// Takes the TLS parameters out of `dsn` (URL or `key=value` form); returns the rest.
pub fn split(dsn: &str) -> Result<(String, TlsParams), ConfigError> {
    let mut params = TlsParams::default();
    let rest = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        split_url(dsn, &mut params)?
    } else {
        split_key_values(dsn, &mut params)?
    };
    Ok((rest, params))
}

fn split_url(dsn: &str, params: &mut TlsParams) -> Result<String, ConfigError> {
    let Some((base, query)) = dsn.split_once('?') else {
        return Ok(dsn.to_string());
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let decoded = url::form_urlencoded::parse(pair.as_bytes()).next();
        match decoded {
            Some((k, v)) if TAKEN.contains(&k.as_ref()) => params.set(&k, &v)?,
            _ => kept.push(pair),
        }
    }
    Ok(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// `key=value` pairs separated by spaces, values optionally in single quotes with `\`
/// escapes (the driver's and libpq's syntax). Unparseable input is passed on unchanged for
/// the driver to reject with its own message.
fn split_key_values(dsn: &str, params: &mut TlsParams) -> Result<String, ConfigError> {
    let Some(pairs) = key_values(dsn) else {
        return Ok(dsn.to_string());
    };
    let mut kept = Vec::new();
    for (key, value, span) in pairs {
        if TAKEN.contains(&key.as_str()) {
            params.set(&key, &value)?;
        } else {
            kept.push(span);
        }
    }
    Ok(kept.join(" "))
}

/// `(key, unescaped value, the pair as written)`.
fn key_values(s: &str) -> Option<Vec<(String, String, &str)>> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Some(out);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => value.push(chars.next()?.1),
                Some((i, '\'')) if quoted => break i + 1,
                Some((i, c)) if !quoted && c.is_whitespace() => break i,
                Some((_, c)) => value.push(c),
                None if quoted => return None,
                None => break s.len(),
            }
        };
        if key.is_empty() {
            return None;
        }
        out.push((key, value, &s[start..end]));
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let err = |detail: String| ConfigError::CaFile {
        path: format!("{what} {}", path.display()),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The rustls connector for `params`, trusting `ca_file` (`--dsn-ca-file`) too.
pub fn connector(
    params: &TlsParams,
    ca_file: Option<&Path>,
) -> Result<MakeRustlsConnect, ConfigError> {
    let root_file = match &params.root_cert {
        Some(RootCert::File(p)) => Some(p.as_path()),
        _ => None,
    };
    if params.mode == Mode::VerifyCa && root_file.is_none() && ca_file.is_none() {
        return Err(ConfigError::Dsn(
            "sslmode=verify-ca needs sslrootcert=FILE or --dsn-ca-file: it does not check the \
             host name, so with only public CAs trusted any public certificate would pass"
                .into(),
        ));
    }
    // libpq trusts only the file named by sslrootcert; --dsn-ca-file adds to the web PKI.
    let web_pki = params.mode != Mode::VerifyCa && root_file.is_none();
    let mut roots = RootCertStore::empty();
    if web_pki {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for (path, what) in [(ca_file, "--dsn-ca-file"), (root_file, "sslrootcert")] {
        let Some(path) = path else { continue };
        for c in read_certs(path, what)? {
            roots.add(c).map_err(|e| ConfigError::CaFile {
                path: format!("{what} {}", path.display()),
                detail: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Dsn(e.to_string()))?;
    let builder = if params.mode == Mode::VerifyCa {
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| ConfigError::Dsn(format!("TLS roots: {e}")))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyHostName(chain)))
    } else {
        builder.with_root_certificates(roots)
    };
    let config = match (&params.client_cert, &params.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "sslcert")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ConfigError::Dsn(format!("sslkey {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConfigError::Dsn(format!("sslcert/sslkey: {e}")))?
        }
        _ => {
            return Err(ConfigError::Dsn(
                "sslcert and sslkey go together: give both or neither".into(),
            ));
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not
/// compared with the host connected to.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, after the chain: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let (rest, p) = split(
            "postgres://u:p@db.example:5432/app?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.example:5432/app?application_name=x&connect_timeout=3"
        );
        assert_eq!(p.mode, Mode::VerifyFull);
        assert_eq!(p.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(p.client_cert, Some("/c.pem".into()));
        assert_eq!(p.client_key, Some("/k.pem".into()));
        assert_eq!(p.driver_mode(), SslMode::Require);

        let (rest, p) = split("postgres://h/db?sslmode=verify-ca").unwrap();
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(p.mode, Mode::VerifyCa);
        let (rest, p) = split("postgres://h/db").unwrap();
        assert_eq!((rest.as_str(), p.mode), ("postgres://h/db", Mode::Prefer));
    }

    #[test]
    fn tls_parameters_leave_key_value_dsns() {
        let (rest, p) = split(
            "host=h user='a b' sslmode = verify-full sslrootcert='/x y/ca.pem' password=p\\ q",
        )
        .unwrap();
        assert_eq!(rest, "host=h user='a b' password=p\\ q");
        assert_eq!(p.mode, Mode::VerifyFull);
        assert_eq!(p.root_cert, Some(RootCert::File("/x y/ca.pem".into())));
        // Unbalanced quotes: passed on for the driver to reject.
        assert_eq!(split("host='h").unwrap().0, "host='h");
    }

    #[test]
    fn unsafe_or_unknown_settings_are_refused() {
        for bad in [
            "postgres://h/db?sslmode=allow",
            "postgres://h/db?sslmode=VERIFY-FULL",
            "host=h sslmode=bogus",
        ] {
            assert!(
                matches!(split(bad), Err(ConfigError::Dsn(m)) if m.contains("verify-full")),
                "{bad}"
            );
        }
        // verify-ca with only the web PKI would accept anybody's public certificate.
        for dsn in [
            "postgres://h/db?sslmode=verify-ca",
            "postgres://h/db?sslmode=verify-ca&sslrootcert=system",
        ] {
            let (_, p) = split(dsn).unwrap();
            assert!(
                matches!(connector(&p, None), Err(ConfigError::Dsn(m)) if m.contains("verify-ca")),
                "{dsn}"
            );
        }
        let (_, p) = split("postgres://h/db?sslmode=require&sslcert=/c.pem").unwrap();
        assert!(matches!(connector(&p, None), Err(ConfigError::Dsn(m)) if m.contains("sslkey")));
        let (_, p) = split("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent").unwrap();
        assert!(matches!(
            connector(&p, None),
            Err(ConfigError::CaFile { .. })
        ));
    }
}
