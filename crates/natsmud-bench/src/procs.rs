//! Processes: the ones a benchmark starts (killed when dropped, so an error or Ctrl-C never
//! leaves one behind), and what /proc says about any process's memory and CPU time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// Memory and CPU time of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// User + system time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/stat (utime, stime).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
        cpu_ticks: stat_cpu_ticks(&stat)?,
    })
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime: fields 14 and 15, counted after the command name's closing parenthesis
/// (the name itself may hold spaces).
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')' the first field is field 3 (state); utime is field 14.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux almost everywhere).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(100)
}

/// The soft open-files limit of this process.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A process the benchmark started. Dropping it kills it (SIGKILL); [`Managed::stop`]
/// asks first (SIGTERM).
pub struct Managed {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    pub child: Child,
}

impl Managed {
    /// Spawns `command` with its output in `log` (stdin/stdout stay as the command set
    /// them when `keep_stdio`), and notes its pid in `pid_file` so a shell trap can end it
    /// even if this process is killed outright.
    pub fn spawn(
        name: &str,
        command: &mut Command,
        log: &Path,
        keep_stdio: bool,
        pid_file: &Path,
    ) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        if !keep_stdio {
            command
                .stdin(Stdio::null())
                .stdout(file.try_clone().context("log file")?);
        }
        command.stderr(file).kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().with_context(|| format!("{name} has no pid"))?;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pid_file)
        {
            let _ = writeln!(f, "{pid} {name}");
        }
        Ok(Self {
            name: name.to_owned(),
            pid,
            log: log.to_owned(),
            child,
        })
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if self.running() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .stderr(Stdio::null())
                .status();
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
        let _ = self.child.wait().await;
    }

    /// The last lines of the process's log, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// CPU and memory of a group of processes over the measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub processes: usize,
    /// Summed over the group's processes.
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// Highest summed RSS seen while sampling (once a second).
    pub rss_max_kib: u64,
    /// CPU seconds (user + system) used during the window, summed.
    pub cpu_secs: f64,
    /// `cpu_secs` over the window's length, in % of one core.
    pub cpu_pct_of_core: f64,
    /// Per process: name, RSS at the end (KiB), CPU seconds.
    pub per_process: Vec<(String, u64, f64)>,
}

/// Tracks named pids in groups (`server`, `nats`, `generator`).
#[derive(Debug, Default)]
pub struct Tracker {
    members: Vec<(String, String, u32)>,
    start: Vec<Option<ProcSample>>,
    last: Vec<Option<ProcSample>>,
    max_sum: std::collections::BTreeMap<String, u64>,
    started_at: Option<std::time::Instant>,
    ended_at: Option<std::time::Instant>,
}

impl Tracker {
    pub fn add(&mut self, group: &str, name: &str, pid: u32) {
        self.members.push((group.to_owned(), name.to_owned(), pid));
    }

    pub fn sum_rss(&self, group: &str) -> u64 {
        self.members
            .iter()
            .filter(|(g, _, _)| g == group)
            .filter_map(|(_, _, pid)| sample(*pid))
            .map(|s| s.rss_kib)
            .sum()
    }

    pub fn begin(&mut self) {
        self.start = self
            .members
            .iter()
            .map(|(_, _, pid)| sample(*pid))
            .collect();
        self.last = self.start.clone();
        self.started_at = Some(std::time::Instant::now());
        self.note_max();
    }

    pub fn tick(&mut self) {
        let now: Vec<Option<ProcSample>> = self
            .members
            .iter()
            .map(|(_, _, pid)| sample(*pid))
            .collect();
        // A process that ended keeps its last sample.
        for (last, now) in self.last.iter_mut().zip(now) {
            if now.is_some() {
                *last = now;
            }
        }
        self.note_max();
    }

    pub fn end(&mut self) {
        self.tick();
        self.ended_at = Some(std::time::Instant::now());
    }

    fn note_max(&mut self) {
        let mut sums: std::collections::BTreeMap<String, u64> = Default::default();
        for ((group, _, _), s) in self.members.iter().zip(&self.last) {
            *sums.entry(group.clone()).or_default() += s.map_or(0, |s| s.rss_kib);
        }
        for (g, v) in sums {
            let m = self.max_sum.entry(g).or_default();
            *m = (*m).max(v);
        }
    }

    pub fn usage(&self, group: &str, ticks_per_sec: u64) -> Usage {
        let secs = match (self.started_at, self.ended_at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-9),
            _ => 1e-9,
        };
        let mut u = Usage::default();
        for (i, (g, name, _)) in self.members.iter().enumerate() {
            if g != group {
                continue;
            }
            u.processes += 1;
            let start = self.start.get(i).copied().flatten().unwrap_or_default();
            let end = self.last.get(i).copied().flatten().unwrap_or_default();
            let cpu = end.cpu_ticks.saturating_sub(start.cpu_ticks) as f64 / ticks_per_sec as f64;
            u.rss_start_kib += start.rss_kib;
            u.rss_end_kib += end.rss_kib;
            u.cpu_secs += cpu;
            u.per_process.push((name.clone(), end.rss_kib, cpu));
        }
        u.rss_max_kib = self.max_sum.get(group).copied().unwrap_or(0);
        u.cpu_pct_of_core = u.cpu_secs / secs * 100.0;
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_past_a_name_with_spaces() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(stat_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap_or_else(|| panic!("no /proc sample"));
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
