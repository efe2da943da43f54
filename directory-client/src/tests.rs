//! The client against a scripted Directory server on loopback.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use voicecluster_api::grpc::directory_server::{Directory, DirectoryServer};
use voicecluster_api::grpc::{
    ClusterConfig, ConfigSubscribe, ConfigUpdate, ConfigUser, ReplicaAcks, ReportAcksReply,
    config_update,
};

use super::*;

/// One stream the client opened, driven by the test.
struct Session {
    request: WatchRequest,
    push: mpsc::Sender<Result<DirectorySnapshot, Status>>,
    acks: mpsc::Receiver<i64>,
    loads: mpsc::Receiver<Report>,
    results: mpsc::Receiver<ConfigResult>,
}

/// One configuration stream the client opened.
struct ConfigSession {
    request: ConfigSubscribe,
    push: mpsc::Sender<Result<ConfigUpdate, Status>>,
}

struct Scripted {
    sessions: mpsc::Sender<Session>,
    configs: mpsc::Sender<ConfigSession>,
}

type Snapshots = Pin<Box<dyn Stream<Item = Result<DirectorySnapshot, Status>> + Send>>;
type Updates = Pin<Box<dyn Stream<Item = Result<ConfigUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Directory for Scripted {
    type WatchStream = Snapshots;
    type WatchConfigStream = Updates;

    async fn watch_config(
        &self,
        request: Request<ConfigSubscribe>,
    ) -> Result<Response<Updates>, Status> {
        let (push, push_rx) = mpsc::channel(4);
        let _ = self
            .configs
            .send(ConfigSession {
                request: request.into_inner(),
                push,
            })
            .await;
        Ok(Response::new(Box::pin(ReceiverStream::new(push_rx))))
    }

    async fn watch(
        &self,
        request: Request<Streaming<WatchMessage>>,
    ) -> Result<Response<Snapshots>, Status> {
        let mut inbound = request.into_inner();
        let Some(WatchMessage {
            kind: Some(watch_message::Kind::Subscribe(req)),
        }) = inbound.next().await.transpose()?
        else {
            return Err(Status::invalid_argument("subscribe first"));
        };
        let (push, push_rx) = mpsc::channel(4);
        let (ack_tx, acks) = mpsc::channel(16);
        let (load_tx, loads) = mpsc::channel(16);
        let (result_tx, results) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                match m.kind {
                    Some(watch_message::Kind::Ack(Ack { version })) => {
                        let _ = ack_tx.send(version).await;
                    }
                    Some(watch_message::Kind::Load(l)) => {
                        let _ = load_tx.send(Report::Load(l)).await;
                    }
                    Some(watch_message::Kind::Failover(f)) => {
                        let _ = load_tx.send(Report::Failover(f)).await;
                    }
                    Some(watch_message::Kind::Config(r)) => {
                        let _ = result_tx.send(r).await;
                    }
                    _ => {}
                }
            }
        });
        let _ = self
            .sessions
            .send(Session {
                request: req,
                push,
                acks,
                loads,
                results,
            })
            .await;
        Ok(Response::new(Box::pin(ReceiverStream::new(push_rx))))
    }

    async fn report_acks(
        &self,
        _: Request<ReplicaAcks>,
    ) -> Result<Response<ReportAcksReply>, Status> {
        Err(Status::unimplemented("not used by pods"))
    }
}

async fn scripted_server() -> (String, mpsc::Receiver<Session>) {
    let (url, sessions, _configs) = scripted_servers().await;
    (url, sessions)
}

async fn scripted_servers() -> (
    String,
    mpsc::Receiver<Session>,
    mpsc::Receiver<ConfigSession>,
) {
    let (sessions, rx) = mpsc::channel(4);
    let (configs, configs_rx) = mpsc::channel(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DirectoryServer::new(Scripted { sessions, configs }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rx, configs_rx)
}

fn snapshot(version: i64, providers: usize) -> DirectorySnapshot {
    DirectorySnapshot {
        version,
        providers: (0..providers)
            .map(|i| voicecluster_api::grpc::CallLegProvider {
                pod: format!("media-{i}"),
                ..Default::default()
            })
            .collect(),
        signal_members: vec![],
        failover: None,
    }
}

async fn recv<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("nothing arrived in 10 s")
        .expect("channel closed")
}

