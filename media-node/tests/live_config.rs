//! The media-node binary following its live configuration from a Directory
//! on loopback: a version's media timeout and statistics interval hold for
//! the legs at once, its log filter is swapped in, a version it cannot use
//! is refused whole with the reason, and each version's outcome goes back
//! on the Directory stream.

// Test set-up: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use voicecluster_api::config::{compress, delta, hash};
use voicecluster_api::grpc::call_legs_client::CallLegsClient;
use voicecluster_api::grpc::directory_server::{Directory, DirectoryServer};
use voicecluster_api::grpc::task_events_server::{TaskEvents, TaskEventsServer};
use voicecluster_api::grpc::{
    ClusterConfig, ConfigResult, ConfigSubscribe, ConfigUpdate, DeliverReply, DirectorySnapshot,
    LiveSettings, ReplicaAcks, ReportAcksReply, TaskEvent, TaskHandle, WatchMessage, config_update,
    leg_event, task_event, watch_message,
};

mod common;

use common::*;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The operator's Directory, as far as one media pod needs: one directory
/// version, the configuration update the test holds in `updates` (sent to
/// each configuration stream when it opens and whenever it changes), and
/// the pod's results into `results`.
struct FakeDirectory {
    updates: watch::Receiver<Option<ConfigUpdate>>,
    results: mpsc::UnboundedSender<ConfigResult>,
}

#[tonic::async_trait]
impl Directory for FakeDirectory {
    type WatchStream = Boxed<DirectorySnapshot>;
    type WatchConfigStream = Boxed<ConfigUpdate>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchMessage>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = request.into_inner();
        let results = self.results.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if let Some(watch_message::Kind::Config(r)) = m.kind {
                    let _ = results.send(r);
                }
            }
        });
        let snapshot = DirectorySnapshot {
            version: 1,
            ..DirectorySnapshot::default()
        };
        // Open for as long as the pod listens, as the operator's is.
        let stream = tokio_stream::once(Ok(snapshot)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch_config(
        &self,
        _request: Request<ConfigSubscribe>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let mut updates = self.updates.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let update = updates.borrow_and_update().clone();
                if let Some(u) = update
                    && tx.send(Ok(u)).await.is_err()
                {
                    return;
                }
                if updates.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_acks(
        &self,
        _request: Request<ReplicaAcks>,
    ) -> Result<Response<ReportAcksReply>, Status> {
        Ok(Response::new(ReportAcksReply {}))
    }
}

/// A leg owner's TaskEvents: what it receives goes to a channel.
struct Owner(mpsc::UnboundedSender<TaskEvent>);

#[tonic::async_trait]
impl TaskEvents for Owner {
    async fn deliver(&self, request: Request<TaskEvent>) -> Result<Response<DeliverReply>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(DeliverReply {}))
    }
}

fn serve_on_loopback(routes: Routes) -> SocketAddr {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve(addr),
    );
    addr
}

fn config(log_level: &str, media_timeout_seconds: u32, leg_stats_seconds: u32) -> ClusterConfig {
    ClusterConfig {
        users: Vec::new(),
        billing: None,
        settings: Some(LiveSettings {
            log_level: log_level.into(),
            media_timeout_seconds,
            leg_stats_seconds,
        }),
    }
}

fn snapshot(version: i64, c: &ClusterConfig) -> ConfigUpdate {
    ConfigUpdate {
        version,
        hash: hash(c),
        body: Some(config_update::Body::Snapshot(compress(c))),
        base_version: 0,
        effective_unix_ms: 0,
    }
}

fn delta_update(version: i64, base: (i64, &ClusterConfig), c: &ClusterConfig) -> ConfigUpdate {
    ConfigUpdate {
        version,
        hash: hash(c),
        body: Some(config_update::Body::Delta(compress(&delta(base.1, c)))),
        base_version: base.0,
        effective_unix_ms: 0,
    }
}

async fn next_result(results: &mut mpsc::UnboundedReceiver<ConfigResult>) -> ConfigResult {
    tokio::time::timeout(Duration::from_secs(10), results.recv())
        .await
        .expect("a configuration result on the Directory stream")
        .unwrap()
}

/// The kind of a leg event, and its leg.
fn leg_event_of(e: &TaskEvent) -> (u64, &leg_event::Kind) {
    let Some(task_event::Kind::Leg(leg)) = &e.kind else {
        panic!("a leg event: {e:?}")
    };
    (leg.leg, leg.kind.as_ref().expect("a leg event's kind"))
}

/// The events the owner gets within `within`.
async fn events_within(
    events: &mut mpsc::UnboundedReceiver<TaskEvent>,
    within: Duration,
) -> Vec<TaskEvent> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await {
        got.push(e);
    }
    got
}

/// Waits for leg `leg`'s media timeout event and returns its silence.
async fn timeout_of(
    events: &mut mpsc::UnboundedReceiver<TaskEvent>,
    leg: u64,
    within: Duration,
) -> Option<u32> {
    events_within(events, within)
        .await
        .iter()
        .find_map(|e| match leg_event_of(e) {
            (l, leg_event::Kind::MediaTimeout(t)) if l == leg => Some(t.silent_seconds),
            _ => None,
        })
}

