//! Building and running the application: `run(listener, config, shutdown)` serves until
//! `shutdown` resolves, then drains (see [`run`]).

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Passwords, Tokens, load_or_create_secret, secret_fingerprint};
use crate::config::{Config, Secret};
use crate::db::{Accounts, RoomWriter, SecretCheck};
use crate::limits::{AuthLimiter, PlayerLimits};
use crate::nats::Fatal;
use crate::presence::Presence;
use crate::realtime::nats_handler::NatsMessageHandler;
use crate::realtime::{CloseReason, ConnectionManager, EventPublisher, EventStream, Interests};
use crate::services::game_tick::GameTickService;
use crate::world::World;

/// Largest event accepted from NATS is the client frame limit, but never less than this.
pub const MIN_EVENT_BYTES: usize = 8 * 1024;

/// How long shutdown waits for connections to say goodbye.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct AppInner {
    pub config: Config,
    /// This node's id (configured, or generated at start).
    pub node_id: String,
    pub world: Arc<World>,
    pub accounts: Accounts,
    /// Whether this node signs tokens with the secret the other nodes use.
    pub secret_check: SecretCheck,
    pub room_writer: RoomWriter,
    pub passwords: Passwords,
    pub tokens: Tokens,
    pub manager: Arc<ConnectionManager>,
    /// The world's roster and this node's part in it.
    pub presence: Presence,
    pub publisher: Arc<EventPublisher>,
    /// What this node subscribes to.
    pub interests: Arc<Interests>,
    /// The world's event stream, which resuming connections read back.
    pub stream: Arc<EventStream>,
    /// The last stream sequence this node delivered: where a new connection starts.
    pub delivered_through: Arc<std::sync::atomic::AtomicU64>,
    /// Resumes reading the stream at once.
    pub resume_slots: Arc<tokio::sync::Semaphore>,
    pub auth_limiter: AuthLimiter,
    pub player_limits: PlayerLimits,
    /// Every connection's tasks, so shutdown can wait for them to finish.
    pub connections: tokio_util::task::TaskTracker,
    pub started: Instant,
}

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    /// The parts of the server the game logic uses.
    pub fn game(&self) -> crate::game::Game<'_> {
        crate::game::Game {
            world: &self.world,
            manager: &self.manager,
            presence: &self.presence,
            publisher: &self.publisher,
            interests: &self.interests,
            rooms: &self.room_writer,
        }
    }
}

/// The sockets a node serves on, bound before it starts (tests bind port 0 and read the
/// ports back).
pub struct Listeners {
    /// HTTP, WebSocket and SSE.
    pub http: TcpListener,
    /// Telnet, for MUD clients; `None`: no telnet.
    pub telnet: Option<TcpListener>,
}

/// Serves on `listener` (and on `telnet_bind`, bound here) until `shutdown` resolves;
/// see [`run_on`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let telnet = match config.telnet_bind.0 {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (telnet_bind)"))?,
        ),
        None => None,
    };
    let listeners = Listeners {
        http: listener,
        telnet,
    };
    run_on(listeners, config, shutdown).await
}

