//! `batchgate check`: every shipped config is accepted; unknown keys and invalid values are
//! rejected with exit code 1 and a `FILE:LINE:COL: key` location on stderr.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::config::GateConfig;
use common::gate;

/// Regular files directly inside `dir`, sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// 1-based line of the first line of `config` that starts with `prefix`.
fn line_of(config: &str, prefix: &str) -> usize {
    config
        .lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{config}"))
        + 1
}

/// Asserts exit code 1 and a stderr line `.../config.toml:LINE:COL: ...` containing `needle`.
fn assert_rejected_at(out: &Output, line: usize, column: usize, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check must exit 1; stderr: {stderr}"
    );
    let location = format!("config.toml:{line}:{column}: ");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&location) && l.contains(needle)),
        "stderr must name {location:?} and {needle:?}; got:\n{stderr}"
    );
}

/// Proves `batchgate check` accepts every file shipped in `conf/` and `conf/examples/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_every_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut files = files_in(&root);
    files.extend(files_in(&root.join("examples")));
    assert!(files.len() >= 2, "no configs found in {}", root.display());
    for file in files {
        let config = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let out = gate::check(&config);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} rejected:\n{}",
            file.display(),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains(": ok"),
            "{}: {}",
            file.display(),
            text(&out.stdout)
        );
    }
}

/// Proves the config the tests run with passes `check` too (so the other tests fail for
/// the right reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_the_test_config() {
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let out = gate::check(&GateConfig::new(upstream).toml());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Proves an unknown key is rejected with exit code 1, naming FILE:LINE:COL and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_unknown_key() {
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let config = GateConfig::new(upstream).route("max_itemz = 5").toml();
    let out = gate::check(&config);
    assert_rejected_at(&out, line_of(&config, "max_itemz"), 1, "max_itemz");

    let config = GateConfig::new(upstream).server("thread = 2").toml();
    let out = gate::check(&config);
    assert_rejected_at(&out, line_of(&config, "thread ="), 1, "thread");
}

/// Proves an invalid value is rejected with exit code 1, naming FILE:LINE:COL and the key
/// path (`routes[0].max_items`), and that every problem is reported, not only the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_invalid_value() {
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let config = GateConfig::new(upstream).route("max_items = 0").toml();
    let out = gate::check(&config);
    // Column of the value: `max_items = ` is 12 characters.
    assert_rejected_at(
        &out,
        line_of(&config, "max_items = 0"),
        13,
        "routes[0].max_items",
    );

    let config = GateConfig::new(upstream)
        .route("max_items = 0")
        .route(r#"item_timeout = "soon""#)
        .server("max_in_flight = 0")
        .toml();
    let out = gate::check(&config);
    assert_rejected_at(
        &out,
        line_of(&config, "max_items = 0"),
        13,
        "routes[0].max_items",
    );
    assert_rejected_at(
        &out,
        line_of(&config, "item_timeout"),
        16,
        "routes[0].item_timeout",
    );
    assert_rejected_at(
        &out,
        line_of(&config, "max_in_flight"),
        17,
        "server.max_in_flight",
    );
}

/// Proves `forward_headers` may not name a header the item header guard refuses: the
/// client's `X-Forwarded-For` would reach the upstream before batchgate's own, and a
/// forwarded `Content-Length` would break every body-less child. Each name is reported at
/// its place in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_forwarding_guarded_headers() {
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let line = r#"forward_headers = ["authorization", "x-forwarded-for", "content-length", "X-Original-URL", "CF-Connecting-IP"]"#;
    let config = GateConfig::new(upstream).route(line).toml();
    let out = gate::check(&config);
    let at = line_of(&config, "forward_headers");
    let column = |name: &str| line.find(&format!("\"{name}\"")).expect("in line") + 1;
    assert_rejected_at(
        &out,
        at,
        column("x-forwarded-for"),
        r#"routes[0].forward_headers[1]: "x-forwarded-for" is set by the proxy and cannot be forwarded"#,
    );
    assert_rejected_at(
        &out,
        at,
        column("content-length"),
        r#"routes[0].forward_headers[2]: "content-length" frames or routes the HTTP message"#,
    );
    assert_rejected_at(
        &out,
        at,
        column("X-Original-URL"),
        r#"routes[0].forward_headers[3]: "X-Original-URL" overrides the request path or method"#,
    );
    assert_rejected_at(
        &out,
        at,
        column("CF-Connecting-IP"),
        r#"routes[0].forward_headers[4]: "CF-Connecting-IP" is set by the proxy"#,
    );
    assert!(
        !text(&out.stderr).contains("forward_headers[0]"),
        "authorization is fine: {}",
        text(&out.stderr)
    );
}

