//! A media pod drains on the local cluster: with a call's legs on it,
//! deleting the pod takes it out of `status.callLegProviders` at once, the
//! call's RTP keeps flowing through it, the status shows the legs it still
//! carries, and its process exits when the call's legs end, long before
//! the drain timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use voicecluster_api::{LABEL_CLUSTER, LABEL_COMPONENT, VoiceCluster};
use voicecluster_e2e::operator::{install_operator, wait_condition};
use voicecluster_e2e::{
    REAL_NODE_IP, TestNamespace, client, eventually, http_get, is_pod_ready, metric_value,
    users_secret,
};
use voicecluster_signal_node::testing::{ALICE, BOB, Sipp, free_port};

const NAME: &str = "drain";
const SIP_PORT: u16 = 15060;
const MEDIA_ADMIN: u16 = 9091;
const DRAIN_TIMEOUT_S: u64 = 90;

fn voicecluster(namespace: &str) -> Result<VoiceCluster> {
    let real = serde_json::json!({"voicecluster.io/real-node": "true"});
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "voicecluster.io/v1alpha1",
        "kind": "VoiceCluster",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "sip": {"domain": "voice.test", "port": SIP_PORT, "usersSecret": "voice-users"},
            "signal": {"replicas": 1, "callLegMode": "Remotely", "nodeSelector": real},
            "media": {
                "nodeSelector": real,
                "rtpPortRange": {"min": 22000, "max": 22999},
                "publicAddress": {"source": "NodeAnnotation",
                                  "annotation": "voicecluster.io/public-address"},
                "drainTimeoutSeconds": DRAIN_TIMEOUT_S,
            },
        },
    }))?)
}

async fn media_metric(name: &str) -> f64 {
    match http_get(&format!("{REAL_NODE_IP}:{MEDIA_ADMIN}"), "/metrics").await {
        Ok((_, page)) => metric_value(&page, name).unwrap_or(0.0),
        Err(e) => {
            eprintln!("media pod metrics: {e:#}");
            0.0
        }
    }
}

