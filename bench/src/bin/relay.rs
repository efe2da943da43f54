//! The media relay under load: a media-node process (release build) with
//! 1, 100 and 1000 concurrent legs, bridged in pairs over gRPC `CallLegs`,
//! each leg's endpoint sending 50 RTP packets a second to its leg. Prints
//! the packets relayed per second, per CPU-second of the media-node process
//! (from /proc), and the latency the relay adds (send to arrival at the
//! other endpoint, all on loopback), p50 and p99. Asserts nothing.
//!
//! `cargo build --release -p voicecluster-media-node` first (`bench/run`
//! does); `RUN_SECONDS=N` changes the length of each run (10 by default).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use voicecluster_api::grpc::call_legs_client::CallLegsClient;
use voicecluster_api::grpc::{BridgeRequest, CreateLegRequest, DestroyLegRequest, LegKind};
use voicecluster_bench::loopback::Process;

const BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/media-node");
const GRPC: &str = "127.0.0.1:47445";
const PACKETS_PER_SECOND: u64 = 50;

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// An RTP packet carrying its send time.
fn packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&now_micros().to_be_bytes());
    p.resize(12 + 160, 0xff);
    p
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// One leg's endpoint: its socket, and the leg it sends to.
type Endpoint = (Arc<UdpSocket>, SocketAddr);

/// `legs` legs, bridged in pairs. Each pair: two endpoints, two legs
/// bridged; each endpoint sends to its leg and receives what the other
/// endpoint sent. The endpoints, and the legs' ids.
async fn bridged_pairs(
    client: &mut CallLegsClient<Channel>,
    legs: usize,
) -> Result<(Vec<Endpoint>, Vec<u64>)> {
    let mut endpoints = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..legs / 2 {
        let (x, y) = (
            UdpSocket::bind("127.0.0.1:0").await?,
            UdpSocket::bind("127.0.0.1:0").await?,
        );
        let mut made = Vec::new();
        for s in [&x, &y] {
            let leg = client
                .create(CreateLegRequest {
                    owner: None,
                    kind: LegKind::Rtp.into(),
                    remote_address: s.local_addr()?.to_string(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            made.push((leg.id, leg.address.parse::<SocketAddr>()?));
        }
        client
            .bridge(BridgeRequest {
                a: made[0].0,
                b: made[1].0,
            })
            .await?;
        ids.extend([made[0].0, made[1].0]);
        endpoints.push((Arc::new(x), made[0].1));
        endpoints.push((Arc::new(y), made[1].1));
    }
    Ok((endpoints, ids))
}

/// What the endpoints receive: the latency of each packet that carries
/// its send time, and how many packets in all.
struct Received {
    latencies: Arc<Mutex<Vec<u64>>>,
    count: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Received {
    /// Every endpoint receiving until a second after `stop`.
    fn start(endpoints: &[Endpoint], stop: Instant) -> Self {
        let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
        let received = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (socket, _) in endpoints {
            let (socket, latencies, received) = (
                Arc::clone(socket),
                Arc::clone(&latencies),
                Arc::clone(&received),
            );
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut mine = Vec::new();
                while let Ok(Ok((n, _))) = tokio::time::timeout_at(
                    (stop + Duration::from_secs(1)).into(),
                    socket.recv_from(&mut buf),
                )
                .await
                {
                    if n >= 20 {
                        let mut sent = [0u8; 8];
                        sent.copy_from_slice(&buf[12..20]);
                        mine.push(now_micros().saturating_sub(u64::from_be_bytes(sent)));
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                }
                latencies.lock().await.extend(mine);
            }));
        }
        Self {
            latencies,
            count: received,
            tasks,
        }
    }

    /// Waits for every endpoint to stop receiving.
    async fn wait(&mut self) -> Result<()> {
        for t in self.tasks.drain(..) {
            t.await?;
        }
        Ok(())
    }

    /// The packets received, and their latencies, sorted.
    async fn figures(&self) -> (u64, Vec<u64>) {
        let got = self.count.load(Ordering::Relaxed);
        let mut l = self.latencies.lock().await.clone();
        l.sort_unstable();
        (got, l)
    }
}

/// Sends from every endpoint to its leg, [`PACKETS_PER_SECOND`], until
/// `stop`; the packets sent.
async fn send_until(endpoints: &[Endpoint], stop: Instant) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / PACKETS_PER_SECOND));
    let mut seq: u16 = 0;
    let mut sent = 0u64;
    while Instant::now() < stop {
        tick.tick().await;
        seq = seq.wrapping_add(1);
        for (socket, leg) in endpoints {
            if socket.send_to(&packet(seq), leg).await.is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

/// The figures of one run.
struct Run {
    legs: usize,
    sent: u64,
    got: u64,
    elapsed: Duration,
    /// CPU time the media-node process used meanwhile.
    cpu: Duration,
    /// Sorted.
    latencies: Vec<u64>,
}

impl Run {
    fn print(&self) {
        let &Self {
            legs,
            sent,
            got,
            elapsed,
            cpu,
            ref latencies,
        } = self;
        let per_second = got as f64 / elapsed.as_secs_f64();
        let per_cpu_second = if cpu.is_zero() {
            f64::NAN
        } else {
            got as f64 / cpu.as_secs_f64()
        };
        println!(
            "{legs:>5} legs: sent {sent}, relayed {got} ({:.1}%), {per_second:.0} packets/s, \
             {per_cpu_second:.0} packets per CPU-second (media-node used {:.2} CPU-s in {:.1} s), \
             added latency p50 {} µs, p99 {} µs",
            100.0 * got as f64 / sent.max(1) as f64,
            cpu.as_secs_f64(),
            elapsed.as_secs_f64(),
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
        );
    }
}

async fn run(
    client: &mut CallLegsClient<Channel>,
    pid: u32,
    legs: usize,
    seconds: u64,
) -> Result<()> {
    let (endpoints, ids) = bridged_pairs(client, legs).await?;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut received = Received::start(&endpoints, stop);
    let cpu_before = cpu_time(pid)?;
    let started = Instant::now();
    let sent = send_until(&endpoints, stop).await;
    let elapsed = started.elapsed();
    received.wait().await?;
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let (got, latencies) = received.figures().await;
    Run {
        legs,
        sent,
        got,
        elapsed,
        cpu,
        latencies,
    }
    .print();
    for id in ids {
        client.destroy(DestroyLegRequest { id }).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::var("RUN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    if !std::path::Path::new(BIN).exists() {
        bail!("{BIN} missing: cargo build --release -p voicecluster-media-node");
    }
    let child = Command::new(BIN)
        .args([
            "--grpc-addr",
            GRPC,
            "--rtp-ports",
            "40000-42999",
            "--capacity",
            "1500",
        ])
        .args(["--bind-ip", "127.0.0.1", "--media-timeout-seconds", "3600"])
        .env("VC_ADMIN_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting media-node")?;
    let process = Process(child);
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = CallLegsClient::connect(format!("http://{GRPC}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.context("media-node's CallLegs does not answer")?;
    println!(
        "relay: legs bridged in pairs, {PACKETS_PER_SECOND} packets/s per leg, {seconds} s per run, loopback"
    );
    for legs in [2, 100, 1000] {
        run(&mut client, process.0.id(), legs, seconds).await?;
    }
    Ok(())
}
