//! The running instance on this host, as commands outside it see it: the listeners it must
//! hold before it reports anything, and its pid file.
//!
//! The pid file names the process (first line, what systemd's `PIDFile=` reads) and the
//! absolute path of the config file it serves (second line). It is written once the process
//! handles SIGHUP (`crate::reload`; before, a SIGHUP would end it), whole (a temporary file
//! renamed over it), and removed when the process exits if it still names this process (after
//! an upgrade it names the new one). `batchgate reload` and `batchgate pid` signal or print a pid only after
//! [`find`] has checked that it is a batchgate serving that very file: a pid file left behind
//! by a crash, whose pid now belongs to another program, names nothing, and the signal goes
//! through a pidfd opened before the check (no window in which the pid could be reused).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Binds every address once and lets go, so an address that is taken (or not this host's)
/// fails the start with one line before anything is reported, instead of a listener thread
/// that gives up after pingora's 30 retries while the rest of the process stays up.
pub fn check_can_listen(addrs: &[SocketAddr]) -> Result<(), String> {
    // All held until the last is bound, so two of our own that cannot coexist (a wildcard
    // and an address inside it, `[::]` and `0.0.0.0` on one port) fail here too.
    let mut held = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        if addrs[..i].contains(addr) {
            return Err(format!("cannot listen on {addr}: named twice"));
        }
        // std sets SO_REUSEADDR like pingora does, so a port whose old connections linger
        // in TIME_WAIT is not mistaken for a port in use.
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        held.push(listener);
    }
    Ok(())
}

/// The one line for a listener pingora could not build after all (an address taken in the
/// moment between [`check_can_listen`] and pingora's own bind, or a socket an upgrade did not
/// hand over): the panic message pingora's listening service dies with, if it is that one.
pub fn listener_failure(panic_message: &str) -> Option<String> {
    let detail = panic_message.strip_prefix("Failed to build listeners")?;
    let detail = detail.trim_start_matches([':', ' ']);
    Some(format!("cannot listen: {}", detail.trim()))
}

/// The config file as the instance records it: absolute, so a daemon (whose working directory
/// is `/`) and a later `reload` from another directory agree. Symbolic links are kept, not
/// resolved: a Kubernetes ConfigMap swaps the link's target on every update.
pub fn absolute(config: &Path) -> PathBuf {
    std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf())
}

/// Writes `pid_file` for this process serving `config`: a temporary file beside it, renamed
/// over it, so a reader never sees half of it.
pub fn write_pid_file(pid_file: &Path, config: &Path) -> io::Result<()> {
    let text = format!("{}\n{}\n", std::process::id(), absolute(config).display());
    let mut temporary = pid_file.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, pid_file).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Removes `pid_file` if it still names this process.
pub fn remove_pid_file(pid_file: &Path) {
    let ours = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| parse(&text))
        .is_some_and(|(pid, _)| pid == std::process::id() as i32);
    if ours {
        let _ = std::fs::remove_file(pid_file);
    }
}

/// Why no instance could be named.
#[derive(Debug)]
pub enum NotFound {
    /// No pid file, or not readable.
    NoPidFile { pid_file: PathBuf, error: io::Error },
    /// The file holds no pid, or no config path (pingora's daemon writes the bare pid before
    /// batchgate can take SIGHUP: not an instance to signal yet).
    Garbled { pid_file: PathBuf },
    /// `/proc` does not say what the pid runs (another user's process).
    Unreadable { pid: i32, error: io::Error },
    /// The pid is not running, or is a process that started after the file was written, or
    /// is not batchgate.
    Stale { pid_file: PathBuf, pid: i32 },
    /// A batchgate runs, but serves another file (a reload would read that one).
    OtherConfig { pid: i32, serves: PathBuf },
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotFound::NoPidFile { pid_file, error } => write!(
                f,
                "not running: cannot read the pid file {}: {error}",
                pid_file.display()
            ),
            NotFound::Garbled { pid_file } => write!(
                f,
                "not running: the pid file {} holds no pid and config file (an instance still starting?)",
                pid_file.display()
            ),
            NotFound::Unreadable { pid, error } => write!(
                f,
                "cannot tell what pid {pid} runs ({error}): run this as the instance's user"
            ),
            NotFound::Stale { pid_file, pid } => write!(
                f,
                "not running (stale pid file): {} names pid {pid}, which is not a batchgate started before the file was written",
                pid_file.display()
            ),
            NotFound::OtherConfig { pid, serves } => write!(
                f,
                "the batchgate in this pid file (pid {pid}) serves {}, not this file; a reload reads the file an instance was started with (use `batchgate run -u -c FILE` to switch files)",
                serves.display()
            ),
        }
    }
}

