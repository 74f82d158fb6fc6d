//! NATS subjects. [`Subject::render`] is the only code that builds a subject and
//! [`Subject::parse`] the only code that reads one, so publisher and subscriber cannot drift.

use std::fmt;

use crate::ids::{PlayerId, RoomId, SubZoneId, is_subject_token};

/// An optional prefix put in front of every subject so several worlds can share one NATS.
/// Empty by default; otherwise dot-separated tokens of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectPrefix(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "subject prefix {0:?} must be dot-separated tokens of letters, digits, '_' and '-' (or empty)"
)]
pub struct BadPrefix(pub String);

impl SubjectPrefix {
    pub fn parse(value: &str) -> Result<Self, BadPrefix> {
        if value.is_empty() || value.split('.').all(is_subject_token) {
            Ok(Self(value.to_owned()))
        } else {
            Err(BadPrefix(value.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn under(&self, pattern: &str) -> String {
        if self.0.is_empty() {
            pattern.to_owned()
        } else {
            format!("{}.{pattern}", self.0)
        }
    }

    /// The JetStream stream that keeps this world's events, so that a client can resume
    /// from a position: named after the prefix, so worlds sharing a NATS never share it.
    pub fn stream_name(&self) -> String {
        if self.0.is_empty() {
            "natsmud_events".to_owned()
        } else {
            format!("natsmud_events_{}", self.0.replace('.', "_"))
        }
    }

    /// What the stream captures: every subject a [`Subject`] renders to.
    pub fn stream_subjects(&self) -> Vec<String> {
        vec![self.under("events.>"), self.under("chat.>")]
    }

    /// The subjects a player's view is made of, as filters for reading the stream back: its
    /// room's events and speech, its sub-zone's local chat, global chat, system notices and
    /// whispers to it. JetStream refuses overlapping filters, and a room's `chat.*.{room}`
    /// overlaps a sub-zone or a whisper subject with the same id: then the room's filter
    /// brings those too.
    pub fn view_filters(
        &self,
        room: &RoomId,
        sub_zone: &SubZoneId,
        player: &PlayerId,
    ) -> Vec<String> {
        let room = room.as_str();
        let mut filters = vec![
            self.under(&format!("events.*.{room}")),
            self.under(&format!("chat.*.{room}")),
            self.under("chat.global"),
            self.under("chat.system"),
        ];
        if sub_zone.as_str() != room {
            filters.push(self.under(&format!("chat.local.{sub_zone}")));
        }
        if player.as_str() != room {
            filters.push(self.under(&format!("chat.whisper.{player}")));
        }
        filters
    }
}

/// Where the world's stream republishes each event it stores (`{LIVE_ROOT}.{subject}`),
/// with its stream sequence in the `Nats-Sequence` header: nodes listen there, so every
/// event they deliver has its position.
pub const LIVE_ROOT: &str = "natsmud_live";

/// The republished form of `subject` (see [`LIVE_ROOT`]).
pub fn live(subject: &str) -> String {
    format!("{LIVE_ROOT}.{subject}")
}

/// A part of the world a receiving node listens to. A node that subscribes by interest
/// listens to [`Interest::World`] always and to each room and sub-zone where it has
/// players; one that subscribes to [`Interest::Everything`] hears the whole world.
///
/// Every pattern names the world's own subjects only, so other traffic on a shared NATS
/// never reaches (or floods) the node. A room is one subscription, `*.*.{room}` under the
/// prefix, so its `events.` and `chat.` subjects come in the order each publisher sent them
/// (NATS keeps a publisher's order within a subscription). That pattern can also match a
/// sub-zone's local chat or a whisper whose id happens to equal the room's, which reach the
/// node through their own subscriptions too: a node keeps a message only from an interest
/// that [`carries`](Interest::carries) it, so nothing arrives twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interest {
    /// A room's events and speech.
    Room(String),
    /// A sub-zone's local chat.
    SubZone(String),
    /// What every node needs whoever its players are: ticks, global chat, system notices
    /// and whispers (a whisper subscription per player would cost more memory than the
    /// whispers to other nodes' players cost to drop).
    World,
    /// Every subject of the world.
    Everything,
}

impl Interest {
    /// The subscriptions that bring this interest's subjects.
    pub fn patterns(&self, prefix: &SubjectPrefix) -> Vec<String> {
        let under = |pattern: &str| {
            if prefix.0.is_empty() {
                pattern.to_owned()
            } else {
                format!("{}.{pattern}", prefix.0)
            }
        };
        match self {
            Self::Room(room) => vec![under(&format!("*.*.{room}"))],
            Self::SubZone(sub_zone) => vec![under(&format!("chat.local.{sub_zone}"))],
            Self::World => vec![
                under("events.game_tick"),
                under("chat.global"),
                under("chat.system"),
                under("chat.whisper.*"),
            ],
            // With a prefix one subscription keeps the order NATS sends everything in.
            // Without one the world is two families, and a room's events travel in both:
            // NATS keeps a publisher's order per subscription only, so every natsmud
            // publisher stamps its messages with [`ORDER_HEADER`] and the receiving node
            // puts each publisher's messages back in order across the two.
            Self::Everything if prefix.0.is_empty() => {
                vec!["events.>".to_owned(), "chat.>".to_owned()]
            }
            Self::Everything => vec![format!("{}.>", prefix.0)],
        }
    }

    /// The subscriptions that bring this interest's events as the world's stream
    /// republishes them (see [`LIVE_ROOT`]).
    pub fn live_patterns(&self, prefix: &SubjectPrefix) -> Vec<String> {
        self.patterns(prefix).iter().map(|p| live(p)).collect()
    }

    /// Whether `subject` is one this interest is for.
    pub fn carries(&self, subject: &Subject<'_>) -> bool {
        match self {
            Self::Room(room) => subject.room() == Some(room.as_str()),
            Self::SubZone(sub_zone) => *subject == Subject::Local(sub_zone),
            Self::World => matches!(
                subject,
                Subject::GameTick | Subject::Global | Subject::System | Subject::Whisper(_)
            ),
            Self::Everything => true,
        }
    }

    /// The interest that carries `subject`, of those a node subscribing by interest has.
    pub fn of(subject: &Subject<'_>) -> Self {
        match *subject {
            Subject::Local(sub_zone) => Self::SubZone(sub_zone.to_owned()),
            Subject::GameTick | Subject::Global | Subject::System | Subject::Whisper(_) => {
                Self::World
            }
            Subject::PlayerEntered(room)
            | Subject::PlayerLeft(room)
            | Subject::Say(room)
            | Subject::Emote(room)
            | Subject::Pose(room) => Self::Room(room.to_owned()),
        }
    }
}

/// The NATS header natsmud publishers put on every event: `{origin}.{n}`, where `origin`
/// names the publishing process and `n` counts its publishes in the order they go out.
pub const ORDER_HEADER: &str = "Natsmud-Order";

/// The `(origin, n)` of an [`ORDER_HEADER`] value.
pub fn parse_order(value: &str) -> Option<(&str, u64)> {
    let (origin, n) = value.rsplit_once('.')?;
    if origin.is_empty() {
        return None;
    }
    Some((origin, n.parse().ok()?))
}

/// Every subject natsmud publishes to. Ids are borrowed `&str` so that a subscriber can
/// parse without allocating; constructors take the validated id types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject<'a> {
    PlayerEntered(&'a str),
    PlayerLeft(&'a str),
    GameTick,
    Say(&'a str),
    Emote(&'a str),
    Pose(&'a str),
    Local(&'a str),
    Global,
    Whisper(&'a str),
    System,
}

impl<'a> Subject<'a> {
    pub fn player_entered(room: &'a RoomId) -> Self {
        Self::PlayerEntered(room.as_str())
    }
    pub fn player_left(room: &'a RoomId) -> Self {
        Self::PlayerLeft(room.as_str())
    }
    pub fn say(room: &'a RoomId) -> Self {
        Self::Say(room.as_str())
    }
    pub fn emote(room: &'a RoomId) -> Self {
        Self::Emote(room.as_str())
    }
    pub fn pose(room: &'a RoomId) -> Self {
        Self::Pose(room.as_str())
    }
    pub fn local(sub_zone: &'a SubZoneId) -> Self {
        Self::Local(sub_zone.as_str())
    }
    pub fn whisper(target: &'a PlayerId) -> Self {
        Self::Whisper(target.as_str())
    }

    /// The room whose members receive this subject, for room events.
    pub fn room(&self) -> Option<&'a str> {
        match *self {
            Self::PlayerEntered(r) | Self::PlayerLeft(r) | Self::Say(r) | Self::Emote(r) => Some(r),
            Self::Pose(r) => Some(r),
            _ => None,
        }
    }

    fn parts(&self) -> (&'static str, Option<&'a str>) {
        match *self {
            Self::PlayerEntered(r) => ("events.player_entered", Some(r)),
            Self::PlayerLeft(r) => ("events.player_left", Some(r)),
            Self::GameTick => ("events.game_tick", None),
            Self::Say(r) => ("chat.say", Some(r)),
            Self::Emote(r) => ("chat.emote", Some(r)),
            Self::Pose(r) => ("chat.pose", Some(r)),
            Self::Local(z) => ("chat.local", Some(z)),
            Self::Global => ("chat.global", None),
            Self::Whisper(p) => ("chat.whisper", Some(p)),
            Self::System => ("chat.system", None),
        }
    }

    /// The subject string, with the world's prefix.
    pub fn render(&self, prefix: &SubjectPrefix) -> String {
        let (stem, id) = self.parts();
        let mut out = String::with_capacity(prefix.0.len() + stem.len() + 66);
        if !prefix.0.is_empty() {
            out.push_str(&prefix.0);
            out.push('.');
        }
        out.push_str(stem);
        if let Some(id) = id {
            out.push('.');
            out.push_str(id);
        }
        out
    }

    /// Reads back a subject as the world's stream republishes it (see [`LIVE_ROOT`]).
    pub fn parse_live(prefix: &SubjectPrefix, subject: &'a str) -> Option<Self> {
        let original = subject.strip_prefix(LIVE_ROOT)?.strip_prefix('.')?;
        Self::parse(prefix, original)
    }

    /// Reads a subject back; `None` for anything natsmud did not build (including ids that
    /// are not valid subject tokens).
    pub fn parse(prefix: &SubjectPrefix, subject: &'a str) -> Option<Self> {
        let rest = if prefix.0.is_empty() {
            subject
        } else {
            subject.strip_prefix(prefix.0.as_str())?.strip_prefix('.')?
        };
        let (family, rest) = rest.split_once('.')?;
        let (kind, id) = match rest.split_once('.') {
            Some((kind, id)) => (kind, Some(id)),
            None => (rest, None),
        };
        if let Some(id) = id
            && !is_subject_token(id)
        {
            return None;
        }
        Some(match (family, kind, id) {
            ("events", "player_entered", Some(r)) => Self::PlayerEntered(r),
            ("events", "player_left", Some(r)) => Self::PlayerLeft(r),
            ("events", "game_tick", None) => Self::GameTick,
            ("chat", "say", Some(r)) => Self::Say(r),
            ("chat", "emote", Some(r)) => Self::Emote(r),
            ("chat", "pose", Some(r)) => Self::Pose(r),
            ("chat", "local", Some(z)) => Self::Local(z),
            ("chat", "global", None) => Self::Global,
            ("chat", "whisper", Some(p)) => Self::Whisper(p),
            ("chat", "system", None) => Self::System,
            _ => return None,
        })
    }
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&SubjectPrefix::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(id: &str) -> Vec<Subject<'_>> {
        vec![
            Subject::PlayerEntered(id),
            Subject::PlayerLeft(id),
            Subject::GameTick,
            Subject::Say(id),
            Subject::Emote(id),
            Subject::Pose(id),
            Subject::Local(id),
            Subject::Global,
            Subject::Whisper(id),
            Subject::System,
        ]
    }

    #[test]
    fn renders_the_design_subjects() {
        let room = RoomId::parse("r_1").unwrap_or_else(|e| panic!("{e}"));
        let none = SubjectPrefix::default();
        assert_eq!(
            Subject::player_entered(&room).render(&none),
            "events.player_entered.r_1"
        );
        assert_eq!(Subject::GameTick.render(&none), "events.game_tick");
        assert_eq!(Subject::Whisper("p-9").render(&none), "chat.whisper.p-9");
        let world = SubjectPrefix::parse("w1.eu").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Subject::Say("r_1").render(&world), "w1.eu.chat.say.r_1");
    }

    /// NATS's own matching: `*` is one token, `>` the rest.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut subject = subject.split('.');
        for token in pattern.split('.') {
            match (token, subject.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (t, Some(s)) if t == s => {}
                _ => return false,
            }
        }
        subject.next().is_none()
    }

    fn foreign() -> [&'static str; 6] {
        [
            "foo.bar",
            "other.app.data",
            "_INBOX.x.y",
            "events",
            "orders.created",
            "a.b.c.d",
        ]
    }

    /// Subjects of other applications: under a prefix, the whole namespace below it is the
    /// world's, so a subject there is not foreign.
    fn foreign_to(prefix: &SubjectPrefix) -> Vec<&'static str> {
        let ours = format!("{}.", prefix.as_str());
        foreign()
            .into_iter()
            .filter(|subject| prefix.as_str().is_empty() || !subject.starts_with(&ours))
            .collect()
    }

    proptest! {
        /// Listening to everything, each subject reaches a node on exactly one
        /// subscription, and only the world's own subjects reach it.
        #[test]
        fn everything_brings_each_subject_once(id in "[A-Za-z0-9_-]{1,20}", prefix in "([a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2})?") {
            let prefix = SubjectPrefix::parse(&prefix).unwrap_or_else(|e| panic!("{e}"));
            let feeds = Interest::Everything.patterns(&prefix);
            for subject in all(&id) {
                let rendered = subject.render(&prefix);
                let carrying = feeds
                    .iter()
                    .filter(|feed| nats_matches(feed, &rendered))
                    .count();
                prop_assert_eq!(carrying, 1, "{}", rendered);
            }
            for foreign in foreign_to(&prefix) {
                let matched = feeds.iter().any(|feed| nats_matches(feed, foreign));
                prop_assert!(!matched, "{}", foreign);
            }
        }

        /// Listening by interest, each subject is carried by exactly one of the interests
        /// whose patterns match it — the one [`Interest::of`] names — however ids collide,
        /// so nothing is kept twice; and with a prefix nothing foreign matches at all.
        #[test]
        fn each_subject_is_kept_from_exactly_one_interest(id in "[A-Za-z0-9_-]{1,20}", prefix in "([a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2})?") {
            let prefix = SubjectPrefix::parse(&prefix).unwrap_or_else(|e| panic!("{e}"));
            // A room, a sub-zone and a player that all share one id.
            let interests = [
                Interest::Room(id.clone()),
                Interest::SubZone(id.clone()),
                Interest::World,
            ];
            for subject in all(&id) {
                let rendered = subject.render(&prefix);
                let keeping: Vec<&Interest> = interests
                    .iter()
                    .filter(|interest| {
                        interest.patterns(&prefix).iter().any(|p| nats_matches(p, &rendered))
                            && interest.carries(&subject)
                    })
                    .collect();
                let expected = Interest::of(&subject);
                prop_assert_eq!(keeping, vec![&expected], "{}", rendered);
            }
            if !prefix.as_str().is_empty() {
                for foreign in foreign_to(&prefix) {
                    let matched = interests
                        .iter()
                        .flat_map(|interest| interest.patterns(&prefix))
                        .any(|feed| nats_matches(&feed, foreign));
                    prop_assert!(!matched, "{}", foreign);
                }
            }
        }
    }

    #[test]
    fn live_subjects_read_back_and_a_view_never_overlaps() {
        let prefix = SubjectPrefix::parse("w1").unwrap_or_else(|e| panic!("{e}"));
        let say = Subject::Say("r1").render(&prefix);
        assert_eq!(
            Subject::parse_live(&prefix, &live(&say)),
            Some(Subject::Say("r1"))
        );
        assert_eq!(Subject::parse_live(&prefix, &say), None);
        assert_eq!(prefix.stream_name(), "natsmud_events_w1");
        let id = |s: &str| RoomId::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let zone = |s: &str| SubZoneId::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let player = |s: &str| PlayerId::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            prefix
                .view_filters(&id("r1"), &zone("z"), &player("p"))
                .len(),
            6
        );
        let shared = prefix.view_filters(&id("x"), &zone("x"), &player("x"));
        assert_eq!(shared.len(), 4, "{shared:?}");
        for filter in &shared {
            let others = shared.iter().filter(|f| *f != filter);
            for other in others {
                assert!(
                    !(nats_matches(filter, other) || nats_matches(other, filter)),
                    "{filter} {other}"
                );
            }
        }
    }

    #[test]
    fn order_stamps_read_back() {
        assert_eq!(parse_order("node-7.42"), Some(("node-7", 42)));
        assert_eq!(parse_order("a.b.c.9"), Some(("a.b.c", 9)));
        assert_eq!(parse_order("nonumber"), None);
        assert_eq!(parse_order(".5"), None);
        assert_eq!(parse_order("x.-1"), None);
    }

    #[test]
    fn refuses_foreign_subjects() {
        let none = SubjectPrefix::default();
        for s in [
            "_INBOX.abc.def",
            "events.player_entered",
            "chat.say.a.b",
            "chat.global.x",
            "x",
        ] {
            assert_eq!(Subject::parse(&none, s), None, "{s}");
        }
        let world = SubjectPrefix::parse("w1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Subject::parse(&world, "events.game_tick"), None);
        assert_eq!(Subject::parse(&world, "w1x.events.game_tick"), None);
        assert_eq!(
            Subject::parse(&world, "w1.events.game_tick"),
            Some(Subject::GameTick)
        );
    }

    proptest! {
        #[test]
        fn parse_inverts_render(id in "[A-Za-z0-9_-]{1,64}", prefix in "([a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2})?") {
            let prefix = SubjectPrefix::parse(&prefix).unwrap_or_else(|e| panic!("{e}"));
            for subject in all(&id) {
                let rendered = subject.render(&prefix);
                prop_assert_eq!(Subject::parse(&prefix, &rendered), Some(subject));
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Subject::parse(&SubjectPrefix::default(), &s);
        }
    }
}
