//! The world's event stream: a JetStream stream that captures every event and chat subject
//! of the world, so that a client can get back what it missed ([`super::resume`]) and a
//! node can catch its players up after losing NATS for a moment.
//!
//! The stream republishes each event it stores under [`LIVE_ROOT`] with its sequence in the
//! `Nats-Sequence` header, and nodes listen there: every event a node delivers has its
//! position (`<epoch>:<sequence>`), and a position read back from the stream names the same
//! event. Publishers need not know: whatever is published on the world's subjects is
//! stored, then delivered.
//!
//! The epoch is the stream's creation time: a stream created again (a memory stream lost
//! with a NATS restart, or deleted) starts its sequences again, and its new epoch tells
//! clients that positions of the old one mean nothing there.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use natsmud_protocol::subject::LIVE_ROOT;
use natsmud_protocol::{Position, SubjectPrefix};

use crate::config::{Config, StreamStorage};

/// How long a read-back consumer outlives a reader that vanished without deleting it.
const READER_INACTIVE: Duration = Duration::from_secs(30);

/// Events asked for at once when reading the stream back.
const READ_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the event stream is unavailable: {0}")]
    Unavailable(String),
}

fn unavailable(error: impl std::fmt::Display) -> StreamError {
    StreamError::Unavailable(error.to_string())
}

/// Where the stream stands: its epoch, and the first and last sequence it holds (an empty
/// stream has `first == last + 1`).
#[derive(Debug, Clone)]
pub struct Bounds {
    pub epoch: Arc<str>,
    pub first: u64,
    pub last: u64,
    /// When the first event it holds was stored.
    pub first_stored: time::OffsetDateTime,
}

/// Where reading back starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// After this sequence.
    After(u64),
    /// With the first event stored at or after this time.
    Since(time::OffsetDateTime),
}

/// What reading back found.
#[derive(Debug)]
pub enum ReadBack {
    /// Every stored event after the start, in order, up to `end` (the last sequence read;
    /// the start − 1 when there was none).
    Events {
        messages: Vec<jetstream::Message>,
        end: u64,
    },
    /// More than the most asked for.
    TooMany(u64),
}

pub struct EventStream {
    js: jetstream::Context,
    client: async_nats::Client,
    prefix: SubjectPrefix,
    storage: StreamStorage,
    max_age: Duration,
    max_bytes: u64,
    replicas: usize,
    epoch: tokio::sync::watch::Sender<Option<Arc<str>>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("name", &self.prefix.stream_name())
            .field("epoch", &self.epoch())
            .finish()
    }
}

