//! The tokio driver around [`Relay`]: for a plain RTP leg, a UDP socket for
//! its RTP and RTCP port and a receive task per socket; for a WebRTC leg, a
//! peer connection on its RTP port. The relay sits behind one lock that is
//! never held across an await.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics::MediaMetrics;
use crate::relay::{Destination, Digit, LegId, LegStats, Relay, RelayError, Transmit};
use crate::webrtc_peer::{MediaSink, PeerError, WebRtcPeer, telephone_event_payload_type};

/// Why a leg operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The relay refused (capacity, ports, unknown leg).
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// A port of the range could not be bound.
    #[error("binding RTP port {port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A WebRTC leg could not be set up or negotiated.
    #[error(transparent)]
    WebRtc(#[from] PeerError),
    /// The operation needs a leg of the other kind.
    #[error("leg {0:?} is not a WebRTC leg")]
    NotWebRtc(LegId),
}

/// Port pairs tried for one leg before giving up. Binding is cheap, and a
/// media pod's predecessor on the same node (a surge rollout) holds a run
/// of pairs of the same range for its calls: a new leg walks past them
/// (they stay in the pool for later, and the search goes on from beyond).
const BIND_ATTEMPTS: usize = 1024;

struct LegIo {
    tasks: Vec<JoinHandle<()>>,
    peer: Option<Arc<WebRtcPeer>>,
}

/// How packets leave from a local port.
#[derive(Clone)]
enum Sink {
    Udp(Arc<UdpSocket>),
    /// Into a WebRTC leg's peer connection, which encrypts them.
    Peer(mpsc::Sender<Vec<u8>>),
}

struct Shared {
    relay: Mutex<Relay>,
    sinks: Mutex<HashMap<u16, Sink>>,
    metrics: MediaMetrics,
    /// WebRTC legs whose connection failed, until reported.
    failed: Mutex<Vec<(LegId, String)>>,
}

impl Shared {
    fn relay(&self) -> MutexGuard<'_, Relay> {
        self.relay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sinks(&self) -> MutexGuard<'_, HashMap<u16, Sink>> {
        self.sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `t` on its way: into a peer connection at once, or returns the
    /// socket and address for a UDP send.
    fn route(&self, t: Transmit) -> Option<(Arc<UdpSocket>, SocketAddr, Vec<u8>)> {
        let sink = self.sinks().get(&t.from_port).cloned();
        match (t.to, sink) {
            (Destination::Udp(to), Some(Sink::Udp(socket))) => Some((socket, to, t.bytes)),
            (Destination::InProcess, Some(Sink::Peer(queue))) => {
                if queue.try_send(t.bytes).is_err() {
                    self.metrics.dropped.inc();
                }
                None
            }
            _ => None,
        }
    }
}

/// Media from a WebRTC leg's peer connection, into the relay.
struct PeerMedia {
    shared: Arc<Shared>,
    id: LegId,
}

impl MediaSink for PeerMedia {
    fn on_media(&self, packet: &[u8]) {
        let out = self
            .shared
            .relay()
            .on_media(self.id, packet, Instant::now());
        let Some(t) = out else {
            return;
        };
        self.shared.metrics.relayed.inc();
        if let Some((socket, to, bytes)) = self.shared.route(t) {
            // Called from the peer connection's task: no waiting here; a
            // full socket buffer drops the packet as the wire would.
            if socket.try_send_to(&bytes, to).is_err() {
                self.shared.metrics.dropped.inc();
            }
        }
    }

    fn on_failed(&self, why: &str) {
        tracing::info!(leg = self.id.0, why, "WebRTC leg failed");
        self.shared
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((self.id, why.to_string()));
    }
}

/// A media engine: legs, their sockets and the relay between them.
#[derive(Clone)]
pub struct MediaEngine {
    shared: Arc<Shared>,
    io: Arc<Mutex<HashMap<LegId, LegIo>>>,
    bind_ip: IpAddr,
    public_ip: IpAddr,
}

