//! How fast a media pod that turns NotReady leaves the provider list: in
//! the VoiceCluster's status and in a Directory watcher's view.
//!
//! Needs the local cluster with the operator installed (`bench/run` does
//! both). Each trial flips the Ready condition of a media pod on a kwok node
//! to False, times both removals, then restores it. Prints median and p99
//! over the trials against the 1 s target.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use voicecluster_api::VoiceCluster;
use voicecluster_api::grpc::directory_client::DirectoryClient;
use voicecluster_api::grpc::{WatchMessage, WatchRequest, watch_message};
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

    // Media pods on the kwok edge nodes only: their Ready condition is data
    // this benchmark may flip without touching a real process.
    let vc: VoiceCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "voicecluster.io/v1alpha1", "kind": "VoiceCluster",
        "metadata": {"name": "bench", "namespace": ns.name},
        "spec": {
            "sip": {"domain": "bench.example.com"},
            "signal": {"replicas": 1, "callLegMode": "Locally"},
            "media": {"nodeSelector": {"voicecluster.io/internet-facing": "true", "type": "kwok"},
                      "publicAddress": {"source": "NodeExternalIP"}},
        },
    }))?;
    vcs.create(&PostParams::default(), &vc).await?;
    let providers = |vc: &VoiceCluster| -> Vec<String> {
        vc.status
            .as_ref()
            .map(|s| s.call_leg_providers.iter().map(|p| p.pod.clone()).collect())
            .unwrap_or_default()
    };
    eventually("two providers", Duration::from_secs(180), || async {
        let vc = vcs.get("bench").await.map_err(|e| e.to_string())?;
        if providers(&vc).len() == 2 {
            Ok(())
        } else {
            Err(format!("{:?}", providers(&vc)))
        }
    })
    .await?;
    let target = pods
        .list(
            &ListParams::default()
                .labels("voicecluster.io/cluster=bench,app.kubernetes.io/component=media"),
        )
        .await?
        .items
        .first()
        .map(|p| p.name_any())
        .context("no media pod")?;

    let operator_pod = Api::<Pod>::namespaced(client.clone(), "voicecluster-system")
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find_map(|p| p.status?.pod_ip)
        .context("no operator pod: install it first (bench/run does)")?;
    let mut directory = DirectoryClient::connect(format!("http://{operator_pod}:9443"))
        .await?
        .watch(futures::stream::iter([WatchMessage {
            kind: Some(watch_message::Kind::Subscribe(WatchRequest {
                namespace: ns.name.clone(),
                cluster: "bench".into(),
                pod: "bench".into(),
            })),
        }]))
        .await?
        .into_inner();
    let mut status_watch = std::pin::pin!(
        watcher(
            vcs.clone(),
            watcher::Config::default().fields("metadata.name=bench")
        )
        .default_backoff()
        .applied_objects()
    );

    let mut status_times = Vec::new();
    let mut directory_times = Vec::new();
    for trial in 0..trials {
        for ready in [false, true] {
            let start = Instant::now();
            pods.patch_status(
                &target,
                &PatchParams::default(),
                &Patch::Merge(set_ready(ready)),
            )
            .await?;
            let listed = |names: &[String]| names.contains(&target);
            let (mut status_at, mut directory_at) = (None, None);
            let deadline = tokio::time::sleep(Duration::from_secs(30));
            tokio::pin!(deadline);
            while status_at.is_none() || directory_at.is_none() {
                tokio::select! {
                    Some(vc) = status_watch.next(), if status_at.is_none() => {
                        if listed(&providers(&vc?)) == ready { status_at = Some(start.elapsed()); }
                    }
                    msg = directory.message(), if directory_at.is_none() => {
                        let snap = msg?.context("Directory stream ended")?;
                        let names: Vec<String> = snap.providers.iter().map(|p| p.pod.clone()).collect();
                        if listed(&names) == ready { directory_at = Some(start.elapsed()); }
                    }
                    () = &mut deadline => bail!("trial {trial}: no change within 30 s"),
                }
            }
            if !ready {
                status_times.push(status_at.unwrap_or_default());
                directory_times.push(directory_at.unwrap_or_default());
            }
        }
    }
    println!("NotReady media pod -> removed from the provider list ({trials} trials)");
    report("status.callLegProviders", status_times);
    report("Directory watcher", directory_times);
    ns.delete().await
}
