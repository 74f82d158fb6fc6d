//! Receives every natsmud subject of this world from NATS and hands each event to the
//! ConnectionManager with its audience: room members, sub-zone members, everyone, or one
//! whisper target — never the actor.
//!
//! One subscription (`{prefix}.>`) read by one task keeps NATS's order: events of one room
//! travel on `events.` and `chat.` subjects alike, and two subscriptions merged by a client
//! could interleave them. The same task numbers each stream (a room, a sub-zone, global,
//! system, one player's whispers) as events arrive, so every recipient on this node sees
//! the same numbers in the same order. The number is spliced into the published bytes once
//! per event, not once per recipient.
//!
//! Input is (subject, payload, position): today from core NATS with no position; a
//! JetStream ordered consumer can later supply its stream sequence without changes
//! outside this file.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long startup waits for a first NATS connection before serving degraded.
const STARTUP_CONNECT_WAIT: Duration = Duration::from_secs(2);

use bytes::Bytes;
use futures::StreamExt;
use natsmud_protocol::envelope::EnvelopeView;
use natsmud_protocol::{PlayerId, Subject, SubjectPrefix};
use tokio_util::sync::CancellationToken;

use super::connection_manager::{ConnectionManager, Frame};
use crate::telemetry;
use crate::world::World;

pub struct NatsMessageHandler {
    prefix: SubjectPrefix,
    manager: Arc<ConnectionManager>,
    world: Arc<World>,
    /// Last number given out per stream; key: room id for room events, else the subject.
    sequences: HashMap<String, u64>,
    /// The newest tick delivered. Tick numbers come from the wall clock, so when more than
    /// one node publishes ticks each number is delivered once.
    last_tick: u64,
}

impl NatsMessageHandler {
    pub fn new(prefix: SubjectPrefix, manager: Arc<ConnectionManager>, world: Arc<World>) -> Self {
        Self {
            prefix,
            manager,
            world,
            sequences: HashMap::new(),
            last_tick: 0,
        }
    }

    /// Subscribes, then signals `ready` once NATS has registered the subscription (or at
    /// once if NATS is not reachable yet: the client subscribes when it connects).
    pub async fn run(
        mut self,
        client: async_nats::Client,
        ready: tokio::sync::oneshot::Sender<()>,
        shutdown: CancellationToken,
    ) {
        let wildcard = self.prefix.wildcard();
        let mut subscription = match client.subscribe(wildcard.clone()).await {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::error!(%error, subject = %wildcard, "cannot subscribe to NATS; no events will be delivered");
                let _ = ready.send(());
                return;
            }
        };
        // The client connects in the background; give it a moment so that a server whose
        // NATS is up starts healthy, with its subscription registered before any player.
        let deadline = tokio::time::Instant::now() + STARTUP_CONNECT_WAIT;
        while client.connection_state() != async_nats::connection::State::Connected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if client.connection_state() == async_nats::connection::State::Connected {
            let _ = client.flush().await;
            let version = client.server_info().version;
            tracing::info!(%version, "NATS server");
            if !version_at_least(&version, 2, 10) {
                tracing::warn!(%version, "this NATS server is older than 2.10: core pub/sub works, but natsmud's coming JetStream features (multi-node presence, replay) will need 2.10 or newer");
            }
        }
        let _ = ready.send(());
        tracing::info!(subject = %wildcard, "listening for events");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                message = subscription.next() => match message {
                    Some(message) => self.handle(message.subject.as_str(), message.payload, None),
                    None => break,
                },
            }
        }
        let _ = subscription.unsubscribe().await;
    }

    /// Routes one event. `position` is a durable stream position when there is one.
    pub fn handle(&mut self, subject: &str, payload: Bytes, position: Option<u64>) {
        let Some(parsed) = Subject::parse(&self.prefix, subject) else {
            return;
        };
        metrics::counter!(telemetry::EVENTS_RECEIVED).increment(1);
        let view: EnvelopeView<'_> = match serde_json::from_slice(&payload) {
            Ok(view) => view,
            Err(error) => {
                metrics::counter!(telemetry::EVENTS_MALFORMED).increment(1);
                tracing::warn!(%subject, %error, "dropping a malformed event from NATS");
                return;
            }
        };
        let frame = match self.numbered_frame(parsed, &view, &payload, position) {
            Some(frame) => frame,
            None => {
                metrics::counter!(telemetry::EVENTS_MALFORMED).increment(1);
                tracing::warn!(%subject, "dropping an event that is not a JSON object");
                return;
            }
        };
        if let (Subject::GameTick, Some(tick)) = (parsed, view.sequence_number) {
            if tick <= self.last_tick {
                return;
            }
            self.last_tick = tick;
        }
        let actor = view.player_id.as_deref();
        let since = Instant::now();
        let delivered = match parsed {
            Subject::PlayerEntered(room)
            | Subject::PlayerLeft(room)
            | Subject::Say(room)
            | Subject::Emote(room)
            | Subject::Pose(room) => self.manager.deliver_room(room, actor, &frame, since),
            Subject::Local(sub_zone) => self.manager.deliver_rooms(
                self.world.rooms_in_sub_zone(sub_zone),
                actor,
                &frame,
                since,
            ),
            Subject::GameTick | Subject::Global | Subject::System => {
                self.manager.deliver_all(actor, &frame, since)
            }
            Subject::Whisper(target) => {
                let sender = actor.and_then(|a| PlayerId::parse(a).ok());
                self.manager.deliver_whisper(target, sender, &frame, since)
            }
        };
        metrics::counter!(telemetry::EVENTS_DELIVERED).increment(delivered as u64);
    }

    fn numbered_frame(
        &mut self,
        subject: Subject<'_>,
        view: &EnvelopeView<'_>,
        payload: &Bytes,
        position: Option<u64>,
    ) -> Option<Frame> {
        // The tick's number is its tick number, chosen by the tick's publisher.
        if let (Subject::GameTick, Some(_)) = (subject, view.sequence_number) {
            return Frame::try_from(payload.clone()).ok();
        }
        let sequence = match position {
            Some(position) => position,
            None => {
                let key = stream_key(&subject);
                match self.sequences.get_mut(key.as_ref()) {
                    Some(last) => {
                        *last += 1;
                        *last
                    }
                    None => {
                        self.sequences.insert(key.into_owned(), 1);
                        1
                    }
                }
            }
        };
        splice_sequence(payload, view.sequence_number.is_some(), sequence)
    }
}