/// Serves on `listeners` until `shutdown` resolves, then: stops accepting, closes every
/// socket with 1001 (each publishing its `player_left_game`), waits for them, flushes
/// NATS and closes the database.
pub async fn run_on(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        http: listener,
        telnet,
    } = listeners;
    let world = Arc::new(match &config.world_dir {
        Some(dir) => World::load_dir(dir)?,
        None => World::built_in()?,
    });
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let database = crate::db::redact_url(&config.database_url());
    let accounts = Accounts::open(&config.database_url())
        .await
        .with_context(|| format!("cannot open database {database}"))?;
    let secret = load_or_create_secret(
        config.jwt_secret.as_ref().map(Secret::expose),
        &config.data_dir,
    )?;
    let secret_check = accounts
        .check_secret(&secret_fingerprint(&secret))
        .await
        .with_context(|| format!("cannot read the cluster's settings in {database}"))?;
    // Served anyway: refusing would take this node down for what may be a deliberate
    // rotation; the error and /health make the mistake plain.
    if !secret_check.matches() {
        tracing::error!(
            ours = %secret_check.ours,
            cluster = %secret_check.cluster,
            database = %database,
            "this node's JWT secret differs from the one the other nodes of this database use: \
             tokens issued by other nodes will be refused here and this node's elsewhere; \
             give every node the same NATSMUD_JWT_SECRET"
        );
    }
    let tokens = Tokens::new(&secret, Duration::from_secs(config.token_ttl_secs));
    let passwords = Passwords::from_config(&config)?;
    let auth_limiter = AuthLimiter::new(config.auth_per_minute);
    let player_limits = PlayerLimits::new(
        config.commands_per_sec,
        config.command_burst,
        config.connects_per_minute,
    );

    let manager = Arc::new(ConnectionManager::new(
        &world,
        config.outbound_queue as usize,
    ));
    let fatal = Arc::new(Fatal::default());
    let reconnected = Arc::new(tokio::sync::Notify::new());
    let (catch_ups_tx, catch_ups) = tokio::sync::mpsc::unbounded_channel();
    let client = crate::nats::connect(
        &config,
        manager.clone(),
        fatal.clone(),
        reconnected.clone(),
        catch_ups_tx,
    )
    .await
    .with_context(|| format!("cannot use NATS URL {}", config.nats_url))?;
    let stream = Arc::new(EventStream::new(client.clone(), &config));
    let node_id = config.node_id.clone().unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("node-{}", &id[..12])
    });
    // This run of the node: a node restarted with the same id is another run (its order
    // stamps start again at 1; its old players are written off as a dead run's).
    let incarnation = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let presence = Presence::new(
        client.clone(),
        crate::presence::Settings::from_config(&config),
        node_id.clone(),
        incarnation.clone(),
        manager.clone(),
        reconnected,
    );
    let publisher = Arc::new(EventPublisher::new(
        client.clone(),
        stream.clone(),
        config.subject_prefix.clone(),
        config.publish_timeout(),
        format!("{node_id}-{incarnation}"),
    ));
    let metrics_handle = crate::telemetry::metrics_handle();

    let stop_handler = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let handler = NatsMessageHandler::new(
        config.subject_prefix.clone(),
        stream.clone(),
        manager.clone(),
        presence.clone(),
        // natsmud's own events reach ~2.3 KiB (a 500-character say in 4-byte characters),
        // whatever the client frame limit is set to.
        (config.max_frame_bytes as usize).max(MIN_EVENT_BYTES),
        config.tick_interval(),
        u64::from(config.catch_up_max),
    );
    let delivered_through = handler.delivered_through();
    let (interests, feeds) = Interests::new(
        client.clone(),
        manager.clone(),
        config.subject_prefix.clone(),
        config.subscriptions,
        config.interest_max_places(manager.place_count()),
    );
    let handler_task = tokio::spawn(handler.run(
        client.clone(),
        interests.clone(),
        feeds,
        catch_ups,
        ready_tx,
        stop_handler.clone(),
        fatal.clone(),
    ));
    // Accept players only once the subscriptions are live, so no early event is missed.
    let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
    if client.connection_state() == async_nats::connection::State::Connected {
        let info = client.server_info();
        tracing::info!(version = %info.version, cluster = ?info.cluster, "NATS server");
        if let Err(problem) = crate::nats::check_server(&info) {
            stop_handler.cancel();
            return Err(anyhow::anyhow!(problem));
        }
    }
    let stop_presence = CancellationToken::new();
    let presence_task = tokio::spawn(
        presence
            .clone()
            .run(publisher.clone(), stop_presence.clone()),
    );
    // Players are let in once the roster knows who is online (when NATS is up).
    if client.connection_state() == async_nats::connection::State::Connected
        && !presence.ready(Duration::from_secs(5)).await
    {
        tracing::warn!("presence is not ready yet; serving anyway");
    }

    tracing::info!(
        address = %listener.local_addr()?,
        world = %world.name,
        rooms = world.room_count(),
        nats = %config.nats_url,
        database = accounts.kind(),
        node = %node_id,
        "natsmud serving"
    );
    let resume_slots = Arc::new(tokio::sync::Semaphore::new(
        config.resume_concurrency as usize,
    ));
    let state = AppState(Arc::new(AppInner {
        config,
        node_id,
        world,
        room_writer: RoomWriter::spawn(accounts.clone()),
        accounts,
        secret_check,
        passwords,
        tokens,
        manager: manager.clone(),
        presence: presence.clone(),
        publisher: publisher.clone(),
        interests: interests.clone(),
        resume_slots,
        stream,
        delivered_through,
        auth_limiter,
        player_limits,
        connections: tokio_util::task::TaskTracker::new(),
        started: Instant::now(),
    }));

    let stop_services = CancellationToken::new();
    let tick_task = state.config.tick_interval().map(|interval| {
        let service = GameTickService {
            interval,
            publisher: publisher.clone(),
            presence: presence.clone(),
        };
        tokio::spawn(service.run(stop_services.clone()))
    });
    if let Some(handle) = metrics_handle {
        tokio::spawn(crate::telemetry::run_upkeep(handle, stop_services.clone()));
    }
    tokio::spawn(forget_idle_limits(state.clone(), stop_services.clone()));
    tokio::spawn(interests.clone().run_upkeep(stop_services.clone()));

    let stop_http = CancellationToken::new();
    let net_settings = crate::net::Settings::from_config(&state.config);
    // One count of sockets for both listeners, so the caps hold across them.
    let admission = crate::net::Admission::new(net_settings.max_per_ip, net_settings.max_sockets);
    let server = crate::net::serve(
        listener,
        crate::routes::router(state.clone()),
        net_settings,
        admission.clone(),
        stop_http.clone(),
    );
    let server_task = tokio::spawn(server);
    let telnet_task = match telnet {
        Some(telnet) => {
            tracing::info!(address = %telnet.local_addr()?, "serving telnet");
            Some(tokio::spawn(crate::telnet::serve(
                telnet,
                state.clone(),
                admission,
                stop_http.clone(),
            )))
        }
        None => None,
    };
    if let Some(address) = state.config.admin_bind {
        let admin = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (admin_bind)"))?;
        tracing::info!(address = %admin.local_addr()?, "serving /health and /metrics");
        let router = crate::routes::admin_router(state.clone());
        let stop = stop_http.clone();
        tokio::spawn(async move {
            let _ = axum::serve(admin, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }
    let failure = tokio::select! {
        () = shutdown => None,
        problem = fatal.raised() => {
            tracing::error!(%problem, "stopping");
            Some(problem)
        }
    };
    tracing::info!("shutting down");

    stop_http.cancel();
    stop_services.cancel();
    if let Some(task) = tick_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    manager.close_all(CloseReason::SHUTDOWN);
    // Each connection answers what it has read, writes its queue and its close frame.
    state.connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, state.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = manager.connected_count(),
            "some connections did not close in time"
        );
    }
    // Every disconnect has given its presence back; now this node's heartbeat and the tick
    // lease go too, so the others need not wait for them to expire.
    stop_presence.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), presence_task).await;
    // Every disconnect has published its `player_left_game`; push them out before going.
    state.publisher.flush().await;
    stop_handler.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), handler_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), server_task).await;
    if let Some(task) = telnet_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    // Moves already answered are stored before the database closes.
    state.room_writer.close().await;
    state.accounts.close().await;
    tracing::info!("stopped");
    match failure {
        Some(problem) => Err(anyhow::anyhow!(problem)),
        None => Ok(()),
    }
}

/// Every so often, forgets the rate-limit state of addresses and players whose allowance
/// is full again, so that checks stay cheap and memory stays flat.
async fn forget_idle_limits(state: AppState, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                state.auth_limiter.upkeep();
                state.player_limits.upkeep();
            }
        }
    }
}
