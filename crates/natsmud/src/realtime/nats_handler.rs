//! Receives this world's events from NATS, checks them, numbers them and hands each to the
//! ConnectionManager with its audience: room members, sub-zone members, everyone, or one
//! whisper target — never the actor.
//!
//! What the node subscribes to is [`super::interest`]'s business: by default the rooms and
//! sub-zones where it has players and what every node needs, each a subscription of its
//! own; or everything. Either way only the world's own subjects, so other traffic on a
//! shared NATS never even reaches the node. One task reads every subscription, so every
//! recipient on this node sees each stream's events in the same order with the same
//! numbers. A message is kept only from the subscription whose interest carries it, so a
//! subject two patterns match is delivered once.
//!
//! NATS keeps a publisher's order within one subscription. Where one stream's events come
//! through two (listening to everything without a prefix: `events.>` and `chat.>`, and a
//! room's events travel in both), a client can take them in another order than NATS sent
//! them. NATS sends one connection's messages in order, and async-nats hands them to the
//! subscriptions one at a time in that order. So the task takes whatever the
//! subscriptions hold, and again until a pass finds them all empty — by then everything
//! sent before anything it took has been taken too — and then puts each publisher's
//! messages back in the order of their [`ORDER_HEADER`] numbers ([`restore_publish_order`]).
//!
//! Anyone who can publish on NATS can publish here, so every event is checked before it
//! reaches a socket ([`natsmud_protocol::ingress`]). A refused event is counted by reason
//! and logged at most once in a while.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::stream::{SelectAll, StreamExt};
use natsmud_protocol::envelope::splice_sequence;
use natsmud_protocol::ingress::{Refusal, Route, check};
use natsmud_protocol::position::splice_position;
use natsmud_protocol::{Interest, ORDER_HEADER, Subject, SubjectPrefix, parse_order};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::{CloseReason, Frame};
use super::connection_manager::ConnectionManager;
use super::interest::{Delivery, Feed, Interests};
use super::stream::{EventStream, ReadBack, Start};
use crate::presence::{PRESENCE_HEADER, Presence};
use crate::telemetry;

/// How long startup waits for a first NATS connection before serving degraded.
const STARTUP_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// How long catching up after a reconnect waits for the event stream to answer (a NATS
/// cluster electing the stream's leader), and how often it asks.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(15);
const CATCH_UP_RETRY: Duration = Duration::from_millis(250);

/// At most one log line per this long about refused events (with a count of the others).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Puts each publisher's messages of `batch` back in the order its [`ORDER_HEADER`] numbers
/// say, each into the places its messages took, so other publishers' messages keep theirs.
/// Messages without the header (other publishers than natsmud) stay where they are.
pub fn restore_publish_order<T: Clone>(
    batch: &mut [T],
    message: impl Fn(&T) -> &async_nats::Message,
) {
    if batch.len() < 2 {
        return;
    }
    let stamp = |item: &T| -> Option<(String, u64)> {
        let value = message(item).headers.as_ref()?.get(ORDER_HEADER)?;
        parse_order(value.as_str()).map(|(origin, n)| (origin.to_owned(), n))
    };
    let mut by_origin: HashMap<String, Vec<(usize, u64)>> = HashMap::new();
    for (at, item) in batch.iter().enumerate() {
        if let Some((origin, n)) = stamp(item) {
            by_origin.entry(origin).or_default().push((at, n));
        }
    }
    for places in by_origin.values() {
        if places.windows(2).all(|pair| pair[0].1 < pair[1].1) {
            continue;
        }
        let mut in_order: Vec<(usize, u64)> = places.clone();
        in_order.sort_by_key(|&(_, n)| n);
        let items: Vec<T> = in_order.iter().map(|&(at, _)| batch[at].clone()).collect();
        for (&(slot, _), item) in places.iter().zip(items) {
            batch[slot] = item;
        }
    }
}

