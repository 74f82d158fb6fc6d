//! The benchmark's generated world, and a reader for any world directory in the server's
//! format (`world.json` + `zones/*.json`, see `crates/natsmud/src/world.rs`).
//!
//! The generated world is a grid of rooms cut into zones of 10 × 10 rooms and sub-zones of
//! 5 × 5, sized for about [`PLAYERS_PER_ROOM`] players per room. Exits are grid
//! neighbours, always two-way; a seeded share of them is removed, never below two exits per
//! room and never disconnecting the world (a random spanning tree is always kept). The same
//! seed gives the same bytes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

use anyhow::{Context, Result, bail};
use natsmud_protocol::{Direction, RoomId, SubZoneId, ZoneId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Average density the standard workload asks for.
pub const PLAYERS_PER_ROOM: usize = 10;
/// Rooms per side of a full zone (a zone is 100 rooms).
const ZONE_SIDE: usize = 10;
/// Rooms per side of a sub-zone (a sub-zone is 25 rooms).
const SUB_SIDE: usize = 5;
/// Share of the non-spanning-tree exits removed (seeded), so the grid is not perfectly
/// regular; no room drops below two exits.
const REMOVE_SHARE: f64 = 0.2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorldFile {
    pub name: String,
    pub description: String,
    pub start_room: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneFile {
    pub id: String,
    pub name: String,
    pub sub_zones: Vec<SubZoneFile>,
    pub rooms: Vec<RoomFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubZoneFile {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomFile {
    pub id: String,
    pub name: String,
    pub description: String,
    pub sub_zone: String,
    #[serde(default)]
    pub exits: BTreeMap<String, String>,
}

/// A generated world, ready to be written.
#[derive(Debug, Clone)]
pub struct Generated {
    pub world: WorldFile,
    pub zones: Vec<ZoneFile>,
}

impl Generated {
    pub fn room_count(&self) -> usize {
        self.zones.iter().map(|z| z.rooms.len()).sum()
    }

    /// Writes `dir/world.json` and `dir/zones/<zone>.json`, replacing what was there.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let zones_dir = dir.join("zones");
        if zones_dir.exists() {
            std::fs::remove_dir_all(&zones_dir)
                .with_context(|| format!("removing {}", zones_dir.display()))?;
        }
        std::fs::create_dir_all(&zones_dir)
            .with_context(|| format!("creating {}", zones_dir.display()))?;
        let world_path = dir.join("world.json");
        std::fs::write(&world_path, serde_json::to_vec_pretty(&self.world)?)
            .with_context(|| format!("writing {}", world_path.display()))?;
        for zone in &self.zones {
            let path = zones_dir.join(format!("{}.json", zone.id));
            std::fs::write(&path, serde_json::to_vec(zone)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// How many rooms, and in which blocks, for `players` players.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub zones: usize,
    /// Zone blocks per row of the zone grid.
    pub zone_columns: usize,
    /// Width and height of one zone block, in rooms.
    pub block_w: usize,
    pub block_h: usize,
}

impl Layout {
    pub fn for_players(players: usize) -> Self {
        let rooms = players.div_ceil(PLAYERS_PER_ROOM).max(4);
        if rooms < ZONE_SIDE * ZONE_SIDE {
            // One zone, smaller than 100 rooms, as square as possible and at least 2 × 2.
            let w = ((rooms as f64).sqrt().ceil() as usize).max(2);
            let h = rooms.div_ceil(w).max(2);
            return Self {
                zones: 1,
                zone_columns: 1,
                block_w: w,
                block_h: h,
            };
        }
        let zones = ((rooms as f64) / 100.0).round().max(1.0) as usize;
        let zone_columns = (zones as f64).sqrt().ceil() as usize;
        Self {
            zones,
            zone_columns,
            block_w: ZONE_SIDE,
            block_h: ZONE_SIDE,
        }
    }

    pub fn rooms(&self) -> usize {
        self.zones * self.block_w * self.block_h
    }

    fn sub_columns(&self) -> usize {
        self.block_w.div_ceil(SUB_SIDE)
    }

    fn sub_zones_per_zone(&self) -> usize {
        self.sub_columns() * self.block_h.div_ceil(SUB_SIDE)
    }

    /// Global grid coordinates of room `local` of zone `zone`.
    fn coords(&self, zone: usize, local: usize) -> (usize, usize) {
        let (zx, zy) = (zone % self.zone_columns, zone / self.zone_columns);
        let (lx, ly) = (local % self.block_w, local / self.block_w);
        (zx * self.block_w + lx, zy * self.block_h + ly)
    }

    /// The room at global grid coordinates, as (zone, local), if there is one.
    fn at(&self, gx: usize, gy: usize) -> Option<(usize, usize)> {
        let (zx, zy) = (gx / self.block_w, gy / self.block_h);
        if zx >= self.zone_columns {
            return None;
        }
        let zone = zy * self.zone_columns + zx;
        if zone >= self.zones {
            return None;
        }
        let (lx, ly) = (gx % self.block_w, gy % self.block_h);
        Some((zone, ly * self.block_w + lx))
    }
}

fn zone_id(zone: usize) -> String {
    format!("z{zone:03}")
}

fn sub_zone_id(zone: usize, sub: usize) -> String {
    format!("z{zone:03}_s{sub}")
}

fn room_id(zone: usize, local: usize) -> String {
    format!("z{zone:03}_r{local:03}")
}

const ADJECTIVES: &[&str] = &[
    "Foggy", "Narrow", "Lamplit", "Crooked", "Quiet", "Muddy", "Cobbled", "Windy", "Tarred",
    "Sunken", "Salt", "Old", "Leaning", "Mossy", "Bright", "Hollow",
];
const NOUNS: &[&str] = &[
    "Lane", "Court", "Yard", "Alley", "Row", "Steps", "Square", "Walk", "Passage", "Wharf",
    "Close", "Corner", "Market", "Bridge", "Gate", "Terrace",
];
const DETAILS: &[&str] = &[
    "Gulls argue on the rooftops.",
    "A lamp hisses on its iron post.",
    "Puddles hold the grey sky.",
    "Someone has chalked a map on the wall.",
    "The smell of tar drifts from the river.",
    "A cat watches from a windowsill.",
    "Washing hangs between the houses.",
    "Footsteps echo from somewhere close.",
];

/// The seeded world for `players` players.
pub fn generate(players: usize, seed: u64) -> Generated {
    let layout = Layout::for_players(players);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e61_7473_6d75_6400);
    let rooms = layout.rooms();
    let per_zone = layout.block_w * layout.block_h;
    let index = |zone: usize, local: usize| zone * per_zone + local;

    // Every grid edge once, as (room, room, direction from the first to the second).
    let mut edges: Vec<(usize, usize, Direction)> = Vec::new();
    for zone in 0..layout.zones {
        for local in 0..per_zone {
            let (gx, gy) = layout.coords(zone, local);
            if let Some((z, l)) = layout.at(gx + 1, gy) {
                edges.push((index(zone, local), index(z, l), Direction::East));
            }
            if let Some((z, l)) = layout.at(gx, gy + 1) {
                edges.push((index(zone, local), index(z, l), Direction::South));
            }
        }
    }
    edges.shuffle(&mut rng);
    // A random spanning tree (Kruskal over shuffled edges) is always kept.
    let mut parent: Vec<usize> = (0..rooms).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut in_tree = vec![false; edges.len()];
    for (i, &(a, b, _)) in edges.iter().enumerate() {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            parent[ra] = rb;
            in_tree[i] = true;
        }
    }
    let mut degree = vec![0usize; rooms];
    for &(a, b, _) in &edges {
        degree[a] += 1;
        degree[b] += 1;
    }
    let mut kept = vec![true; edges.len()];
    for (i, &(a, b, _)) in edges.iter().enumerate() {
        if !in_tree[i] && degree[a] > 2 && degree[b] > 2 && rng.random_bool(REMOVE_SHARE) {
            kept[i] = false;
            degree[a] -= 1;
            degree[b] -= 1;
        }
    }
    let mut exits: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); rooms];
    let id_of = |i: usize| room_id(i / per_zone, i % per_zone);
    for (i, &(a, b, direction)) in edges.iter().enumerate() {
        if kept[i] {
            exits[a].insert(direction.name().to_owned(), id_of(b));
            exits[b].insert(direction.opposite().name().to_owned(), id_of(a));
        }
    }

    let sub_columns = layout.sub_columns();
    let mut zones = Vec::with_capacity(layout.zones);
    for zone in 0..layout.zones {
        let sub_zones = (0..layout.sub_zones_per_zone())
            .map(|s| SubZoneFile {
                id: sub_zone_id(zone, s),
                name: format!("Quarter {} of District {}", s + 1, zone + 1),
            })
            .collect();
        let mut zone_rooms = Vec::with_capacity(per_zone);
        for local in 0..per_zone {
            let (lx, ly) = (local % layout.block_w, local / layout.block_w);
            let sub = (ly / SUB_SIDE) * sub_columns + lx / SUB_SIDE;
            let name = format!(
                "{} {}",
                ADJECTIVES[rng.random_range(0..ADJECTIVES.len())],
                NOUNS[rng.random_range(0..NOUNS.len())]
            );
            let description = format!(
                "A {} in district {}. {}",
                name.to_ascii_lowercase(),
                zone + 1,
                DETAILS[rng.random_range(0..DETAILS.len())]
            );
            zone_rooms.push(RoomFile {
                id: room_id(zone, local),
                name,
                description,
                sub_zone: sub_zone_id(zone, sub),
                exits: std::mem::take(&mut exits[index(zone, local)]),
            });
        }
        zones.push(ZoneFile {
            id: zone_id(zone),
            name: format!("District {}", zone + 1),
            sub_zones,
            rooms: zone_rooms,
        });
    }

    // Start in the room nearest the middle of the grid.
    let zone_rows = layout.zones.div_ceil(layout.zone_columns);
    let (mid_x, mid_y) = (
        layout.zone_columns * layout.block_w / 2,
        zone_rows * layout.block_h / 2,
    );
    let start = (0..rooms)
        .min_by_key(|&i| {
            let (x, y) = layout.coords(i / per_zone, i % per_zone);
            x.abs_diff(mid_x) + y.abs_diff(mid_y)
        })
        .unwrap_or(0);
    Generated {
        world: WorldFile {
            name: format!("natsmud benchmark world ({players} players, seed {seed})"),
            description: format!(
                "A generated grid of {rooms} rooms in {} zones, for about {PLAYERS_PER_ROOM} players per room.",
                layout.zones
            ),
            start_room: id_of(start),
        },
        zones,
    }
}

/// A world read back for the load generator: rooms by index (ids sorted), their exits and
/// sub-zones, and shortest paths for walking.
#[derive(Debug, Clone)]
pub struct BenchWorld {
    pub ids: Vec<String>,
    pub index: HashMap<String, u32>,
    /// Exits of each room: (direction name, target room index).
    pub exits: Vec<Vec<(String, u32)>>,
    pub start: u32,
    pub zones: usize,
    pub sub_zones: usize,
}

impl BenchWorld {
    pub fn load(dir: &Path) -> Result<Self> {
        let world_path = dir.join("world.json");
        let header: WorldFile = serde_json::from_slice(
            &std::fs::read(&world_path)
                .with_context(|| format!("reading {}", world_path.display()))?,
        )
        .with_context(|| format!("parsing {}", world_path.display()))?;
        let zones_dir = dir.join("zones");
        let mut paths: Vec<_> = std::fs::read_dir(&zones_dir)
            .with_context(|| format!("reading {}", zones_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        let mut zones = Vec::new();
        for path in &paths {
            let zone: ZoneFile = serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("parsing {}", path.display()))?;
            zones.push(zone);
        }
        Self::from_files(&header, &zones)
    }

    #[cfg(test)]
    pub fn from_generated(generated: &Generated) -> Result<Self> {
        Self::from_files(&generated.world, &generated.zones)
    }

    fn from_files(header: &WorldFile, zones: &[ZoneFile]) -> Result<Self> {
        let mut ids: Vec<String> = zones
            .iter()
            .flat_map(|z| z.rooms.iter().map(|r| r.id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        let index: HashMap<String, u32> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let mut exits = vec![Vec::new(); ids.len()];
        for room in zones.iter().flat_map(|z| z.rooms.iter()) {
            let Some(&from) = index.get(&room.id) else {
                continue;
            };
            for (direction, target) in &room.exits {
                let Some(&to) = index.get(target) else {
                    bail!(
                        "room {}: exit {direction} leads to unknown {target}",
                        room.id
                    );
                };
                exits[from as usize].push((direction.clone(), to));
            }
        }
        let Some(&start) = index.get(&header.start_room) else {
            bail!("start room {} is not in any zone", header.start_room);
        };
        if ids.is_empty() {
            bail!("the world has no rooms");
        }
        Ok(Self {
            ids,
            index,
            exits,
            start,
            zones: zones.len(),
            sub_zones: zones.iter().map(|z| z.sub_zones.len()).sum(),
        })
    }

    pub fn room_count(&self) -> usize {
        self.ids.len()
    }

    pub fn room_index(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The directions of a shortest path from `from` to `to` (empty when equal, `None` when
    /// unreachable).
    pub fn path(&self, from: u32, to: u32) -> Option<Vec<String>> {
        if from == to {
            return Some(Vec::new());
        }
        let n = self.ids.len();
        let mut previous: Vec<Option<(u32, usize)>> = vec![None; n];
        let mut seen = vec![false; n];
        let mut queue = VecDeque::from([from]);
        seen[from as usize] = true;
        while let Some(room) = queue.pop_front() {
            for (k, &(_, next)) in self.exits[room as usize].iter().enumerate() {
                if seen[next as usize] {
                    continue;
                }
                seen[next as usize] = true;
                previous[next as usize] = Some((room, k));
                if next == to {
                    let mut path = Vec::new();
                    let mut at = to;
                    while let Some((back, k)) = previous[at as usize] {
                        path.push(self.exits[back as usize][k].0.clone());
                        at = back;
                        if at == from {
                            break;
                        }
                    }
                    path.reverse();
                    return Some(path);
                }
                queue.push_back(next);
            }
        }
        None
    }
}

/// Checks what the server's loader checks, so a generated world is known good before a
/// server is started on it: valid ids, known directions, existing targets, known sub-zones.
pub fn validate(generated: &Generated) -> Result<()> {
    let mut all_rooms = std::collections::HashSet::new();
    for zone in &generated.zones {
        ZoneId::parse(&zone.id).map_err(|e| anyhow::anyhow!("{e}"))?;
        for room in &zone.rooms {
            RoomId::parse(&room.id).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !all_rooms.insert(room.id.clone()) {
                bail!("room {} is defined twice", room.id);
            }
        }
    }
    for zone in &generated.zones {
        let subs: Vec<&str> = zone.sub_zones.iter().map(|s| s.id.as_str()).collect();
        for s in &subs {
            SubZoneId::parse(s).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for room in &zone.rooms {
            if !subs.contains(&room.sub_zone.as_str()) {
                bail!("room {}: unknown sub-zone {}", room.id, room.sub_zone);
            }
            for (direction, target) in &room.exits {
                if Direction::parse(direction).map(|d| d.name()) != Some(direction.as_str()) {
                    bail!("room {}: bad direction {direction}", room.id);
                }
                if !all_rooms.contains(target) {
                    bail!("room {}: exit to unknown {target}", room.id);
                }
            }
        }
    }
    if !all_rooms.contains(&generated.world.start_room) {
        bail!("start room {} does not exist", generated.world.start_room);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(g: &Generated) -> Vec<u8> {
        let mut out = serde_json::to_vec(&g.world).unwrap_or_default();
        for z in &g.zones {
            out.extend(serde_json::to_vec(z).unwrap_or_default());
        }
        out
    }

    #[test]
    fn same_seed_same_world_other_seed_other_world() {
        let a = generate(2_000, 7);
        let b = generate(2_000, 7);
        let c = generate(2_000, 8);
        assert_eq!(bytes_of(&a), bytes_of(&b));
        assert_ne!(bytes_of(&a), bytes_of(&c));
    }

    #[test]
    fn sizes_follow_the_standard_workload() {
        assert_eq!(generate(20_000, 1).room_count(), 2_000);
        assert_eq!(generate(20_000, 1).zones.len(), 20);
        assert_eq!(generate(100_000, 1).room_count(), 10_000);
        assert_eq!(generate(1_000, 1).room_count(), 100);
        let small = generate(200, 1);
        assert_eq!(small.room_count(), 20);
        assert_eq!(small.zones.len(), 1);
        let g = generate(5_000, 3);
        for zone in &g.zones {
            assert_eq!(zone.rooms.len(), 100);
            assert_eq!(zone.sub_zones.len(), 4);
            let mut per_sub: HashMap<&str, usize> = HashMap::new();
            for room in &zone.rooms {
                *per_sub.entry(room.sub_zone.as_str()).or_default() += 1;
            }
            assert!(per_sub.values().all(|&n| n == 25), "{per_sub:?}");
        }
    }

    #[test]
    fn exits_are_two_to_four_two_way_and_connected() {
        for (players, seed) in [(200, 1), (1_000, 2), (7_000, 3), (20_000, 4), (37, 5)] {
            let g = generate(players, seed);
            validate(&g).unwrap_or_else(|e| panic!("{players}: {e}"));
            let world = BenchWorld::from_generated(&g).unwrap_or_else(|e| panic!("{e}"));
            for (room, exits) in world.exits.iter().enumerate() {
                assert!(
                    (2..=4).contains(&exits.len()),
                    "{players}: room {} has {} exits",
                    world.ids[room],
                    exits.len()
                );
                for (direction, to) in exits {
                    let back = Direction::parse(direction)
                        .map(|d| d.opposite().name())
                        .unwrap_or_default();
                    assert!(
                        world.exits[*to as usize]
                            .iter()
                            .any(|(d, r)| d == back && *r as usize == room),
                        "exit {direction} of {} is one-way",
                        world.ids[room]
                    );
                }
            }
            for room in 0..world.room_count() as u32 {
                assert!(world.path(world.start, room).is_some(), "unreachable");
            }
        }
    }

    #[test]
    fn paths_walk_to_the_target() {
        let g = generate(3_000, 11);
        let world = BenchWorld::from_generated(&g).unwrap_or_else(|e| panic!("{e}"));
        let target = (world.room_count() - 1) as u32;
        let path = world
            .path(world.start, target)
            .unwrap_or_else(|| panic!("no path"));
        let mut at = world.start;
        for step in &path {
            at = world.exits[at as usize]
                .iter()
                .find(|(d, _)| d == step)
                .map(|(_, r)| *r)
                .unwrap_or_else(|| panic!("bad step"));
        }
        assert_eq!(at, target);
        assert_eq!(world.path(3, 3), Some(Vec::new()));
    }

    #[test]
    fn written_world_reads_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let g = generate(1_500, 9);
        g.write(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let world = BenchWorld::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(world.room_count(), g.room_count());
        assert_eq!(world.ids[world.start as usize], g.world.start_room);
    }
}
