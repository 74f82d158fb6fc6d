//! Receives this world's events from NATS, checks them, numbers them and hands each to the
//! ConnectionManager with its audience: room members, sub-zone members, everyone, or one
//! whisper target — never the actor.
//!
//! Subscriptions ([`Feed`]): one per room of the world (`*.*.{room}`, so a room's `events.`
//! and `chat.` subjects share one subscription and keep their publish order), one each for
//! local chat, whispers, global, system and the tick. Nothing else: other traffic on a
//! shared NATS is never even received. One task reads them all, so every recipient on this
//! node sees each stream's events in the same order with the same numbers.
//!
//! Anyone who can publish on NATS can publish here, so every event is checked before it
//! reaches a socket ([`natsmud_protocol::ingress`]). A refused event is counted by reason
//! and logged at most once in a while.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{SelectAll, Stream, StreamExt};
use natsmud_protocol::envelope::splice_sequence;
use natsmud_protocol::ingress::{Refusal, Route, check};
use natsmud_protocol::{Feed, FeedKind, Subject, SubjectPrefix};
use tokio_util::sync::CancellationToken;

use super::connection::Frame;
use super::connection_manager::ConnectionManager;
use crate::telemetry;

/// How long startup waits for a first NATS connection before serving degraded.
const STARTUP_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// At most one log line per this long about refused events (with a count of the others).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

type FeedStream = Pin<Box<dyn Stream<Item = (FeedKind, async_nats::Message)> + Send>>;

/// Which ticks to deliver: each tick number once, and only ticks near this node's clock, so
/// that neither two ticking nodes nor a forged tick with a huge number can make players
/// see a tick twice or stop seeing them.
#[derive(Debug)]
pub struct TickFilter {
    /// The world's tick interval, when this node knows it (it ticks itself).
    interval_ms: Option<u64>,
    last_tick: u64,
    last_due_ms: i128,
}

/// How far a tick's scheduled time may be from this node's clock when the interval is not
/// known here.
const TICK_WINDOW_UNKNOWN_INTERVAL_MS: i128 = 60_000;
/// Clock difference between nodes tolerated on top of the interval-based window.
const TICK_CLOCK_SKEW_MS: i128 = 2_000;

impl TickFilter {
    pub fn new(interval: Option<Duration>) -> Self {
        Self {
            interval_ms: interval.map(|i| (i.as_millis() as u64).max(1)),
            last_tick: 0,
            last_due_ms: i128::MIN,
        }
    }

    /// Whether to deliver tick `tick` scheduled at `due_ms` (Unix ms) when the clock says
    /// `now_ms`; records it when so.
    pub fn accept(&mut self, tick: u64, due_ms: i128, now_ms: i128) -> bool {
        let fresh = match self.interval_ms {
            Some(interval) => {
                let window = 3 * i128::from(interval) + TICK_CLOCK_SKEW_MS;
                i128::from(tick) * i128::from(interval) == due_ms
                    && (due_ms - now_ms).abs() <= window
                    && tick > self.last_tick
            }
            None => {
                (due_ms - now_ms).abs() <= TICK_WINDOW_UNKNOWN_INTERVAL_MS
                    && due_ms > self.last_due_ms
            }
        };
        if fresh {
            self.last_tick = tick;
            self.last_due_ms = due_ms;
        }
        fresh
    }
}

/// A warning that is logged at most once per `every`, with how many were held back.
#[derive(Debug)]
pub struct Throttled {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttled {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

pub struct NatsMessageHandler {
    prefix: SubjectPrefix,
    manager: Arc<ConnectionManager>,
    /// Largest event accepted, in bytes: the client frame limit.
    max_event_bytes: usize,
    /// Numbering of the sub-zone streams (only sub-zones of this world get an entry).
    sub_zone_sequences: HashMap<String, u64>,
    global_sequence: u64,
    system_sequence: u64,
    ticks: TickFilter,
    refusals_log: Throttled,
}

impl NatsMessageHandler {
    pub fn new(
        prefix: SubjectPrefix,
        manager: Arc<ConnectionManager>,
        max_event_bytes: usize,
        tick_interval: Option<Duration>,
    ) -> Self {
        Self {
            prefix,
            manager,
            max_event_bytes,
            sub_zone_sequences: HashMap::new(),
            global_sequence: 0,
            system_sequence: 0,
            ticks: TickFilter::new(tick_interval),
            refusals_log: Throttled::new(REFUSAL_LOG_EVERY),
        }
    }

    /// Subscribes to every feed of the world, then signals `ready` once NATS has registered
    /// the subscriptions (or at once if NATS is not reachable yet: the client subscribes
    /// when it connects).
    pub async fn run(
        mut self,
        client: async_nats::Client,
        ready: tokio::sync::oneshot::Sender<()>,
        shutdown: CancellationToken,
    ) {
        let mut feeds: SelectAll<FeedStream> = SelectAll::new();
        let rooms: Vec<_> = self.manager.room_ids().cloned().collect();
        let mut wanted: Vec<Feed<'_>> = rooms.iter().map(Feed::Room).collect();
        wanted.extend([
            Feed::SubZones,
            Feed::Whispers,
            Feed::Global,
            Feed::System,
            Feed::Tick,
        ]);
        for feed in &wanted {
            let subject = feed.subscription(&self.prefix);
            match client.subscribe(subject.clone()).await {
                Ok(subscriber) => {
                    let kind = feed.kind();
                    feeds.push(Box::pin(subscriber.map(move |message| (kind, message))));
                }
                Err(error) => {
                    tracing::error!(%error, %subject, "cannot subscribe to NATS; no events will be delivered");
                    let _ = ready.send(());
                    return;
                }
            }
        }
        // The client connects in the background; give it a moment so that a server whose
        // NATS is up starts healthy, with its subscriptions registered before any player.
        let deadline = tokio::time::Instant::now() + STARTUP_CONNECT_WAIT;
        while client.connection_state() != async_nats::connection::State::Connected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if client.connection_state() == async_nats::connection::State::Connected {
            let _ = client.flush().await;
        }
        let _ = ready.send(());
        tracing::info!(subscriptions = wanted.len(), "listening for events");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                message = feeds.next() => match message {
                    Some((kind, message)) => self.handle(kind, message.subject.as_str(), &message.payload),
                    None => break,
                },
            }
        }
    }

