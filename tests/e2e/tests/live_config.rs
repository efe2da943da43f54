//! Live configuration on the local cluster: users added to, removed from
//! and changed in the users Secret, and a new price in the spec, reach the
//! running signal pods without a restart; calls answered before a price
//! change are billed at the old price, calls after it at the new one. The
//! live settings (log level, media timeout, statistics interval) reach
//! signal and media pods the same way; versions a pod refuses roll every
//! pod back; a field read only at start rolls the signal pods.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use voicecluster_api::{LABEL_CLUSTER, LABEL_COMPONENT, VoiceCluster};
use voicecluster_e2e::config::{applied_after, config_condition, registers_within};
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
    ensure!(sipp.registers(("dave", "d1")), "dave registers");
    ensure!(!sipp.registers(("carol", "c1")), "carol is not a user yet");

    // A user added, one removed, a password changed: in the Secret only.
    set_users(client, &ns.name, &[ALICE, BOB, ("carol", "c1")]).await?;
    let took = registers_within(&sipp, ("carol", "c1"), Duration::from_secs(10)).await?;
    let second = applied_after(&vcs, NAME, first.version, 3).await?;
    ensure!(
        !sipp.registers(("dave", "d1")),
        "dave is refused once removed"
    );
    set_users(client, &ns.name, &[ALICE, BOB, ("carol", "c2")]).await?;
    let third = applied_after(&vcs, NAME, second.version, 3).await?;
    ensure!(
        sipp.registers(("carol", "c2")),
        "carol's new password works"
    );
    ensure!(
        !sipp.registers(("carol", "c1")),
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
    ensure!(sipp.registers(("carol", "c2")), "carol still registers");
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
        sipp.registers(("carol", "c2")),
        "carol registers after the rollback"
    );
    ensure!(
        !sipp.registers(("a b", "x")),
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

    // The live settings: a log level, a media timeout and a statistics
    // interval reach signal and media pods as the next version.
    // Two seconds early: the logs API takes whole seconds.
    let since =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(2);
    vcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {
            "logLevel": DEBUG_LEVEL,
            "media": {"mediaTimeoutSeconds": 20, "legStatsSeconds": 5},
        }})),
    )
    .await?;
    let fifth = applied_after(&vcs, NAME, fourth.version, 3).await?;
    let signal = names(&pods, "signal").await?;
    for pod in &signal {
        logged(
            &pods,
            pod,
            "signal",
            since,
            &["log filter swapped", DEBUG_LEVEL],
        )
        .await?;
    }
    // The filter is in force: the member carrying a call logs its legs'
    // statistics at debug level.
    sipp.spawn_calls(ports, 2, 2, 8_000)
        .await
        .context("2 calls after the settings changed end normally")?;
    eventually(
        "a member logs leg statistics at debug level",
        Duration::from_secs(30),
        || async {
            for pod in &signal {
                if logs_since(&pods, pod, "signal", since)
                    .await?
                    .lines()
                    .any(|l| l.contains(" DEBUG ") && l.contains("leg statistics"))
                {
                    return Ok(());
                }
            }
            Err("no member did".to_string())
        },
    )
    .await?;
    // Each media pod swapped its filter, retimed its legs, and got the
    // settings alone: not one user's HA1 reaches the edge node.
    let media_lines: [&[&str]; 3] = [
        &["log filter swapped", DEBUG_LEVEL],
        &["media_timeout: 20s", "statistics: Some(5s)"],
        &["configuration version received", "users=0"],
    ];
    for pod in names(&pods, "media").await? {
        for words in media_lines {
            logged(&pods, &pod, "media", since, words).await?;
        }
    }
    // A log level no pod can use: refused, every pod back to the last
    // good version, the condition naming the pod and why.
    vcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"logLevel": BAD_LEVEL}})),
    )
    .await?;
    let (status, applied) = config_condition(&vcs, NAME, "RolledBack").await?;
    let refused = status.rolled_back.clone().context("rolledBack")?;
    ensure!(
        refused.reason.contains(&format!("log level {BAD_LEVEL:?}"))
            && applied.message.contains(&refused.pod),
        "the condition names the pod and the level: {status:?} {applied:?}"
    );
    let restored = applied_after(&vcs, NAME, refused.version, 3).await?;
    ensure!(
        restored.hash == fifth.hash,
        "the settings in force before are back: {restored:?}"
    );
    vcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"logLevel": DEBUG_LEVEL}})),
    )
    .await?;
    config_condition(&vcs, NAME, "Applied").await?;

    let after = pod_identities(&pods, NAME).await?;
    ensure!(
        before == after,
        "no pod restarted or replaced: {before:?} then {after:?}"
    );

    // A field signal pods read only at start (a member's leg capacity)
    // rolls them, and the new pods start on the version in force.
    vcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"media": {"capacity": 400}}})),
    )
    .await?;
    let old_signal: Vec<String> = names(&pods, "signal")
        .await?
        .into_iter()
        .filter_map(|p| after.get(&p).map(|(uid, _)| uid.clone()))
        .collect();
    eventually(
        "every signal pod replaced",
        Duration::from_secs(300),
        || async {
            let now = pod_identities(&pods, NAME)
                .await
                .map_err(|e| e.to_string())?;
            let signal: Vec<&(String, i32)> = now
                .iter()
                .filter(|(p, _)| p.starts_with(&format!("{NAME}-signal-")))
                .map(|(_, id)| id)
                .collect();
            let replaced = signal
                .iter()
                .filter(|(uid, _)| !old_signal.contains(uid))
                .count();
            if replaced == 2 {
                Ok(())
            } else {
                Err(format!("{replaced} of 2 replaced: {now:?}"))
            }
        },
    )
    .await?;
    wait_condition(&vcs, NAME, "Ready", "True").await?;
    let rolled = applied_after(&vcs, NAME, 0, 3).await?;
    ensure!(
        rolled.version == restored.version && rolled.hash == fifth.hash,
        "the rolled pods run the version in force: {rolled:?}, not {restored:?}"
    );
    eprintln!(
        "live configuration: carol registered {took:?} after the Secret changed; versions {} to {}; \
         40 calls at the old price, 5 at the new; settings live with pods unchanged, a bad log level rolled back; a start-read field rolled the signal pods",
        first.version, rolled.version
    );
    Ok(())
}

