//! Where a figure comes from: the command, the commit, the machine and the date.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub open_files_limit: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub command: String,
    pub commit: String,
    pub date: String,
    pub machine: Machine,
}

impl Provenance {
    pub fn here() -> Self {
        // Paths under the directory it ran in (the repository, from scripts/bench) are
        // written relative to it, so that a reader can paste the command.
        let here = std::env::current_dir()
            .map(|dir| format!("{}/", dir.display()))
            .unwrap_or_default();
        let command = std::env::args()
            .map(|a| {
                if here.len() > 1 {
                    a.replace(&here, "")
                } else {
                    a
                }
            })
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            command,
            commit: commit(),
            date: natsmud_protocol::envelope::now_timestamp(),
            machine: machine(),
        }
    }
}

fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `git rev-parse --short HEAD`, with `-dirty` when tracked files differ from it — other
/// than the benchmark's own results and screenshots, which a run rewrites (scripts/bench
/// clears the old results first).
pub fn commit() -> String {
    let Some(hash) = run("git", &["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    let dirty = run(
        "git",
        &[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ":(top)",
            ":(top,exclude)docs/bench",
            ":(top,exclude)docs/benchmarks.md",
            ":(top,exclude)docs/screenshots",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    if dirty { format!("{hash}-dirty") } else { hash }
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model,
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        open_files_limit: crate::procs::open_files_limit(),
    }
}
