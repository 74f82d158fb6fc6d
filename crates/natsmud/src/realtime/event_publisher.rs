//! Builds subjects with the one subject builder, serialises each envelope once and
//! publishes it. Never hangs: when NATS is away a publish fails at once, and a publish that
//! NATS does not take within the configured time fails too; both are logged and counted.
//!
//! A publish counts once the world's event stream has stored it (JetStream's ack): only
//! what is stored is delivered (see [`super::stream`]), so an event the stream did not
//! take is an error its actor hears of, never a silent loss. A stream that is gone (a NATS
//! restart lost it) is created again and the publish tried once more.
//!
//! Every publish carries [`ORDER_HEADER`]: this node's id and a number counting its
//! publishes in the order they go out, so receivers can keep a room's `events.` and
//! `chat.` messages in the order this node sent them (see `nats_handler`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use natsmud_protocol::{Envelope, ORDER_HEADER, Subject, SubjectPrefix};
use serde::Serialize;

use super::stream::EventStream;
use crate::telemetry;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the event bus (NATS) is not connected")]
    Unavailable,
    #[error("the event bus (NATS) did not accept the event within {0:?}")]
    Timeout(Duration),
    #[error("the event bus (NATS) refused the event: {0}")]
    Refused(String),
}

#[derive(Debug)]
pub struct EventPublisher {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    stream: Arc<EventStream>,
    prefix: SubjectPrefix,
    timeout: Duration,
    /// This node's id, the origin in [`ORDER_HEADER`].
    origin: String,
    /// Publishes sent so far. Held while a publish is handed to the client, so that the
    /// numbers follow the order the messages go out in.
    sent: tokio::sync::Mutex<u64>,
}

impl EventPublisher {
    pub fn new(
        client: async_nats::Client,
        stream: Arc<EventStream>,
        prefix: SubjectPrefix,
        timeout: Duration,
        origin: String,
    ) -> Self {
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(timeout);
        Self {
            js,
            stream,
            client,
            prefix,
            timeout,
            origin,
            sent: tokio::sync::Mutex::new(0),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// What the NATS client has sent and received since it started.
    pub fn statistics(&self) -> std::sync::Arc<async_nats::Statistics> {
        self.client.statistics()
    }

    pub fn prefix(&self) -> &SubjectPrefix {
        &self.prefix
    }

    async fn publish_with<D: Serialize>(
        &self,
        subject: Subject<'_>,
        envelope: &Envelope<D>,
        presence: Option<u64>,
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = self.try_publish(subject, envelope, presence).await;
        let event_type = envelope.event_type.as_str();
        match &result {
            Ok(()) => {
                metrics::histogram!(telemetry::PUBLISH_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(telemetry::EVENTS_PUBLISHED, "event_type" => event_type)
                    .increment(1);
            }
            Err(error) => {
                metrics::counter!(telemetry::EVENTS_PUBLISH_FAILED, "event_type" => event_type)
                    .increment(1);
                tracing::warn!(%subject, event_type = envelope.event_type.as_str(), %error, "publish failed");
            }
        }
        result
    }

    /// Publishes a presence event with the revision of the presence write it announces
    /// (see `presence`), so receiving nodes can apply it to their rosters in order.
    pub async fn publish_presence<D: Serialize>(
        &self,
        subject: Subject<'_>,
        envelope: &Envelope<D>,
        revision: u64,
    ) -> Result<(), PublishError> {
        self.publish_with(subject, envelope, Some(revision)).await
    }

    pub async fn publish<D: Serialize>(
        &self,
        subject: Subject<'_>,
        envelope: &Envelope<D>,
    ) -> Result<(), PublishError> {
        self.publish_with(subject, envelope, None).await
    }

    async fn try_publish<D: Serialize>(
        &self,
        subject: Subject<'_>,
        envelope: &Envelope<D>,
        presence: Option<u64>,
    ) -> Result<(), PublishError> {
        // async-nats buffers publishes while disconnected and sends them after a
        // reconnect, minutes later. A game event that late is wrong, so refuse up front.
        if !self.is_connected() {
            return Err(PublishError::Unavailable);
        }
        let payload = envelope.to_bytes();
        let subject = subject.render(&self.prefix);
        // One deadline for waiting for our turn, for the client to take the message and
        // for the stream to store it: publishes queued behind a stalled one fail in time
        // too, rather than one by one.
        let publish = async {
            let mut stream_was_gone = false;
            loop {
                let acked = {
                    let mut sent = self.sent.lock().await;
                    *sent += 1;
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(ORDER_HEADER, format!("{}.{}", self.origin, *sent).as_str());
                    if let Some(revision) = presence {
                        headers.insert(
                            crate::presence::PRESENCE_HEADER,
                            revision.to_string().as_str(),
                        );
                    }
                    self.js
                        .publish_with_headers(subject.clone(), headers, payload.clone())
                        .await
                };
                // Acks are awaited outside the turn: publishes go out in order and are
                // stored in that order, without each waiting for the one before.
                let stored = match acked {
                    Ok(ack) => ack.await,
                    Err(error) => Err(error),
                };
                match stored {
                    Ok(_) => return Ok(()),
                    Err(error)
                        if error.kind() == PublishErrorKind::StreamNotFound && !stream_was_gone =>
                    {
                        stream_was_gone = true;
                        tracing::warn!("the event stream is gone; creating it again");
                        self.stream
                            .ensure()
                            .await
                            .map_err(|e| PublishError::Refused(e.to_string()))?;
                    }
                    Err(error) => return Err(PublishError::Refused(error.to_string())),
                }
            }
        };
        match tokio::time::timeout(self.timeout, publish).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::Timeout(self.timeout)),
        }
    }

    /// Sends everything buffered to NATS; part of a graceful shutdown.
    pub async fn flush(&self) {
        if let Err(error) = tokio::time::timeout(self.timeout, self.client.flush()).await {
            tracing::warn!(%error, "NATS flush did not finish");
        }
    }
}
