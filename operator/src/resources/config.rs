//! The configuration every pod of a VoiceCluster mounts: its spec as JSON,
//! so the pods read the same settings the operator acted on; and the hash of
//! the part signal pods read only when they start, which their template
//! carries so that a change to that part rolls them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use voicecluster_api::{COMPONENT_SIGNAL, VoiceCluster};

use super::meta::{child_name, meta};

/// Where pods find the configuration.
pub(super) const CONFIG_DIR: &str = "/etc/voicecluster";

/// The ConfigMap `<vc>-config`, holding the spec as `config.json`.
pub(super) fn config_map(
    vc: &VoiceCluster,
    owner: &OwnerReference,
) -> Result<ConfigMap, serde_json::Error> {
    Ok(ConfigMap {
        metadata: meta(vc, owner, "config", COMPONENT_SIGNAL),
        data: Some(BTreeMap::from([(
            "config.json".to_string(),
            serde_json::to_string_pretty(&vc.spec)?,
        )])),
        ..ConfigMap::default()
    })
}

/// The ConfigMap as a volume, and its read-only mount at [`CONFIG_DIR`].
pub(super) fn config_volume(vc: &VoiceCluster) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "config".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: child_name(vc, "config"),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "config".to_string(),
            mount_path: CONFIG_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// The signal pod template annotation holding [`start_settings_hash`].
pub(super) const START_SETTINGS_ANNOTATION: &str = "voicecluster.io/start-settings";

/// A hash of the fields of `config.json` that signal pods read when they
/// start and never again. The file is all of the spec, but only these
/// fields roll the pods: scaling, a media setting, a price, the log level
/// or a failover setting must not restart a member (rates, users and the
/// live settings reach running members as live configuration; the failover
/// mode comes with the Directory; the heartbeat settings are the edges').
/// Media pods and their edges get all they read at start through their
/// template (variables), which rolls them by itself; what they apply live
/// is not in it. The domain is the digest realm, which every user's HA1 is
/// made with; the RTP ports and capacity size a member's own legs.
pub(super) fn start_settings_hash(vc: &VoiceCluster) -> String {
    let s = &vc.spec;
    let read = serde_json::json!({
        "sipPort": s.sip.port,
        "domain": s.sip.domain,
        "rtpPortRange": s.media.rtp_port_range,
        "capacity": s.media.capacity,
        "callLegMode": s.signal.call_leg_mode,
    });
    // FNV-1a over the JSON (serde_json sorts object keys): the same on
    // every operator replica and version.
    let hash = read
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::vc;
    use super::*;

    fn hash(spec: serde_json::Value) -> String {
        start_settings_hash(&vc(spec))
    }

    #[test]
    fn live_settings_and_failover_settings_roll_no_member() {
        let base = hash(serde_json::json!({"sip": {"domain": "x"}}));
        let live = hash(serde_json::json!({
            "sip": {"domain": "x"},
            "logLevel": "debug",
            "media": {"mediaTimeoutSeconds": 90, "legStatsSeconds": 0},
            "failover": {"mode": "Manual", "heartbeatIntervalMs": 500, "failureThreshold": 5}
        }));
        assert_eq!(live, base);
    }

    #[test]
    fn every_setting_members_read_at_start_changes_the_hash() {
        let base = hash(serde_json::json!({"sip": {"domain": "x"}}));
        for changed in [
            serde_json::json!({"sip": {"domain": "x", "port": 5070}}),
            serde_json::json!({"sip": {"domain": "x"}, "media": {"rtpPortRange": {"min": 30000, "max": 30999}}}),
            serde_json::json!({"sip": {"domain": "x"}, "media": {"capacity": 10}}),
        ] {
            assert_ne!(hash(changed.clone()), base, "{changed}");
        }
    }

    #[test]
    fn only_the_settings_members_read_at_start_change_the_hash() {
        let base = hash(serde_json::json!({"sip": {"domain": "x"}}));
        // Scaling, a media pod setting or a price rolls no member: prices
        // reach running members as live configuration.
        let scaled = hash(serde_json::json!({
            "sip": {"domain": "x"}, "signal": {"replicas": 5},
            "media": {"drainTimeoutSeconds": 5},
            "billing": {"rates": [{"prefix": "", "pricePerMinute": "0.02"}]}
        }));
        assert_eq!(scaled, base);
        // The domain (the digest realm) and the leg mode: read at start.
        assert_ne!(hash(serde_json::json!({"sip": {"domain": "y"}})), base);
        let mode =
            serde_json::json!({"sip": {"domain": "x"}, "signal": {"callLegMode": "Locally"}});
        assert_ne!(hash(mode), base);
    }
}
