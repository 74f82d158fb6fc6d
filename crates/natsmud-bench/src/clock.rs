//! One clock for every process of a run: the system's real-time clock, in microseconds
//! since the Unix epoch. Send times travel in chat text and tick timestamps, so a receiver
//! in another process compares against the same clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Maps epoch microseconds to tokio instants for timers.
#[derive(Debug, Clone, Copy)]
pub struct Anchor {
    instant: Instant,
    unix_us: u64,
}

impl Anchor {
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            unix_us: now_us(),
        }
    }

    pub fn instant_of(&self, unix_us: u64) -> Instant {
        if unix_us >= self.unix_us {
            self.instant + Duration::from_micros(unix_us - self.unix_us)
        } else {
            self.instant
                .checked_sub(Duration::from_micros(self.unix_us - unix_us))
                .unwrap_or(self.instant)
        }
    }
}
