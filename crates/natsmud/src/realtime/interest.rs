//! What this node listens to on NATS. By interest (the default), it subscribes to what
//! every node needs ([`Interest::World`]: ticks, global chat, system notices, whispers)
//! and to each room and sub-zone where it has players, so a node hears the part of the
//! world its players are in rather than all of it. Otherwise it subscribes to everything.
//!
//! A player about to enter a room asks for it first ([`Interests::want`]). The
//! subscription is handed to the NATS client before the player joins the room and before
//! the node publishes the arrival, on the same connection: NATS registers it before it
//! sees the arrival, so whatever anyone publishes in the room after hearing of the
//! arrival reaches this node — in a NATS cluster too, where a server forwards a message
//! to another only once it knows of a subscription there, and learns of it on the same
//! route, before the arrival. The [`Wanted`] it returns keeps the room from being dropped
//! until the player is in it.
//!
//! Rooms and sub-zones left empty are unsubscribed a while later
//! ([`Interests::retire_unused`]), not at once, so players walking through a room do not
//! make the node subscribe and unsubscribe at every step.
//!
//! A node whose players are in more than a share of the world's places listens to the
//! whole world instead, on two subscriptions, and to each place again once they are in
//! few ([`Interests::want`], [`Interests::retire_unused`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use natsmud_protocol::{Interest, RoomId, SubZoneId, SubjectPrefix};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection_manager::ConnectionManager;
use crate::telemetry;

/// How long subscribing may wait for the NATS client to take the request.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// How often empty rooms and sub-zones are looked for.
const RETIRE_EVERY: Duration = Duration::from_secs(5);

/// What one subscription brings the NATS handler.
pub enum Delivery {
    Message(Arc<Interest>, async_nats::Message),
    /// The subscription ended: `retired` when this node dropped it on purpose, `replaced`
    /// when a switch did (see [`Interests::overlapping`]).
    Ended {
        interest: Arc<Interest>,
        retired: bool,
        replaced: bool,
    },
}

/// One subscription's deliveries, for the NATS handler to read.
pub type Feed = BoxStream<'static, Delivery>;

/// How a node chooses its subscriptions (`--subscriptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubscriptionMode {
    /// The rooms and sub-zones where this node has players, and what every node needs.
    Interest,
    /// Every subject of the world.
    All,
}

/// One interest's subscriptions, as the handler reads them. Retiring them drains them:
/// NATS stops sending, and the handler still reads what was sent before, so that a place
/// heard through two subscriptions for a moment (see [`Interests::want`]) loses nothing.
struct Subscribed {
    retire: CancellationToken,
    count: usize,
    /// Set when a switch replaces it: its feed ending then ends an overlap.
    replaced: Arc<AtomicBool>,
}

struct Entry {
    /// Players on their way into the place (see [`Wanted`]).
    pending: Arc<AtomicUsize>,
    /// `None` while the node listens to the whole world.
    subscribed: Option<Subscribed>,
    last_wanted: Instant,
}

impl Entry {
    fn new(subscribed: Option<Subscribed>) -> Self {
        Self {
            pending: Arc::new(AtomicUsize::new(0)),
            subscribed,
            last_wanted: Instant::now(),
        }
    }
}

/// The places where this node has players (or had them a moment ago), and what it
/// listens to for them.
struct Places {
    /// Rooms and sub-zones.
    entries: HashMap<Interest, Entry>,
    /// What the node listens to whoever its players are: [`Interest::World`], or
    /// [`Interest::Everything`] while it listens to the whole world.
    always: Option<Subscribed>,
    /// Listening to the whole world rather than to each place (its players are in too
    /// many of them, or `--subscriptions all`).
    wide: bool,
    /// What a switch replaced, let go once NATS has answered (see [`Interests::let_go`]).
    leaving: Vec<Subscribed>,
}

