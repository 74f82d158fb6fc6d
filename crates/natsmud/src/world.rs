//! The world: rooms, zones and sub-zones, loaded from JSON and validated once at startup.
//!
//! Layout of a world directory: `world.json` (`name`, `description`, `start_room`) and one
//! `zones/<zone>.json` per zone (`id`, `name`, `sub_zones`, `rooms`). The built-in world
//! under the repository's `world/` is embedded in the binary.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};
use natsmud_protocol::envelope::RoomView;
use natsmud_protocol::{Direction, RoomId, SubZoneId, ZoneId};
use serde::Deserialize;

static BUILT_IN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../world");

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("cannot read world file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("world file {file} is not valid: {source}")]
    Parse {
        file: String,
        source: serde_json::Error,
    },
    #[error("world file {file}: {problem}")]
    Invalid { file: String, problem: String },
}

#[derive(Debug, Clone)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub description: String,
    pub zone: ZoneId,
    pub sub_zone: SubZoneId,
    pub exits: BTreeMap<String, RoomId>,
}

impl Room {
    pub fn exit(&self, direction: Direction) -> Option<&RoomId> {
        self.exits.get(direction.name())
    }

    pub fn view(&self) -> RoomView {
        RoomView {
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            zone: self.zone.clone(),
            sub_zone: self.sub_zone.clone(),
            exits: self.exits.clone(),
        }
    }
}

