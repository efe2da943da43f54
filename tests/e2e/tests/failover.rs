//! The founding scenario on the local cluster: Alice and Bob register
//! through the SIP edge of the media pod, Alice calls Bob, the signal pod
//! handling the call is deleted with grace period 0 (its process killed),
//! RTP keeps flowing through the media pod, the other signal pod takes the
//! call over from its replica, Alice's BYE gets its 200 and Bob his BYE,
//! and the surviving pod's management API shows the whole call's bill.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use voicecluster_api::{LABEL_CLUSTER, LABEL_COMPONENT, VoiceCluster};
use voicecluster_e2e::operator::{install_operator, wait_condition};
use voicecluster_e2e::{
    REAL_NODE_IP, TestNamespace, client, directory_settled, eventually, http_get, is_pod_ready,
    metric, users_secret,
};
use voicecluster_signal_node::testing::{ALICE, BOB, Sipp, free_port};

const SIP_PORT: u16 = 15060;
const SIGNAL_ADMIN: u16 = 9090;
const MANAGEMENT: u16 = 8080;
const MEDIA_ADMIN: u16 = 9091;
const EDGE_ADMIN: u16 = 9092;
const NAME: &str = "failover";
const CALL_MS: u64 = 10_000;

fn voicecluster(namespace: &str) -> Result<VoiceCluster> {
    let real = serde_json::json!({"voicecluster.io/real-node": "true"});
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "voicecluster.io/v1alpha1",
        "kind": "VoiceCluster",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "sip": {"domain": "voice.test", "port": SIP_PORT, "usersSecret": "voice-users"},
            "signal": {"replicas": 2, "callLegMode": "Remotely", "nodeSelector": real},
            "media": {
                "nodeSelector": real,
                "rtpPortRange": {"min": 23000, "max": 23999},
                "publicAddress": {"source": "NodeAnnotation",
                                  "annotation": "voicecluster.io/public-address"},
                "drainTimeoutSeconds": 5,
            },
            "failover": {"mode": "Automatic", "heartbeatIntervalMs": 200, "failureThreshold": 3},
            "billing": {"currency": "EUR", "rates": [
                {"prefix": "", "pricePerMinute": "0.60", "incrementSeconds": 1}
            ]},
        },
    }))?)
}

