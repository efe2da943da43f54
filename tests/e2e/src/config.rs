//! Watching a VoiceCluster's live configuration, and phones registering
//! against it: what the live-configuration tests share.

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use voicecluster_api::VoiceCluster;
use voicecluster_api::voicecluster::ConfigStatus;
use voicecluster_signal_node::testing::Sipp;

use crate::eventually;

/// The configuration status and the `ConfigApplied` condition once its
/// reason is `reason`.
pub async fn config_condition(
    vcs: &Api<VoiceCluster>,
    name: &str,
    reason: &str,
) -> Result<(ConfigStatus, Condition)> {
    eventually(
        &format!("ConfigApplied with reason {reason}"),
        Duration::from_secs(30),
        || async {
            let vc = vcs.get(name).await.map_err(|e| e.to_string())?;
            let status = vc.status.unwrap_or_default();
            let c = status
                .conditions
                .iter()
                .find(|c| c.type_ == "ConfigApplied")
                .cloned();
            match c {
                Some(c) if c.reason == reason => Ok((status.config.unwrap_or_default(), c)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// The configuration status once `pods` pods (signal and media) applied a version
/// newer than `after`.
pub async fn applied_after(
    vcs: &Api<VoiceCluster>,
    name: &str,
    after: i64,
    pods: i32,
) -> Result<ConfigStatus> {
    eventually(
        &format!("{pods} pods on a configuration version after {after}"),
        Duration::from_secs(30),
        || async {
            let vc = vcs.get(name).await.map_err(|e| e.to_string())?;
            let c = vc.status.and_then(|s| s.config).unwrap_or_default();
            if c.version > after && c.current_pods == pods && c.error.is_none() {
                Ok(c)
            } else {
                Err(format!("{c:?}"))
            }
        },
    )
    .await
}

/// Retries until `user` registers; how long it took.
pub async fn registers_within(
    sipp: &Sipp,
    user: (&str, &str),
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let (s, u) = (sipp.clone(), (user.0.to_string(), user.1.to_string()));
        if tokio::task::spawn_blocking(move || s.registers((&u.0, &u.1))).await? {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{} did not register within {limit:?}", user.0)
}
