//! docs/benchmarks.md and its plots, from scenario result files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::analysis::Latency;
use crate::floor::FloorResult;
use crate::load::Mode;
use crate::scenario::ScenarioResult;

mod markdown;
mod plots;
mod sections;
mod summary;
mod targets;

pub(crate) use sections::{
    deliveries, failed_line, flags_line, frame_checks, players_line, processes_line,
    provenance_lines, resources_table,
};
pub use summary::print_summary;
pub(crate) use targets::{Target, verdict};

use markdown::{render, render_floor};
use plots::plot_all;

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Scenario result files, in the order to report them.
    #[arg(long, num_args = 1.., required = true)]
    pub results: Vec<PathBuf>,
    /// The markdown report to write.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// Directory for the PNG plots (linked from the report relative to it).
    #[arg(long, default_value = "docs/bench")]
    pub plots: PathBuf,
    /// The command that produced the results, named at the top of the report.
    #[arg(long, default_value = "scripts/bench")]
    pub command: String,
    /// Scenarios that were asked for but produced no results file, with why (repeatable,
    /// `name: reason`).
    #[arg(long = "missing")]
    pub missing: Vec<String>,
    /// Results of `natsmud-bench floor` (JSON), reported as the kernel's lower bound.
    #[arg(long)]
    pub floor: Option<PathBuf>,
}

/// Thousands with commas: 20000 → "20,000".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub(crate) fn ok(result: &ScenarioResult) -> bool {
    result.status == "ok" && result.outcome.is_some()
}

/// Lost, duplicated, reordered and echoed events of a scenario (all must be zero).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(crate) struct Faults {
    pub missing: u64,
    pub extra: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub echoes: u64,
    pub direct_gaps: u64,
}

impl Faults {
    pub fn of(result: &ScenarioResult) -> Self {
        let Some(o) = &result.outcome else {
            return Self::default();
        };
        let t = o.analysis.totals();
        Self {
            missing: t.missing,
            extra: t.extra,
            duplicates: t.duplicates + o.counters.duplicate_sequence,
            out_of_order: o.counters.out_of_order,
            echoes: o.counters.echoes,
            direct_gaps: o.counters.direct_gaps,
        }
    }

    pub fn total(&self) -> u64 {
        self.missing
            + self.extra
            + self.duplicates
            + self.out_of_order
            + self.echoes
            + self.direct_gaps
    }
}

pub(crate) fn latency(result: &ScenarioResult, kind: &str) -> Option<Latency> {
    let l = result.outcome.as_ref()?.analysis.latency.get(kind)?.clone();
    (l.count > 0).then_some(l)
}

pub fn write(args: &ReportArgs) -> Result<()> {
    let mut results = Vec::new();
    let mut unreadable = args.missing.clone();
    for path in &args.results {
        match std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|b| serde_json::from_slice::<ScenarioResult>(&b).map_err(Into::into))
        {
            Ok(r) => results.push(r),
            Err(e) => unreadable.push(format!("{}: {e}", path.display())),
        }
    }
    // Active scenarios first, then idle, each kind by players; the other shapes after them.
    results.sort_by_key(|r| (!r.is_standard(), r.mode != Mode::Active, r.players));
    std::fs::create_dir_all(&args.plots)?;
    let plots = match plot_all(&results, &args.plots) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench: no plots: {e:#}");
            Vec::new()
        }
    };
    let rel = relative_dir(&args.out, &args.plots);
    let floor = match &args.floor {
        Some(path) => match std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|b| serde_json::from_slice::<FloorResult>(&b).map_err(Into::into))
        {
            Ok(floor) => Some(floor),
            Err(e) => {
                unreadable.push(format!("{}: {e}", path.display()));
                None
            }
        },
        None => None,
    };
    let mut text = render(&results, &unreadable, args, &plots, &rel);
    if let Some(floor) = &floor {
        text = insert_before(&text, "## Overview", &render_floor(floor, &results));
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("bench: wrote {}", args.out.display());
    Ok(())
}

/// `section` placed before the first line that is `heading`, or at the end.
fn insert_before(text: &str, heading: &str, section: &str) -> String {
    match text.find(&format!("\n{heading}\n")) {
        Some(at) => format!("{}\n{section}{}", &text[..at], &text[at..]),
        None => format!("{text}\n{section}"),
    }
}

/// The plots directory as the report links it.
fn relative_dir(report: &Path, plots: &Path) -> String {
    let base = report.parent().unwrap_or(Path::new(""));
    match plots.strip_prefix(base) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => plots.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(20_000), "20,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn links_plots_relative_to_the_report() {
        assert_eq!(
            relative_dir(Path::new("docs/benchmarks.md"), Path::new("docs/bench")),
            "bench"
        );
    }

    #[test]
    fn the_telnet_section_comes_from_its_own_folder_when_there() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut s = String::new();
        markdown::telnet_section(&mut s, dir.path());
        assert!(s.is_empty(), "{s}");
        let result = crate::telnet::TelnetResult {
            status: "ok".to_owned(),
            players: 40,
            ..crate::telnet::TelnetResult::default()
        };
        let written = std::fs::create_dir_all(dir.path().join("telnet")).and_then(|()| {
            std::fs::write(
                dir.path().join("telnet").join("telnet.json"),
                serde_json::to_vec(&result).unwrap_or_default(),
            )
        });
        written.unwrap_or_else(|e| panic!("{e}"));
        markdown::telnet_section(&mut s, dir.path());
        assert!(s.starts_with("## Telnet beside WebSocket"), "{s}");
        assert!(s.contains("40 players"), "{s}");
    }
}
