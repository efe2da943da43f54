//! The thin tokio driver around [`Endpoint`]: one UDP socket, one TCP
//! listener, a task per TCP connection that frames its stream, and one loop
//! that owns the endpoint and its timers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::edge::Edge;
use crate::endpoint::{Endpoint, Lifecycle};
use crate::framing::{Frame, Framer};
use crate::leg_providers::Legs;
use crate::legs::{LegReply, LegRequest};
use crate::port_sharing;
use crate::task_events::{Outbound, Peers};
use crate::transaction::Peer;
use crate::wire::MAX_MESSAGE;
use voicecluster_api::grpc::{DirectorySnapshot, FailoverReport, TaskEvent};
use voicecluster_directory_client::Report;

/// How often the member checks whether its buddy changed.
const BUDDY_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// What connection tasks tell the endpoint loop.
enum Event {
    Connected(SocketAddr, mpsc::Sender<Vec<u8>>),
    Frame(SocketAddr, Vec<u8>),
    Broken(SocketAddr, String, Option<Vec<u8>>),
    Closed(SocketAddr),
}

/// Bound sockets, ready to serve.
pub struct Listeners {
    udp: UdpSocket,
    tcp: TcpListener,
    /// Where an edge's heartbeats leave from and their answers arrive.
    probe: Option<UdpSocket>,
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

/// A SIP core the driver runs: the backend [`Endpoint`] or the [`Edge`].
pub trait SipCore: Send {
    /// Bytes arrived from `from`.
    fn on_bytes(&mut self, bytes: &[u8], from: Peer, now: Instant, wall: SystemTime);
    /// A stream broke on bad framing; `reply` answers the request that broke it.
    fn reject(&mut self, from: Peer, why: &str, reply: Option<Vec<u8>>);
    /// The next bytes to send.
    fn poll_transmit(&mut self) -> Option<(Peer, Vec<u8>)>;
    /// The next heartbeat to send from the probe socket.
    fn poll_probe(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        None
    }
    /// When [`Self::handle_timeout`] is due.
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
    /// Runs due timers.
    fn handle_timeout(&mut self, _now: Instant, _wall: SystemTime) {}
    /// The next call-leg work.
    fn poll_leg_request(&mut self) -> Option<LegRequest> {
        None
    }
    /// What became of call-leg work.
    fn on_leg_reply(&mut self, _reply: LegReply, _now: Instant, _wall: SystemTime) {}
    /// The next task event for another member, with the sending task.
    fn poll_task_event(&mut self) -> Option<(u64, Outbound)> {
        None
    }
    /// A task event from another member.
    fn on_task_event(&mut self, _event: TaskEvent, _now: Instant, _wall: SystemTime) {}
    /// Task `task`'s event for its buddy had nowhere to go.
    fn on_no_buddy(&mut self, _task: u64, _now: Instant, _wall: SystemTime) {}
    /// Moves the core along its life.
    fn set_lifecycle(&mut self, _to: Lifecycle) {}
    /// The member's buddy is another member now.
    fn on_buddy_changed(&mut self, _now: Instant, _wall: SystemTime) {}
    /// Replicas no buddy confirmed go again.
    fn retry_unconfirmed(&mut self, _now: Instant, _wall: SystemTime) {}
    /// Nothing would be lost by handing over now.
    fn settled(&self) -> bool {
        true
    }
    /// A new Directory version is in use.
    fn on_directory(&mut self, _snapshot: &DirectorySnapshot, _now: Instant, _wall: SystemTime) {}
    /// What the operator should know of failover here.
    fn failover_report(&self) -> Option<FailoverReport> {
        None
    }
}

impl SipCore for Endpoint {
    fn on_bytes(&mut self, bytes: &[u8], from: Peer, now: Instant, wall: SystemTime) {
        Endpoint::on_bytes(self, bytes, from, now, wall);
    }
    fn reject(&mut self, from: Peer, why: &str, reply: Option<Vec<u8>>) {
        Endpoint::reject(self, from, why, reply);
    }
    fn poll_transmit(&mut self) -> Option<(Peer, Vec<u8>)> {
        Endpoint::poll_transmit(self)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        Endpoint::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant, wall: SystemTime) {
        Endpoint::handle_timeout(self, now, wall);
    }
    fn poll_leg_request(&mut self) -> Option<LegRequest> {
        Endpoint::poll_leg_request(self)
    }
    fn on_leg_reply(&mut self, reply: LegReply, now: Instant, wall: SystemTime) {
        Endpoint::on_leg_reply(self, reply, now, wall);
    }
    fn poll_task_event(&mut self) -> Option<(u64, Outbound)> {
        Endpoint::poll_task_event(self)
    }
    fn on_task_event(&mut self, event: TaskEvent, now: Instant, wall: SystemTime) {
        Endpoint::on_task_event(self, event, now, wall);
    }
    fn on_no_buddy(&mut self, task: u64, now: Instant, wall: SystemTime) {
        Endpoint::on_no_buddy(self, task, now, wall);
    }
    fn set_lifecycle(&mut self, to: Lifecycle) {
        Endpoint::set_lifecycle(self, to);
    }
    fn on_buddy_changed(&mut self, now: Instant, wall: SystemTime) {
        Endpoint::on_buddy_changed(self, now, wall);
    }
    fn retry_unconfirmed(&mut self, now: Instant, wall: SystemTime) {
        Endpoint::retry_unconfirmed(self, now, wall);
    }
    fn settled(&self) -> bool {
        Endpoint::settled(self)
    }
    fn on_directory(&mut self, snapshot: &DirectorySnapshot, now: Instant, wall: SystemTime) {
        Endpoint::on_directory(self, snapshot, now, wall);
    }
    fn failover_report(&self) -> Option<FailoverReport> {
        Some(Endpoint::failover_report(self))
    }
}

impl SipCore for Edge {
    fn on_bytes(&mut self, bytes: &[u8], from: Peer, now: Instant, _wall: SystemTime) {
        Edge::on_bytes(self, bytes, from, now);
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        Edge::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant, _wall: SystemTime) {
        Edge::handle_timeout(self, now);
    }
    fn reject(&mut self, from: Peer, why: &str, reply: Option<Vec<u8>>) {
        Edge::reject(self, from, why, reply);
    }
    fn poll_transmit(&mut self) -> Option<(Peer, Vec<u8>)> {
        Edge::poll_transmit(self)
    }
    fn poll_probe(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        Edge::poll_probe(self)
    }
    fn failover_report(&self) -> Option<FailoverReport> {
        Some(Edge::failover_report(self))
    }
    fn set_lifecycle(&mut self, to: Lifecycle) {
        Edge::set_draining(self, to != Lifecycle::Serving);
    }
}

/// What the endpoint works with besides SIP.
#[derive(Default)]
pub struct Links {
    /// Where its calls' legs come from.
    pub legs: Option<Arc<Legs>>,
    /// The other members, for its outgoing task events.
    pub peers: Option<Arc<Peers>>,
    /// Task events for it, from the TaskEvents service.
    pub events: Option<mpsc::Receiver<TaskEvent>>,
    /// Where in its life it should be, and where it says whether it is
    /// settled (see [`SipCore::settled`]).
    pub lifecycle: Option<(watch::Receiver<Lifecycle>, watch::Sender<bool>)>,
    /// The Directory version in use.
    pub directory: Option<watch::Receiver<Option<Arc<DirectorySnapshot>>>>,
    /// Where its failover reports go (the Directory stream).
    pub reports: Option<watch::Sender<Option<Report>>>,
}

/// How often the failover report is looked at (and sent when it changed).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Serves SIP until the future is dropped.
pub async fn serve(
    listeners: Listeners,
    mut endpoint: impl SipCore,
    links: Links,
) -> std::io::Result<()> {
    let Listeners { udp, tcp, probe } = listeners;
    let Links {
        legs,
        peers,
        events: mut task_events,
        lifecycle,
        mut directory,
        reports,
    } = links;
    let next_directory =
        async |rx: &mut Option<watch::Receiver<Option<Arc<DirectorySnapshot>>>>| match rx {
            Some(rx) => match rx.changed().await {
                Ok(()) => rx.borrow_and_update().clone(),
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        };
    // The version already in use when SIP starts applies too.
    if let Some(s) = directory
        .as_mut()
        .and_then(|d| d.borrow_and_update().clone())
    {
        endpoint.on_directory(&s, Instant::now(), SystemTime::now());
    }
    let mut report_tick = tokio::time::interval(REPORT_EVERY);
    let (mut lifecycle, settled) = match lifecycle {
        Some((rx, tx)) => (Some(rx), Some(tx)),
        None => (None, None),
    };
    if let Some(rx) = lifecycle.as_mut() {
        endpoint.set_lifecycle(*rx.borrow_and_update());
    }
    let next_lifecycle = async |rx: &mut Option<watch::Receiver<Lifecycle>>| match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    };
    let next_task_event = async |rx: &mut Option<mpsc::Receiver<TaskEvent>>| match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    };
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    // Leg work runs beside the loop, so a slow provider stalls only its call.
    let (replies_tx, mut replies) = mpsc::unbounded_channel::<LegReply>();
    // The listener closes with this future, even when it is dropped: an
    // edge handing its port over must leave the group at once.
    let _accept = AbortOnDrop(tokio::spawn(accept_loop(tcp, events_tx)));
    let mut probe_buf = vec![0u8; MAX_MESSAGE + 1];
    let probe_received = async |buf: &mut Vec<u8>| match &probe {
        Some(p) => p.recv_from(buf).await,
        None => std::future::pending().await,
    };
    let mut connections: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    // The buddy follows the member list; when it changes, every call is
    // replicated to the new one.
    let mut buddy_check = tokio::time::interval(BUDDY_CHECK);
    let mut buddy = peers.as_ref().and_then(|p| p.buddy());
    loop {
        let deadline = endpoint.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = udp.recv_from(&mut buf) => {
                match received {
                    Ok((n, from)) => endpoint.on_bytes(
                        &buf[..n],
                        Peer { addr: from, reliable: false },
                        Instant::now(),
                        SystemTime::now(),
                    ),
                    // ICMP unreachable from an earlier send surfaces here on
                    // some systems; it says nothing about this socket.
                    Err(e) => tracing::debug!(error = %e, "UDP receive error"),
                }
            }
            received = probe_received(&mut probe_buf) => {
                if let Ok((n, from)) = received {
                    endpoint.on_bytes(
                        &probe_buf[..n],
                        Peer { addr: from, reliable: false },
                        Instant::now(),
                        SystemTime::now(),
                    );
                }
            }
            event = events.recv() => {
                let Some(event) = event else {
                    break Err(std::io::Error::other("the TCP listener stopped"));
                };
                match event {
                    Event::Connected(addr, writer) => { connections.insert(addr, writer); }
                    Event::Closed(addr) => { connections.remove(&addr); }
                    Event::Frame(addr, bytes) => endpoint.on_bytes(
                        &bytes,
                        Peer { addr, reliable: true },
                        Instant::now(),
                        SystemTime::now(),
                    ),
                    Event::Broken(addr, why, reply) => {
                        endpoint.reject(Peer { addr, reliable: true }, &why, reply);
                    }
                }
            }
            Some(event) = next_task_event(&mut task_events) => {
                endpoint.on_task_event(event, Instant::now(), SystemTime::now());
            }
            Some(reply) = replies.recv() => {
                endpoint.on_leg_reply(reply, Instant::now(), SystemTime::now());
            }
            Some(to) = next_lifecycle(&mut lifecycle) => endpoint.set_lifecycle(to),
            _ = buddy_check.tick(), if peers.is_some() => {
                let now_buddy = peers.as_ref().and_then(|p| p.buddy());
                if now_buddy != buddy {
                    tracing::info!(from = ?buddy, to = ?now_buddy, "the buddy changed");
                    buddy = now_buddy;
                    endpoint.on_buddy_changed(Instant::now(), SystemTime::now());
                } else {
                    endpoint.retry_unconfirmed(Instant::now(), SystemTime::now());
                }
            }
            Some(snapshot) = next_directory(&mut directory) => {
                endpoint.on_directory(&snapshot, Instant::now(), SystemTime::now());
            }
            _ = report_tick.tick(), if reports.is_some() => {
                if let (Some(tx), Some(report)) = (&reports, endpoint.failover_report()) {
                    let report = Report::Failover(report);
                    tx.send_if_modified(|was| {
                        let changed = was.as_ref() != Some(&report);
                        if changed {
                            *was = Some(report);
                        }
                        changed
                    });
                }
            }
            () = sleep => endpoint.handle_timeout(Instant::now(), SystemTime::now()),
        }
        while let Some((from_task, out)) = endpoint.poll_task_event() {
            let for_buddy = matches!(out, Outbound::Buddy(_));
            let placed = match &peers {
                Some(p) => p.send(out, from_task),
                None => {
                    tracing::debug!(?out, "no other members to tell");
                    false
                }
            };
            if for_buddy && !placed {
                endpoint.on_no_buddy(from_task, Instant::now(), SystemTime::now());
            }
        }
        while let Some(request) = endpoint.poll_leg_request() {
            let Some(legs) = legs.clone() else {
                tracing::error!(?request, "call-leg work without call legs");
                continue;
            };
            let replies = replies_tx.clone();
            tokio::spawn(async move {
                if let Some(reply) = legs.run(request).await {
                    let _ = replies.send(reply);
                }
            });
        }
        if let Some(s) = &settled {
            s.send_if_modified(|was| {
                let now = endpoint.settled();
                std::mem::replace(was, now) != now
            });
        }
        while let Some((to, bytes)) = endpoint.poll_probe() {
            if let Err(e) = probe.as_ref().unwrap_or(&udp).send_to(&bytes, to).await {
                tracing::debug!(peer = %to, error = %e, "heartbeat send failed");
            }
        }
        while let Some((to, bytes)) = endpoint.poll_transmit() {
            if to.reliable {
                match connections.get(&to.addr) {
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
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(tcp: TcpListener, events: mpsc::Sender<Event>) {
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
                    // Give the reply a moment to be written before closing.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    break 'read;
                }
            }
        }
    }
    let _ = events.send(Event::Closed(addr)).await;
    write.abort();
}
