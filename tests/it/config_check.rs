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
    files.retain(|f| f.extension().is_some_and(|e| e == "toml"));
    assert!(files.len() >= 2, "no configs found in {}", root.display());
    for file in files {
        // Paths in a config are relative to where batchgate runs: here, the repository.
        let config = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
            .replace(
                "\"conf/",
                &format!("\"{}/conf/", env!("CARGO_MANIFEST_DIR")),
            );
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

/// Runs the batchgate binary with `args`, expecting success; its stdout.
fn batchgate(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run batchgate");
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The object schema behind `node` (following `$ref`, and leaving out `null` of an Option),
/// if it is a table of keys.
fn table<'a>(
    defs: &'a serde_json::Value,
    node: &'a serde_json::Value,
) -> Option<&'a serde_json::Value> {
    if let Some(reference) = node["$ref"].as_str() {
        let name = reference.rsplit('/').next()?;
        return table(defs, &defs[name]);
    }
    if let Some(options) = node["anyOf"].as_array() {
        return options.iter().find_map(|option| table(defs, option));
    }
    node.get("properties").map(|_| node)
}

/// Every table of the schema as `[path]` / `[[path]]` (map keys as `NAME`) with its keys.
fn schema_tables(
    defs: &serde_json::Value,
    node: &serde_json::Value,
    path: &str,
    array: bool,
    out: &mut std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) {
    let Some(object) = table(defs, node) else {
        return;
    };
    let properties = object["properties"].as_object().expect("properties");
    if !path.is_empty() {
        let heading = if array {
            format!("[[{path}]]")
        } else {
            format!("[{path}]")
        };
        out.insert(heading, properties.keys().cloned().collect());
    }
    for (key, child) in properties {
        let deeper = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if table(defs, child).is_some() {
            schema_tables(defs, child, &deeper, false, out);
        } else if let Some(items) = child.get("items").filter(|i| table(defs, i).is_some()) {
            schema_tables(defs, items, &deeper, true, out);
        } else if let Some(values) = child
            .get("additionalProperties")
            .filter(|v| table(defs, v).is_some())
        {
            schema_tables(defs, values, &format!("{deeper}.NAME"), false, out);
        }
    }
}

/// The key tables of docs/CONFIGURATION.md: under each heading naming a table in backticks,
/// the first-column keys of its rows.
fn documented_tables(
    text: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            current = line
                .split('`')
                .nth(1)
                .filter(|name| name.starts_with('['))
                .map(str::to_string);
            if let Some(name) = &current {
                out.entry(name.clone()).or_default();
            }
            continue;
        }
        let (Some(name), Some(row)) = (&current, line.strip_prefix("| `")) else {
            continue;
        };
        if let Some((key, _)) = row.split_once('`') {
            out.get_mut(name).expect("heading").insert(key.to_string());
        }
    }
    out
}

/// docs/CONFIGURATION.md documents every key of every table the config file accepts, and
/// nothing else: a new key, a renamed one or a table moved fails here until the reference
/// says so. The schema is the config types' own (`batchgate schema`, schemars).
#[test]
fn the_configuration_reference_matches_the_config_types() {
    let schema: serde_json::Value =
        serde_json::from_str(&batchgate(&["schema"])).expect("the schema is JSON");
    let mut expected = std::collections::BTreeMap::new();
    schema_tables(&schema["$defs"], &schema, "", false, &mut expected);
    assert!(expected.contains_key("[[routes]]") && expected.contains_key("[upstreams.NAME]"));
    let reference = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CONFIGURATION.md"),
    )
    .expect("docs/CONFIGURATION.md");
    let documented = documented_tables(&reference);
    for (table, keys) in &expected {
        let Some(written) = documented.get(table) else {
            panic!("docs/CONFIGURATION.md has no heading for `{table}`");
        };
        let missing: Vec<_> = keys.difference(written).collect();
        let stale: Vec<_> = written.difference(keys).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "docs/CONFIGURATION.md `{table}`: undocumented {missing:?}, no such key {stale:?}"
        );
    }
    let unknown: Vec<_> = documented
        .keys()
        .filter(|t| !expected.contains_key(*t))
        .collect();
    assert!(
        unknown.is_empty(),
        "documented tables that do not exist: {unknown:?}"
    );
}

