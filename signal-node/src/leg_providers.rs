//! Where call legs are made. `Locally` and `LocallyForOthers` members make
//! them in this process (the same [`LegService`] the latter also serves over
//! gRPC); `Remotely` members ask a provider from the Directory over gRPC
//! `CallLegs`, least loaded first, and when one fails they try the next.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use voicecluster_api::grpc::call_legs_client::CallLegsClient;
use voicecluster_api::grpc::call_legs_server::CallLegs as _;
use voicecluster_api::grpc::{
    BridgeRequest, CreateLegRequest, DestroyLegRequest, DirectorySnapshot, LegKind, LegStats,
    TaskHandle, UpdateLegRequest,
};
use voicecluster_media_node::service::LegService;

use crate::legs::{Leg, LegReply, LegRequest, Media};

/// The Directory as a pod follows it.
pub type DirectoryView = watch::Receiver<Option<Arc<DirectorySnapshot>>>;

/// How long one `CallLegs` call may take before the provider counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a call whose every provider failed waits for the Directory to
/// name another; the caller has its 100 Trying and waits well beyond.
const DIRECTORY_WAIT: Duration = Duration::from_secs(2);

/// One provider to talk to.
#[derive(Clone)]
enum Provider {
    Local(LegService),
    Remote {
        address: String,
        client: CallLegsClient<Channel>,
        /// From the Directory: the address the provider's node is reached at.
        public_ip: Option<IpAddr>,
    },
}

impl Provider {
    fn name(&self) -> Option<String> {
        match self {
            Self::Local(_) => None,
            Self::Remote { address, .. } => Some(address.clone()),
        }
    }

    async fn create(&self, req: CreateLegRequest) -> Result<Leg, Status> {
        let leg = match self {
            Self::Local(s) => s.create(Request::new(req)).await?,
            Self::Remote { client, .. } => client.clone().create(req).await?,
        }
        .into_inner();
        let mut addr: SocketAddr = leg.address.parse().map_err(|_| {
            Status::internal(format!("provider gave leg address {:?}", leg.address))
        })?;
        if let Self::Remote {
            public_ip: Some(ip),
            ..
        } = self
        {
            addr.set_ip(*ip);
        }
        Ok(Leg { id: leg.id, addr })
    }

    async fn update(&self, req: UpdateLegRequest) -> Result<(), Status> {
        match self {
            Self::Local(s) => s.update(Request::new(req)).await.map(drop),
            Self::Remote { client, .. } => client.clone().update(req).await.map(drop),
        }
    }

    async fn bridge(&self, req: BridgeRequest) -> Result<(), Status> {
        match self {
            Self::Local(s) => s.bridge(Request::new(req)).await.map(drop),
            Self::Remote { client, .. } => client.clone().bridge(req).await.map(drop),
        }
    }

    async fn destroy(&self, id: u64) -> Result<LegStats, Status> {
        let req = DestroyLegRequest { id };
        Ok(match self {
            Self::Local(s) => s.destroy(Request::new(req)).await?,
            Self::Remote { client, .. } => client.clone().destroy(req).await?,
        }
        .into_inner())
    }

    /// Two bridged legs; nothing is left behind when it fails.
    async fn setup(
        &self,
        owner: TaskHandle,
        caller: SocketAddr,
        dtmf: Option<u8>,
    ) -> Result<Media, Status> {
        let create = |remote: Option<SocketAddr>| CreateLegRequest {
            owner: Some(owner.clone()),
            kind: LegKind::Rtp.into(),
            remote_address: remote.map(|r| r.to_string()).unwrap_or_default(),
            dtmf_payload_type: dtmf.map_or(0, u32::from),
            ..Default::default()
        };
        let a = self.create(create(Some(caller))).await?;
        let b = match self.create(create(None)).await {
            Ok(b) => b,
            Err(e) => {
                let _ = self.destroy(a.id).await;
                return Err(e);
            }
        };
        if let Err(e) = self.bridge(BridgeRequest { a: a.id, b: b.id }).await {
            let _ = self.destroy(a.id).await;
            let _ = self.destroy(b.id).await;
            return Err(e);
        }
        Ok(Media {
            provider: self.name(),
            a,
            b,
        })
    }
}

