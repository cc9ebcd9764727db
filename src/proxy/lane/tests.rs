//! Which requests the lane relays itself, and the upstream head it writes for them.

use super::{header_in, plan, target_of, Plan};
use crate::config::Config;
use crate::proxy::live::Live;
use std::sync::Arc;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
default_upstream = "api"

[upstreams.api]
addresses = ["127.0.0.1:9"]

[[routes]]
name = "batch"
path = "/v2/batch"
dialect = "envelope"
upstream = "api"
"#;

fn live() -> Live {
    let config = Config::parse(CONFIG, "lane.toml").expect("config");
    let admission = Arc::new(crate::admission::Admission::new(
        config.server.admission.clone(),
        config.server.max_in_flight,
    ));
    Live::build(&config, None, &admission)
}

fn planned(head: &str, host: Option<&str>) -> Option<(Plan, String)> {
    let live = live();
    let mut out = Vec::new();
    let client = Some("10.1.2.3");
    let is_route = |method: &http::Method, path: &str| live.route_for(method, path).is_some();
    let plan = plan(head.as_bytes(), is_route, host, client, &mut out)?;
    Some((plan, String::from_utf8(out).expect("utf-8")))
}

#[test]
fn a_plain_request_is_relayed_with_the_headers_the_proxy_owns_set() {
    let head = "POST /things?a=1 HTTP/1.1\r\nHost: api\r\nConnection: keep-alive\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: req-1\r\nX-Real-IP: 6.6.6.6\r\nX_Forwarded_For: 7.7.7.7\r\nContent-Length: 0007\r\nAccept: */*\r\n\r\n";
    let (plan, out) = planned(head, None).expect("relayed");
    assert_eq!(plan.method, http::Method::POST);
    assert_eq!(plan.length, 7);
    assert!(!plan.close);
    assert_eq!(
        out,
        "POST /things?a=1 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\nX-Request-Id: req-1\r\nX-Forwarded-For: 10.1.2.3\r\nContent-Length: 7\r\n\r\n"
    );
    assert_eq!(target_of(out.as_bytes()), "/things?a=1");
    assert_eq!(header_in(head.as_bytes(), "accept"), Some(&b"*/*"[..]));
}

#[test]
fn the_upstream_host_replaces_the_clients_and_close_is_kept() {
    let head = "GET / HTTP/1.1\r\nhost: client.example\r\nConnection: close\r\n\r\n";
    let (plan, out) = planned(head, Some("api.internal")).expect("relayed");
    assert!(plan.close);
    assert!(out.contains("Host: api.internal\r\n"), "{out}");
    assert!(!out.contains("client.example"), "{out}");
    assert_eq!(plan.request_id.len(), 32, "a fresh id");
}

#[test]
fn everything_unusual_is_left_to_pingora() {
    for head in [
        // A batch route, whatever the method.
        "POST /v2/batch HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /v2/batch HTTP/1.1\r\nHost: a\r\n\r\n",
        // Other versions, methods and targets.
        "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        // Host missing or repeated.
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        // Framing other than one plain length.
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        // Switches, interim answers, connection options.
        "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
        // Malformed heads: pingora answers them its way.
        "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\n\n",
    ] {
        assert!(planned(head, None).is_none(), "relayed: {head:?}");
    }
}

#[test]
fn too_many_headers_are_left_to_pingora() {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..super::MAX_HEADERS {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    assert!(planned(&head, None).is_none());
}
