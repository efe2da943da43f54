//! Live configuration on the local cluster: users added to, removed from
//! and changed in the users Secret, and a new price in the spec, reach the
//! running signal pods without a restart; calls answered before a price
//! change are billed at the old price, calls after it at the new one.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use voicecluster_api::{LABEL_CLUSTER, LABEL_COMPONENT, VoiceCluster};
use voicecluster_e2e::config::{applied_after, config_condition, registers, registers_within};
use voicecluster_e2e::operator::{install_operator, pod_identities, wait_condition};
use voicecluster_e2e::{
    REAL_NODE_IP, TestNamespace, client, directory_settled, eventually, http_get, is_pod_ready,
    metric,
};
use voicecluster_signal_node::testing::{ALICE, BOB, Sipp, free_port};

const SIP_PORT: u16 = 15060;
const SIGNAL_ADMIN: u16 = 9090;
const MANAGEMENT: u16 = 8080;
const NAME: &str = "live";
const SECRET: &str = "voice-users";

fn voicecluster(namespace: &str, price: &str) -> Result<VoiceCluster> {
    let real = serde_json::json!({"voicecluster.io/real-node": "true"});
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "voicecluster.io/v1alpha1",
        "kind": "VoiceCluster",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "sip": {"domain": "voice.test", "port": SIP_PORT, "usersSecret": SECRET},
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
                {"prefix": "", "pricePerMinute": price, "incrementSeconds": 1}
            ]},
        },
    }))?)
}

/// The users Secret holding `users`.
async fn set_users(client: &Client, ns: &str, users: &[(&str, &str)]) -> Result<()> {
    let lines: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": ns},
        "stringData": {"users": lines, "nonce-secret": "e2e-nonce-key"},
    }))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(SECRET).await? {
        None => {
            api.create(&PostParams::default(), &secret).await?;
        }
        Some(_) => {
            api.patch(
                SECRET,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"stringData": {"users": lines}})),
            )
            .await?;
        }
    }
    Ok(())
}

/// Replaces the users file with `text` as it is.
async fn set_users_text(client: &Client, ns: &str, text: &str) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.patch(
        SECRET,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"stringData": {"users": text}})),
    )
    .await?;
    Ok(())
}

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