/// Where this member's call legs come from.
enum Source {
    Local(LegService),
    Remote {
        /// Providers named on the command line, after the Directory's.
        fixed: Vec<String>,
        directory: Option<DirectoryView>,
        clients: Mutex<HashMap<String, CallLegsClient<Channel>>>,
    },
}

/// Call legs for this member's calls.
pub struct Legs {
    source: Source,
    /// This member's TaskEvents address, for the legs' owner handles.
    member: String,
}

impl Legs {
    /// Legs in this process, from `service`.
    pub fn local(service: LegService, member: String) -> Self {
        Self {
            source: Source::Local(service),
            member,
        }
    }

    /// Legs from providers: the Directory's, then `fixed` (gRPC host:port).
    pub fn remote(fixed: Vec<String>, directory: Option<DirectoryView>, member: String) -> Self {
        Self {
            source: Source::Remote {
                fixed,
                directory,
                clients: Mutex::default(),
            },
            member,
        }
    }

    /// The providers to try, in order: `snapshot`'s, then the fixed ones.
    fn candidates(&self, snapshot: Option<&DirectorySnapshot>) -> Vec<Provider> {
        let (fixed, clients) = match &self.source {
            Source::Local(s) => return vec![Provider::Local(s.clone())],
            Source::Remote { fixed, clients, .. } => (fixed, clients),
        };
        let mut listed: Vec<(String, Option<IpAddr>)> = Vec::new();
        if let Some(snapshot) = snapshot {
            let mut providers = snapshot.providers.clone();
            // Least loaded first; the Directory never lists a draining pod.
            providers.sort_by(|x, y| {
                load(x.active_legs, x.capacity).total_cmp(&load(y.active_legs, y.capacity))
            });
            listed.extend(
                providers
                    .into_iter()
                    .map(|p| (p.grpc_address, p.public_address.parse().ok())),
            );
        }
        for f in fixed {
            if !listed.iter().any(|(a, _)| a == f) {
                listed.push((f.clone(), None));
            }
        }
        let mut clients = clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        listed
            .into_iter()
            .filter_map(|(address, public_ip)| {
                let client = match clients.get(&address) {
                    Some(c) => c.clone(),
                    None => {
                        let c = connect(&address)?;
                        clients.insert(address.clone(), c.clone());
                        c
                    }
                };
                Some(Provider::Remote {
                    address,
                    client,
                    public_ip,
                })
            })
            .collect()
    }

    fn provider(&self, media: &Media) -> Option<Provider> {
        match (&self.source, &media.provider) {
            (Source::Local(s), _) => Some(Provider::Local(s.clone())),
            (Source::Remote { clients, .. }, Some(address)) => {
                let mut clients = clients
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let client = match clients.get(address) {
                    Some(c) => c.clone(),
                    None => {
                        let c = connect(address)?;
                        clients.insert(address.clone(), c.clone());
                        c
                    }
                };
                Some(Provider::Remote {
                    address: address.clone(),
                    client,
                    public_ip: None,
                })
            }
            (Source::Remote { .. }, None) => None,
        }
    }

