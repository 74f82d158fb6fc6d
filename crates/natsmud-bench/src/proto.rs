//! What the load generator reads of a server frame and how it writes its commands.
//!
//! Receiving is the generator's hot path, so it reads a frame into a borrowed view with only
//! the fields it needs instead of `natsmud_protocol::ServerFrame`'s `serde_json::Value`.
//! The tests below build every frame with the protocol crate's own types and read it with
//! this view, so a renamed field fails the build's tests instead of the benchmark.

use std::borrow::Cow;
use std::collections::BTreeMap;

use natsmud_protocol::EventType;
use serde::Deserialize;

/// The fields of a server frame the generator uses.
#[derive(Debug, Deserialize)]
pub struct FrameView<'a> {
    pub sequence_number: u64,
    pub event_type: EventType,
    #[serde(default, borrow)]
    pub room_id: Option<Cow<'a, str>>,
    /// The actor of a room event.
    #[serde(default, borrow)]
    pub player_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub data: DataView<'a>,
}

/// The union of the `data` fields the generator reads; each event type fills some.
#[derive(Debug, Default, Deserialize)]
pub struct DataView<'a> {
    /// `player_entered`/`player_left`/`*_game`: who.
    #[serde(default, borrow)]
    pub player_id: Option<Cow<'a, str>>,
    /// `chat_message`: `say`, `global`, …
    #[serde(default, borrow)]
    pub channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub sender_id: Option<Cow<'a, str>>,
    /// `chat_message`: "Alice says: hi".
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
    /// `game_tick`: the tick's scheduled time.
    #[serde(default, borrow)]
    pub timestamp: Option<Cow<'a, str>>,
    #[serde(default)]
    pub tick_number: Option<u64>,
    /// `game_state`/`room_update`.
    #[serde(default)]
    pub room: Option<RoomLite>,
    /// `error`.
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct RoomLite {
    pub id: String,
    #[serde(default)]
    pub exits: BTreeMap<String, String>,
}

pub fn parse_frame(text: &str) -> Option<FrameView<'_>> {
    serde_json::from_str(text).ok()
}

/// `{"type":"game_command","data":{"command":LINE}}`. Lines the generator sends contain
/// only letters, digits, spaces and `_`, so no escaping is needed; any other character is
/// escaped through serde_json to be safe.
pub fn command(line: &str) -> String {
    if line
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'_')
    {
        format!(r#"{{"type":"game_command","data":{{"command":"{line}"}}}}"#)
    } else {
        serde_json::json!({"type":"game_command","data":{"command":line}}).to_string()
    }
}

/// The marker the generator puts in front of its chat text: `bench <sender> <n> <sent_us>`.
pub const CHAT_MARK: &str = "bench";

pub fn chat_text(sender: u32, n: u32, sent_us: u64) -> String {
    format!("{CHAT_MARK} {sender} {n} {sent_us}")
}

