//! The server → client frame (the envelope) and each event's payload.
//!
//! The publisher serialises an [`Envelope`] once; the same bytes go on NATS and, with the
//! node's `sequence_number` spliced in front, to every recipient's socket.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ids::{PlayerId, RoomId, SubZoneId, ZoneId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    GameState,
    RoomUpdate,
    CommandResponse,
    PlayerEntered,
    PlayerLeft,
    PlayerEnteredGame,
    PlayerLeftGame,
    ChatMessage,
    GameTick,
    Error,
    Pong,
    Resumed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GameState => "game_state",
            Self::RoomUpdate => "room_update",
            Self::CommandResponse => "command_response",
            Self::PlayerEntered => "player_entered",
            Self::PlayerLeft => "player_left",
            Self::PlayerEnteredGame => "player_entered_game",
            Self::PlayerLeftGame => "player_left_game",
            Self::ChatMessage => "chat_message",
            Self::GameTick => "game_tick",
            Self::Error => "error",
            Self::Pong => "pong",
            Self::Resumed => "resumed",
        }
    }
}

/// One frame. `sequence_number` is `None` on NATS for events whose number the receiving
/// node assigns (room, chat); the tick carries its tick number; direct replies carry the
/// connection's counter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<D> {
    /// First, so that every frame starts with `{"sequence_number":N` and a transport can
    /// read the number without parsing the frame (the node splices it there as well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<u64>,
    pub event_type: EventType,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<RoomId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player_id: Option<PlayerId>,
    pub data: D,
}

impl<D: Serialize> Envelope<D> {
    pub fn new(event_type: EventType, data: D) -> Self {
        Self {
            event_type,
            timestamp: now_timestamp(),
            sequence_number: None,
            room_id: None,
            player_id: None,
            data,
        }
    }

    pub fn in_room(mut self, room: RoomId) -> Self {
        self.room_id = Some(room);
        self
    }

    pub fn by_player(mut self, player: PlayerId) -> Self {
        self.player_id = Some(player);
        self
    }

    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence_number = Some(sequence);
        self
    }

    pub fn to_bytes(&self) -> bytes::Bytes {
        // Serialising plain structs of strings and numbers into a Vec cannot fail.
        bytes::Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// `{"sequence_number":N,` + the envelope without its opening brace: the number goes in
/// front of bytes serialised once (by the publisher), in one copy, without re-parsing them.
/// `None` when `payload` is not a JSON object.
pub fn splice_sequence(payload: &[u8], sequence: u64) -> Option<Vec<u8>> {
    let body = payload.trim_ascii_start().strip_prefix(b"{")?;
    let mut out = Vec::with_capacity(payload.len() + 32);
    out.extend_from_slice(b"{\"sequence_number\":");
    out.extend_from_slice(sequence.to_string().as_bytes());
    if body.trim_ascii_start().first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(body);
    Some(out)
}

/// The `sequence_number` of a frame that starts with it, as every frame natsmud sends does.
pub fn leading_sequence(frame: &[u8]) -> Option<u64> {
    let rest = frame.strip_prefix(b"{\"sequence_number\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T10:15:02.123Z`.
pub fn now_timestamp() -> String {
    format_timestamp(OffsetDateTime::now_utc())
}

pub fn format_timestamp(at: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_default()
}

pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerInfo {
    pub id: PlayerId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub id: RoomId,
    pub name: String,
    pub description: String,
    pub zone: ZoneId,
    pub sub_zone: SubZoneId,
    /// Direction name (`north`, `up`, …) → the room it leads to.
    pub exits: BTreeMap<String, RoomId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameStateData {
    pub player: PlayerInfo,
    pub room: RoomView,
    pub occupants: Vec<String>,
    pub occupant_count: usize,
    /// Where the room's numbering stood when the player arrived: the `sequence_number` of
    /// the room's last event before it. The room's next event the player receives is
    /// numbered `room_sequence + 1`, so a loss right after arriving shows as a gap.
    pub room_sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomUpdateData {
    pub room: RoomView,
    pub occupants: Vec<String>,
    pub occupant_count: usize,
    /// As in [`GameStateData::room_sequence`], for the room just entered.
    pub room_sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponseData {
    pub result: String,
}

/// `player_entered`, `player_left`, `player_entered_game`, `player_left_game`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceData {
    pub player_id: PlayerId,
    pub player_name: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessageData {
    pub channel: String,
    pub sender_id: PlayerId,
    pub player_name: String,
    pub message: String,
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<PlayerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,
    /// The sub-zone a `local` message was spoken to: the stream it is numbered in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_zone: Option<SubZoneId>,
}

/// The answer to a resume (`?since=` / `Last-Event-ID`), right after `game_state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumedData {
    /// True: exactly the `missed` events follow, then live ones. False: they could not be
    /// recovered (`reason`), and the fresh `game_state` stands.
    pub recovered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameTickData {
    pub tick_number: u64,
    pub timestamp: String,
    pub active_players: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// A received frame with its payload left generic: what clients, tests and the load
/// generator read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerFrame {
    pub event_type: EventType,
    pub timestamp: String,
    pub sequence_number: u64,
    /// Where a stream event stands (`<epoch>:<offset>`); resume from the last one seen.
    #[serde(default)]
    pub position: Option<String>,
    #[serde(default)]
    pub room_id: Option<String>,
    #[serde(default)]
    pub player_id: Option<String>,
    pub data: serde_json::Value,
}

impl ServerFrame {
    /// A string field of `data`, or "" when missing.
    pub fn data_str(&self, key: &str) -> &str {
        self.data.get(key).and_then(|v| v.as_str()).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_envelopes_start_with_their_number() {
        let bytes = Envelope::new(EventType::Pong, Empty {})
            .with_sequence(7)
            .to_bytes();
        assert!(bytes.starts_with(b"{\"sequence_number\":7,\"event_type\""));
        assert_eq!(leading_sequence(&bytes), Some(7));
        assert_eq!(leading_sequence(b"{\"event_type\":1}"), None);
    }

    #[test]
    fn envelope_omits_absent_fields_and_starts_with_event_type() {
        let bytes = Envelope::new(EventType::Pong, Empty {}).to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap_or_default();
        assert!(
            text.starts_with("{\"event_type\":\"pong\",\"timestamp\":\""),
            "{text}"
        );
        assert!(!text.contains("sequence_number"));
        assert!(!text.contains("room_id"));
    }

    #[test]
    fn splices_the_number_in_front() {
        let frame = splice_sequence(br#"{"event_type":"x","data":{}}"#, 42);
        assert_eq!(
            frame.as_deref(),
            Some(&br#"{"sequence_number":42,"event_type":"x","data":{}}"#[..])
        );
        assert_eq!(
            splice_sequence(b"{}", 3).as_deref(),
            Some(&br#"{"sequence_number":3}"#[..])
        );
        assert_eq!(splice_sequence(b"[1]", 1), None);
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let at = time::macros::datetime!(2026-11-23 10:15:02.123456 UTC);
        assert_eq!(format_timestamp(at), "2026-11-23T10:15:02.123Z");
        let whole = time::macros::datetime!(2026-11-23 10:15:02 UTC);
        assert_eq!(format_timestamp(whole), "2026-11-23T10:15:02.000Z");
        assert!(parse_timestamp(&format_timestamp(whole)).is_some());
    }
}
