//! Error codes sent to clients in `error` frames and JSON error bodies.

use serde::{Deserialize, Serialize};

/// Every code a client can see. Clients match on these, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    UnknownMessageType,
    UnknownCommand,
    MissingArgument,
    InvalidDirection,
    NoExit,
    PlayerNotFound,
    NoReplyTarget,
    MessageTooLong,
    EventBusUnavailable,
    UnsupportedFrame,
    RateLimited,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::UnknownMessageType => "unknown_message_type",
            Self::UnknownCommand => "unknown_command",
            Self::MissingArgument => "missing_argument",
            Self::InvalidDirection => "invalid_direction",
            Self::NoExit => "no_exit",
            Self::PlayerNotFound => "player_not_found",
            Self::NoReplyTarget => "no_reply_target",
            Self::MessageTooLong => "message_too_long",
            Self::EventBusUnavailable => "event_bus_unavailable",
            Self::UnsupportedFrame => "unsupported_frame",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
        }
    }
}

/// A client message or command that could not be understood: a code plus a message a
/// person can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
