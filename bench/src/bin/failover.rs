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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use voicecluster_bench::loopback::{
    Dialog, HEARTBEAT_MS, Member, PROBE_EVERY, Process, THRESHOLD, edge_metric, free_port,
    median_p99, rounds, start_edge,
};

/// One round: a warm-up of answered requests, then `victim` (the owner's
/// process) is killed while the dialog's requests go on; how long until
/// the edge counted the owner down, and until a request sent after the
/// kill was answered.
fn kill(
    dialog: &mut Dialog,
    owner: SocketAddr,
    victim: Option<Process>,
    edge_admin: SocketAddr,
    round: usize,
) -> Result<(Duration, Duration)> {
    let downs = edge_metric(
        edge_admin,
        "voicecluster_edge_backend_changes_total{health=\"down\"}",
    );
    // A second of answered probes first: the dialog works.
    let warm = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm {
        dialog.send(owner)?;
        std::thread::sleep(PROBE_EVERY);
    }
    let first_after = dialog.sent() + 1;
    let killed = Instant::now();
    drop(victim);
    let (mut detected, mut gap) = (None, None);
    let mut next_probe = Instant::now();
    let mut next_poll = Instant::now();
    while (detected.is_none() || gap.is_none()) && killed.elapsed() < Duration::from_secs(10) {
        if Instant::now() >= next_probe {
            dialog.send(owner)?;
            next_probe += PROBE_EVERY;
        }
        if dialog.answer().is_some_and(|seq| seq >= first_after) && gap.is_none() {
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
    Ok((detected, gap))
}

fn main() -> Result<()> {
    let rounds = rounds();
    let base = std::env::temp_dir().join(format!("vc-bench-failover-{}", std::process::id()));
    let members = Member::pair(&base)?;
    let mut running = [Some(members[0].start()?), Some(members[1].start()?)];
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let edge_sip = SocketAddr::new(lo, free_port(lo)?);
    let edge_admin = SocketAddr::new(lo, free_port(lo)?);
    let _edge = start_edge(edge_sip, edge_admin, 1, &members)?;
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
    let mut dialog = Dialog::new(lo, edge_sip)?;

    println!(
        "failover: {rounds} SIGKILLs of the member a dialog is pinned to; heartbeats every {HEARTBEAT_MS} ms, down after {THRESHOLD} missed"
    );
    let (mut detections, mut gaps) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let victim = round % 2;
        let owner = members[victim].sip;
        let (detected, gap) = kill(
            &mut dialog,
            owner,
            running[victim].take(),
            edge_admin,
            round,
        )?;
        detections.push(detected);
        gaps.push(gap);
        running[victim] = Some(members[victim].start()?);
        up(2.0)?;
    }
    println!("  detection: {}", median_p99(detections));
    println!("  longest signalling gap: {}", median_p99(gaps));
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