/// True when a `major.minor.patch` version string is at least `major.minor`.
fn version_at_least(version: &str, major: u64, minor: u64) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

/// Which numbering an event belongs to: its room for room events, else its subject.
fn stream_key<'a>(subject: &Subject<'a>) -> Cow<'a, str> {
    match subject.room() {
        Some(room) => Cow::Borrowed(room),
        None => Cow::Owned(subject.render(&SubjectPrefix::default())),
    }
}

/// `{"sequence_number":N,` + the envelope without its opening brace: one copy per event.
/// An envelope that already carries a number (published by someone else) is rewritten.
fn splice_sequence(payload: &Bytes, has_sequence: bool, sequence: u64) -> Option<Frame> {
    if has_sequence {
        let mut value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        value
            .as_object_mut()?
            .insert("sequence_number".to_owned(), sequence.into());
        return Frame::try_from(serde_json::to_vec(&value).ok()?).ok();
    }
    let body = payload.strip_prefix(b"{")?;
    let mut out = Vec::with_capacity(payload.len() + 32);
    out.extend_from_slice(b"{\"sequence_number\":");
    out.extend_from_slice(sequence.to_string().as_bytes());
    if body.trim_ascii_start().first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(body);
    Frame::try_from(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_server_versions() {
        assert!(version_at_least("2.15.1", 2, 10));
        assert!(version_at_least("v2.10.0", 2, 10));
        assert!(!version_at_least("2.9.10", 2, 10));
    }

    #[test]
    fn splices_the_number_in_front() {
        let payload = Bytes::from_static(br#"{"event_type":"x","data":{}}"#);
        let frame = splice_sequence(&payload, false, 42).map(|f| f.to_string());
        assert_eq!(
            frame.as_deref(),
            Some(r#"{"sequence_number":42,"event_type":"x","data":{}}"#)
        );
        let replaced = splice_sequence(
            &Bytes::from_static(br#"{"sequence_number":1,"a":2}"#),
            true,
            7,
        )
        .map(|f| f.to_string());
        let value: serde_json::Value =
            serde_json::from_str(replaced.as_deref().unwrap_or("null")).unwrap_or_default();
        assert_eq!(value["sequence_number"], 7);
        assert_eq!(splice_sequence(&Bytes::from_static(b"[1]"), false, 1), None);
    }
}
