//! Starting the real `batchgate` binary for integration tests.
//!
//! [`start`] writes a config text into a fresh temp dir (filling in the
//! `{listen}`, `{admin}` and `{tmp}` placeholders), spawns
//! `batchgate run -c FILE` with stdout/stderr captured to files in that dir,
//! and waits until the proxy port accepts connections. Dropping the [`Gate`]
//! kills the process and removes the dir. [`check`] runs `batchgate check`.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::upstream::free_port;

/// How long [`start`] waits for the proxy port to accept connections.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Path of the `batchgate` binary built by cargo for these tests, or `BATCHGATE_TEST_BIN`
/// (to run a test file against another build, e.g. to show a test fails before a fix).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BATCHGATE_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_batchgate").to_string())
    })
}

/// A fresh, empty temp dir `batchgate-test-{pid}-{counter}`.
fn fresh_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("batchgate-test-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create temp dir {}: {e}", dir.display()));
    dir
}

/// Fills in the placeholders; returns (config text, listen addr, admin addr).
fn render(config_toml: &str, dir: &Path) -> (String, SocketAddr, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = config_toml
        .replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{tmp}", &dir.display().to_string());
    (text, listen, admin)
}

fn read_or_empty(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A running `batchgate run` process. Dropping it kills the process (SIGKILL)
/// and removes its temp dir; if the test is panicking, stderr is printed first.
pub struct Gate {
    /// Proxy listen address (what `{listen}` became).
    pub addr: SocketAddr,
    /// Admin listen address (what `{admin}` became).
    pub admin: SocketAddr,
    child: Child,
    dir: PathBuf,
}

/// Writes `config_toml` (placeholders `{listen}`, `{admin}`, `{tmp}` filled in)
/// to a fresh temp dir, spawns `batchgate run -c FILE` (`RUST_LOG=warn` unless
/// set) and waits up to 20 s for `{listen}` to accept connections. Panics with
/// the captured stderr if the process exits or the deadline passes.
pub async fn start(config_toml: &str) -> Gate {
    start_with_env(config_toml, &[]).await
}

/// Like [`start`], with extra environment variables for the child.
///
/// Ports are held until the gate binds them (`upstream::free_port`); a gate that still finds
/// its address in use (another program that binds with `SO_REUSEADDR`) is started again on
/// fresh ports (up to three times) instead of failing the test.
pub async fn start_with_env(config_toml: &str, envs: &[(&str, &str)]) -> Gate {
    for _ in 0..2 {
        match try_start(config_toml, envs).await {
            Ok(gate) => return gate,
            // The child is killed when the failed `Gate` is dropped.
            Err(stderr) if stderr.contains("in use") => continue,
            Err(stderr) => panic!("{stderr}"),
        }
    }
    try_start(config_toml, envs)
        .await
        .unwrap_or_else(|stderr| panic!("{stderr}"))
}

/// Whether process `pid` holds a listening TCP socket on `port` (from `/proc/net/tcp*` and
/// the process's file descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st field 3 (0A = LISTEN), inode field 9.
            if let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            {
                if local.ends_with(&wanted) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .map(|target| {
                inodes
                    .iter()
                    .any(|inode| target.as_os_str() == inode.as_str())
            })
            .unwrap_or(false)
    })
}

