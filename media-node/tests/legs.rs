//! The media-node binary as a call-leg provider on loopback: legs made and
//! bridged over gRPC `CallLegs`, real RTP through them, latching, capacity
//! and port exhaustion, and a drain on SIGTERM.

// Test set-up: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use tonic::Code;
use voicecluster_api::grpc::{BridgeRequest, DestroyLegRequest, ListLegsRequest};
use voicecluster_telemetry::testing::http_get;

mod common;

use common::*;

#[tokio::test]
async fn bridged_endpoints_get_every_packet_in_order_and_a_drain_waits_for_the_legs() {
    let mut m = start("42000-42019", 100).await;
    let (alice, bob) = (socket(), socket());
    // Bob's SDP names a port he does not send from (NAT): latching learns
    // the real one from his first packet.
    let bob_sdp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let a = m
        .client
        .create(create(Some(alice.local_addr().unwrap())))
        .await
        .unwrap()
        .into_inner();
    let b = m
        .client
        .create(create(Some(bob_sdp)))
        .await
        .unwrap()
        .into_inner();
    m.client
        .bridge(BridgeRequest { a: a.id, b: b.id })
        .await
        .unwrap();
    let (a_addr, b_addr): (SocketAddr, SocketAddr) =
        (a.address.parse().unwrap(), b.address.parse().unwrap());
    send_and_receive(&bob, b_addr, &alice, 0..50);
    send_and_receive(&alice, a_addr, &bob, 100..150);

    // SIGTERM: not ready, no new legs, the running ones go on.
    m.bin.signal("TERM").unwrap();
    let mut ready = String::new();
    for _ in 0..50 {
        ready = http_get(m.bin.admin_addr(), "/readyz")
            .await
            .unwrap()
            .status
            .to_string();
        if ready != "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, "503", "not ready while draining");
    let refused = m.client.create(create(None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    send_and_receive(&alice, a_addr, &bob, 200..250);
    send_and_receive(&bob, b_addr, &alice, 300..350);
    let metrics = http_get(m.bin.admin_addr(), "/metrics").await.unwrap().body;
    assert!(
        metrics.contains("voicecluster_media_draining 1"),
        "{metrics}"
    );
    assert!(metrics.contains("voicecluster_media_legs_active 2"));
    assert!(
        m.bin.try_wait().unwrap().is_none(),
        "still running with legs"
    );

    // The last leg ends: the process exits on its own.
    for id in [a.id, b.id] {
        m.client.destroy(DestroyLegRequest { id }).await.unwrap();
    }
    let status = m.bin.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.expect("exits once drained").success());
}

#[tokio::test]
async fn capacity_and_port_exhaustion_are_clear_errors_and_destroy_frees_every_port() {
    // Four ports: two RTP/RTCP pairs.
    let mut m = start("42100-42103", 100).await;
    let a = m.client.create(create(None)).await.unwrap().into_inner();
    let b = m.client.create(create(None)).await.unwrap().into_inner();
    let none_left = m.client.create(create(None)).await.unwrap_err();
    assert_eq!(none_left.code(), Code::ResourceExhausted, "{none_left}");
    assert!(
        none_left.message().contains("port"),
        "{}",
        none_left.message()
    );
    for id in [a.id, b.id] {
        m.client.destroy(DestroyLegRequest { id }).await.unwrap();
    }
    let listed = m
        .client
        .list(ListLegsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.legs.is_empty());
    // Every port of the range can be bound again by anyone.
    for port in 42100..=42103 {
        UdpSocket::bind(("127.0.0.1", port)).expect("port free after destroy");
    }

    let mut small = start("42200-42219", 1).await;
    small.client.create(create(None)).await.unwrap();
    let over = small.client.create(create(None)).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over}");
    assert!(over.message().contains("capacity"), "{}", over.message());
    let metrics = http_get(small.bin.admin_addr(), "/metrics")
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("voicecluster_media_legs_refused_total{reason=\"capacity\"} 1"),
        "{metrics}"
    );
}

/// A signal member's TaskEvents, as far as a leg's owner needs: what it
/// receives goes to a channel.
struct Owner(tokio::sync::mpsc::UnboundedSender<voicecluster_api::grpc::TaskEvent>);

#[tonic::async_trait]
impl voicecluster_api::grpc::task_events_server::TaskEvents for Owner {
    async fn deliver(
        &self,
        request: tonic::Request<voicecluster_api::grpc::TaskEvent>,
    ) -> Result<tonic::Response<voicecluster_api::grpc::DeliverReply>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(
            voicecluster_api::grpc::DeliverReply {},
        ))
    }
}

/// A TaskEvents server on loopback standing for a leg's owner: its address
/// and the events it receives.
fn owner_server() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<voicecluster_api::grpc::TaskEvent>,
) {
    use voicecluster_api::grpc::task_events_server::TaskEventsServer;
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TaskEventsServer::new(Owner(tx)))
            .serve(addr),
    );
    (addr, events)
}

/// An RFC 4733 telephone-event packet (payload type 101).
fn dtmf(code: u8, timestamp: u32, end: bool) -> Vec<u8> {
    let mut p = vec![0x80, 101, 0, 9];
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, code, if end { 0x8a } else { 0x0a }, 3, 32]);
    p
}