/// The shipped schema (conf/batchgate.schema.json, for editors) is what the types generate;
/// `completions` and `man` print what shells and `man` read.
#[test]
fn the_schema_completions_and_man_page_are_generated_from_the_cli() {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/batchgate.schema.json"),
    )
    .expect("conf/batchgate.schema.json");
    assert_eq!(
        shipped,
        batchgate(&["schema"]),
        "conf/batchgate.schema.json is stale: batchgate schema > conf/batchgate.schema.json"
    );
    let bash = batchgate(&["completions", "bash"]);
    assert!(
        bash.contains("--no-resolve") && bash.contains("complete -F"),
        "{bash}"
    );
    let syntax = std::process::Command::new("bash")
        .args(["-n", "-c", &bash])
        .status()
        .expect("bash");
    assert!(syntax.success(), "the bash completion script parses");
    for shell in ["zsh", "fish"] {
        assert!(batchgate(&["completions", shell]).contains("no-resolve"));
    }
    let man = batchgate(&["man"]);
    assert!(
        man.contains(".TH batchgate 1") && man.contains("check"),
        "{man}"
    );
}

/// Without `-c`, a command reads `BATCHGATE_CONFIG` (else /etc/batchgate/batchgate.toml).
#[test]
fn the_config_path_defaults_to_the_environment_then_etc() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BATCHGATE_CONFIG", "conf/examples/minimal.toml")
        .arg("check")
        .output()
        .expect("run batchgate");
    assert!(
        text(&out.stdout).starts_with("conf/examples/minimal.toml: ok"),
        "{}",
        text(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .env_remove("BATCHGATE_CONFIG")
        .arg("check")
        .output()
        .expect("run batchgate");
    if !Path::new("/etc/batchgate/batchgate.toml").exists() {
        assert!(
            text(&out.stderr).contains("/etc/batchgate/batchgate.toml"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// Every shipped config validates against the shipped schema in a real JSON Schema validator
/// (check-jsonschema, as an editor's TOML plugin would use it), and a typo does not.
#[test]
fn the_shipped_configs_validate_against_the_schema() {
    let Some(validator) = crate::common::prom::require_tool(
        "check-jsonschema",
        "bash .ci/run (it installs check-jsonschema into target/ci-venv)",
    ) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = files_in(&root.join("conf"));
    files.extend(files_in(&root.join("conf/examples")));
    files.push(root.join("deploy/kubernetes/batchgate.toml"));
    files.push(root.join("deploy/kubernetes/quotas/batchgate.toml"));
    files.retain(|f| f.extension().is_some_and(|e| e == "toml"));
    let schema = root.join("conf/batchgate.schema.json");
    let out = std::process::Command::new(&validator)
        .arg("--schemafile")
        .arg(&schema)
        .args(&files)
        .output()
        .expect("check-jsonschema");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let typo = std::env::temp_dir().join(format!("batchgate-typo-{}.toml", std::process::id()));
    std::fs::write(
        &typo,
        "[server]\nlisten = [\"127.0.0.1:1\"]\nmax_in_flihgt = 3\n",
    )
    .expect("write");
    let out = std::process::Command::new(&validator)
        .arg("--schemafile")
        .arg(&schema)
        .arg(&typo)
        .output()
        .expect("check-jsonschema");
    let _ = std::fs::remove_file(&typo);
    assert!(
        !out.status.success() && text(&out.stdout).contains("max_in_flihgt"),
        "{}",
        text(&out.stdout)
    );
}

/// `check --print` writes the file out with every key it leaves out filled in with the value
/// in effect (`# default`), keeping the file's own keys and comments: the result passes
/// `check`, and printing it again changes nothing (nothing left to fill, nothing lost). For
/// every shipped config.
#[test]
fn check_print_fills_in_the_defaults_and_is_a_fixpoint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = files_in(&root.join("conf"));
    files.extend(files_in(&root.join("conf/examples")));
    files.retain(|f| f.extension().is_some_and(|e| e == "toml"));
    let dir = std::env::temp_dir().join(format!("batchgate-print-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for file in files {
        let name = file.display().to_string();
        let once = batchgate(&["check", "--print", "-c", &name]);
        let printed = dir.join("printed.toml");
        std::fs::write(&printed, &once).expect("write");
        let twice = batchgate(&["check", "--print", "-c", &printed.display().to_string()]);
        assert_eq!(
            once, twice,
            "{name}: printing the printed config changes it"
        );
        let written = std::fs::read_to_string(&file).expect("read");
        for line in written.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                once.contains(line),
                "{name}: the file's own line {line:?} is kept"
            );
        }
    }
    let minimal = batchgate(&["check", "--print", "-c", "conf/examples/minimal.toml"]);
    for line in [
        "max_in_flight = 1024 # default",
        "log_format = \"text\" # default",
        "item_log = false # default",
        "connect_timeout = \"1s\" # default",
        "max_items = 100 # default",
        "item_timeout = \"10s\" # default",
        "listen = \"127.0.0.1:9091\" # default",
        "name = \"batch\" # default",
    ] {
        assert!(
            minimal.lines().any(|l| l == line),
            "{line:?} in:\n{minimal}"
        );
    }
    assert!(minimal.contains("\n[server.admission]\n"), "{minimal}");
    let _ = std::fs::remove_dir_all(&dir);
}
