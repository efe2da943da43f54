//! Task events between members: the gRPC `TaskEvents` service this member
//! serves, the client that delivers its events to the others, and the
//! conversions of what they carry.
//!
//! Today's traffic is the registrar's (task 0 on every member): after a
//! REGISTER a member sends the user's bindings to every other member, and a
//! member that starts (or sees a member come back) asks each peer for all
//! it knows with a `SyncRegistrations`, answered to the asker's handle. So
//! a user registered through one member can be called from a call on any.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use voicecluster_api::TASK_EVENTS_PORT;
use voicecluster_api::grpc::task_event::Kind;
use voicecluster_api::grpc::task_events_client::TaskEventsClient;
use voicecluster_api::grpc::task_events_server::{TaskEvents, TaskEventsServer};
use voicecluster_api::grpc::{self, DeliverReply, TaskEvent, TaskHandle};
use voicecluster_api::task_events_clients::{DELIVER_TIMEOUT, TaskEventsClients};

use crate::leg_providers::DirectoryView;
use crate::registrar::Binding;
use crate::transaction::Peer;

/// Every member's registrar has this task id.
pub const REGISTRAR_TASK: u64 = 0;

/// How often members not yet in sync are asked for their registrations.
const SYNC_EVERY: Duration = Duration::from_secs(2);
/// How often a starting member asks the members that did not answer yet.
const SYNC_RETRY_STARTING: Duration = Duration::from_millis(200);
/// How long a member's answer to a first sync may take before it is asked
/// again.
const SYNC_ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// An event this member's endpoint wants sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Outbound {
    /// To the registrar of every other member.
    Broadcast(Kind),
    /// To one task.
    To(TaskHandle, Kind),
    /// To the registrar of this member's buddy (see [`crate::rendezvous::buddy`]).
    Buddy(Kind),
    /// To one task, one after the other in this order, each from its own
    /// task of this member: the answers to a sync, whose last event tells
    /// the asker that everything before it arrived.
    InOrder(TaskHandle, Vec<(u64, Kind)>),
}

/// The metric label of an event's kind.
pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Registrations(_) => "registrations",
        Kind::Sync(_) => "sync",
        Kind::Leg(_) => "leg",
        Kind::CallReplica(_) => "call_replica",
        Kind::CallDropped(_) => "call_dropped",
        Kind::TakenOver(_) => "taken_over",
        Kind::ReplicaStored(_) => "replica_stored",
        Kind::HandOver(_) => "hand_over",
        Kind::SyncDone(_) => "sync_done",
    }
}

/// A binding as it travels.
pub fn binding_to_proto(b: &Binding) -> grpc::Binding {
    grpc::Binding {
        contact: b.contact.clone(),
        source: b.source.addr.to_string(),
        reliable: b.source.reliable,
        path: b.path.clone(),
        expires_unix_ms: b
            .expires_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        call_id: b.call_id.clone(),
        cseq: b.cseq,
    }
}

/// A binding from another member; `None` when it does not make sense.
pub fn binding_from_proto(b: &grpc::Binding) -> Option<Binding> {
    let addr: SocketAddr = b.source.parse().ok()?;
    let ms = u64::try_from(b.expires_unix_ms).ok()?;
    Some(Binding {
        contact: b.contact.clone(),
        expires_at: UNIX_EPOCH + Duration::from_millis(ms),
        call_id: b.call_id.clone(),
        cseq: b.cseq,
        source: Peer {
            addr,
            reliable: b.reliable,
        },
        path: b.path.clone(),
    })
}

use voicecluster_telemetry::metrics::Labels;

/// Task event metrics of a member.
#[derive(Clone, Default)]
pub struct EventMetrics {
    events: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
}

impl EventMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "voicecluster_task_events",
            "Task events that crossed to or from another member, by direction and kind",
            m.events.clone(),
        );
        registry.register(
            "voicecluster_task_event_failures",
            "Task events that could not be delivered to another member, by kind",
            m.failures.clone(),
        );
        m
    }

    fn count(&self, direction: &str, kind: &str) {
        self.events
            .get_or_create(&vec![
                ("direction".to_string(), direction.to_string()),
                ("kind".to_string(), kind.to_string()),
            ])
            .inc();
    }

    fn failed(&self, kind: &str) {
        self.failures
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }
}

/// The `TaskEvents` service: hands events for this member's tasks to its
/// SIP loop.
pub struct TaskEventsService {
    member: String,
    to_loop: mpsc::Sender<TaskEvent>,
    metrics: EventMetrics,
}

impl TaskEventsService {
    /// The service of member `member`, delivering into `to_loop`.
    pub fn new(member: String, to_loop: mpsc::Sender<TaskEvent>, metrics: EventMetrics) -> Self {
        Self {
            member,
            to_loop,
            metrics,
        }
    }

