//! TLS settings of both sides, resolved once into ready values: PEM files are read and
//! checked here (parse errors, a key that does not match its certificate, validity dates as
//! warnings), listener settings become a ready `rustls::ServerConfig`, upstream settings
//! the CA list and client certificate pingora's connector takes per peer.
//!
//! Nothing here runs per connection; a bad file is a config problem with its key, never a
//! panic inside pingora's connector at the first handshake.

use super::file::{ServerTlsSection, TlsCertificateSection, UpstreamSection};
use super::runtime::Problems;
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::sync::Arc;

/// A TLS listener's ready settings.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub config: Arc<ServerConfig>,
    /// Whether clients may choose HTTP/2 through ALPN.
    pub http2: bool,
}

/// TLS to an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Server name sent (SNI) and verified.
    pub sni: String,
    /// Off only with `insecure_skip_verify`, for tests.
    pub verify: bool,
    /// CA certificates to trust instead of the system roots: the file for the item
    /// connectors (built once), the certificates for pass-through peers.
    pub ca_file: Option<String>,
    pub ca: Option<Arc<[WrappedX509]>>,
    /// The client certificate (mTLS): the files for the item connectors, the loaded chain
    /// and key for pass-through peers.
    pub client_cert_files: Option<(String, String)>,
    pub client_cert: Option<Arc<CertKey>>,
}

/// Problems and warnings found while loading, each with its config key.
pub(super) struct Findings<'a> {
    pub problems: &'a mut Problems,
    pub warnings: &'a mut Problems,
}

