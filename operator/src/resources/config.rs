//! The configuration every pod of a VoiceCluster mounts: its spec as JSON,
//! so the pods read the same settings the operator acted on.

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
