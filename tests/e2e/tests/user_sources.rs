//! Users from a real LDAP directory (OpenLDAP's slapd, 1,000 users) and
//! from a CSV file of 10,000 rows, on the local cluster: they register
//! through the edge; a password changed in LDAP holds after an on-demand
//! resync; a directory that stops answering mid-sync gives a failed sync in
//! the status and the last good users stay; a bad CSV row is named by line.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use voicecluster_api::VoiceCluster;
use voicecluster_api::voicecluster::{LDAP_RESYNC_ANNOTATION, UserSourceStatus};
use voicecluster_e2e::config::{applied_after, config_condition, registers_within};
use voicecluster_e2e::operator::{install_operator, wait_condition};
use voicecluster_e2e::slapd::{self, Slapd};
use voicecluster_e2e::{REAL_NODE_IP, TestNamespace, client, eventually};
use voicecluster_signal_node::testing::Sipp;

const SIP_PORT: u16 = 15070;
const NAME: &str = "sources";
const LDAP_USERS: usize = 1_000;
const CSV_ROWS: usize = 10_000;
/// The line of the bad row: the header is line 1, row i is line i + 2.
const BAD_ROW: usize = 5_000;

fn voicecluster(namespace: &str, ldap_url: &str) -> Result<VoiceCluster> {
    let real = serde_json::json!({"voicecluster.io/real-node": "true"});
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "voicecluster.io/v1alpha1",
        "kind": "VoiceCluster",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "sip": {
                "domain": "voice.test", "port": SIP_PORT,
                "userSources": [
                    {"name": "corp", "ldap": {
                        "url": ldap_url, "bindSecret": "ldap-bind",
                        "baseDn": slapd::PEOPLE, "syncIntervalSeconds": 3600,
                        "timeoutSeconds": 2,
                    }},
                    {"name": "staff", "csv": {"kind": "Secret", "name": "staff-csv",
                                              "invalidRows": "Skip"}},
                ],
            },
            "signal": {"replicas": 1, "callLegMode": "Remotely", "nodeSelector": real},
            "media": {
                "nodeSelector": real,
                "rtpPortRange": {"min": 22000, "max": 22999},
                "publicAddress": {"source": "NodeAnnotation",
                                  "annotation": "voicecluster.io/public-address"},
                "drainTimeoutSeconds": 5,
            },
        },
    }))?)
}

/// 10,000 rows, one of them without its password column.
fn csv() -> String {
    let mut text = String::from("user,password,display name,enabled\n");
    for i in 0..CSV_ROWS {
        if i == BAD_ROW {
            let _ = writeln!(text, "c{i:05}");
        } else {
            let _ = writeln!(text, "c{i:05},csv-{i},Staff {i},true");
        }
    }
    text
}

async fn secret(client: &Client, ns: &str, name: &str, data: serde_json::Value) -> Result<()> {
    let s: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": data,
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await?;
    Ok(())
}

/// The status of source `name` once `check` holds for it.
async fn source_once(
    vcs: &Api<VoiceCluster>,
    name: &str,
    what: &str,
    check: impl Fn(&UserSourceStatus) -> bool,
) -> Result<UserSourceStatus> {
    eventually(what, Duration::from_secs(60), || async {
        let vc = vcs.get(NAME).await.map_err(|e| e.to_string())?;
        let sources = vc
            .status
            .and_then(|s| s.config)
            .map(|c| c.sources)
            .unwrap_or_default();
        match sources.into_iter().find(|s| s.name == name) {
            Some(s) if check(&s) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn resync(vcs: &Api<VoiceCluster>, n: u32) -> Result<()> {
    vcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
            LDAP_RESYNC_ANNOTATION: n.to_string()
        }}})),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_come_from_ldap_and_csv() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let hashed = format!(
        "dn: uid=hashed,{p}\nobjectClass: inetOrgPerson\nuid: hashed\ncn: H\nsn: H\n\
         userPassword: {{SSHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\n",
        p = slapd::PEOPLE
    );
    let mut ldap = Slapd::start(LDAP_USERS, &hashed)?;
    let ns = TestNamespace::create(&client, "sources").await?;
    let result = sources(&client, &ns, &mut ldap).await;
    ns.delete_and_wait().await?;
    result
}