/// The ready signal pods: (name, IP).
async fn signal_pods(pods: &Api<Pod>) -> Result<Vec<(String, String)>> {
    let selector = format!("{LABEL_CLUSTER}={NAME},{LABEL_COMPONENT}=signal");
    eventually(
        "two ready signal pods",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            let ready: Vec<(String, String)> = list
                .items
                .iter()
                .filter(|p| is_pod_ready(p))
                .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?)))
                .collect();
            if ready.len() == 2 {
                Ok(ready)
            } else {
                Err(format!("{} ready", ready.len()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_the_deletion_of_its_signal_pod_and_is_billed_whole() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "failover").await?;
    let result = failover_in(&client, &ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn failover_in(client: &Client, ns: &TestNamespace) -> Result<()> {
    users_secret(client, &ns.name, &[ALICE, BOB]).await?;
    let vcs: Api<VoiceCluster> = ns.api();
    vcs.create(&PostParams::default(), &voicecluster(&ns.name)?)
        .await?;
    wait_condition(&vcs, NAME, "Ready", "True").await?;
    let pods: Api<Pod> = ns.api();
    let signal = signal_pods(&pods).await?;
    directory_settled(&vcs, NAME, 3).await?;

    let node: IpAddr = REAL_NODE_IP.parse()?;
    let sipp = Sipp::new(SocketAddr::new(node, SIP_PORT), node);
    let ports = (free_port(node), free_port(node));
    sipp.register(ALICE, ports.0);
    sipp.register(BOB, ports.1);
    for (_, ip) in &signal {
        let admin = format!("{ip}:{SIGNAL_ADMIN}");
        eventually("both users known", Duration::from_secs(20), || async {
            let n = metric(&admin, "voicecluster_sip_registered_users").await;
            if n == 2.0 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        })
        .await?;
    }

    let caller = sipp.clone();
    let mut call = tokio::spawn(async move {
        caller
            .alice_calls_bob(
                &caller,
                ports,
                ("caller", "callee"),
                1,
                &["-d", &CALL_MS.to_string(), "-timeout", "60s"],
            )
            .await;
    });
    let owner = eventually("the pod with the call", Duration::from_secs(20), || async {
        for (name, ip) in &signal {
            if metric(&format!("{ip}:{SIGNAL_ADMIN}"), "voicecluster_calls_active").await == 1.0 {
                return Ok(name.clone());
            }
        }
        Err("none yet".to_string())
    });
    let owner = tokio::select! {
        o = owner => o?,
        ended = &mut call => bail!("the call ended before it was seen: {ended:?}"),
    };
    let (_, survivor_ip) = signal
        .iter()
        .find(|(name, _)| *name != owner)
        .context("the other signal pod")?
        .clone();
    let survivor = format!("{survivor_ip}:{SIGNAL_ADMIN}");
    eventually(
        "the survivor holds the replica",
        Duration::from_secs(10),
        || async {
            let n = metric(&survivor, "voicecluster_call_replicas_held").await;
            if n == 1.0 {
                return Ok(());
            }
            // What the call's pod says of its replicas, for a failure.
            let owner_admin = signal
                .iter()
                .find(|(name, _)| *name == owner)
                .map(|(_, ip)| format!("{ip}:{SIGNAL_ADMIN}"))
                .unwrap_or_default();
            let mut seen = format!("held {n}");
            for name in [
                "voicecluster_task_events_total{direction=\"sent\",kind=\"call_replica\"}",
                "voicecluster_task_event_failures_total{kind=\"call_replica\"}",
                "voicecluster_call_replica_timeouts_total",
                "voicecluster_calls_active",
            ] {
                seen.push_str(&format!(
                    "; owner {name} {}",
                    metric(&owner_admin, name).await
                ));
            }
            Err(seen)
        },
    )
    .await?;

    // The pod handling the call goes, at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pods.delete(&owner, &DeleteParams::default().grace_period(0))
        .await?;
    let killed = Instant::now();
    // Media never passed it: RTP goes on through the media pod.
    let media = format!("{REAL_NODE_IP}:{MEDIA_ADMIN}");
    let before = metric(&media, "voicecluster_media_packets_relayed_total").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = metric(&media, "voicecluster_media_packets_relayed_total").await;
    ensure!(
        after >= before + 50.0,
        "RTP relayed after the pod went: {before} then {after}"
    );

    // Alice's BYE at the end: SIPp fails the task unless it gets its 200
    // and Bob gets his BYE.
    (&mut call).await.context("the call")?;
    // The survivor took the call over, or, when the pod came back at the
    // same address before the call ended, the new pod took it back from
    // the survivor: one takeover and one bill across the pods there are now.
    let now = signal_pods(&pods).await?;
    let mut took_over = 0.0;
    let mut bills: Vec<serde_json::Value> = Vec::new();
    for (_, ip) in &now {
        took_over += metric(
            &format!("{ip}:{SIGNAL_ADMIN}"),
            "voicecluster_call_takeovers_total",
        )
        .await;
        let (status, body) = http_get(&format!("{ip}:{MANAGEMENT}"), "/bills").await?;
        ensure!(status.contains("200"), "GET /bills on {ip}: {status}");
        bills.extend(serde_json::from_str::<Vec<serde_json::Value>>(&body)?);
    }
    ensure!(took_over == 1.0, "takeovers: {took_over}");
    let failovers = metric(
        &format!("{REAL_NODE_IP}:{EDGE_ADMIN}"),
        "voicecluster_edge_failovers_total",
    )
    .await;
    let replaced_at_same_address = now
        .iter()
        .any(|(_, ip)| *ip != survivor_ip && signal.iter().any(|(_, old)| old == ip));
    ensure!(
        failovers >= 1.0 || replaced_at_same_address,
        "requests the edge sent to the buddy: {failovers}"
    );
    ensure!(bills.len() == 1, "one bill: {bills:?}");
    let b = &bills[0];
    let ms = b["durationMs"].as_u64().context("durationMs")?;
    ensure!(
        ms.abs_diff(CALL_MS) < 1000,
        "billed {ms} ms for a {CALL_MS} ms call"
    );
    ensure!(
        b["cost"] == format!("{:.2}", ms.div_ceil(1000) as f64 * 0.01),
        "cost {} for {ms} ms",
        b["cost"]
    );
    ensure!(b["disconnectReason"] == "caller-bye", "{b}");
    eprintln!(
        "failover: pod {owner} deleted; the call went on and ended {:?} later, billed {ms} ms (new pod at the same address: {replaced_at_same_address})",
        killed.elapsed()
    );
    Ok(())
}
