//! The game tick: a `game_tick` envelope on `events.game_tick` every interval.
//!
//! Tick N is due at N × interval after the Unix epoch. Deriving the number from the wall
//! clock instead of a counter means: no drift (each tick is scheduled on that grid, never
//! "previous tick + interval"), numbers continue across restarts without storing anything,
//! and two nodes that both tick publish the same number for the same tick, which every
//! node's NATS handler delivers once.
//!
//! Missed ticks (the process stalled longer than an interval) are skipped, not replayed in
//! a burst: a late tick is worth nothing, and the skipped numbers show a client the stall.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natsmud_protocol::envelope::{GameTickData, format_timestamp};
use natsmud_protocol::{Envelope, EventType, Subject};
use time::OffsetDateTime;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::presence::Presence;
use crate::realtime::EventPublisher;
use crate::telemetry;

/// Publishes the tick while this node holds the tick lease (see `presence`), so there is
/// one tick per interval however many nodes serve the world.
pub struct GameTickService {
    pub interval: Duration,
    pub publisher: Arc<EventPublisher>,
    pub presence: Presence,
}

impl GameTickService {
    /// Ticks until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let period_ms = self.interval.as_millis().max(1) as u64;
        let now_ms = unix_millis();
        let first = now_ms / period_ms + 1;
        let first_due = Instant::now() + Duration::from_millis(first * period_ms - now_ms);
        let mut timer = tokio::time::interval_at(first_due, self.interval);
        timer.set_missed_tick_behavior(MissedTickBehavior::Skip);
        tracing::info!(
            interval_ms = period_ms,
            first_tick = first,
            "game tick started"
        );
        loop {
            let due = tokio::select! {
                _ = stop.cancelled() => break,
                due = timer.tick() => due,
            };
            let elapsed_periods = (due.saturating_duration_since(first_due).as_millis() as u64
                + period_ms / 2)
                / period_ms;
            self.tick(first + elapsed_periods, period_ms).await;
        }
        tracing::info!("game tick stopped");
    }

    async fn tick(&self, tick_number: u64, period_ms: u64) {
        let leader = self.presence.is_tick_leader();
        metrics::gauge!(telemetry::TICK_LEADER).set(if leader { 1.0 } else { 0.0 });
        if !leader {
            return;
        }
        let due_at = OffsetDateTime::UNIX_EPOCH
            + Duration::from_millis(tick_number.saturating_mul(period_ms));
        let timestamp = format_timestamp(due_at);
        let envelope = Envelope::new(
            EventType::GameTick,
            GameTickData {
                tick_number,
                timestamp: timestamp.clone(),
                active_players: self.presence.roster().count(),
            },
        )
        .with_sequence(tick_number);
        let envelope = Envelope {
            timestamp,
            ..envelope
        };
        match self.publisher.publish(Subject::GameTick, &envelope).await {
            Ok(()) => metrics::counter!(telemetry::TICKS).increment(1),
            Err(_) => metrics::counter!(telemetry::TICKS_FAILED).increment(1),
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
