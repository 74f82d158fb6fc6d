//! The login wave (`scenario --mode auth`): the server's memory while N clients register at
//! once, then log in at once, with the default password-hashing cost (argon2id, 19 MiB,
//! t = 2) and the default hashing concurrency — the cost every real login pays, which the
//! other scenarios turn down so that registering 100,000 players takes minutes, not hours.
//!
//! A client refused with `503` (the server's hashing queue full) waits its `Retry-After`
//! and tries again, as a real client would, until every one of the N has succeeded. The
//! server's RSS is read idle, sampled every ~50 ms during each wave (its peak) and read
//! again a few seconds after it (what the wave left behind).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::analysis::{Latency, histogram, summarize};
use crate::players::{PASSWORD, name_of};
use crate::procs;
use crate::rss_sampler::{RssSampler, cpu_ticks, rss_kib};
use crate::scenario::{SERVER_FLAGS, ScenarioArgs, ScenarioResult, fresh_work_dir, start_stack};
use crate::world;

#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Auth: seconds to let the server settle before reading its idle memory, and after
    /// each wave before reading what the wave left.
    #[arg(id = "auth_settle", long = "auth-settle", default_value_t = 5.0)]
    pub settle: f64,
    /// Auth: how often the server's memory is sampled during a wave, in ms.
    #[arg(id = "auth_sample_ms", long = "auth-sample-ms", default_value_t = 50)]
    pub sample_ms: u64,
    /// Auth: seconds one wave may take before the scenario gives up.
    #[arg(id = "auth_timeout", long = "auth-timeout", default_value_t = 600)]
    pub timeout: u64,
}

