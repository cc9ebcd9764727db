//! Processes the benchmarks start and measure: their CPU from `/proc`, a free port, and a
//! stop that lets them exit cleanly first. Shared by `load.rs` and `sidebyside.rs`.

use std::process::{Child, Command};
use std::time::Duration;

/// utime + stime of one process, in seconds (clock ticks of 10 ms).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let (user, system) = process_cpu_split(pid);
    user + system
}

/// utime and stime of one process, in seconds.
pub fn process_cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// CPU of `parent` and its children (nginx: the master and its workers), in seconds.
pub fn family_cpu_seconds(parent: u32) -> f64 {
    process_cpu_seconds(parent)
        + children(parent)
            .into_iter()
            .map(process_cpu_seconds)
            .sum::<f64>()
}

/// Pids whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(parent)
        })
        .collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// SIGTERM (a graceful stop: nginx's master stops its workers, a profiler writes its output),
/// up to `patience` for the exit, then SIGKILL.
pub fn stop(child: &mut Child, patience: Duration) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let step = Duration::from_millis(100);
    for _ in 0..(patience.as_millis() / step.as_millis()).max(1) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(step);
    }
    let _ = child.kill();
    let _ = child.wait();
}