#[derive(Debug)]
pub struct World {
    pub name: String,
    pub description: String,
    pub start_room: RoomId,
    rooms: HashMap<RoomId, Room>,
    sub_zone_rooms: HashMap<SubZoneId, Vec<RoomId>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorldFile {
    name: String,
    #[serde(default)]
    description: String,
    start_room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneFile {
    id: String,
    name: String,
    sub_zones: Vec<SubZoneFile>,
    rooms: Vec<RoomFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubZoneFile {
    id: String,
    #[allow(dead_code)]
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomFile {
    id: String,
    name: String,
    description: String,
    sub_zone: String,
    #[serde(default)]
    exits: BTreeMap<String, String>,
}

impl World {
    /// The world embedded in the binary.
    pub fn built_in() -> Result<Self, WorldError> {
        let mut files = Vec::new();
        let world_json = BUILT_IN
            .get_file("world.json")
            .map(|f| f.contents().to_vec())
            .unwrap_or_default();
        if let Some(zones) = BUILT_IN.get_dir("zones") {
            for file in zones.files() {
                files.push((
                    format!("world/{}", file.path().display()),
                    file.contents().to_vec(),
                ));
            }
        }
        Self::from_files(("world/world.json".to_owned(), world_json), files)
    }

    /// Loads `dir/world.json` and every `dir/zones/*.json`.
    pub fn load_dir(dir: &Path) -> Result<Self, WorldError> {
        let read = |path: PathBuf| {
            std::fs::read(&path).map_err(|source| WorldError::Read {
                file: path.display().to_string(),
                source,
            })
        };
        let world_path = dir.join("world.json");
        let world_json = read(world_path.clone())?;
        let zones_dir = dir.join("zones");
        let entries = std::fs::read_dir(&zones_dir).map_err(|source| WorldError::Read {
            file: zones_dir.display().to_string(),
            source,
        })?;
        let mut zone_paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| WorldError::Read {
                file: zones_dir.display().to_string(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                zone_paths.push(path);
            }
        }
        zone_paths.sort();
        let mut files = Vec::new();
        for path in zone_paths {
            let bytes = read(path.clone())?;
            files.push((path.display().to_string(), bytes));
        }
        Self::from_files((world_path.display().to_string(), world_json), files)
    }

    fn from_files(
        (world_name, world_bytes): (String, Vec<u8>),
        mut zone_files: Vec<(String, Vec<u8>)>,
    ) -> Result<Self, WorldError> {
        let header: WorldFile =
            serde_json::from_slice(&world_bytes).map_err(|source| WorldError::Parse {
                file: world_name.clone(),
                source,
            })?;
        zone_files.sort_by(|a, b| a.0.cmp(&b.0));
        if zone_files.is_empty() {
            return Err(WorldError::Invalid {
                file: world_name,
                problem: "no zone files under zones/".to_owned(),
            });
        }

        let mut rooms: HashMap<RoomId, Room> = HashMap::new();
        let mut room_file: HashMap<RoomId, String> = HashMap::new();
        let mut sub_zone_rooms: HashMap<SubZoneId, Vec<RoomId>> = HashMap::new();
        let mut zone_ids: HashMap<ZoneId, String> = HashMap::new();
        for (file, bytes) in &zone_files {
            let invalid = |problem: String| WorldError::Invalid {
                file: file.clone(),
                problem,
            };
            let zone: ZoneFile =
                serde_json::from_slice(bytes).map_err(|source| WorldError::Parse {
                    file: file.clone(),
                    source,
                })?;
            let zone_id = ZoneId::parse(&zone.id).map_err(|e| invalid(e.to_string()))?;
            if let Some(other) = zone_ids.insert(zone_id.clone(), file.clone()) {
                return Err(invalid(format!(
                    "zone {zone_id} is also defined in {other}"
                )));
            }
            if zone.name.trim().is_empty() {
                return Err(invalid(format!("zone {zone_id} has no name")));
            }
            let mut own_sub_zones = Vec::new();
            for sub_zone in &zone.sub_zones {
                let id = SubZoneId::parse(&sub_zone.id)
                    .map_err(|e| invalid(format!("in zone {zone_id}: {e}")))?;
                if sub_zone_rooms.contains_key(&id) {
                    return Err(invalid(format!("sub-zone {id} is defined twice")));
                }
                sub_zone_rooms.insert(id.clone(), Vec::new());
                own_sub_zones.push(id);
            }
            for raw in zone.rooms {
                let id = RoomId::parse(&raw.id).map_err(|e| invalid(e.to_string()))?;
                let room_problem = |problem: String| invalid(format!("room {id}: {problem}"));
                let sub_zone =
                    SubZoneId::parse(&raw.sub_zone).map_err(|e| room_problem(e.to_string()))?;
                if !own_sub_zones.contains(&sub_zone) {
                    return Err(room_problem(format!(
                        "sub_zone {sub_zone} is not one of zone {zone_id}'s sub_zones"
                    )));
                }
                if raw.name.trim().is_empty() {
                    return Err(room_problem("has no name".to_owned()));
                }
                let mut exits = BTreeMap::new();
                for (direction, target) in raw.exits {
                    match Direction::parse(&direction) {
                        Some(d) if d.name() == direction => {}
                        _ => {
                            return Err(room_problem(format!(
                                "exit {direction:?} is not a direction name (north, south, east, west, up, down, northeast, northwest, southeast, southwest)"
                            )));
                        }
                    }
                    let target = RoomId::parse(&target)
                        .map_err(|e| room_problem(format!("exit {direction}: {e}")))?;
                    exits.insert(direction, target);
                }
                if let Some(other) = room_file.insert(id.clone(), file.clone()) {
                    return Err(room_problem(format!("is also defined in {other}")));
                }
                sub_zone_rooms
                    .entry(sub_zone.clone())
                    .or_default()
                    .push(id.clone());
                rooms.insert(
                    id.clone(),
                    Room {
                        id,
                        name: raw.name,
                        description: raw.description,
                        zone: zone_id.clone(),
                        sub_zone,
                        exits,
                    },
                );
            }
        }

        for room in rooms.values() {
            for (direction, target) in &room.exits {
                if !rooms.contains_key(target) {
                    let file = room_file.get(&room.id).cloned().unwrap_or_default();
                    return Err(WorldError::Invalid {
                        file,
                        problem: format!(
                            "room {}: exit {direction} leads to {target}, which does not exist",
                            room.id
                        ),
                    });
                }
            }
        }
        let start_room = RoomId::parse(&header.start_room).map_err(|e| WorldError::Invalid {
            file: world_name.clone(),
            problem: format!("start_room: {e}"),
        })?;
        if !rooms.contains_key(&start_room) {
            return Err(WorldError::Invalid {
                file: world_name,
                problem: format!("start_room {start_room} does not exist"),
            });
        }
        Ok(Self {
            name: header.name,
            description: header.description,
            start_room,
            rooms,
            sub_zone_rooms,
        })
    }

    pub fn room(&self, id: &str) -> Option<&Room> {
        self.rooms.get(id)
    }

    pub fn start(&self) -> &Room {
        // `from_files` refuses a world whose start room is missing.
        &self.rooms[&self.start_room]
    }

    pub fn rooms_in_sub_zone(&self, sub_zone: &str) -> &[RoomId] {
        self.sub_zone_rooms
            .get(sub_zone)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Every room, in no particular order.
    pub fn rooms(&self) -> impl Iterator<Item = &Room> {
        self.rooms.values()
    }

    /// Every sub-zone with its rooms.
    pub fn sub_zones(&self) -> impl Iterator<Item = (&SubZoneId, &[RoomId])> {
        self.sub_zone_rooms
            .iter()
            .map(|(id, rooms)| (id, rooms.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(rooms: &str) -> (String, Vec<u8>) {
        (
            "zones/z.json".to_owned(),
            format!(r#"{{"id":"z","name":"Z","sub_zones":[{{"id":"z_a","name":"A"}}],"rooms":[{rooms}]}}"#)
                .into_bytes(),
        )
    }

    fn header(start: &str) -> (String, Vec<u8>) {
        (
            "world.json".to_owned(),
            format!(r#"{{"name":"W","start_room":"{start}"}}"#).into_bytes(),
        )
    }

    fn error_of(result: Result<World, WorldError>) -> String {
        match result {
            Ok(_) => panic!("the world should have been refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn built_in_world_loads() {
        let world = World::built_in().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            (30..=60).contains(&world.room_count()),
            "{}",
            world.room_count()
        );
        assert!(world.room(world.start_room.as_str()).is_some());
    }

    #[test]
    fn names_file_room_and_problem() {
        let r1 = r#"{"id":"r1","name":"One","description":"d","sub_zone":"z_a","exits":{"north":"nowhere"}}"#;
        let msg = error_of(World::from_files(header("r1"), vec![zone(r1)]));
        assert!(
            msg.contains("zones/z.json") && msg.contains("room r1") && msg.contains("nowhere"),
            "{msg}"
        );

        let bad_dir = r#"{"id":"r1","name":"One","description":"d","sub_zone":"z_a","exits":{"sideways":"r1"}}"#;
        let msg = error_of(World::from_files(header("r1"), vec![zone(bad_dir)]));
        assert!(msg.contains("sideways"), "{msg}");

        let bad_id = r#"{"id":"r.1","name":"One","description":"d","sub_zone":"z_a"}"#;
        let msg = error_of(World::from_files(header("r1"), vec![zone(bad_id)]));
        assert!(msg.contains("r.1"), "{msg}");

        let ok = r#"{"id":"r1","name":"One","description":"d","sub_zone":"z_a"}"#;
        let msg = error_of(World::from_files(header("r9"), vec![zone(ok)]));
        assert!(msg.contains("start_room r9"), "{msg}");
        assert!(World::from_files(header("r1"), vec![zone(ok)]).is_ok());
    }
}