    /// Ready to add to a tonic server.
    pub fn into_server(self) -> TaskEventsServer<Self> {
        TaskEventsServer::new(self)
    }
}

#[tonic::async_trait]
impl TaskEvents for TaskEventsService {
    async fn deliver(&self, request: Request<TaskEvent>) -> Result<Response<DeliverReply>, Status> {
        let event = request.into_inner();
        let Some(to) = &event.to else {
            return Err(Status::invalid_argument("event without a destination"));
        };
        if to.member != self.member {
            return Err(Status::not_found(format!(
                "member {} is not {}",
                self.member, to.member
            )));
        }
        let Some(kind) = &event.kind else {
            return Err(Status::invalid_argument("event without a kind"));
        };
        if event.from.is_none() {
            return Err(Status::invalid_argument("event without a sender"));
        }
        self.metrics.count("received", kind_name(kind));
        self.to_loop
            .send(event)
            .await
            .map_err(|_| Status::unavailable("member stopping"))?;
        Ok(Response::new(DeliverReply {}))
    }
}

/// The other members, and how to reach them.
pub struct Peers {
    member: String,
    /// The SIP port every member serves on: with a member's IP, its
    /// identity at the edges.
    sip_port: Option<u16>,
    fixed: Vec<String>,
    directory: Option<DirectoryView>,
    clients: TaskEventsClients,
    /// Members asked for their registrations (and replicas), and when.
    synced: Mutex<HashMap<String, Instant>>,
    /// Members whose answers all arrived (their SyncDone came).
    answered: Mutex<HashSet<String>>,
    /// Wakes the first sync when an answer is complete.
    answers: tokio::sync::Notify,
    metrics: EventMetrics,
}

impl Peers {
    /// Member `member`'s view of the others: the Directory's signal members
    /// and `fixed` (TaskEvents host:port).
    pub fn new(
        member: String,
        fixed: Vec<String>,
        directory: Option<DirectoryView>,
        metrics: EventMetrics,
    ) -> Self {
        Self {
            member,
            sip_port: None,
            fixed,
            directory,
            clients: TaskEventsClients::default(),
            synced: Mutex::default(),
            answered: Mutex::default(),
            answers: tokio::sync::Notify::new(),
            metrics,
        }
    }

    /// Members serve SIP on `port` (their buddies are found by it).
    pub fn with_sip_port(mut self, port: u16) -> Self {
        self.sip_port = Some(port);
        self
    }

    /// This member's buddy: the one the edges send its calls' dialogs to
    /// when it goes down, by the same rendezvous over the members' SIP
    /// addresses.
    pub fn buddy(&self) -> Option<String> {
        let port = self.sip_port?;
        let sip = |member: &str| -> Option<SocketAddr> {
            let addr: SocketAddr = member.parse().ok()?;
            Some(SocketAddr::new(addr.ip(), port))
        };
        let me = sip(&self.member)?;
        let others = self.current();
        let sips: Vec<SocketAddr> = others.iter().filter_map(|m| sip(m)).collect();
        let chosen = crate::rendezvous::buddy(me, &sips)?;
        others.into_iter().find(|m| sip(m) == Some(chosen))
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The other members now.
    pub fn current(&self) -> Vec<String> {
        let mut members: Vec<String> = self.fixed.clone();
        if let Some(snapshot) = self.directory.as_ref().and_then(|d| d.borrow().clone()) {
            members.extend(
                snapshot
                    .signal_members
                    .iter()
                    .filter(|m| m.ready && !m.address.is_empty())
                    .map(|m| format!("{}:{TASK_EVENTS_PORT}", m.address)),
            );
        }
        members.sort();
        members.dedup();
        members.retain(|m| *m != self.member);
        members
    }

    fn client(&self, member: &str) -> Result<TaskEventsClient<Channel>, Status> {
        self.clients
            .get(member)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// Delivers `kind` to task `to`, from `from_task` of this member.
    pub async fn deliver(&self, to: TaskHandle, from_task: u64, kind: Kind) -> Result<(), Status> {
        let name = kind_name(&kind);
        let member = to.member.clone();
        let event = TaskEvent {
            to: Some(to),
            from: Some(TaskHandle {
                member: self.member.clone(),
                task: from_task,
            }),
            kind: Some(kind),
        };
        let sent = match self.client(&member) {
            Ok(mut c) => tokio::time::timeout(DELIVER_TIMEOUT, c.deliver(event))
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("member too slow")))
                .map(drop),
            Err(e) => Err(e),
        };
        match &sent {
            Ok(()) => self.metrics.count("sent", name),
            Err(e) => {
                self.metrics.failed(name);
                // It will be asked again for its registrations once it answers.
                Self::lock(&self.synced).remove(&member);
                tracing::debug!(%member, error = %e, kind = name, "task event not delivered");
            }
        }
        sent
    }

