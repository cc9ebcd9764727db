//! TLS settings of both sides, resolved once into ready values: PEM files are read and
//! checked here (parse errors, a key that does not match its certificate, validity dates as
//! warnings), listener settings become a ready `rustls::ServerConfig`, upstream settings
//! the CA list and client certificate pingora's connector takes per peer.
//!
//! Nothing here runs per connection; a bad file is a config problem with its key, never a
//! panic inside pingora's connector at the first handshake.

mod files;
mod sni;

use super::file::{ServerTlsSection, TlsCertificateSection, UpstreamSection};
use super::problems::Problems;
use files::{certificate, pem_certs, root_store, Loaded};
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::crypto::ring::default_provider;
use rustls::server::{danger::ClientCertVerifier, WebPkiClientVerifier};
use rustls::{ServerConfig, SupportedProtocolVersion};
use sni::SniResolver;
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
    let certs = listener_certificates(section, found);
    let versions = tls_versions(section.min_version.as_deref(), found);
    let verifier = match &section.client_ca_file {
        Some(path) => Some(client_verifier(path, found)?),
        None => None,
    };
    let certs = certs?;
    let builder = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(versions)
        .ok()?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    let http2 = super::values::flag(
        section.http2,
        true,
        &["server", "tls", "http2"],
        found.problems,
    );
    config.alpn_protocols = match http2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    let config = Arc::new(config);
    Some(ListenerTls { config, http2 })
}

/// Every `[[server.tls.certificates]]`, loaded; `None` if any fails (or there is none).
fn listener_certificates(
    section: &ServerTlsSection,
    found: &mut Findings<'_>,
) -> Option<Vec<Loaded>> {
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
        certs.extend(certificate(cert, &path, found));
    }
    (certs.len() == section.certificates.len() && !certs.is_empty()).then_some(certs)
}

/// The versions offered from `min_version` on; rustls has nothing older than 1.2.
fn tls_versions(
    min: Option<&str>,
    found: &mut Findings<'_>,
) -> &'static [&'static SupportedProtocolVersion] {
    static FROM_1_2: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static FROM_1_3: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match super::values::noted(
        min,
        "1.2",
        &["server", "tls", "min_version"],
        found.problems,
    ) {
        None | Some("1.2") => &FROM_1_2,
        Some("1.3") => &FROM_1_3,
        Some(other) => {
            found.problems.push(
                &["server", "tls", "min_version"],
                format!("{other:?} is not a TLS version batchgate offers (\"1.2\" or \"1.3\")"),
            );
            &FROM_1_3
        }
    }
}

/// Client certificates must chain to a CA in `path` (mTLS).
fn client_verifier(path: &str, found: &mut Findings<'_>) -> Option<Arc<dyn ClientCertVerifier>> {
    let key = ["server", "tls", "client_ca_file"];
    let roots = root_store(path, &key, found)?;
    let provider = Arc::new(default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| found.problems.push(&key, format!("{path}: {e}")))
        .ok()
}

/// An upstream's `tls`, `sni`, `ca_file`, `insecure_skip_verify` and client certificate.
pub(super) fn upstream_tls(
    name: &str,
    section: &UpstreamSection,
    found: &mut Findings<'_>,
) -> Option<UpstreamTls> {
    if !section.tls.unwrap_or(false) {
        refuse_tls_keys_without_tls(name, section, found);
        return None;
    }
    let sni = upstream_sni(name, section, found);
    let ca = section.ca_file.as_ref().and_then(|path| {
        let certs = pem_certs(path, &["upstreams", name, "ca_file"], found)?;
        let wrapped: Vec<WrappedX509> = certs
            .into_iter()
            .map(|der| WrappedX509::new(der.to_vec(), pingora::utils::tls::parse_x509))
            .collect();
        Some(Arc::from(wrapped))
    });
    let client_cert = client_certificate(name, section, found);
    let verify = !section.insecure_skip_verify.unwrap_or(false);
    if !verify {
        found.warnings.push(
            &["upstreams", name, "insecure_skip_verify"],
            "certificate verification is OFF for this upstream: anyone on the path can read and change its traffic (tests only)",
        );
    }
    let client_cert_files = section
        .client_cert_file
        .clone()
        .zip(section.client_key_file.clone());
    Some(UpstreamTls {
        sni,
        verify,
        ca_file: section.ca_file.clone().filter(|_| ca.is_some()),
        ca,
        client_cert_files: client_cert_files.filter(|_| client_cert.is_some()),
        client_cert,
    })
}

/// TLS keys on a cleartext upstream are a mistake worth saying (a forgotten `tls = true`).
fn refuse_tls_keys_without_tls(name: &str, section: &UpstreamSection, found: &mut Findings<'_>) {
    let keys = [
        ("sni", section.sni.is_some()),
        ("ca_file", section.ca_file.is_some()),
        (
            "insecure_skip_verify",
            section.insecure_skip_verify.is_some(),
        ),
        ("client_cert_file", section.client_cert_file.is_some()),
        ("client_key_file", section.client_key_file.is_some()),
    ];
    for (key, _) in keys.into_iter().filter(|(_, set)| *set) {
        found
            .problems
            .push(&["upstreams", name, key], "only applies with tls = true");
    }
}

/// `sni`, else `host` without its port. pingora turns verification off for an empty name,
/// so that is never allowed to happen silently.
fn upstream_sni(name: &str, section: &UpstreamSection, found: &mut Findings<'_>) -> String {
    let sni = section
        .sni
        .clone()
        .or_else(|| section.host.as_ref().map(|h| host_name(h).to_string()))
        .unwrap_or_default();
    if sni.is_empty() {
        found.problems.push(
            &["upstreams", name, "sni"],
            "a TLS upstream needs a server name: set sni (or host)",
        );
    }
    sni
}

/// `client_cert_file` and `client_key_file`, both or neither.
fn client_certificate(
    name: &str,
    section: &UpstreamSection,
    found: &mut Findings<'_>,
) -> Option<Arc<CertKey>> {
    let (cert, key) = match (&section.client_cert_file, &section.client_key_file) {
        (None, None) => return None,
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            found.problems.push(
                &["upstreams", name, "client_key_file"],
                "client_cert_file needs client_key_file",
            );
            return None;
        }
        (None, Some(_)) => {
            found.problems.push(
                &["upstreams", name, "client_cert_file"],
                "client_key_file needs client_cert_file",
            );
            return None;
        }
    };
    let files = TlsCertificateSection {
        cert_file: cert.clone(),
        key_file: key.clone(),
    };
    let entry = certificate(&files, &["upstreams", name, "client_cert_file"], found)?;
    let chain = entry.key.cert.iter().map(|c| c.to_vec()).collect();
    Some(Arc::new(CertKey::new(chain, entry.key_der)))
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
