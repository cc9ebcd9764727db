//! The listener's certificate choice by SNI.

use super::files::Loaded;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// Chooses the certificate by the client's server name (exact, then a `*.` wildcard for one
/// label); the first configured certificate answers clients that send no or an unknown name.
#[derive(Debug)]
pub(super) struct SniResolver {
    pub certs: Vec<Loaded>,
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
