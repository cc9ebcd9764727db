//! The running instance as an operator's commands see it (issue 26): a start that cannot
//! listen exits at once with one line; the pid file names the process and its config, goes
//! away on exit, and is verified before `reload` or `pid` name anything, so no command signals
//! a process that is not the batchgate serving that file.

use crate::common;

use common::config::GateConfig;
use common::gate;
use common::prom::{scrape, scrape_until};
use common::upstream::Upstream;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn batchgate(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(gate::bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run batchgate")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh dir holding `config.toml` made from `toml` with the placeholders filled.
fn config_in_dir(toml: &str, listen: SocketAddr, admin: SocketAddr) -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new();
    let text = toml
        .replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{tmp}", &dir.path().display().to_string());
    std::fs::write(dir.path().join("config.toml"), &text).expect("write config");
    (dir, text)
}

mod tempdir {
    /// A temp dir removed on drop.
    pub struct Dir(std::path::PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let path =
                std::env::temp_dir().join(format!("batchgate-instance-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A public or admin address another process holds: `run` exits 1 within two seconds with one
/// line naming the address, and serves nothing meanwhile (it used to retry for 30 s in one
/// thread and then stay up, healthy, without the listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_in_use_fails_the_start_with_one_line() {
    let upstream = Upstream::echo().await;
    for taken_is_admin in [false, true] {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken_addr = taken.local_addr().expect("addr");
        let other = loopback(common::upstream::free_port());
        let (listen, admin) = if taken_is_admin {
            (other, taken_addr)
        } else {
            (taken_addr, other)
        };
        let (dir, _) = config_in_dir(&GateConfig::new(upstream.addr).toml(), listen, admin);
        let started = Instant::now();
        let mut child = Command::new(gate::bin())
            .args(["run", "-c"])
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                panic!("batchgate still runs 5 s after its bind failed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            stderr.starts_with(&format!("cannot listen on {taken_addr}: "))
                && stderr.lines().count() == 1,
            "one line naming {taken_addr}: {stderr}"
        );
        assert!(
            !dir.path().join("batchgate.pid").exists(),
            "no pid file is left behind"
        );
    }
}

/// The pid file names the process and the absolute config path while it runs, and is gone
/// after a graceful stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_names_the_process_and_goes_away_on_exit() {
    let upstream = Upstream::echo().await;
    let mut gate = GateConfig::new(upstream.addr).start().await;
    let pid_file = gate.dir().join("batchgate.pid");
    let written = std::fs::read_to_string(&pid_file).expect("pid file");
    assert_eq!(
        written,
        format!("{}\n{}\n", gate.pid(), gate.config_path().display())
    );
    let out = batchgate(&["pid"], &gate.config_path());
    assert_eq!(text(&out).trim(), gate.pid().to_string());
    gate.signal("TERM");
    let status = gate.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!pid_file.exists(), "the pid file is removed on exit");
    let out = batchgate(&["reload"], &gate.config_path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not running"), "{}", text(&out));
}

/// A pid file left behind whose pid now belongs to another program: `reload` says the file is
/// stale, exits 1 and signals nothing (the other program lives on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pid_file_signals_nothing() {
    let upstream = Upstream::echo().await;
    let (dir, _) = config_in_dir(
        &GateConfig::new(upstream.addr).toml(),
        loopback(common::upstream::free_port()),
        loopback(common::upstream::free_port()),
    );
    let config = dir.path().join("config.toml");
    let mut bystander = Command::new("sleep").arg("30").spawn().expect("sleep");
    // Written after the bystander started, as a pid reused later would look, and also the
    // other way round (a file older than the process).
    for contents in [
        format!("{}\n{}\n", bystander.id(), config.display()),
        format!("{}\n", bystander.id()),
    ] {
        std::fs::write(dir.path().join("batchgate.pid"), contents).expect("pid file");
        let complete = std::fs::read_to_string(dir.path().join("batchgate.pid"))
            .is_ok_and(|t| t.lines().count() == 2);
        for command in ["reload", "pid"] {
            let out = batchgate(&[command], &config);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            // A bare pid (what pingora's daemon writes first) names no instance either.
            let expected = if complete {
                "not running (stale pid file)"
            } else {
                "not running: the pid file"
            };
            assert!(text(&out).contains(expected), "{}", text(&out));
        }
    }
    assert!(
        bystander.try_wait().expect("wait").is_none(),
        "the other program was not signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// `reload -c OTHER` where the running instance serves another file is refused: the instance
/// would have read its own file, not the one that was checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_of_a_file_the_instance_does_not_serve_is_refused() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let other = gate.dir().join("other.toml");
    std::fs::copy(gate.config_path(), &other).expect("copy");
    let out = batchgate(&["reload"], &other);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("serves {}", gate.config_path().display())),
        "{}",
        text(&out)
    );
    // The same file through a relative path from another directory is the same file.
    let out = Command::new(gate::bin())
        .args(["reload", "-c", "config.toml"])
        .current_dir(gate.dir())
        .output()
        .expect("reload");
    assert!(out.status.success(), "{}", text(&out));
    scrape_until(gate.admin, Duration::from_secs(10), "reload ok", |s| {
        s.get("batchgate_config_reloads_total", &[("result", "ok")]) == Some(1.0)
    })
    .await;
}

/// `run -d -c relative.toml`: the daemon records the absolute path, so a later reload from
/// the same directory applies (the daemon's own working directory is `/`); the pid file goes
/// away when the daemon stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_with_a_relative_path_reloads() {
    let upstream = Upstream::echo().await;
    let listen = loopback(common::upstream::free_port());
    let admin = loopback(common::upstream::free_port());
    let (dir, _) = config_in_dir(&GateConfig::new(upstream.addr).toml(), listen, admin);
    // The daemon keeps the descriptors it was given: no pipes, or waiting for them to close
    // would wait for the daemon to stop.
    let started = Command::new(gate::bin())
        .args(["run", "-d", "-c", "config.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run -d");
    assert!(started.success());
    let pid_file = dir.path().join("batchgate.pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let found = Command::new(gate::bin())
            .args(["pid", "-c", "config.toml"])
            .current_dir(dir.path())
            .output()
            .expect("pid");
        if found.status.success() && tokio::net::TcpStream::connect(admin).await.is_ok() {
            break String::from_utf8_lossy(&found.stdout).trim().to_string();
        }
        assert!(Instant::now() < deadline, "daemon not up: {}", text(&found));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = Command::new(gate::bin())
        .args(["reload", "-c", "config.toml"])
        .current_dir(dir.path())
        .output()
        .expect("reload");
    assert!(out.status.success(), "{}", text(&out));
    scrape_until(admin, Duration::from_secs(10), "reload ok", |s| {
        s.get("batchgate_config_reloads_total", &[("result", "ok")]) == Some(1.0)
    })
    .await;
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while pid_file.exists() {
        assert!(Instant::now() < deadline, "the daemon's pid file stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(scrape_fails(admin).await, "the daemon stopped");
}

async fn scrape_fails(admin: SocketAddr) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .map_or(true, |r| r.is_err())
}

/// The admin listener takes at most `ADMIN_MAX_CONNECTIONS` (64) connections: idle ones
/// beyond it are refused at once, and a scrape works again once they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_capped() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(
            tokio::net::TcpStream::connect(gate.admin)
                .await
                .expect("connect"),
        );
    }
    // The listener counts a connection when it accepts it: once it has taken all 64, the
    // next one is refused.
    let admin = gate.admin;
    common::eventually_async(
        Duration::from_secs(5),
        "the 65th connection refused",
        || async { common::client::get(admin, "/healthz").await.status == 503 },
    )
    .await;
    drop(idle);
    // A scrape works again once they close.
    common::eventually_async(
        Duration::from_secs(5),
        "a scrape after they closed",
        || async { common::client::get(admin, "/healthz").await.status == 200 },
    )
    .await;
    let scraped = scrape(gate.admin).await;
    assert!(scraped
        .get(
            "batchgate_client_connections_refused_total",
            &[("listener", &gate.admin.to_string())]
        )
        .is_some_and(|n| n >= 1.0));
}