/// One start; `Err` with the whole report when the gate exits during startup.
async fn try_start(config_toml: &str, envs: &[(&str, &str)]) -> Result<Gate, String> {
    let dir = fresh_dir();
    let (text, addr, admin) = render(config_toml, &dir);
    let config_path = dir.join("config.toml");
    fs::write(&config_path, &text)
        .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
    let stdout = fs::File::create(dir.join("stdout.log")).expect("create stdout.log");
    let stderr = fs::File::create(dir.join("stderr.log")).expect("create stderr.log");

    let mut cmd = Command::new(bin());
    cmd.arg("run")
        .arg("-c")
        .arg(&config_path)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()));
    let mut gate = Gate {
        addr,
        admin,
        child,
        dir,
    };

    // The admin listener is checked too, unless the config turns it off; and the pid file,
    // written once the gate handles SIGHUP, when the config keeps it in `{tmp}`.
    let admin_enabled = !text.contains("enabled = false");
    let pid_file = gate.dir.join("batchgate.pid");
    let pid_file = text
        .contains(&pid_file.display().to_string())
        .then_some(pid_file);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        // Ready when the gate itself listens on `addr`: a connect alone could reach another
        // process that took the port first.
        let admin_ready = !admin_enabled || listens_on(gate.pid(), admin.port());
        let pid_written = pid_file.as_ref().is_none_or(|f| f.exists());
        if admin_ready
            && pid_written
            && listens_on(gate.pid(), addr.port())
            && tokio::net::TcpStream::connect(addr).await.is_ok()
        {
            return Ok(gate);
        }
        // pingora retries a bind that fails with "in use" every second, forever.
        if gate.stderr().contains("is in use") {
            return Err(format!("{addr} is in use by another process"));
        }
        if let Ok(Some(status)) = gate.child.try_wait() {
            return Err(format!(
                "batchgate exited during startup ({status}).\n--- config ---\n{text}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                gate.stderr(),
                gate.stdout()
            ));
        }
        if Instant::now() >= deadline {
            panic!(
                "batchgate did not accept connections on {addr} within {STARTUP_TIMEOUT:?}.\n--- config ---\n{text}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                gate.stderr(),
                gate.stdout()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Gate {
    /// Contents of the child's stderr so far.
    pub fn stderr(&self) -> String {
        read_or_empty(&self.dir.join("stderr.log"))
    }

    /// The child's stderr once it contains `needle`, or as it is after `timeout`: a log line
    /// can be written just after the answer or counter a test waited for.
    pub async fn stderr_until(&self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stderr = self.stderr();
            if stderr.contains(needle) || tokio::time::Instant::now() >= deadline {
                return stderr;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Contents of the child's stdout so far.
    pub fn stdout(&self) -> String {
        read_or_empty(&self.dir.join("stdout.log"))
    }

    /// The temp dir (what `{tmp}` became).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the written config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Writes a new config text over the file, placeholders filled in with this gate's own
    /// addresses and dir (what a reload test then signals the gate to load).
    pub fn rewrite_config(&self, config_toml: &str) {
        let text = config_toml
            .replace("{listen}", &self.addr.to_string())
            .replace("{admin}", &self.admin.to_string())
            .replace("{tmp}", &self.dir.display().to_string());
        let path = self.config_path();
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident and peak resident memory of the process in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// The admin address as `"127.0.0.1:PORT"`.
    pub fn admin_host_port(&self) -> String {
        self.admin.to_string()
    }

    /// Sends a signal by name (e.g. `"TERM"`, `"INT"`, `"QUIT"`) via `kill -s`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill -s {sig}: {e}"));
        assert!(
            status.success(),
            "kill -s {sig} {} failed: {status}",
            self.child.id()
        );
    }

    /// Polls (every 20 ms) for the child to exit; `None` if still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on batchgate child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to 20 s for the admin port to accept connections; panics with stderr otherwise.
    pub async fn wait_admin(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(self.admin).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "batchgate exited ({status}) before admin {} came up.\n--- stderr ---\n{}",
                    self.admin,
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "admin {} not reachable within {STARTUP_TIMEOUT:?}.\n--- stderr ---\n{}",
                    self.admin,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- batchgate ({}) stderr ---\n{}\n--- end stderr ---",
                self.addr,
                self.stderr()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Writes `config_toml` (same placeholders as [`start`]) to a temp file and runs
/// `batchgate check -c FILE` synchronously, returning its output.
pub fn check(config_toml: &str) -> Output {
    let dir = fresh_dir();
    let (text, _, _) = render(config_toml, &dir);
    let config_path = dir.join("config.toml");
    fs::write(&config_path, &text)
        .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
    let mut cmd = Command::new(bin());
    cmd.arg("check")
        .arg("-c")
        .arg(&config_path)
        .current_dir(&dir)
        .stdin(Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {} check: {e}", bin()));
    let _ = fs::remove_dir_all(&dir);
    out
}
