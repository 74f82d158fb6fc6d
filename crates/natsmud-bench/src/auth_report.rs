//! The login wave in the report: its row of the targets table, its section, its lines in
//! the summary printed after a run.

use std::fmt::Write as _;

use crate::auth_wave::{AuthOutcome, Wave, WaveKind};
use crate::load::Mode;
use crate::report::{
    Target, failed_line, flags_line, mib, ms, provenance_lines, thousands, verdict,
};
use crate::scenario::ScenarioResult;

/// BENCHMARK.md: server RSS after 200 concurrent registrations or logins ≤ idle + 64 MiB.
const TARGET_REQUESTS: u32 = 200;
const TARGET_GROWTH_KIB: u64 = 64 * 1024;

/// What a wave left behind: RSS after it, over the server's idle RSS (KiB; negative when
/// it gave back more than it took).
fn growth_kib(outcome: &AuthOutcome, wave: &Wave) -> i64 {
    wave.rss_after_kib as i64 - outcome.idle_rss_kib as i64
}

fn signed_mib(kib: i64) -> String {
    format!(
        "{}{:.1}",
        if kib < 0 { "−" } else { "+" },
        kib.unsigned_abs() as f64 / 1024.0
    )
}

/// Flags of the run that change the hashing's cost or concurrency from natsmud's defaults.
fn hashing_flags(r: &ScenarioResult) -> Vec<&str> {
    r.server_flags
        .iter()
        .map(String::as_str)
        .filter(|f| f.starts_with("--password-hash-") || f.starts_with("--hashing-"))
        .collect()
}

pub(crate) fn targets(results: &[ScenarioResult]) -> Vec<Target<'static>> {
    let runs: Vec<&ScenarioResult> = results.iter().filter(|r| r.mode == Mode::Auth).collect();
    if runs.is_empty() {
        return Vec::new();
    }
    // The smallest wave of at least 200 at the default hashing is the target's; another
    // is shown, unjudged.
    let at_target = runs
        .iter()
        .filter(|r| r.players >= TARGET_REQUESTS && hashing_flags(r).is_empty())
        .min_by_key(|r| r.players);
    let shown = at_target.or_else(|| runs.iter().max_by_key(|r| r.players));
    let mut measured = Vec::new();
    let mut pass = true;
    if let Some(r) = shown
        && let Some(a) = &r.auth
    {
        for kind in [WaveKind::Register, WaveKind::Login] {
            match a.wave(kind) {
                Some(w) => {
                    let growth = growth_kib(a, w);
                    pass &= w.succeeded == w.requests && growth <= TARGET_GROWTH_KIB as i64;
                    measured.push(format!(
                        "{} {} MiB (peak {})",
                        kind.name(),
                        signed_mib(growth),
                        signed_mib(w.rss_peak_kib as i64 - a.idle_rss_kib as i64)
                    ));
                }
                None => {
                    pass = false;
                    measured.push(format!("{}: not run", kind.name()));
                }
            }
        }
        measured.push(format!("idle {} MiB; {}", mib(a.idle_rss_kib), r.name));
    } else {
        pass = false;
    }
    if let Some(r) = shown
        && r.status != "ok"
    {
        measured.push(format!(
            "failed: {}",
            r.error
                .as_deref()
                .unwrap_or("no result")
                .lines()
                .next()
                .unwrap_or("")
        ));
        pass = false;
    }
    vec![Target {
        figure: "server RSS after 200 concurrent registrations or logins (default hashing cost)",
        target: "≤ idle + 64 MiB",
        measured: if measured.is_empty() {
            "—".into()
        } else {
            measured.join("; ")
        },
        verdict: verdict(at_target.map(|_| pass)),
    }]
}

