//! The signal-node binary as a SIP server on loopback, driven by SIPp (a
//! real SIP peer) and by raw sockets for input no real peer would send.

// The helpers below are test set-up: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use voicecluster_api::grpc::ListLegsRequest;
use voicecluster_api::grpc::call_legs_client::CallLegsClient;
use voicecluster_signal_node::testing::auth;
use voicecluster_telemetry::testing::http_get;

mod common;

use common::*;

#[tokio::test]
async fn sipp_registers_with_digest_over_udp_and_tcp() {
    let server = Server::start();
    assert!(
        server.sipp.run("register", "u1", &auth("alice", "wonder")),
        "alice over UDP"
    );
    assert!(
        server.sipp.run("register", "t1", &auth("bob", "builder")),
        "bob over TCP"
    );
    assert!(
        server
            .sipp
            .run("register-refused", "u1", &auth("alice", "guess")),
        "a wrong password is challenged again"
    );
    assert_eq!(
        server.metric("voicecluster_sip_registered_users").await,
        Some(2.0)
    );
    assert!(server.sipp.run("options", "u1", "x;y;"), "OPTIONS over UDP");
    assert!(server.sipp.run("options", "t1", "x;y;"), "OPTIONS over TCP");
}

const OPTIONS: &str = "OPTIONS sip:voice.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-raw\r\n\
Max-Forwards: 70\r\n\
To: <sip:voice.test>\r\n\
From: <sip:raw@voice.test>;tag=raw\r\n\
Call-ID: raw-1\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";

fn with_branch(msg: &str, n: usize) -> String {
    msg.replace("z9hG4bK-raw", &format!("z9hG4bK-raw{n}"))
}

/// What the server answers a datagram with: the status line, or None.
fn udp_exchange(sock: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Option<String> {
    sock.send_to(bytes, to).unwrap();
    let mut buf = [0u8; 65_536];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .map(str::to_string),
        Err(_) => None,
    }
}

