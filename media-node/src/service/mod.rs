//! The gRPC `CallLegs` service over a [`MediaEngine`]: what media pods (and
//! `LocallyForOthers` signal members) offer to members that make their call
//! legs `Remotely`.
//!
//! Errors map to codes a client can act on: `RESOURCE_EXHAUSTED` (capacity
//! or ports) and `UNAVAILABLE` (draining) mean "try another provider";
//! `NOT_FOUND` and `INVALID_ARGUMENT` are the caller's own mistakes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use tonic::{Request, Response, Status};
use voicecluster_api::grpc::call_legs_server::{CallLegs, CallLegsServer};
use voicecluster_api::grpc::{
    AnswerLegRequest, BridgeReply, BridgeRequest, CreateLegRequest, DestroyLegRequest, DrainReply,
    DrainRequest, Leg, LegKind, LegStats, ListLegsReply, ListLegsRequest, TaskHandle,
    UpdateLegRequest,
};

use crate::engine::{EngineError, MediaEngine};
use crate::leg_events::Notifier;
use crate::relay::{self, LegId, RelayError};
use crate::webrtc_peer::PeerError;

mod events;

/// What the service remembers of each leg beyond the engine.
#[derive(Clone)]
struct Owned {
    owner: Option<TaskHandle>,
    kind: LegKind,
    address: SocketAddr,
    remote: Option<SocketAddr>,
    /// A WebRTC leg's last local SDP.
    sdp: String,
}

/// How a service's legs are timed: what a media pod applies live, from
/// `spec.media` (`mediaTimeoutSeconds`, `legStatsSeconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegTiming {
    /// Silence after which a leg's owner hears the leg timed out.
    pub media_timeout: Duration,
    /// How often owners get their legs' counters; None: never.
    pub statistics: Option<Duration>,
}

/// `CallLegs` on one engine.
#[derive(Clone)]
pub struct LegService {
    engine: MediaEngine,
    capacity: usize,
    legs: Arc<Mutex<HashMap<LegId, Owned>>>,
    draining: Arc<AtomicBool>,
    drain_requested: watch::Sender<bool>,
    /// Where leg events go, once reporting started.
    notifier: Option<Notifier>,
    /// How often owners get their legs' counters (the media timeout is
    /// the relay's).
    statistics: Arc<Mutex<Option<Duration>>>,
}

impl LegService {
    /// The service of `engine`, which accepts up to `capacity` legs.
    pub fn new(engine: MediaEngine, capacity: usize) -> Self {
        Self {
            engine,
            capacity,
            legs: Arc::default(),
            draining: Arc::default(),
            drain_requested: watch::channel(false).0,
            notifier: None,
            statistics: Arc::default(),
        }
    }

    /// Puts `timing` in force: the media timeout for every leg there is,
    /// and the statistics interval from the next report on.
    pub fn set_timing(&self, timing: LegTiming) {
        self.engine.set_media_timeout(timing.media_timeout);
        *self
            .statistics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = timing.statistics;
    }

