//! What a reload does to an upstream client: whether the client built for the old settings
//! may be kept whole (`same_settings`) or its connections at least (`same_connections`). A
//! replaced client's late metric writes need no rule here: its series are handles, and the
//! ones the reload removes are detached (`metrics::UpstreamMetrics`).

use crate::config::UpstreamConfig;

/// Whether a reload may keep the client built for `old` (and its pooled connections) for
/// `new`: every setting equal, and the TLS files loaded to the same certificates (a renewed
/// certificate under the same file name gets a new client).
pub fn same_settings(old: &UpstreamConfig, new: &UpstreamConfig) -> bool {
    same_connections(old, new)
        && old.name == new.name
        && old.host == new.host
        && old.read_timeout == new.read_timeout
        && old.write_timeout == new.write_timeout
        && old.balance == new.balance
        && old.weights == new.weights
        && old.eject_after == new.eject_after
        && old.eject_for == new.eject_for
        && old.eject_on_5xx == new.eject_on_5xx
        && old.retry == new.retry
        && old.health_check == new.health_check
        && old.max_h2_streams == new.max_h2_streams
}

/// Whether the connections (and idle pools) built for `old` would be the same for `new`:
/// addresses, protocol, TLS, pool size and idle and connect timeouts.
pub(super) fn same_connections(old: &UpstreamConfig, new: &UpstreamConfig) -> bool {
    old.addresses == new.addresses
        && old.protocol == new.protocol
        && old.pipeline_depth == new.pipeline_depth
        && old.pipeline_max_delay == new.pipeline_max_delay
        && old.pool_size == new.pool_size
        && old.idle_timeout == new.idle_timeout
        && old.connect_timeout == new.connect_timeout
        && match (&old.tls, &new.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => same_tls(a, b),
            _ => false,
        }
}

fn same_tls(a: &crate::config::UpstreamTls, b: &crate::config::UpstreamTls) -> bool {
    use pingora::utils::tls::get_serial;
    let serials = |tls: &crate::config::UpstreamTls| {
        tls.ca.as_ref().map(|certs| {
            certs
                .iter()
                .map(|c| get_serial(c).unwrap_or_default())
                .collect::<Vec<_>>()
        })
    };
    let client = |tls: &crate::config::UpstreamTls| {
        tls.client_cert
            .as_ref()
            .map(|c| (c.serial(), c.key().clone()))
    };
    a.sni == b.sni
        && a.verify == b.verify
        && a.ca_file == b.ca_file
        && a.client_cert_files == b.client_cert_files
        && serials(a) == serials(b)
        && client(a) == client(b)
}
