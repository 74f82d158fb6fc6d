//! What a receiving node accepts from NATS. Anyone who can publish on NATS can publish on
//! a world's subjects, so every event is checked before it reaches a socket: its size, that
//! it is a complete envelope of the kind its subject carries (every field a client reads is
//! there), that its `room_id` matches the subject's room and its actor (`player_id`) the
//! player its data names, and that it does not bring a `sequence_number` of its own (the
//! receiving node numbers events; only a tick carries one, its tick number).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::{
    ChatMessageData, Envelope, EventType, GameTickData, PresenceData, parse_timestamp,
};
use crate::ids::PlayerId;
use crate::subject::Subject;

/// Why an event from NATS was not delivered; the `reason` label of
/// `natsmud_events_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than the client frame limit.
    TooLarge,
    /// Not a JSON envelope with `event_type`, `timestamp` and an object `data` of the kind
    /// its event type needs.
    Malformed,
    /// An event type (or chat channel) the subject does not carry.
    WrongKind,
    /// `room_id` differs from the subject's room, or is set on an event that is not a
    /// room's.
    RoomMismatch,
    /// The actor (`player_id`) is missing or differs from the player the data names.
    ActorMismatch,
    /// The subject names a room or sub-zone this world does not have.
    UnknownPlace,
    /// Brings its own `sequence_number` (only ticks may: it is their tick number), or a
    /// `position` (only the receiving node knows it).
    Numbered,
    /// A tick whose number or time is not near this node's clock, or not newer than the
    /// last one delivered.
    StaleTick,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::WrongKind => "wrong_kind",
            Self::RoomMismatch => "room_mismatch",
            Self::ActorMismatch => "actor_mismatch",
            Self::UnknownPlace => "unknown_place",
            Self::Numbered => "numbered",
            Self::StaleTick => "stale_tick",
        }
    }
}

/// What a receiving node reads of an envelope: the header fields, with `data` left raw
/// until the event type says what it must hold.
#[derive(Debug, Deserialize)]
struct Incoming<'a> {
    event_type: EventType,
    #[serde(default)]
    sequence_number: Option<u64>,
    /// Only the receiving node says where an event stands.
    #[serde(default, borrow)]
    position: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(default, borrow)]
    room_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    player_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Incoming<'_> {
    fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T, Refusal> {
        // A struct would also deserialize from a JSON array; clients expect an object.
        if !self.data.get().starts_with('{') {
            return Err(Refusal::Malformed);
        }
        serde_json::from_str(self.data.get()).map_err(|_| Refusal::Malformed)
    }

    fn actor_is(&self, player: &PlayerId) -> Result<(), Refusal> {
        match &self.player_id {
            Some(actor) if actor.as_ref() == player.as_str() => Ok(()),
            _ => Err(Refusal::ActorMismatch),
        }
    }

    fn room_is(&self, room: Option<&str>) -> Result<(), Refusal> {
        if self.room_id.as_deref() == room {
            Ok(())
        } else {
            Err(Refusal::RoomMismatch)
        }
    }
}

/// A checked event and who gets it.
#[derive(Debug)]
pub enum Route {
    Room {
        room: String,
        actor: String,
        /// For presence events: who arrived or left, and how.
        presence: Option<(EventType, crate::ids::PlayerName)>,
    },
    SubZone {
        sub_zone: String,
        actor: String,
    },
    Whisper {
        target: String,
        sender: PlayerId,
    },
    Global {
        actor: Option<String>,
    },
    System,
    /// `frame`: the tick re-rendered in the canonical shape, its number first.
    Tick {
        frame: Bytes,
        tick: u64,
        due_ms: i128,
    },
}