pub struct Interests {
    client: async_nats::Client,
    /// Told which rooms the node listens to, for its handler.
    manager: Arc<ConnectionManager>,
    prefix: SubjectPrefix,
    mode: SubscriptionMode,
    /// Past this many rooms and sub-zones the node listens to the whole world instead;
    /// back to places below half as many.
    wide_above: usize,
    /// Held while subscribing, so that a place is subscribed once and a retirement never
    /// races a player on its way in.
    places: tokio::sync::Mutex<Places>,
    feeds: mpsc::UnboundedSender<Feed>,
    subscriptions: Arc<AtomicUsize>,
    /// Switches under way, and subscriptions replaced by one whose feed the handler has
    /// not read to its end: while above zero two subscriptions may bring one place.
    overlapping: Arc<AtomicUsize>,
    /// Subscriptions to let go, a few at a time (see [`let_go_gradually`]).
    retiring: mpsc::UnboundedSender<Subscribed>,
}

/// Keeps the places a player is entering subscribed until it is in them.
#[derive(Default)]
pub struct Wanted {
    pending: Vec<Arc<AtomicUsize>>,
    fresh: bool,
}

impl Wanted {
    /// Whether this node just started listening to one of the places: it has heard none
    /// of their earlier events, so what it knows of them comes from the presence watch.
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// Holds `other`'s places too.
    pub fn join(&mut self, mut other: Wanted) {
        self.pending.append(&mut other.pending);
        self.fresh |= other.fresh;
    }
}

