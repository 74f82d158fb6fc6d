//! The HTTP edge: our own accept loop serving the axum router over HTTP/1 (with upgrades,
//! for WebSockets), so that every socket gets the same treatment before a handler sees it:
//!
//! - admission: at most `max_connections_per_ip` sockets per client address (IPv6: per
//!   /64) and `max_sockets` in all; beyond either, a short `503` written without waiting
//!   and the socket closed, so file descriptors stay for the database, NATS and `/health`;
//! - `TCP_NODELAY` (small frames must not wait for the peer's delayed ACK);
//! - a deadline for each request head, which also closes kept-alive connections left idle;
//! - a write deadline on the socket itself ([`Socket`]), which upgraded WebSockets and SSE
//!   streams inherit: a client that stops reading cannot hold a connection forever.
//!
//! Shutdown: [`serve`] stops accepting when told, lets each in-flight response finish (an
//! SSE stream ends when the application closes it) and returns when every HTTP connection
//! has ended. Upgraded connections have left hyper by then; the application closes them.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::config::Config;
use crate::telemetry;

/// Open files kept back from sockets when `max_sockets` is derived: the database and its
/// journal, NATS, logs, the process's own files, and refusing a socket beyond the cap
/// (which needs a descriptor for a moment).
pub const FD_RESERVE: u64 = 128;

/// How long the accept loop rests after an error such as running out of descriptors; the
/// pending connection stays in the backlog meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this period for each kind of repeated trouble.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// What a refused client is told to wait.
const REFUSAL_RETRY_AFTER_SECS: u64 = 5;

/// What the accept loop enforces; see [`Settings::from_config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    /// 0: no per-address cap.
    pub max_per_ip: u32,
    pub max_sockets: usize,
}

impl Settings {
    /// The configured settings. Raises the open-files limit first (see
    /// [`raise_open_files_limit`]); a `max_sockets` of 0 is derived from it.
    pub fn from_config(config: &Config) -> Self {
        let open_files = raise_open_files_limit();
        let room = derived_max_sockets(open_files);
        let max_sockets = match config.max_sockets as usize {
            0 => room,
            n => {
                if n > room {
                    tracing::warn!(
                        max_sockets = n,
                        open_files,
                        "max_sockets leaves too few open files for the database and NATS; \
                         raise the open-files limit (ulimit -n) or lower max_sockets"
                    );
                }
                n
            }
        };
        let players = config.max_connections as usize;
        if players > 0 && players >= max_sockets {
            tracing::warn!(
                max_connections = players,
                max_sockets,
                "players could take every socket, leaving none for logins and page loads; \
                 keep max_connections below max_sockets (see docs/configuration.md)"
            );
        }
        Self {
            header_timeout: config.http_header_timeout(),
            write_timeout: config.write_timeout(),
            max_per_ip: config.max_connections_per_ip,
            max_sockets,
        }
    }
}

/// Sockets for a soft open-files limit: all but [`FD_RESERVE`], and at least half of a
/// small limit. No known limit: no cap.
fn derived_max_sockets(open_files: Option<u64>) -> usize {
    match open_files {
        Some(soft) => {
            let sockets = soft.saturating_sub(FD_RESERVE).max(soft / 2).max(1);
            usize::try_from(sockets).unwrap_or(usize::MAX)
        }
        None => usize::MAX,
    }
}

/// Raises the soft open-files limit to the hard limit and logs both; returns the soft
/// limit now in force, or `None` where the platform has none.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
            tracing::warn!(%error, "cannot raise the open-files limit");
        }
        match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, hard)) => {
                tracing::info!(soft, hard, "open-files limit");
                Some(soft)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the open-files limit");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting and
/// returns once every HTTP connection has finished (see the module's notes). `admission`
/// counts sockets; the telnet listener shares it, so the caps hold across both.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    admission: Admission,
    stop: CancellationToken,
) {
    tracing::info!(
        max_sockets = settings.max_sockets,
        max_connections_per_ip = settings.max_per_ip,
        header_timeout_secs = settings.header_timeout.as_secs(),
        write_timeout_secs = settings.write_timeout.as_secs(),
        "accepting connections"
    );
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    let connections = TaskTracker::new();
    let mut acceptor = Acceptor::new(
        listener,
        admission,
        settings.write_timeout,
        Refusal::response,
    );
    while let Some((socket, peer)) = acceptor.next(&stop).await {
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request)
        });
        let connection = http
            .serve_connection(TokioIo::new(socket), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    // Ends an idle connection now, an in-flight one after its response.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "HTTP connection ended");
            }
        });
    }
    drop(acceptor);
    connections.close();
    connections.wait().await;
}

