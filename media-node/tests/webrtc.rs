//! A webrtc-rs client peer (as a browser would be) bridged through the
//! media-node binary to a plain RTP endpoint (as a SIP phone would be):
//! ICE, DTLS-SRTP, and RTP both ways, with the media node answering the
//! browser's offer and with the media node offering.

// Test set-up: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, watch};
use tonic::Code;
use voicecluster_api::grpc::{
    AnswerLegRequest, BridgeRequest, CreateLegRequest, DestroyLegRequest, LegKind, ListLegsRequest,
};
use voicecluster_media_node::webrtc_peer::IceGathering;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCPeerConnectionState, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

mod common;

use common::*;

/// What the browser side sees.
struct Browser {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    gathering: IceGathering,
    connected: watch::Receiver<bool>,
    /// Payloads of the RTP packets it received, in arrival order.
    heard: mpsc::UnboundedReceiver<Vec<u8>>,
}

struct Events {
    gathering: IceGathering,
    connected: watch::Sender<bool>,
    heard: mpsc::UnboundedSender<Vec<u8>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.observe(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.connected.send_replace(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let heard = self.heard.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = event {
                    let _ = heard.send(p.payload.to_vec());
                }
            }
        });
    }
}

fn pcmu() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/PCMU".into(),
        clock_rate: 8000,
        channels: 1,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

impl Browser {
    /// A peer with a browser's default codecs (Opus first), one audio track.
    async fn new() -> Self {
        let mut media = MediaEngine::default();
        media.register_default_codecs().unwrap();
        let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
        let gathering = IceGathering::default();
        let (connected_tx, connected) = watch::channel(false);
        let (heard_tx, heard) = mpsc::unbounded_channel();
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_include_loopback_candidate(true)
                    .build(),
            )
            .with_handler(Arc::new(Events {
                gathering: gathering.clone(),
                connected: connected_tx,
                heard: heard_tx,
            }))
            .with_udp_addrs(vec!["127.0.0.1:0"])
            .build()
            .await
            .unwrap();
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let ssrc = 0x5eed_0001;
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "browser".into(),
            "mic".into(),
            "mic".into(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: pcmu(),
                ..Default::default()
            }],
        )));
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .unwrap();
        Self {
            pc,
            track,
            ssrc,
            gathering,
            connected,
            heard,
        }
    }

    async fn local_sdp(&mut self) -> String {
        assert!(
            self.gathering.wait(Duration::from_secs(5)).await,
            "ICE gathering completes"
        );
        self.pc.local_description().await.unwrap().sdp
    }

    async fn offer(&mut self) -> String {
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer).await.unwrap();
        self.local_sdp().await
    }

    async fn answer(&mut self, offer: String) -> String {
        let offer = RTCSessionDescription::offer(offer).unwrap();
        self.pc.set_remote_description(offer).await.unwrap();
        let answer = self.pc.create_answer(None).await.unwrap();
        self.pc.set_local_description(answer).await.unwrap();
        self.local_sdp().await
    }

    async fn accept(&self, answer: String) {
        let answer = RTCSessionDescription::answer(answer).unwrap();
        self.pc.set_remote_description(answer).await.unwrap();
    }

    async fn connected(&mut self) {
        tokio::time::timeout(Duration::from_secs(15), self.connected.wait_for(|c| *c))
            .await
            .expect("ICE and DTLS connect within 15 s")
            .unwrap();
    }

    async fn speak(&self, seq: u16) {
        let mut p = rtc::rtp::Packet::default();
        p.header.version = 2;
        p.header.payload_type = 0;
        p.header.sequence_number = seq;
        p.header.timestamp = u32::from(seq) * 160;
        p.header.ssrc = self.ssrc;
        p.payload = payload(seq).into();
        let _ = self.track.write_rtp(p).await;
    }
}

/// 160 bytes of "audio" that say which packet they are.
fn payload(seq: u16) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.extend(std::iter::repeat_n((seq % 251) as u8, 158));
    p
}

fn phone_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&[0x0b, 0xad, 0xca, 0x11]);
    p.extend(payload(seq));
    p
}

/// Sends from the phone until the browser hears something (the first
/// packets go while DTLS-SRTP keys settle), then checks that `seqs` all
/// arrive, in order, intact.
async fn phone_to_browser(phone: &UdpSocket, leg: SocketAddr, b: &mut Browser) {
    let mut warm = 60000u16;
    loop {
        phone.send_to(&phone_packet(warm), leg).unwrap();
        warm += 1;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), b.heard.recv()).await {
            break;
        }
        assert!(warm < 60250, "the browser heard nothing in 5 s");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while b.heard.try_recv().is_ok() {}
    for seq in 0..100u16 {
        phone.send_to(&phone_packet(seq), leg).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for seq in 0..100u16 {
        let heard = tokio::time::timeout(Duration::from_secs(2), b.heard.recv())
            .await
            .expect("every packet reaches the browser")
            .unwrap();
        assert_eq!(heard, payload(seq), "packet {seq} in order, intact");
    }
}