#[tokio::test]
async fn dtmf_digits_reach_the_legs_owner_as_task_events() {
    use voicecluster_api::grpc::{TaskHandle, leg_event, task_event};

    let (owner_addr, mut events) = owner_server();
    let mut m = start("42300-42319", 10).await;
    let (alice, bob) = (socket(), socket());
    let owner = TaskHandle {
        member: owner_addr.to_string(),
        task: 42,
    };
    let mut req = create(Some(alice.local_addr().unwrap()));
    req.owner = Some(owner.clone());
    req.dtmf_payload_type = 101;
    let a = m.client.create(req).await.unwrap().into_inner();
    let b = m
        .client
        .create(create(Some(bob.local_addr().unwrap())))
        .await
        .unwrap()
        .into_inner();
    m.client
        .bridge(BridgeRequest { a: a.id, b: b.id })
        .await
        .unwrap();
    let a_addr: SocketAddr = a.address.parse().unwrap();
    // Alice presses 7: start, then the end packet three times.
    for packet in [
        dtmf(7, 800, false),
        dtmf(7, 800, true),
        dtmf(7, 800, true),
        dtmf(7, 800, true),
    ] {
        alice.send_to(&packet, a_addr).unwrap();
    }
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        bob.recv_from(&mut buf).expect("the events are relayed too");
    }
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a leg event within the report interval")
        .unwrap();
    assert_eq!(event.to, Some(owner));
    let Some(task_event::Kind::Leg(leg)) = event.kind else {
        panic!("a leg event: {event:?}")
    };
    assert_eq!(leg.leg, a.id);
    let Some(leg_event::Kind::Dtmf(d)) = leg.kind else {
        panic!("a DTMF event: {leg:?}")
    };
    assert_eq!(d.digit, "7");
    // One digit, however many end packets.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), events.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_drain_timeout_closes_the_legs_and_tells_their_owners() {
    use voicecluster_api::grpc::{TaskHandle, leg_event, task_event};

    let (owner_addr, mut events) = owner_server();
    let mut m = start_draining_in("42400-42419", 10, 1).await;
    let mut req = create(None);
    req.owner = Some(TaskHandle {
        member: owner_addr.to_string(),
        task: 9,
    });
    let leg = m.client.create(req).await.unwrap().into_inner();
    m.bin.signal("TERM").unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the owner hears of it")
        .unwrap();
    let Some(task_event::Kind::Leg(l)) = event.kind else {
        panic!("a leg event: {event:?}")
    };
    assert_eq!(l.leg, leg.id);
    assert!(matches!(l.kind, Some(leg_event::Kind::Closed(_))), "{l:?}");
    let status = m.bin.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.expect("exits after the drain timeout").success());
}

/// An RTCP receiver report: `fraction` lost, `jitter`.
fn receiver_report(fraction: u8, jitter: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7, 0, 0, 0, 2, 0, 0, 0, 1, fraction, 0, 0, 3];
    p.extend_from_slice(&[0, 0, 0, 99]);
    p.extend_from_slice(&jitter.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p
}

#[tokio::test]
async fn owners_get_their_legs_statistics_every_interval() {
    use voicecluster_api::grpc::{TaskHandle, leg_event, task_event};

    let (owner_addr, mut events) = owner_server();
    let mut m = start_with("42500-42519", 10, 30, &["--leg-stats-seconds", "1"]).await;
    let (alice, bob) = (socket(), socket());
    let mut ids = Vec::new();
    for (task, who) in [(1, &alice), (2, &bob)] {
        let mut req = create(Some(who.local_addr().unwrap()));
        req.owner = Some(TaskHandle {
            member: owner_addr.to_string(),
            task,
        });
        ids.push(m.client.create(req).await.unwrap().into_inner());
    }
    let (a, b) = (&ids[0], &ids[1]);
    m.client
        .bridge(BridgeRequest { a: a.id, b: b.id })
        .await
        .unwrap();
    let a_addr: SocketAddr = a.address.parse().unwrap();
    send_and_receive(&alice, a_addr, &bob, 0..20);
    // Bob reports on what he receives: 25% lost, jitter 80.
    let b_rtcp = SocketAddr::new(
        a_addr.ip(),
        b.address.parse::<SocketAddr>().unwrap().port() + 1,
    );
    bob.send_to(&receiver_report(64, 80), b_rtcp).unwrap();

    let (mut a_seen, mut b_seen) = (None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a_seen.is_none() || b_seen.is_none() {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("statistics for both legs within 10 s")
            .unwrap();
        let Some(task_event::Kind::Leg(leg)) = event.kind else {
            continue;
        };
        let Some(leg_event::Kind::Statistics(s)) = leg.kind else {
            continue;
        };
        if leg.leg == a.id && s.packets_in == 20 {
            a_seen = Some(s);
        } else if leg.leg == b.id && s.rtcp_in == 1 {
            b_seen = Some(s);
        }
    }
    let b_stats = b_seen.unwrap();
    assert_eq!(b_stats.packets_out, 20);
    assert_eq!(
        (b_stats.fraction_lost, b_stats.jitter, b_stats.packets_lost),
        (64, 80, 3)
    );
    assert_eq!(a_seen.unwrap().bytes_in, 20 * 172);
}