/// Reads (sender, n, sent_us) back out of a chat line such as
/// `b_000001 says: bench 1 7 1700000000000000` or `… says (global): bench …`.
pub fn parse_chat_text(message: &str) -> Option<(u32, u32, u64)> {
    let (_, text) = message.split_once(": ")?;
    let mut words = text.split(' ');
    if words.next()? != CHAT_MARK {
        return None;
    }
    let sender = words.next()?.parse().ok()?;
    let n = words.next()?.parse().ok()?;
    let sent = words.next()?.parse().ok()?;
    Some((sender, n, sent))
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp.
pub fn timestamp_us(text: &str) -> Option<u64> {
    let at = natsmud_protocol::envelope::parse_timestamp(text)?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use natsmud_protocol::envelope::{
        ChatMessageData, CommandResponseData, ErrorData, GameStateData, GameTickData, PlayerInfo,
        PresenceData, RoomUpdateData, RoomView,
    };
    use natsmud_protocol::{
        ClientMessage, Command, Direction, Envelope, PlayerId, RoomId, SubZoneId, ZoneId,
        parse_client_message,
    };

    fn id<T>(r: Result<T, natsmud_protocol::ids::IdError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn text_of<D: serde::Serialize>(envelope: Envelope<D>, sequence: u64) -> String {
        String::from_utf8(envelope.with_sequence(sequence).to_bytes().to_vec()).unwrap_or_default()
    }

    fn room_view() -> RoomView {
        RoomView {
            id: id(RoomId::parse("z000_r001")),
            name: "Lane".into(),
            description: "d".into(),
            zone: id(ZoneId::parse("z000")),
            sub_zone: id(SubZoneId::parse("z000_s0")),
            exits: [("north".to_owned(), id(RoomId::parse("z000_r002")))].into(),
        }
    }

    #[test]
    fn reads_presence_chat_tick_and_direct_frames_of_the_protocol() {
        let alice = id(PlayerId::parse("alice-id"));
        let room = id(RoomId::parse("z000_r001"));
        let presence = Envelope::new(
            EventType::PlayerEntered,
            PresenceData {
                player_id: alice.clone(),
                player_name: "Alice".into(),
                message: "Alice enters the room.".into(),
            },
        )
        .in_room(room.clone())
        .by_player(alice.clone());
        let text = text_of(presence, 42);
        let view = parse_frame(&text).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(view.sequence_number, 42);
        assert_eq!(view.event_type, EventType::PlayerEntered);
        assert_eq!(view.room_id.as_deref(), Some("z000_r001"));
        assert_eq!(view.player_id.as_deref(), Some("alice-id"));
        assert_eq!(view.data.player_id.as_deref(), Some("alice-id"));

        let chat = Envelope::new(
            EventType::ChatMessage,
            ChatMessageData {
                channel: "say".into(),
                sender_id: alice.clone(),
                player_name: "Alice".into(),
                message: format!("Alice says: {}", chat_text(3, 9, 1_700_000_000_123_456)),
                message_id: "m1".into(),
                target_id: None,
                target_name: None,
                sub_zone: None,
            },
        )
        .in_room(room.clone())
        .by_player(alice.clone());
        let text = text_of(chat, 43);
        let view = parse_frame(&text).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(view.data.channel.as_deref(), Some("say"));
        assert_eq!(view.data.sender_id.as_deref(), Some("alice-id"));
        assert_eq!(
            view.data.message.as_deref().and_then(parse_chat_text),
            Some((3, 9, 1_700_000_000_123_456))
        );

        let tick = Envelope::new(
            EventType::GameTick,
            GameTickData {
                tick_number: 17,
                timestamp: "2026-11-23T10:15:02.123Z".into(),
                active_players: 5,
            },
        );
        let text = text_of(tick, 17);
        let view = parse_frame(&text).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(view.data.tick_number, Some(17));
        let us = view.data.timestamp.as_deref().and_then(timestamp_us);
        assert_eq!(us.map(|u| u % 1_000_000), Some(123_000));

        let state = Envelope::new(
            EventType::GameState,
            GameStateData {
                player: PlayerInfo {
                    id: alice.clone(),
                    name: "Alice".into(),
                },
                room: room_view(),
                occupants: vec!["Alice".into()],
                occupant_count: 1,
                room_sequence: 0,
            },
        )
        .in_room(room.clone())
        .by_player(alice);
        let text = text_of(state, 1);
        let view = parse_frame(&text).unwrap_or_else(|| panic!("{text}"));
        let lite = view.data.room.unwrap_or_else(|| panic!("no room"));
        assert_eq!(lite.id, "z000_r001");
        assert_eq!(
            lite.exits.get("north").map(String::as_str),
            Some("z000_r002")
        );

        let update = Envelope::new(
            EventType::RoomUpdate,
            RoomUpdateData {
                room: room_view(),
                occupants: vec![],
                occupant_count: 0,
                room_sequence: 0,
            },
        );
        assert!(parse_frame(&text_of(update, 2)).is_some_and(|v| v.data.room.is_some()));
        let response = Envelope::new(
            EventType::CommandResponse,
            CommandResponseData {
                result: "You say: x".into(),
            },
        );
        assert!(parse_frame(&text_of(response, 3)).is_some());
        let error = Envelope::new(
            EventType::Error,
            ErrorData {
                code: "no_exit".into(),
                message: "m".into(),
            },
        );
        let text = text_of(error, 4);
        assert_eq!(
            parse_frame(&text).and_then(|v| v.data.code.map(|c| c.into_owned())),
            Some("no_exit".to_owned())
        );
    }

    #[test]
    fn commands_parse_as_the_server_parses_them() {
        let parsed = |line: &str| parse_client_message(&command(line)).ok();
        assert_eq!(
            parsed("go north"),
            Some(ClientMessage::Command(Command::Go(Direction::North)))
        );
        let say = format!("say {}", chat_text(1, 2, 3));
        assert_eq!(
            parsed(&say),
            Some(ClientMessage::Command(Command::Say("bench 1 2 3".into())))
        );
        assert_eq!(
            parsed("global bench 1 2 3"),
            Some(ClientMessage::Command(Command::Global(
                "bench 1 2 3".into()
            )))
        );
        assert_eq!(
            parsed("say \"quoted\""),
            Some(ClientMessage::Command(Command::Say("\"quoted\"".into())))
        );
    }

    #[test]
    fn chat_text_round_trips_and_ignores_other_text() {
        assert_eq!(
            parse_chat_text("b_000001 says (global): bench 4 5 6"),
            Some((4, 5, 6))
        );
        assert_eq!(parse_chat_text("Bob says: hello there"), None);
        assert_eq!(parse_chat_text("Bob says: bench x 5 6"), None);
    }
}
