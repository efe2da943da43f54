//! The thin tokio driver around a SIP engine ([`SipCore`]): it owns the
//! sockets ([`sockets`]), the engine and its timers, feeds the engine what
//! arrives (datagrams, TCP frames, task events, leg replies, Directory
//! versions, lifecycle steps) with the time, and carries out what the
//! engine leaves in its queues (bytes, heartbeats, leg work, task events,
//! bills). One loop per role; nothing in it decides anything about SIP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::billing::BillWriter;
use crate::leg_providers::Legs;
use crate::legs::LegReply;
use crate::lifecycle::Lifecycle;
use crate::task_events::{Outbound, Peers};
use crate::transaction::Peer;
use crate::wire::MAX_MESSAGE;
use voicecluster_api::grpc::task_event::Kind;
use voicecluster_api::grpc::{ConfigResult, DirectorySnapshot, HandOver, TaskEvent};
use voicecluster_directory_client::Report;
use voicecluster_directory_client::config::Offered;

mod core;
mod sockets;

pub use core::{Member, SipCore};
pub use sockets::Listeners;
use sockets::{AbortOnDrop, Connections, Event, Received, accept_loop};

/// How often the member checks whether its buddy changed.
const BUDDY_CHECK: Duration = Duration::from_millis(500);
/// How often the failover report is looked at (and sent when it changed).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What the engine works with besides SIP.
#[derive(Default)]
pub struct Links {
    /// Where its calls' legs come from.
    pub legs: Option<Arc<Legs>>,
    /// The other members, for its outgoing task events.
    pub peers: Option<Arc<Peers>>,
    /// Task events for it, from the TaskEvents service.
    pub events: Option<mpsc::Receiver<TaskEvent>>,
    /// Where in its life it should be, and where it says whether it is
    /// settled (see [`Member::settled`]).
    pub lifecycle: Option<(watch::Receiver<Lifecycle>, watch::Sender<bool>)>,
    /// The Directory version in use.
    pub directory: Option<watch::Receiver<Option<Arc<DirectorySnapshot>>>>,
    /// Where its failover reports go (the Directory stream).
    pub reports: Option<watch::Sender<Option<Report>>>,
    /// Where the bills of its finished calls go.
    pub bills: Option<BillWriter>,
    /// Where the hand-over's outcome goes: whether the buddy confirmed it
    /// took every call (false: no buddy, or it did not take the event).
    pub handed_over: Option<watch::Sender<Option<bool>>>,
    /// The live configuration versions offered, and where the member says
    /// what it did with each.
    pub config: Option<ConfigLink>,
}

/// A member's live configuration: versions come in checked by the
/// Directory client; each is checked again whole here and swapped in
/// between two SIP messages, kept on the volume, and reported.
pub struct ConfigLink {
    /// The newest version offered.
    pub offered: watch::Receiver<Option<Arc<Offered>>>,
    /// What the member did with the last one.
    pub results: watch::Sender<Option<ConfigResult>>,
    /// Where the version applied last is kept.
    pub keep_at: Option<std::path::PathBuf>,
    /// What `/metrics` says of it.
    pub metrics: crate::live_config::ConfigMetrics,
    /// The process's log filter, which a version's log level swaps.
    pub log: voicecluster_telemetry::LogFilter,
    /// The version in force.
    pub in_force: crate::live_config::InForce,
}

/// What woke the loop.
enum Wake {
    Datagram(usize, SocketAddr),
    Probe(usize, SocketAddr),
    Connection(Event),
    TaskEvent(Box<TaskEvent>),
    LegReply(LegReply),
    Lifecycle(Lifecycle),
    BuddyCheck,
    Directory(Arc<DirectorySnapshot>),
    Config(Arc<Offered>),
    Report,
    Timer,
    ListenerStopped,
    Nothing,
}

/// Serves SIP until the future is dropped.
pub async fn serve(listeners: Listeners, core: impl SipCore, links: Links) -> std::io::Result<()> {
    Driver::new(listeners, core, links).run().await
}

