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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::{AbortHandle, Abortable, BoxStream};
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
    /// The subscription ended: `retired` when this node dropped it on purpose.
    Ended {
        interest: Arc<Interest>,
        retired: bool,
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

struct Entry {
    /// Players on their way into the place (see [`Wanted`]).
    pending: Arc<AtomicUsize>,
    aborts: Vec<AbortHandle>,
    last_wanted: Instant,
}

pub struct Interests {
    client: async_nats::Client,
    prefix: SubjectPrefix,
    mode: SubscriptionMode,
    /// Held while subscribing, so that a place is subscribed once and a retirement never
    /// races a player on its way in.
    entries: tokio::sync::Mutex<HashMap<Interest, Entry>>,
    feeds: mpsc::UnboundedSender<Feed>,
    subscriptions: AtomicUsize,
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
    /// handler. Nothing is subscribed until [`Interests::start`].
    pub fn new(
        client: async_nats::Client,
        prefix: SubjectPrefix,
        mode: SubscriptionMode,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Feed>) {
        let (feeds, receiver) = mpsc::unbounded_channel();
        let interests = Arc::new(Self {
            client,
            prefix,
            mode,
            entries: tokio::sync::Mutex::new(HashMap::new()),
            feeds,
            subscriptions: AtomicUsize::new(0),
        });
        (interests, receiver)
    }

    /// Subscribes to what the node always listens to.
    pub async fn start(&self) -> Result<(), SubscribeError> {
        let always = match self.mode {
            SubscriptionMode::Interest => Interest::World,
            SubscriptionMode::All => Interest::Everything,
        };
        let mut entries = self.entries.lock().await;
        let entry = self.subscribe(always.clone()).await?;
        entries.insert(always, entry);
        Ok(())
    }

    /// Subscriptions open now.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Makes sure this node listens to `room` and its sub-zone before a player enters it;
    /// keep the [`Wanted`] until the player is in the room.
    pub async fn want(
        &self,
        room: &RoomId,
        sub_zone: &SubZoneId,
    ) -> Result<Wanted, SubscribeError> {
        let mut wanted = Wanted::default();
        if self.mode == SubscriptionMode::All {
            return Ok(wanted);
        }
        let mut entries = self.entries.lock().await;
        for interest in [
            Interest::Room(room.to_string()),
            Interest::SubZone(sub_zone.to_string()),
        ] {
            if !entries.contains_key(&interest) {
                let entry = self.subscribe(interest.clone()).await?;
                entries.insert(interest.clone(), entry);
                wanted.fresh = true;
            }
            if let Some(entry) = entries.get_mut(&interest) {
                entry.pending.fetch_add(1, Ordering::AcqRel);
                entry.last_wanted = Instant::now();
                wanted.pending.push(entry.pending.clone());
            }
        }
        Ok(wanted)
    }

    /// Unsubscribes from the rooms and sub-zones where this node has had nobody for `idle`
    /// (as seen by these calls: call it more often than `idle`).
    pub async fn retire_unused(&self, manager: &ConnectionManager, idle: Duration) {
        let mut entries = self.entries.lock().await;
        let before = entries.len();
        entries.retain(|interest, entry| {
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
                for abort in &entry.aborts {
                    abort.abort();
                }
                self.subscriptions
                    .fetch_sub(entry.aborts.len(), Ordering::Relaxed);
            }
            !unused
        });
        if entries.len() != before {
            metrics::gauge!(telemetry::NATS_SUBSCRIPTIONS).set(self.subscription_count() as f64);
            tracing::debug!(
                retired = before - entries.len(),
                remaining = entries.len(),
                "unsubscribed from places without players"
            );
        }
    }

    /// Retires unused places now and then, until `stop`.
    pub async fn run_upkeep(
        self: Arc<Self>,
        manager: Arc<ConnectionManager>,
        stop: CancellationToken,
    ) {
        if self.mode == SubscriptionMode::All {
            return;
        }
        let mut every = tokio::time::interval(RETIRE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                // Two checks apart: a place is let go 5 to 10 s after its last player left.
                _ = every.tick() => self.retire_unused(&manager, 2 * RETIRE_EVERY).await,
            }
        }
    }

    /// Subscribes to `interest`'s patterns and hands the subscriptions to the handler.
    async fn subscribe(&self, interest: Interest) -> Result<Entry, SubscribeError> {
        let interest = Arc::new(interest);
        let mut aborts: Vec<AbortHandle> = Vec::new();
        for subject in interest.live_patterns(&self.prefix) {
            let subscribed =
                tokio::time::timeout(SUBSCRIBE_WAIT, self.client.subscribe(subject.clone())).await;
            let subscriber = match subscribed {
                Ok(Ok(subscriber)) => subscriber,
                failed => {
                    // None of the interest, rather than part of it.
                    for abort in &aborts {
                        abort.abort();
                    }
                    self.subscriptions
                        .fetch_sub(aborts.len(), Ordering::Relaxed);
                    let reason = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => "the NATS client is not taking requests".into(),
                    };
                    return Err(SubscribeError { subject, reason });
                }
            };
            let (abort, registration) = AbortHandle::new_pair();
            let retired = abort.clone();
            let carrying = interest.clone();
            let ending = interest.clone();
            let feed: Feed = Abortable::new(subscriber, registration)
                .map(move |message| Delivery::Message(carrying.clone(), message))
                .chain(futures::stream::once(async move {
                    Delivery::Ended {
                        interest: ending,
                        retired: retired.is_aborted(),
                    }
                }))
                .boxed();
            // The handler stops only with the node.
            let _ = self.feeds.send(feed);
            aborts.push(abort);
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        metrics::gauge!(telemetry::NATS_SUBSCRIPTIONS).set(self.subscription_count() as f64);
        Ok(Entry {
            pending: Arc::new(AtomicUsize::new(0)),
            aborts,
            last_wanted: Instant::now(),
        })
    }
}