    /// The timing in force.
    pub fn timing(&self) -> LegTiming {
        LegTiming {
            media_timeout: self.engine.media_timeout(),
            statistics: *self
                .statistics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    /// From now on no new legs are accepted; existing ones keep working.
    pub fn drain(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            tracing::info!(legs = self.active_legs(), "draining: no new call legs");
        }
        self.engine.metrics().draining.set(1);
        self.drain_requested.send_replace(true);
    }

    /// Returns once a drain was asked for (over gRPC or by [`Self::drain`]).
    pub async fn drain_requested(&self) {
        let mut rx = self.drain_requested.subscribe();
        let _ = rx.wait_for(|asked| *asked).await;
    }

    /// Leg events go out through `notifier`.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Waits until no leg is left or `timeout` passed, logging progress
    /// and telling `progress` the legs left whenever that changes (at most
    /// once a second); the legs left.
    pub async fn drained(&self, timeout: Duration, progress: impl Fn(usize)) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_log = tokio::time::Instant::now();
        let mut reported: Option<(usize, tokio::time::Instant)> = None;
        loop {
            let left = self.active_legs();
            let due =
                reported.is_none_or(|(n, at)| n != left && at.elapsed() >= Duration::from_secs(1));
            if due || left == 0 {
                progress(left);
                reported = Some((left, tokio::time::Instant::now()));
            }
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                tracing::info!(legs = left, "draining");
                last_log = tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The metrics its engine counts into.
    pub fn metrics(&self) -> &crate::metrics::MediaMetrics {
        self.engine.metrics()
    }

    /// Legs now.
    pub fn active_legs(&self) -> usize {
        self.table().len()
    }

    /// The service, ready to add to a tonic server.
    pub fn into_server(self) -> CallLegsServer<Self> {
        CallLegsServer::new(self)
    }

    fn table(&self) -> MutexGuard<'_, HashMap<LegId, Owned>> {
        self.legs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn leg(&self, id: LegId, o: &Owned) -> Leg {
        Leg {
            id: id.0,
            address: o.address.to_string(),
            owner: o.owner.clone(),
            remote_address: o.remote.map(|r| r.to_string()).unwrap_or_default(),
            stats: self.engine.stats(id).map(stats),
            kind: o.kind.into(),
            sdp: o.sdp.clone(),
        }
    }

    /// Remembers a new leg and counts it.
    fn insert(&self, id: LegId, owned: Owned) -> Leg {
        let leg = self.leg(id, &owned);
        let n = {
            let mut table = self.table();
            table.insert(id, owned);
            table.len()
        };
        self.count_legs(n);
        tracing::debug!(leg = id.0, address = %leg.address, kind = leg.kind, "call leg created");
        leg
    }

    /// `n` legs now, on `/metrics`.
    fn count_legs(&self, n: usize) {
        self.engine
            .metrics()
            .legs
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A leg as the table has it, after `change`.
    fn with_owned(
        &self,
        id: LegId,
        change: impl FnOnce(&mut Owned),
    ) -> Result<Response<Leg>, Status> {
        let mut table = self.table();
        let owned = table
            .get_mut(&id)
            .ok_or_else(|| Status::not_found(format!("no leg {}", id.0)))?;
        change(owned);
        let owned = owned.clone();
        drop(table);
        Ok(Response::new(self.leg(id, &owned)))
    }

    async fn create_webrtc(&self, req: CreateLegRequest) -> Result<Leg, Status> {
        let offer = (!req.remote_sdp.is_empty()).then_some(req.remote_sdp.as_str());
        let (id, address, sdp) = self.engine.create_webrtc_leg(offer).await.map_err(|e| {
            if matches!(e, EngineError::WebRtc(PeerError::Bind { .. })) {
                self.engine.metrics().refused("ports");
            }
            status(e)
        })?;
        Ok(self.insert(
            id,
            Owned {
                owner: req.owner,
                kind: LegKind::Webrtc,
                address,
                remote: None,
                sdp,
            },
        ))
    }
}

fn stats(s: relay::LegStats) -> LegStats {
    LegStats {
        packets_in: s.packets_in,
        bytes_in: s.bytes_in,
        packets_out: s.packets_out,
        bytes_out: s.bytes_out,
        rtcp_in: s.rtcp_in,
        dropped: s.dropped,
        fraction_lost: u32::from(s.reception.fraction_lost),
        packets_lost: s.reception.packets_lost,
        jitter: s.reception.jitter,
    }
}

fn status(e: EngineError) -> Status {
    match e {
        EngineError::Relay(RelayError::AtCapacity(_) | RelayError::Ports(_)) => {
            Status::resource_exhausted(e.to_string())
        }
        EngineError::Relay(RelayError::NoSuchLeg(_)) => Status::not_found(e.to_string()),
        EngineError::Relay(RelayError::BadBridge(..)) => Status::failed_precondition(e.to_string()),
        EngineError::Bind { .. } | EngineError::WebRtc(PeerError::Bind { .. }) => {
            Status::resource_exhausted(e.to_string())
        }
        EngineError::WebRtc(PeerError::RemoteSdp(_)) => Status::invalid_argument(e.to_string()),
        EngineError::WebRtc(PeerError::Stack(_)) => Status::internal(e.to_string()),
        EngineError::NotWebRtc(_) => Status::failed_precondition(e.to_string()),
    }
}

fn remote(text: &str) -> Result<Option<SocketAddr>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        Status::invalid_argument(format!("remote address {text:?}: expected host:port"))
    })
}

