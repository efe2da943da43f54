//! What the driver needs of the SIP engine it runs. Every role's engine is
//! a [`SipCore`] (bytes, timers, lifecycle); a member's endpoint is also a
//! [`Member`] (call legs, task events, the Directory, bills), which the
//! driver reaches through [`SipCore::member`] so one loop serves both.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use voicecluster_api::grpc::{DirectorySnapshot, FailoverReport, TaskEvent};

use crate::calls::CallRecord;
use crate::digest::Users;
use crate::edge::Edge;
use crate::endpoint::Endpoint;
use crate::legs::{LegReply, LegRequest};
use crate::lifecycle::Lifecycle;
use crate::task_events::Outbound;
use crate::transaction::Peer;

/// A SIP engine the driver runs: the member's [`Endpoint`] or the [`Edge`].
pub trait SipCore: Send {
    /// Bytes arrived from `from`.
    fn on_bytes(&mut self, bytes: &[u8], from: Peer, now: Instant, wall: SystemTime);
    /// A stream broke on bad framing; `reply` answers the request that broke it.
    fn reject(&mut self, from: Peer, why: &str, reply: Option<Vec<u8>>);
    /// The next bytes to send.
    fn poll_transmit(&mut self) -> Option<(Peer, Vec<u8>)>;
    /// The next heartbeat to send from the probe socket.
    fn poll_probe(&mut self) -> Option<(SocketAddr, Vec<u8>)>;
    /// When [`Self::handle_timeout`] is due.
    fn poll_timeout(&mut self, now: Instant) -> Option<Instant>;
    /// Runs due timers.
    fn handle_timeout(&mut self, now: Instant, wall: SystemTime);
    /// Where the role should be in its life.
    fn set_lifecycle(&mut self, to: Lifecycle);
    /// What the operator should know of this engine's failover view.
    fn failover_report(&self) -> FailoverReport;
    /// The member side of the engine, when it is a member's.
    fn member(&mut self) -> Option<&mut dyn Member> {
        None
    }
}

/// What only a member's engine does.
pub trait Member {
    /// The next piece of work for the call legs.
    fn poll_leg_request(&mut self) -> Option<LegRequest>;
    /// What became of a [`LegRequest`].
    fn on_leg_reply(&mut self, reply: LegReply, now: Instant, wall: SystemTime);
    /// The next task event for another member, with the sending task.
    fn poll_task_event(&mut self) -> Option<(u64, Outbound)>;
    /// A task event from another member.
    fn on_task_event(&mut self, event: TaskEvent, now: Instant, wall: SystemTime);
    /// An event for the buddy found no buddy.
    fn on_no_buddy(&mut self, task: u64, now: Instant, wall: SystemTime);
    /// The buddy changed.
    fn on_buddy_changed(&mut self, now: Instant, wall: SystemTime);
    /// Time to replicate again what no buddy confirmed.
    fn retry_unconfirmed(&mut self, now: Instant, wall: SystemTime);
    /// True when handing over now loses nothing.
    fn settled(&self) -> bool;
    /// A new Directory version.
    fn on_directory(&mut self, snapshot: &DirectorySnapshot, now: Instant, wall: SystemTime);
    /// The calls finished since the last call, for billing.
    fn take_records(&mut self) -> Vec<CallRecord>;
    /// The next member whose answers to this member's sync all arrived.
    fn poll_sync_done(&mut self) -> Option<String>;
    /// The users from now on, user → HA1.
    fn put_users(&mut self, users: Users, now: Instant, wall: SystemTime);
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
    fn poll_probe(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        None
    }
    fn poll_timeout(&mut self, _now: Instant) -> Option<Instant> {
        Endpoint::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant, wall: SystemTime) {
        Endpoint::handle_timeout(self, now, wall);
    }
    fn set_lifecycle(&mut self, to: Lifecycle) {
        Endpoint::set_lifecycle(self, to);
    }
    fn failover_report(&self) -> FailoverReport {
        Endpoint::failover_report(self)
    }
    fn member(&mut self) -> Option<&mut dyn Member> {
        Some(self)
    }
}

impl Member for Endpoint {
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
    fn take_records(&mut self) -> Vec<CallRecord> {
        Endpoint::take_records(self)
    }
    fn poll_sync_done(&mut self) -> Option<String> {
        Endpoint::poll_sync_done(self)
    }
    fn put_users(&mut self, users: Users, now: Instant, wall: SystemTime) {
        Endpoint::put_users(self, users, now, wall);
    }
}

impl SipCore for Edge {
    fn on_bytes(&mut self, bytes: &[u8], from: Peer, now: Instant, _wall: SystemTime) {
        Edge::on_bytes(self, bytes, from, now);
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
    fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        Edge::poll_timeout(self, now)
    }
    fn handle_timeout(&mut self, now: Instant, _wall: SystemTime) {
        Edge::handle_timeout(self, now);
    }
    fn set_lifecycle(&mut self, to: Lifecycle) {
        Edge::set_draining(self, to != Lifecycle::Serving);
    }
    fn failover_report(&self) -> FailoverReport {
        Edge::failover_report(self)
    }
}
