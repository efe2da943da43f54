//! Failure detection and the signalling gap, over repeated kills: two
//! signal-node members (release build) on their own loopback addresses and
//! an edge heart-beating them (VoiceCluster defaults: 200 ms, 3 missed). In
//! each round the member a dialog is pinned to is killed with SIGKILL while
//! a probe sends that dialog's in-dialog requests through the edge every
//! 10 ms; then the member is started again at its address.
//!
//! Printed per round and as median and p99:
//! - detection: SIGKILL to the edge counting the member down;
//! - gap: SIGKILL to the first answered request sent after it, i.e. how
//!   long the dialog's requests went unanswered before its buddy answered.
//!   A device retransmitting over UDP (T1 = 500 ms) sees the gap rounded up
//!   to its next retransmission.
//!
//! `cargo build --release -p voicecluster-signal-node` first (`bench/run`
//! does); `ROUNDS=N` changes the number of kills (10 by default).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/signal-node");
const HEARTBEAT_MS: u64 = 200;
const THRESHOLD: u32 = 3;
const PROBE_EVERY: Duration = Duration::from_millis(10);

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

/// A port free for UDP and TCP on both addresses.
fn common_port(ips: &[IpAddr]) -> Result<u16> {
    for _ in 0..100 {
        let p = free_port(ips[0])?;
        if ips.iter().all(|ip| {
            UdpSocket::bind((*ip, p)).is_ok() && std::net::TcpListener::bind((*ip, p)).is_ok()
        }) {
            return Ok(p);
        }
    }
    bail!("no common free port")
}

struct Member {
    sip: SocketAddr,
    grpc: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
}

