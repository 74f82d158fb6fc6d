//! What a worker records and hands to the coordinator: every event received (a compact
//! binary record each) and every command sent, plus each player's connection facts.
//!
//! Workers only record; the coordinator joins the records of every worker process, so a
//! presence event received in one process is matched with the move sent in another, and
//! expected recipients are computed from every player's room at once.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// No room (global chat, ticks).
pub const NO_ROOM: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Kind {
    Entered = 1,
    Left = 2,
    Say = 3,
    Global = 4,
    Tick = 5,
    EnteredGame = 6,
    LeftGame = 7,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Entered,
            2 => Self::Left,
            3 => Self::Say,
            4 => Self::Global,
            5 => Self::Tick,
            6 => Self::EnteredGame,
            7 => Self::LeftGame,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Entered => "player_entered",
            Self::Left => "player_left",
            Self::Say => "say",
            Self::Global => "global",
            Self::Tick => "game_tick",
            Self::EnteredGame => "player_entered_game",
            Self::LeftGame => "player_left_game",
        }
    }
}

/// One event received by one player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub kind: Kind,
    /// Index of the player who received it.
    pub recipient: u32,
    /// Index of the actor (mover, speaker); 0 for ticks.
    pub actor: u32,
    /// The speaker's message number for chat, the tick number for ticks, else 0.
    pub key: u32,
    /// Room index of a room event, else [`NO_ROOM`].
    pub room: u32,
    /// Send time carried by the event (chat text, tick timestamp), µs since the epoch; 0
    /// when the event carries none (presence: the coordinator finds the move).
    pub sent_us: u64,
    pub recv_us: u64,
}

const RECEIPT_BYTES: usize = 1 + 4 * 4 + 8 * 2;

impl Receipt {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        for v in [self.recipient, self.actor, self.key, self.room] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.sent_us.to_le_bytes());
        out.extend_from_slice(&self.recv_us.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Self {
            kind: Kind::from_u8(*bytes.first()?)?,
            recipient: u32_at(1)?,
            actor: u32_at(5)?,
            key: u32_at(9)?,
            room: u32_at(13)?,
            sent_us: u64_at(17)?,
            recv_us: u64_at(25)?,
        })
    }
}

pub fn write_receipts(path: &Path, receipts: &[Receipt]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut buf = Vec::with_capacity(RECEIPT_BYTES * 4096);
    for chunk in receipts.chunks(4096) {
        buf.clear();
        for r in chunk {
            r.encode(&mut buf);
        }
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(())
}

pub fn read_receipts(path: &Path, into: &mut Vec<Receipt>) -> Result<()> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .read_to_end(&mut bytes)?;
    if bytes.len() % RECEIPT_BYTES != 0 {
        bail!("{} is truncated", path.display());
    }
    into.reserve(bytes.len() / RECEIPT_BYTES);
    for chunk in bytes.chunks_exact(RECEIPT_BYTES) {
        match Receipt::decode(chunk) {
            Some(r) => into.push(r),
            None => bail!("{} holds a bad record", path.display()),
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server confirmed it (room_update, command_response).
    Ok,
    /// The server answered with an error frame.
    Error,
    /// No answer before the run ended.
    Unconfirmed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SentKind {
    Move,
    Say,
    Global,
}

/// A command a player sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub kind: SentKind,
    pub actor: u32,
    /// Message number for chat, move number for moves.
    pub n: u32,
    pub sent_us: u64,
    /// The room the actor was in when sending.
    pub room: u32,
    /// For a move: the room it leads to.
    pub to: u32,
    pub outcome: Outcome,
    /// When the server's answer arrived; 0 when none did.
    #[serde(default)]
    pub replied_us: u64,
}

/// One player's connection, as its worker saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerRun {
    pub idx: u32,
    pub connected: bool,
    /// When the first frame (`game_state`) arrived.
    pub connected_us: u64,
    /// The player's room when the workload started.
    pub room_at_start: u32,
    /// When the connection ended before the run did, and how.
    pub closed_us: Option<u64>,
    pub close: Option<String>,
    pub connect_error: Option<String>,
}

/// What a worker counts live, per connection, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub frames: u64,
    pub unparsed: u64,
    /// A frame whose sequence number equals the previous one of its stream.
    pub duplicate_sequence: u64,
    /// A frame whose sequence number is below the previous one of its stream.
    pub out_of_order: u64,
    /// A direct reply whose number skipped some (the connection's own counter).
    pub direct_gaps: u64,
    /// Room or chat events about the recipient itself.
    pub echoes: u64,
    /// Moves not sent because the previous one was not confirmed yet.
    pub moves_skipped: u64,
    /// A `room_update` for a room other than the exit's.
    pub room_mismatch: u64,
    /// Replies that matched no command sent.
    pub unexpected_replies: u64,
    /// Frames that arrived before the connection's `game_state`.
    pub before_game_state: u64,
    /// The generator's own delay: from the kernel receiving a frame to the generator
    /// reading it (summed, and the largest), µs.
    #[serde(default)]
    pub read_lag_sum_us: u64,
    #[serde(default)]
    pub read_lag_max_us: u64,
    /// Socket reads without a kernel receive timestamp (their frames are stamped with the
    /// time the generator read them).
    #[serde(default)]
    pub unstamped_reads: u64,
    pub errors: BTreeMap<String, u64>,
    pub commands_sent: u64,
    /// Frames received per event type (the whole run, warm-up included).
    pub by_type: BTreeMap<String, u64>,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.frames += other.frames;
        self.unparsed += other.unparsed;
        self.duplicate_sequence += other.duplicate_sequence;
        self.out_of_order += other.out_of_order;
        self.direct_gaps += other.direct_gaps;
        self.echoes += other.echoes;
        self.moves_skipped += other.moves_skipped;
        self.room_mismatch += other.room_mismatch;
        self.unexpected_replies += other.unexpected_replies;
        self.before_game_state += other.before_game_state;
        self.read_lag_sum_us += other.read_lag_sum_us;
        self.read_lag_max_us = self.read_lag_max_us.max(other.read_lag_max_us);
        self.unstamped_reads += other.unstamped_reads;
        self.commands_sent += other.commands_sent;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.by_type {
            *self.by_type.entry(k.clone()).or_default() += v;
        }
    }
}

/// Everything a worker writes besides its receipts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerOutput {
    pub worker: usize,
    pub players: Vec<PlayerRun>,
    pub sent: Vec<Sent>,
    pub counters: Counters,
    pub receipts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("r.bin");
        let receipts: Vec<Receipt> = (0..10_000u32)
            .map(|i| Receipt {
                kind: [Kind::Entered, Kind::Say, Kind::Tick][i as usize % 3],
                recipient: i,
                actor: i * 7,
                key: i / 3,
                room: if i % 5 == 0 { NO_ROOM } else { i % 97 },
                sent_us: 1_700_000_000_000_000 + u64::from(i),
                recv_us: 1_700_000_000_001_000 + u64::from(i) * 3,
            })
            .collect();
        write_receipts(&path, &receipts).unwrap_or_else(|e| panic!("{e}"));
        let mut back = Vec::new();
        read_receipts(&path, &mut back).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, receipts);
    }
}