/// The log level set live.
const DEBUG_LEVEL: &str = "info,voicecluster_signal_node=debug,voicecluster_media_node=debug";
/// A log level whose directive no pod can parse.
const BAD_LEVEL: &str = "info,voicecluster_signal_node=loud";

/// The names of the cluster's pods of `component`.
async fn names(pods: &Api<Pod>, component: &str) -> Result<Vec<String>> {
    let selector = format!("{LABEL_CLUSTER}={NAME},{LABEL_COMPONENT}={component}");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(kube::ResourceExt::name_any)
        .collect())
}

/// What `container` of `pod` logged since `since`.
async fn logs_since(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    since: k8s_openapi::jiff::Timestamp,
) -> Result<String, String> {
    let params = LogParams {
        container: Some(container.to_string()),
        since_time: Some(since),
        ..LogParams::default()
    };
    pods.logs(pod, &params).await.map_err(|e| e.to_string())
}

/// Waits until one line `container` of `pod` logged since `since` holds
/// every one of `all`.
async fn logged(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    since: k8s_openapi::jiff::Timestamp,
    all: &[&str],
) -> Result<()> {
    eventually(
        &format!("{pod}/{container} logs {all:?}"),
        Duration::from_secs(30),
        || async {
            let text = logs_since(pods, pod, container, since).await?;
            if text.lines().any(|l| all.iter().all(|w| l.contains(w))) {
                Ok(())
            } else {
                Err(format!(
                    "{} lines, none with all of them",
                    text.lines().count()
                ))
            }
        },
    )
    .await
}
