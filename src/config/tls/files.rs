//! Reading the PEM files a config names: certificate chains, private keys and CA bundles.
//! Each failure is a problem at the config key that named the file; validity dates that
//! have passed or not begun are warnings.

use super::super::file::TlsCertificateSection;
use super::Findings;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::sync::Arc;

/// One loaded certificate: the key rustls serves, the names it answers to (for SNI), and the
/// key's DER for pingora's client certificate type.
pub(super) struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("names", &self.names)
            .finish()
    }
}

/// A chain and its key, checked: both parse, the key signs for the leaf, dates are current.
pub(super) fn certificate(
    section: &TlsCertificateSection,
    path: &[&str],
    found: &mut Findings<'_>,
) -> Option<Loaded> {
    let chain = pem_certs(&section.cert_file, path, found)?;
    if let Some(version) = chain.first().and_then(|leaf| old_version(leaf)) {
        found.problems.push(
            path,
            format!(
                "{}: the certificate is X.509 v{version}, which TLS libraries refuse; make a v3 one (openssl x509 -req ... -extfile with subjectAltName, or openssl req -x509 -addext subjectAltName=DNS:NAME)",
                section.cert_file
            ),
        );
        return None;
    }
    let key = private_key(&section.key_file, path, found)?;
    let key_der = key.secret_der().to_vec();
    let signing = match default_provider().key_provider.load_private_key(key) {
        Ok(signing) => signing,
        Err(e) => {
            found.problems.push(
                path,
                format!("{}: unusable private key: {e}", section.key_file),
            );
            return None;
        }
    };
    let certified = CertifiedKey::new(chain.clone(), signing);
    if let Err(e) = certified.keys_match() {
        found.problems.push(
            path,
            format!(
                "{} does not match the certificate in {}: {e}",
                section.key_file, section.cert_file
            ),
        );
        return None;
    }
    let names = leaf_names_and_dates(&chain, &section.cert_file, path, found);
    Some(Loaded {
        key: Arc::new(certified),
        names,
        key_der,
    })
}

/// The X.509 version of a certificate older than v3 (a v1 certificate has no extensions: no
/// subject alternative name, no basic constraints), `None` for v3 or what does not parse.
fn old_version(der: &CertificateDer<'_>) -> Option<u32> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let version = cert.version().0 + 1;
    (version < 3).then_some(version)
}

/// Every certificate in a PEM file (at least one).
pub(super) fn pem_certs(
    file: &str,
    path: &[&str],
    found: &mut Findings<'_>,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = read(file, path, found)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Some(certs),
        Ok(_) => {
            found.problems.push(
                path,
                format!("{file}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"),
            );
            None
        }
        Err(e) => {
            found
                .problems
                .push(path, format!("{file}: not valid PEM: {e}"));
            None
        }
    }
}

fn private_key(
    file: &str,
    path: &[&str],
    found: &mut Findings<'_>,
) -> Option<PrivateKeyDer<'static>> {
    let bytes = read(file, path, found)?;
    match rustls_pemfile::private_key(&mut bytes.as_slice()) {
        Ok(Some(key)) => Some(key),
        Ok(None) => {
            found.problems.push(
                path,
                format!("{file}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file"),
            );
            None
        }
        Err(e) => {
            found
                .problems
                .push(path, format!("{file}: not valid PEM: {e}"));
            None
        }
    }
}

pub(super) fn root_store(
    file: &str,
    path: &[&str],
    found: &mut Findings<'_>,
) -> Option<RootCertStore> {
    let certs = pem_certs(file, path, found)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        if let Err(e) = roots.add(cert) {
            found
                .problems
                .push(path, format!("{file}: not a usable CA certificate: {e}"));
            return None;
        }
    }
    Some(roots)
}

fn read(file: &str, path: &[&str], found: &mut Findings<'_>) -> Option<Vec<u8>> {
    match std::fs::read(file) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            found
                .problems
                .push(path, format!("{file}: cannot read: {e}"));
            None
        }
    }
}

/// The leaf's DNS names (subject alternative names, else the common name), with a warning
/// when any certificate of the chain is expired or not yet valid.
fn leaf_names_and_dates(
    chain: &[CertificateDer<'static>],
    file: &str,
    path: &[&str],
    found: &mut Findings<'_>,
) -> Vec<String> {
    let now = UnixTime::now().as_secs() as i64;
    let mut names = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            found
                .problems
                .push(path, format!("{file}: certificate {i} is not valid X.509"));
            continue;
        };
        let validity = cert.validity();
        let (from, until) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        if now > until {
            found.warnings.push(
                path,
                format!("{file}: certificate {i} expired on {}", validity.not_after),
            );
        } else if now < from {
            found.warnings.push(
                path,
                format!(
                    "{file}: certificate {i} is not valid before {}",
                    validity.not_before
                ),
            );
        }
        if i == 0 {
            names = dns_names(&cert);
        }
    }
    names
}

fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}
