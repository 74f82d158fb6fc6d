//! Identifiers validated once, at the edge, and trusted everywhere inside.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Ids are at most this long, so a subject built from them stays short.
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value:?} is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        value: String,
        max: usize,
    },
    #[error("{kind} {value:?} may contain only letters, digits, '_' and '-'")]
    BadCharacter { kind: &'static str, value: String },
    #[error("{kind} {value:?} must be 3–20 characters: a letter, then letters, digits or '_'")]
    BadName { kind: &'static str, value: String },
}

/// True when `s` can be one token of a NATS subject: `[A-Za-z0-9_-]+`.
pub fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_token(kind: &'static str, value: &str) -> Result<String, IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            value: value.chars().take(MAX_ID_LEN).collect(),
            max: MAX_ID_LEN,
        });
    }
    if !is_subject_token(value) {
        return Err(IdError::BadCharacter {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(value.to_owned())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, IdError> {
                parse_token($kind, value).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_id!(
    /// A room's id, e.g. `harbor_docks_pier_001`.
    RoomId,
    "room id"
);
token_id!(
    /// A zone's id.
    ZoneId,
    "zone id"
);
token_id!(
    /// A sub-zone's id; `local` chat reaches one sub-zone.
    SubZoneId,
    "sub-zone id"
);
token_id!(
    /// A player's stable id (a UUID for accounts made by natsmud).
    PlayerId,
    "player id"
);

/// A player's display name, which is also the login username: 3–20 characters,
/// `[A-Za-z][A-Za-z0-9_]*`. Names are unique case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PlayerName(String);

impl PlayerName {
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let mut bytes = value.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
        let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(3..=20).contains(&value.len()) || !first_ok || !rest_ok {
            return Err(IdError::BadName {
                kind: "username",
                value: value.chars().take(40).collect(),
            });
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key under which names are unique.
    pub fn folded(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// True for a name nobody may register (see [`is_reserved_name`]). Registration asks
    /// this; parsing does not, so names stored before a word was reserved keep working.
    pub fn is_reserved(&self) -> bool {
        is_reserved_name(&self.0)
    }
}

/// Names that would pass for the server, staff, or a word of the game's own text ("You
/// say: …", "everyone", "nobody"), in lower case. Short ones stay listed though the length
/// rule refuses them today, so the list says what is meant.
pub const RESERVED_NAMES: &[&str] = &[
    "admin",
    "administrator",
    "all",
    "anonymous",
    "anybody",
    "anyone",
    "everybody",
    "everyone",
    "guest",
    "here",
    "me",
    "moderator",
    "mod",
    "natsmud",
    "nobody",
    "null",
    "operator",
    "owner",
    "root",
    "server",
    "somebody",
    "someone",
    "staff",
    "support",
    "sysop",
    "system",
    "undefined",
    "you",
];

/// True when `name`, compared case-insensitively, is one of [`RESERVED_NAMES`].
pub fn is_reserved_name(name: &str) -> bool {
    RESERVED_NAMES
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
}

impl fmt::Display for PlayerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PlayerName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_accept_subject_safe_tokens_only() {
        assert!(RoomId::parse("arkham_northside_river_st_001").is_ok());
        assert!(RoomId::parse("a-b_C9").is_ok());
        for bad in ["", "a.b", "a b", "a>", "a*", "ä", &"x".repeat(65)] {
            assert!(RoomId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn player_names_follow_the_username_rules() {
        for good in ["Alice", "bob_2", "Abc", "A2345678901234567890"] {
            assert!(PlayerName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "al",
            "1abc",
            "_abc",
            "a-b",
            "A23456789012345678901",
            "Al ice",
        ] {
            assert!(PlayerName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_names_are_recognised_in_any_case_and_still_parse() {
        for name in [
            "admin",
            "Administrator",
            "SYSTEM",
            "You",
            "everyone",
            "all",
            "here",
            "server",
            "NatsMud",
            "root",
            "moderator",
            "staff",
            "nobody",
            "someone",
        ] {
            let parsed = PlayerName::parse(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(parsed.is_reserved(), "{name}");
        }
        assert!(is_reserved_name("me"));
        for name in ["Alice", "Adminton", "Rooted", "Youth", "Hereford"] {
            let parsed = PlayerName::parse(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!parsed.is_reserved(), "{name}");
        }
        assert!(RESERVED_NAMES.iter().all(|n| *n == n.to_ascii_lowercase()));
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<RoomId>("\"ok_room\"").is_ok());
        assert!(serde_json::from_str::<RoomId>("\"bad.room\"").is_err());
    }
}