/// The same the other way: browser to phone.
async fn browser_to_phone(b: &Browser, phone: &UdpSocket) {
    phone
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut warm = 60000u16;
    loop {
        b.speak(warm).await;
        warm += 1;
        if phone.recv_from(&mut buf).is_ok() {
            break;
        }
        assert!(warm < 60250, "the phone heard nothing in 5 s");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while phone.recv_from(&mut buf).is_ok() {}
    phone
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for seq in 0..100u16 {
        b.speak(seq).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for seq in 0..100u16 {
        let (n, _) = phone
            .recv_from(&mut buf)
            .expect("every packet reaches the phone");
        let packet = &buf[..n];
        assert_eq!(packet[1] & 0x7f, 0, "PCMU");
        assert_eq!(
            &packet[12..],
            &payload(seq)[..],
            "packet {seq} in order, intact"
        );
    }
}

async fn bridge_and_talk(m: &mut Media, browser: &mut Browser, webrtc_leg: u64) {
    let phone = socket();
    let rtp = m
        .client
        .create(create(Some(phone.local_addr().unwrap())))
        .await
        .unwrap()
        .into_inner();
    m.client
        .bridge(BridgeRequest {
            a: webrtc_leg,
            b: rtp.id,
        })
        .await
        .unwrap();
    browser.connected().await;
    let rtp_addr: SocketAddr = rtp.address.parse().unwrap();
    phone_to_browser(&phone, rtp_addr, browser).await;
    browser_to_phone(browser, &phone).await;

    let listed = m
        .client
        .list(ListLegsRequest {})
        .await
        .unwrap()
        .into_inner();
    let w = listed.legs.iter().find(|l| l.id == webrtc_leg).unwrap();
    assert_eq!(w.kind, i32::from(LegKind::Webrtc));
    let stats = w.stats.unwrap();
    assert!(
        stats.packets_in >= 100 && stats.packets_out >= 100,
        "{stats:?}"
    );
    let port: u16 = w.address.rsplit(':').next().unwrap().parse().unwrap();

    for id in [webrtc_leg, rtp.id] {
        m.client.destroy(DestroyLegRequest { id }).await.unwrap();
    }
    browser.pc.close().await.unwrap();
    UdpSocket::bind(("127.0.0.1", port)).expect("the WebRTC leg's port is free again");
}

fn webrtc(remote_sdp: String) -> CreateLegRequest {
    CreateLegRequest {
        kind: LegKind::Webrtc.into(),
        remote_sdp,
        ..Default::default()
    }
}

// Two workers: the phone side blocks on its socket while the browser's
// peer connection runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_offer_is_answered_and_rtp_flows_both_ways_through_dtls_srtp() {
    let mut m = start("42100-42119", 10).await;
    let mut browser = Browser::new().await;
    let offer = browser.offer().await;
    let leg = m.client.create(webrtc(offer)).await.unwrap().into_inner();
    let port = leg.address.rsplit(':').next().unwrap();
    let answer = leg.sdp.clone();
    assert!(answer.contains("a=fingerprint:"), "DTLS-SRTP: {answer}");
    assert!(
        answer.contains("PCMU/8000"),
        "G.711 picked over Opus: {answer}"
    );
    assert!(!answer.to_lowercase().contains("opus"), "{answer}");
    assert!(
        answer
            .lines()
            .any(|l| l.starts_with("a=candidate:") && l.contains(&format!("127.0.0.1 {port}"))),
        "one candidate on the leg's own port: {answer}"
    );
    browser.accept(answer).await;
    bridge_and_talk(&mut m, &mut browser, leg.id).await;
}

// Two workers: the phone side blocks on its socket while the browser's
// peer connection runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leg_that_offers_takes_the_browsers_answer() {
    let mut m = start("42120-42139", 10).await;
    let mut browser = Browser::new().await;
    let leg = m
        .client
        .create(webrtc(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(leg.sdp.contains("a=setup:actpass"), "{}", leg.sdp);
    let answer = browser.answer(leg.sdp.clone()).await;
    m.client
        .answer(AnswerLegRequest {
            id: leg.id,
            sdp: answer,
        })
        .await
        .unwrap();
    bridge_and_talk(&mut m, &mut browser, leg.id).await;
}

#[tokio::test]
async fn bad_webrtc_requests_get_clear_errors_and_leave_nothing_behind() {
    let mut m = start("42140-42149", 10).await;
    let garbage = m
        .client
        .create(webrtc("this is not SDP".into()))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage}");
    let mut both = webrtc(String::new());
    both.remote_address = "127.0.0.1:4000".into();
    let both = m.client.create(both).await.unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument, "{both}");
    let rtp = m.client.create(create(None)).await.unwrap().into_inner();
    let not_webrtc = m
        .client
        .answer(AnswerLegRequest {
            id: rtp.id,
            sdp: "v=0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_webrtc.code(), Code::FailedPrecondition, "{not_webrtc}");
    let listed = m
        .client
        .list(ListLegsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.legs.len(), 1, "only the RTP leg: {listed:?}");
}
