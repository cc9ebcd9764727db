//! The failure table and the outcome helpers.

use super::*;

fn failure(kind: FailureKind, sent: Sent) -> Failure {
    Failure::new(kind, sent)
}

/// The one table: every failure kind's status, code, metric class and fault.
#[test]
fn every_failure_kind_maps_to_one_status_code_class_and_fault() {
    let refused = ItemRefusal::MethodNotAllowed {
        message: "no".to_string(),
    };
    let cases = [
        (
            FailureKind::Refused(refused),
            405,
            "MethodNotAllowed",
            ItemClass::Rejected,
            Fault::Client,
        ),
        (
            FailureKind::Timeout,
            504,
            "GatewayTimeout",
            ItemClass::Timeout,
            Fault::Upstream,
        ),
        (
            FailureKind::BatchDeadline,
            504,
            "BatchDeadlineExceeded",
            ItemClass::Timeout,
            Fault::Upstream,
        ),
        (
            FailureKind::Connect,
            502,
            "UpstreamConnectFailed",
            ItemClass::ConnectError,
            Fault::Upstream,
        ),
        (
            FailureKind::Tls,
            502,
            "UpstreamTlsFailed",
            ItemClass::TlsError,
            Fault::Upstream,
        ),
        (
            FailureKind::Connection,
            502,
            "UpstreamFailed",
            ItemClass::UpstreamError,
            Fault::Upstream,
        ),
        (
            FailureKind::ResponseTooLarge { limit: 9 },
            502,
            "UpstreamResponseTooLarge",
            ItemClass::UpstreamError,
            Fault::Upstream,
        ),
        (
            FailureKind::ReplyBudgetExceeded { limit: 9 },
            502,
            "ReplyTooLarge",
            ItemClass::UpstreamError,
            Fault::Proxy,
        ),
        (
            FailureKind::Cancelled,
            499,
            "Cancelled",
            ItemClass::Cancelled,
            Fault::Client,
        ),
        (
            FailureKind::NotRun,
            424,
            "FailedDependency.NotRun",
            ItemClass::Cancelled,
            Fault::Client,
        ),
        (
            FailureKind::DependencyFailed { dependency: 0 },
            424,
            "FailedDependency",
            ItemClass::Cancelled,
            Fault::Client,
        ),
        (
            FailureKind::Internal,
            500,
            "InternalError",
            ItemClass::Internal,
            Fault::Proxy,
        ),
    ];
    for (kind, status, code, class, fault) in cases {
        let outcome = Outcome::failed(kind.clone(), Sent::Maybe);
        let error = outcome.failure().map(Failure::http_error);
        assert_eq!(outcome.status(), status, "{kind:?}");
        assert_eq!(
            error.map(|e| (e.status, e.code)),
            Some((status, code)),
            "{kind:?}"
        );
        assert_eq!(outcome.class(), class, "{kind:?}");
        assert_eq!(
            outcome.failure().map(Failure::fault),
            Some(fault),
            "{kind:?}"
        );
        assert!(outcome.is_failure());
    }
}

/// The detail (the connector's or parser's words, naming addresses and OS errors) stays out
/// of the message, except a dependency's, which is the client's own; limits are named.
#[test]
fn messages_keep_internal_detail_out_and_name_the_limit() {
    let refused = failure(FailureKind::Connect, Sent::Nothing)
        .with_detail("Fail to connect to 127.0.0.1:29000 cause: Connection refused (os error 111)");
    assert_eq!(
        refused.http_error().message,
        "could not connect to the upstream"
    );
    let timeout = failure(FailureKind::Timeout, Sent::All).with_detail("timed out reading");
    assert_eq!(
        timeout.http_error().message,
        "the upstream did not answer in time"
    );
    let dependency = failure(
        FailureKind::DependencyFailed { dependency: 0 },
        Sent::Nothing,
    )
    .with_detail("dependency a answered 500");
    assert_eq!(
        dependency.http_error().message,
        "not run: an item it depends on did not succeed: dependency a answered 500"
    );
    let big = failure(FailureKind::ResponseTooLarge { limit: 7 }, Sent::All).with_detail("x");
    assert_eq!(
        big.http_error().message,
        "the upstream body exceeded 7 bytes"
    );
    assert_eq!(
        failure(FailureKind::Cancelled, Sent::Nothing)
            .http_error()
            .message,
        "the client closed the connection"
    );
}

/// An upstream answer's status is the item's status, whatever it is.
#[test]
fn a_response_is_not_a_failure_below_400() {
    let response = |status| {
        Outcome::Response(UpstreamResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        })
    };
    assert!(!response(204).is_failure());
    assert_eq!(response(404).status(), 404);
    assert!(response(404).is_failure());
    assert_eq!(response(503).class(), ItemClass::Status5xx);
    assert!(response(200).failure().is_none());
}

/// A refusal's status comes from its variant, never from the site that refuses.
#[test]
fn each_refusal_has_its_status_and_guard_errors_map_by_kind() {
    let cases = [
        (ItemRefusal::invalid("InvalidParameter.Url", "x"), 400),
        (
            ItemRefusal::Forbidden {
                code: "Forbidden.Url",
                message: "x".into(),
            },
            403,
        ),
        (
            ItemRefusal::MethodNotAllowed {
                message: "x".into(),
            },
            405,
        ),
        (
            ItemRefusal::HeadTooLarge {
                code: "InvalidArgument.HeadTooLarge",
                message: "x".into(),
            },
            431,
        ),
    ];
    for (refusal, status) in cases {
        let failure = Failure::new(FailureKind::Refused(refusal.clone()), Sent::Nothing);
        let shown = failure.http_error();
        assert_eq!((shown.status, shown.code), (status, refusal.code()));
        assert_eq!(shown.message, "x");
        assert_eq!(failure.class(), ItemClass::Rejected);
    }
    use crate::guard::GuardError;
    let forbidden = ItemRefusal::from(GuardError::PrefixNotAllowed("/admin".into()));
    assert_eq!(
        (forbidden.status(), forbidden.code()),
        (403, "Forbidden.Url")
    );
    let header = ItemRefusal::from(GuardError::BadHeaderName("a b".into()));
    assert_eq!(
        (header.status(), header.code()),
        (400, "InvalidParameter.Headers")
    );
    let url = ItemRefusal::from(GuardError::DotSegment);
    assert_eq!((url.status(), url.code()), (400, "InvalidParameter.Url"));
}