/// One listener's accept loop: admission under the socket caps (a socket over one is
/// answered with what `answer` makes of the refusal, and closed), `TCP_NODELAY`, and the
/// write deadline; accept errors are logged at most once per period, with a short rest.
pub struct Acceptor {
    listener: TcpListener,
    admission: Admission,
    write_timeout: Duration,
    answer: fn(Refusal) -> Vec<u8>,
    accept_errors: Throttled,
    refused_per_ip: Throttled,
    refused_max_sockets: Throttled,
}

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        admission: Admission,
        write_timeout: Duration,
        answer: fn(Refusal) -> Vec<u8>,
    ) -> Self {
        Self {
            listener,
            admission,
            write_timeout,
            answer,
            accept_errors: Throttled::new(LOG_EVERY),
            refused_per_ip: Throttled::new(LOG_EVERY),
            refused_max_sockets: Throttled::new(LOG_EVERY),
        }
    }

    /// The next admitted socket, or `None` once `stop` is cancelled.
    pub async fn next(&mut self, stop: &CancellationToken) -> Option<(Socket, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    metrics::counter!(telemetry::ACCEPT_ERRORS).increment(1);
                    // The client gave up before we took it: nothing is wrong here.
                    if is_connection_error(&error) {
                        continue;
                    }
                    if let Some(count) = self.accept_errors.note() {
                        tracing::error!(%error, count, "cannot accept connections; retrying");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            };
            match self.admission.admit(peer.ip()) {
                Ok(slot) => {
                    configure(&stream);
                    return Some((Socket::new(stream, self.write_timeout, slot), peer));
                }
                Err(refusal) => {
                    let (reason, log) = match refusal {
                        Refusal::PerAddress => ("per_ip", &mut self.refused_per_ip),
                        Refusal::MaxSockets => ("max_sockets", &mut self.refused_max_sockets),
                    };
                    metrics::counter!(telemetry::SOCKETS_REFUSED, "reason" => reason).increment(1);
                    if let Some(count) = log.note() {
                        tracing::warn!(%peer, reason, count, "refusing connections over the cap");
                    }
                    refuse(stream, &(self.answer)(refusal));
                }
            }
        }
    }
}