/// Proves a fan-out `[[routes.headers]]` rule that forwards the client's value (the default)
/// may not name a guarded header, while a validate-only rule (`forward = false`) may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_forwarded_fanout_header_rules() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/examples/huawei.toml");
    let example = std::fs::read_to_string(&path).expect("huawei.toml");
    assert!(
        example.contains("[routes.request]"),
        "huawei.toml changed shape"
    );
    let with_rule = |rule: &str| {
        example.replacen(
            "[routes.request]",
            &format!("{rule}\n\n[routes.request]"),
            1,
        )
    };

    let config = with_rule("[[routes.headers]]\nname = \"X-Forwarded-For\"");
    let out = gate::check(&config);
    assert_rejected_at(
        &out,
        line_of(&config, "name = \"X-Forwarded-For\""),
        8,
        r#"routes[0].headers[3].name: "X-Forwarded-For" is set by the proxy and cannot be forwarded"#,
    );

    let config = with_rule("[[routes.headers]]\nname = \"X-HTTP-Method-Override\"\nforward = true");
    let out = gate::check(&config);
    assert_rejected_at(
        &out,
        line_of(&config, "name = \"X-HTTP-Method-Override\""),
        8,
        "routes[0].headers[3].name",
    );

    let config = with_rule("[[routes.headers]]\nname = \"X-Forwarded-For\"\nforward = false");
    let out = gate::check(&config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Proves absurd durations fail `check` (they used to pass and then panic every batch on
/// `Instant` overflow), and that the shutdown timings, which pingora takes in whole seconds,
/// refuse fractions instead of truncating `"500ms"` to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_unusable_durations() {
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let config = GateConfig::new(upstream)
        .route(r#"batch_timeout = "3000000000000000h""#)
        .toml();
    let out = gate::check(&config);
    assert_rejected_at(
        &out,
        line_of(&config, "batch_timeout"),
        17,
        r#"routes[0].batch_timeout: "3000000000000000h" is too long (at most "24h")"#,
    );

    let config = GateConfig::new(upstream)
        .toml()
        .replacen(r#"grace_period = "1s""#, r#"grace_period = "500ms""#, 1)
        .replacen(
            r#"graceful_shutdown_timeout = "1s""#,
            r#"graceful_shutdown_timeout = "1.5s""#,
            1,
        );
    let out = gate::check(&config);
    assert_rejected_at(
        &out,
        line_of(&config, "grace_period"),
        16,
        r#"server.grace_period: "500ms" must be whole seconds, e.g. "1s""#,
    );
    assert_rejected_at(
        &out,
        line_of(&config, "graceful_shutdown_timeout"),
        29,
        r#"server.graceful_shutdown_timeout: "1.5s" must be whole seconds"#,
    );

    let config = GateConfig::new(upstream)
        .route(r#"batch_timeout = "24h""#)
        .toml()
        .replacen(r#"grace_period = "1s""#, r#"grace_period = "2000ms""#, 1);
    let out = gate::check(&config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Proves `check` catches what `run` would fail on or silently misread (issue 26): a log
/// filter that is a bare word (`verbose` would enable only a target of that name and turn
/// every other line off), two listeners on one address (also inside a wildcard), and an X.509
/// v1 certificate, named as such instead of "key does not match".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_catches_what_run_would_fail_on() {
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let config = GateConfig::new(upstream)
        .server(r#"log_level = "verbose""#)
        .toml();
    assert_rejected_at(
        &gate::check(&config),
        line_of(&config, "log_level"),
        13,
        "server.log_level",
    );
    for good in ["debug", "warn,batchgate=debug", "info,pingora_core=off"] {
        let config = GateConfig::new(upstream)
            .server(&format!("log_level = {good:?}"))
            .toml();
        let out = gate::check(&config);
        assert_eq!(out.status.code(), Some(0), "{good}: {}", text(&out.stderr));
    }

    let config = GateConfig::new(upstream)
        .toml()
        .replace("{admin}", "{listen}");
    let out = gate::check(&config);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("admin.listen") && text(&out.stderr).contains("also a listener"),
        "{}",
        text(&out.stderr)
    );
    let config = GateConfig::new(upstream).toml().replace(
        r#"listen = ["{listen}"]"#,
        r#"listen = ["0.0.0.0:18080", "127.0.0.1:18080"]"#,
    );
    let out = gate::check(&config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("also a listener"),
        "{}",
        text(&out.stderr)
    );

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let config = GateConfig::new(upstream).toml().replace(
        "[admin]",
        &format!(
            "tls_listen = [\"127.0.0.1:18443\"]\n[[server.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[admin]",
            fixtures.join("v1.pem").display(),
            fixtures.join("v1.key").display()
        ),
    );
    let out = gate::check(&config);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("X.509 v1") && !text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
}

/// Proves an empty file and a file without routes pass with a warning saying what the
/// instance would do, and that an invalid default upstream is one problem, not also a false
/// "no upstream" on every route that falls back to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_empty_configs_and_does_not_cascade() {
    let out = gate::check("");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("every request is answered 404"),
        "{}",
        text(&out.stderr)
    );
    let config = "[upstreams.api]\naddresses = [\"127.0.0.1:9\"]\n";
    let out = gate::check(config);
    assert!(
        text(&out.stderr).contains("no routes: nothing is unpacked"),
        "{}",
        text(&out.stderr)
    );

    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let config = GateConfig::new(upstream)
        .toml()
        .replace("\"127.0.0.1:9\"", "\"no-such-host.invalid:80\"")
        .replace("upstream = \"api\"\nbase_path", "base_path");
    let out = gate::check(&config);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one problem: {stderr}");
    assert!(stderr.contains("upstreams.api"), "{stderr}");
}
