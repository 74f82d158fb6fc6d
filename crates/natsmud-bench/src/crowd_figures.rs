//! The crowded room's own figures, from the records of its run: when a move has reached
//! everyone, the mover's round trip, and how many frames each socket took.
//!
//! Delivery latency (mover's send → each receiver) and expected vs received come from the
//! standard analysis (analysis.rs), which a crowd's records go through like any run's.
//! What it does not have is the move as a whole: in a crowd, every other player hears each
//! move once (`player_left` in the room it left, `player_entered` in the one it reached), so
//! "the move has reached everyone" is the last of those receipts.

use serde::{Deserialize, Serialize};

use crate::analysis::{Latency, histogram, summarize};
use crate::load::Records;
use crate::records::{Kind, Outcome, Receipt, SentKind};
use crate::workload::Plan;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CrowdFigures {
    /// Players connected from before the window to the end: each move should reach all of
    /// them but its mover.
    pub players: u32,
    /// Moves sent in the measured window (answered or not; refused ones left out).
    pub moves: u64,
    /// Fewest and most moves one of those players sent in the window.
    pub moves_per_player_min: u32,
    pub moves_per_player_max: u32,
    /// Moves heard by every other player.
    pub reached_all: u64,
    /// Moves some other player did not hear: a lost event, or a player moving the other
    /// way at that very moment, between the server routing `player_left` and
    /// `player_entered` (the expected-vs-received check tells the two apart).
    pub reached_fewer: u64,
    /// Mover's send → the last other player's receipt, over the moves heard by everyone.
    pub reach: Latency,
    /// Mover's send → its own `room_update`, over the moves answered.
    pub round_trip: Latency,
    /// Presence frames one socket received per second in the window, on average.
    pub frames_per_socket_per_sec: f64,
}

/// One move as the attribution below needs it.
#[derive(Debug, Clone, Copy)]
struct MoveRef {
    sent_us: u64,
    from: u32,
    to: u32,
    /// Index in the run's sent commands.
    sent: usize,
}

/// The move a presence receipt tells of: its actor's latest move sent before the receipt
/// that left (`player_left`) or reached (`player_entered`) the receipt's room — the rule
/// analysis.rs uses, so both count the same deliveries.
fn move_of(moves: &[MoveRef], receipt: &Receipt) -> Option<usize> {
    let pos = moves.partition_point(|m| m.sent_us <= receipt.recv_us);
    moves[..pos].iter().rev().take(4).find_map(|m| {
        let room = if receipt.kind == Kind::Left {
            m.from
        } else {
            m.to
        };
        (room == receipt.room).then_some(m.sent)
    })
}

