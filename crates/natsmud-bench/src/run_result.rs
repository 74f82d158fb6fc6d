//! The end of a run of a subcommand with a results file of its own (`resume`, `telnet`):
//! how it ended, the JSON written, its markdown printed.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// A results file that records how its run ended and renders itself for the report.
pub trait RunResult: Serialize {
    /// The `status` (`ok` or `failed`) and `error` fields.
    fn outcome_fields(&mut self) -> (&mut String, &mut Option<String>);
    fn markdown(&self) -> String;
}

/// Notes how the run ended, writes the results and prints the table.
pub fn finish<R: RunResult>(mut result: R, outcome: Result<()>, out: &Path) -> Result<()> {
    let (status, error) = result.outcome_fields();
    match &outcome {
        Ok(()) => *status = "ok".to_owned(),
        Err(e) => {
            *status = "failed".to_owned();
            *error = Some(format!("{e:#}"));
        }
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", out.display()))?;
    print!("{}", result.markdown());
    eprintln!("bench: results in {}", out.display());
    outcome
}