    /// Carries out `request`; the reply the endpoint waits for, if any.
    pub async fn run(&self, request: LegRequest) -> Option<LegReply> {
        match request {
            LegRequest::Setup { task, caller, dtmf } => {
                let owner = TaskHandle {
                    member: self.member.clone(),
                    task,
                };
                Some(LegReply::Ready {
                    task,
                    media: self.setup(owner, caller, dtmf).await,
                })
            }
            LegRequest::Update {
                media,
                side,
                remote,
            } => {
                let provider = self.provider(&media)?;
                let req = UpdateLegRequest {
                    id: media.leg(side).id,
                    remote_address: remote.to_string(),
                    ..Default::default()
                };
                if let Err(e) = timed(provider.update(req)).await {
                    tracing::warn!(error = %e, ?side, "cannot point a call leg");
                }
                None
            }
            LegRequest::Adopt { task, media } => {
                let provider = self.provider(&media)?;
                let owner = TaskHandle {
                    member: self.member.clone(),
                    task,
                };
                for leg in [media.a, media.b] {
                    let req = UpdateLegRequest {
                        id: leg.id,
                        owner: Some(owner.clone()),
                        ..Default::default()
                    };
                    if let Err(e) = timed(provider.update(req)).await {
                        tracing::warn!(error = %e, leg = leg.id, provider = ?media.provider, "cannot take over a call leg");
                    }
                }
                None
            }
            LegRequest::Release { media } => {
                let provider = self.provider(&media)?;
                let (b, a) = tokio::join!(
                    timed(provider.destroy(media.b.id)),
                    timed(provider.destroy(media.a.id))
                );
                for r in [&a, &b] {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, provider = ?media.provider, "releasing a call leg");
                    }
                }
                Some(LegReply::Released {
                    to_callee: b.map_or(0, |s| s.packets_out),
                    to_caller: a.map_or(0, |s| s.packets_out),
                })
            }
        }
    }

    async fn setup(
        &self,
        owner: TaskHandle,
        caller: SocketAddr,
        dtmf: Option<u8>,
    ) -> Result<Media, String> {
        let mut directory = match &self.source {
            Source::Remote {
                directory: Some(d), ..
            } => Some(d.clone()),
            _ => None,
        };
        let snapshot = directory
            .as_mut()
            .and_then(|d| d.borrow_and_update().clone());
        let first = self
            .try_each(&owner, caller, dtmf, snapshot.as_deref())
            .await;
        let Err(failures) = first else {
            return first;
        };
        // Every provider this member knew refused or failed. In a rollout
        // that is the moment the old provider drains while the Directory
        // is still bringing its successor: wait for that news, once.
        let Some(mut directory) = directory else {
            return Err(failures);
        };
        if !matches!(
            tokio::time::timeout(DIRECTORY_WAIT, directory.changed()).await,
            Ok(Ok(()))
        ) {
            return Err(failures);
        }
        let snapshot = directory.borrow_and_update().clone();
        tracing::info!("the Directory changed after every provider failed; trying again");
        self.try_each(&owner, caller, dtmf, snapshot.as_deref())
            .await
            .map_err(|again| format!("{failures}; then {again}"))
    }

    /// Tries each provider of `snapshot` (and the fixed ones) in turn.
    async fn try_each(
        &self,
        owner: &TaskHandle,
        caller: SocketAddr,
        dtmf: Option<u8>,
        snapshot: Option<&DirectorySnapshot>,
    ) -> Result<Media, String> {
        let candidates = self.candidates(snapshot);
        if candidates.is_empty() {
            return Err("no call-leg provider is known".to_string());
        }
        let mut failures = Vec::new();
        for p in candidates {
            match timed(p.setup(owner.clone(), caller, dtmf)).await {
                Ok(media) => return Ok(media),
                Err(e) => {
                    let name = p.name().unwrap_or_else(|| "this process".to_string());
                    tracing::warn!(provider = %name, error = %e, "call-leg provider failed; trying the next");
                    failures.push(format!("{name}: {}", e.message()));
                }
            }
        }
        Err(failures.join("; "))
    }
}

fn load(active: i32, capacity: i32) -> f64 {
    f64::from(active) / f64::from(capacity.max(1))
}

fn connect(address: &str) -> Option<CallLegsClient<Channel>> {
    match Endpoint::from_shared(format!("http://{address}")) {
        Ok(e) => Some(CallLegsClient::new(
            e.connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .connect_lazy(),
        )),
        Err(e) => {
            tracing::warn!(%address, error = %e, "bad call-leg provider address");
            None
        }
    }
}

