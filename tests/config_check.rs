//! `batchgate check`: every shipped config is accepted; unknown keys and invalid values are
//! rejected with exit code 1 and a `FILE:LINE:COL: key` location on stderr.

mod common;

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
