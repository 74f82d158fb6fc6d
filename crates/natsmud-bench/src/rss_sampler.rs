//! The summed resident memory of some processes, sampled from /proc every few tens of
//! milliseconds until stopped. A login wave lasts seconds and its peak less: the run
//! tracker's once-a-second samples (procs.rs) would miss it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::procs;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peak {
    /// Highest summed VmRSS seen.
    pub max_kib: u64,
    pub samples: u64,
}

impl Peak {
    fn note(&mut self, rss_kib: u64) {
        self.max_kib = self.max_kib.max(rss_kib);
        self.samples += 1;
    }
}

/// Summed VmRSS of `pids` now (a process that is gone counts 0).
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| procs::sample(*pid))
        .map(|s| s.rss_kib)
        .sum()
}

/// Summed user + system CPU time of `pids` now, in clock ticks.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| procs::sample(*pid))
        .map(|s| s.cpu_ticks)
        .sum()
}

pub struct RssSampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Peak>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>, every: Duration) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = Peak::default();
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
            // Late samples are taken late, not bunched up to catch up.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => peak.note(rss_kib(&pids)),
                    _ = &mut stopped => break,
                }
            }
            peak.note(rss_kib(&pids));
            peak
        });
        Self { stop, task }
    }

    /// Stops sampling (with one last sample) and gives the peak.
    pub async fn stop(self) -> Peak {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn samples_this_process_until_stopped() {
        let sampler = RssSampler::start(vec![std::process::id()], Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let peak = sampler.stop().await;
        assert!(peak.samples >= 3, "{peak:?}");
        assert!(peak.max_kib > 0, "{peak:?}");
    }
}