/// Which ticks to deliver: each tick number once, in increasing order, and only ticks on
/// this node's tick grid and not ahead of its clock, so that neither two ticking nodes nor
/// a forged tick can make players see a tick twice, see ticks go backwards, or stop seeing
/// them for long. Every node of a world must use the same tick interval; a node whose
/// interval is 0 (a world without ticks) delivers none.
#[derive(Debug)]
pub struct TickFilter {
    interval_ms: Option<u64>,
    last_tick: u64,
}

/// Clock difference between nodes tolerated: a tick may be this far ahead of the clock.
const TICK_CLOCK_SKEW_MS: i128 = 2_000;
/// How many intervals late a tick may still be delivered.
const TICK_LATE_INTERVALS: i128 = 3;

impl TickFilter {
    pub fn new(interval: Option<Duration>) -> Self {
        Self {
            interval_ms: interval.map(|i| (i.as_millis() as u64).max(1)),
            last_tick: 0,
        }
    }

    /// Whether to deliver tick `tick` scheduled at `due_ms` (Unix ms) when the clock says
    /// `now_ms`; records it when so. Real ticks are never early: one from the future (up to
    /// the clock skew) is refused, so a forged one can hold back real ticks for at most the
    /// skew.
    pub fn accept(&mut self, tick: u64, due_ms: i128, now_ms: i128) -> bool {
        let Some(interval) = self.interval_ms else {
            return false;
        };
        let interval = i128::from(interval);
        let fresh = i128::from(tick) * interval == due_ms
            && due_ms <= now_ms + TICK_CLOCK_SKEW_MS
            && due_ms >= now_ms - TICK_LATE_INTERVALS * interval - TICK_CLOCK_SKEW_MS
            && tick > self.last_tick;
        if fresh {
            self.last_tick = tick;
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
    stream: Arc<EventStream>,
    /// The stream's epoch, for the positions of the events delivered.
    epoch: Option<Arc<str>>,
    /// The last stream sequence delivered (shared: a greeting names it as where its
    /// connection starts).
    delivered_through: Arc<AtomicU64>,
    /// Events up to here were delivered by catching up; the same events arriving live
    /// afterwards are dropped.
    skip_through: u64,
    /// Most events read back when catching up after a reconnect.
    catch_up_max: u64,
    manager: Arc<ConnectionManager>,
    /// The world's roster: presence events update it as they are delivered.
    presence: Presence,
    /// Largest event accepted, in bytes: the client frame limit.
    max_event_bytes: usize,
    /// Numbering of the sub-zone streams (only sub-zones of this world get an entry).
    sub_zone_sequences: HashMap<String, u64>,
    global_sequence: u64,
    system_sequence: u64,
    ticks: TickFilter,
    refusals_log: Throttled,
    /// The last stream position delivered of each place (see [`Delivered`]), kept while
    /// `overlapping` is above zero (`Interests::overlapping`).
    delivered: Delivered,
    overlapping: Arc<AtomicUsize>,
}

/// The last stream position delivered of each room (by its index), each sub-zone and the
/// rest of the world. While the node changes what it listens to, two of its
/// subscriptions bring a place's events for a moment, each in stream order: an event at
/// or before the place's last position is one delivered already.
#[derive(Default)]
struct Delivered {
    rooms: Vec<u64>,
    sub_zones: HashMap<String, u64>,
    world: u64,
    noted: bool,
}

impl Delivered {
    /// Whether `offset` of `subject`'s place was delivered already; notes it if not.
    fn again(&mut self, manager: &ConnectionManager, subject: &Subject<'_>, offset: u64) -> bool {
        let through = if let Some(room) = subject.room() {
            // A room of another world is refused anyway.
            let Some(index) = manager.room_index(room) else {
                return false;
            };
            if self.rooms.len() <= index {
                self.rooms.resize(index + 1, 0);
            }
            &mut self.rooms[index]
        } else if let Subject::Local(sub_zone) = *subject {
            if !manager.has_sub_zone(sub_zone) {
                return false;
            }
            if !self.sub_zones.contains_key(sub_zone) {
                self.sub_zones.insert(sub_zone.to_owned(), 0);
            }
            match self.sub_zones.get_mut(sub_zone) {
                Some(through) => through,
                None => return false,
            }
        } else {
            &mut self.world
        };
        if offset <= *through {
            return true;
        }
        *through = offset;
        self.noted = true;
        false
    }

    /// The stream started over.
    fn forget(&mut self) {
        *self = Self::default();
    }
}

impl NatsMessageHandler {
    pub fn new(
        prefix: SubjectPrefix,
        stream: Arc<EventStream>,
        manager: Arc<ConnectionManager>,
        presence: Presence,
        max_event_bytes: usize,
        tick_interval: Option<Duration>,
        catch_up_max: u64,
    ) -> Self {
        Self {
            prefix,
            epoch: stream.epoch(),
            stream,
            delivered_through: Arc::new(AtomicU64::new(0)),
            skip_through: 0,
            catch_up_max,
            manager,
            presence,
            max_event_bytes,
            sub_zone_sequences: HashMap::new(),
            global_sequence: 0,
            system_sequence: 0,
            ticks: TickFilter::new(tick_interval),
            refusals_log: Throttled::new(REFUSAL_LOG_EVERY),
            delivered: Delivered::default(),
            overlapping: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Subscribes to what the node always listens to, signals `ready` once NATS has
    /// registered it (or at once if NATS is not reachable yet: the client subscribes when
    /// it connects), then reads every subscription `interests` opens, from `feeds`.
    /// The last stream sequence this node delivered, as it goes.
    pub fn delivered_through(&self) -> Arc<AtomicU64> {
        self.delivered_through.clone()
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        mut self,
        client: async_nats::Client,
        interests: Arc<Interests>,
        mut feeds: mpsc::UnboundedReceiver<Feed>,
        mut catch_ups: mpsc::UnboundedReceiver<crate::nats::CatchUp>,
        ready: tokio::sync::oneshot::Sender<()>,
        shutdown: CancellationToken,
        fatal: Arc<crate::nats::Fatal>,
    ) {
        self.overlapping = interests.overlapping();
        if let Err(error) = interests.start().await {
            let _ = ready.send(());
            fatal.raise(format!("cannot subscribe to NATS: {error}"));
            return;
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
            match self.stream.ensure().await {
                Ok(bounds) => {
                    self.epoch = Some(bounds.epoch);
                    self.delivered_through.store(bounds.last, Ordering::Release);
                }
                Err(error) => tracing::warn!(%error, "cannot reach the event stream yet"),
            }
        }
        let _ = ready.send(());
        tracing::info!(
            prefix = %self.prefix.as_str(),
            subscriptions = interests.subscription_count(),
            "listening for events"
        );
        let mut live: SelectAll<Feed> = SelectAll::new();
        let mut batch: Vec<(Arc<Interest>, async_nats::Message)> = Vec::new();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                feed = feeds.recv() => match feed {
                    Some(feed) => {
                        live.push(feed);
                        continue;
                    }
                    None => return,
                },
                Some(catch_up) = catch_ups.recv() => {
                    self.catch_up(catch_up).await;
                    continue;
                }
                Some(first) = live.next(), if !live.is_empty() => first,
            };
            let mut ended = None;
            let mut replaced_ended = 0;
            let mut take = |delivery: Delivery| match delivery {
                Delivery::Message(interest, message) => batch.push((interest, message)),
                Delivery::Ended {
                    retired: true,
                    replaced,
                    ..
                } => replaced_ended += usize::from(replaced),
                Delivery::Ended { interest, .. } => ended = Some(interest),
            };
            take(first);
            // Everything the subscriptions hold, again until passes find them all empty
            // (see the module documentation; a second empty pass because a set of streams
            // may answer "nothing" early to let other tasks run). Outside tokio's task
            // budget: the budget would make a subscription look empty while it still holds
            // messages.
            tokio::task::unconstrained(async {
                let mut empty_passes = 0;
                while empty_passes < 2 {
                    let mut took = false;
                    while let Some(Some(delivery)) = live.next().now_or_never() {
                        take(delivery);
                        took = true;
                    }
                    empty_passes = if took { 0 } else { empty_passes + 1 };
                }
            })
            .await;
            if let Some(interest) = ended {
                // The server refused a subscription, or the client closed: events would
                // stop reaching this node's players without a word.
                fatal.raise(format!(
                    "a NATS subscription of this node ({interest:?}) ended; its events could no longer reach its players"
                ));
                return;
            }
            restore_publish_order(&mut batch, |(_, message)| message);
            // The stream's order is the world's: events taken from several subscriptions
            // go out in it, so positions only grow along every connection.
            batch.sort_by_key(|(_, message)| stream_sequence(message).unwrap_or(u64::MAX));
            self.follow_epoch();
            for (interest, message) in batch.drain(..) {
                self.handle(&interest, &message);
            }
            // Everything the replaced subscriptions brought is handled.
            if replaced_ended > 0 {
                self.overlapping.fetch_sub(replaced_ended, Ordering::AcqRel);
            }
            if self.delivered.noted && self.overlapping.load(Ordering::Acquire) == 0 {
                self.delivered.forget();
            }
        }
    }

    /// Takes up a new epoch of the stream (it was created again: sequences start over).
    fn follow_epoch(&mut self) {
        let current = self.stream.epoch();
        if current.is_some() && current != self.epoch {
            self.epoch = current;
            self.skip_through = 0;
            self.delivered.forget();
            self.delivered_through.store(0, Ordering::Release);
        }
    }

    /// Routes one event as the stream republished it, through the subscription of
    /// `interest`.
    pub fn handle(&mut self, interest: &Interest, message: &async_nats::Message) {
        let offset = stream_sequence(message);
        let Some(parsed) = Subject::parse_live(&self.prefix, message.subject.as_str()) else {
            return;
        };
        if offset.is_some_and(|offset| offset <= self.skip_through) {
            // Delivered already, by catching up.
            return;
        }
        if parsed
            .room()
            .is_some_and(|room| !self.manager.listens_to(room))
        {
            // Heard only because the node listens to the whole world.
            return;
        }
        self.route(interest, parsed, message, offset);
    }

    /// Catches this node's players up on what the stream stored while NATS was away, or
    /// closes their connections (4008 `events_lost`, so that they resume) when it cannot.
    async fn catch_up(&mut self, catch_up: crate::nats::CatchUp) {
        let from = self.delivered_through.load(Ordering::Acquire);
        let lost = |why: &str| {
            tracing::warn!(
                why,
                "NATS connected after a gap and this node cannot catch its players up; closing their connections"
            );
            self.manager.kick_all(CloseReason::EVENTS_LOST);
        };
        // In a NATS cluster the stream may be electing a new leader (seconds): wait for it
        // rather than close everyone. No live event flows meanwhile either.
        let deadline = Instant::now() + CATCH_UP_PATIENCE;
        let bounds = loop {
            match self.stream.ensure().await {
                Ok(bounds) => break bounds,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(CATCH_UP_RETRY).await;
                }
                Err(error) => return lost(&error.to_string()),
            }
        };
        if self.epoch.as_deref() != Some(&*bounds.epoch) {
            let had_epoch = self.epoch.is_some();
            self.epoch = Some(bounds.epoch.clone());
            self.skip_through = 0;
            self.delivered.forget();
            self.delivered_through.store(bounds.last, Ordering::Release);
            if had_epoch || self.manager.connected_count() > 0 {
                lost("the event stream was created again (its events are gone)");
            }
            return;
        }
        let started = Instant::now();
        let read = loop {
            match self
                .stream
                .read(Start::Since(catch_up.since), Vec::new(), self.catch_up_max)
                .await
            {
                Ok(read) => break read,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(CATCH_UP_RETRY).await;
                }
                Err(error) => return lost(&error.to_string()),
            }
        };
        let (messages, end) = match read {
            ReadBack::Events { messages, end } => (messages, end),
            ReadBack::TooMany(n) => return lost(&format!("{n} events to catch up on")),
        };
        if bounds.first > from + 1 && bounds.first_stored > catch_up.since {
            return lost("the events it missed are no longer in the stream");
        }
        let mut caught_up = 0;
        for message in &messages {
            let Some(offset) = message.info().ok().map(|info| info.stream_sequence) else {
                continue;
            };
            if offset <= from {
                continue;
            }
            let Some(parsed) = Subject::parse(&self.prefix, message.subject.as_str()) else {
                continue;
            };
            self.route(&Interest::Everything, parsed, message, Some(offset));
            caught_up += 1;
        }
        self.skip_through = end;
        metrics::counter!(telemetry::EVENTS_CAUGHT_UP).increment(caught_up);
        tracing::info!(
            caught_up,
            read = messages.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "NATS connected after a gap: caught this node's players up from the event stream"
        );
    }

