//! What the media-node process tests share: a media node on loopback with
//! its `CallLegs` client, and RTP endpoints.

// Test set-up: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use tonic::transport::Channel;
use voicecluster_api::grpc::call_legs_client::CallLegsClient;
use voicecluster_api::grpc::{CreateLegRequest, LegKind};
use voicecluster_telemetry::testing::RunningBinary;

const BIN: &str = env!("CARGO_BIN_EXE_media-node");

pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Media {
    pub bin: RunningBinary,
    pub client: CallLegsClient<Channel>,
}

pub async fn start(ports: &str, capacity: u32) -> Media {
    start_draining_in(ports, capacity, 30).await
}

/// A media node whose drain ends after `drain_seconds`.
pub async fn start_draining_in(ports: &str, capacity: u32, drain_seconds: u32) -> Media {
    start_with(ports, capacity, drain_seconds, &[]).await
}

/// A media node with `extra` flags.
pub async fn start_with(ports: &str, capacity: u32, drain_seconds: u32, extra: &[&str]) -> Media {
    let grpc = format!("127.0.0.1:{}", free_port());
    let (capacity, drain_seconds) = (capacity.to_string(), drain_seconds.to_string());
    let mut args = vec![
        "--grpc-addr",
        &grpc,
        "--rtp-ports",
        ports,
        "--capacity",
        &capacity,
        "--bind-ip",
        "127.0.0.1",
        "--drain-timeout-seconds",
        &drain_seconds,
    ];
    args.extend_from_slice(extra);
    let bin = RunningBinary::start_with(BIN, args).expect("media-node starts");
    let mut client = None;
    for _ in 0..50 {
        if let Ok(c) = CallLegsClient::connect(format!("http://{grpc}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Media {
        bin,
        client: client.expect("CallLegs answers"),
    }
}

pub fn create(remote: Option<SocketAddr>) -> CreateLegRequest {
    CreateLegRequest {
        owner: None,
        kind: LegKind::Rtp.into(),
        remote_address: remote.map(|r| r.to_string()).unwrap_or_default(),
        ..Default::default()
    }
}

/// An RTP packet: version 2, PT 0, sequence number `seq`, a payload that
/// says which packet it is.
pub fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78]);
    p.extend(std::iter::repeat_n((seq % 251) as u8, 160));
    p
}

pub fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Sends `seqs` from `from` to `to` and reads as many packets at `at`.
pub fn send_and_receive(
    from: &UdpSocket,
    to: SocketAddr,
    at: &UdpSocket,
    seqs: std::ops::Range<u16>,
) {
    for seq in seqs.clone() {
        from.send_to(&rtp(seq), to).unwrap();
        // 20 ms apart would be real time; 1 ms keeps the test short.
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut buf = [0u8; 2048];
    for seq in seqs {
        let (n, _) = at.recv_from(&mut buf).expect("every packet arrives");
        assert_eq!(&buf[..n], &rtp(seq)[..], "packet {seq} in order, intact");
    }
}