/// A batchgate found through its pid file, held by a pidfd opened *before* it was verified:
/// a signal sent through it reaches that process or none, never one that took its pid since
/// (where the kernel has no pidfds, before Linux 5.3, `kill` by pid is the fallback).
#[derive(Debug)]
pub struct Instance {
    pub pid: i32,
    pidfd: Option<OwnedFd>,
}

impl Instance {
    /// Sends SIGHUP (a reload).
    pub fn hang_up(&self) -> io::Result<()> {
        match &self.pidfd {
            Some(pidfd) => pidfd_send_signal(pidfd, nix::libc::SIGHUP),
            None => nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGHUP,
            )
            .map_err(io::Error::from),
        }
    }
}

/// A pidfd for `pid`: `Ok(None)` where the kernel has none, `Err` when no such process runs.
#[allow(unsafe_code)]
fn pidfd_open(pid: i32) -> io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the
    // descriptor is owned by nothing else.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(nix::libc::ENOSYS) => Ok(None),
            _ => Err(error),
        };
    }
    // SAFETY: `fd` was just returned by pidfd_open and is closed only by this OwnedFd.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

#[allow(unsafe_code)]
fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: a live descriptor, a signal number, no siginfo (the kernel fills it as kill
    // does) and no flags.
    let sent = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The batchgate that `pid_file` names and that serves `config`.
pub fn find(pid_file: &Path, config: &Path) -> Result<Instance, NotFound> {
    let text = std::fs::read_to_string(pid_file).map_err(|error| NotFound::NoPidFile {
        pid_file: pid_file.to_path_buf(),
        error,
    })?;
    let garbled = || NotFound::Garbled {
        pid_file: pid_file.to_path_buf(),
    };
    let (pid, serves) = parse(&text).ok_or_else(garbled)?;
    let serves = serves.ok_or_else(garbled)?;
    let stale = || NotFound::Stale {
        pid_file: pid_file.to_path_buf(),
        pid,
    };
    // Opened before anything is checked: if the pid is reused after this, the pidfd still
    // names the process that was checked (gone), and the signal fails instead of landing.
    let pidfd = pidfd_open(pid).map_err(|_| stale())?;
    let written = std::fs::metadata(pid_file)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if !is_batchgate_started_by(pid, written)? {
        return Err(stale());
    }
    if !same_file(&serves, config) {
        return Err(NotFound::OtherConfig { pid, serves });
    }
    Ok(Instance { pid, pidfd })
}

/// The pid and, when recorded, the config path.
fn parse(text: &str) -> Option<(i32, Option<PathBuf>)> {
    let mut lines = text.lines();
    let pid = lines
        .next()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)?;
    let config = lines
        .next()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(PathBuf::from);
    Some((pid, config))
}

/// Two names of one config file: the same absolute path, or the same file once links are
/// followed.
fn same_file(a: &Path, b: &Path) -> bool {
    if absolute(a) == absolute(b) {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Slack for the clock ticks and whole seconds the kernel reports a start time in.
const START_TIME_SLACK: Duration = Duration::from_secs(1);

/// Whether `pid` runs the same program as this one (by file name, as `/proc/PID/exe` names
/// it; a replaced binary reads "NAME (deleted)") and started no later than `written`. A pid
/// that was reused after the instance died belongs to a process started after its file.
fn is_batchgate_started_by(pid: i32, written: SystemTime) -> Result<bool, NotFound> {
    let target = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(NotFound::Unreadable { pid, error: e });
        }
        // No such process (or a kernel thread, which has no program).
        Err(_) => return Ok(false),
    };
    let ours = std::env::current_exe().ok();
    if ours.as_deref().and_then(program_name) != program_name(&target) {
        return Ok(false);
    }
    Ok(start_time(pid).is_some_and(|started| started <= written + START_TIME_SLACK))
}

