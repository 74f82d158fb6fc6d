//! `GET /api/events?token=…`: the same envelopes as the WebSocket, as Server-Sent Events;
//! the player's commands come in by `POST /api/command` and their replies arrive here.
//!
//! Each event is `id: <sequence_number>` + `data: <envelope>`. When the server closes the
//! stream it first sends `event: close` with `{"code","reason"}` (the WebSocket close code
//! it would have used), since SSE has no close frame.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use natsmud_protocol::position::frame_offset;
use tracing::Instrument;

use super::session::{self, Admission, Attached};
use super::ws::authenticate;
use crate::error::ApiError;
use crate::realtime::connection::Outbound;
use crate::realtime::connection_manager::{Kick, ManagerError, Queued, Transport};
use crate::realtime::resume::ResumeFrom;
use crate::startup::AppState;
use crate::telemetry;

const KEEP_ALIVE: Duration = Duration::from_secs(20);

pub async fn events(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let account = match authenticate(&app, query.get("token").map(String::as_str), true).await {
        Ok(account) => account,
        Err(error) => return error.into_response(),
    };
    // A browser's EventSource sends the last `id:` it got by itself when it reconnects;
    // `?since=` serves a client starting a new EventSource (after a page reload, say).
    let resume = headers
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or_default().to_owned())
        .or_else(|| query.get("since").cloned())
        .map(|since| ResumeFrom::parse(&since));
    let span = tracing::info_span!("connection", player = %account.name);
    let Attached {
        conn,
        outbound,
        mut commands,
        mut limiter,
    } = match session::attach(&app, &account, Transport::Sse, resume)
        .instrument(span.clone())
        .await
    {
        Ok(attached) => attached,
        Err(ManagerError::Full) => return ApiError::ServerFull.into_response(),
        Err(ManagerError::Busy) => {
            return ApiError::Busy(std::time::Duration::from_secs(1)).into_response();
        }
        Err(_) => return ApiError::ShuttingDown.into_response(),
    };
    let kick = conn.kick.clone();
    // The connection's command loop: runs submitted messages in order until the stream
    // ends (the client went away, or the server closed it), then detaches the player.
    let alive = app.connections.token();
    tokio::spawn(
        async move {
            let _alive = alive;
            loop {
                tokio::select! {
                    biased;
                    _ = conn.kick.closed() => break,
                    message = commands.recv() => match message {
                        Some(message) => session::handle(&app, &conn, &mut limiter, Admission::Admitted, Ok(message)).await,
                        None => break,
                    },
                }
            }
            session::detach(&app, &conn).await;
        }
        .instrument(span),
    );
    Sse::new(event_stream(outbound, kick))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// Closes the connection when the response body is dropped, i.e. when the client is gone.
struct CloseOnDrop(Arc<Kick>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(crate::realtime::CloseReason::NORMAL);
    }
}

enum StreamState {
    Open,
    Closing,
    Done,
}

fn event_stream(
    outbound: Outbound,
    kick: Arc<Kick>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let guard = CloseOnDrop(kick);
    futures::stream::unfold(
        (outbound, guard, StreamState::Open),
        |(mut outbound, guard, state)| async move {
            let kick = guard.0.clone();
            match state {
                StreamState::Done => None,
                StreamState::Closing => {
                    let reason = kick.reason();
                    if reason.drain
                        && let Ok(queued) = outbound.try_recv()
                    {
                        // Bounded: the gate opens when the move's storing ends, either way.
                        if let Some(gate) = &queued.gate {
                            let _ = tokio::time::timeout(super::ws::GATE_WAIT, gate.opened()).await;
                        }
                        return Some((
                            Ok(frame_event(queued)),
                            (outbound, guard, StreamState::Closing),
                        ));
                    }
                    let body = serde_json::json!({"code": reason.code, "reason": reason.reason});
                    let event = Event::default().event("close").data(body.to_string());
                    Some((Ok(event), (outbound, guard, StreamState::Done)))
                }
                StreamState::Open => {
                    tokio::select! {
                        biased;
                        _ = kick.closed() => {
                            let event = Event::default().comment("closing");
                            Some((Ok(event), (outbound, guard, StreamState::Closing)))
                        }
                        queued = outbound.recv() => match queued {
                            Some(queued) => {
                                // A mover's `room_update` waits for its room to be stored.
                                if let Some(gate) = &queued.gate {
                                    let _ = tokio::time::timeout(super::ws::GATE_WAIT, gate.opened()).await;
                                }
                                Some((Ok(frame_event(queued)), (outbound, guard, StreamState::Open)))
                            }
                            None => None,
                        },
                    }
                }
            }
        },
    )
}

fn frame_event(queued: Queued) -> Event {
    metrics::histogram!(telemetry::DELIVERY_SECONDS).record(queued.since.elapsed().as_secs_f64());
    let event = Event::default().data(queued.frame.as_str());
    // The id is the frame's position, which the browser hands back as `Last-Event-ID` when
    // it reconnects; frames without one leave the last id as it was.
    match frame_position(queued.frame.as_str()) {
        Some(position) => event.id(position),
        None => event,
    }
}

/// The `position` string of a positioned frame (it follows the `sequence_number`).
fn frame_position(frame: &str) -> Option<&str> {
    frame_offset(frame.as_bytes())?;
    let start = frame.find("\"position\":\"")? + "\"position\":\"".len();
    let length = frame[start..].find('"')?;
    Some(&frame[start..start + length])
}
