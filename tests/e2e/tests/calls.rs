//! Calls through the local cluster, with SIPp as the devices: they register
//! and call through the SIP edge of the media pod on the real node, the
//! calls run on the two signal pods (Remotely), their legs on the media pod,
//! and RTP flows device ↔ media pod ↔ device. Bills come from the signal
//! pods' management API.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use voicecluster_api::{LABEL_CLUSTER, LABEL_COMPONENT, VoiceCluster};
use voicecluster_e2e::operator::{install_operator, wait_condition};
use voicecluster_e2e::{
    REAL_NODE_IP, TestNamespace, client, directory_settled, eventually, http_get, is_pod_ready,
    metric, users_secret,
};
use voicecluster_signal_node::testing::{ALICE, BOB, Sipp, free_port};

/// SIP port of the test service: the edge binds it on the real node.
const SIP_PORT: u16 = 15060;
/// Admin and management ports of signal pods; admin port of the edge.
const SIGNAL_ADMIN: u16 = 9090;
const MANAGEMENT: u16 = 8080;
const EDGE_ADMIN: u16 = 9092;
const NAME: &str = "calls";

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
                "rtpPortRange": {"min": 21000, "max": 21999},
                "capacity": 500,
                "publicAddress": {"source": "NodeAnnotation",
                                  "annotation": "voicecluster.io/public-address"},
                "drainTimeoutSeconds": 5,
            },
            "billing": {"currency": "EUR", "rates": [
                {"prefix": "", "pricePerMinute": "0.60", "incrementSeconds": 1}
            ]},
        },
    }))?)
}

/// The signal pods' IPs once both are ready.
async fn signal_ips(pods: &Api<Pod>) -> Result<Vec<String>> {
    let selector = format!("{LABEL_CLUSTER}={NAME},{LABEL_COMPONENT}=signal");
    eventually(
        "two ready signal pods",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            let ips: Vec<String> = list
                .items
                .iter()
                .filter(|p| is_pod_ready(p))
                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                .collect();
            if ips.len() == 2 {
                Ok(ips)
            } else {
                Err(format!("{} ready", ips.len()))
            }
        },
    )
    .await
}

/// A metric summed over the signal pods, once the sum reached `at_least`.
async fn signal_sum(ips: &[String], name: &str, at_least: f64) -> f64 {
    let mut sum = 0.0;
    for _ in 0..100 {
        sum = 0.0;
        for ip in ips {
            sum += metric(&format!("{ip}:{SIGNAL_ADMIN}"), name).await;
        }
        if sum >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sum
}

async fn bills(ips: &[String]) -> Result<Vec<Vec<serde_json::Value>>> {
    let mut all = Vec::new();
    for ip in ips {
        let (status, body) = http_get(&format!("{ip}:{MANAGEMENT}"), "/bills").await?;
        ensure!(status.contains("200"), "GET /bills on {ip}: {status}");
        all.push(serde_json::from_str(&body).context("bills as JSON")?);
    }
    Ok(all)
}

#[tokio::test]
async fn calls_go_through_edge_signal_and_media_pods_and_are_billed() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "calls").await?;
    // Clean up whatever the outcome: media pods hold host ports.
    let result = calls_in(&client, &ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn calls_in(client: &Client, ns: &TestNamespace) -> Result<()> {
    users_secret(client, &ns.name, &[ALICE, BOB]).await?;
    let vcs: Api<VoiceCluster> = ns.api();
    vcs.create(&PostParams::default(), &voicecluster(&ns.name)?)
        .await?;
    wait_condition(&vcs, NAME, "Ready", "True").await?;
    let pods: Api<Pod> = ns.api();
    let ips = signal_ips(&pods).await?;
    // Every pod applied the Directory that lists the media pod and both
    // signal pods: the edge knows its backends, the backends the provider
    // and each other.
    directory_settled(&vcs, NAME, 3).await?;

    let node: IpAddr = REAL_NODE_IP.parse()?;
    let edge = SocketAddr::new(node, SIP_PORT);
    let sipp = Sipp::new(edge, node);
    let ports = (free_port(node), free_port(node));
    sipp.register(ALICE, ports.0);
    sipp.register(BOB, ports.1);
    // Both signal pods know both users, whichever took each REGISTER.
    let registered = signal_sum(&ips, "voicecluster_sip_registered_users", 4.0).await;
    ensure!(
        registered == 4.0,
        "registrations on the signal pods: {registered}"
    );

    // One call with two seconds of RTP each way.
    sipp.alice_calls_bob(&sipp, ports, ("caller", "callee"), 1, &[])
        .await;
    for direction in ["to_callee", "to_caller"] {
        let n = signal_sum(
            &ips,
            &format!("voicecluster_call_media_packets_total{{direction=\"{direction}\"}}"),
            50.0,
        )
        .await;
        ensure!(
            n >= 50.0,
            "RTP {direction} through the media pod: {n} packets"
        );
    }
    let all: Vec<serde_json::Value> = bills(&ips).await?.into_iter().flatten().collect();
    ensure!(all.len() == 1, "one bill: {all:?}");
    let b = &all[0];
    let ms = b["durationMs"].as_u64().context("durationMs")?;
    ensure!((1900..4000).contains(&ms), "duration {ms} ms");
    ensure!(
        b["cost"] == format!("{:.2}", ms.div_ceil(1000) as f64 * 0.01),
        "cost {} for {ms} ms at 0.60 a minute",
        b["cost"]
    );
    ensure!(b["disconnectReason"] == "caller-bye", "{b}");
    // The edge carried both directions: devices to backends, and the
    // backend's INVITE, ACK and BYE to Bob along his flow.
    let edge_admin = format!("{REAL_NODE_IP}:{EDGE_ADMIN}");
    let to_client = metric(
        &edge_admin,
        "voicecluster_edge_forwarded_total{direction=\"to_client\",kind=\"request\"}",
    )
    .await;
    ensure!(
        to_client >= 3.0,
        "requests the edge sent to Bob: {to_client}"
    );

    // 200 calls at 20 a second: SIPp counts no failure, and each is billed.
    sipp.alice_calls_bob(
        &sipp,
        ports,
        ("short-call", "callee"),
        200,
        &["-r", "20", "-timeout", "90s"],
    )
    .await;
    let answered = signal_sum(
        &ips,
        "voicecluster_calls_completed_total{outcome=\"answered\"}",
        201.0,
    )
    .await;
    ensure!(answered == 201.0, "answered calls: {answered}");
    let per_pod: Vec<usize> = bills(&ips).await?.iter().map(Vec::len).collect();
    ensure!(
        per_pod.iter().sum::<usize>() == 201,
        "one bill per call: {per_pod:?}"
    );
    ensure!(
        per_pod.iter().all(|n| *n > 0),
        "the edge spreads calls over both signal pods: {per_pod:?}"
    );
    Ok(())
}