pub(crate) fn section(s: &mut String, r: &ScenarioResult) {
    let _ = writeln!(
        s,
        "## Scenario `{}`: {} concurrent registrations, then {} concurrent logins{}\n",
        r.name,
        thousands(u64::from(r.players)),
        thousands(u64::from(r.players)),
        if r.quick { " (quick run)" } else { "" }
    );
    provenance_lines(s, r);
    let _ = writeln!(
        s,
        "- **Processes:** {} natsmud node(s), 1 nats-server ({}); the requests come from the benchmark's coordinator, one address (127.0.0.1).",
        r.nodes,
        if r.nats_server_version.is_empty() {
            "version unknown"
        } else {
            r.nats_server_version.as_str()
        }
    );
    flags_line(s, r);
    let Some(a) = &r.auth else {
        failed_line(s, r);
        return;
    };
    let hashing_flags = hashing_flags(r);
    if hashing_flags.is_empty() {
        let _ = writeln!(
            s,
            "- **Hashing:** natsmud's defaults — argon2id at 19 MiB and 2 iterations, its default hashing concurrency — not the cheap hashing of the other scenarios; the per-address auth limit is off (`--auth-per-minute 0`), since every request comes from one address."
        );
    } else {
        let _ = writeln!(
            s,
            "- **Hashing:** set by `{}`, **not** natsmud's defaults (the target is for those).",
            hashing_flags.join(" ")
        );
    }
    let _ = writeln!(
        s,
        "- **Waves:** all {} requests of a wave are sent at once, each with its own connection and a distinct player name; one answered `503` waits its `Retry-After` and tries again, until all {} have succeeded. Then the {} log in the same way.",
        thousands(u64::from(r.players)),
        thousands(u64::from(r.players)),
        thousands(u64::from(r.players))
    );
    let _ = writeln!(
        s,
        "- **Memory:** natsmud's RSS (VmRSS from /proc, all nodes) {} s after it started (idle: **{} MiB**), every {} ms during each wave (peak), and {} s after the wave's last answer (after). VmHWM is the kernel's own high-water mark, which no sample can miss but which spans the process's life.",
        a.settle_secs,
        mib(a.idle_rss_kib),
        a.sample_ms,
        a.settle_secs
    );
    if r.status != "ok" {
        failed_line(s, r);
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "| wave | succeeded | all done in (s) | `503`s (longest Retry-After) | `429`s | request p50 / p99 / max (ms) | RSS before (MiB) | peak (MiB) | after (MiB) | after − idle (MiB) | VmHWM after (MiB) | server CPU (s) |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for w in &a.waves {
        let _ = writeln!(
            s,
            "| {} | {} / {} | {:.1} | {} | {} | {} / {} / {} | {} | {} | {} | **{}** | {} | {:.1} |",
            w.kind,
            thousands(u64::from(w.succeeded)),
            thousands(u64::from(w.requests)),
            w.secs,
            if w.refused_503 == 0 {
                "0".to_owned()
            } else {
                format!(
                    "{} ({} s)",
                    thousands(w.refused_503),
                    w.retry_after_max_secs
                )
            },
            thousands(w.refused_429),
            ms(w.latency.p50_ms),
            ms(w.latency.p99_ms),
            ms(w.latency.max_ms),
            mib(w.rss_before_kib),
            mib(w.rss_peak_kib),
            mib(w.rss_after_kib),
            signed_mib(growth_kib(a, w)),
            mib(w.hwm_kib),
            w.server_cpu_secs
        );
    }
    s.push('\n');
    let errors: Vec<String> = a
        .waves
        .iter()
        .flat_map(|w| {
            w.errors
                .iter()
                .map(move |(e, n)| format!("{} `{e}` × {n}", w.kind))
        })
        .collect();
    let _ = writeln!(
        s,
        "Target: RSS after ≤ idle + 64 MiB. Other failed attempts (retried): {}.\n",
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        }
    );
}

pub(crate) fn print_summary(r: &ScenarioResult) {
    let Some(a) = &r.auth else { return };
    eprintln!("  auth: natsmud idle {} MiB", mib(a.idle_rss_kib));
    for w in &a.waves {
        eprintln!(
            "  {:<8} {}/{} in {:.1} s, {} × 503, {} × 429; RSS before {} MiB, peak {} MiB, after {} MiB ({} MiB over idle); CPU {:.1} s",
            w.kind,
            w.succeeded,
            w.requests,
            w.secs,
            w.refused_503,
            w.refused_429,
            mib(w.rss_before_kib),
            mib(w.rss_peak_kib),
            mib(w.rss_after_kib),
            signed_mib(growth_kib(a, w)),
            w.server_cpu_secs
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::LoadArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn result(players: u32, after_mib: [u64; 2]) -> ScenarioResult {
        let load = Args::parse_from(["x", "--players", &players.to_string()]).load;
        let mut r = ScenarioResult::new(format!("auth-{players}"), Mode::Auth, &load, false, 1);
        r.status = "ok".into();
        let wave = |kind: WaveKind, after: u64| Wave {
            kind: kind.name().into(),
            requests: players,
            succeeded: players,
            rss_after_kib: after * 1024,
            rss_peak_kib: after * 1024 + 10_240,
            ..Wave::default()
        };
        r.auth = Some(AuthOutcome {
            idle_rss_kib: 20 * 1024,
            waves: vec![
                wave(WaveKind::Register, after_mib[0]),
                wave(WaveKind::Login, after_mib[1]),
            ],
            ..AuthOutcome::default()
        });
        r
    }

    #[test]
    fn judges_the_wave_of_200_against_idle_plus_64_mib() {
        let t = targets(&[result(200, [84, 60])]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].verdict, "**pass**", "{}", t[0].measured);
        assert!(
            t[0].measured.contains("register +64.0 MiB"),
            "{}",
            t[0].measured
        );
        let t = targets(&[result(200, [90, 60])]);
        assert_eq!(t[0].verdict, "**miss**");
        // A smaller wave, or one at another hashing cost, is shown but not judged.
        let t = targets(&[result(50, [30, 30])]);
        assert_eq!(t[0].verdict, "not measured");
        let mut cheap = result(200, [30, 30]);
        cheap.server_flags = vec!["--password-hash-memory-kib=8".into()];
        assert_eq!(targets(&[cheap])[0].verdict, "not measured");
        assert!(targets(&[]).is_empty());
    }
}
