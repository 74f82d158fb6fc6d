//! Client → server messages, parsed once at the edge.

use serde::Deserialize;
use serde_json::Value;

use crate::command::{Command, clean_text};
use crate::error::{ErrorCode, ProtocolError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Command(Command),
    Ping,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct GameCommandData {
    command: String,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize)]
struct ChatData {
    channel: String,
    message: String,
    /// The recipient's name, for `whisper`.
    #[serde(default)]
    target: Option<String>,
}

/// Parses one text frame. serde_json refuses nesting deeper than 128 levels by itself, so
/// a hostile frame costs at most one bounded parse.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    let raw: RawMessage = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            ProtocolError::new(
                ErrorCode::InvalidMessage,
                format!("A message is a JSON object with a \"type\": {e}"),
            )
        } else {
            ProtocolError::new(ErrorCode::InvalidJson, format!("Malformed JSON: {e}"))
        }
    })?;
    let Some(kind) = raw.kind else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidMessage,
            "A message needs a \"type\": game_command, chat or ping.",
        ));
    };
    match kind.as_str() {
        "ping" => Ok(ClientMessage::Ping),
        "game_command" => {
            let data: GameCommandData =
                data_of(raw.data, "game_command", "{\"command\":\"look\"}")?;
            Command::parse_parts(&data.command, &data.args).map(ClientMessage::Command)
        }
        "chat" => {
            let data: ChatData = data_of(
                raw.data,
                "chat",
                "{\"channel\":\"say\",\"message\":\"hello\"}",
            )?;
            chat_command(data).map(ClientMessage::Command)
        }
        other => Err(ProtocolError::new(
            ErrorCode::UnknownMessageType,
            format!(
                "Unknown message type '{}'; use game_command, chat or ping.",
                other
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(30)
                    .collect::<String>()
            ),
        )),
    }
}

fn data_of<T: serde::de::DeserializeOwned>(
    data: Option<Value>,
    kind: &str,
    example: &str,
) -> Result<T, ProtocolError> {
    let bad = |detail: String| {
        ProtocolError::new(
            ErrorCode::InvalidMessage,
            format!("A {kind} message needs \"data\" like {example}{detail}"),
        )
    };
    let data = data.ok_or_else(|| bad(String::new()))?;
    serde_json::from_value(data).map_err(|e| bad(format!(": {e}")))
}

fn chat_command(data: ChatData) -> Result<Command, ProtocolError> {
    let message = clean_text(&data.message)?;
    if message.is_empty() {
        return Err(ProtocolError::new(ErrorCode::MissingArgument, "Say what?"));
    }
    Ok(match data.channel.as_str() {
        "say" => Command::Say(message),
        "emote" => Command::Emote(message),
        "pose" => Command::Pose(message),
        "local" => Command::Local(message),
        "global" => Command::Global(message),
        "reply" => Command::Reply(message),
        "whisper" => match data.target {
            Some(target) if !target.trim().is_empty() => Command::Whisper {
                target: target.trim().to_owned(),
                message,
            },
            _ => {
                return Err(ProtocolError::new(
                    ErrorCode::MissingArgument,
                    "A whisper needs a \"target\" player name.",
                ));
            }
        },
        _ => {
            return Err(ProtocolError::new(
                ErrorCode::InvalidMessage,
                "Unknown chat channel; use say, emote, pose, local, global, whisper or reply.",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Direction;
    use proptest::prelude::*;

    fn code(text: &str) -> Option<ErrorCode> {
        parse_client_message(text).err().map(|e| e.code)
    }

    #[test]
    fn parses_each_message_type() {
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse_client_message(
                r#"{"type":"game_command","data":{"command":"go","args":["north"]}}"#
            ),
            Ok(ClientMessage::Command(Command::Go(Direction::North)))
        );
        assert_eq!(
            parse_client_message(r#"{"type":"game_command","data":{"command":"say hello all"}}"#),
            Ok(ClientMessage::Command(Command::Say("hello all".into())))
        );
        assert_eq!(
            parse_client_message(r#"{"type":"chat","data":{"channel":"say","message":"hello"}}"#),
            Ok(ClientMessage::Command(Command::Say("hello".into())))
        );
        assert_eq!(
            parse_client_message(
                r#"{"type":"chat","data":{"channel":"whisper","target":"Bob","message":"hi"}}"#
            ),
            Ok(ClientMessage::Command(Command::Whisper {
                target: "Bob".into(),
                message: "hi".into()
            }))
        );
    }

    #[test]
    fn classifies_bad_input() {
        assert_eq!(code("{not json"), Some(ErrorCode::InvalidJson));
        assert_eq!(code(""), Some(ErrorCode::InvalidJson));
        assert_eq!(code("[1,2]"), Some(ErrorCode::InvalidMessage));
        assert_eq!(code("{}"), Some(ErrorCode::InvalidMessage));
        assert_eq!(
            code(r#"{"type":"dance"}"#),
            Some(ErrorCode::UnknownMessageType)
        );
        assert_eq!(
            code(r#"{"type":"game_command"}"#),
            Some(ErrorCode::InvalidMessage)
        );
        assert_eq!(
            code(r#"{"type":"game_command","data":{"command":"fly"}}"#),
            Some(ErrorCode::UnknownCommand)
        );
        assert_eq!(
            code(r#"{"type":"chat","data":{"channel":"shout","message":"x"}}"#),
            Some(ErrorCode::InvalidMessage)
        );
        let deep = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert!(
            code(&deep).is_some(),
            "deep nesting is refused without overflowing the stack"
        );
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let _ = parse_client_message(&text);
        }

        #[test]
        fn never_panics_on_commands(command in "\\PC{0,100}", args in proptest::collection::vec("\\PC{0,20}", 0..4)) {
            let args: Vec<String> = args;
            let msg = serde_json::json!({"type":"game_command","data":{"command":command,"args":args}});
            let _ = parse_client_message(&msg.to_string());
        }
    }
}
