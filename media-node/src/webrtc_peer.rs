//! One WebRTC peer connection (webrtc-rs: ICE, DTLS-SRTP) as the media end
//! of a call leg. It owns one UDP port of the pod's range, so browsers reach
//! it the same way SIP phones reach plain RTP legs, and hands the RTP it
//! decrypts to a [`MediaSink`] (the relay). RTP the relay sends its way goes
//! out on its one audio track.
//!
//! Codecs are G.711 (PCMU, PCMA) and telephone-event: what a SIP endpoint
//! on the other side of the bridge also speaks, so media crosses the bridge
//! without transcoding.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateType;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::shared::marshal::{Marshal, Unmarshal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCPeerConnectionState, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

/// Why a WebRTC leg could not be set up or negotiated.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The SDP from the endpoint was refused.
    #[error("remote SDP: {0}")]
    RemoteSdp(String),
    /// The peer connection failed in a way the endpoint did not cause.
    #[error("WebRTC: {0}")]
    Stack(String),
    /// The leg's port is held by someone else.
    #[error("binding WebRTC port {port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a peer connection's media and fate go.
pub trait MediaSink: Send + Sync + 'static {
    /// An RTP or RTCP packet from the endpoint, decrypted.
    fn on_media(&self, packet: &[u8]);
    /// ICE or DTLS failed, or the endpoint closed: the leg is dead.
    fn on_failed(&self, why: &str);
}

/// How long ICE candidate gathering may take. Only host candidates on one
/// socket are gathered, so it is immediate in practice.
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);
/// Packets waiting for the encrypting side; past this, new ones are dropped
/// (real-time media is useless late).
const SEND_QUEUE: usize = 256;
/// The telephone-event payload type this side offers.
const TELEPHONE_EVENT_PT: u8 = 101;

/// A live peer connection.
pub struct WebRtcPeer {
    pc: Arc<dyn PeerConnection>,
    outgoing: mpsc::Sender<Vec<u8>>,
    gathering: IceGathering,
    writer: JoinHandle<()>,
    readers: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

/// Whether a peer connection has gathered its ICE candidates: its event
/// handler marks it, and its local SDP waits for it (no trickle ICE: the
/// SDP goes out in one SIP or API message).
#[derive(Clone, Debug)]
pub struct IceGathering {
    complete: watch::Sender<bool>,
}

impl Default for IceGathering {
    fn default() -> Self {
        Self {
            complete: watch::channel(false).0,
        }
    }
}

impl IceGathering {
    /// What the handler's `on_ice_gathering_state_change` heard.
    pub fn observe(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.complete.send_replace(true);
        }
    }

    /// Waits up to `timeout` for the candidates; whether they are all in.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let mut complete = self.complete.subscribe();
        matches!(
            tokio::time::timeout(timeout, complete.wait_for(|done| *done)).await,
            Ok(Ok(_))
        )
    }
}

struct Events {
    sink: Arc<dyn MediaSink>,
    gathering: IceGathering,
    readers: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.observe(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "WebRTC leg");
        if state == RTCPeerConnectionState::Failed {
            self.sink.on_failed("ICE/DTLS failed");
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let sink = Arc::clone(&self.sink);
        let reader = tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(p) => match p.marshal() {
                        Ok(bytes) => sink.on_media(&bytes),
                        Err(e) => tracing::debug!(error = %e, "re-encoding RTP"),
                    },
                    TrackRemoteEvent::OnRtcpPacket(packets) => {
                        for p in packets {
                            if let Ok(bytes) = p.marshal() {
                                sink.on_media(&bytes);
                            }
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(reader);
    }
}

fn codec(mime: &str, clock_rate: u32, payload_type: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_string(),
            clock_rate,
            channels: 1,
            sdp_fmtp_line: if mime.ends_with("telephone-event") {
                "0-16".to_string()
            } else {
                String::new()
            },
            rtcp_feedback: vec![],
        },
        payload_type,
    }
}

fn stack<E: std::fmt::Display>(e: E) -> PeerError {
    PeerError::Stack(e.to_string())
}

/// The codecs a leg offers and takes (G.711 and telephone-event), with
/// webrtc-rs's default interceptors.
fn media_engine() -> Result<(MediaEngine, Registry), PeerError> {
    let mut media = MediaEngine::default();
    for (mime, rate, pt) in [
        ("audio/PCMU", 8000, 0),
        ("audio/PCMA", 8000, 8),
        ("audio/telephone-event", 8000, TELEPHONE_EVENT_PT),
    ] {
        media
            .register_codec(codec(mime, rate, pt), RtpCodecKind::Audio)
            .map_err(stack)?;
    }
    let registry = register_default_interceptors(Registry::new(), &mut media).map_err(stack)?;
    Ok((media, registry))
}

/// ICE settings of a leg on `bind`: its candidate names `public_ip` when
/// that is another address, and a leg on loopback gets a loopback one.
fn settings(bind: SocketAddr, public_ip: IpAddr) -> SettingEngineBuilder {
    let mut settings = SettingEngineBuilder::new();
    if public_ip != bind.ip() && !public_ip.is_unspecified() {
        settings =
            settings.with_nat_1to1_ips(vec![public_ip.to_string()], RTCIceCandidateType::Host);
    }
    if bind.ip().is_loopback() {
        settings = settings.with_include_loopback_candidate(true);
    }
    settings
}