impl Drop for Wanted {
    fn drop(&mut self) {
        for pending in &self.pending {
            pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to {subject}: {reason}")]
pub struct SubscribeError {
    subject: String,
    reason: String,
}

impl Interests {
    /// The interests of a node, and the receiving end of its subscriptions for the NATS
    /// handler. Nothing is subscribed until [`Interests::start`]. By interest, the node
    /// listens to the whole world instead of to each place while its players are in more
    /// than `wide_above` rooms and sub-zones.
    pub fn new(
        client: async_nats::Client,
        manager: Arc<ConnectionManager>,
        prefix: SubjectPrefix,
        mode: SubscriptionMode,
        wide_above: usize,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Feed>) {
        let (feeds, receiver) = mpsc::unbounded_channel();
        let subscriptions = Arc::new(AtomicUsize::new(0));
        let (retiring, to_retire) = mpsc::unbounded_channel();
        tokio::spawn(let_go_gradually(to_retire, subscriptions.clone()));
        if mode == SubscriptionMode::Interest {
            manager.listen_to_no_room();
        }
        let interests = Arc::new(Self {
            client,
            manager,
            prefix,
            mode,
            wide_above,
            places: tokio::sync::Mutex::new(Places {
                entries: HashMap::new(),
                always: None,
                wide: mode == SubscriptionMode::All,
                leaving: Vec::new(),
            }),
            feeds,
            subscriptions: subscriptions.clone(),
            overlapping: Arc::new(AtomicUsize::new(0)),
            retiring,
        });
        (interests, receiver)
    }

    /// Subscribes to what the node always listens to.
    pub async fn start(&self) -> Result<(), SubscribeError> {
        let mut places = self.places.lock().await;
        let always = if places.wide {
            Interest::Everything
        } else {
            Interest::World
        };
        places.always = Some(self.subscribe(always).await?);
        Ok(())
    }

    /// Subscriptions open now.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Makes sure this node listens to `room` and its sub-zone before a player enters it;
    /// keep the [`Wanted`] until the player is in the room.
    ///
    /// A node whose players would be in more places than it subscribes to one by one
    /// listens to the whole world instead: past a share of the world, a subscription per
    /// place costs memory (async-nats gives each a channel of its own) and saves little
    /// traffic. It subscribes to everything first, then drains the places'
    /// subscriptions; for that moment a place is heard twice, and the handler delivers
    /// each event of a place once (by its stream position).
    pub async fn want(
        &self,
        room: &RoomId,
        sub_zone: &SubZoneId,
    ) -> Result<Wanted, SubscribeError> {
        let mut wanted = Wanted::default();
        if self.mode == SubscriptionMode::All {
            return Ok(wanted);
        }
        let mut places = self.places.lock().await;
        let wanting = [
            Interest::Room(room.to_string()),
            Interest::SubZone(sub_zone.to_string()),
        ];
        let new = wanting
            .iter()
            .filter(|interest| !places.entries.contains_key(interest))
            .count();
        if !places.wide && new > 0 && places.entries.len() + new > self.wide_above {
            self.widen(&mut places).await?;
        }
        for interest in wanting {
            if !places.entries.contains_key(&interest) {
                let subscribed = if places.wide {
                    None
                } else {
                    Some(self.subscribe(interest.clone()).await?)
                };
                places
                    .entries
                    .insert(interest.clone(), Entry::new(subscribed));
                if let Interest::Room(room) = &interest {
                    self.manager.set_listened(room, true);
                }
                wanted.fresh = true;
            }
            if let Some(entry) = places.entries.get_mut(&interest) {
                entry.pending.fetch_add(1, Ordering::AcqRel);
                entry.last_wanted = Instant::now();
                wanted.pending.push(entry.pending.clone());
            }
        }
        Ok(wanted)
    }

    /// For the NATS handler: above zero while two of this node's subscriptions may bring
    /// one place's events (a switch is under way, or a subscription it replaced, or one
    /// of a place let go, is still being read); the handler decrements it as each such
    /// feed ends. Only then does
    /// it drop events at or before a place's last position: outside a switch one
    /// subscription brings each place in stream order, and a position forged far ahead
    /// (on `natsmud_live.>`) would otherwise silence its place for good.
    pub fn overlapping(&self) -> Arc<AtomicUsize> {
        self.overlapping.clone()
    }

    /// Counts a switch under way until the returned guard is dropped.
    fn switching(&self) -> Switching {
        self.overlapping.fetch_add(1, Ordering::AcqRel);
        Switching(self.overlapping.clone())
    }

    /// A subscription let go while another may bring the same places: counted until the
    /// handler has read its feed to the end.
    fn replacing(&self, subscribed: Subscribed) -> Subscribed {
        subscribed.replaced.store(true, Ordering::Release);
        self.overlapping.fetch_add(1, Ordering::AcqRel);
        subscribed
    }

    /// Listens to the whole world, then lets each place's subscriptions go.
    async fn widen(&self, places: &mut Places) -> Result<(), SubscribeError> {
        let _switching = self.switching();
        let everything = self.subscribe(Interest::Everything).await?;
        let replaced = places.always.replace(everything);
        places
            .leaving
            .extend(replaced.map(|replaced| self.replacing(replaced)));
        let Places {
            entries, leaving, ..
        } = places;
        leaving.extend(
            entries
                .values_mut()
                .filter_map(|entry| entry.subscribed.take())
                .map(|replaced| self.replacing(replaced)),
        );
        places.wide = true;
        self.let_go(places).await;
        tracing::info!(
            places = places.entries.len(),
            most = self.wide_above,
            "players in many places: listening to the whole world"
        );
        Ok(())
    }

    /// Listens to each place again (and to what every node needs), then lets the whole
    /// world go. Nothing changes if a subscription fails.
    async fn narrow(&self, places: &mut Places) -> Result<(), SubscribeError> {
        let _switching = self.switching();
        // `None`: what every node needs.
        let mut made: Vec<(Option<Interest>, Subscribed)> =
            Vec::with_capacity(places.entries.len() + 1);
        let subscribed: Result<(), SubscribeError> = async {
            made.push((None, self.subscribe(Interest::World).await?));
            for interest in places.entries.keys() {
                made.push((
                    Some(interest.clone()),
                    self.subscribe(interest.clone()).await?,
                ));
            }
            Ok(())
        }
        .await;
        if let Err(error) = subscribed {
            for (_, subscribed) in made {
                // They may have brought what the whole world's subscription brings too.
                self.retire(self.replacing(subscribed));
            }
            self.note_subscriptions();
            return Err(error);
        }
        for (interest, subscribed) in made {
            match interest {
                None => {
                    let replaced = places.always.replace(subscribed);
                    places
                        .leaving
                        .extend(replaced.map(|replaced| self.replacing(replaced)));
                }
                Some(interest) => {
                    if let Some(entry) = places.entries.get_mut(&interest) {
                        entry.subscribed = Some(subscribed);
                    }
                }
            }
        }
        places.wide = false;
        self.let_go(places).await;
        tracing::info!(
            places = places.entries.len(),
            "players in fewer places: listening to each of them again"
        );
        Ok(())
    }

    /// Drains the subscriptions a switch replaced once NATS has answered a request sent
    /// after the new ones were made. A NATS server handles a connection's requests in
    /// order and writes to it in order, so by then it has registered the new
    /// subscriptions (whatever it delivers next reaches them) and everything it delivered
    /// to the old ones before has been read into them, where draining keeps it. (A
    /// flush is not enough: async-nats's only waits for the socket. And async-nats
    /// forgets a drained subscription right after sending the unsubscription: a message
    /// on its way to it would be lost if NATS had not registered the new ones first.)
    /// Without an answer they are kept, heard twice, and let go at the next upkeep.
    async fn let_go(&self, places: &mut Places) {
        if places.leaving.is_empty() {
            return;
        }
        // JetStream's account information: an answer any node may ask for.
        let asked = async_nats::jetstream::new(self.client.clone());
        match tokio::time::timeout(SUBSCRIBE_WAIT, asked.query_account()).await {
            Ok(Ok(_)) => {
                for subscribed in places.leaving.drain(..) {
                    self.retire(subscribed);
                }
            }
            _ => tracing::debug!(
                held = places.leaving.len(),
                "NATS has not answered; the replaced subscriptions are kept a while"
            ),
        }
        self.note_subscriptions();
    }

    fn retire(&self, subscribed: Subscribed) {
        if let Err(unsent) = self.retiring.send(subscribed) {
            // The node is stopping.
            unsent.0.retire.cancel();
        }
    }

    fn note_subscriptions(&self) {
        note_subscriptions(&self.subscriptions);
    }

    /// Forgets the rooms and sub-zones where this node has had nobody for `idle` (as
    /// seen by these calls: call it more often than `idle`), unsubscribing from them; and
    /// goes back from the whole world to places when they are few again.
    pub async fn retire_unused(&self, idle: Duration) {
        let manager = &self.manager;
        let mut places = self.places.lock().await;
        self.let_go(&mut places).await;
        let before = places.entries.len();
        let mut retiring = Vec::new();
        places.entries.retain(|interest, entry| {
            let empty = match interest {
                Interest::Room(room) => manager.room_is_empty(room),
                Interest::SubZone(sub_zone) => manager.sub_zone_is_empty(sub_zone),
                Interest::World | Interest::Everything => return true,
            };
            if !empty || entry.pending.load(Ordering::Acquire) > 0 {
                // Idle time counts from when the place was last seen in use.
                entry.last_wanted = Instant::now();
                return true;
            }
            let unused = entry.last_wanted.elapsed() >= idle;
            if unused {
                retiring.extend(entry.subscribed.take());
                if let Interest::Room(room) = interest {
                    manager.set_listened(room, false);
                }
            }
            !unused
        });
        for subscribed in retiring {
            // A player may come back before it is drained: the place subscribed again
            // meanwhile is brought by both for a moment.
            self.retire(self.replacing(subscribed));
        }
        if places.entries.len() != before {
            self.note_subscriptions();
            tracing::debug!(
                retired = before - places.entries.len(),
                remaining = places.entries.len(),
                "forgot places without players"
            );
        }
        if places.wide
            && self.mode == SubscriptionMode::Interest
            && places.entries.len() < self.wide_above / 2
            && let Err(error) = self.narrow(&mut places).await
        {
            tracing::warn!(%error, "cannot listen to places one by one again; still listening to the whole world");
        }
    }

    /// Retires unused places now and then, until `stop`.
    pub async fn run_upkeep(self: Arc<Self>, stop: CancellationToken) {
        if self.mode == SubscriptionMode::All {
            return;
        }
        let mut every = tokio::time::interval(RETIRE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                // Two checks apart: a place is let go 5 to 10 s after its last player left.
                _ = every.tick() => self.retire_unused(2 * RETIRE_EVERY).await,
            }
        }
    }

    /// Subscribes to `interest`'s patterns and hands the subscriptions to the handler, as
    /// one feed so that they start being read together.
    async fn subscribe(&self, interest: Interest) -> Result<Subscribed, SubscribeError> {
        let interest = Arc::new(interest);
        let retire = CancellationToken::new();
        let mut streams: Vec<BoxStream<'static, async_nats::Message>> = Vec::new();
        for subject in interest.live_patterns(&self.prefix) {
            let subscribed =
                tokio::time::timeout(SUBSCRIBE_WAIT, self.client.subscribe(subject.clone())).await;
            let subscriber = match subscribed {
                Ok(Ok(subscriber)) => subscriber,
                failed => {
                    // None of the interest, rather than part of it (dropping the
                    // subscribers made so far unsubscribes them).
                    let reason = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => "the NATS client is not taking requests".into(),
                    };
                    return Err(SubscribeError { subject, reason });
                }
            };
            streams.push(drained_when(subscriber, retire.clone()).boxed());
        }
        let count = streams.len();
        let messages = if count == 1 {
            streams.swap_remove(0)
        } else {
            futures::stream::select_all(streams).boxed()
        };
        let carrying = interest.clone();
        let retired = retire.clone();
        let replaced = Arc::new(AtomicBool::new(false));
        let was_replaced = replaced.clone();
        let feed: Feed = messages
            .map(move |message| Delivery::Message(carrying.clone(), message))
            .chain(futures::stream::once(async move {
                Delivery::Ended {
                    interest,
                    retired: retired.is_cancelled(),
                    replaced: was_replaced.load(Ordering::Acquire),
                }
            }))
            .boxed();
        // The handler stops only with the node.
        let _ = self.feeds.send(feed);
        self.subscriptions.fetch_add(count, Ordering::Relaxed);
        self.note_subscriptions();
        Ok(Subscribed {
            retire,
            count,
            replaced,
        })
    }
}

/// A switch under way (see [`Interests::overlapping`]).
struct Switching(Arc<AtomicUsize>);

impl Drop for Switching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most subscriptions let go at once, and how often: a NATS server handles a connection's
/// unsubscriptions in the same loop as its publishes, and thousands at once (a switch to
/// the whole world drains every room's) held a node's publishes and presence writes up for
/// seconds there — long enough for the node's heartbeat to expire.
const LET_GO_AT_ONCE: usize = 100;
const LET_GO_EVERY: Duration = Duration::from_millis(100);

/// Drains the subscriptions handed to it, [`LET_GO_AT_ONCE`] per [`LET_GO_EVERY`].
async fn let_go_gradually(
    mut retiring: mpsc::UnboundedReceiver<Subscribed>,
    subscriptions: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(LET_GO_AT_ONCE);
    while retiring.recv_many(&mut batch, LET_GO_AT_ONCE).await > 0 {
        for subscribed in batch.drain(..) {
            subscribed.retire.cancel();
            subscriptions.fetch_sub(subscribed.count, Ordering::Relaxed);
        }
        note_subscriptions(&subscriptions);
        tokio::time::sleep(LET_GO_EVERY).await;
    }
}

fn note_subscriptions(subscriptions: &AtomicUsize) {
    metrics::gauge!(telemetry::NATS_SUBSCRIPTIONS)
        .set(subscriptions.load(Ordering::Relaxed) as f64);
}

/// `subscriber`'s messages until `retire`, then those NATS sent before it heard of the
/// unsubscription.
fn drained_when(
    subscriber: async_nats::Subscriber,
    retire: CancellationToken,
) -> impl futures::Stream<Item = async_nats::Message> {
    futures::stream::unfold(
        (subscriber, retire, false),
        |(mut subscriber, retire, mut draining)| async move {
            if !draining {
                tokio::select! {
                    biased;
                    () = retire.cancelled() => {
                        draining = true;
                        if let Err(error) = subscriber.drain().await {
                            tracing::debug!(%error, "cannot unsubscribe: the NATS client is closed");
                        }
                    }
                    message = subscriber.next() => {
                        return message.map(|message| (message, (subscriber, retire, false)));
                    }
                }
            }
            let message = subscriber.next().await?;
            Some((message, (subscriber, retire, draining)))
        },
    )
}