/// The next version the pod put in its view: (version, providers).
async fn applied(view: &mut watch::Receiver<Option<Arc<DirectorySnapshot>>>) -> (i64, usize) {
    tokio::time::timeout(Duration::from_secs(10), view.changed())
        .await
        .expect("nothing applied in 10 s")
        .unwrap();
    let s = view.borrow_and_update().clone().unwrap();
    (s.version, s.providers.len())
}

#[tokio::test]
async fn applies_and_acks_each_version_and_reacks_after_a_reconnect() {
    let (url, mut sessions) = scripted_server().await;
    let target = Target {
        url,
        namespace: "voice".into(),
        cluster: "demo".into(),
        pod: "demo-signal-0".into(),
        call_legs_port: 0,
    };
    let mut view = follow(target, ClientMetrics::default(), silent());

    let mut s1 = recv(&mut sessions).await;
    assert_eq!(
        (
            s1.request.namespace.as_str(),
            s1.request.cluster.as_str(),
            s1.request.pod.as_str()
        ),
        ("voice", "demo", "demo-signal-0")
    );
    s1.push.send(Ok(snapshot(1, 2))).await.unwrap();
    assert_eq!(applied(&mut view).await, (1, 2));
    assert_eq!(recv(&mut s1.acks).await, 1);
    s1.push.send(Ok(snapshot(2, 1))).await.unwrap();
    assert_eq!(applied(&mut view).await, (2, 1));
    assert_eq!(recv(&mut s1.acks).await, 2);
    assert_eq!(view.borrow().as_ref().map(|s| s.version), Some(2));

    // The replica goes away; the client comes back on its own and acks the
    // version it already runs without applying it again.
    drop(s1);
    let mut s2 = recv(&mut sessions).await;
    s2.push.send(Ok(snapshot(2, 1))).await.unwrap();
    assert_eq!(recv(&mut s2.acks).await, 2);
    assert!(!view.has_changed().unwrap(), "version 2 was applied twice");

    s2.push.send(Ok(snapshot(3, 0))).await.unwrap();
    assert_eq!(applied(&mut view).await, (3, 0));
    assert_eq!(recv(&mut s2.acks).await, 3);
}

#[tokio::test]
async fn an_error_from_the_server_reconnects_too() {
    let (url, mut sessions) = scripted_server().await;
    let target = Target {
        url,
        namespace: "voice".into(),
        cluster: "demo".into(),
        pod: "p".into(),
        call_legs_port: 0,
    };
    let _view = follow(target, ClientMetrics::default(), silent());
    let s1 = recv(&mut sessions).await;
    s1.push
        .send(Err(Status::not_found("the VoiceCluster was deleted")))
        .await
        .unwrap();
    let mut s2 = recv(&mut sessions).await;
    s2.push.send(Ok(snapshot(5, 0))).await.unwrap();
    assert_eq!(recv(&mut s2.acks).await, 5);
}

/// A pod with nothing to say of its load.
fn silent() -> Reports {
    watch::channel(None).1
}

#[tokio::test]
async fn reports_go_out_when_they_change_and_again_after_a_reconnect() {
    let (url, mut sessions) = scripted_server().await;
    let target = Target {
        url,
        namespace: "voice".into(),
        cluster: "demo".into(),
        pod: "demo-media-x".into(),
        call_legs_port: 0,
    };
    let (report, load) = watch::channel(None);
    let _view = follow(target, ClientMetrics::default(), load);
    let mut s1 = recv(&mut sessions).await;
    let draining = |active_legs| {
        Report::Load(Load {
            active_legs,
            draining: true,
        })
    };
    report.send_replace(Some(draining(4)));
    assert_eq!(recv(&mut s1.loads).await, draining(4));
    report.send_replace(Some(draining(1)));
    assert_eq!(recv(&mut s1.loads).await, draining(1));
    let failover = Report::Failover(FailoverReport {
        held: vec![voicecluster_api::grpc::MemberCalls {
            member: "10.0.0.7".into(),
            calls: 3,
        }],
        ..Default::default()
    });
    report.send_replace(Some(failover.clone()));
    assert_eq!(recv(&mut s1.loads).await, failover);
    drop(s1);
    let mut s2 = recv(&mut sessions).await;
    assert_eq!(recv(&mut s2.loads).await, failover, "told the new replica");
}

