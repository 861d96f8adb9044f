//! What every outbound HTTP client (the HTTP op and THINK) shares: trust roots for HTTPS (the
//! bundled public roots, plus the certificates of a site CA bundle (`ca_file`) when one is
//! configured) and capped reads of response bodies. And the one server side: a listener's
//! certificate and key ([`server_config`], the relay's `wss://`).
//!
//! A `ca_file` **adds** to the public roots rather than replacing them: a site-internal CA
//! (an LLM gateway, a proxy) is trusted and public sites keep working. The file is read and
//! checked once at start-up; an unreadable file, one without certificates, bad PEM or a
//! certificate that cannot serve as a trust root stops the daemon with the key and file named.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// The certificates of one `ca_file`, checked.
#[derive(Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    certs: Arc<Vec<Certificate<'static>>>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl CaBundle {
    /// Reads and checks the PEM bundle at `path`; problems go to `errors`, prefixed by `key`
    /// (the config key that named the file).
    pub fn load(path: &Path, key: &str, errors: &mut Vec<String>) -> Option<CaBundle> {
        let shown = path.display();
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                errors.push(format!("{key}: {shown} is not a regular file"));
                return None;
            }
            Err(e) => {
                errors.push(format!("{key}: cannot read {shown}: {e}"));
                return None;
            }
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("{key}: cannot read {shown}: {e}"));
                return None;
            }
        };
        match parse(&bytes) {
            Ok(certs) => Some(CaBundle {
                path: path.to_path_buf(),
                certs: Arc::new(certs),
            }),
            Err(e) => {
                errors.push(format!("{key}: {shown}: {e}"));
                None
            }
        }
    }

    /// How many certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Always false: a bundle without certificates is refused at load.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// The certificates of a PEM bundle, each checked to be usable as a trust root. Other PEM
/// items (keys) are skipped.
fn parse(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    let mut check = rustls::RootCertStore::empty();
    for item in ureq::tls::parse_pem(pem) {
        let item = item.map_err(|e| format!("not valid PEM: {e}"))?;
        if let PemItem::Certificate(c) = item {
            let der = rustls::pki_types::CertificateDer::from(c.der());
            check.add(der).map_err(|e| {
                format!(
                    "certificate {} is not usable as a trust root: {e}",
                    certs.len() + 1
                )
            })?;
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(
            "holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` \
                    blocks; convert a DER file with `openssl x509 -inform der -in FILE`)"
                .into(),
        );
    }
    Ok(certs)
}

/// The TLS settings of an HTTP client: the bundled public roots, plus `ca`'s certificates.
pub fn tls_config(ca: Option<&CaBundle>) -> TlsConfig {
    match ca {
        None => TlsConfig::default(),
        Some(ca) => TlsConfig::builder().root_certs(roots_with(ca)).build(),
    }
}

fn roots_with(ca: &CaBundle) -> RootCerts {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()))
        .chain(ca.certs.iter().cloned())
        .into()
}

/// The reason when `e` is a server certificate that was not accepted (unknown issuer, wrong
/// name, expired, ...): such errors are permanent and deserve their own message.
pub fn certificate_problem(e: &ureq::Error) -> Option<String> {
    let tls = match e {
        ureq::Error::Rustls(r) => r,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            Some("it was not issued by a trusted CA (UnknownIssuer)".into())
        }
        rustls::Error::InvalidCertificate(c) => Some(c.to_string()),
        _ => None,
    }
}

/// Reads a response body up to `cap` bytes; `true` when there was more.
pub fn read_capped(body: &mut ureq::Body, cap: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let reader = body.with_config().limit(u64::MAX).reader();
    let mut buf = Vec::new();
    reader.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    let truncated = buf.len() as u64 > cap;
    if truncated {
        buf.truncate(cap as usize);
    }
    Ok((buf, truncated))
}

/// A server configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate (expected PEM -----BEGIN CERTIFICATE-----)".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("no usable private key: {e}"))?;
    // ring is the one provider this build has. Newer rustls marks ring's provider deprecated
    // for its lack of post-quantum key exchange; the classical groups are what it offers.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not work together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bundles_are_refused() {
        let e = parse(b"hello\n").unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");
        let e =
            parse(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap_err();
        assert!(e.contains("not valid PEM"), "{e}");
        // Valid base64, not a certificate.
        let e = parse(b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(e.contains("certificate 1 is not usable"), "{e}");
    }

    #[test]
    fn a_bundle_adds_to_the_public_roots() {
        let one = Certificate::from_der(webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref());
        let ca = CaBundle {
            path: "x.pem".into(),
            certs: Arc::new(vec![one.to_owned()]),
        };
        match roots_with(&ca) {
            RootCerts::Specific(all) => assert_eq!(
                all.len(),
                webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() + 1
            ),
            other => panic!("{other:?}"),
        }
        assert!(format!("{ca:?}").contains("certificates: 1"));
        assert!(matches!(tls_config(None).root_certs(), RootCerts::WebPki));
    }
}