/// What every accepted socket gets before it is served.
pub fn configure(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Why a socket was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerAddress,
    MaxSockets,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Self::PerAddress => "too many connections from your address; close some and retry",
            Self::MaxSockets => "the server has too many connections open; retry shortly",
        }
    }

    /// The whole answer, complete in one small write.
    pub fn response(self) -> Vec<u8> {
        let body = serde_json::json!({
            "error": {"code": "too_many_connections", "message": self.message()}
        })
        .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\nretry-after: {REFUSAL_RETRY_AFTER_SECS}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Answers a socket over a cap with `answer` and closes it, never waiting on the client.
pub fn refuse(stream: TcpStream, answer: &[u8]) {
    // A plain non-blocking socket: tokio's `try_write` would not even try before the
    // reactor has reported the new socket writable.
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    use std::io::{Read, Write};
    // Whatever the client already sent is read first: closing with unread input makes the
    // kernel reset the connection, which can destroy the answer before it is read.
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match stream.read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.write(answer);
}

/// Counts sockets, in all and per client address.
#[derive(Clone)]
pub struct Admission {
    counts: Arc<Counts>,
}

struct Counts {
    max_per_ip: u32,
    max_sockets: usize,
    open: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, u32>>,
}

/// One admitted socket's place; given back when dropped (with the socket).
pub struct Slot {
    counts: Arc<Counts>,
    address: Option<IpAddr>,
}

impl Admission {
    pub fn new(max_per_ip: u32, max_sockets: usize) -> Self {
        Self {
            counts: Arc::new(Counts {
                max_per_ip,
                max_sockets,
                open: AtomicUsize::new(0),
                per_address: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn admit(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let counts = &self.counts;
        if counts.open.fetch_add(1, Ordering::AcqRel) >= counts.max_sockets {
            counts.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::MaxSockets);
        }
        let address = if counts.max_per_ip > 0 {
            let key = address_key(ip);
            let mut per_address = counts
                .per_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let held = per_address.entry(key).or_insert(0);
            if *held >= counts.max_per_ip {
                drop(per_address);
                counts.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerAddress);
            }
            *held += 1;
            Some(key)
        } else {
            None
        };
        metrics::gauge!(telemetry::SOCKETS_OPEN).increment(1.0);
        Ok(Slot {
            counts: counts.clone(),
            address,
        })
    }

    /// Sockets admitted and still open.
    pub fn open(&self) -> usize {
        self.counts.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(address) = self.address {
            let mut per_address = self
                .counts
                .per_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Entry::Occupied(mut held) = per_address.entry(address) {
                *held.get_mut() -= 1;
                if *held.get() == 0 {
                    held.remove();
                }
            }
        }
        self.counts.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(telemetry::SOCKETS_OPEN).decrement(1.0);
    }
}

/// The key a client address is counted under: IPv4 addresses as they are (also when
/// mapped into IPv6), IPv6 by /64, the block one subscriber usually gets.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// An accepted socket with a write deadline: a write (or flush) that makes no progress for
/// `write_timeout` fails with [`io::ErrorKind::TimedOut`], which ends the connection
/// whoever is writing (hyper, or an upgraded WebSocket or SSE stream). The timer exists
/// only while a write waits, so an idle socket carries none. Holds the socket's [`Slot`].
pub struct Socket {
    stream: TcpStream,
    write_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl Socket {
    pub fn new(stream: TcpStream, write_timeout: Duration, slot: Slot) -> Self {
        Self {
            stream,
            write_timeout,
            stalled: None,
            _slot: slot,
        }
    }

    /// Passes on a write's outcome; while it keeps waiting, runs the deadline.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = None;
        metrics::counter!(telemetry::WRITE_TIMEOUTS).increment(1);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {} s",
                self.write_timeout.as_secs_f32()
            ),
        )))
    }

    #[cfg(test)]
    fn has_timer(&self) -> bool {
        self.stalled.is_some()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.deadline(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.deadline(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.deadline(cx, poll)
    }
}

/// Counts repeated trouble and says when to log it: at once, then at most once per period,
/// with how many happened since the last line.
#[derive(Debug)]
pub struct Throttled {
    every: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttled {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            unlogged: 0,
        }
    }

    /// Counts one; `Some(count)` when a line is due, with the count since the last one.
    pub fn note(&mut self) -> Option<u64> {
        self.note_at(Instant::now())
    }

    fn note_at(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client = client.unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = accepted.unwrap_or_else(|e| panic!("{e}"));
        (server, client)
    }

    #[tokio::test]
    async fn accepted_sockets_get_nodelay() {
        let (server, _client) = pair().await;
        assert!(!server.nodelay().unwrap_or(true));
        configure(&server);
        assert!(server.nodelay().unwrap_or(false));
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_times_out_and_an_idle_socket_has_no_timer() {
        let (server, client) = pair().await;
        let admission = Admission::new(0, 10);
        let slot = admission.admit(IpAddr::from([127, 0, 0, 1]));
        let slot = slot.unwrap_or_else(|e| panic!("{e:?}"));
        let mut socket = Socket::new(server, Duration::from_millis(300), slot);
        socket
            .write_all(b"hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!socket.has_timer(), "a finished write leaves no timer");
        // The client never reads: the buffers fill, then the deadline passes.
        let chunk = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let error = loop {
            if let Err(error) = socket.write_all(&chunk).await {
                break error;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never timed out"
            );
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(!socket.has_timer());
        assert_eq!(admission.open(), 1);
        drop(socket);
        assert_eq!(admission.open(), 0, "the slot goes with the socket");
        drop(client);
    }

    #[test]
    fn sockets_are_capped_per_address_and_in_all() {
        let admission = Admission::new(2, 3);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = admission.admit(a);
        let second = admission.admit(a);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(admission.admit(a).err(), Some(Refusal::PerAddress));
        let third = admission.admit(b);
        assert!(third.is_ok());
        assert_eq!(admission.admit(b).err(), Some(Refusal::MaxSockets));
        drop(first);
        assert!(
            admission.admit(a).is_ok(),
            "a closed socket frees its place"
        );
        let unlimited = Admission::new(0, usize::MAX);
        let held: Vec<_> = (0..1000).map(|_| unlimited.admit(a)).collect();
        assert!(held.iter().all(Result::is_ok));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let same: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(address_key(one), address_key(same));
        assert_ne!(address_key(one), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(address_key(mapped), IpAddr::from([192, 0, 2, 7]));
        let admission = Admission::new(1, 10);
        let _held = admission.admit(one);
        assert_eq!(admission.admit(same).err(), Some(Refusal::PerAddress));
        assert!(admission.admit(other).is_ok());
    }

    #[test]
    fn the_socket_cap_is_derived_from_the_open_files_limit() {
        assert_eq!(derived_max_sockets(Some(1024)), 1024 - 128);
        assert_eq!(derived_max_sockets(Some(65_536)), 65_536 - 128);
        assert_eq!(derived_max_sockets(Some(200)), 100);
        assert_eq!(derived_max_sockets(None), usize::MAX);
    }

    #[test]
    fn repeated_trouble_is_logged_at_most_once_per_period_with_a_count() {
        let mut log = Throttled::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(log.note_at(start), Some(1));
        for i in 1..100 {
            assert_eq!(log.note_at(start + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(log.note_at(start + Duration::from_secs(11)), Some(100));
    }

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let response = String::from_utf8(Refusal::PerAddress.response()).unwrap_or_default();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(body["error"]["code"], "too_many_connections");
    }
}