async fn component_pods(pods: &Api<Pod>, component: &str) -> Result<Vec<Pod>> {
    let selector = format!("{LABEL_CLUSTER}={NAME},{LABEL_COMPONENT}={component}");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_media_pod_leaves_the_list_keeps_its_legs_and_exits_when_they_end() -> Result<()>
{
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "drain").await?;
    let result = drain_in(&client, &ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn drain_in(client: &Client, ns: &TestNamespace) -> Result<()> {
    users_secret(client, &ns.name, &[ALICE, BOB]).await?;
    let vcs: Api<VoiceCluster> = ns.api();
    vcs.create(&PostParams::default(), &voicecluster(&ns.name)?)
        .await?;
    wait_condition(&vcs, NAME, "Ready", "True").await?;
    let pods: Api<Pod> = ns.api();
    let signal_ip = eventually("a ready signal pod", Duration::from_secs(120), || async {
        let list = component_pods(&pods, "signal")
            .await
            .map_err(|e| e.to_string())?;
        list.iter()
            .filter(|p| is_pod_ready(p))
            .find_map(|p| p.status.as_ref()?.pod_ip.clone())
            .ok_or_else(|| "none yet".to_string())
    })
    .await?;
    let media_pod = component_pods(&pods, "media")
        .await?
        .into_iter()
        .find(is_pod_ready)
        .context("a ready media pod")?
        .name_any();
    eventually(
        "the media pod listed as a provider",
        Duration::from_secs(60),
        || async {
            let vc = vcs.get(NAME).await.map_err(|e| e.to_string())?;
            let providers = vc.status.unwrap_or_default().call_leg_providers;
            if providers.iter().any(|p| p.pod == media_pod) {
                Ok(())
            } else {
                Err(format!("{providers:?}"))
            }
        },
    )
    .await?;
    eventually(
        "the signal pod on the current Directory",
        Duration::from_secs(60),
        || async {
            let vc = vcs.get(NAME).await.map_err(|e| e.to_string())?;
            let d = vc.status.unwrap_or_default().directory.unwrap_or_default();
            if d.pods > 0 && d.current_pods == d.pods {
                Ok(())
            } else {
                Err(format!("{d:?}"))
            }
        },
    )
    .await?;

    // The devices talk to the signal pod directly: the edge beside the
    // media pod stops with it, and this test is about the media.
    let node: IpAddr = REAL_NODE_IP.parse()?;
    let sipp = Sipp::new(SocketAddr::new(signal_ip.parse()?, SIP_PORT), node);
    let ports = (free_port(node), free_port(node));
    sipp.register(ALICE, ports.0);
    sipp.register(BOB, ports.1);
    // A 12-second call with RTP both ways, in the background.
    let mut call = tokio::spawn(async move {
        sipp.alice_calls_bob(
            &sipp,
            ports,
            ("caller", "callee"),
            1,
            &["-d", "12000", "-timeout", "60s"],
        )
        .await;
    });
    let legs_up = eventually(
        "the call's two legs on the media pod",
        Duration::from_secs(20),
        || async {
            let legs = media_metric("voicecluster_media_legs_active").await;
            if legs == 2.0 {
                Ok(())
            } else {
                Err(format!("{legs} legs"))
            }
        },
    );
    tokio::select! {
        up = legs_up => up?,
        ended = &mut call => bail!("the call ended before its legs were seen: {ended:?}"),
    }

    let deleted = Instant::now();
    pods.delete(&media_pod, &DeleteParams::default()).await?;
    eventually(
        "the deleted pod out of the provider list",
        Duration::from_secs(5),
        || async {
            let vc = vcs.get(NAME).await.map_err(|e| e.to_string())?;
            let providers = vc.status.unwrap_or_default().call_leg_providers;
            if providers.iter().any(|p| p.pod == media_pod) {
                Err(format!("{providers:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await?;
    let left_list = deleted.elapsed();
    // Its legs keep relaying while it drains.
    // The kubelet's SIGTERM follows the deletion a moment later.
    eventually(
        "the media pod draining",
        Duration::from_secs(10),
        || async {
            let draining = media_metric("voicecluster_media_draining").await;
            if draining == 1.0 {
                Ok(())
            } else {
                Err(format!("draining {draining}"))
            }
        },
    )
    .await?;
    // The operator shows what the draining pod still carries, as the pod
    // reports it over its Directory stream.
    eventually(
        "the drain's progress in the status",
        Duration::from_secs(10),
        || async {
            let vc = vcs.get(NAME).await.map_err(|e| e.to_string())?;
            let draining = vc.status.unwrap_or_default().draining_media_pods;
            match draining.iter().find(|d| d.pod == media_pod) {
                Some(d) if d.active_legs == Some(2) => Ok(()),
                _ => Err(format!("{draining:?}")),
            }
        },
    )
    .await?;
    let before = media_metric("voicecluster_media_packets_relayed_total").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = media_metric("voicecluster_media_packets_relayed_total").await;
    ensure!(
        after >= before + 100.0,
        "RTP relayed while draining: {before} then {after}"
    );

    // The call ends normally (SIPp fails the task otherwise); then the pod
    // goes away on its own, well inside the drain timeout.
    (&mut call).await.context("the call")?;
    let ended = Instant::now();
    eventually(
        "the drained media pod gone",
        Duration::from_secs(60),
        || async {
            match pods.get_opt(&media_pod).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            }
        },
    )
    .await?;
    let exited_after = ended.elapsed();
    eventually(
        "the drained pod out of the status",
        Duration::from_secs(30),
        || async {
            let vc = vcs.get(NAME).await.map_err(|e| e.to_string())?;
            let draining = vc.status.unwrap_or_default().draining_media_pods;
            if draining.iter().any(|d| d.pod == media_pod) {
                Err(format!("{draining:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await?;
    ensure!(
        exited_after < Duration::from_secs(DRAIN_TIMEOUT_S / 3),
        "the pod went {exited_after:?} after its last leg, drain timeout {DRAIN_TIMEOUT_S} s"
    );
    eprintln!(
        "drain: out of the provider list {left_list:?} after delete; gone {exited_after:?} after the call ended"
    );
    Ok(())
}
