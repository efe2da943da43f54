//! Calls survive the crash of the member that handles them, process-level:
//! two backends on their own loopback addresses (a member is known by its
//! IP, as pods are), an edge heart-beating them, a media node, and SIPp as
//! Alice and Bob. The backend handling the call is killed with SIGKILL
//! mid-call; its buddy takes over from the replica, media goes on, Alice's
//! BYE ends the call on both sides, and the survivor bills the whole call.

// Test set-up: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use voicecluster_signal_node::testing::{ALICE, BOB};
use voicecluster_telemetry::testing::http_get;

mod common;

use common::*;

/// A port free for UDP and TCP on every one of `ips`.
fn port_free_on(ips: &[IpAddr]) -> u16 {
    loop {
        let p = free_port();
        let free = ips.iter().all(|ip| {
            std::net::UdpSocket::bind((*ip, p)).is_ok()
                && std::net::TcpListener::bind((*ip, p)).is_ok()
        });
        if free {
            return p;
        }
    }
}

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    metric_at(admin, name).await.unwrap_or(0.0)
}

/// Waits until `check` holds, up to `within`.
async fn until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut check: F) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buddy_takes_over_a_call_whose_member_was_killed_and_bills_it_whole() {
    let ips: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
    ];
    let media = MediaNode::start();
    let sip_port = port_free_on(&ips);
    let grpc = |i: usize| SocketAddr::new(ips[i], port_free_on(&ips[i..=i]));
    let (g0, g1) = (grpc(0), grpc(1));
    let member = |me: usize, my_grpc: SocketAddr, peer: SocketAddr| {
        Server::start_member_on(
            "Remotely",
            SocketAddr::new(ips[me], sip_port),
            my_grpc,
            &[
                "--signal-peers".to_string(),
                peer.to_string(),
                "--call-leg-providers".to_string(),
                media.grpc.to_string(),
            ],
        )
    };
    let backends = [member(0, g0, g1), member(1, g1, g0)];
    let edge = Server::start_edge_with(
        &[&backends[0], &backends[1]],
        &["--heartbeat-interval-ms", "100", "--failure-threshold", "3"],
    );
    let admins: Vec<SocketAddr> = backends.iter().map(|b| b.bin.admin_addr()).collect();

    let ports = (free_port(), free_port());
    edge.sipp.register(ALICE, ports.0);
    edge.sipp.register(BOB, ports.1);
    for admin in &admins {
        until(
            "every backend knows both users",
            Duration::from_secs(10),
            async || metric(*admin, "voicecluster_sip_registered_users").await == 2.0,
        )
        .await;
    }

    // A 6-second call with RTP both ways, in the background.
    const CALL_MS: u64 = 6000;
    let sipp = edge.sipp.clone();
    let call = tokio::spawn(async move {
        sipp.alice_calls_bob(
            &sipp,
            ports,
            ("caller", "callee"),
            1,
            &["-d", &CALL_MS.to_string(), "-timeout", "30s"],
        )
        .await;
    });
    let mut owner = None;
    until(
        "one backend has the call",
        Duration::from_secs(10),
        async || {
            for (i, admin) in admins.iter().enumerate() {
                if metric(*admin, "voicecluster_calls_active").await == 1.0 {
                    owner = Some(i);
                    return true;
                }
            }
            false
        },
    )
    .await;
    let owner = owner.unwrap();
    let buddy = 1 - owner;
    until(
        "the buddy holds the call's replica",
        Duration::from_secs(5),
        async || metric(admins[buddy], "voicecluster_call_replicas_held").await == 1.0,
    )
    .await;

    // The call was answered once the buddy had confirmed its replica.
    assert_eq!(
        metric(admins[owner], "voicecluster_call_replica_timeouts_total").await,
        0.0
    );
    // The member handling the call dies without a word.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    backends[owner].bin.signal("KILL").unwrap();
    let killed = Instant::now();
    until(
        "the edge sees it down",
        Duration::from_secs(3),
        async || {
            metric(
                edge.bin.admin_addr(),
                "voicecluster_edge_backend_changes_total{health=\"down\"}",
            )
            .await
                >= 1.0
        },
    )
    .await;
    let detected = killed.elapsed();
    // Media never passed the member: it goes on through the media node.
    let relayed =
        |m: SocketAddr| async move { metric(m, "voicecluster_media_packets_relayed_total").await };
    let before = relayed(media.bin.admin_addr()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = relayed(media.bin.admin_addr()).await;
    assert!(
        after >= before + 20.0,
        "RTP after the kill: {before} then {after}"
    );

    // Alice hangs up at the end of the call: SIPp fails the task unless her
    // BYE gets its 200 and Bob gets his BYE.
    call.await.expect("the call ends normally on both sides");
    let survivor = &backends[buddy];
    assert_eq!(
        metric(admins[buddy], "voicecluster_call_takeovers_total").await,
        1.0
    );
    assert!(metric(edge.bin.admin_addr(), "voicecluster_edge_failovers_total").await >= 1.0);
    let bills = http_get(survivor.management, "/bills").await.unwrap();
    let bills: Vec<serde_json::Value> = serde_json::from_str(&bills.body).unwrap();
    assert_eq!(bills.len(), 1, "exactly one bill: {bills:?}");
    let b = &bills[0];
    assert_eq!(b["disconnectReason"], "caller-bye");
    assert_eq!(b["caller"], "alice");
    let ms = b["durationMs"].as_u64().unwrap();
    assert!(
        ms.abs_diff(CALL_MS) < 1000,
        "billed {ms} ms for a {CALL_MS} ms call"
    );
    assert_eq!(b["cost"], format!("{:.2}", ms.div_ceil(1000) as f64 * 0.01));
    // The legs were taken over, then released at the end.
    until("the legs released", Duration::from_secs(5), async || {
        metric(media.bin.admin_addr(), "voicecluster_media_legs_active").await == 0.0
    })
    .await;
    eprintln!("failover: the edge saw the member down {detected:?} after SIGKILL");
}
