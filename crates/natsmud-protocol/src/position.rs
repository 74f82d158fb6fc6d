//! Positions: where an event stands in the world's event stream, `"<epoch>:<offset>"`.
//!
//! `offset` is the event's sequence in the JetStream stream that captures the world's
//! subjects; `epoch` names one life of that stream and changes when it is created again
//! (a NATS restart that lost it), so an offset is only ever compared within its epoch.
//! Clients treat a position as opaque: they keep the last one they got and hand it back
//! to resume.

use std::fmt;

/// Longest epoch accepted from a client.
const MAX_EPOCH_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

impl Position {
    /// Reads `"<epoch>:<offset>"`; `None` for anything else (a client's bad value).
    pub fn parse(value: &str) -> Option<Self> {
        let (epoch, offset) = value.trim().split_once(':')?;
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH_LEN
            || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
            || offset.is_empty()
            || !offset.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Self {
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// `{"position":"<epoch>:<offset>",` + the envelope without its opening brace, in one
/// copy. `None` when `payload` is not a JSON object. The `sequence_number` a node adds
/// goes in front of it (see [`crate::envelope::splice_sequence`]), so a frame reads
/// `{"sequence_number":N,"position":"…",…}`.
pub fn splice_position(payload: &[u8], epoch: &str, offset: u64) -> Option<Vec<u8>> {
    let body = payload.trim_ascii_start().strip_prefix(b"{")?;
    let mut out = Vec::with_capacity(payload.len() + epoch.len() + 40);
    out.extend_from_slice(b"{\"position\":\"");
    out.extend_from_slice(epoch.as_bytes());
    out.push(b':');
    out.extend_from_slice(offset.to_string().as_bytes());
    out.push(b'"');
    if body.trim_ascii_start().first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(body);
    Some(out)
}

/// A numbered frame (`{"sequence_number":N,…`) with `"position":"<epoch>:<offset>"` right
/// after its number, as every positioned frame has it. `None` for a frame not numbered.
pub fn splice_position_numbered(frame: &[u8], epoch: &str, offset: u64) -> Option<Vec<u8>> {
    let rest = frame.strip_prefix(b"{\"sequence_number\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, body) = rest.split_at(digits);
    let positioned = splice_position(&[b"{", body.strip_prefix(b",")?].concat(), epoch, offset)?;
    let mut out = Vec::with_capacity(positioned.len() + 40);
    out.extend_from_slice(b"{\"sequence_number\":");
    out.extend_from_slice(number);
    out.push(b',');
    out.extend_from_slice(&positioned[1..]);
    Some(out)
}

/// The offset of a frame natsmud made with [`splice_position`] (after its
/// `sequence_number`), without parsing the frame; `None` for a frame without a position.
pub fn frame_offset(frame: &[u8]) -> Option<u64> {
    let rest = frame.strip_prefix(b"{")?;
    let rest = match rest.strip_prefix(b"\"sequence_number\":") {
        Some(numbered) => {
            let digits = numbered.iter().take_while(|b| b.is_ascii_digit()).count();
            numbered[digits..].strip_prefix(b",")?
        }
        None => rest,
    };
    let rest = rest.strip_prefix(b"\"position\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let (_, offset) = std::str::from_utf8(&rest[..end]).ok()?.split_once(':')?;
    offset.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::splice_sequence;

    #[test]
    fn positions_read_back() {
        let position = Position::parse("k3x9:42").unwrap_or_else(|| panic!("parse"));
        assert_eq!(position.epoch, "k3x9");
        assert_eq!(position.offset, 42);
        assert_eq!(position.to_string(), "k3x9:42");
        for bad in [
            "",
            ":",
            "a:",
            ":1",
            "a:b",
            "a:-1",
            "a b:1",
            "a:1:2",
            "a:99999999999999999999",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Position::parse(&format!("{}:1", "a".repeat(33))), None);
    }

    #[test]
    fn a_frame_carries_its_position_after_its_number() {
        let payload = br#"{"event_type":"x","data":{}}"#;
        let positioned = splice_position(payload, "ep1", 77).unwrap_or_default();
        let frame = splice_sequence(&positioned, 5).unwrap_or_default();
        assert_eq!(
            std::str::from_utf8(&frame).unwrap_or_default(),
            r#"{"sequence_number":5,"position":"ep1:77","event_type":"x","data":{}}"#
        );
        assert_eq!(frame_offset(&frame), Some(77));
        assert_eq!(frame_offset(&positioned), Some(77));
        assert_eq!(frame_offset(payload), None);
        assert_eq!(
            frame_offset(br#"{"sequence_number":5,"event_type":"x"}"#),
            None
        );
        assert_eq!(splice_position(b"[]", "e", 1), None);
        let greeting = br#"{"sequence_number":1,"event_type":"game_state","data":{}}"#;
        let positioned = splice_position_numbered(greeting, "ep", 9).unwrap_or_default();
        assert_eq!(
            std::str::from_utf8(&positioned).unwrap_or_default(),
            r#"{"sequence_number":1,"position":"ep:9","event_type":"game_state","data":{}}"#
        );
        assert_eq!(frame_offset(&positioned), Some(9));
        assert_eq!(
            splice_position(b"{}", "e", 1).unwrap_or_default(),
            br#"{"position":"e:1"}"#.to_vec()
        );
    }
}