impl Member {
    fn start(&self) -> Result<Process> {
        std::fs::create_dir_all(&self.dir)?;
        let users = self.dir.join("users");
        std::fs::write(&users, "alice:wonder\n")?;
        let config = self.dir.join("config.json");
        std::fs::write(
            &config,
            r#"{"sip": {"domain": "voice.test"}, "signal": {"callLegMode": "Remotely"}}"#,
        )?;
        let admin = SocketAddr::new(self.sip.ip(), free_port(self.sip.ip())?);
        let management = SocketAddr::new(self.sip.ip(), free_port(self.sip.ip())?);
        let child = Command::new(BIN)
            .args(["--sip-addr", &self.sip.to_string()])
            .args(["--grpc-addr", &self.grpc.to_string()])
            .args(["--signal-peers", &self.peer.to_string()])
            .args(["--sip-domain", "voice.test"])
            .args(["--users-file", &users.display().to_string()])
            .args(["--config", &config.display().to_string()])
            .args([
                "--bills-file",
                &self.dir.join("bills").display().to_string(),
            ])
            .args(["--management-addr", &management.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--call-leg-providers", "127.0.0.1:1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {BIN}"))?;
        Ok(Process(child))
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// An in-dialog request of a dialog the edge pinned to `owner`.
fn probe(edge: SocketAddr, from: SocketAddr, owner: SocketAddr, n: u32) -> Vec<u8> {
    format!(
        "OPTIONS sip:{owner} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-probe-{n};rport\r\n\
         Route: <sip:{edge};lr;ft=u{};vb={}>\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@voice.test>;tag=probe\r\n\
         To: <sip:bob@voice.test>;tag=dialog\r\n\
         Call-ID: bench-probe-dialog\r\n\
         CSeq: {n} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        hex(&from.to_string()),
        hex(&owner.to_string())
    )
    .into_bytes()
}

/// The sequence number of the probe an answer is for, if it is a 200.
fn answered(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    if !text.starts_with("SIP/2.0 200") {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("CSeq: "))?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

fn edge_metric(admin: SocketAddr, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(200)) else {
        return 0.0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let ips = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
    ];
    let sip_port = common_port(&ips)?;
    let grpc = [
        SocketAddr::new(ips[0], free_port(ips[0])?),
        SocketAddr::new(ips[1], free_port(ips[1])?),
    ];
    let base = std::env::temp_dir().join(format!("vc-bench-failover-{}", std::process::id()));
    let members = [
        Member {
            sip: SocketAddr::new(ips[0], sip_port),
            grpc: grpc[0],
            peer: grpc[1],
            dir: base.join("m0"),
        },
        Member {
            sip: SocketAddr::new(ips[1], sip_port),
            grpc: grpc[1],
            peer: grpc[0],
            dir: base.join("m1"),
        },
    ];
    let mut running = [Some(members[0].start()?), Some(members[1].start()?)];
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let edge_sip = SocketAddr::new(lo, free_port(lo)?);
    let edge_admin = SocketAddr::new(lo, free_port(lo)?);
    let _edge = Process(
        Command::new(BIN)
            .args(["--sip-addr", &edge_sip.to_string()])
            .args(["--admin-addr", &edge_admin.to_string()])
            .arg("edge")
            .args([
                "--backends",
                &format!("{},{}", members[0].sip, members[1].sip),
            ])
            .args(["--heartbeat-interval-ms", &HEARTBEAT_MS.to_string()])
            .args(["--failure-threshold", &THRESHOLD.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let up = |n: f64| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while edge_metric(edge_admin, "voicecluster_edge_backends") != n {
            if Instant::now() > deadline {
                bail!("the edge never saw {n} backends up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    up(2.0)?;
    let sock = UdpSocket::bind((lo, 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(1)))?;
    let me = sock.local_addr()?;

    println!(
        "failover: {rounds} SIGKILLs of the member a dialog is pinned to; heartbeats every {HEARTBEAT_MS} ms, down after {THRESHOLD} missed"
    );
    let (mut detections, mut gaps) = (Vec::new(), Vec::new());
    let mut n = 0u32;
    for round in 0..rounds {
        let victim = round % 2;
        let owner = members[victim].sip;
        let downs = edge_metric(
            edge_admin,
            "voicecluster_edge_backend_changes_total{health=\"down\"}",
        );
        // A second of answered probes first: the dialog works.
        let warm = Instant::now() + Duration::from_millis(500);
        while Instant::now() < warm {
            n += 1;
            sock.send_to(&probe(edge_sip, me, owner, n), edge_sip)?;
            std::thread::sleep(PROBE_EVERY);
        }
        let first_after = n + 1;
        let killed = Instant::now();
        if let Some(p) = running[victim].take() {
            drop(p);
        }
        let (mut detected, mut gap) = (None, None);
        let mut buf = [0u8; 2048];
        let mut next_probe = Instant::now();
        let mut next_poll = Instant::now();
        while (detected.is_none() || gap.is_none()) && killed.elapsed() < Duration::from_secs(10) {
            if Instant::now() >= next_probe {
                n += 1;
                sock.send_to(&probe(edge_sip, me, owner, n), edge_sip)?;
                next_probe += PROBE_EVERY;
            }
            if let Ok((len, _)) = sock.recv_from(&mut buf)
                && answered(&buf[..len]).is_some_and(|seq| seq >= first_after)
                && gap.is_none()
            {
                gap = Some(killed.elapsed());
            }
            if detected.is_none() && Instant::now() >= next_poll {
                let now_downs = edge_metric(
                    edge_admin,
                    "voicecluster_edge_backend_changes_total{health=\"down\"}",
                );
                if now_downs > downs {
                    detected = Some(killed.elapsed());
                }
                next_poll = Instant::now() + Duration::from_millis(5);
            }
        }
        let (Some(detected), Some(gap)) = (detected, gap) else {
            bail!("round {round}: no failover within 10 s");
        };
        println!(
            "  round {:2}: killed {owner}: detected in {:4} ms, requests unanswered for {:4} ms",
            round + 1,
            detected.as_millis(),
            gap.as_millis()
        );
        detections.push(detected);
        gaps.push(gap);
        running[victim] = Some(members[victim].start()?);
        up(2.0)?;
    }
    detections.sort();
    gaps.sort();
    println!(
        "  detection: median {} ms, p99 {} ms",
        percentile(&detections, 0.5).as_millis(),
        percentile(&detections, 0.99).as_millis()
    );
    println!(
        "  longest signalling gap: median {} ms, p99 {} ms",
        percentile(&gaps, 0.5).as_millis(),
        percentile(&gaps, 0.99).as_millis()
    );
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
