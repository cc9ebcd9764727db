//! What operators deploy with (issue 14): the systemd unit, the Dockerfile and the Kubernetes
//! manifests, checked offline with the tools an operator would use (`systemd-analyze verify`,
//! `hadolint`, `kubernetes-validate`) and against the repository they describe (the config
//! they carry validates, the ConfigMaps embed the files they copy, timings add up).
//!
//! The external tools are installed by `.ci/run` (which sets `BATCHGATE_CI_TOOLS`); outside CI
//! a missing tool skips its check with a note, in CI it fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The tool on PATH, or `None` (skipping) outside CI.
fn tool(name: &str) -> Option<PathBuf> {
    crate::common::prom::require_tool(
        name,
        "bash .ci/run (it installs every tool these tests use)",
    )
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

/// `KEY = "Ns"` of a TOML text, in seconds.
fn seconds(toml: &str, key: &str) -> u64 {
    toml.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
        .and_then(|v| v.strip_suffix("s\""))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in whole seconds"))
}

/// The first number after `key:` in a YAML text.
fn yaml_number(yaml: &str, key: &str) -> u64 {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in the manifest"))
}

/// `text` as the indented block of a `key: |` entry in a manifest.
fn block(text: &str) -> String {
    text.trim_end_matches('\n')
        .split('\n')
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("    {l}\n")
            }
        })
        .collect()
}

#[test]
fn the_systemd_unit_verifies_and_reloads_in_place() {
    let unit = read("conf/systemd/batchgate.service");
    assert!(unit.contains("ExecReload=/usr/local/bin/batchgate check -c /etc/batchgate/batchgate.toml\nExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("RuntimeDirectory=batchgate"));
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    // verify insists that ExecStart's binary exists: point it at the one cargo built.
    let dir = std::env::temp_dir().join(format!("batchgate-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("batchgate.service");
    let local = unit.replace("/usr/local/bin/batchgate", env!("CARGO_BIN_EXE_batchgate"));
    std::fs::write(&path, local).expect("write unit");
    let text = run(Command::new(analyze).arg("verify").arg(&path));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!text.contains("batchgate.service:"), "{text}");
}

#[test]
fn the_dockerfile_is_lint_clean_and_builds_what_ci_proves() {
    let dockerfile = read("Dockerfile");
    let msrv = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_string)
        .expect("rust-version");
    assert!(
        dockerfile.contains(&format!("FROM rust:{msrv}-")),
        "the build stage uses the MSRV CI checks ({msrv})"
    );
    assert!(dockerfile.contains("\nUSER 10001\n"), "runs as non-root");
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        if line.contains("--from=") || line.starts_with("COPY . ") {
            continue;
        }
        let source = line.split_whitespace().nth(1).expect("COPY source");
        assert!(repo().join(source).exists(), "{line}: {source} is missing");
    }
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target/"),
        "the build context leaves target/ out"
    );
    if let Some(hadolint) = tool("hadolint") {
        run(Command::new(hadolint).arg(repo().join("Dockerfile")));
    }
}

const MANIFESTS: &[&str] = &[
    "configmap.yaml",
    "deployment.yaml",
    "service.yaml",
    "pdb.yaml",
    "hpa.yaml",
    "servicemonitor.yaml",
    "dashboard-configmap.yaml",
];

