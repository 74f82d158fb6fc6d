//! Rate limits. Each is configurable and 0 turns it off, so load tests from one address
//! can run.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// After this many refused commands in a row, the connection is closed (1008).
pub const ABUSE_THRESHOLD: u32 = 50;

/// Login and register attempts per client address.
#[derive(Clone)]
pub struct AuthLimiter {
    inner: Option<Arc<RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>>>,
}

impl AuthLimiter {
    pub fn new(per_minute: u32) -> Self {
        let inner =
            NonZeroU32::new(per_minute).map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))));
        Self { inner }
    }

    /// `Err(wait)` when `ip` must wait before trying again.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        // Forget addresses whose allowance is full again, so the map cannot grow forever.
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// One connection's command allowance: a token bucket of `burst` refilled at `per_sec`.
pub struct CommandLimiter {
    inner: Option<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>,
    refused_in_a_row: u32,
}

/// What to do with one command.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Run,
    Refuse,
    Disconnect,
}

impl CommandLimiter {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let inner = NonZeroU32::new(per_sec).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            inner,
            refused_in_a_row: 0,
        }
    }

    pub fn check(&mut self) -> Verdict {
        let Some(limiter) = &self.inner else {
            return Verdict::Run;
        };
        if limiter.check().is_ok() {
            self.refused_in_a_row = 0;
            return Verdict::Run;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row >= ABUSE_THRESHOLD {
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_turns_limits_off() {
        let mut commands = CommandLimiter::new(0, 1);
        assert!((0..10_000).all(|_| commands.check() == Verdict::Run));
        let auth = AuthLimiter::new(0);
        assert!((0..10_000).all(|_| auth.check(IpAddr::from([127, 0, 0, 1])).is_ok()));
    }

    #[test]
    fn bursts_pass_then_floods_are_refused_then_cut_off() {
        let mut commands = CommandLimiter::new(1, 5);
        assert!((0..5).all(|_| commands.check() == Verdict::Run));
        assert_eq!(commands.check(), Verdict::Refuse);
        let verdicts: Vec<Verdict> = (0..ABUSE_THRESHOLD).map(|_| commands.check()).collect();
        assert_eq!(verdicts.last(), Some(&Verdict::Disconnect));
        let auth = AuthLimiter::new(3);
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert!((0..3).all(|_| auth.check(ip).is_ok()));
        assert!(auth.check(ip).is_err());
        assert!(auth.check(IpAddr::from([10, 0, 0, 2])).is_ok());
    }
}
