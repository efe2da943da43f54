//! The sockets of a SIP role: one UDP socket, one TCP listener with a task
//! per connection that frames its stream, and (for an edge) the socket its
//! heartbeats leave from. Connection tasks talk to the loop by [`Event`]s.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::framing::{Frame, Framer};
use crate::port_sharing;
use crate::transaction::Peer;

/// What connection tasks tell the endpoint loop.
pub(crate) enum Event {
    Connected(SocketAddr, mpsc::Sender<Vec<u8>>),
    Frame(SocketAddr, Vec<u8>),
    Broken(SocketAddr, String, Option<Vec<u8>>),
    Closed(SocketAddr),
}

/// Bound sockets, ready to serve.
pub struct Listeners {
    pub(crate) udp: UdpSocket,
    pub(crate) tcp: TcpListener,
    /// Where an edge's heartbeats leave from and their answers arrive.
    pub(crate) probe: Option<UdpSocket>,
}

impl Listeners {
    /// Binds UDP on `udp` and TCP on `tcp`.
    pub async fn bind(udp: SocketAddr, tcp: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            udp: UdpSocket::bind(udp).await?,
            tcp: TcpListener::bind(tcp).await?,
            probe: None,
        })
    }

    /// An edge's sockets: UDP and TCP on `addr`, shared with the edge that
    /// will replace this one ([`port_sharing`]), and a probe socket of its
    /// own on the same IP for the heartbeats.
    pub async fn bind_edge(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            udp: UdpSocket::from_std(port_sharing::shared_udp(addr)?)?,
            tcp: TcpListener::from_std(port_sharing::shared_tcp(addr)?)?,
            probe: Some(UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).await?),
        })
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// What a connection delivered to the engine.
pub(crate) enum Received {
    /// A whole message.
    Frame(Vec<u8>),
    /// Framing broke; `reply` answers the request that broke it.
    Broken { why: String, reply: Option<Vec<u8>> },
}

/// The writing halves of the open TCP connections, by peer.
#[derive(Default)]
pub(crate) struct Connections(HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>);

impl Connections {
    /// A connection task's news; a frame comes back to be served.
    pub(crate) fn on_event(&mut self, event: Event) -> Option<(Peer, Received)> {
        match event {
            Event::Connected(addr, writer) => {
                self.0.insert(addr, writer);
                None
            }
            Event::Closed(addr) => {
                self.0.remove(&addr);
                None
            }
            Event::Frame(addr, bytes) => Some((
                Peer {
                    addr,
                    reliable: true,
                },
                Received::Frame(bytes),
            )),
            Event::Broken(addr, why, reply) => Some((
                Peer {
                    addr,
                    reliable: true,
                },
                Received::Broken { why, reply },
            )),
        }
    }

    /// Sends `bytes` to `to`, over its TCP connection or as a datagram.
    pub(crate) async fn transmit(&self, udp: &UdpSocket, to: Peer, bytes: Vec<u8>) {
        if to.reliable {
            match self.0.get(&to.addr) {
                // A full queue means a peer that does not read: drop
                // rather than stall every other call.
                Some(w) => {
                    if w.try_send(bytes).is_err() {
                        tracing::warn!(peer = %to.addr, "TCP peer not reading; message dropped");
                    }
                }
                None => tracing::debug!(peer = %to.addr, "no TCP connection to answer on"),
            }
        } else if let Err(e) = udp.send_to(&bytes, to.addr).await {
            tracing::debug!(peer = %to.addr, error = %e, "UDP send failed");
        }
    }
}

/// Aborts its task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) async fn accept_loop(tcp: TcpListener, events: mpsc::Sender<Event>) {
    loop {
        match tcp.accept().await {
            Ok((stream, addr)) => {
                tokio::spawn(connection(stream, addr, events.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, addr: SocketAddr, events: mpsc::Sender<Event>) {
    let (mut reader, mut writer) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let pong = out_tx.clone();
    if events.send(Event::Connected(addr, out_tx)).await.is_err() {
        return;
    }
    let write = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 16 * 1024];
    'read: loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Message(m))) => {
                    if events.send(Event::Frame(addr, m)).await.is_err() {
                        break 'read;
                    }
                }
                Ok(Some(Frame::Ping)) => {
                    // RFC 5626 §3.5.1: a double-CRLF ping gets a CRLF pong,
                    // through the same queue as every other write.
                    let _ = pong.try_send(b"\r\n".to_vec());
                }
                Ok(None) => break,
                Err(broken) => {
                    let _ = events
                        .send(Event::Broken(addr, broken.why, broken.reply))
                        .await;
                    // The loop queues the reply before it reads the Closed
                    // that follows and lets go of the queue; with this
                    // task's handle gone too, the writer ends once the
                    // reply is written.
                    let _ = events.send(Event::Closed(addr)).await;
                    drop(pong);
                    let mut write = write;
                    if tokio::time::timeout(FLUSH_LIMIT, &mut write).await.is_err() {
                        tracing::debug!(peer = %addr, "the peer does not read; closing without the reply");
                        write.abort();
                    }
                    return;
                }
            }
        }
    }
    let _ = events.send(Event::Closed(addr)).await;
    write.abort();
}

/// How long a broken stream's reply may take to be written.
const FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