async fn sources(client: &Client, ns: &TestNamespace, ldap: &mut Slapd) -> Result<()> {
    secret(
        client,
        &ns.name,
        "ldap-bind",
        serde_json::json!({"bindDN": slapd::ADMIN_DN, "password": slapd::ADMIN_PASSWORD}),
    )
    .await?;
    secret(
        client,
        &ns.name,
        "staff-csv",
        serde_json::json!({"users.csv": csv()}),
    )
    .await?;
    let vcs: Api<VoiceCluster> = ns.api();
    vcs.create(&PostParams::default(), &voicecluster(&ns.name, &ldap.url)?)
        .await?;
    wait_condition(&vcs, NAME, "Ready", "True").await?;
    let first = applied_after(&vcs, NAME, 0, 2).await?;
    let want = i32::try_from(LDAP_USERS + CSV_ROWS - 1)?;
    ensure!(first.users == want, "{want} users: {}", first.users);
    let corp = source_once(&vcs, "corp", "the LDAP source synced", |s| {
        s.state == "Ready"
    })
    .await?;
    ensure!(
        corp.users == 1_000
            && corp.entries == Some(1_001)
            && corp.invalid == 1
            && corp.errors[0].contains("uid=hashed")
            && corp.errors[0].contains("{SSHA}")
            && corp.last_success_time.is_some(),
        "1,000 users of 1,001 entries, the hashed one named: {corp:?}"
    );
    let staff = source_once(&vcs, "staff", "the CSV source read", |s| s.users > 0).await?;
    let line = format!("line {}: ", BAD_ROW + 2);
    ensure!(
        staff.users == 9_999
            && staff.invalid == 1
            && staff.errors.len() == 1
            && staff.errors[0].starts_with(&line),
        "9,999 users and the bad row by its line ({line}): {staff:?}"
    );

    let node: IpAddr = REAL_NODE_IP.parse()?;
    let sipp = Sipp::new(SocketAddr::new(node, SIP_PORT), node);
    let (u7, old) = (slapd::user(7), slapd::password(7));
    registers_within(&sipp, (&u7, &old), Duration::from_secs(10)).await?;
    let u999 = (slapd::user(999), slapd::password(999));
    ensure!(
        sipp.registers((&u999.0, &u999.1)),
        "the last LDAP user registers"
    );
    ensure!(
        sipp.registers(("c04242", "csv-4242")),
        "a CSV user registers"
    );
    ensure!(!sipp.registers(("c05000", "")), "the bad row is no user");

    // A password changed in LDAP holds after an on-demand resync.
    ldap.set_password(&u7, "pw-7-new")?;
    resync(&vcs, 1).await?;
    let second = applied_after(&vcs, NAME, first.version, 2).await?;
    ensure!(sipp.registers((&u7, "pw-7-new")), "the new password works");
    ensure!(!sipp.registers((&u7, &old)), "the old one does not");

    // The directory stops answering in the middle of the next sync.
    ldap.freeze()?;
    resync(&vcs, 2).await?;
    let stale = source_once(&vcs, "corp", "a failed LDAP sync in the status", |s| {
        s.state == "Stale"
    })
    .await?;
    ldap.stop()?;
    ensure!(
        stale.users == 1_000
            && stale
                .message
                .as_deref()
                .is_some_and(|m| m.contains("failed")),
        "the last good users stay, the failure is said: {stale:?}"
    );
    let vc = vcs.get(NAME).await?;
    let config = vc.status.and_then(|s| s.config).context("status.config")?;
    ensure!(
        config.version == second.version && config.error.is_none(),
        "no new version from a failed sync: {config:?}"
    );
    ensure!(
        sipp.registers((&u7, "pw-7-new")),
        "LDAP users still register with the directory gone"
    );

    // The CSV source now refuses bad rows: the pods keep their version and
    // the condition names the line.
    let mut spec = serde_json::to_value(&vcs.get(NAME).await?.spec)?;
    spec["sip"]["userSources"][1]["csv"]["invalidRows"] = "Reject".into();
    vcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"sip": {"userSources": spec["sip"]["userSources"]}}}),
        ),
    )
    .await?;
    let (status, applied) = config_condition(&vcs, NAME, "SourceError").await?;
    ensure!(
        status.version == second.version && applied.message.contains(&line),
        "version {} kept, the line named: {status:?} {applied:?}",
        second.version
    );
    ensure!(
        sipp.registers(("c04242", "csv-4242")),
        "CSV users keep registering"
    );
    eprintln!(
        "user sources: {} users from LDAP and CSV; LDAP password change at version {}; \
         failed sync kept version {}; bad CSV row: {}",
        first.users, second.version, config.version, staff.errors[0]
    );
    Ok(())
}
