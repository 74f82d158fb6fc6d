//! Resuming: a client that reconnects with the position of the last event it got
//! (`?since=`, or SSE's `Last-Event-ID`) is sent exactly the events it would have received
//! meanwhile, read back from the world's event stream, and then live ones.
//!
//! The new connection is registered first, so live events already queue for it; then the
//! stream is read from the position up to where it stood when the read began; the live
//! events that reading covered are dropped from the queue ([`super::Outbound`]). Nothing
//! is missed at the seam and nothing comes twice. While a player is link-dead nobody moves
//! it, so what it would have received is its room's events and speech, its sub-zone's
//! local chat, global chat, system notices and whispers to it — not what it caused itself.

use std::time::Instant;

use natsmud_protocol::envelope::splice_sequence;
use natsmud_protocol::ingress::{Route, check};
use natsmud_protocol::position::splice_position;
use natsmud_protocol::{PlayerId, Position, RoomId, SubZoneId, Subject, SubjectPrefix};

use super::connection::{Frame, Queued};
use super::stream::{EventStream, ReadBack, Start};
use crate::telemetry;

/// Why missed events could not be recovered (the `reason` of `resumed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecovered {
    /// The position is older than anything the stream still holds.
    WindowExceeded,
    /// The stream was created again since (its events are gone).
    EpochChanged,
    /// More missed events than the server sends (`--resume-max-missed`).
    TooMany,
    /// The player had left the game (quit, or the grace period ended): it missed its own
    /// departure and everything after.
    LeftTheGame,
    /// Not a position this server gave out.
    InvalidPosition,
    /// The event stream could not be read (NATS away).
    Unavailable,
}

impl NotRecovered {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WindowExceeded => "window_exceeded",
            Self::EpochChanged => "epoch_changed",
            Self::TooMany => "too_many",
            Self::LeftTheGame => "left_the_game",
            Self::InvalidPosition => "invalid_position",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What a client asked to resume from.
#[derive(Debug, Clone)]
pub enum ResumeFrom {
    Position(Position),
    /// Something that is not a position.
    Malformed,
}

impl ResumeFrom {
    pub fn parse(value: &str) -> Self {
        Position::parse(value).map_or(Self::Malformed, Self::Position)
    }
}

/// The player a resume is for, and where it is.
pub struct View<'a> {
    pub player: &'a PlayerId,
    pub room: &'a RoomId,
    pub sub_zone: &'a SubZoneId,
}

/// Missed events, as frames, and the last stream sequence the reading covered.
#[derive(Debug)]
pub struct Missed {
    pub frames: Vec<Queued>,
    pub covered_through: u64,
}

/// Reads back what `view` missed after `since`.
pub async fn read_missed(
    stream: &EventStream,
    prefix: &SubjectPrefix,
    max_event_bytes: usize,
    max_missed: u64,
    since: &Position,
    view: &View<'_>,
) -> Result<Missed, NotRecovered> {
    let started = Instant::now();
    let bounds = stream.ensure().await.map_err(|error| {
        tracing::warn!(%error, "cannot read the event stream to resume");
        NotRecovered::Unavailable
    })?;
    if since.epoch != *bounds.epoch {
        return Err(NotRecovered::EpochChanged);
    }
    if since.offset > bounds.last {
        return Err(NotRecovered::InvalidPosition);
    }
    if since.offset + 1 < bounds.first {
        return Err(NotRecovered::WindowExceeded);
    }
    let filters = prefix.view_filters(view.room, view.sub_zone, view.player);
    let read = stream
        .read(Start::After(since.offset), filters, max_missed)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "cannot read the event stream to resume");
            NotRecovered::Unavailable
        })?;
    let (messages, end) = match read {
        ReadBack::Events { messages, end } => (messages, end),
        ReadBack::TooMany(_) => return Err(NotRecovered::TooMany),
    };
    let now = Instant::now();
    let frames = messages
        .iter()
        .filter_map(|message| {
            let offset = message.info().ok()?.stream_sequence;
            let subject = Subject::parse(prefix, message.subject.as_str())?;
            let route = check(subject, &message.payload, max_event_bytes).ok()?;
            if !in_view(&route, view) {
                return None;
            }
            // Missed events belong to before this connection: outside its numbering.
            let positioned = splice_position(&message.payload, &bounds.epoch, offset)?;
            let frame = Frame::try_from(splice_sequence(&positioned, 0)?).ok()?;
            Some(Queued {
                frame,
                since: now,
                gate: None,
            })
        })
        .collect::<Vec<_>>();
    metrics::histogram!(telemetry::RESUME_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::counter!(telemetry::RESUMED_EVENTS).increment(frames.len() as u64);
    Ok(Missed {
        frames,
        covered_through: end,
    })
}

/// Whether the player of `view` would have received an event routed so, had it been
/// connected: the same rule as live delivery, never its own events.
fn in_view(route: &Route, view: &View<'_>) -> bool {
    let me = view.player.as_str();
    match route {
        Route::Room { room, actor, .. } => room == view.room.as_str() && actor != me,
        Route::SubZone { sub_zone, actor } => sub_zone == view.sub_zone.as_str() && actor != me,
        Route::Whisper { target, .. } => target == me,
        Route::Global { actor } => actor.as_deref() != Some(me),
        Route::System => true,
        Route::Tick { .. } => false,
    }
}