    fn route(
        &mut self,
        interest: &Interest,
        parsed: Subject<'_>,
        message: &async_nats::Message,
        offset: Option<u64>,
    ) {
        let subject = message.subject.as_str();
        if !interest.carries(&parsed) {
            // Another subscription of this node brings it too (ids that collide).
            return;
        }
        let overlapping = self.overlapping.load(Ordering::Acquire) > 0;
        if overlapping
            && offset.is_some_and(|offset| self.delivered.again(&self.manager, &parsed, offset))
        {
            metrics::counter!(telemetry::EVENTS_HEARD_TWICE).increment(1);
            return;
        }
        if let Some(offset) = offset {
            self.delivered_through.fetch_max(offset, Ordering::AcqRel);
        }
        let presence_revision = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(PRESENCE_HEADER))
            .and_then(|value| value.as_str().parse::<u64>().ok());
        metrics::counter!(telemetry::EVENTS_RECEIVED).increment(1);
        let since = Instant::now();
        let payload = &message.payload;
        let positioned = match (&self.epoch, offset) {
            (Some(epoch), Some(offset)) => splice_position(payload, epoch, offset),
            _ => None,
        };
        let frame_payload = positioned.as_deref().unwrap_or(payload);
        let delivered = match check(parsed, payload, self.max_event_bytes)
            .and_then(|route| self.deliver(route, frame_payload, presence_revision, since))
        {
            Ok(delivered) => delivered,
            Err(refusal) => {
                self.refuse(refusal, subject);
                return;
            }
        };
        metrics::counter!(telemetry::EVENTS_DELIVERED).increment(delivered as u64);
    }

    fn deliver(
        &mut self,
        route: Route,
        payload: &[u8],
        presence_revision: Option<u64>,
        since: Instant,
    ) -> Result<usize, Refusal> {
        let numbered = |sequence: u64| -> Result<Frame, Refusal> {
            splice_sequence(payload, sequence)
                .and_then(|bytes| Frame::try_from(bytes).ok())
                .ok_or(Refusal::Malformed)
        };
        match route {
            Route::Room {
                room,
                actor,
                presence,
            } => {
                // The roster first, then the room: a player arriving in the room between
                // the two sees the newcomer listed and hears of it (listed twice at worst,
                // never missing).
                if let (Some((event, name)), Some(revision)) = (presence, presence_revision) {
                    self.note_presence(&actor, name, &room, event, revision);
                }
                self.manager
                    .deliver_room(&room, Some(&actor), payload, since)
                    .ok_or(Refusal::UnknownPlace)
            }
            Route::SubZone { sub_zone, actor } => {
                if !self.manager.has_sub_zone(&sub_zone) {
                    return Err(Refusal::UnknownPlace);
                }
                // A number is taken only once the frame is made: a refused event leaves no
                // gap that a client would read as a loss.
                let sequence = self.sub_zone_sequences.entry(sub_zone.clone()).or_default();
                let frame = numbered(*sequence + 1)?;
                *sequence += 1;
                self.manager
                    .deliver_sub_zone(&sub_zone, Some(&actor), &frame, since)
                    .ok_or(Refusal::UnknownPlace)
            }
            Route::Whisper { target, sender } => self
                .manager
                .deliver_whisper(&target, Some(sender), payload, since)
                .ok_or(Refusal::Malformed),
            Route::Global { actor } => {
                let frame = numbered(self.global_sequence + 1)?;
                self.global_sequence += 1;
                Ok(self.manager.deliver_all(actor.as_deref(), &frame, since))
            }
            Route::System => {
                let frame = numbered(self.system_sequence + 1)?;
                self.system_sequence += 1;
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

    /// A presence event, applied to the roster at the revision of the write it announces.
    fn note_presence(
        &self,
        player: &str,
        name: natsmud_protocol::PlayerName,
        room: &str,
        event: natsmud_protocol::EventType,
        revision: u64,
    ) {
        use natsmud_protocol::EventType;
        let Ok(player) = natsmud_protocol::PlayerId::parse(player) else {
            return;
        };
        let roster = self.presence.roster();
        match event {
            EventType::PlayerEntered | EventType::PlayerEnteredGame => {
                roster.put(
                    &player,
                    crate::presence::roster::Seen {
                        name,
                        room: Some(room.into()),
                        holder: None,
                        revision,
                    },
                );
            }
            EventType::PlayerLeft => roster.left_room(&player, room, revision),
            EventType::PlayerLeftGame => roster.remove(&player, revision),
            _ => {}
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

/// The sequence the world's stream stored a republished event under.
fn stream_sequence(message: &async_nats::Message) -> Option<u64> {
    message
        .headers
        .as_ref()?
        .get(async_nats::header::NATS_SEQUENCE)?
        .as_str()
        .parse()
        .ok()
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
    use bytes::Bytes;

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
        // A consistent tick from three intervals ahead is refused too: ticks are never early.
        assert!(!ticks.accept(1_000_003, 1_000_003_000, now));
        // One a little ahead (clock skew between nodes) is fine.
        assert!(ticks.accept(1_000_001, 1_000_001_000, now));
        // Late but not too late.
        assert!(ticks.accept(1_000_002, 1_000_002_000, now + 4_000));
        assert!(!ticks.accept(1_000_003, 1_000_003_000, now + 9_000));
        // Backwards: refused.
        assert!(!ticks.accept(1_000_001, 1_000_001_000, now + 1_000));
        // A world without ticks delivers none.
        assert!(!TickFilter::new(None).accept(5, 5_000, 5_000));
    }

    fn message(subject: &str, order: Option<&str>) -> async_nats::Message {
        let headers = order.map(|order| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(ORDER_HEADER, order);
            headers
        });
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: Bytes::new(),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn each_publishers_order_is_restored_in_its_own_places() {
        let mut batch = vec![
            message("chat.say.r", Some("a.2")),
            message("chat.say.q", Some("b.7")),
            message("events.x", None),
            message("events.player_left.r", Some("a.1")),
            message("events.player_left.q", Some("b.6")),
            message("chat.say.r", Some("a.3")),
        ];
        restore_publish_order(&mut batch, |message| message);
        let subjects: Vec<&str> = batch.iter().map(|m| m.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "events.player_left.r",
                "events.player_left.q",
                "events.x",
                "chat.say.r",
                "chat.say.q",
                "chat.say.r"
            ]
        );
        let orders: Vec<Option<String>> = batch
            .iter()
            .map(|m| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(ORDER_HEADER))
                    .map(|v| v.to_string())
            })
            .collect();
        assert_eq!(orders[0].as_deref(), Some("a.1"));
        assert_eq!(orders[3].as_deref(), Some("a.2"));
        assert_eq!(orders[5].as_deref(), Some("a.3"));
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