#[tonic::async_trait]
impl CallLegs for LegService {
    async fn create(&self, request: Request<CreateLegRequest>) -> Result<Response<Leg>, Status> {
        let req = request.into_inner();
        if self.draining.load(Ordering::SeqCst) {
            self.engine.metrics().refused("draining");
            return Err(Status::unavailable("draining: no new call legs"));
        }
        let kind = LegKind::try_from(req.kind)
            .map_err(|_| Status::invalid_argument(format!("leg kind {}", req.kind)))?;
        // The request is checked before capacity: a malformed one is the
        // caller's mistake wherever it goes.
        let remote = match kind {
            LegKind::Webrtc if !req.remote_address.is_empty() => {
                return Err(Status::invalid_argument(
                    "a WebRTC leg finds its endpoint by ICE: remote_address is for RTP legs",
                ));
            }
            LegKind::Webrtc => None,
            _ if !req.remote_sdp.is_empty() => {
                return Err(Status::invalid_argument(
                    "remote_sdp is for WebRTC legs; an RTP leg takes remote_address",
                ));
            }
            _ => remote(&req.remote_address)?,
        };
        if self.active_legs() >= self.capacity {
            self.engine.metrics().refused("capacity");
            return Err(Status::resource_exhausted(format!(
                "at capacity: {} legs",
                self.capacity
            )));
        }
        if kind == LegKind::Webrtc {
            return self.create_webrtc(req).await.map(Response::new);
        }
        let dtmf = match req.dtmf_payload_type {
            0 => None,
            pt @ 1..=127 => u8::try_from(pt).ok(),
            other => {
                return Err(Status::invalid_argument(format!(
                    "dtmf payload type {other}: expected 1-127"
                )));
            }
        };
        let (id, address) = self.engine.create_leg().map_err(|e| {
            self.engine.metrics().refused("ports");
            status(e)
        })?;
        if let Some(pt) = dtmf {
            self.engine.detect_dtmf(id, pt).map_err(status)?;
        }
        if let Some(r) = remote
            && let Err(e) = self.engine.set_remote(id, r)
        {
            let _ = self.engine.destroy(id).await;
            return Err(status(e));
        }
        let owned = Owned {
            owner: req.owner,
            kind: LegKind::Rtp,
            address,
            remote,
            sdp: String::new(),
        };
        Ok(Response::new(self.insert(id, owned)))
    }

    async fn answer(&self, request: Request<AnswerLegRequest>) -> Result<Response<Leg>, Status> {
        let req = request.into_inner();
        let id = LegId(req.id);
        self.engine
            .accept_answer(id, &req.sdp)
            .await
            .map_err(status)?;
        self.with_owned(id, |_| {})
    }

    async fn update(&self, request: Request<UpdateLegRequest>) -> Result<Response<Leg>, Status> {
        let req = request.into_inner();
        let id = LegId(req.id);
        if let Some(owner) = req.owner.clone() {
            // Another member took the call over: its events go there now.
            tracing::info!(leg = id.0, member = %owner.member, task = owner.task, "call leg has a new owner");
            let moved = self.with_owned(id, |o| o.owner = Some(owner))?;
            if req.remote_sdp.is_empty() && req.remote_address.is_empty() {
                return Ok(moved);
            }
        }
        if !req.remote_sdp.is_empty() {
            let sdp = self
                .engine
                .renegotiate(id, &req.remote_sdp)
                .await
                .map_err(status)?;
            return self.with_owned(id, |o| o.sdp = sdp);
        }
        let r = remote(&req.remote_address)?
            .ok_or_else(|| Status::invalid_argument("remote address missing"))?;
        if self
            .table()
            .get(&id)
            .is_some_and(|o| o.kind == LegKind::Webrtc)
        {
            return Err(Status::failed_precondition(
                "a WebRTC leg is updated with a new offer (remote_sdp)",
            ));
        }
        self.engine.set_remote(id, r).map_err(status)?;
        self.with_owned(id, |o| o.remote = Some(r))
    }