    /// Routes one event that arrived on a feed of kind `kind`.
    pub fn handle(&mut self, kind: FeedKind, subject: &str, payload: &Bytes) {
        let Some(parsed) = Subject::parse(&self.prefix, subject) else {
            return;
        };
        if !kind.carries(&parsed) {
            return;
        }
        metrics::counter!(telemetry::EVENTS_RECEIVED).increment(1);
        let since = Instant::now();
        let delivered = match check(parsed, payload, self.max_event_bytes)
            .and_then(|route| self.deliver(route, payload, since))
        {
            Ok(delivered) => delivered,
            Err(refusal) => {
                self.refuse(refusal, subject);
                return;
            }
        };
        metrics::counter!(telemetry::EVENTS_DELIVERED).increment(delivered as u64);
    }

    fn deliver(&mut self, route: Route, payload: &[u8], since: Instant) -> Result<usize, Refusal> {
        let numbered = |sequence: u64| -> Result<Frame, Refusal> {
            splice_sequence(payload, sequence)
                .and_then(|bytes| Frame::try_from(bytes).ok())
                .ok_or(Refusal::Malformed)
        };
        match route {
            Route::Room { room, actor } => self
                .manager
                .deliver_room(&room, Some(&actor), payload, since)
                .ok_or(Refusal::UnknownPlace),
            Route::SubZone { sub_zone, actor } => {
                if !self.manager.has_sub_zone(&sub_zone) {
                    return Err(Refusal::UnknownPlace);
                }
                let sequence = self.sub_zone_sequences.entry(sub_zone.clone()).or_default();
                *sequence += 1;
                let frame = numbered(*sequence)?;
                self.manager
                    .deliver_sub_zone(&sub_zone, Some(&actor), &frame, since)
                    .ok_or(Refusal::UnknownPlace)
            }
            Route::Whisper { target, sender } => Ok(self
                .manager
                .deliver_whisper(&target, Some(sender), payload, since)
                .unwrap_or(0)),
            Route::Global { actor } => {
                self.global_sequence += 1;
                let frame = numbered(self.global_sequence)?;
                Ok(self.manager.deliver_all(actor.as_deref(), &frame, since))
            }
            Route::System => {
                self.system_sequence += 1;
                let frame = numbered(self.system_sequence)?;
                Ok(self.manager.deliver_all(None, &frame, since))
            }
            Route::Tick {
                frame,
                tick,
                due_ms,
            } => {
                if !self.ticks.accept(tick, due_ms, unix_millis()) {
                    return Err(Refusal::StaleTick);
                }
                let frame = Frame::try_from(frame).map_err(|_| Refusal::Malformed)?;
                Ok(self.manager.deliver_all(None, &frame, since))
            }
        }
    }

    fn refuse(&mut self, refusal: Refusal, subject: &str) {
        metrics::counter!(telemetry::EVENTS_REJECTED, "reason" => refusal.as_str()).increment(1);
        if let Some(held_back) = self.refusals_log.allow(Instant::now()) {
            tracing::warn!(
                %subject,
                reason = refusal.as_str(),
                refused_since_last_line = held_back,
                "refused an event from NATS"
            );
        }
    }
}

fn unix_millis() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_near_the_clock_are_delivered_once() {
        let mut ticks = TickFilter::new(Some(Duration::from_millis(1000)));
        let now = 1_000_000_500;
        assert!(ticks.accept(1_000_000, 1_000_000_000, now));
        assert!(
            !ticks.accept(1_000_000, 1_000_000_000, now),
            "a second publisher"
        );
        // A forged far-future tick is refused and does not stop the clock.
        assert!(!ticks.accept(1_000_000_000_000, 1_000_000_000_000_000, now));
        assert!(
            !ticks.accept(1_000_100, 1_000_000_000, now),
            "number and time disagree"
        );
        assert!(ticks.accept(1_000_001, 1_000_001_000, now + 1000));
        let mut unknown = TickFilter::new(None);
        assert!(unknown.accept(5, 1_000_000_000, now));
        assert!(!unknown.accept(6, 1_000_000_000, now));
        assert!(!unknown.accept(7, 2_000_000_000, now));
        assert!(unknown.accept(8, 1_000_010_000, now));
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_while() {
        let mut log = Throttled::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(log.allow(start), Some(0));
        for _ in 0..20_000 {
            assert_eq!(log.allow(start + Duration::from_secs(1)), None);
        }
        assert_eq!(log.allow(start + Duration::from_secs(11)), Some(20_000));
    }
}