/// Checks one event that arrived on `subject` (see the module documentation).
pub fn check(subject: Subject<'_>, payload: &[u8], max_bytes: usize) -> Result<Route, Refusal> {
    if payload.len() > max_bytes {
        return Err(Refusal::TooLarge);
    }
    // The JSON parser does not look inside the values of fields it skips: bytes that are
    // not UTF-8 there would pass it and then fail to make a frame.
    if std::str::from_utf8(payload).is_err() {
        return Err(Refusal::Malformed);
    }
    let incoming: Incoming<'_> = serde_json::from_slice(payload).map_err(|_| Refusal::Malformed)?;
    if parse_timestamp(&incoming.timestamp).is_none() {
        return Err(Refusal::Malformed);
    }
    if (incoming.sequence_number.is_some() && subject != Subject::GameTick)
        || incoming.position.is_some()
    {
        return Err(Refusal::Numbered);
    }
    let chat = |channel: &str| -> Result<ChatMessageData, Refusal> {
        if incoming.event_type != EventType::ChatMessage {
            return Err(Refusal::WrongKind);
        }
        let data: ChatMessageData = incoming.data()?;
        if data.channel != channel {
            return Err(Refusal::WrongKind);
        }
        Ok(data)
    };
    match subject {
        Subject::PlayerEntered(room) | Subject::PlayerLeft(room) => {
            let fits = match subject {
                Subject::PlayerEntered(_) => {
                    [EventType::PlayerEntered, EventType::PlayerEnteredGame]
                }
                _ => [EventType::PlayerLeft, EventType::PlayerLeftGame],
            };
            if !fits.contains(&incoming.event_type) {
                return Err(Refusal::WrongKind);
            }
            let data: PresenceData = incoming.data()?;
            incoming.room_is(Some(room))?;
            incoming.actor_is(&data.player_id)?;
            let name =
                crate::ids::PlayerName::parse(&data.player_name).map_err(|_| Refusal::Malformed)?;
            Ok(Route::Room {
                room: room.to_owned(),
                actor: data.player_id.to_string(),
                presence: Some((incoming.event_type, name)),
            })
        }
        Subject::Say(room) | Subject::Emote(room) | Subject::Pose(room) => {
            let channel = match subject {
                Subject::Say(_) => "say",
                Subject::Emote(_) => "emote",
                _ => "pose",
            };
            let data = chat(channel)?;
            incoming.room_is(Some(room))?;
            incoming.actor_is(&data.sender_id)?;
            Ok(Route::Room {
                room: room.to_owned(),
                actor: data.sender_id.to_string(),
                presence: None,
            })
        }
        Subject::Local(sub_zone) => {
            let data = chat("local")?;
            incoming.room_is(None)?;
            incoming.actor_is(&data.sender_id)?;
            if data.sub_zone.as_ref().map(|z| z.as_str()) != Some(sub_zone) {
                return Err(Refusal::WrongKind);
            }
            Ok(Route::SubZone {
                sub_zone: sub_zone.to_owned(),
                actor: data.sender_id.to_string(),
            })
        }
        Subject::Whisper(target) => {
            let data = chat("whisper")?;
            incoming.room_is(None)?;
            incoming.actor_is(&data.sender_id)?;
            if data.target_id.as_ref().map(|t| t.as_str()) != Some(target) {
                return Err(Refusal::WrongKind);
            }
            Ok(Route::Whisper {
                target: target.to_owned(),
                sender: data.sender_id,
            })
        }
        Subject::Global => {
            let data = chat("global")?;
            incoming.room_is(None)?;
            incoming.actor_is(&data.sender_id)?;
            Ok(Route::Global {
                actor: Some(data.sender_id.to_string()),
            })
        }
        Subject::System => {
            chat("system")?;
            incoming.room_is(None)?;
            Ok(Route::System)
        }
        Subject::GameTick => {
            if incoming.event_type != EventType::GameTick {
                return Err(Refusal::WrongKind);
            }
            incoming.room_is(None)?;
            let data: GameTickData = incoming.data()?;
            if incoming.sequence_number != Some(data.tick_number) {
                return Err(Refusal::Malformed);
            }
            let due = parse_timestamp(&data.timestamp).ok_or(Refusal::Malformed)?;
            let tick = data.tick_number;
            // Ticks are re-rendered so that every tick frame starts with its number, in
            // the canonical shape, whoever published it.
            let envelope = Envelope {
                sequence_number: Some(data.tick_number),
                event_type: EventType::GameTick,
                timestamp: incoming.timestamp.into_owned(),
                room_id: None,
                player_id: None,
                data,
            };
            Ok(Route::Tick {
                frame: envelope.to_bytes(),
                tick,
                due_ms: due.unix_timestamp_nanos() / 1_000_000,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomId;
    use proptest::prelude::*;

    fn say(room: &str, sender: &str) -> Envelope<ChatMessageData> {
        let sender = PlayerId::parse(sender).unwrap_or_else(|e| panic!("{e}"));
        Envelope::new(
            EventType::ChatMessage,
            ChatMessageData {
                channel: "say".into(),
                sender_id: sender.clone(),
                player_name: "Alice".into(),
                message: "Alice says: hi".into(),
                message_id: "m1".into(),
                target_id: None,
                target_name: None,
                sub_zone: None,
            },
        )
        .in_room(RoomId::parse(room).unwrap_or_else(|e| panic!("{e}")))
        .by_player(sender)
    }

    fn refusal(subject: Subject<'_>, payload: &[u8]) -> Option<Refusal> {
        check(subject, payload, 8192).err()
    }

    #[test]
    fn checks_events_against_their_subject() {
        let good = say("r1", "p1").to_bytes();
        assert!(check(Subject::Say("r1"), &good, 8192).is_ok());
        assert_eq!(
            refusal(Subject::Say("r2"), &good),
            Some(Refusal::RoomMismatch)
        );
        assert_eq!(
            refusal(Subject::Emote("r1"), &good),
            Some(Refusal::WrongKind)
        );
        assert_eq!(
            refusal(Subject::PlayerLeft("r1"), &good),
            Some(Refusal::WrongKind)
        );
        assert_eq!(
            refusal(Subject::Say("r1"), &good[..good.len() - 1]),
            Some(Refusal::Malformed)
        );
        assert_eq!(refusal(Subject::Say("r1"), &good), None);
        assert_eq!(
            check(Subject::Say("r1"), &good, good.len() - 1).err(),
            Some(Refusal::TooLarge)
        );
        let mut value = serde_json::to_value(say("r1", "p1")).unwrap_or_default();
        value["player_id"] = "p2".into();
        assert_eq!(
            refusal(Subject::Say("r1"), value.to_string().as_bytes()),
            Some(Refusal::ActorMismatch)
        );
        let mut value = serde_json::to_value(say("r1", "p1")).unwrap_or_default();
        value["sequence_number"] = 7.into();
        assert_eq!(
            refusal(Subject::Say("r1"), value.to_string().as_bytes()),
            Some(Refusal::Numbered)
        );
        let mut value = serde_json::to_value(say("r1", "p1")).unwrap_or_default();
        value["position"] = "e:1".into();
        assert_eq!(
            refusal(Subject::Say("r1"), value.to_string().as_bytes()),
            Some(Refusal::Numbered)
        );
        let mut not_utf8 = say("r1", "p1").to_bytes().to_vec();
        let at = not_utf8.len() - 1;
        not_utf8.splice(at..at, *b",\"junk\":\"\xff\"");
        assert_eq!(
            refusal(Subject::Say("r1"), &not_utf8),
            Some(Refusal::Malformed)
        );
        for data in [
            serde_json::Value::Null,
            serde_json::json!([1]),
            serde_json::json!({}),
        ] {
            let mut value = serde_json::to_value(say("r1", "p1")).unwrap_or_default();
            value["data"] = data;
            assert_eq!(
                refusal(Subject::Say("r1"), value.to_string().as_bytes()),
                Some(Refusal::Malformed)
            );
        }
        let mut value = serde_json::to_value(say("r1", "p1")).unwrap_or_default();
        value.as_object_mut().map(|o| o.remove("data"));
        assert_eq!(
            refusal(Subject::Say("r1"), value.to_string().as_bytes()),
            Some(Refusal::Malformed)
        );
    }

    proptest! {
        #[test]
        fn never_panics(payload in proptest::collection::vec(any::<u8>(), 0..400), room in "[a-z]{1,5}") {
            for subject in [Subject::Say(&room), Subject::PlayerLeft(&room), Subject::GameTick, Subject::Whisper(&room), Subject::Local(&room)] {
                let _ = check(subject, &payload, 8192);
            }
        }
    }
}