/// The file name of the program at `path`, as `/proc` shows it.
fn program_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    Some(name.trim_end_matches(" (deleted)").to_string())
}

/// When `pid` started: the boot time plus its start in clock ticks (`/proc/PID/stat` field 22).
fn start_time(pid: i32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let since_boot = Duration::from_millis(ticks * 1000 / per_second);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal through the pidfd reaches the process it was opened on, and fails once that
    /// process is gone, whatever now runs under its pid; no process, no pidfd.
    #[test]
    fn a_pidfd_names_one_process_for_good() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid).expect("pidfd_open");
        let instance = Instance { pid, pidfd };
        if instance.pidfd.is_none() {
            eprintln!("no pidfds on this kernel: nothing to test");
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        instance.hang_up().expect("signal the live child");
        // SIGHUP's default action ends the sleep; once reaped, its pid is free.
        let status = child.wait().expect("wait");
        assert!(!status.success());
        let error = instance.hang_up().expect_err("the process is gone");
        assert_eq!(error.raw_os_error(), Some(nix::libc::ESRCH));
        assert!(pidfd_open(pid).is_err(), "no process, no pidfd");
    }

    /// The asking program's own pid passes when the file was written after it started, and not
    /// when written before; pid 1 (another program) and a pid that does not exist never pass.
    #[test]
    fn a_live_pid_is_checked_by_program_and_start_time() {
        let me = std::process::id() as i32;
        let now = SystemTime::now();
        let started_by = |pid, written| is_batchgate_started_by(pid, written).unwrap_or(false);
        // The test binary is not named batchgate, but it is the program that asks here.
        assert!(started_by(me, now));
        let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!started_by(me, long_ago), "started after the file");
        assert!(!started_by(1, now), "another program");
        assert!(!started_by(i32::MAX, now), "no such process");
    }

    #[test]
    fn the_pid_file_holds_pid_and_config() {
        assert_eq!(
            parse("12\n/etc/b.toml\n"),
            Some((12, Some("/etc/b.toml".into())))
        );
        assert_eq!(parse("12\n"), Some((12, None)));
        assert_eq!(parse(" 7 "), Some((7, None)));
        assert_eq!(parse("x\n"), None);
        assert_eq!(parse("-3\n"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn pingoras_listener_panic_becomes_one_line() {
        let line = listener_failure(
            "Failed to build listeners: BindError context: bind() failed, after retries, 127.0.0.1:8080 still in use cause: Address already in use (os error 98)",
        );
        assert_eq!(
            line.as_deref(),
            Some("cannot listen: BindError context: bind() failed, after retries, 127.0.0.1:8080 still in use cause: Address already in use (os error 98)")
        );
        assert_eq!(listener_failure("index out of bounds"), None);
    }

    #[test]
    fn an_address_in_use_or_named_twice_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let error = check_can_listen(&[addr]).expect_err("in use");
        assert!(
            error.starts_with(&format!("cannot listen on {addr}: ")),
            "{error}"
        );
        drop(taken);
        assert_eq!(check_can_listen(&[addr]), Ok(()));
        assert!(check_can_listen(&[addr, addr])
            .expect_err("twice")
            .contains("named twice"));
        let wildcard = SocketAddr::from(([0, 0, 0, 0], addr.port()));
        let inside = check_can_listen(&[wildcard, addr]).expect_err("inside the wildcard");
        assert!(
            inside.starts_with(&format!("cannot listen on {addr}: ")),
            "{inside}"
        );
    }
}
