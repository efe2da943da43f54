//! Leg events to the legs' owners: a PBX task on a signal member hears
//! that its leg went silent, over that member's gRPC `TaskEvents`.

use tonic::transport::Channel;
use voicecluster_api::grpc::task_event::Kind;
use voicecluster_api::grpc::task_events_client::TaskEventsClient;
use voicecluster_api::grpc::{LegEvent, TaskEvent, TaskHandle, leg_event};
use voicecluster_api::task_events_clients::{DELIVER_TIMEOUT, TaskEventsClients};

use crate::metrics::MediaMetrics;

/// Sends leg events to owners' members, one cached channel per member.
#[derive(Clone)]
pub struct Notifier {
    /// This pod's name in the events' sender handle.
    sender: String,
    clients: TaskEventsClients,
    metrics: MediaMetrics,
}

fn kind_name(kind: &leg_event::Kind) -> &'static str {
    match kind {
        leg_event::Kind::MediaTimeout(_) => "media_timeout",
        leg_event::Kind::Closed(_) => "closed",
        leg_event::Kind::Dtmf(_) => "dtmf",
        leg_event::Kind::Statistics(_) => "statistics",
    }
}

impl Notifier {
    /// A notifier sending as `sender` (this pod's CallLegs address).
    pub fn new(sender: String, metrics: MediaMetrics) -> Self {
        Self {
            sender,
            clients: TaskEventsClients::default(),
            metrics,
        }
    }

    fn client(&self, member: &str) -> Option<TaskEventsClient<Channel>> {
        self.clients.get(member).ok()
    }

    /// Tells `owner` about leg `leg`, in the background.
    pub fn send(&self, owner: TaskHandle, leg: u64, kind: leg_event::Kind) {
        let this = self.clone();
        tokio::spawn(async move { this.deliver(owner, leg, kind).await });
    }

    /// Tells `owner` about leg `leg`; returns once delivered or failed.
    pub async fn deliver(&self, owner: TaskHandle, leg: u64, kind: leg_event::Kind) {
        let name = kind_name(&kind);
        let Some(mut client) = self.client(&owner.member) else {
            tracing::warn!(member = %owner.member, "leg owner with a bad address");
            self.metrics.leg_event(name, "failed");
            return;
        };
        let event = TaskEvent {
            to: Some(owner),
            from: Some(TaskHandle {
                member: self.sender.clone(),
                task: leg,
            }),
            kind: Some(Kind::Leg(LegEvent {
                leg,
                kind: Some(kind),
            })),
        };
        match tokio::time::timeout(DELIVER_TIMEOUT, client.deliver(event)).await {
            Ok(Ok(_)) => self.metrics.leg_event(name, "sent"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, leg, kind = name, "leg event not delivered");
                self.metrics.leg_event(name, "failed");
            }
            Err(_) => {
                tracing::warn!(leg, kind = name, "leg event not delivered in time");
                self.metrics.leg_event(name, "failed");
            }
        }
    }
}
