//! HTTPS (and so WSS) on the HTTP port: the certificate the server presents, from PEM files
//! that are read again when they change or on SIGHUP (certbot and cert-manager renew them in
//! place), or generated at start as a self-signed certificate for the advertised names.
//!
//! The certificate lives behind a resolver the TLS configuration asks on every handshake, so a
//! reload takes effect for the next connection without a restart; a reload that fails keeps the
//! certificate in use and says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A certificate chain and its private key, PEM files.
    Files {
        /// The certificate chain (leaf first).
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A certificate generated at start, valid for these DNS names and IP addresses.
    SelfSigned {
        /// Subject alternative names.
        names: Vec<String>,
    },
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key does not suit the certificate, or TLS could not be set up with it.
    #[error("{0}")]
    Config(String),
}

/// The server's certificate, replaceable while the server runs.
#[derive(Debug)]
pub struct Tls {
    source: TlsSource,
    resolver: Arc<Resolver>,
    /// Modification times of the files when last loaded.
    loaded: RwLock<Option<(SystemTime, SystemTime)>>,
}

impl Tls {
    /// Loads (or generates) the certificate.
    pub fn new(source: TlsSource) -> Result<Tls, TlsError> {
        let (key, mtimes) = load(&source)?;
        Ok(Tls {
            source,
            resolver: Arc::new(Resolver {
                current: RwLock::new(Arc::new(key)),
            }),
            loaded: RwLock::new(mtimes),
        })
    }

    /// A TLS configuration that always presents the current certificate (HTTP/1.1: browsers
    /// open WebSockets over it).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The SHA-256 fingerprint of the certificate in use (`AA:BB:...`), as browsers show it.
    pub fn fingerprint(&self) -> String {
        let current = self.resolver.current.read().clone();
        current
            .cert
            .first()
            .map_or_else(String::new, |der| fingerprint(der))
    }

    /// The files' source, if the certificate comes from files.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        match &self.source {
            TlsSource::Files { cert, key } => Some((cert, key)),
            TlsSource::SelfSigned { .. } => None,
        }
    }

    /// Reads the files again if they changed since they were loaded (`force`: in any case).
    /// Returns whether a new certificate is in use. A self-signed certificate never reloads.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let Some((cert, key)) = self.files() else {
            return Ok(false);
        };
        let now = (mtime(cert)?, mtime(key)?);
        if !force && *self.loaded.read() == Some(now) {
            return Ok(false);
        }
        let (certified, mtimes) = load(&self.source)?;
        *self.resolver.current.write() = Arc::new(certified);
        *self.loaded.write() = mtimes;
        Ok(true)
    }
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

type Loaded = (CertifiedKey, Option<(SystemTime, SystemTime)>);

fn load(source: &TlsSource) -> Result<Loaded, TlsError> {
    match source {
        TlsSource::Files { cert, key } => {
            // The times first: a file replaced while we read it is read again next time.
            let mtimes = (mtime(cert)?, mtime(key)?);
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_error(cert, &e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_error(cert, &e.to_string()))?;
            if chain.is_empty() {
                return Err(file_error(cert, "no certificate in this PEM file"));
            }
            let private = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_error(key, &format!("no usable private key: {e}")))?;
            Ok((certified(chain, private)?, Some(mtimes)))
        }
        TlsSource::SelfSigned { names } => {
            let generated = rcgen::generate_simple_self_signed(names.clone())
                .map_err(|e| TlsError::Config(format!("cannot generate a certificate: {e}")))?;
            let chain = vec![generated.cert.der().clone()];
            let private = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
            Ok((certified(chain, private)?, None))
        }
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    let provider = aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| TlsError::Config(format!("the key does not fit the certificate: {e}")))?;
    Ok(certified)
}

fn mtime(path: &Path) -> Result<SystemTime, TlsError> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| file_error(path, &e.to_string()))
}

fn file_error(path: &Path, reason: &str) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A new self-signed certificate for `names` and its private key, as PEM (certificate,
/// key): for tests and for trying `--tls-cert` without a CA.
pub fn self_signed_pem(names: &[String]) -> Result<(String, String), TlsError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Config(format!("cannot generate a certificate: {e}")))?;
    let key = generated.signing_key.serialize_der();
    Ok((
        pem("CERTIFICATE", generated.cert.der()),
        pem("PRIVATE KEY", &key),
    ))
}

/// DER wrapped as PEM.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// `AA:BB:...` SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_has_a_fingerprint_and_does_not_reload() {
        let tls = Tls::new(TlsSource::SelfSigned {
            names: vec!["localhost".into(), "198.18.0.1".into()],
        })
        .unwrap();
        let fp = tls.fingerprint();
        assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
        assert!(!tls.reload(true).unwrap());
        assert!(tls.server_config().is_ok());
    }

    #[test]
    fn files_are_read_again_when_they_change_and_a_bad_file_keeps_the_old_certificate() {
        let dir = std::env::temp_dir().join(format!("sfu-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let write = |name: &str| {
            let (c, k) = self_signed_pem(&[name.to_string()]).unwrap();
            std::fs::write(&cert, c).unwrap();
            std::fs::write(&key, k).unwrap();
        };
        write("one.test");
        let tls = Tls::new(TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        })
        .unwrap();
        let first = tls.fingerprint();
        assert!(!tls.reload(false).unwrap(), "unchanged");
        write("two.test");
        assert!(tls.reload(true).unwrap());
        assert_ne!(tls.fingerprint(), first, "renewed");
        std::fs::write(&key, "not a key").unwrap();
        assert!(tls.reload(true).is_err());
        assert_ne!(
            tls.fingerprint(),
            first,
            "the renewed certificate stays in use"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