/// The loop's state: the engine, its sockets and its links.
struct Driver<C> {
    core: C,
    udp: UdpSocket,
    probe: Option<UdpSocket>,
    connections: Connections,
    accepted: mpsc::Receiver<Event>,
    _accept: AbortOnDrop,
    buf: Vec<u8>,
    probe_buf: Vec<u8>,
    links: Links,
    lifecycle: Option<watch::Receiver<Lifecycle>>,
    settled: Option<watch::Sender<bool>>,
    offered: Option<watch::Receiver<Option<Arc<Offered>>>>,
    /// Leg work runs beside the loop, so a slow provider stalls only its call.
    replies_tx: mpsc::UnboundedSender<LegReply>,
    replies: mpsc::UnboundedReceiver<LegReply>,
    /// The buddy follows the member list; when it changes, every call is
    /// replicated to the new one.
    buddy: Option<String>,
    buddy_check: tokio::time::Interval,
    report_tick: tokio::time::Interval,
}

async fn changed<T: Clone>(rx: &mut Option<watch::Receiver<T>>) -> T {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => rx.borrow_and_update().clone(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn recv_from(
    socket: &Option<UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Tells the buddy to take every call now, and says when it confirmed.
fn hand_over(links: &Links, from_task: u64, event: HandOver) {
    let peers = links.peers.clone();
    let done = links.handed_over.clone();
    tokio::spawn(async move {
        let confirmed = match &peers {
            Some(p) => p.deliver_to_buddy(from_task, Kind::HandOver(event)).await,
            None => false,
        };
        if !confirmed {
            tracing::info!(
                "no buddy took the hand-over; the edges send the calls' requests to the live members"
            );
        }
        if let Some(done) = done {
            done.send_replace(Some(confirmed));
        }
    });
}

impl<C: SipCore> Driver<C> {
    fn new(listeners: Listeners, core: C, mut links: Links) -> Self {
        let Listeners { udp, tcp, probe } = listeners;
        let (events_tx, accepted) = mpsc::channel::<Event>(1024);
        let (replies_tx, replies) = mpsc::unbounded_channel::<LegReply>();
        let (lifecycle, settled) = links.lifecycle.take().unzip();
        let offered = links.config.as_ref().map(|c| c.offered.clone());
        let buddy = links.peers.as_ref().and_then(|p| p.buddy());
        Self {
            core,
            udp,
            probe,
            connections: Connections::default(),
            accepted,
            // The listener closes with the loop, even when it is dropped:
            // an edge handing its port over must leave the group at once.
            _accept: AbortOnDrop(tokio::spawn(accept_loop(tcp, events_tx))),
            buf: vec![0u8; MAX_MESSAGE + 1],
            probe_buf: vec![0u8; MAX_MESSAGE + 1],
            links,
            lifecycle,
            settled,
            offered,
            replies_tx,
            replies,
            buddy,
            buddy_check: tokio::time::interval(BUDDY_CHECK),
            report_tick: tokio::time::interval(REPORT_EVERY),
        }
    }

    async fn run(mut self) -> std::io::Result<()> {
        // The Directory version and lifecycle already in place when SIP
        // starts apply too.
        let first = self
            .links
            .directory
            .as_mut()
            .and_then(|d| d.borrow_and_update().clone());
        if let (Some(s), Some(m)) = (first, self.core.member()) {
            m.on_directory(&s, Instant::now(), SystemTime::now());
        }
        if let Some(rx) = self.lifecycle.as_mut() {
            let to = *rx.borrow_and_update();
            self.core.set_lifecycle(to);
        }
        // The version kept on the volume, or one already received.
        let kept = self
            .offered
            .as_mut()
            .and_then(|o| o.borrow_and_update().clone());
        if let Some(o) = kept {
            self.apply_config(&o, Instant::now(), SystemTime::now());
        }
        loop {
            match self.next().await {
                Wake::ListenerStopped => {
                    return Err(std::io::Error::other("the TCP listener stopped"));
                }
                wake => self.handle(wake, Instant::now(), SystemTime::now()),
            }
            self.flush().await;
        }
    }

    /// Waits for the next thing to do.
    async fn next(&mut self) -> Wake {
        let deadline = self.core.poll_timeout(Instant::now());
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let task_events = async {
            match self.links.events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let is_member = self.links.peers.is_some();
        tokio::select! {
            received = self.udp.recv_from(&mut self.buf) => match received {
                Ok((n, from)) => Wake::Datagram(n, from),
                // ICMP unreachable from an earlier send surfaces here on
                // some systems; it says nothing about this socket.
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive error");
                    Wake::Nothing
                }
            },
            received = recv_from(&self.probe, &mut self.probe_buf) => match received {
                Ok((n, from)) => Wake::Probe(n, from),
                Err(_) => Wake::Nothing,
            },
            event = self.accepted.recv() => event.map_or(Wake::ListenerStopped, Wake::Connection),
            Some(event) = task_events => Wake::TaskEvent(Box::new(event)),
            Some(reply) = self.replies.recv() => Wake::LegReply(reply),
            to = changed(&mut self.lifecycle) => Wake::Lifecycle(to),
            _ = self.buddy_check.tick(), if is_member => Wake::BuddyCheck,
            Some(snapshot) = changed(&mut self.links.directory) => Wake::Directory(snapshot),
            Some(offered) = changed(&mut self.offered) => Wake::Config(offered),
            _ = self.report_tick.tick(), if self.links.reports.is_some() => Wake::Report,
            () = sleep => Wake::Timer,
        }
    }

    fn handle(&mut self, wake: Wake, now: Instant, wall: SystemTime) {
        let datagram = |addr| Peer {
            addr,
            reliable: false,
        };
        match wake {
            Wake::Datagram(n, from) => {
                self.core
                    .on_bytes(&self.buf[..n], datagram(from), now, wall)
            }
            Wake::Probe(n, from) => {
                self.core
                    .on_bytes(&self.probe_buf[..n], datagram(from), now, wall)
            }
            Wake::Connection(event) => match self.connections.on_event(event) {
                Some((from, Received::Frame(frame))) => self.core.on_bytes(&frame, from, now, wall),
                Some((from, Received::Broken { why, reply })) => {
                    self.core.reject(from, &why, reply)
                }
                None => {}
            },
            Wake::Lifecycle(to) => self.core.set_lifecycle(to),
            Wake::Report => self.report(),
            Wake::Timer => self.core.handle_timeout(now, wall),
            Wake::TaskEvent(event) => {
                if let Some(m) = self.core.member() {
                    m.on_task_event(*event, now, wall);
                }
            }
            Wake::LegReply(reply) => {
                if let Some(m) = self.core.member() {
                    m.on_leg_reply(reply, now, wall);
                }
            }
            Wake::Directory(snapshot) => {
                if let Some(m) = self.core.member() {
                    m.on_directory(&snapshot, now, wall);
                }
            }
            Wake::Config(offered) => self.apply_config(&offered, now, wall),
            Wake::BuddyCheck => self.check_buddy(now, wall),
            Wake::ListenerStopped | Wake::Nothing => {}
        }
    }

    /// When the buddy changed, every call is replicated to the new one;
    /// otherwise what no buddy confirmed is sent again.
    fn check_buddy(&mut self, now: Instant, wall: SystemTime) {
        let buddy = self.links.peers.as_ref().and_then(|p| p.buddy());
        let Some(m) = self.core.member() else { return };
        if buddy != self.buddy {
            tracing::info!(from = ?self.buddy, to = ?buddy, "the buddy changed");
            self.buddy = buddy;
            m.on_buddy_changed(now, wall);
        } else {
            m.retry_unconfirmed(now, wall);
        }
    }

    /// Checks `offered` whole, swaps it in (users in the engine, rates in
    /// the bill writer) or keeps what is in use, and says which.
    fn apply_config(&mut self, offered: &Offered, now: Instant, wall: SystemTime) {
        let Some(link) = self.links.config.as_mut() else {
            return;
        };
        let started = Instant::now();
        let outcome = link.in_force.check(offered, &link.log).and_then(|checked| {
            let m = self
                .core
                .member()
                .ok_or_else(|| "not a member".to_string())?;
            // The one step that can fail goes first: if it does, nothing
            // of the version is in use.
            if let Some(filter) = checked.log_filter {
                link.log.set(filter).map_err(|e| e.to_string())?;
            }
            m.put_users(checked.users, now, wall);
            if let Some(bills) = self.links.bills.as_mut() {
                bills.set_rates(checked.effective, checked.rates);
            }
            Ok(())
        });
        link.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(()) => {
                link.in_force.applied(offered);
                link.metrics.applied_version.set(offered.version);
                tracing::info!(version = offered.version, users = offered.config.users.len(), took = ?started.elapsed(), "configuration applied");
                if let Some(path) = link.keep_at.clone() {
                    let kept = offered.clone();
                    // Off the loop: a large version takes a while to write.
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = crate::live_config::save(&path, &kept) {
                            tracing::warn!(path = %path.display(), error = %e, "cannot keep the configuration");
                        }
                    });
                }
            }
            Err(e) => {
                link.metrics.refused.inc();
                tracing::warn!(version = offered.version, error = %e, "configuration refused; the version in use stays");
            }
        }
        link.results.send_replace(Some(offered.result(&outcome)));
    }

    /// Sends the failover report when it changed.
    fn report(&self) {
        let Some(tx) = &self.links.reports else {
            return;
        };
        let report = Report::Failover(self.core.failover_report());
        tx.send_if_modified(|was| {
            let changed = was.as_ref() != Some(&report);
            if changed {
                *was = Some(report);
            }
            changed
        });
    }

    /// Carries out what the engine queued.
    async fn flush(&mut self) {
        self.member_work();
        while let Some((to, bytes)) = self.core.poll_probe() {
            let socket = self.probe.as_ref().unwrap_or(&self.udp);
            if let Err(e) = socket.send_to(&bytes, to).await {
                tracing::debug!(peer = %to, error = %e, "heartbeat send failed");
            }
        }
        while let Some((to, bytes)) = self.core.poll_transmit() {
            self.connections.transmit(&self.udp, to, bytes).await;
        }
    }

    /// A member's task events, leg work, settledness and bills.
    fn member_work(&mut self) {
        let Some(m) = self.core.member() else { return };
        let now = || (Instant::now(), SystemTime::now());
        // Bills first: a call's bill is on disk before its replica's drop
        // leaves for the buddy.
        let records = m.take_records();
        if let Some(bills) = self.links.bills.as_mut() {
            for record in &records {
                bills.record(record);
            }
        }
        while let Some((from_task, out)) = m.poll_task_event() {
            if let Outbound::Buddy(Kind::HandOver(h)) = out {
                hand_over(&self.links, from_task, h);
                continue;
            }
            let for_buddy = matches!(out, Outbound::Buddy(_));
            let placed = match &self.links.peers {
                Some(p) => p.send(out, from_task),
                None => {
                    tracing::debug!(?out, "no other members to tell");
                    false
                }
            };
            if for_buddy && !placed {
                let (now, wall) = now();
                m.on_no_buddy(from_task, now, wall);
            }
        }
        while let Some(request) = m.poll_leg_request() {
            let Some(legs) = self.links.legs.clone() else {
                tracing::error!(?request, "call-leg work without call legs");
                continue;
            };
            let replies = self.replies_tx.clone();
            tokio::spawn(async move {
                if let Some(reply) = legs.run(request).await {
                    let _ = replies.send(reply);
                }
            });
        }
        while let Some(member) = m.poll_sync_done() {
            if let Some(p) = &self.links.peers {
                p.sync_answered(&member);
            }
        }
        if let Some(s) = &self.settled {
            let settled = m.settled();
            s.send_if_modified(|was| std::mem::replace(was, settled) != settled);
        }
    }
}