#[tokio::test]
async fn a_version_retimes_the_legs_at_once_and_a_bad_one_is_refused_whole() {
    let (updates_tx, updates) = watch::channel(None);
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let directory = serve_on_loopback(Routes::new(DirectoryServer::new(FakeDirectory {
        updates,
        results: results_tx,
    })));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let owner_addr = serve_on_loopback(Routes::new(TaskEventsServer::new(Owner(events_tx))));
    let url = format!("http://{directory}");
    let mut m = start_with(
        "42600-42619",
        10,
        // Stopping cuts the legs off at once: the test is done with them.
        1,
        &[
            "--directory-url",
            &url,
            "--cluster",
            "demo",
            "--pod-name",
            "demo-media-x",
            "--pod-namespace",
            "voice",
            // The flags' timing until the first version: legs would be
            // silent for half a minute before anyone heard.
            "--media-timeout-seconds",
            "30",
            "--leg-stats-seconds",
            "0",
        ],
    )
    .await;
    let owner = TaskHandle {
        member: owner_addr.to_string(),
        task: 1,
    };
    let leg = async |client: &mut CallLegsClient<Channel>| {
        let mut req = create(Some(socket().local_addr().unwrap()));
        req.owner = Some(owner.clone());
        client.create(req).await.unwrap().into_inner().id
    };

    // Version 1: a 1 s media timeout, statistics every second, debug logs.
    let v1 = config("debug", 1, 1);
    updates_tx.send_replace(Some(snapshot(1, &v1)));
    let r = next_result(&mut results).await;
    assert_eq!((r.version, r.failed), (1, false), "{r:?}");
    assert_eq!(r.hash, hash(&v1));
    let first = leg(&mut m.client).await;
    let got = events_within(&mut events, Duration::from_secs(4)).await;
    let kinds: Vec<_> = got.iter().map(leg_event_of).collect();
    assert!(
        kinds.iter().any(|(l, k)| *l == first
            && matches!(k, leg_event::Kind::MediaTimeout(t) if t.silent_seconds == 1)),
        "the 1 s media timeout holds at once: {kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|(l, k)| *l == first && matches!(k, leg_event::Kind::Statistics(_))),
        "statistics every second: {kinds:?}"
    );

    // Version 2, as a delta: a longer timeout, no statistics, and a log
    // level no filter parses. Refused whole: the 1 s timeout stays.
    let v2 = config("info,media=loud", 60, 0);
    updates_tx.send_replace(Some(delta_update(2, (1, &v1), &v2)));
    let r = next_result(&mut results).await;
    assert_eq!((r.version, r.failed), (2, true), "{r:?}");
    assert!(r.reason.contains("\"info,media=loud\""), "{}", r.reason);
    let second = leg(&mut m.client).await;
    assert_eq!(
        timeout_of(&mut events, second, Duration::from_secs(4)).await,
        Some(1),
        "nothing of the refused version is in use"
    );

    // Version 3, as the delta from the last one sent (as the operator
    // sends it; the refused one is the client's base): a minute's timeout,
    // no statistics, info logs. A new leg stays quiet, and so do the others.
    let v3 = config("info", 60, 0);
    updates_tx.send_replace(Some(delta_update(3, (2, &v2), &v3)));
    let r = next_result(&mut results).await;
    assert_eq!((r.version, r.failed), (3, false), "{r:?}");
    let third = leg(&mut m.client).await;
    // A statistics report may have been under way as the version came in.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    while events.try_recv().is_ok() {}
    let quiet = events_within(&mut events, Duration::from_secs(3)).await;
    assert!(
        quiet.is_empty(),
        "no timeout for leg {third} and no statistics: {:?}",
        quiet.iter().map(leg_event_of).collect::<Vec<_>>()
    );

    let metrics = voicecluster_telemetry::testing::http_get(m.bin.admin_addr(), "/metrics")
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("voicecluster_config_applied_version 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("voicecluster_config_refused_total 1"),
        "{metrics}"
    );

    // The log filter: debug from version 1 on (the refused version 2 left
    // it so), info again from version 3. Leg creation logs at debug, so
    // the first two legs say so and the third does not.
    let logs = m.bin.stop("INT").unwrap().logs;
    let swaps = logs
        .iter()
        .filter(|l| l.contains("log filter swapped"))
        .count();
    assert_eq!(swaps, 2, "{logs:#?}");
    let created: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("\"message\":\"call leg created\""))
        .collect();
    assert_eq!(created.len(), 2, "{created:#?}");
    for (line, id) in created.iter().zip([first, second]) {
        assert!(line.contains(&format!("\"leg\":{id},")), "{line}");
    }
    assert!(
        logs.iter().any(|l| l.contains("configuration refused")),
        "{logs:#?}"
    );
}
