//! The two decisions every attempt of an item ends with, each made here and nowhere else:
//!
//! * **may it be sent again?** (`may_send_again`) — asked by the stale pooled connection
//!   rule (`send_h1`), the HTTP/2 resend of a refused stream (`send_h2`), the retry policy
//!   (`retry::reason`) and hedging (`hedged`). What triggers a second attempt differs; what
//!   makes it safe does not: nothing of the request reached the upstream, or the route says
//!   the method may be done twice.
//! * **did the address fail?** (`address_failed`) — what passive ejection counts, for items
//!   and pass-through alike: a connection or TLS handshake that failed, a connection reset
//!   or closed before a complete answer, no answer in time, and a 5xx when the upstream asks
//!   for it (`eject_on_5xx`), as nginx's `max_fails` counts errors and timeouts and Envoy's
//!   outlier detection counts consecutive gateway failures.

use crate::item::{FailureKind, Outcome, Sent};

/// Whether an attempt of which `sent` reached the upstream may be sent again: always when
/// nothing did; otherwise only if the item is `repeatable` (its method is one of the route's
/// `idempotent_methods`), also when an answer had begun and was cut: batchgate holds an
/// item's answer until it is whole, so nothing of it reached the client (nginx's
/// `proxy_next_upstream` rule). An attempt still running (a hedge's first copy) and an answer
/// the policy retries on (a 503) are `Sent::Maybe`.
pub fn may_send_again(sent: Sent, repeatable: bool) -> bool {
    sent == Sent::Nothing || repeatable
}

/// Whether an attempt's outcome counts against its address for ejection.
pub fn address_failed(outcome: &Outcome, eject_on_5xx: bool) -> bool {
    match outcome {
        Outcome::Response(response) => eject_on_5xx && response.status >= 500,
        Outcome::Failed(failure) => match failure.kind {
            FailureKind::Connect | FailureKind::Tls | FailureKind::Timeout => true,
            // Reset, closed or malformed before the answer was complete. An answer too large
            // for the item is the resource's fault, not the address's.
            FailureKind::Connection => true,
            FailureKind::ResponseTooLarge { .. }
            | FailureKind::Refused(_)
            | FailureKind::BatchDeadline
            | FailureKind::ReplyBudgetExceeded { .. }
            | FailureKind::Cancelled
            | FailureKind::NotRun
            | FailureKind::DependencyFailed { .. }
            | FailureKind::ReferenceUnresolved
            | FailureKind::UpstreamBatch
            | FailureKind::Internal => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Failure, UpstreamResponse};

    #[test]
    fn only_what_cannot_do_harm_twice_is_sent_again() {
        for repeatable in [false, true] {
            assert!(
                may_send_again(Sent::Nothing, repeatable),
                "nothing reached it"
            );
        }
        assert!(
            !may_send_again(Sent::Maybe, false),
            "a POST that may have arrived"
        );
        assert!(
            !may_send_again(Sent::All, false),
            "a POST that was acted on"
        );
        assert!(may_send_again(Sent::Maybe, true), "an idempotent method");
        assert!(
            may_send_again(Sent::All, true),
            "a cut answer to an idempotent method"
        );
    }

    #[test]
    fn errors_timeouts_and_resets_fail_an_address_and_answers_do_not() {
        let failed = |kind| Outcome::Failed(Failure::new(kind, Sent::Maybe));
        let answer = |status| {
            Outcome::Response(UpstreamResponse {
                status,
                headers: http::HeaderMap::new(),
                body: bytes::Bytes::new(),
            })
        };
        for kind in [
            FailureKind::Connect,
            FailureKind::Tls,
            FailureKind::Connection,
            FailureKind::Timeout,
        ] {
            assert!(address_failed(&failed(kind.clone()), false), "{kind:?}");
        }
        let too_large = failed(FailureKind::ResponseTooLarge { limit: 1 });
        assert!(!address_failed(&too_large, false));
        assert!(!address_failed(&failed(FailureKind::Cancelled), false));
        assert!(!address_failed(&answer(503), false));
        assert!(address_failed(&answer(503), true), "eject_on_5xx");
        assert!(!address_failed(&answer(404), true));
    }
}
