//! The crowded room of ../shared/BENCHMARK.md (`scenario --mode crowd`): every player starts
//! in one room A and moves to B, the room behind A's one exit, and back, every 1.5 s with a
//! random phase. Every other player hears one `player_left` or `player_entered` per move,
//! so each socket receives ~65 frames/s (at 100 players) in bursts. The standard workload
//! spreads players ~10 to a room, so a socket gets a frame every few seconds; this shape
//! shows what that hides: Nagle's algorithm against delayed ACKs, a writer woken per frame,
//! fan-out lock contention.
//!
//! The world is just A and B: with one exit each, the load generator's "move through a
//! random exit" is A→B→A…, and nobody is anywhere else.

use anyhow::{Context, Result};

use crate::crowd_figures::figures;
use crate::load::{LoadArgs, Placement, coordinate, read_records};
use crate::scenario::{SERVER_FLAGS, ScenarioArgs, ScenarioResult, fresh_work_dir, start_stack};
use crate::workload::Workload;
use crate::world::{Generated, RoomFile, SubZoneFile, WorldFile, ZoneFile};

/// Room A, where everyone starts (the world's start room), and B behind its one exit.
pub const ROOM_A: &str = "z000_r000";
pub const ROOM_B: &str = "z000_r001";

#[derive(Debug, Clone, clap::Args)]
pub struct CrowdArgs {
    /// Crowd: seconds between one player's moves (replaces --move-every; no `say` or
    /// `global` in a crowd).
    #[arg(
        id = "crowd_move_every",
        long = "crowd-move-every",
        default_value_t = 1.5
    )]
    pub move_every: f64,
    /// Crowd: the race margin of the expected-vs-received check, in ms (replaces
    /// --boundary-ms). Everyone moves every 1.5 s, so the standard ±1 s would leave nearly
    /// every recipient unchecked; the check already spans each move's send → answer.
    #[arg(
        id = "crowd_boundary_ms",
        long = "crowd-boundary-ms",
        default_value_t = 50
    )]
    pub boundary_ms: u64,
}

/// Rooms A and B, one exit each way.
pub fn world() -> Generated {
    let room = |id: &str, name: &str, description: &str, exit: (&str, &str)| RoomFile {
        id: id.to_owned(),
        name: name.to_owned(),
        description: description.to_owned(),
        sub_zone: "z000_s0".to_owned(),
        exits: [(exit.0.to_owned(), exit.1.to_owned())].into(),
    };
    Generated {
        world: WorldFile {
            name: "natsmud benchmark: the crowded room".to_owned(),
            description: "Two rooms: everyone starts in the square and paces to the lane and back."
                .to_owned(),
            start_room: ROOM_A.to_owned(),
        },
        zones: vec![ZoneFile {
            id: "z000".to_owned(),
            name: "The Crowd".to_owned(),
            sub_zones: vec![SubZoneFile {
                id: "z000_s0".to_owned(),
                name: "The Crowd".to_owned(),
            }],
            rooms: vec![
                room(
                    ROOM_A,
                    "Crowded Square",
                    "Shoulder to shoulder, everyone waits for something.",
                    ("north", ROOM_B),
                ),
                room(
                    ROOM_B,
                    "Side Lane",
                    "A narrow lane just off the square.",
                    ("south", ROOM_A),
                ),
            ],
        }],
    }
}

/// The run's load: the caller's players, windows and seed, moves only, everyone left in
/// the start room (A), the crowd's race margin.
pub fn load_args(base: &LoadArgs, crowd: &CrowdArgs) -> LoadArgs {
    LoadArgs {
        boundary_ms: crowd.boundary_ms,
        placement: Placement::None,
        workload: Workload {
            move_every: crowd.move_every,
            say_every: 0.0,
            global_every: 0.0,
            global_one_in: base.workload.global_one_in,
        },
        ..base.clone()
    }
}

pub async fn run(args: &ScenarioArgs, result: &mut ScenarioResult) -> Result<()> {
    let load = load_args(&args.load, &args.crowd);
    result.load = load.clone();
    fresh_work_dir(&args.work_dir)?;
    let stack = start_stack(args, result, &world(), SERVER_FLAGS).await?;
    let outcome = coordinate(
        &load,
        args.mode,
        &stack.target(),
        &args.work_dir,
        &stack.pid_file,
    )
    .await;
    stack.stop().await;
    let outcome = outcome?;
    let plan = outcome.plan.context("the run has no plan")?;
    let records = read_records(&args.work_dir, outcome.setup.worker_processes)?;
    result.crowd = Some(figures(&records, &plan));
    result.outcome = Some(outcome);
    result.status = "ok".into();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{BenchWorld, validate};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        scenario: ScenarioArgs,
    }

    #[test]
    fn the_crowd_takes_its_own_shape_and_keeps_the_callers_windows() {
        let cli = Cli::try_parse_from([
            "x",
            "--mode",
            "crowd",
            "--players",
            "100",
            "--duration",
            "20",
            "--warmup",
            "5",
            "--nats-server",
            "nats",
            "--work-dir",
            "w",
            "--out",
            "o",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let load = load_args(&cli.scenario.load, &cli.scenario.crowd);
        assert_eq!((load.players, load.duration, load.warmup), (100, 20.0, 5.0));
        assert_eq!(load.workload.move_every, 1.5);
        assert_eq!(
            (load.workload.say_every, load.workload.global_every),
            (0.0, 0.0)
        );
        assert_eq!(load.boundary_ms, 50);
        assert_eq!(load.placement, Placement::None);
        let cli = Cli::try_parse_from([
            "x",
            "--mode",
            "crowd",
            "--players",
            "10",
            "--crowd-move-every",
            "2",
            "--move-every",
            "7",
            "--nats-server",
            "nats",
            "--work-dir",
            "w",
            "--out",
            "o",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            load_args(&cli.scenario.load, &cli.scenario.crowd)
                .workload
                .move_every,
            2.0
        );
    }

    #[test]
    fn the_crowd_world_is_two_rooms_with_one_exit_each_way() {
        let generated = world();
        validate(&generated).unwrap_or_else(|e| panic!("{e:#}"));
        let w = BenchWorld::from_generated(&generated).unwrap_or_else(|e| panic!("{e:#}"));
        let (a, b) = (w.room_index(ROOM_A), w.room_index(ROOM_B));
        assert_eq!(Some(w.start), a);
        let (Some(a), Some(b)) = (a, b) else {
            panic!("rooms missing")
        };
        assert_eq!(w.exits[a as usize], vec![("north".to_owned(), b)]);
        assert_eq!(w.exits[b as usize], vec![("south".to_owned(), a)]);
    }
}
