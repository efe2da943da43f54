//! The client against a scripted Directory server on loopback.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use voicecluster_api::grpc::directory_server::{Directory, DirectoryServer};
use voicecluster_api::grpc::{ReplicaAcks, ReportAcksReply};

use super::*;

/// One stream the client opened, driven by the test.
struct Session {
    request: WatchRequest,
    push: mpsc::Sender<Result<DirectorySnapshot, Status>>,
    acks: mpsc::Receiver<i64>,
    loads: mpsc::Receiver<Report>,
}

struct Scripted {
    sessions: mpsc::Sender<Session>,
}

type Snapshots = Pin<Box<dyn Stream<Item = Result<DirectorySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Directory for Scripted {
    type WatchStream = Snapshots;

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
    let (sessions, rx) = mpsc::channel(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DirectoryServer::new(Scripted { sessions }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rx)
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