pub fn figures(records: &Records, plan: &Plan) -> CrowdFigures {
    let size = records
        .players
        .iter()
        .map(|p| p.idx as usize + 1)
        .chain(records.sent.iter().map(|s| s.actor as usize + 1))
        .chain(
            records
                .receipts
                .iter()
                .map(|r| r.actor.max(r.recipient) as usize + 1),
        )
        .max()
        .unwrap_or(0);
    let mut staying = vec![false; size];
    for p in &records.players {
        staying[p.idx as usize] = p.connected && p.closed_us.is_none();
    }
    let players = staying.iter().filter(|s| **s).count() as u32;

    let mut moves: Vec<Vec<MoveRef>> = vec![Vec::new(); size];
    for (i, s) in records.sent.iter().enumerate() {
        if s.kind == SentKind::Move && s.outcome != Outcome::Error {
            moves[s.actor as usize].push(MoveRef {
                sent_us: s.sent_us,
                from: s.room,
                to: s.to,
                sent: i,
            });
        }
    }
    for list in &mut moves {
        list.sort_by_key(|m| m.sent_us);
    }

    // Who heard each move, and when.
    let mut heard: Vec<Vec<(u32, u64)>> = vec![Vec::new(); records.sent.len()];
    let mut presence_in_window = 0u64;
    for r in &records.receipts {
        if !matches!(r.kind, Kind::Entered | Kind::Left) {
            continue;
        }
        if plan.in_window(r.recv_us) {
            presence_in_window += 1;
        }
        if r.recipient == r.actor || !staying[r.recipient as usize] {
            continue;
        }
        if let Some(i) = move_of(&moves[r.actor as usize], r) {
            heard[i].push((r.recipient, r.recv_us));
        }
    }

    let mut out = CrowdFigures {
        players,
        ..CrowdFigures::default()
    };
    let mut per_player = vec![0u32; size];
    let mut h_reach = histogram();
    let mut h_round_trip = histogram();
    for (i, s) in records.sent.iter().enumerate() {
        if s.kind != SentKind::Move || s.outcome == Outcome::Error || !plan.in_window(s.sent_us) {
            continue;
        }
        out.moves += 1;
        per_player[s.actor as usize] += 1;
        if s.outcome == Outcome::Ok && s.replied_us >= s.sent_us {
            h_round_trip.saturating_record((s.replied_us - s.sent_us).max(1));
        }
        // A player is reached when it first hears the move; a duplicate reaches nobody.
        let list = &mut heard[i];
        list.sort_unstable();
        list.dedup_by_key(|(recipient, _)| *recipient);
        let last_us = list.iter().map(|(_, at)| *at).max().unwrap_or(0);
        let others = players - u32::from(staying[s.actor as usize]);
        if list.len() as u32 >= others {
            out.reached_all += 1;
            h_reach.saturating_record(last_us.saturating_sub(s.sent_us).max(1));
        } else {
            out.reached_fewer += 1;
        }
    }
    let counts = per_player
        .iter()
        .zip(&staying)
        .filter(|(_, s)| **s)
        .map(|(n, _)| *n);
    out.moves_per_player_min = counts.clone().min().unwrap_or(0);
    out.moves_per_player_max = counts.max().unwrap_or(0);
    out.reach = summarize(&h_reach);
    out.round_trip = summarize(&h_round_trip);
    out.frames_per_socket_per_sec =
        presence_in_window as f64 / f64::from(players.max(1)) / plan.measured_secs().max(1e-9);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{NO_ROOM, PlayerRun, Sent};

    const S: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * S;
    const A: u32 = 0;
    const B: u32 = 1;

    fn plan() -> Plan {
        Plan {
            t0_us: T0,
            measure_from_us: T0 + 10 * S,
            measure_until_us: T0 + 40 * S,
            stop_us: T0 + 43 * S,
        }
    }

    fn player(idx: u32) -> PlayerRun {
        PlayerRun {
            idx,
            connected: true,
            connected_us: T0 - 5 * S,
            room_at_start: A,
            closed_us: None,
            close: None,
            connect_error: None,
        }
    }

    fn go(actor: u32, n: u32, at: u64, from: u32, to: u32, answered_after: u64) -> Sent {
        Sent {
            kind: SentKind::Move,
            actor,
            n,
            sent_us: at,
            room: from,
            to,
            outcome: Outcome::Ok,
            replied_us: at + answered_after,
        }
    }

    fn heard(kind: Kind, recipient: u32, actor: u32, room: u32, at: u64) -> Receipt {
        Receipt {
            kind,
            recipient,
            actor,
            key: 0,
            room,
            sent_us: 0,
            recv_us: at,
        }
    }

    /// Three players in A. At +20 s player 0 goes A → B (answered in 3 ms; players 1 and 2
    /// hear it leave A after 2 and 4 ms); at +30 s player 1 goes A → B and only player 0,
    /// in B, hears it; at +5 s (warm-up) player 2 goes A → B → A unmeasured.
    fn scene() -> Records {
        let (m0, m1) = (T0 + 20 * S, T0 + 30 * S);
        let warm = T0 + 5 * S;
        Records {
            players: vec![player(0), player(1), player(2)],
            sent: vec![
                go(2, 0, warm, A, B, 1_000),
                go(2, 1, warm + S, B, A, 1_000),
                go(0, 0, m0, A, B, 3_000),
                go(1, 0, m1, A, B, 7_000),
            ],
            receipts: vec![
                heard(Kind::Left, 0, 2, A, warm + 500),
                heard(Kind::Left, 1, 0, A, m0 + 2_000),
                heard(Kind::Left, 2, 0, A, m0 + 4_000),
                heard(Kind::Entered, 0, 1, B, m1 + 6_000),
                // Its own event: an echo, never "heard" on its behalf.
                heard(Kind::Left, 1, 1, A, m1 + 1_000),
                // Heard twice by one player: no stand-in for the one who missed it, and
                // no later reach than the first time.
                heard(Kind::Entered, 0, 1, B, m1 + 6_500),
                heard(Kind::Tick, 2, 0, NO_ROOM, m1),
            ],
            ..Records::default()
        }
    }

    #[test]
    fn a_move_reaches_everyone_at_its_last_receipt() {
        let f = figures(&scene(), &plan());
        assert_eq!(f.players, 3);
        assert_eq!(f.moves, 2, "the warm-up's moves are not measured");
        assert_eq!((f.reached_all, f.reached_fewer), (1, 1));
        assert_eq!(f.reach.count, 1);
        assert!((f.reach.max_ms - 4.0).abs() < 0.01, "{:?}", f.reach);
        assert_eq!(f.round_trip.count, 2);
        assert!(
            (f.round_trip.max_ms - 7.0).abs() < 0.01,
            "{:?}",
            f.round_trip
        );
        assert!(
            (f.round_trip.p50_ms - 3.0).abs() < 0.01,
            "{:?}",
            f.round_trip
        );
        assert_eq!((f.moves_per_player_min, f.moves_per_player_max), (0, 1));
        // Five presence frames in 30 s over three sockets.
        assert!((f.frames_per_socket_per_sec - 5.0 / 3.0 / 30.0).abs() < 1e-9);
    }

    #[test]
    fn receipts_are_matched_with_the_move_through_their_room() {
        let mut records = scene();
        // A second later player 0 goes back to A; what players 1 and 2 hear of it is told
        // of that move, not of its first one (which also touched A and B).
        let back = T0 + 21 * S;
        records.sent.push(go(0, 1, back, B, A, 2_000));
        records
            .receipts
            .push(heard(Kind::Entered, 2, 0, A, back + 9_000));
        records
            .receipts
            .push(heard(Kind::Left, 1, 0, B, back + 9_500));
        let f = figures(&records, &plan());
        assert_eq!(f.moves, 3);
        assert_eq!((f.reached_all, f.reached_fewer), (2, 1));
        assert_eq!(f.reach.count, 2);
        assert!((f.reach.p50_ms - 4.0).abs() < 0.01, "{:?}", f.reach);
        assert!((f.reach.max_ms - 9.5).abs() < 0.01, "{:?}", f.reach);
    }

    #[test]
    fn players_who_left_are_not_waited_for() {
        let mut records = scene();
        records.players[2].closed_us = Some(T0 + 25 * S);
        let f = figures(&records, &plan());
        assert_eq!(f.players, 2);
        // Player 1's move now only had player 0 to reach, who heard it.
        assert_eq!((f.reached_all, f.reached_fewer), (2, 0));
        assert!((f.reach.max_ms - 6.0).abs() < 0.01, "{:?}", f.reach);
    }
}
