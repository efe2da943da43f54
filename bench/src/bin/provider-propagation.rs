//! How fast a media pod that turns NotReady leaves the provider list: in
//! the VoiceCluster's status and in a Directory watcher's view; and how long
//! until the status shows every following pod on the new version (the
//! watcher here acks like a pod, for the other media pod).
//!
//! Needs the local cluster with the operator installed (`bench/run` does
//! both). Each trial flips the Ready condition of a media pod on a kwok node
//! to False, times the removals and the acks, then restores it. Prints
//! median and p99 over the trials against the 1 s target.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tonic::Streaming;
use voicecluster_api::VoiceCluster;
use voicecluster_api::grpc::directory_client::DirectoryClient;
use voicecluster_api::grpc::{Ack, DirectorySnapshot, WatchMessage, WatchRequest, watch_message};
use voicecluster_e2e::{TestNamespace, client, eventually};

const TARGET: Duration = Duration::from_secs(1);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    let p99 = percentile(&samples, 0.99);
    println!(
        "{what:<28} n={:<3} median={:>7.1} ms  p99={:>7.1} ms  p99/target={:.2}",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        p99.as_secs_f64() / TARGET.as_secs_f64()
    );
}

fn set_ready(ready: bool) -> serde_json::Value {
    let s = if ready { "True" } else { "False" };
    serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": s}]}})
}

/// The pods in the VoiceCluster's `callLegProviders`.
fn providers(vc: &VoiceCluster) -> Vec<String> {
    vc.status
        .as_ref()
        .map(|s| s.call_leg_providers.iter().map(|p| p.pod.clone()).collect())
        .unwrap_or_default()
}

fn ack(version: i64) -> WatchMessage {
    WatchMessage {
        kind: Some(watch_message::Kind::Ack(Ack { version })),
    }
}

/// Creates the `bench` VoiceCluster in `namespace` and waits for its two
/// providers.
async fn create_cluster(vcs: &Api<VoiceCluster>, namespace: &str) -> Result<()> {
    // Media pods on the kwok edge nodes only: their Ready condition is data
    // this benchmark may flip without touching a real process.
    let vc: VoiceCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "voicecluster.io/v1alpha1", "kind": "VoiceCluster",
        "metadata": {"name": "bench", "namespace": namespace},
        "spec": {
            "sip": {"domain": "bench.example.com"},
            "signal": {"replicas": 1, "callLegMode": "Locally"},
            "media": {"nodeSelector": {"voicecluster.io/internet-facing": "true", "type": "kwok"},
                      "publicAddress": {"source": "NodeExternalIP"}},
        },
    }))?;
    vcs.create(&PostParams::default(), &vc).await?;
    eventually("two providers", Duration::from_secs(180), || async {
        let vc = vcs.get("bench").await.map_err(|e| e.to_string())?;
        if providers(&vc).len() == 2 {
            Ok(())
        } else {
            Err(format!("{:?}", providers(&vc)))
        }
    })
    .await
}

/// The names of the `bench` VoiceCluster's media pods.
async fn media_pods(pods: &Api<Pod>) -> Result<Vec<String>> {
    Ok(pods
        .list(
            &ListParams::default()
                .labels("voicecluster.io/cluster=bench,app.kubernetes.io/component=media"),
        )
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect())
}

/// Subscribes to the operator's Directory as media pod `pod` of the
/// `bench` VoiceCluster in `namespace`: where its acks go, and the versions.
async fn watch_directory(
    client: &Client,
    namespace: &str,
    pod: &str,
) -> Result<(mpsc::Sender<WatchMessage>, Streaming<DirectorySnapshot>)> {
    let operator_pod = Api::<Pod>::namespaced(client.clone(), "voicecluster-system")
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find_map(|p| p.status?.pod_ip)
        .context("no operator pod: install it first (bench/run does)")?;
    let (acks, acks_rx) = mpsc::channel(4);
    acks.send(WatchMessage {
        kind: Some(watch_message::Kind::Subscribe(WatchRequest {
            namespace: namespace.to_string(),
            cluster: "bench".into(),
            pod: pod.to_string(),
            call_legs_port: 0,
        })),
    })
    .await?;
    let directory = DirectoryClient::connect(format!("http://{operator_pod}:9443"))
        .await?
        .watch(tokio_stream::wrappers::ReceiverStream::new(acks_rx))
        .await?
        .into_inner();
    Ok((acks, directory))
}