async fn all_bills(ips: &[String]) -> Result<Vec<serde_json::Value>> {
    let mut all = Vec::new();
    for ip in ips {
        let (status, body) = http_get(&format!("{ip}:{MANAGEMENT}"), "/bills").await?;
        ensure!(status.contains("200"), "GET /bills on {ip}: {status}");
        all.extend(serde_json::from_str::<Vec<serde_json::Value>>(&body)?);
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_prices_change_on_running_pods() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "live").await?;
    let result = live(&client, &ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn live(client: &Client, ns: &TestNamespace) -> Result<()> {
    set_users(client, &ns.name, &[ALICE, BOB, ("dave", "d1")]).await?;
    let vcs: Api<VoiceCluster> = ns.api();
    vcs.create(&PostParams::default(), &voicecluster(&ns.name, "0.60")?)
        .await?;
    wait_condition(&vcs, NAME, "Ready", "True").await?;
    let pods: Api<Pod> = ns.api();
    let ips = signal_ips(&pods).await?;
    directory_settled(&vcs, NAME, 3).await?;
    let first = applied_after(&vcs, NAME, 0, 3).await?;
    ensure!(first.users == 3, "three users: {first:?}");
    let before = pod_identities(&pods, NAME).await?;

    let node: IpAddr = REAL_NODE_IP.parse()?;
    let sipp = Sipp::new(SocketAddr::new(node, SIP_PORT), node);
    let ports = (free_port(node), free_port(node));
    sipp.register(ALICE, ports.0);
    sipp.register(BOB, ports.1);
    ensure!(registers(&sipp, ("dave", "d1")), "dave registers");
    ensure!(
        !registers(&sipp, ("carol", "c1")),
        "carol is not a user yet"
    );

    // A user added, one removed, a password changed: in the Secret only.
    set_users(client, &ns.name, &[ALICE, BOB, ("carol", "c1")]).await?;
    let took = registers_within(&sipp, ("carol", "c1"), Duration::from_secs(10)).await?;
    let second = applied_after(&vcs, NAME, first.version, 3).await?;
    ensure!(
        !registers(&sipp, ("dave", "d1")),
        "dave is refused once removed"
    );
    set_users(client, &ns.name, &[ALICE, BOB, ("carol", "c2")]).await?;
    let third = applied_after(&vcs, NAME, second.version, 3).await?;
    ensure!(
        registers(&sipp, ("carol", "c2")),
        "carol's new password works"
    );
    ensure!(
        !registers(&sipp, ("carol", "c1")),
        "carol's old password does not"
    );

    // 40 calls of 30 s up; what fails meanwhile touches none of them.
    let calls = sipp.spawn_calls(ports, 40, 10, 30_000);
    eventually("40 calls up", Duration::from_secs(30), || async {
        let mut up = 0.0;
        for ip in &ips {
            up += metric(&format!("{ip}:{SIGNAL_ADMIN}"), "voicecluster_calls_active").await;
        }
        if up >= 40.0 {
            Ok(())
        } else {
            Err(format!("{up} up"))
        }
    })
    .await?;
    let good = [ALICE, BOB, ("carol", "c2")];
    // A users file with a bad line: the pods keep the version they have.
    set_users_text(client, &ns.name, "alice:wonderland\nnocolon\n").await?;
    let (status, applied) = config_condition(&vcs, NAME, "SourceError").await?;
    ensure!(
        status.version == third.version && applied.message.contains("line 2"),
        "a bad line keeps version {}: {status:?} {applied:?}",
        third.version
    );
    ensure!(registers(&sipp, ("carol", "c2")), "carol still registers");
    // A user name the members refuse: every pod back to the last good.
    let mut odd: Vec<(&str, &str)> = good.to_vec();
    odd.push(("a b", "x"));
    set_users(client, &ns.name, &odd).await?;
    let (status, applied) = config_condition(&vcs, NAME, "RolledBack").await?;
    let rolled = status.rolled_back.clone().context("rolledBack")?;
    ensure!(
        rolled.version == third.version + 1
            && rolled.pod.starts_with(&format!("{NAME}-signal-"))
            && rolled.reason.contains("not a SIP user part")
            && applied.message.contains(&rolled.pod),
        "the condition names the pod and why: {status:?} {applied:?}"
    );
    let back = applied_after(&vcs, NAME, rolled.version, 3).await?;
    ensure!(
        back.hash == third.hash && back.users == 3,
        "the good content is back: {back:?}"
    );
    let events = voicecluster_e2e::kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "--field-selector",
        "reason=RolledBack",
        "-o",
        "name",
    ])
    .await?;
    ensure!(!events.trim().is_empty(), "an Event says RolledBack");
    ensure!(
        registers(&sipp, ("carol", "c2")),
        "carol registers after the rollback"
    );
    ensure!(
        !registers(&sipp, ("a b", "x")),
        "the refused user never registers"
    );
    // The sources good again: the rollback is over.
    set_users(client, &ns.name, &good).await?;
    config_condition(&vcs, NAME, "Applied").await?;
    ensure!(
        !calls.is_finished(),
        "the calls outlived the failed versions"
    );

    // A new price with the calls up; 5 calls after it.
    vcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"billing": {"rates": [
            {"prefix": "", "pricePerMinute": "1.20", "incrementSeconds": 1}
        ]}}})),
    )
    .await?;
    let fourth = applied_after(&vcs, NAME, back.version, 3).await?;
    calls.await.context("the 40 calls end normally")?;
    sipp.spawn_calls(ports, 5, 5, 2_000)
        .await
        .context("the 5 calls after the change end normally")?;

    let bills = all_bills(&ips).await?;
    ensure!(bills.len() == 45, "one bill per call: {}", bills.len());
    let at = |price: &str| {
        bills
            .iter()
            .filter(|b| b["pricePerMinute"] == price)
            .count()
    };
    ensure!(
        at("0.60") == 40 && at("1.20") == 5,
        "40 bills at 0.60 and 5 at 1.20: {} and {}",
        at("0.60"),
        at("1.20")
    );
    let after = pod_identities(&pods, NAME).await?;
    ensure!(
        before == after,
        "no pod restarted or replaced: {before:?} then {after:?}"
    );
    eprintln!(
        "live configuration: carol registered {took:?} after the Secret changed; versions {} to {}; \
         40 calls at the old price, 5 at the new; pods unchanged",
        first.version, fourth.version
    );
    Ok(())
}