    /// Delivers `kind` to the registrar of this member's buddy and waits
    /// for it to take it; false when there is no buddy or it did not.
    pub async fn deliver_to_buddy(&self, from_task: u64, kind: Kind) -> bool {
        let Some(member) = self.buddy() else {
            return false;
        };
        let to = TaskHandle {
            member,
            task: REGISTRAR_TASK,
        };
        self.deliver(to, from_task, kind).await.is_ok()
    }

    /// Sends what the endpoint wants sent, in the background; false when
    /// there was nowhere to send it (no buddy).
    pub fn send(self: &Arc<Self>, out: Outbound, from_task: u64) -> bool {
        let mut in_order = None;
        let targets: Vec<(TaskHandle, Kind)> = match out {
            Outbound::To(to, kind) => vec![(to, kind)],
            Outbound::InOrder(to, events) => {
                in_order = Some((to, events));
                Vec::new()
            }
            Outbound::Buddy(kind) => match self.buddy() {
                Some(member) => vec![(
                    TaskHandle {
                        member,
                        task: REGISTRAR_TASK,
                    },
                    kind,
                )],
                None => {
                    tracing::info!(kind = kind_name(&kind), members = ?self.current(), "no buddy to replicate to");
                    Vec::new()
                }
            },
            Outbound::Broadcast(kind) => self
                .current()
                .into_iter()
                .map(|member| {
                    (
                        TaskHandle {
                            member,
                            task: REGISTRAR_TASK,
                        },
                        kind.clone(),
                    )
                })
                .collect(),
        };
        let placed = !targets.is_empty();
        if let Some((to, events)) = in_order {
            let peers = Arc::clone(self);
            tokio::spawn(async move {
                for (from_task, kind) in events {
                    // Each waits for the one before: the asker applies them
                    // in this order, and a broken link stops the rest.
                    if peers.deliver(to.clone(), from_task, kind).await.is_err() {
                        break;
                    }
                }
            });
            return true;
        }
        for (to, kind) in targets {
            let peers = Arc::clone(self);
            tokio::spawn(async move {
                let _ = peers.deliver(to, from_task, kind).await;
            });
        }
        placed
    }

    /// Every member known now was asked and answered in full.
    fn all_answered(&self) -> bool {
        let asked = Self::lock(&self.synced);
        let answered = Self::lock(&self.answered);
        self.current()
            .iter()
            .all(|m| asked.contains_key(m) && answered.contains(m))
    }

    /// A member asked a while ago whose answer never ended (it broke on
    /// the way, or came before this member listened) is asked again.
    fn ask_again_the_silent(&self) {
        let answered = Self::lock(&self.answered);
        Self::lock(&self.synced)
            .retain(|m, asked| answered.contains(m) || asked.elapsed() < SYNC_ANSWER_LIMIT);
    }

    /// Member `member` delivered every answer to this member's sync (its
    /// SyncDone reached the endpoint, after the answers before it).
    pub fn sync_answered(&self, member: &str) {
        Self::lock(&self.answered).insert(member.to_string());
        self.answers.notify_one();
    }

    /// Asks each member not yet in sync for its registrations, now and
    /// whenever one appears or comes back; runs until dropped. `synced`
    /// hears once every member known then was asked (after the Directory's
    /// first version, when there is a Directory) and answered in full.
    pub async fn keep_synced(self: Arc<Self>, synced: tokio::sync::oneshot::Sender<()>) {
        let mut synced = Some(synced);
        if let Some(d) = &self.directory {
            let mut d = d.clone();
            // Without the first version the other members are not known.
            let _ = d.wait_for(Option::is_some).await;
        }
        loop {
            let due: Vec<String> = {
                let synced = Self::lock(&self.synced);
                self.current()
                    .into_iter()
                    .filter(|m| !synced.contains_key(m))
                    .collect()
            };
            for member in due {
                let to = TaskHandle {
                    member: member.clone(),
                    task: REGISTRAR_TASK,
                };
                let asked = self
                    .deliver(to, REGISTRAR_TASK, Kind::Sync(grpc::SyncRegistrations {}))
                    .await;
                if asked.is_ok() {
                    Self::lock(&self.synced).insert(member, Instant::now());
                }
            }
            if synced.is_some() {
                self.ask_again_the_silent();
            }
            if self.all_answered()
                && let Some(tell) = synced.take()
            {
                let _ = tell.send(());
            }
            // A starting member asks again soon: it serves nobody until then.
            let pause = if synced.is_some() {
                SYNC_RETRY_STARTING
            } else {
                SYNC_EVERY
            };
            // An answer completing wakes it at once.
            let _ = tokio::time::timeout(pause, self.answers.notified()).await;
        }
    }
}

/// Registrations of `user` as an event.
pub fn registrations(user: &str, bindings: &[Binding]) -> Kind {
    Kind::Registrations(grpc::Registrations {
        user: user.to_string(),
        bindings: bindings.iter().map(binding_to_proto).collect(),
    })
}