/// Before the trials: how many pods follow the Directory once all acked
/// (this watcher acks the first version it gets).
async fn count_following(
    vcs: &Api<VoiceCluster>,
    acks: &mpsc::Sender<WatchMessage>,
    directory: &mut Streaming<DirectorySnapshot>,
) -> Result<i32> {
    let first = directory
        .message()
        .await?
        .context("Directory stream ended")?;
    acks.send(ack(first.version)).await?;
    eventually(
        "the bench's ack counted",
        Duration::from_secs(30),
        || async {
            let vc = vcs.get("bench").await.map_err(|e| e.to_string())?;
            match vc.status.and_then(|s| s.directory) {
                Some(d) if d.version == first.version && d.current_pods >= 1 => Ok(d.current_pods),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// When each view showed a trial's change, from the patch on.
#[derive(Default)]
struct Times {
    status: Option<Duration>,
    directory: Option<Duration>,
    acked: Option<Duration>,
}

/// What a trial times: the VoiceCluster's status as a watch sees it, and
/// the Directory stream of the watcher that acks like a pod.
struct Views<S> {
    status: S,
    directory: Streaming<DirectorySnapshot>,
    acks: mpsc::Sender<WatchMessage>,
    /// The pods that follow the Directory: all of them ack a new version.
    following: i32,
}

impl<S> Views<S>
where
    S: Stream<Item = Result<VoiceCluster, watcher::Error>> + Unpin,
{
    /// Flips the Ready condition of `target` to `ready` and times its
    /// listing (or removal) in the status and in the Directory, and the
    /// status counting every following pod on the new version.
    async fn flip(
        &mut self,
        pods: &Api<Pod>,
        target: &str,
        ready: bool,
        trial: usize,
    ) -> Result<Times> {
        let start = Instant::now();
        pods.patch_status(
            target,
            &PatchParams::default(),
            &Patch::Merge(set_ready(ready)),
        )
        .await?;
        let listed = |names: &[String]| names.iter().any(|n| n == target);
        let mut times = Times::default();
        let mut new_version = None;
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(deadline);
        while times.status.is_none() || times.directory.is_none() || times.acked.is_none() {
            tokio::select! {
                Some(vc) = self.status.next(), if times.status.is_none() || times.acked.is_none() => {
                    let vc = vc?;
                    if times.status.is_none() && listed(&providers(&vc)) == ready {
                        times.status = Some(start.elapsed());
                    }
                    let d = vc.status.and_then(|s| s.directory);
                    if let (Some(d), Some(v)) = (d, new_version)
                        && d.version == v
                        && d.current_pods == self.following
                    {
                        times.acked = Some(start.elapsed());
                    }
                }
                msg = self.directory.message(), if times.directory.is_none() => {
                    let snap = msg?.context("Directory stream ended")?;
                    let names: Vec<String> = snap.providers.iter().map(|p| p.pod.clone()).collect();
                    if listed(&names) == ready {
                        times.directory = Some(start.elapsed());
                        new_version = Some(snap.version);
                        self.acks.send(ack(snap.version)).await?;
                    }
                }
                () = &mut deadline => bail!("trial {trial}: no change within 30 s"),
            }
        }
        Ok(times)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let trials: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20);
    let client = client().await?;
    let ns = TestNamespace::create(&client, "bench").await?;
    let vcs: Api<VoiceCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    create_cluster(&vcs, &ns.name).await?;
    let media = media_pods(&pods).await?;
    let [target, acking] = media.as_slice() else {
        bail!("want two media pods, got {media:?}");
    };
    let (acks, mut directory) = watch_directory(&client, &ns.name, acking).await?;
    let following = count_following(&vcs, &acks, &mut directory).await?;
    let status = std::pin::pin!(
        watcher(
            vcs.clone(),
            watcher::Config::default().fields("metadata.name=bench")
        )
        .default_backoff()
        .applied_objects()
    );
    let mut views = Views {
        status,
        directory,
        acks,
        following,
    };

    let mut status_times = Vec::new();
    let mut directory_times = Vec::new();
    let mut acked_times = Vec::new();
    for trial in 0..trials {
        for ready in [false, true] {
            let times = views.flip(&pods, target, ready, trial).await?;
            if !ready {
                status_times.push(times.status.unwrap_or_default());
                directory_times.push(times.directory.unwrap_or_default());
                acked_times.push(times.acked.unwrap_or_default());
            }
        }
    }
    println!("NotReady media pod -> removed from the provider list ({trials} trials)");
    report("status.callLegProviders", status_times);
    report("Directory watcher", directory_times);
    report(
        &format!("status: {following} of {following} acked"),
        acked_times,
    );
    ns.delete().await
}
