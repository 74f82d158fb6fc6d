//! Rate limits. Each is configurable and 0 turns it off, so load tests from one address
//! can run.
//!
//! Limits on what a player does are kept per player, not per connection: a player who
//! reconnects after each burst gets no new allowance. Their state is forgotten once an
//! allowance is full again ([`upkeep`](PlayerLimits::upkeep), run periodically), never
//! during a check, so a check costs the same however many keys there are.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use natsmud_protocol::PlayerId;

/// After this many refused commands in a row, the connection is closed (1008).
pub const ABUSE_THRESHOLD: u32 = 50;

type Keyed<K> = Arc<RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>>;

fn keyed<K: Hash + Eq + Clone>(quota: Option<Quota>) -> Option<Keyed<K>> {
    quota.map(|quota| Arc::new(RateLimiter::keyed(quota)))
}

fn check_key<K: Hash + Eq + Clone>(limiter: &Option<Keyed<K>>, key: &K) -> Result<(), Duration> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

fn forget_idle<K: Hash + Eq + Clone>(limiter: &Option<Keyed<K>>) {
    if let Some(limiter) = limiter {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// The key a client address is limited by: the address, or for IPv6 its /64, which is
/// what one subscriber usually gets (keying single v6 addresses would let one host use
/// billions of keys).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::from(segments)
            }
        },
    }
}

/// Login and register attempts per client address.
#[derive(Clone)]
pub struct AuthLimiter {
    inner: Option<Keyed<IpAddr>>,
}

impl AuthLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            inner: keyed(NonZeroU32::new(per_minute).map(Quota::per_minute)),
        }
    }

    /// `Err(wait)` when `ip` must wait before trying again.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        check_key(&self.inner, &address_key(ip))
    }

    /// Forgets addresses whose allowance is full again.
    pub fn upkeep(&self) {
        forget_idle(&self.inner);
    }

    pub fn tracked(&self) -> usize {
        self.inner.as_ref().map_or(0, |limiter| limiter.len())
    }
}

/// What each player may do, across all of its connections.
#[derive(Clone)]
pub struct PlayerLimits {
    commands: Option<Keyed<PlayerId>>,
    connects: Option<Keyed<PlayerId>>,
}

impl PlayerLimits {
    /// `commands_per_sec` on average with bursts of `command_burst`; `connects_per_minute`
    /// connections (WebSocket or SSE) a minute. 0 turns a limit off.
    pub fn new(commands_per_sec: u32, command_burst: u32, connects_per_minute: u32) -> Self {
        let commands = NonZeroU32::new(commands_per_sec).map(|rate| {
            let burst = NonZeroU32::new(command_burst).unwrap_or(rate);
            Quota::per_second(rate).allow_burst(burst)
        });
        Self {
            commands: keyed(commands),
            connects: keyed(NonZeroU32::new(connects_per_minute).map(Quota::per_minute)),
        }
    }

    /// `Err(wait)` when `player` must wait before its next command.
    pub fn check_command(&self, player: &PlayerId) -> Result<(), Duration> {
        check_key(&self.commands, player)
    }

    /// `Err(wait)` when `player` must wait before connecting again.
    pub fn check_connect(&self, player: &PlayerId) -> Result<(), Duration> {
        check_key(&self.connects, player)
    }

    /// Forgets players whose allowances are full again.
    pub fn upkeep(&self) {
        forget_idle(&self.commands);
        forget_idle(&self.connects);
    }
}

/// One connection's view of its player's command allowance: it counts refusals in a row,
/// so that a client that keeps flooding is cut off.
pub struct CommandLimiter {
    limits: PlayerLimits,
    player: PlayerId,
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
    pub fn new(limits: PlayerLimits, player: PlayerId) -> Self {
        Self {
            limits,
            player,
            refused_in_a_row: 0,
        }
    }

    pub fn check(&mut self) -> Verdict {
        if self.limits.check_command(&self.player).is_ok() {
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

    fn player(id: &str) -> PlayerId {
        PlayerId::parse(id).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn zero_turns_limits_off() {
        let limits = PlayerLimits::new(0, 1, 0);
        let mut commands = CommandLimiter::new(limits.clone(), player("p"));
        assert!((0..10_000).all(|_| commands.check() == Verdict::Run));
        assert!((0..10_000).all(|_| limits.check_connect(&player("p")).is_ok()));
        let auth = AuthLimiter::new(0);
        assert!((0..10_000).all(|_| auth.check(IpAddr::from([127, 0, 0, 1])).is_ok()));
    }

    #[test]
    fn bursts_pass_then_floods_are_refused_then_cut_off() {
        let limits = PlayerLimits::new(1, 5, 0);
        let mut commands = CommandLimiter::new(limits.clone(), player("p"));
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

    #[test]
    fn a_new_connection_gets_no_new_allowance() {
        let limits = PlayerLimits::new(1, 5, 0);
        let mut first = CommandLimiter::new(limits.clone(), player("p"));
        assert!((0..5).all(|_| first.check() == Verdict::Run));
        let mut second = CommandLimiter::new(limits.clone(), player("p"));
        assert_eq!(second.check(), Verdict::Refuse);
        let mut other = CommandLimiter::new(limits, player("q"));
        assert_eq!(other.check(), Verdict::Run);
    }

    #[test]
    fn checks_never_prune_and_upkeep_forgets_idle_keys() {
        let auth = AuthLimiter::new(1000);
        for n in 0..20_000u32 {
            assert!(auth.check(IpAddr::from(n.to_be_bytes())).is_ok());
        }
        assert_eq!(auth.tracked(), 20_000);
        // Allowances refill at 1000 a minute: a key that used one of them is full again
        // after 60 ms.
        std::thread::sleep(Duration::from_millis(200));
        auth.upkeep();
        assert_eq!(auth.tracked(), 0);
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let auth = AuthLimiter::new(2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or_else(|e| panic!("{e}"));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(auth.check(a).is_ok());
        assert!(auth.check(b).is_ok());
        assert!(auth.check(a).is_err());
        assert!(auth.check(c).is_ok());
    }
}