    async fn bridge(
        &self,
        request: Request<BridgeRequest>,
    ) -> Result<Response<BridgeReply>, Status> {
        let req = request.into_inner();
        self.engine
            .bridge(LegId(req.a), LegId(req.b))
            .map_err(status)?;
        Ok(Response::new(BridgeReply {}))
    }

    async fn destroy(
        &self,
        request: Request<DestroyLegRequest>,
    ) -> Result<Response<LegStats>, Status> {
        let id = LegId(request.into_inner().id);
        let final_stats = self.engine.destroy(id).await.map_err(status)?;
        let n = {
            let mut table = self.table();
            table.remove(&id);
            table.len()
        };
        self.count_legs(n);
        tracing::debug!(leg = id.0, "call leg destroyed");
        Ok(Response::new(stats(final_stats)))
    }

    async fn drain(&self, _request: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        self.drain();
        Ok(Response::new(DrainReply {
            active_legs: i32::try_from(self.active_legs()).unwrap_or(i32::MAX),
        }))
    }

    async fn list(
        &self,
        _request: Request<ListLegsRequest>,
    ) -> Result<Response<ListLegsReply>, Status> {
        let table = self.table().clone();
        let mut legs: Vec<Leg> = table.iter().map(|(id, o)| self.leg(*id, o)).collect();
        legs.sort_by_key(|l| l.id);
        Ok(Response::new(ListLegsReply {
            legs,
            capacity: i32::try_from(self.capacity).unwrap_or(i32::MAX),
            draining: self.draining.load(Ordering::SeqCst),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tonic::Code;

    use super::*;
    use crate::ports::PortPool;
    use crate::relay::Relay;

    fn service(capacity: usize) -> LegService {
        // Ports from a range no other test of this crate uses.
        let relay = Relay::new(
            PortPool::new(41000, 41019).unwrap(),
            capacity,
            Duration::from_secs(30),
        );
        let loopback = "127.0.0.1".parse().unwrap();
        LegService::new(MediaEngine::new(relay, loopback, loopback), capacity)
    }

    fn create(remote: &str) -> Request<CreateLegRequest> {
        Request::new(CreateLegRequest {
            owner: Some(TaskHandle {
                member: "10.0.0.1:9446".into(),
                task: 7,
            }),
            kind: LegKind::Rtp.into(),
            remote_address: remote.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn legs_are_made_bridged_listed_and_destroyed_with_clear_refusals() {
        let s = service(2);
        let a = s
            .create(create("127.0.0.1:4000"))
            .await
            .unwrap()
            .into_inner();
        let b = s.create(create("")).await.unwrap().into_inner();
        assert_ne!(a.address, b.address, "one port pair per leg");
        s.bridge(Request::new(BridgeRequest { a: a.id, b: b.id }))
            .await
            .unwrap();
        let over = s.create(create("")).await.unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over}");
        let bad = s.create(create("nowhere")).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad}");

        let listed = s.list(Request::new(ListLegsRequest {})).await.unwrap();
        let listed = listed.into_inner();
        assert_eq!(listed.legs.len(), 2);
        assert_eq!(listed.legs[0].owner.as_ref().unwrap().task, 7);
        assert_eq!(listed.legs[0].remote_address, "127.0.0.1:4000");

        for id in [a.id, b.id] {
            s.destroy(Request::new(DestroyLegRequest { id }))
                .await
                .unwrap();
        }
        let gone = s
            .destroy(Request::new(DestroyLegRequest { id: a.id }))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        assert_eq!(s.active_legs(), 0);

        s.drain();
        let draining = s.create(create("")).await.unwrap_err();
        assert_eq!(draining.code(), Code::Unavailable, "{draining}");
    }
}