impl EventStream {
    pub fn new(client: async_nats::Client, config: &Config) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.publish_timeout());
        Self {
            js,
            client,
            prefix: config.subject_prefix.clone(),
            storage: config.stream_storage,
            max_age: Duration::from_secs(config.stream_max_age_secs),
            max_bytes: config.stream_max_bytes,
            replicas: config.nats_replicas as usize,
            epoch: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The epoch of the stream as this node last saw it.
    pub fn epoch(&self) -> Option<Arc<str>> {
        self.epoch.borrow().clone()
    }

    /// Follows the epoch as it changes.
    pub fn watch_epoch(&self) -> tokio::sync::watch::Receiver<Option<Arc<str>>> {
        self.epoch.subscribe()
    }

    /// The position of `offset` in the current epoch.
    pub fn position(&self, offset: u64) -> Option<Position> {
        self.epoch().map(|epoch| Position {
            epoch: epoch.to_string(),
            offset,
        })
    }

    fn config(&self) -> stream::Config {
        let replicas = match self.replicas {
            0 if self.client.server_info().cluster.is_some() => 3,
            0 => 1,
            n => n,
        };
        stream::Config {
            name: self.prefix.stream_name(),
            description: Some(
                "natsmud: the world's events, for clients resuming after a drop".into(),
            ),
            subjects: self.prefix.stream_subjects(),
            storage: match self.storage {
                StreamStorage::Memory => stream::StorageType::Memory,
                StreamStorage::File => stream::StorageType::File,
            },
            max_age: self.max_age,
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            num_replicas: replicas,
            republish: Some(stream::Republish {
                source: ">".into(),
                destination: format!("{LIVE_ROOT}.>"),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    /// Creates the stream, or takes the one there as it is (the first node's settings
    /// stand), and notes its epoch.
    pub async fn ensure(&self) -> Result<Bounds, StreamError> {
        let mut stream = self
            .js
            .get_or_create_stream(self.config())
            .await
            .map_err(unavailable)?;
        let info = stream.info().await.map_err(unavailable)?;
        let bounds = Bounds {
            epoch: epoch_of(info.created),
            first: info.state.first_sequence,
            last: info.state.last_sequence,
            first_stored: info.state.first_timestamp,
        };
        self.note_epoch(&bounds.epoch);
        Ok(bounds)
    }

    fn note_epoch(&self, epoch: &Arc<str>) {
        self.epoch.send_if_modified(|current| {
            let changed = current.as_deref() != Some(&**epoch);
            if changed {
                tracing::info!(epoch = %epoch, stream = %self.prefix.stream_name(), "event stream epoch");
                *current = Some(epoch.clone());
            }
            changed
        });
    }

    /// Reads back the events stored from `start` on `filters` (every subject of the
    /// stream when empty), at most `max` of them. The consumer it reads with is deleted
    /// whatever happens.
    pub async fn read(
        &self,
        start: Start,
        filters: Vec<String>,
        max: u64,
    ) -> Result<ReadBack, StreamError> {
        let stream = self
            .js
            .get_stream_no_info(self.prefix.stream_name())
            .await
            .map_err(unavailable)?;
        let name = format!("natsmud_read_{}", uuid::Uuid::new_v4().simple());
        let config = consumer::pull::Config {
            name: Some(name.clone()),
            deliver_policy: match start {
                Start::After(after) => consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                Start::Since(time) => consumer::DeliverPolicy::ByStartTime { start_time: time },
            },
            ack_policy: consumer::AckPolicy::None,
            filter_subjects: filters,
            inactive_threshold: READER_INACTIVE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.map_err(unavailable)?;
        let after = match start {
            Start::After(after) => after,
            Start::Since(_) => 0,
        };
        let read = read_all(&consumer, after, max).await;
        // Read-back consumers are not always cleaned up when dropped: delete it now.
        if let Err(error) = stream.delete_consumer(&name).await {
            tracing::debug!(%error, consumer = %name, "could not delete a read-back consumer; it expires");
        }
        read
    }
}

async fn read_all(
    consumer: &consumer::PullConsumer,
    after: u64,
    max: u64,
) -> Result<ReadBack, StreamError> {
    let pending = consumer.cached_info().num_pending;
    if pending > max {
        return Ok(ReadBack::TooMany(pending));
    }
    let mut messages = Vec::with_capacity(pending as usize);
    let mut end = after;
    // Exactly what was pending when the consumer was made: anything stored later reaches
    // the reader live.
    while (messages.len() as u64) < pending {
        let want = (pending - messages.len() as u64).min(READ_BATCH as u64) as usize;
        let mut batch = consumer
            .fetch()
            .max_messages(want)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(unavailable)?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(unavailable)?;
            if let Ok(info) = message.info() {
                end = end.max(info.stream_sequence);
            }
            messages.push(message);
            got += 1;
        }
        if got == 0 {
            return Err(StreamError::Unavailable(
                "the event stream stopped answering while being read back".into(),
            ));
        }
    }
    Ok(ReadBack::Events { messages, end })
}

/// A stream's epoch: its creation time in microseconds, base 36 (short, and a new stream
/// never has an old one's).
fn epoch_of(created: time::OffsetDateTime) -> Arc<str> {
    let micros = (created.unix_timestamp_nanos() / 1_000).max(0) as u128;
    Arc::from(base36(micros))
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_short_and_read_as_positions() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        let epoch = epoch_of(
            time::OffsetDateTime::from_unix_timestamp(1_790_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        );
        let position = format!("{epoch}:12");
        assert!(Position::parse(&position).is_some(), "{position}");
        assert!(epoch.len() <= 12);
    }
}