impl MediaEngine {
    /// An engine binding legs on `bind_ip` and announcing `public_ip` in SDP.
    pub fn new(relay: Relay, bind_ip: IpAddr, public_ip: IpAddr) -> Self {
        Self {
            shared: Arc::new(Shared {
                relay: Mutex::new(relay),
                sinks: Mutex::new(HashMap::new()),
                metrics: MediaMetrics::default(),
                failed: Mutex::new(Vec::new()),
            }),
            io: Arc::new(Mutex::new(HashMap::new())),
            bind_ip,
            public_ip,
        }
    }

    fn io(&self) -> MutexGuard<'_, HashMap<LegId, LegIo>> {
        self.io
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new leg; returns its id and the public address of its RTP port.
    /// Must be called within a tokio runtime.
    pub fn create_leg(&self) -> Result<(LegId, SocketAddr), EngineError> {
        // A pair another process holds is skipped (and stays in the pool
        // for later); only a run of such pairs fails the leg.
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            let (id, port) = self.shared.relay().create_leg(Instant::now())?;
            match self.bind_pair(port) {
                Ok((rtp, rtcp)) => {
                    {
                        let mut sinks = self.shared.sinks();
                        sinks.insert(port, Sink::Udp(Arc::clone(&rtp)));
                        sinks.insert(port + 1, Sink::Udp(Arc::clone(&rtcp)));
                    }
                    let tasks = vec![
                        tokio::spawn(receive(Arc::clone(&self.shared), rtp, port)),
                        tokio::spawn(receive(Arc::clone(&self.shared), rtcp, port + 1)),
                    ];
                    self.io().insert(id, LegIo { tasks, peer: None });
                    return Ok((id, SocketAddr::new(self.public_ip, port)));
                }
                Err(e) => {
                    let _ = self.shared.relay().destroy(id);
                    tracing::debug!(error = %e, "RTP port pair taken; trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(EngineError::Relay(RelayError::AtCapacity(0))))
    }

    /// A new WebRTC leg on the RTP port of a fresh pair: answers
    /// `remote_offer`, or makes an offer when there is none (its answer goes
    /// to [`Self::accept_answer`]). Returns the leg, its public address and
    /// the local SDP.
    pub async fn create_webrtc_leg(
        &self,
        remote_offer: Option<&str>,
    ) -> Result<(LegId, SocketAddr, String), EngineError> {
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            let (id, port) = {
                let mut relay = self.shared.relay();
                let (id, port) = relay.create_leg(Instant::now())?;
                relay.set_in_process(id)?;
                (id, port)
            };
            let media = Arc::new(PeerMedia {
                shared: Arc::clone(&self.shared),
                id,
            });
            let peer =
                match WebRtcPeer::start(SocketAddr::new(self.bind_ip, port), self.public_ip, media)
                    .await
                {
                    Ok(peer) => Arc::new(peer),
                    Err(e) => {
                        let _ = self.shared.relay().destroy(id);
                        if matches!(e, PeerError::Bind { .. }) {
                            tracing::debug!(error = %e, "WebRTC port taken; trying the next");
                            last = Some(e.into());
                            continue;
                        }
                        return Err(e.into());
                    }
                };
            let sdp = match remote_offer {
                Some(offer) => peer.answer(offer).await,
                None => peer.offer().await,
            };
            let sdp = match sdp {
                Ok(sdp) => sdp,
                Err(e) => {
                    peer.close().await;
                    let _ = self.shared.relay().destroy(id);
                    return Err(e.into());
                }
            };
            if let Some(pt) = telephone_event_payload_type(&sdp) {
                self.shared.relay().detect_dtmf(id, pt)?;
            }
            self.shared
                .sinks()
                .insert(port, Sink::Peer(peer.outgoing()));
            self.io().insert(
                id,
                LegIo {
                    tasks: Vec::new(),
                    peer: Some(peer),
                },
            );
            return Ok((id, SocketAddr::new(self.public_ip, port), sdp));
        }
        Err(last.unwrap_or(EngineError::Relay(RelayError::AtCapacity(0))))
    }

    fn peer(&self, id: LegId) -> Result<Arc<WebRtcPeer>, EngineError> {
        let io = self.io();
        let leg = io.get(&id).ok_or(RelayError::NoSuchLeg(id))?;
        leg.peer.clone().ok_or(EngineError::NotWebRtc(id))
    }

    /// The endpoint's answer to the offer a WebRTC leg made.
    pub async fn accept_answer(&self, id: LegId, answer: &str) -> Result<(), EngineError> {
        Ok(self.peer(id)?.accept_answer(answer).await?)
    }

    /// A new offer from a WebRTC leg's endpoint (renegotiation); the answer.
    pub async fn renegotiate(&self, id: LegId, offer: &str) -> Result<String, EngineError> {
        let sdp = self.peer(id)?.answer(offer).await?;
        if let Some(pt) = telephone_event_payload_type(&sdp) {
            self.shared.relay().detect_dtmf(id, pt)?;
        }
        Ok(sdp)
    }

    /// WebRTC legs whose connection failed since the last call, and why.
    pub fn failed(&self) -> Vec<(LegId, String)> {
        std::mem::take(
            &mut *self
                .shared
                .failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn bind_pair(&self, port: u16) -> Result<(Arc<UdpSocket>, Arc<UdpSocket>), EngineError> {
        let bind = |p: u16| {
            std::net::UdpSocket::bind(SocketAddr::new(self.bind_ip, p))
                .and_then(|s| {
                    s.set_nonblocking(true)?;
                    UdpSocket::from_std(s)
                })
                .map(Arc::new)
                .map_err(|source| EngineError::Bind { port: p, source })
        };
        Ok((bind(port)?, bind(port + 1)?))
    }

    /// Where the leg's endpoint receives, from its SDP.
    pub fn set_remote(&self, id: LegId, remote: SocketAddr) -> Result<(), EngineError> {
        Ok(self.shared.relay().set_remote(id, remote)?)
    }

    /// Media of each leg goes to the other.
    pub fn bridge(&self, a: LegId, b: LegId) -> Result<(), EngineError> {
        Ok(self.shared.relay().bridge(a, b)?)
    }

    /// Ends a leg: its sockets are closed before its ports go back to the
    /// pool, so a new leg can always bind them.
    pub async fn destroy(&self, id: LegId) -> Result<LegStats, EngineError> {
        let port = self
            .shared
            .relay()
            .port(id)
            .ok_or(RelayError::NoSuchLeg(id))?;
        {
            let mut sinks = self.shared.sinks();
            sinks.remove(&port);
            sinks.remove(&(port + 1));
        }
        let io = self.io().remove(&id);
        if let Some(io) = io {
            for t in io.tasks {
                t.abort();
                // Resolves once the task, and the socket it holds, is dropped.
                let _ = t.await;
            }
            if let Some(peer) = io.peer {
                peer.close().await;
            }
        }
        Ok(self.shared.relay().destroy(id)?)
    }

    /// The same engine, counting into `metrics`. Call before any leg exists.
    pub fn with_metrics(mut self, metrics: MediaMetrics) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.metrics = metrics;
        }
        self
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &MediaMetrics {
        &self.shared.metrics
    }

    /// Reports the DTMF digits sent on leg `id` as `payload_type`.
    pub fn detect_dtmf(&self, id: LegId, payload_type: u8) -> Result<(), EngineError> {
        Ok(self.shared.relay().detect_dtmf(id, payload_type)?)
    }

    /// Digits endpoints sent since the last call.
    pub fn take_digits(&self) -> Vec<(LegId, Digit)> {
        self.shared.relay().take_digits()
    }

    /// Legs that went silent for the media timeout since the last call,
    /// and that timeout (read together, so an event says the timeout its
    /// leg went silent for even while a new one is put in force).
    pub fn timed_out(&self) -> (Vec<LegId>, Duration) {
        let mut relay = self.shared.relay();
        (relay.timed_out(Instant::now()), relay.media_timeout())
    }

    /// Puts `media_timeout` in force for every leg.
    pub fn set_media_timeout(&self, media_timeout: Duration) {
        self.shared.relay().set_media_timeout(media_timeout);
    }

    /// The media timeout in force.
    pub fn media_timeout(&self) -> Duration {
        self.shared.relay().media_timeout()
    }

    /// A leg's counters.
    pub fn stats(&self, id: LegId) -> Option<LegStats> {
        self.shared.relay().stats(id)
    }

    /// Legs now.
    pub fn legs(&self) -> usize {
        self.shared.relay().len()
    }

    /// Port pairs free now.
    pub fn free_ports(&self) -> usize {
        self.shared.relay().free_ports()
    }
}

async fn receive(shared: Arc<Shared>, socket: Arc<UdpSocket>, port: u16) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors from earlier sends surface here; keep serving.
            Err(_) => continue,
        };
        let out = shared
            .relay()
            .on_packet(port, from, &buf[..n], Instant::now());
        let Some(t) = out else {
            shared.metrics.dropped.inc();
            continue;
        };
        shared.metrics.relayed.inc();
        if let Some((socket, to, bytes)) = shared.route(t) {
            let _ = socket.send_to(&bytes, to).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ports::PortPool;

    fn engine(min: u16) -> MediaEngine {
        let relay = Relay::new(
            PortPool::new(min, min + 99).unwrap(),
            10,
            Duration::from_secs(5),
        );
        let lo = IpAddr::from([127, 0, 0, 1]);
        MediaEngine::new(relay, lo, lo)
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, (seq >> 8) as u8, seq as u8, 0, 0, 0, 0, 0, 0, 0, 1];
        p.extend_from_slice(&[seq as u8; 160]);
        p
    }

    async fn recv(s: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
            .await
            .expect("a packet within 5 s")
            .unwrap();
        buf[..n].to_vec()
    }

    #[tokio::test]
    async fn two_endpoints_exchange_rtp_through_the_engine_and_latching_works() {
        let e = engine(41000);
        let alice = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let bob = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Bob's SDP names a port he never sends from: latching finds him.
        let bob_sdp = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 9);
        let (a, a_addr) = e.create_leg().unwrap();
        let (b, b_addr) = e.create_leg().unwrap();
        e.set_remote(a, alice.local_addr().unwrap()).unwrap();
        e.set_remote(b, bob_sdp).unwrap();
        e.bridge(a, b).unwrap();

        // Bob speaks first (as a NATed phone does), from his real port.
        bob.send_to(&rtp(0), b_addr).await.unwrap();
        assert_eq!(recv(&alice).await, rtp(0));
        for seq in 1..200u16 {
            alice.send_to(&rtp(seq), a_addr).await.unwrap();
            assert_eq!(recv(&bob).await, rtp(seq), "packet {seq} in order, intact");
        }
        let sa = e.stats(a).unwrap();
        let sb = e.stats(b).unwrap();
        assert_eq!((sa.packets_in, sb.packets_out), (199, 199));
        assert_eq!((sb.packets_in, sa.packets_out), (1, 1));

        let free = e.free_ports();
        e.destroy(a).await.unwrap();
        e.destroy(b).await.unwrap();
        assert_eq!(e.free_ports(), free + 2);
        assert_eq!(e.legs(), 0);
        // The ports are really closed: they can be bound again.
        std::net::UdpSocket::bind(a_addr).unwrap();
        std::net::UdpSocket::bind(b_addr).unwrap();
    }

    #[tokio::test]
    async fn a_pair_held_by_another_process_is_skipped() {
        let e = engine(42000);
        let _squatter = std::net::UdpSocket::bind("127.0.0.1:42001").unwrap();
        let (_, addr) = e.create_leg().unwrap();
        assert_eq!(addr.port(), 42002);
    }

    #[tokio::test]
    async fn a_run_of_pairs_held_by_a_predecessor_on_the_node_is_walked_past() {
        // The pod being replaced beside this one holds the range's first
        // forty pairs for its calls.
        let e = engine(42200);
        let _held: Vec<std::net::UdpSocket> = (0..40)
            .filter_map(|i| std::net::UdpSocket::bind(("127.0.0.1", 42200 + 2 * i)).ok())
            .collect();
        let (_, first) = e.create_leg().unwrap();
        assert_eq!(first.port(), 42280);
        let (_, next) = e.create_leg().unwrap();
        assert_eq!(next.port(), 42282, "the search goes on from beyond them");
    }
}