#[test]
fn the_kubernetes_manifests_validate_and_match_the_repository() {
    let dir = repo().join("deploy/kubernetes");
    // Every manifest is applied by the kustomization, and none is forgotten there.
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = MANIFESTS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    for manifest in MANIFESTS {
        assert!(
            kustomization.contains(&format!("  - {manifest}\n")),
            "{manifest}"
        );
    }

    // The ConfigMaps carry the files they say, byte for byte.
    let config = read("deploy/kubernetes/batchgate.toml");
    assert!(read("deploy/kubernetes/configmap.yaml")
        .ends_with(&format!("  batchgate.toml: |\n{}", block(&config))));
    let dashboard = read("conf/grafana/batchgate.json");
    assert!(
        read("deploy/kubernetes/dashboard-configmap.yaml")
            .ends_with(&format!("  batchgate.json: |\n{}", block(&dashboard))),
        "deploy/kubernetes/dashboard-configmap.yaml is behind conf/grafana/batchgate.json"
    );

    // The config validates as shipped, outside the cluster: `check --no-resolve` checks the
    // Service name's form without resolving it (plain `check` cannot resolve it here).
    let text = run(Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "check",
            "--no-resolve",
            "-c",
            "deploy/kubernetes/batchgate.toml",
        ]));
    assert!(
        text.contains("upstream api -> api:80 (default, pass-through)"),
        "{text}"
    );
    let unresolved = Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "-c", "deploy/kubernetes/batchgate.toml"])
        .output()
        .expect("batchgate check");
    if !unresolved.status.success() {
        let err = String::from_utf8_lossy(&unresolved.stderr);
        assert!(
            err.contains("\"api:80\" is not a resolvable host:port"),
            "{err}"
        );
    }

    // The pod is given time to drain: preStop, then grace period and shutdown timeout.
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let pre_stop: u64 = deployment
        .split("command: [\"/bin/sleep\", \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("preStop sleep");
    let needed =
        pre_stop + seconds(&config, "grace_period") + seconds(&config, "graceful_shutdown_timeout");
    let granted = yaml_number(&deployment, "terminationGracePeriodSeconds");
    assert!(
        granted > needed,
        "terminationGracePeriodSeconds {granted} <= {needed}"
    );
    for probe in [
        "path: /readyz?exclude=upstreams",
        "path: /healthz",
        "port: admin",
        "mountPath: /tmp",
    ] {
        assert!(deployment.contains(probe), "{probe}");
    }

    // No published schema for the ServiceMonitor CRD: it must scrape the Service's named
    // admin port and select the Service's labels.
    let monitor = read("deploy/kubernetes/servicemonitor.yaml");
    let service = read("deploy/kubernetes/service.yaml");
    assert!(monitor.contains("- port: admin\n      path: /metrics"));
    assert!(service.contains("- name: admin\n      port: 9091"));
    assert!(monitor.contains("matchLabels:\n      app.kubernetes.io/name: batchgate"));
    assert!(service.contains("labels:\n    app.kubernetes.io/name: batchgate"));

    if let Some(validate) = tool("kubernetes-validate") {
        let files: Vec<PathBuf> = MANIFESTS
            .iter()
            .filter(|m| **m != "servicemonitor.yaml")
            .map(|m| dir.join(m))
            .collect();
        let text = run(Command::new(validate).arg("--strict").args(&files));
        assert_eq!(
            text.matches(" passed for resource ").count(),
            files.len(),
            "{text}"
        );
    }
}

/// The quotas overlay (issue 31): the base plus a Redis, and a config whose route keeps a
/// per-client quota in it; the patch carries that config byte for byte, and it validates.
#[test]
fn the_quotas_overlay_adds_redis_and_a_config_that_uses_it() {
    let dir = repo().join("deploy/kubernetes/quotas");
    let kustomization = read("deploy/kubernetes/quotas/kustomization.yaml");
    for line in [
        "  - ../\n",
        "  - redis.yaml\n",
        "  - path: configmap-patch.yaml\n",
    ] {
        assert!(kustomization.contains(line), "{line}");
    }
    let config = read("deploy/kubernetes/quotas/batchgate.toml");
    assert!(
        config.contains(read("deploy/kubernetes/batchgate.toml").trim_end()),
        "the overlay's config is the base's plus the quota"
    );
    assert!(
        config.contains("store = \"redis\"") && config.contains("redis://batchgate-redis:6379")
    );
    assert!(read("deploy/kubernetes/quotas/configmap-patch.yaml")
        .ends_with(&format!("  batchgate.toml: |\n{}", block(&config))));
    assert!(read("deploy/kubernetes/quotas/redis.yaml").contains("name: batchgate-redis"));

    run(Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "check",
            "--no-resolve",
            "-c",
            "deploy/kubernetes/quotas/batchgate.toml",
        ]));

    if let Some(validate) = tool("kubernetes-validate") {
        let files = [dir.join("redis.yaml"), dir.join("configmap-patch.yaml")];
        let text = run(Command::new(validate).arg("--strict").args(&files));
        assert_eq!(text.matches(" passed for resource ").count(), 3, "{text}");
    }
}