/// The leg's one audio track, PCMU, sending as `ssrc`.
fn audio_track(ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "voicecluster".to_string(),
        format!("leg-{ssrc}"),
        "call leg".to_string(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec("audio/PCMU", 8000, 0).rtp_codec,
            ..Default::default()
        }],
    )))
}

/// Writes the RTP queued for the endpoint to `track`, as `ssrc`; the queue,
/// and the task.
fn spawn_writer(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
) -> (mpsc::Sender<Vec<u8>>, JoinHandle<()>) {
    let (outgoing, mut rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            let mut buf = bytes.as_slice();
            let Ok(mut packet) = rtc::rtp::Packet::unmarshal(&mut buf) else {
                continue;
            };
            // The endpoint knows this leg's stream by the SSRC in our SDP.
            packet.header.ssrc = ssrc;
            // Before ICE and DTLS are up the track is not bound yet;
            // those packets are lost as they would be on the wire.
            let _ = track.write_rtp(packet).await;
        }
    });
    (outgoing, writer)
}

impl WebRtcPeer {
    /// A peer connection on `bind` (one UDP port), announcing `public_ip`
    /// in its ICE candidates, handing what it receives to `sink`.
    pub async fn start(
        bind: SocketAddr,
        public_ip: IpAddr,
        sink: Arc<dyn MediaSink>,
    ) -> Result<Self, PeerError> {
        // webrtc-rs skips an address it cannot bind; a leg without its port
        // would have no candidate, so the port is checked first.
        std::net::UdpSocket::bind(bind).map_err(|source| PeerError::Bind {
            port: bind.port(),
            source,
        })?;

        let (media, registry) = media_engine()?;
        let gathering = IceGathering::default();
        let readers = Arc::default();
        let events = Arc::new(Events {
            sink,
            gathering: gathering.clone(),
            readers: Arc::clone(&readers),
        });
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings(bind, public_ip).build())
            .with_handler(events)
            .with_udp_addrs(vec![bind])
            .build()
            .await
            .map_err(stack)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let ssrc: u32 = rand::random();
        let track = audio_track(ssrc);
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .map_err(stack)?;
        let (outgoing, writer) = spawn_writer(track, ssrc);
        Ok(Self {
            pc,
            outgoing,
            gathering,
            writer,
            readers,
        })
    }

    /// Answers the endpoint's offer; returns the answer SDP.
    pub async fn answer(&self, offer: &str) -> Result<String, PeerError> {
        let offer = RTCSessionDescription::offer(offer.to_string())
            .map_err(|e| PeerError::RemoteSdp(e.to_string()))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| PeerError::RemoteSdp(e.to_string()))?;
        let answer = self.pc.create_answer(None).await.map_err(stack)?;
        self.pc.set_local_description(answer).await.map_err(stack)?;
        self.local_sdp().await
    }

    /// An offer for the endpoint; its answer goes to [`Self::accept_answer`].
    pub async fn offer(&self) -> Result<String, PeerError> {
        let offer = self.pc.create_offer(None).await.map_err(stack)?;
        self.pc.set_local_description(offer).await.map_err(stack)?;
        self.local_sdp().await
    }

    /// The endpoint's answer to [`Self::offer`].
    pub async fn accept_answer(&self, answer: &str) -> Result<(), PeerError> {
        let answer = RTCSessionDescription::answer(answer.to_string())
            .map_err(|e| PeerError::RemoteSdp(e.to_string()))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(|e| PeerError::RemoteSdp(e.to_string()))
    }

    /// The local description once its candidates are in (no trickle ICE:
    /// the SDP goes out in one SIP or API message).
    async fn local_sdp(&self) -> Result<String, PeerError> {
        // Past the timeout it goes with the candidates it has.
        self.gathering.wait(GATHER_TIMEOUT).await;
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| PeerError::Stack("no local description".to_string()))
    }

    /// Where RTP for the endpoint is queued (`try_send`: when the queue is
    /// full the packet is dropped).
    pub fn outgoing(&self) -> mpsc::Sender<Vec<u8>> {
        self.outgoing.clone()
    }

    /// Ends the peer connection; its port is free when this returns.
    pub async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "closing WebRTC leg");
        }
        self.writer.abort();
        let readers: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for r in readers {
            r.abort();
            let _ = r.await;
        }
    }
}

/// The telephone-event payload type an SDP names, if any.
pub fn telephone_event_payload_type(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("a=rtpmap:")?;
        let (pt, name) = rest.split_once(' ')?;
        name.to_ascii_lowercase()
            .starts_with("telephone-event/8000")
            .then(|| pt.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_telephone_event_payload_type_is_read_from_sdp() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0 126\r\na=rtpmap:0 PCMU/8000\r\n\
                   a=rtpmap:126 telephone-event/8000\r\n";
        assert_eq!(telephone_event_payload_type(sdp), Some(126));
        assert_eq!(telephone_event_payload_type("a=rtpmap:0 PCMU/8000"), None);
    }
}