/// `[server.tls]`: certificates chosen by SNI, a minimum version, optional client
/// certificates (mTLS), ALPN.
pub(super) fn listener_tls(
    section: &ServerTlsSection,
    found: &mut Findings<'_>,
) -> Option<ListenerTls> {
    let at = |key: &str| vec!["server".to_string(), "tls".to_string(), key.to_string()];
    if section.certificates.is_empty() {
        found.problems.push(
            &["server", "tls", "certificates"],
            "at least one [[server.tls.certificates]] is needed",
        );
    }
    let mut certs = Vec::new();
    for (i, cert) in section.certificates.iter().enumerate() {
        let i = i.to_string();
        let path = ["server", "tls", "certificates", i.as_str()];
        if let Some(entry) = certificate(cert, &path, found) {
            certs.push(entry);
        }
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match section.min_version.as_deref() {
        None | Some("1.2") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("1.3") => &[&rustls::version::TLS13],
        Some(other) => {
            let key = at("min_version");
            let key: Vec<&str> = key.iter().map(String::as_str).collect();
            found.problems.push(
                &key,
                format!("{other:?} is not a TLS version batchgate offers (\"1.2\" or \"1.3\")"),
            );
            &[&rustls::version::TLS13]
        }
    };
    let verifier = match &section.client_ca_file {
        None => None,
        Some(path) => {
            let roots = root_store(path, &["server", "tls", "client_ca_file"], found)?;
            let provider = Arc::new(default_provider());
            match WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build() {
                Ok(verifier) => Some(verifier),
                Err(e) => {
                    found
                        .problems
                        .push(&["server", "tls", "client_ca_file"], format!("{path}: {e}"));
                    None
                }
            }
        }
    };
    if certs.len() != section.certificates.len() || certs.is_empty() {
        return None;
    }
    let builder = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(versions)
        .ok()?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    let http2 = section.http2.unwrap_or(true);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Some(ListenerTls {
        config: Arc::new(config),
        http2,
    })
}

/// An upstream's `tls`, `sni`, `ca_file`, `insecure_skip_verify` and client certificate.
pub(super) fn upstream_tls(
    name: &str,
    section: &UpstreamSection,
    found: &mut Findings<'_>,
) -> Option<UpstreamTls> {
    let tls_keys = [
        ("sni", section.sni.is_some()),
        ("ca_file", section.ca_file.is_some()),
        (
            "insecure_skip_verify",
            section.insecure_skip_verify.is_some(),
        ),
        ("client_cert_file", section.client_cert_file.is_some()),
        ("client_key_file", section.client_key_file.is_some()),
    ];
    if !section.tls.unwrap_or(false) {
        for (key, set) in tls_keys {
            if set {
                found
                    .problems
                    .push(&["upstreams", name, key], "only applies with tls = true");
            }
        }
        return None;
    }
    let sni = section
        .sni
        .clone()
        .or_else(|| section.host.as_ref().map(|h| host_name(h).to_string()))
        .unwrap_or_default();
    if sni.is_empty() {
        // pingora turns verification off when the name is empty: never let that happen
        // silently.
        found.problems.push(
            &["upstreams", name, "sni"],
            "a TLS upstream needs a server name: set sni (or host)",
        );
    }
    let ca = section.ca_file.as_ref().and_then(|path| {
        let certs = pem_certs(path, &["upstreams", name, "ca_file"], found)?;
        let wrapped: Vec<WrappedX509> = certs
            .into_iter()
            .map(|der| WrappedX509::new(der.to_vec(), pingora::utils::tls::parse_x509))
            .collect();
        Some(Arc::from(wrapped))
    });
    let client_cert = match (&section.client_cert_file, &section.client_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let path = ["upstreams", name, "client_cert_file"];
            let files = TlsCertificateSection {
                cert_file: cert.clone(),
                key_file: key.clone(),
            };
            certificate(&files, &path, found).map(|entry| {
                let chain = entry.key.cert.iter().map(|c| c.to_vec()).collect();
                Arc::new(CertKey::new(chain, entry.key_der))
            })
        }
        (Some(_), None) => {
            found.problems.push(
                &["upstreams", name, "client_key_file"],
                "client_cert_file needs client_key_file",
            );
            None
        }
        (None, Some(_)) => {
            found.problems.push(
                &["upstreams", name, "client_cert_file"],
                "client_key_file needs client_cert_file",
            );
            None
        }
    };
    let verify = !section.insecure_skip_verify.unwrap_or(false);
    if !verify {
        found.warnings.push(
            &["upstreams", name, "insecure_skip_verify"],
            "certificate verification is OFF for this upstream: anyone on the path can read and change its traffic (tests only)",
        );
    }
    Some(UpstreamTls {
        sni,
        verify,
        ca_file: section.ca_file.clone().filter(|_| ca.is_some()),
        ca,
        client_cert_files: section
            .client_cert_file
            .clone()
            .zip(section.client_key_file.clone())
            .filter(|_| client_cert.is_some()),
        client_cert,
    })
}

/// `host` without a port (`api.example.com:8443` names `api.example.com`).
fn host_name(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// One loaded certificate: the key rustls serves, the names it answers to (for SNI), and the
/// key's DER for pingora's client certificate type.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("names", &self.names)
            .finish()
    }
}

/// A chain and its key, checked: both parse, the key signs for the leaf, dates are current.
fn certificate(
    section: &TlsCertificateSection,
    path: &[&str],
    found: &mut Findings<'_>,
) -> Option<Loaded> {
    let chain = pem_certs(&section.cert_file, path, found)?;
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

/// Every certificate in a PEM file (at least one).
fn pem_certs(
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

fn root_store(file: &str, path: &[&str], found: &mut Findings<'_>) -> Option<RootCertStore> {
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

/// Chooses the certificate by the client's server name (exact, then a `*.` wildcard for one
/// label); the first configured certificate answers clients that send no or an unknown name.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Loaded>,
}

impl SniResolver {
    fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let chosen = server_name.map(str::to_ascii_lowercase).and_then(|name| {
            let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            let exact = self.certs.iter().find(|c| c.names.contains(&name));
            exact.or_else(|| {
                let wildcard = wildcard.as_deref()?;
                self.certs
                    .iter()
                    .find(|c| c.names.iter().any(|n| n == wildcard))
            })
        });
        chosen.or(self.certs.first()).map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}
