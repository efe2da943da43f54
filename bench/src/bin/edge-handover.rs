//! The edge hand-over of a media pod's surge rollout, over repeated rounds:
//! two signal-node members and an edge on loopback (release build), and a
//! dialog whose in-dialog requests go through the edge every 10 ms. In each
//! round a second edge starts on the same SIP address, as the successor
//! pod's edge does; once it is ready the first one gets SIGTERM, hands the
//! port over and exits.
//!
//! Printed per round and as median and p99:
//! - gap: the longest time without an answer around the hand-over (probes
//!   go every 10 ms, so 10 ms is no interruption at all);
//! - lost: requests that were never answered (a device would retransmit
//!   them, after T1 = 500 ms over UDP);
//! - exit: SIGTERM to the old edge's exit.
//!
//! `cargo build --release -p voicecluster-signal-node` first (`bench/run`
//! does); `ROUNDS=N` changes the number of hand-overs (10 by default).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use voicecluster_bench::loopback::{
    Dialog, Member, PROBE_EVERY, Process, edge_metric, free_port, median_p99, rounds, start_edge,
};

/// Port slots the edges' admin servers may take, ten ports apart.
const SLOTS: u16 = 4;

/// Probes sent before the SIGTERM and after it, in each round.
const BEFORE: Duration = Duration::from_secs(1);
const AFTER: Duration = Duration::from_secs(3);

fn ready(admin: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200")
}

/// The admin address of a ready edge in a slot other than `taken`.
fn new_edge_admin(base: SocketAddr, taken: SocketAddr) -> Result<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = (0..SLOTS)
            .map(|k| SocketAddr::new(base.ip(), base.port() + 10 * k))
            .filter(|a| *a != taken)
            .find(|a| ready(*a) && edge_metric(*a, "voicecluster_edge_backends") == 2.0);
        if let Some(a) = found {
            return Ok(a);
        }
        if Instant::now() > deadline {
            bail!("the new edge was not ready within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A base admin port whose slots are all free.
fn admin_base(ip: IpAddr) -> Result<SocketAddr> {
    for _ in 0..100 {
        let p = free_port(ip)?;
        if (0..SLOTS).all(|k| {
            p.checked_add(10 * k)
                .is_some_and(|q| std::net::TcpListener::bind((ip, q)).is_ok())
        }) {
            return Ok(SocketAddr::new(ip, p));
        }
    }
    bail!("no free admin port slots")
}

struct Round {
    gap: Duration,
    lost: usize,
    exit: Duration,
}

/// One hand-over: the dialog's requests go through the edge for
/// [`BEFORE`], then the old edge gets SIGTERM, and they go on for
/// [`AFTER`]; the gap, the requests lost, and how long the old edge took
/// to leave.
fn hand_over(
    dialog: &mut Dialog,
    owner: SocketAddr,
    old: &mut Process,
    round: usize,
) -> Result<Round> {
    let (mut sent, mut answers) = (BTreeMap::new(), BTreeMap::new());
    let start = Instant::now();
    let mut term_at = None;
    let mut exited = None;
    let mut next_probe = Instant::now();
    while start.elapsed() < BEFORE + AFTER {
        if Instant::now() >= next_probe {
            let n = dialog.send(owner)?;
            sent.insert(n, Instant::now());
            next_probe += PROBE_EVERY;
        }
        if let Some(seq) = dialog.answer() {
            answers.entry(seq).or_insert_with(Instant::now);
        }
        if term_at.is_none() && start.elapsed() >= BEFORE {
            Command::new("kill")
                .args(["-TERM", &old.0.id().to_string()])
                .status()?;
            term_at = Some(Instant::now());
        }
        if let (Some(t), None) = (term_at, exited)
            && old.0.try_wait()?.is_some()
        {
            exited = Some(t.elapsed());
        }
    }
    // Late answers of the last probes.
    let drain = Instant::now() + Duration::from_millis(300);
    while Instant::now() < drain {
        if let Some(seq) = dialog.answer() {
            answers.entry(seq).or_insert_with(Instant::now);
        }
    }
    let Some(exit) = exited else {
        bail!("round {}: the old edge did not leave", round + 1);
    };
    let mut times: Vec<Instant> = answers.values().copied().collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or(BEFORE + AFTER);
    let lost = sent.keys().filter(|s| !answers.contains_key(s)).count();
    println!(
        "  round {:2}: longest gap {:4} ms, {lost} of {} requests lost, old edge gone {:4} ms after SIGTERM",
        round + 1,
        gap.as_millis(),
        sent.len(),
        exit.as_millis()
    );
    Ok(Round { gap, lost, exit })
}

fn main() -> Result<()> {
    let rounds = rounds();
    let dir = std::env::temp_dir().join(format!("vc-bench-handover-{}", std::process::id()));
    let members = Member::pair(&dir)?;
    let _running = [members[0].start()?, members[1].start()?];
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // Linux shares only a port named in the bind, never one it picked.
    let edge_sip = SocketAddr::new(lo, free_port(lo)?);
    let base = admin_base(lo)?;
    let mut edge = start_edge(edge_sip, base, SLOTS, &members)?;
    let mut edge_admin = new_edge_admin(base, SocketAddr::new(lo, 0))?;

    let mut dialog = Dialog::new(lo, edge_sip)?;
    let owner = members[0].sip;
    println!(
        "edge hand-over: {rounds} rounds of a successor edge taking the SIP port over, a dialog's requests every {} ms",
        PROBE_EVERY.as_millis()
    );
    let mut results = Vec::new();
    for round in 0..rounds {
        let next = start_edge(edge_sip, base, SLOTS, &members)?;
        let next_admin = new_edge_admin(base, edge_admin)?;
        results.push(hand_over(&mut dialog, owner, &mut edge, round)?);
        edge = next;
        edge_admin = next_admin;
    }
    let lost: usize = results.iter().map(|r| r.lost).sum();
    println!(
        "  longest signalling gap: {}; requests lost: {lost} in {rounds} hand-overs",
        median_p99(results.iter().map(|r| r.gap).collect())
    );
    println!(
        "  old edge gone after SIGTERM: {}",
        median_p99(results.iter().map(|r| r.exit).collect())
    );
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
