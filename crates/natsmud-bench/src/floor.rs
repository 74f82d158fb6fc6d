//! `natsmud-bench floor`: what the kernel alone charges for a fan-out on this machine.
//!
//! A tick (or a `global`) is one small frame written to every player's socket: one `send`
//! per recipient, whatever the server does around it. This measures exactly that and
//! nothing else — no WebSocket, no JSON, no NATS: N loopback TCP connections, one or more
//! sender threads writing one frame to each, and a receiver (a one-thread tokio runtime
//! with a task per socket, like a load-generator worker) stamping when each frame arrives.
//! Its CPU per delivery is a lower bound for natsmud's (which does all this and more); with
//! the cores it gives a lower bound for how long a fan-out to N players takes. Its receipt
//! times are stamped when the receiver's task runs, not by the kernel as in the scenarios,
//! so they are an illustration, not a bound.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::clock::now_us;
use crate::provenance::Provenance;

#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// Connections (each costs two open files; this process may hold ~19,900).
    #[arg(long, default_value_t = 9000)]
    pub sockets: usize,
    /// Fan-outs measured (after one unmeasured warm-up round).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Bytes per frame (a game_tick envelope is about 160).
    #[arg(long, default_value_t = 160)]
    pub frame_bytes: usize,
    /// Sender threads, each writing to its share of the sockets.
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Also write the results here (JSON), for the report.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What `floor --out` writes and the report reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorResult {
    pub provenance: Provenance,
    pub sockets: usize,
    pub senders: usize,
    pub frame_bytes: usize,
    pub rounds: Vec<Round>,
}

impl FloorResult {
    /// The median round by p99 (rounds vary with what else the machine does).
    pub fn median(&self) -> Option<&Round> {
        let mut by_p99: Vec<&Round> = self.rounds.iter().collect();
        by_p99.sort_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
        by_p99.get(by_p99.len() / 2).copied()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// Receipt time after the round started, over all sockets.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU time of the sender threads per frame sent.
    pub send_cpu_us: f64,
    /// CPU time of the whole process (senders and receiver) per frame delivered.
    pub total_cpu_us: f64,
}

pub fn run(args: &FloorArgs) -> Result<()> {
    if args.sockets == 0 || args.senders == 0 || args.frame_bytes == 0 {
        bail!("--sockets, --senders and --frame-bytes must be at least 1");
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let addr = listener.local_addr()?;
    let mut clients = Vec::with_capacity(args.sockets);
    let mut servers = Vec::with_capacity(args.sockets);
    for n in 0..args.sockets {
        let client = TcpStream::connect(addr)
            .with_context(|| format!("connection {n} (raise the open-files limit?)"))?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        clients.push(client);
        servers.push(server);
    }

    // Receipt time (µs since the epoch) of the current round, per socket; 0 = not yet.
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.sockets).map(|_| AtomicU64::new(0)).collect());
    let arrived = Arc::new(AtomicUsize::new(0));
    let receiver = {
        let received = received.clone();
        let arrived = arrived.clone();
        let frame_bytes = args.frame_bytes;
        std::thread::spawn(move || receive(clients, frame_bytes, received, arrived))
    };

    let frame = vec![b'x'; args.frame_bytes];
    let mut chunks: Vec<Vec<TcpStream>> = (0..args.senders).map(|_| Vec::new()).collect();
    for (n, server) in servers.into_iter().enumerate() {
        chunks[n % args.senders].push(server);
    }
    let mut results = Vec::new();
    for round in 0..=args.rounds {
        for slot in received.iter() {
            slot.store(0, Ordering::Relaxed);
        }
        arrived.store(0, Ordering::SeqCst);
        let cpu_before = process_cpu()?;
        let started = now_us();
        let send_cpu: Duration = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter_mut()
                .map(|chunk| {
                    let frame = &frame;
                    scope.spawn(move || -> Result<Duration> {
                        let cpu = thread_cpu()?;
                        for server in chunk.iter_mut() {
                            server.write_all(frame)?;
                        }
                        Ok(thread_cpu()?.saturating_sub(cpu))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("a sender panicked"))?)
                .sum::<Result<Duration>>()
        })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while arrived.load(Ordering::SeqCst) < args.sockets {
            if receiver.is_finished() {
                let why = match receiver.join() {
                    Ok(Ok(())) => "the receiver stopped".to_owned(),
                    Ok(Err(e)) => format!("the receiver failed: {e:#}"),
                    Err(_) => "the receiver panicked".to_owned(),
                };
                bail!(
                    "only {} of {} frames arrived: {why}",
                    arrived.load(Ordering::SeqCst),
                    args.sockets
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} frames arrived within 60 s",
                    arrived.load(Ordering::SeqCst),
                    args.sockets
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let total_cpu = process_cpu()?.saturating_sub(cpu_before);
        if round == 0 {
            continue;
        }
        let mut latencies: Vec<u64> = received
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed).saturating_sub(started))
            .collect();
        latencies.sort_unstable();
        let at = |q: f64| {
            let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len());
            latencies[index - 1] as f64 / 1000.0
        };
        let result = Round {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            send_cpu_us: send_cpu.as_secs_f64() * 1e6 / args.sockets as f64,
            total_cpu_us: total_cpu.as_secs_f64() * 1e6 / args.sockets as f64,
        };
        eprintln!(
            "floor: round {round}: {} sockets, {} sender(s): receipt p50 {:.1} ms p99 {:.1} ms max {:.1} ms; CPU per delivery: send {:.2} µs, send+receive {:.2} µs",
            args.sockets,
            args.senders,
            result.p50_ms,
            result.p99_ms,
            result.max_ms,
            result.send_cpu_us,
            result.total_cpu_us
        );
        results.push(result);
        // Let the receiver settle back into epoll before the next round.
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = FloorResult {
        provenance: Provenance::here(),
        sockets: args.sockets,
        senders: args.senders,
        frame_bytes: args.frame_bytes,
        rounds: results,
    };
    let json = serde_json::to_string_pretty(&result)?;
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{json}");
    Ok(())
}

/// The receiver: one task per socket on one thread, stamping each frame's arrival.
fn receive(
    clients: Vec<TcpStream>,
    frame_bytes: usize,
    received: Arc<Vec<AtomicU64>>,
    arrived: Arc<AtomicUsize>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut tasks = Vec::with_capacity(clients.len());
        for (n, client) in clients.into_iter().enumerate() {
            let mut stream = tokio::net::TcpStream::from_std(client)?;
            let received = received.clone();
            let arrived = arrived.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; frame_bytes];
                while stream.read_exact(&mut buf).await.is_ok() {
                    received[n].store(now_us(), Ordering::Relaxed);
                    arrived.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    })
}

fn thread_cpu() -> Result<Duration> {
    let spec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?;
    Ok(Duration::from(spec))
}

fn process_cpu() -> Result<Duration> {
    let spec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
    Ok(Duration::from(spec))
}