async fn timed<T>(f: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("call-leg provider too slow")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use voicecluster_api::grpc::CallLegProvider;

    use super::*;

    fn provider(pod: &str, active: i32, capacity: i32) -> CallLegProvider {
        CallLegProvider {
            pod: pod.to_string(),
            node: "n".to_string(),
            public_address: "203.0.113.10".to_string(),
            grpc_address: format!("{pod}.test:9445"),
            capacity,
            active_legs: active,
        }
    }

    fn names(candidates: &[Provider]) -> Vec<String> {
        candidates.iter().filter_map(Provider::name).collect()
    }

    #[tokio::test]
    async fn remote_providers_are_tried_least_loaded_first_then_the_fixed_ones() {
        let snapshot = DirectorySnapshot {
            version: 3,
            providers: vec![
                provider("busy", 90, 100),
                provider("idle", 1, 100),
                provider("half", 500, 1000),
            ],
            signal_members: Vec::new(),
            failover: None,
        };
        let (_tx, view) = watch::channel(Some(Arc::new(snapshot)));
        let legs = Legs::remote(
            vec!["fixed.test:9445".to_string(), "idle.test:9445".to_string()],
            Some(view),
            "10.0.0.1:9446".to_string(),
        );
        let candidates = legs.candidates(view_now(&legs).as_deref());
        assert_eq!(
            names(&candidates),
            [
                "idle.test:9445",
                "half.test:9445",
                "busy.test:9445",
                "fixed.test:9445"
            ]
        );
        // Legs are put in SDP at the provider node's public address.
        let Provider::Remote { public_ip, .. } = &candidates[0] else {
            panic!("a remote provider")
        };
        assert_eq!(*public_ip, Some("203.0.113.10".parse().unwrap()));
    }

    #[tokio::test]
    async fn without_any_provider_a_setup_fails_with_a_reason() {
        let legs = Legs::remote(Vec::new(), None, "10.0.0.1:9446".to_string());
        let reply = legs
            .run(LegRequest::Setup {
                task: 1,
                caller: "10.0.0.2:4000".parse().unwrap(),
                dtmf: None,
            })
            .await;
        let Some(LegReply::Ready { task: 1, media }) = reply else {
            panic!("a Ready reply")
        };
        assert_eq!(media.unwrap_err(), "no call-leg provider is known");
    }
    fn view_now(legs: &Legs) -> Option<Arc<DirectorySnapshot>> {
        match &legs.source {
            Source::Remote {
                directory: Some(d), ..
            } => d.borrow().clone(),
            _ => None,
        }
    }

    /// A CallLegs server on loopback (its port from the kernel), as the
    /// Directory lists it.
    async fn serve(ports: (u16, u16), draining: bool) -> (CallLegProvider, LegService) {
        use voicecluster_media_node::{engine::MediaEngine, ports::PortPool, relay::Relay};
        let relay = Relay::new(
            PortPool::new(ports.0, ports.1).unwrap(),
            4,
            Duration::from_secs(30),
        );
        let loopback = "127.0.0.1".parse().unwrap();
        let service = LegService::new(MediaEngine::new(relay, loopback, loopback), 4);
        if draining {
            service.drain();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(service.clone().into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        let mut p = provider(&format!("legs-{}", addr.port()), 0, 4);
        p.grpc_address = addr.to_string();
        p.public_address = "127.0.0.1".to_string();
        (p, service)
    }

    fn listing(version: i64, providers: Vec<CallLegProvider>) -> Option<Arc<DirectorySnapshot>> {
        Some(Arc::new(DirectorySnapshot {
            version,
            providers,
            signal_members: Vec::new(),
            failover: None,
        }))
    }

    async fn setup(legs: &Legs) -> Result<Media, String> {
        let reply = legs
            .run(LegRequest::Setup {
                task: 1,
                caller: "127.0.0.1:4000".parse().unwrap(),
                dtmf: None,
            })
            .await;
        let Some(LegReply::Ready { task: 1, media }) = reply else {
            panic!("a Ready reply")
        };
        media
    }

    #[tokio::test]
    async fn a_call_whose_only_provider_drains_gets_legs_from_the_successor_the_directory_brings() {
        // Ports no other test of this crate uses.
        let (old, _old_service) = serve((41100, 41103), true).await;
        let (new, new_service) = serve((41104, 41107), false).await;
        let (tx, view) = watch::channel(listing(1, vec![old.clone()]));
        let legs = Legs::remote(Vec::new(), Some(view), "127.0.0.1:9446".to_string());
        let successor = new.grpc_address.clone();
        let directory = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.send_replace(listing(2, vec![new]));
            tx
        });
        let media = setup(&legs).await.unwrap();
        assert_eq!(media.provider.as_deref(), Some(successor.as_str()));
        assert_eq!(new_service.active_legs(), 2);
        let tx = directory.await.unwrap();

        // With no news from the Directory, the call is refused after the
        // wait, with the provider's reason.
        tx.send_replace(listing(3, vec![old]));
        let refused = setup(&legs).await.unwrap_err();
        assert!(refused.contains("drain"), "{refused}");
    }
}