/// The benchmark's server flags without the cheap hashing: everything else (no rate
/// limits, no caps) still applies, or one address firing N requests would be refused.
pub fn server_flags() -> Vec<(&'static str, &'static str)> {
    SERVER_FLAGS
        .iter()
        .copied()
        .filter(|(flag, _)| !flag.starts_with("--password-hash-"))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveKind {
    Register,
    Login,
}

impl WaveKind {
    pub fn name(self) -> &'static str {
        match self {
            WaveKind::Register => "register",
            WaveKind::Login => "login",
        }
    }

    fn path(self) -> &'static str {
        match self {
            WaveKind::Register => "/api/auth/register",
            WaveKind::Login => "/api/auth/login",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthOutcome {
    /// Server RSS (all nodes) once up and settled, before any request.
    pub idle_rss_kib: u64,
    pub settle_secs: f64,
    pub sample_ms: u64,
    /// `register`, then `login`.
    pub waves: Vec<Wave>,
}

/// One wave of N concurrent requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    /// `register` or `login`.
    pub kind: String,
    pub requests: u32,
    pub succeeded: u32,
    /// `503` answers (hashing queue full), each retried after its `Retry-After`.
    pub refused_503: u64,
    /// The longest `Retry-After` a `503` asked for, in seconds.
    pub retry_after_max_secs: u64,
    /// `429` answers (a per-address limit still on), retried after their `Retry-After`.
    pub refused_429: u64,
    /// Failed attempts other than those, by reason (a request failing for good says why
    /// here too).
    pub errors: BTreeMap<String, u64>,
    /// The first request sent → the last success.
    pub secs: f64,
    /// Each request: first attempt sent → success.
    pub latency: Latency,
    /// Server RSS just before the wave.
    pub rss_before_kib: u64,
    /// Highest sampled server RSS during the wave.
    pub rss_peak_kib: u64,
    pub samples: u64,
    /// Server RSS `settle_secs` after the wave.
    pub rss_after_kib: u64,
    /// The kernel's high-water mark of the server's RSS (VmHWM, summed over nodes) after
    /// the wave: it cannot miss a peak between samples, but it covers the process's whole
    /// life, so after the first wave it includes the earlier ones.
    pub hwm_kib: u64,
    /// Server CPU time during the wave (user + system, all nodes).
    pub server_cpu_secs: f64,
}

impl AuthOutcome {
    pub fn wave(&self, kind: WaveKind) -> Option<&Wave> {
        self.waves.iter().find(|w| w.kind == kind.name())
    }
}

pub async fn run(args: &ScenarioArgs, result: &mut ScenarioResult) -> Result<()> {
    fresh_work_dir(&args.work_dir)?;
    let generated = world::generate(args.load.players as usize, args.load.seed);
    let stack = start_stack(args, result, &generated, &server_flags()).await?;
    let mut outcome = AuthOutcome {
        settle_secs: args.auth.settle,
        sample_ms: args.auth.sample_ms,
        ..AuthOutcome::default()
    };
    let waves = both_waves(
        &args.auth,
        args.load.players,
        &stack.servers,
        &stack.node_pids(),
        &mut outcome,
    )
    .await;
    stack.stop().await;
    result.auth = Some(outcome);
    waves?;
    result.status = "ok".into();
    Ok(())
}

async fn both_waves(
    args: &AuthArgs,
    players: u32,
    servers: &[String],
    pids: &[u32],
    outcome: &mut AuthOutcome,
) -> Result<()> {
    let settle = Duration::from_secs_f64(args.settle.max(0.0));
    tokio::time::sleep(settle).await;
    outcome.idle_rss_kib = rss_kib(pids);
    eprintln!(
        "bench: natsmud idle at {:.1} MiB",
        outcome.idle_rss_kib as f64 / 1024.0
    );
    for kind in [WaveKind::Register, WaveKind::Login] {
        eprintln!("bench: {players} concurrent {}s", kind.name());
        let wave = fire(args, kind, players, servers, pids).await?;
        outcome.waves.push(wave);
        let Some(wave) = outcome.waves.last_mut() else {
            continue;
        };
        tokio::time::sleep(settle).await;
        wave.rss_after_kib = rss_kib(pids);
        eprintln!(
            "bench: {} {}/{} in {:.1} s, {} × 503; natsmud RSS {:.1} → peak {:.1} → {:.1} MiB",
            wave.kind,
            wave.succeeded,
            wave.requests,
            wave.secs,
            wave.refused_503,
            wave.rss_before_kib as f64 / 1024.0,
            wave.rss_peak_kib as f64 / 1024.0,
            wave.rss_after_kib as f64 / 1024.0
        );
        if wave.succeeded < wave.requests {
            bail!(
                "{} of {} {}s failed for good: {:?}",
                wave.requests - wave.succeeded,
                wave.requests,
                wave.kind,
                wave.errors
            );
        }
    }
    Ok(())
}

/// How one request of a wave went.
#[derive(Debug, Default)]
struct Tried {
    /// First attempt sent → success; `None` when it failed for good.
    took: Option<Duration>,
    done_at: Option<Instant>,
    refused_503: u64,
    refused_429: u64,
    retry_after_max_secs: u64,
    errors: Vec<String>,
}

/// Fires `players` requests of `kind` at once and waits until every one has succeeded
/// (or failed for good), sampling the servers' memory meanwhile.
async fn fire(
    args: &AuthArgs,
    kind: WaveKind,
    players: u32,
    servers: &[String],
    pids: &[u32],
) -> Result<Wave> {
    if servers.is_empty() {
        bail!("no server to send requests to");
    }
    let limit = Duration::from_secs(args.timeout.max(1));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(players as usize)
        // Under the server's 10 s keep-alive timeout: a pooled connection is never reused
        // just as the server closes it.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .timeout(limit)
        .build()?;
    let mut wave = Wave {
        kind: kind.name().to_owned(),
        requests: players,
        rss_before_kib: rss_kib(pids),
        ..Wave::default()
    };
    let cpu_before = cpu_ticks(pids);
    let sampler = RssSampler::start(pids.to_vec(), Duration::from_millis(args.sample_ms));
    let started = Instant::now();
    let deadline = started + limit;
    let tries = futures::future::join_all((0..players).map(|idx| {
        let url = format!("{}{}", servers[idx as usize % servers.len()], kind.path());
        request(&client, url, idx, deadline)
    }))
    .await;
    let peak = sampler.stop().await;
    wave.rss_peak_kib = peak.max_kib;
    wave.samples = peak.samples;
    wave.hwm_kib = pids
        .iter()
        .filter_map(|pid| procs::sample(*pid))
        .map(|s| s.hwm_kib)
        .sum();
    wave.server_cpu_secs =
        cpu_ticks(pids).saturating_sub(cpu_before) as f64 / procs::clock_ticks_per_sec() as f64;
    let mut latency = histogram();
    let mut last = started;
    for tried in tries {
        wave.refused_503 += tried.refused_503;
        wave.refused_429 += tried.refused_429;
        wave.retry_after_max_secs = wave.retry_after_max_secs.max(tried.retry_after_max_secs);
        for e in tried.errors {
            *wave.errors.entry(e).or_default() += 1;
        }
        if let (Some(took), Some(at)) = (tried.took, tried.done_at) {
            wave.succeeded += 1;
            latency.saturating_record((took.as_micros() as u64).max(1));
            last = last.max(at);
        }
    }
    wave.secs = last.duration_since(started).as_secs_f64();
    wave.latency = summarize(&latency);
    Ok(wave)
}

/// `Retry-After` in seconds (the server sends whole seconds); 1 when absent or a date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// One client: tries until it succeeds, fails for good, or the wave's time is up.
async fn request(client: &reqwest::Client, url: String, idx: u32, deadline: Instant) -> Tried {
    let body = serde_json::json!({"username": name_of(idx), "password": PASSWORD});
    let started = Instant::now();
    let mut tried = Tried::default();
    loop {
        let wait = match client.post(&url).json(&body).send().await {
            Ok(reply) if reply.status().is_success() => {
                // The body holds the token; reading it is part of the answer.
                match reply.bytes().await {
                    Ok(_) => {
                        tried.took = Some(started.elapsed());
                        tried.done_at = Some(Instant::now());
                        return tried;
                    }
                    Err(e) => {
                        tried.errors.push(format!("reading the answer: {e}"));
                        Duration::from_secs(1)
                    }
                }
            }
            Ok(reply) => {
                let status = reply.status().as_u16();
                let secs = retry_after(reply.headers());
                match status {
                    503 => {
                        tried.refused_503 += 1;
                        tried.retry_after_max_secs = tried.retry_after_max_secs.max(secs);
                        Duration::from_secs(secs)
                    }
                    429 => {
                        tried.refused_429 += 1;
                        Duration::from_secs(secs)
                    }
                    _ => {
                        tried.errors.push(format!("HTTP {status}"));
                        return tried;
                    }
                }
            }
            Err(e) => {
                tried
                    .errors
                    .push(format!("request failed: {}", short_error(e)));
                Duration::from_secs(1)
            }
        };
        if Instant::now() + wait > deadline {
            tried.errors.push("gave up: the wave's time was up".into());
            return tried;
        }
        tokio::time::sleep(wait).await;
    }
}

/// The error without the URL (the same for every client), so failures group.
fn short_error(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        e.without_url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_flag_but_the_cheap_hashing() {
        let flags = server_flags();
        assert!(flags.iter().all(|(f, _)| !f.contains("password-hash")));
        assert!(flags.contains(&("--auth-per-minute", "0")));
        assert_eq!(flags.len() + 2, SERVER_FLAGS.len());
    }

    #[test]
    fn reads_retry_after_in_seconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), 1);
        headers.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("3"),
        );
        assert_eq!(retry_after(&headers), 3);
        headers.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), 1);
    }
}
