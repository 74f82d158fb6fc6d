//! The standard workload (../shared/BENCHMARK.md): per player, with a random phase, a move
//! every 10 s, a `say` every 30 s, and for one player in 1,000 a `global` every 60 s.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct Workload {
    /// Seconds between one player's moves (0: no moves).
    #[arg(long, default_value_t = 10.0)]
    pub move_every: f64,
    /// Seconds between one player's `say`s (0: none).
    #[arg(long, default_value_t = 30.0)]
    pub say_every: f64,
    /// Seconds between one global speaker's `global`s (0: none).
    #[arg(long, default_value_t = 60.0)]
    pub global_every: f64,
    /// One player in this many speaks on `global` (at least one player does).
    #[arg(long, default_value_t = 1000)]
    pub global_one_in: u32,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            move_every: 10.0,
            say_every: 30.0,
            global_every: 60.0,
            global_one_in: 1000,
        }
    }
}

/// When the workload starts, when measuring starts and ends, and when workers stop
/// (µs since the epoch). Sent by the coordinator to every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub t0_us: u64,
    pub measure_from_us: u64,
    pub measure_until_us: u64,
    pub stop_us: u64,
}

impl Plan {
    pub fn in_window(&self, us: u64) -> bool {
        (self.measure_from_us..self.measure_until_us).contains(&us)
    }

    pub fn measured_secs(&self) -> f64 {
        (self.measure_until_us.saturating_sub(self.measure_from_us)) as f64 / 1e6
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Move,
    Say,
    Global,
}

/// The seeded random source of one player: its phases and its choice of exits.
pub fn player_rng(seed: u64, idx: u32) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ u64::from(idx).wrapping_mul(0xbf58_476d_1ce4_e5b9),
    )
}

pub fn is_global_speaker(workload: &Workload, idx: u32) -> bool {
    workload.global_every > 0.0 && idx.is_multiple_of(workload.global_one_in.max(1))
}

/// One player's next action times (µs since the epoch).
#[derive(Debug, Clone)]
pub struct Schedule {
    next: [Option<u64>; 3],
    every: [u64; 3],
}

impl Schedule {
    pub fn new(workload: &Workload, rng: &mut StdRng, idx: u32, t0_us: u64) -> Self {
        let secs = |s: f64| (s * 1e6) as u64;
        let every = [
            secs(workload.move_every),
            secs(workload.say_every),
            if is_global_speaker(workload, idx) {
                secs(workload.global_every)
            } else {
                0
            },
        ];
        let mut next = [None; 3];
        for (slot, period) in next.iter_mut().zip(every) {
            if period > 0 {
                *slot = Some(t0_us + rng.random_range(0..period));
            }
        }
        Self { next, every }
    }

    /// The earliest due action.
    pub fn next_due(&self) -> Option<(Action, u64)> {
        [Action::Move, Action::Say, Action::Global]
            .into_iter()
            .zip(self.next)
            .filter_map(|(a, t)| t.map(|t| (a, t)))
            .min_by_key(|(_, t)| *t)
    }

    /// Moves `action` to its next period (on the grid, so no drift).
    pub fn advance(&mut self, action: Action) {
        let i = action as usize;
        if let Some(t) = self.next[i].as_mut() {
            *t += self.every[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_their_periods_with_a_phase() {
        let w = Workload::default();
        let mut rng = player_rng(1, 5);
        let mut s = Schedule::new(&w, &mut rng, 5, 1_000_000_000);
        let mut moves = Vec::new();
        let mut says = 0;
        while let Some((a, t)) = s.next_due() {
            if t >= 1_000_000_000 + 60_000_000 {
                break;
            }
            match a {
                Action::Move => moves.push(t),
                Action::Say => says += 1,
                Action::Global => panic!("player 5 is no global speaker"),
            }
            s.advance(a);
        }
        assert_eq!(moves.len(), 6);
        assert!(moves.windows(2).all(|p| p[1] - p[0] == 10_000_000));
        assert_eq!(says, 2);
        assert!(is_global_speaker(&w, 0) && is_global_speaker(&w, 2000));
        let mut g = Schedule::new(&w, &mut player_rng(1, 1000), 1000, 0);
        let mut globals = 0;
        while let Some((a, t)) = g.next_due() {
            if t >= 120_000_000 {
                break;
            }
            globals += usize::from(a == Action::Global);
            g.advance(a);
        }
        assert_eq!(globals, 2);
    }

    #[test]
    fn phases_are_spread_and_seeded() {
        let w = Workload::default();
        let first: Vec<u64> = (0..1000)
            .map(|i| {
                let s = Schedule::new(&w, &mut player_rng(3, i), i, 0);
                s.next[0].unwrap_or(u64::MAX)
            })
            .collect();
        let again: Vec<u64> = (0..1000)
            .map(|i| Schedule::new(&w, &mut player_rng(3, i), i, 0).next[0].unwrap_or(0))
            .collect();
        assert_eq!(first, again);
        // Roughly uniform over the 10 s period: each second gets 50–150 of 1000.
        let mut buckets = [0; 10];
        for t in &first {
            buckets[(*t / 1_000_000) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (50..150).contains(&b)),
            "{buckets:?}"
        );
    }
}