#[test]
fn the_flags_need_an_identity_only_with_a_url() {
    let none = DirectoryArgs::default();
    assert_eq!(none.target(), Ok(None));
    let mut args = DirectoryArgs {
        directory_url: Some("http://10.252.0.9:9443".into()),
        cluster: Some("demo".into()),
        pod_name: Some("demo-signal-0".into()),
        pod_namespace: None,
    };
    let err = args.target().unwrap_err();
    assert!(err.contains("POD_NAMESPACE"), "{err}");
    args.pod_namespace = Some("voice".into());
    assert_eq!(
        args.target().unwrap().map(|t| t.pod),
        Some("demo-signal-0".to_string())
    );
}

fn users(names: &[&str]) -> ClusterConfig {
    ClusterConfig {
        users: names
            .iter()
            .map(|n| ConfigUser {
                name: (*n).to_string(),
                ha1: format!("{n:0>32}"),
                display_name: String::new(),
            })
            .collect(),
        billing: None,
        settings: None,
    }
}

fn whole(version: i64, c: &ClusterConfig) -> ConfigUpdate {
    ConfigUpdate {
        version,
        hash: voicecluster_api::config::hash(c),
        body: Some(config_update::Body::Snapshot(
            voicecluster_api::config::compress(c),
        )),
        base_version: 0,
        effective_unix_ms: 0,
    }
}

async fn offered_version(view: &mut watch::Receiver<Option<Arc<config::Offered>>>) -> i64 {
    tokio::time::timeout(Duration::from_secs(10), view.changed())
        .await
        .expect("nothing offered in 10 s")
        .unwrap();
    view.borrow_and_update().as_ref().unwrap().version
}

#[tokio::test]
async fn the_configuration_comes_as_asked_and_a_delta_that_does_not_check_asks_for_the_whole() {
    let (url, mut sessions, mut configs) = scripted_servers().await;
    let target = Target {
        url,
        namespace: "voice".into(),
        cluster: "demo".into(),
        pod: "demo-signal-0".into(),
        call_legs_port: 0,
    };
    // The pod kept version 1 on its volume: it asks for what follows it.
    let kept = config::Offered {
        version: 1,
        hash: voicecluster_api::config::hash(&users(&["alice"])),
        effective_unix_ms: 0,
        config: Arc::new(users(&["alice"])),
        delta: None,
    };
    let mut view = config::follow_config(target.clone(), Some(kept.clone()));
    let c1 = recv(&mut configs).await;
    assert_eq!(
        (c1.request.version, c1.request.hash.as_str()),
        (1, kept.hash.as_str())
    );
    let two = users(&["alice", "bob"]);
    let delta = voicecluster_api::config::delta(&users(&["alice"]), &two);
    c1.push
        .send(Ok(ConfigUpdate {
            version: 2,
            hash: voicecluster_api::config::hash(&two),
            body: Some(config_update::Body::Delta(
                voicecluster_api::config::compress(&delta),
            )),
            base_version: 1,
            effective_unix_ms: 5,
        }))
        .await
        .unwrap();
    assert_eq!(offered_version(&mut view).await, 2);
    assert_eq!(*view.borrow().as_ref().unwrap().config, two);

    // A delta claiming a hash it does not rebuild to is never offered; the
    // client comes back for the whole version.
    c1.push
        .send(Ok(ConfigUpdate {
            version: 3,
            hash: "00".repeat(32),
            body: Some(config_update::Body::Delta(
                voicecluster_api::config::compress(&delta),
            )),
            base_version: 2,
            effective_unix_ms: 6,
        }))
        .await
        .unwrap();
    let c2 = recv(&mut configs).await;
    assert_eq!(
        c2.request.version, 0,
        "asks for the whole after a bad delta"
    );
    assert_eq!(view.borrow().as_ref().unwrap().version, 2);
    let three = users(&["bob"]);
    c2.push.send(Ok(whole(3, &three))).await.unwrap();
    assert_eq!(offered_version(&mut view).await, 3);

    // What the pod did with it goes up the Directory stream, and again
    // on a new stream.
    let (results_tx, results_rx) = watch::channel(None);
    let _dir = follow_with_config(target, ClientMetrics::default(), silent(), Some(results_rx));
    let mut s1 = recv(&mut sessions).await;
    let failed = ConfigResult {
        version: 3,
        hash: "h".into(),
        failed: true,
        reason: "bad rate".into(),
    };
    results_tx.send_replace(Some(failed.clone()));
    assert_eq!(recv(&mut s1.results).await, failed);
    drop(s1);
    let mut s2 = recv(&mut sessions).await;
    assert_eq!(recv(&mut s2.results).await, failed);
}