#[tokio::test]
async fn malformed_input_is_answered_or_dropped_and_service_goes_on() {
    let server = Server::start();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let garbage: Vec<u8> = (0..1500u32).map(|i| (i * 7919 % 251) as u8).collect();
    let oversized = OPTIONS.replace(
        "Content-Length: 0\r\n",
        &format!("X-Pad: {}\r\n", "a".repeat(66_000)),
    );
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("truncated", OPTIONS.as_bytes()[..60].to_vec(), None),
        (
            "wrong Content-Length",
            with_branch(
                &OPTIONS.replace("Content-Length: 0", "Content-Length: 50"),
                1,
            )
            .into_bytes(),
            Some("SIP/2.0 400 Bad Request"),
        ),
        (
            "missing Call-ID",
            with_branch(&OPTIONS.replace("Call-ID: raw-1\r\n", ""), 2).into_bytes(),
            Some("SIP/2.0 400 Bad Request"),
        ),
        (
            "unknown method",
            with_branch(&OPTIONS.replace("OPTIONS", "FROB"), 3).into_bytes(),
            Some("SIP/2.0 501 Not Implemented"),
        ),
        ("binary garbage", garbage, None),
    ];
    for (what, bytes, want) in &cases {
        assert_eq!(
            udp_exchange(&sock, server.sip, bytes).as_deref(),
            *want,
            "{what} over UDP"
        );
    }
    // Oversized datagrams cannot be sent over loopback UDP at all; TCP below.
    assert_eq!(
        udp_exchange(&sock, server.sip, with_branch(OPTIONS, 4).as_bytes()).as_deref(),
        Some("SIP/2.0 200 OK"),
        "OPTIONS after the bad input"
    );

    // TCP: a message without Content-Length gets 400 and the connection closes.
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(server.sip).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    tcp.write_all(with_branch(&OPTIONS.replace("Content-Length: 0\r\n", ""), 5).as_bytes())
        .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(
        answer.starts_with("SIP/2.0 400 "),
        "TCP without Content-Length: {answer:?}"
    );
    // Oversized and garbage streams are cut off without an answer.
    for bytes in [oversized.into_bytes(), vec![0xffu8; 70_000]] {
        let mut tcp = std::net::TcpStream::connect(server.sip).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = tcp.write_all(&bytes);
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        assert!(
            answer.is_empty(),
            "answered {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // And a well-formed request on a new connection is served.
    let mut tcp = std::net::TcpStream::connect(server.sip).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    tcp.write_all(with_branch(&OPTIONS.replace("SIP/2.0/UDP", "SIP/2.0/TCP"), 6).as_bytes())
        .unwrap();
    let mut buf = [0u8; 2048];
    let n = tcp.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200 OK"));
    assert!(
        server
            .metric("voicecluster_sip_rejected_total{outcome=\"answered\"}")
            .await
            >= Some(4.0)
    );
    assert!(
        server.sipp.run("options", "u1", "x;y;"),
        "SIPp still served"
    );
}

#[tokio::test]
async fn a_calls_b_through_the_node_with_rtp_both_ways_then_hangs_up() {
    let server = Server::start();
    // Each registers from the port it then calls or answers on.
    server.alice_calls_bob("caller", 1, &[]).await;
    assert_eq!(
        server
            .metric("voicecluster_calls_completed_total{outcome=\"answered\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(server.metric("voicecluster_calls_active").await, Some(0.0));
    assert_eq!(
        server
            .metric("voicecluster_sip_session_request_delay_seconds_count")
            .await,
        Some(1.0),
        "one session request delay measured"
    );
    assert_media_relayed(&server).await;

    // The bill: answer to BYE is the 2 s the caller streamed (plus
    // signalling), priced per second at 0.01.
    let bills = http_get(server.management, "/bills").await.unwrap();
    assert_eq!(bills.status, 200);
    let bills: Vec<serde_json::Value> = serde_json::from_str(&bills.body).unwrap();
    assert_eq!(bills.len(), 1, "{bills:?}");
    let b = &bills[0];
    let call_id = b["callId"].as_str().unwrap();
    let one = http_get(server.management, &format!("/calls/{call_id}/bill"))
        .await
        .unwrap();
    assert_eq!(one.status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&one.body).unwrap(),
        *b
    );
    let ms = b["durationMs"].as_u64().unwrap();
    assert!((1900..4000).contains(&ms), "duration {ms} ms");
    let billed = b["billedSeconds"].as_u64().unwrap();
    assert_eq!(billed, ms.div_ceil(1000));
    assert_eq!(b["cost"], format!("{:.2}", billed as f64 * 0.01));
    assert_eq!(
        (b["caller"].as_str(), b["callee"].as_str()),
        (Some("alice"), Some("bob"))
    );
    assert_eq!(b["disconnectReason"], "caller-bye");
    assert_eq!(
        http_get(server.management, "/calls/nope/bill")
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        http_get(server.management, "/bills?since=yesterday")
            .await
            .unwrap()
            .status,
        400
    );
}

/// The call's RTP went through its legs both ways: 2 s of 20 ms packets is
/// 100 each way, and the callee's echo sends each one back.
async fn assert_media_relayed(server: &Server) {
    let to_callee = server
        .metric_reaching(
            "voicecluster_call_media_packets_total{direction=\"to_callee\"}",
            50.0,
        )
        .await;
    let to_caller = server
        .metric_reaching(
            "voicecluster_call_media_packets_total{direction=\"to_caller\"}",
            50.0,
        )
        .await;
    assert!(to_callee >= 50.0, "RTP to the callee: {to_callee}");
    assert!(to_caller >= 50.0, "RTP back to the caller: {to_caller}");
}

#[tokio::test]
async fn a_remotely_member_gets_its_legs_from_a_media_node_past_a_dead_provider() {
    let media = MediaNode::start();
    // The first provider listed is down: the member must try the next.
    let dead = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(
        "Remotely",
        &[
            "--call-leg-providers".to_string(),
            format!("{dead},{}", media.grpc),
        ],
    );
    server.alice_calls_bob("caller", 1, &[]).await;
    assert_media_relayed(&server).await;
    // Released over gRPC: the media node holds no leg after the call.
    let mut legs = media.legs().await;
    for _ in 0..50 {
        if legs == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        legs = media.legs().await;
    }
    assert_eq!(legs, 0, "legs left on the media node");
    let bills = http_get(server.management, "/bills").await.unwrap();
    let bills: Vec<serde_json::Value> = serde_json::from_str(&bills.body).unwrap();
    assert_eq!(bills.len(), 1, "{bills:?}");
    assert_eq!(bills[0]["disconnectReason"], "caller-bye");
}

#[tokio::test]
async fn a_member_calls_a_user_registered_through_another_and_a_new_member_syncs() {
    let (g0, g1) = (free_port(), free_port());
    let grpc = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let peers = |p: u16| ["--signal-peers".to_string(), grpc(p).to_string()];
    let member1 = Server::start_member("Locally", grpc(g1), &peers(g0));
    let member0 = Server::start_member("Locally", grpc(g0), &peers(g1));
    // Alice registers through member 0, Bob through member 1; the call is
    // member 0's.
    member0.alice_calls_bob_of(&member1, "caller", 1, &[]).await;
    assert_media_relayed(&member0).await;
    let bills = http_get(member0.management, "/bills").await.unwrap();
    let bills: Vec<serde_json::Value> = serde_json::from_str(&bills.body).unwrap();
    assert_eq!(bills.len(), 1, "{bills:?}");
    assert_eq!(bills[0]["callee"], "bob");
    // The registrations crossed as task events, both ways.
    let sent = "voicecluster_task_events_total{direction=\"sent\",kind=\"registrations\"}";
    let received = "voicecluster_task_events_total{direction=\"received\",kind=\"registrations\"}";
    assert!(member1.metric_reaching(sent, 1.0).await >= 1.0);
    assert!(member0.metric_reaching(received, 1.0).await >= 1.0);
    assert!(member0.metric_reaching(sent, 1.0).await >= 1.0);
    assert!(member1.metric_reaching(received, 1.0).await >= 1.0);

    // A member that starts later asks the others; their answers go to its
    // registrar's handle and it knows both users.
    let member2 = Server::start_member(
        "Locally",
        grpc(free_port()),
        &[
            "--signal-peers".to_string(),
            format!("{},{}", member0.grpc, member1.grpc),
        ],
    );
    assert_eq!(
        member2
            .metric_reaching("voicecluster_sip_registered_users", 2.0)
            .await,
        2.0
    );
    assert!(
        member2
            .metric_reaching(
                "voicecluster_task_events_total{direction=\"sent\",kind=\"sync\"}",
                2.0
            )
            .await
            >= 2.0
    );
    assert!(
        member0.metric_reaching(sent, 2.0).await >= 2.0,
        "member 0 answered"
    );
}

#[tokio::test]
async fn a_locally_for_others_member_makes_the_legs_of_a_remotely_member() {
    let provider = Server::start_with("LocallyForOthers", &[]);
    let server = Server::start_with(
        "Remotely",
        &[
            "--call-leg-providers".to_string(),
            provider.grpc.to_string(),
        ],
    );
    server.alice_calls_bob("caller", 1, &[]).await;
    assert_media_relayed(&server).await;
    // The provider's own CallLegs holds no leg once the call is over.
    let mut client = CallLegsClient::connect(format!("http://{}", provider.grpc))
        .await
        .unwrap();
    let legs = client.list(ListLegsRequest {}).await.unwrap().into_inner();
    assert!(legs.legs.is_empty(), "{:?}", legs.legs);
    assert_eq!(legs.capacity, 1000);
}

#[tokio::test]
async fn a_silent_call_is_hung_up_on_the_media_pods_media_timeout_event() {
    let media = MediaNode::start_with(&["--media-timeout-seconds", "2"]);
    let server = Server::start_with(
        "Remotely",
        &["--call-leg-providers".to_string(), media.grpc.to_string()],
    );
    // Neither side sends RTP; the service hangs up on both (the callee's
    // scenario takes the BYE, the caller's waits for it).
    server.alice_calls_bob("silent-caller", 1, &[]).await;
    let bills = http_get(server.management, "/bills").await.unwrap();
    let bills: Vec<serde_json::Value> = serde_json::from_str(&bills.body).unwrap();
    assert_eq!(bills.len(), 1, "{bills:?}");
    assert_eq!(bills[0]["disconnectReason"], "media-timeout");
    let received = "voicecluster_task_events_total{direction=\"received\",kind=\"leg\"}";
    assert!(server.metric_reaching(received, 1.0).await >= 1.0);
}

#[tokio::test]
async fn a_remotely_member_without_a_live_provider_refuses_calls_with_503() {
    let dead = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with("Remotely", &["--call-leg-providers".to_string(), dead]);
    let (alice_port, bob_port) = (free_port(), free_port());
    for (user, pw, port) in [
        ("alice", "wonder", alice_port),
        ("bob", "builder", bob_port),
    ] {
        let ok = server
            .sipp
            .command("register", "u1", &auth(user, pw), port)
            .status()
            .expect("sipp runs");
        assert!(ok.success(), "{user} registers");
    }
    let refused = server
        .sipp
        .command(
            "refused-call",
            "u1",
            "alice;bob;[authentication username=alice password=wonder];",
            alice_port,
        )
        .status()
        .expect("sipp runs");
    assert!(refused.success(), "the call is refused with 503");
    assert_eq!(
        server
            .metric("voicecluster_calls_completed_total{outcome=\"503\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_calls_b_through_edge_backend_and_media_node_with_rtp_both_ways() {
    let c = EdgeCluster::start().await;
    c.edge.alice_calls_bob_of(&c.edge, "caller", 1, &[]).await;
    // RTP went both ways through the media node's legs.
    for direction in ["to_callee", "to_caller"] {
        let n = c
            .backends_metric(
                &format!("voicecluster_call_media_packets_total{{direction=\"{direction}\"}}"),
                50.0,
            )
            .await;
        assert!(n >= 50.0, "RTP {direction}: {n}");
    }
    assert_eq!(c.media.legs().await, 0, "legs released");
    // The legs reported their counters to the call's member while it ran.
    let reports = c
        .backends_metric("voicecluster_call_leg_reports_total", 1.0)
        .await;
    assert!(reports >= 1.0, "leg statistics reports: {reports}");
    // The whole call, both of its dialogs, stayed on one backend: one bill,
    // on one backend, ended by the caller's BYE.
    let bills: Vec<serde_json::Value> = c.bills().await.into_iter().flatten().collect();
    assert_eq!(bills.len(), 1, "{bills:?}");
    let b = &bills[0];
    assert_eq!(b["disconnectReason"], "caller-bye");
    let ms = b["durationMs"].as_u64().unwrap();
    assert!((1900..4000).contains(&ms), "duration {ms} ms");
    assert_eq!(b["cost"], format!("{:.2}", ms.div_ceil(1000) as f64 * 0.01));
    // Both ways through the edge: devices to backends, and the backend's
    // INVITE and BYE to Bob along his flow.
    let to_backend = c
        .edge
        .metric("voicecluster_edge_forwarded_total{direction=\"to_backend\",kind=\"request\"}")
        .await
        .unwrap_or(0.0);
    let to_client = c
        .edge
        .metric("voicecluster_edge_forwarded_total{direction=\"to_client\",kind=\"request\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        to_backend >= 6.0,
        "REGISTERs, INVITEs, ACK, BYE: {to_backend}"
    );
    assert!(to_client >= 3.0, "INVITE, ACK and BYE to Bob: {to_client}");
}

#[tokio::test]
async fn a_hold_reinvite_reaches_the_other_side_through_the_edge_and_its_answer_comes_back() {
    let c = EdgeCluster::start().await;
    // The SIPp scenarios check a=sendonly and the new codec at Bob, and
    // a=recvonly back at Alice; either fails the run otherwise.
    c.edge
        .alice_calls_bob_of(&c.edge, "hold-caller", 1, &[])
        .await;
    let bills: Vec<serde_json::Value> = c.bills().await.into_iter().flatten().collect();
    assert_eq!(bills.len(), 1, "{bills:?}");
    assert_eq!(bills[0]["disconnectReason"], "caller-bye");
}

#[tokio::test]
async fn two_hundred_calls_through_the_edge_all_succeed_and_spread_over_backends() {
    let c = EdgeCluster::start().await;
    // SIPp exits 0 only when every call succeeded.
    c.edge
        .alice_calls_bob_of(&c.edge, "short-call", 200, &["-r", "20", "-timeout", "60s"])
        .await;
    let answered = c
        .backends_metric(
            "voicecluster_calls_completed_total{outcome=\"answered\"}",
            200.0,
        )
        .await;
    assert_eq!(answered, 200.0);
    let bills = c.bills().await;
    let per_backend: Vec<usize> = bills.iter().map(Vec::len).collect();
    assert_eq!(
        per_backend.iter().sum::<usize>(),
        200,
        "one bill per call: {per_backend:?}"
    );
    assert!(
        per_backend.iter().all(|n| *n > 0),
        "Call-ID affinity spreads calls over both backends: {per_backend:?}"
    );
}

#[tokio::test]
async fn two_hundred_calls_at_twenty_per_second_all_succeed() {
    let server = Server::start();
    // SIPp exits 0 only when every call succeeded.
    server
        .alice_calls_bob("short-call", 200, &["-r", "20", "-timeout", "60s"])
        .await;
    assert_eq!(
        server
            .metric("voicecluster_calls_completed_total{outcome=\"answered\"}")
            .await,
        Some(200.0)
    );
    let bills = http_get(server.management, "/bills").await.unwrap();
    let bills: Vec<serde_json::Value> = serde_json::from_str(&bills.body).unwrap();
    assert_eq!(bills.len(), 200, "one bill per call");
}
