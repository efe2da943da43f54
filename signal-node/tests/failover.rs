//! Calls survive the crash of the member that handles them, process-level:
//! two backends on their own loopback addresses (a member is known by its
//! IP, as pods are), an edge heart-beating them, a media node, and SIPp as
//! Alice and Bob. The backend handling the call is killed with SIGKILL
//! mid-call; its buddy takes over from the replica, media goes on, Alice's
//! BYE ends the call on both sides, and one member bills the whole call.

// Test set-up: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use voicecluster_signal_node::testing::{ALICE, BOB};
use voicecluster_telemetry::testing::{eventually, http_get};

mod common;

use common::*;

/// Calls up when a rolling change starts (calls last 30 s and come two a
/// second, so at most 60 are up at once).
const CALLS_UP: u32 = 50;

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

/// An admin port whose next two slots are free too.
fn edge_admin_base() -> SocketAddr {
    loop {
        let p = free_port();
        let free = (0..3).all(|k| {
            p.checked_add(10 * k)
                .is_some_and(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok())
        });
        if free {
            return ([127, 0, 0, 1], p).into();
        }
    }
}

/// Messages an edge forwarded, both ways.
async fn forwarded(edge: SocketAddr) -> f64 {
    let Ok(page) = http_get(edge, "/metrics").await else {
        return 0.0;
    };
    page.body
        .lines()
        .filter(|l| l.starts_with("voicecluster_edge_forwarded_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Waits until `check` holds, up to `within`.
async fn until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut check: F) {
    let held = eventually(what, within, async || {
        if check().await {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    if let Err(e) = held {
        panic!("{e}");
    }
}

/// Two members, an edge with 100 ms heartbeats, a media node; Alice and Bob
/// registered.
struct Cluster {
    media: MediaNode,
    ips: [IpAddr; 2],
    sip_port: u16,
    grpc: [SocketAddr; 2],
    backends: [Server; 2],
    edge: Server,
}

impl Cluster {
    fn member(
        media: &MediaNode,
        ip: IpAddr,
        sip_port: u16,
        me: SocketAddr,
        peer: SocketAddr,
    ) -> Server {
        Server::start_member_on(
            "Remotely",
            SocketAddr::new(ip, sip_port),
            me,
            &[
                "--signal-peers".to_string(),
                peer.to_string(),
                "--call-leg-providers".to_string(),
                media.grpc.to_string(),
            ],
        )
    }

    async fn start() -> (Self, (u16, u16)) {
        let ips: [IpAddr; 2] = [
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
        ];
        let media = MediaNode::start();
        let sip_port = port_free_on(&ips);
        let grpc = [
            SocketAddr::new(ips[0], port_free_on(&ips[..1])),
            SocketAddr::new(ips[1], port_free_on(&ips[1..])),
        ];
        let backends = [
            Self::member(&media, ips[0], sip_port, grpc[0], grpc[1]),
            Self::member(&media, ips[1], sip_port, grpc[1], grpc[0]),
        ];
        let edge = Self::edge(
            ([127, 0, 0, 1], free_port()).into(),
            &backends,
            &media,
            edge_admin_base(),
        );
        edge.backends_up().await;
        let c = Self {
            media,
            ips,
            sip_port,
            grpc,
            backends,
            edge,
        };
        let ports = (free_port(), free_port());
        c.edge.sipp.register(ALICE, ports.0);
        c.edge.sipp.register(BOB, ports.1);
        for i in 0..2 {
            c.registered(i).await;
        }
        (c, ports)
    }

    /// An edge on `sip` with 100 ms heartbeats, beside `media` (alone, it
    /// drains with it), its admin server in the first free of three port
    /// slots of `admin_base`: as in a media pod.
    fn edge(
        sip: SocketAddr,
        backends: &[Server; 2],
        media: &MediaNode,
        admin_base: SocketAddr,
    ) -> Server {
        Server::start_edge_on(
            sip,
            &[&backends[0], &backends[1]],
            &[
                "--admin-addr".to_string(),
                admin_base.to_string(),
                "--port-slots".to_string(),
                "3".to_string(),
            ],
            &[
                "--heartbeat-interval-ms",
                "100",
                "--failure-threshold",
                "3",
                "--media-admin",
                &media.bin.admin_addr().to_string(),
            ],
        )
    }

    fn admin(&self, i: usize) -> SocketAddr {
        self.backends[i].bin.admin_addr()
    }

    async fn registered(&self, i: usize) {
        let admin = self.admin(i);
        until(
            "the member knows both users",
            Duration::from_secs(10),
            async || metric(admin, "voicecluster_sip_registered_users").await == 2.0,
        )
        .await;
    }

    /// Alice calls Bob for `ms` with RTP both ways, in the background; the
    /// task fails unless both sides end the call normally.
    fn call(&self, ports: (u16, u16), ms: u64) -> tokio::task::JoinHandle<()> {
        self.calls(ports, 1, 1, ms)
    }

    /// Alice places `n` calls to Bob, `rate` a second, each `ms` long with
    /// RTP both ways, in the background; the task fails unless every call
    /// ends normally on both sides (SIPp exits 0 only then).
    fn calls(&self, ports: (u16, u16), n: u32, rate: u32, ms: u64) -> tokio::task::JoinHandle<()> {
        self.edge.sipp.spawn_calls(ports, n, rate, ms)
    }

    /// The members' bills together: one whole bill for each of `calls`
    /// calls of `call_ms`.
    async fn every_call_billed_once(&self, calls: u32, call_ms: u64) {
        let mut bills = self.bills(0).await;
        bills.extend(self.bills(1).await);
        let ids: std::collections::HashSet<&str> =
            bills.iter().filter_map(|b| b["callId"].as_str()).collect();
        assert_eq!(ids.len(), calls as usize, "every call billed");
        assert_eq!(bills.len(), calls as usize, "no call billed twice");
        for bill in &bills {
            assert_whole_call_billed(bill, call_ms);
        }
    }

    /// Waits until the members hold at least `n` calls.
    async fn calls_up(&self, n: u32) {
        until(
            &format!("{n} calls up"),
            Duration::from_secs(60),
            async || self.sum("voicecluster_calls_active").await >= f64::from(n),
        )
        .await;
    }

    async fn sum(&self, name: &str) -> f64 {
        metric(self.admin(0), name).await + metric(self.admin(1), name).await
    }

    /// The member that has the call.
    async fn owner(&self) -> usize {
        let mut owner = None;
        until(
            "one member has the call",
            Duration::from_secs(10),
            async || {
                for i in 0..2 {
                    if metric(self.admin(i), "voicecluster_calls_active").await == 1.0 {
                        owner = Some(i);
                        return true;
                    }
                }
                false
            },
        )
        .await;
        owner.unwrap()
    }

    /// The member with the call, and the other once it holds the call's
    /// replica.
    async fn owner_and_replica(&self) -> (usize, usize) {
        let owner = self.owner().await;
        let buddy = 1 - owner;
        let admin = self.admin(buddy);
        until(
            "the buddy holds the call's replica",
            Duration::from_secs(5),
            async || metric(admin, "voicecluster_call_replicas_held").await == 1.0,
        )
        .await;
        (owner, buddy)
    }

    /// Kills member `i` with SIGKILL; how long the edge took to see it down.
    async fn kill(&self, i: usize) -> Duration {
        let before = self.downs().await;
        self.backends[i].bin.signal("KILL").unwrap();
        let killed = Instant::now();
        until(
            "the edge sees it down",
            Duration::from_secs(3),
            async || self.downs().await > before,
        )
        .await;
        killed.elapsed()
    }

    async fn downs(&self) -> f64 {
        metric(
            self.edge.bin.admin_addr(),
            "voicecluster_edge_backend_changes_total{health=\"down\"}",
        )
        .await
    }

    /// Member `i` again, at its old addresses.
    async fn restart(&mut self, i: usize) {
        let before = metric(
            self.edge.bin.admin_addr(),
            "voicecluster_edge_backend_changes_total{health=\"up\"}",
        )
        .await;
        self.backends[i] = Self::member(
            &self.media,
            self.ips[i],
            self.sip_port,
            self.grpc[i],
            self.grpc[1 - i],
        );
        let edge = self.edge.bin.admin_addr();
        until(
            "the edge sees it back",
            Duration::from_secs(10),
            async || {
                metric(
                    edge,
                    "voicecluster_edge_backend_changes_total{health=\"up\"}",
                )
                .await
                    > before
            },
        )
        .await;
        self.registered(i).await;
    }

    async fn rtp_flows(&self) {
        let admin = self.media.bin.admin_addr();
        let before = metric(admin, "voicecluster_media_packets_relayed_total").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = metric(admin, "voicecluster_media_packets_relayed_total").await;
        assert!(after >= before + 20.0, "RTP relayed: {before} then {after}");
    }

    async fn bills(&self, i: usize) -> Vec<serde_json::Value> {
        let page = http_get(self.backends[i].management, "/bills")
            .await
            .unwrap();
        serde_json::from_str(&page.body).unwrap()
    }

    async fn legs_released(&self) {
        let admin = self.media.bin.admin_addr();
        until("the legs released", Duration::from_secs(5), async || {
            metric(admin, "voicecluster_media_legs_active").await == 0.0
        })
        .await;
    }
}

fn assert_whole_call_billed(bill: &serde_json::Value, call_ms: u64) {
    assert_eq!(bill["disconnectReason"], "caller-bye");
    assert_eq!(bill["caller"], "alice");
    let ms = bill["durationMs"].as_u64().unwrap();
    assert!(
        ms.abs_diff(call_ms) < 1000,
        "billed {ms} ms for a {call_ms} ms call"
    );
    assert_eq!(
        bill["cost"],
        format!("{:.2}", ms.div_ceil(1000) as f64 * 0.01)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buddy_takes_over_a_call_whose_member_was_killed_and_bills_it_whole() {
    let (c, ports) = Cluster::start().await;
    const CALL_MS: u64 = 6000;
    let call = c.call(ports, CALL_MS);
    let (owner, buddy) = c.owner_and_replica().await;
    // The call was answered once the buddy had confirmed its replica.
    assert_eq!(
        metric(c.admin(owner), "voicecluster_call_replica_timeouts_total").await,
        0.0
    );

    // The member handling the call dies without a word.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let detected = c.kill(owner).await;
    // Media never passed the member: it goes on through the media node.
    c.rtp_flows().await;

    // Alice hangs up at the end of the call: SIPp fails the task unless her
    // BYE gets its 200 and Bob gets his BYE.
    call.await.expect("the call ends normally on both sides");
    assert_eq!(
        metric(c.admin(buddy), "voicecluster_call_takeovers_total").await,
        1.0
    );
    assert!(metric(c.edge.bin.admin_addr(), "voicecluster_edge_failovers_total").await >= 1.0);
    let bills = c.bills(buddy).await;
    assert_eq!(bills.len(), 1, "exactly one bill: {bills:?}");
    assert_whole_call_billed(&bills[0], CALL_MS);
    c.legs_released().await;
    eprintln!("failover: the edge saw the member down {detected:?} after SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_takes_its_calls_back_and_the_call_is_billed_once() {
    let (mut c, ports) = Cluster::start().await;
    const CALL_MS: u64 = 8000;
    let call = c.call(ports, CALL_MS);
    let (owner, buddy) = c.owner_and_replica().await;
    c.kill(owner).await;
    // The member comes back at its address before the call ends; the edges
    // route the call's dialogs to it again, and it takes the call back.
    c.restart(owner).await;
    c.rtp_flows().await;
    call.await.expect("the call ends normally on both sides");
    let owner_bills = c.bills(owner).await;
    let buddy_bills = c.bills(buddy).await;
    assert_eq!(
        owner_bills.len() + buddy_bills.len(),
        1,
        "one bill: {owner_bills:?} {buddy_bills:?}"
    );
    assert_eq!(owner_bills.len(), 1, "billed where the call ended");
    assert_whole_call_billed(&owner_bills[0], CALL_MS);
    until(
        "no call or replica left anywhere",
        Duration::from_secs(5),
        async || {
            let mut left = Vec::new();
            for i in [owner, buddy] {
                for name in [
                    "voicecluster_calls_active",
                    "voicecluster_call_replicas_held",
                ] {
                    let n = metric(c.admin(i), name).await;
                    if n > 0.0 {
                        left.push(format!("member {i}: {name} {n}"));
                    }
                }
            }
            if !left.is_empty() {
                eprintln!("left: {left:?}");
            }
            left.is_empty()
        },
    )
    .await;
    c.legs_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_member_hands_its_calls_over_and_the_call_goes_on() {
    let (mut c, ports) = Cluster::start().await;
    const CALL_MS: u64 = 7000;
    let call = c.call(ports, CALL_MS);
    let (owner, buddy) = c.owner_and_replica().await;
    // SIGTERM, as Kubernetes sends in a rolling upgrade.
    c.backends[owner].bin.signal("TERM").unwrap();
    let edge = c.edge.bin.admin_addr();
    until(
        "the edge hears it draining",
        Duration::from_secs(3),
        async || {
            metric(
                edge,
                "voicecluster_edge_backend_changes_total{health=\"draining\"}",
            )
            .await
                >= 1.0
        },
    )
    .await;
    until("then gone", Duration::from_secs(5), async || {
        metric(
            edge,
            "voicecluster_edge_backend_changes_total{health=\"down\"}",
        )
        .await
            >= 1.0
    })
    .await;
    let status = c.backends[owner]
        .bin
        .wait_exit(Duration::from_secs(10))
        .unwrap();
    assert!(status.expect("it exits after handing over").success());
    c.rtp_flows().await;
    call.await.expect("the call ends normally on both sides");
    let bills = c.bills(buddy).await;
    assert_eq!(bills.len(), 1, "{bills:?}");
    assert_whole_call_billed(&bills[0], CALL_MS);
    c.legs_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_calls_of_thirty_seconds_survive_the_kill_of_a_member_and_each_is_billed_once() {
    let (c, ports) = Cluster::start().await;
    const CALLS: u32 = 60;
    const CALL_MS: u64 = 30_000;
    let calls = c.calls(ports, CALLS, 10, CALL_MS);
    let all = f64::from(CALLS);
    until(
        "every call up and replicated to its buddy",
        Duration::from_secs(20),
        async || {
            c.sum("voicecluster_calls_active").await == all
                && c.sum("voicecluster_call_replicas_held").await == all
        },
    )
    .await;
    let victim = if metric(c.admin(0), "voicecluster_calls_active").await > 0.0 {
        0
    } else {
        1
    };
    let survivor = 1 - victim;
    let orphaned = metric(c.admin(victim), "voicecluster_calls_active").await;
    c.kill(victim).await;
    c.rtp_flows().await;

    // SIPp fails the task if a single call failed on either side.
    calls.await.expect("every call ends normally on both sides");
    let bills = c.bills(survivor).await;
    let ids: std::collections::HashSet<&str> =
        bills.iter().filter_map(|b| b["callId"].as_str()).collect();
    assert_eq!(bills.len(), CALLS as usize, "one bill per call");
    assert_eq!(ids.len(), CALLS as usize, "no call billed twice");
    for bill in &bills {
        assert_whole_call_billed(bill, CALL_MS);
    }
    assert_eq!(
        metric(c.admin(survivor), "voicecluster_call_takeovers_total").await,
        orphaned,
        "the survivor took over every call of the killed member"
    );
    c.legs_released().await;
    eprintln!(
        "{CALLS} calls, {orphaned} of them on the killed member: all ended normally, {CALLS} bills"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_both_members_with_fifty_calls_up_fails_none() {
    let (mut c, ports) = Cluster::start().await;
    const CALLS: u32 = 80;
    const CALL_MS: u64 = 30_000;
    // Two calls a second: the members restart with fifty calls up, and
    // calls keep coming.
    let calls = c.calls(ports, CALLS, 2, CALL_MS);
    c.calls_up(CALLS_UP).await;
    for i in 0..2 {
        // As a rolling upgrade does: SIGTERM, wait for the exit, start the
        // new version, wait until it serves, then the next member.
        c.backends[i].bin.signal("TERM").unwrap();
        let status = c.backends[i]
            .bin
            .wait_exit(Duration::from_secs(25))
            .unwrap();
        assert!(status.expect("it exits after handing over").success());
        c.restart(i).await;
    }
    calls.await.expect("every call ends normally on both sides");
    c.every_call_billed_once(CALLS, CALL_MS).await;
    c.legs_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_hands_its_sip_port_to_its_successor_with_fifty_calls_up_and_fails_none() {
    let (mut c, ports) = Cluster::start().await;
    const CALLS: u32 = 80;
    const CALL_MS: u64 = 30_000;
    // Two calls a second: the edges change with fifty calls up, and new
    // calls keep coming through the hand-over.
    let calls = c.calls(ports, CALLS, 2, CALL_MS);
    c.calls_up(CALLS_UP).await;
    // The new edge starts beside the old one, on the same SIP address, as
    // a surge rollout starts a media pod's successor on the same node.
    let old_admin = c.edge.bin.admin_addr();
    let base = SocketAddr::new(old_admin.ip(), old_admin.port());
    let next = Cluster::edge(c.edge.sip, &c.backends, &c.media, base);
    next.backends_up().await;
    assert_ne!(next.bin.admin_addr(), old_admin, "another port slot");
    // Traffic goes on through the old edge (new calls at 2/s and their
    // dialogs): once it carried another hundred messages, the new edge
    // must still have carried none.
    let before = forwarded(old_admin).await;
    until(
        "the old edge carries more traffic",
        Duration::from_secs(20),
        async || forwarded(old_admin).await >= before + 100.0,
    )
    .await;
    assert_eq!(
        forwarded(next.bin.admin_addr()).await,
        0.0,
        "the old edge keeps all the traffic until it leaves"
    );
    let before = forwarded(old_admin).await;
    assert!(before > 0.0);
    c.edge.bin.signal("TERM").unwrap();
    let status = c.edge.bin.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.expect("the old edge leaves").success());
    let old = std::mem::replace(&mut c.edge, next);
    drop(old);

    calls.await.expect("every call ends normally on both sides");
    assert!(
        forwarded(c.edge.bin.admin_addr()).await > 0.0,
        "the successor carried the calls on"
    );
    c.every_call_billed_once(CALLS, CALL_MS).await;
    c.legs_released().await;
}
