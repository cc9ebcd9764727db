//! Why one exchange with an upstream address failed, the same for every protocol, and the one
//! mapping of it to an item's `Failure`.

use crate::item::{Failure, FailureKind, Sent};
use pingora::ErrorType;

/// Why one exchange with an address failed, with how much of the request had left: what
/// decides whether it may be sent again (`attempt::may_send_again`) and whether the address
/// failed (`attempt::address_failed`).
#[derive(Debug)]
pub(super) enum ExchangeError {
    /// No connection was made: nothing was sent. `tls`: the TLS handshake failed (the fix is
    /// a certificate or a name, not the network).
    Connect { tls: bool, detail: String },
    /// The connection failed or closed, or the answer could not be read or framed.
    Broken { sent: Sent, detail: String },
    /// A read or write timeout fired before the item timeout.
    Timeout { sent: Sent, detail: String },
    /// The answer's body is longer than the item may take; the request was sent in full.
    TooLarge { limit: usize },
}

impl ExchangeError {
    /// A connection that could not be made.
    pub(super) fn connect(error: &pingora::Error) -> Self {
        let tls = matches!(
            error.etype(),
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::TLSWantX509Lookup
        );
        ExchangeError::Connect {
            tls,
            detail: error.to_string(),
        }
    }

    /// How much of the request had left when the exchange failed.
    pub(super) fn sent(&self) -> Sent {
        match self {
            ExchangeError::Connect { .. } => Sent::Nothing,
            ExchangeError::Broken { sent, .. } | ExchangeError::Timeout { sent, .. } => *sent,
            ExchangeError::TooLarge { .. } => Sent::All,
        }
    }
}

/// The one mapping of an exchange's failure to an item's.
impl From<ExchangeError> for Failure {
    fn from(error: ExchangeError) -> Failure {
        let sent = error.sent();
        let (kind, detail) = match error {
            ExchangeError::Connect { tls: true, detail } => (FailureKind::Tls, Some(detail)),
            ExchangeError::Connect { tls: false, detail } => (FailureKind::Connect, Some(detail)),
            ExchangeError::Broken { detail, .. } => (FailureKind::Connection, Some(detail)),
            ExchangeError::Timeout { detail, .. } => (FailureKind::Timeout, Some(detail)),
            ExchangeError::TooLarge { limit } => (FailureKind::ResponseTooLarge { limit }, None),
        };
        let failure = Failure::new(kind, sent);
        match detail {
            Some(detail) => failure.with_detail(detail),
            None => failure,
        }
    }
}
