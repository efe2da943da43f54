//! The objects a VoiceCluster becomes, as pure functions of its spec: the
//! reconciler applies them with server-side apply, tests inspect them
//! without an API server.
//!
//! One module per part of the cluster: `config` (what every pod mounts),
//! `signal` (the backend pods and their Services) and `media` (the edge
//! pods); `meta` and `container` hold what they share. They stay private:
//! [`desired`] is the one way in, so every object gets its owner.

mod config;
mod container;
#[cfg(test)]
mod fixtures;
mod media;
mod meta;
mod settings;
mod signal;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use voicecluster_api::VoiceCluster;

pub use media::MediaWorkload;
pub use meta::{child_name, selector_labels};
pub use settings::{Images, Settings};
pub use signal::MANAGEMENT_PORT;

/// Why a VoiceCluster cannot be turned into objects.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The object has no name, namespace or uid yet (not from the API server).
    #[error("the VoiceCluster has no {0}")]
    MissingMetadata(&'static str),
    /// The configuration could not be serialised.
    #[error("cannot serialise the pods' configuration")]
    Config(#[source] serde_json::Error),
}

/// Everything one VoiceCluster owns.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Configuration every pod mounts.
    pub config: ConfigMap,
    /// Headless Service giving signal pods stable names (task handles).
    pub signal_headless: Service,
    /// The SIP Service.
    pub sip: Service,
    /// Signal pods.
    pub signal: StatefulSet,
    /// Media pods.
    pub media: MediaWorkload,
    /// Keeps a majority of signal pods through voluntary disruptions.
    pub signal_pdb: PodDisruptionBudget,
    /// Lets only one media pod drain at a time.
    pub media_pdb: PodDisruptionBudget,
}

/// The objects for `vc`, owned by it.
pub fn desired(vc: &VoiceCluster, settings: &Settings) -> Result<Desired, BuildError> {
    vc.metadata
        .name
        .as_ref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    vc.metadata
        .namespace
        .as_ref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let owner = vc
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    Ok(Desired {
        config: config::config_map(vc, &owner).map_err(BuildError::Config)?,
        signal_headless: signal::headless_service(vc, &owner),
        sip: signal::sip_service(vc, &owner),
        signal: signal::stateful_set(vc, settings, &owner),
        media: media::workload(vc, settings, &owner),
        signal_pdb: signal::budget(vc, &owner),
        media_pdb: media::budget(vc, &owner),
    })
}

#[cfg(test)]
mod tests {
    use super::fixtures::{settings, vc};
    use super::*;

    #[test]
    fn everything_is_owned_by_the_voicecluster() {
        let d = desired(
            &vc(serde_json::json!({"sip": {"domain": "x"}})),
            &settings(),
        )
        .unwrap();
        let MediaWorkload::DaemonSet(ds) = &d.media else {
            panic!("default placement is a DaemonSet")
        };
        for m in [
            &d.config.metadata,
            &d.signal_headless.metadata,
            &d.sip.metadata,
            &d.signal.metadata,
            &ds.metadata,
            &d.signal_pdb.metadata,
            &d.media_pdb.metadata,
        ] {
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("VoiceCluster", "1234")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(m.namespace.as_deref(), Some("voice"));
        }
    }

    #[test]
    fn a_voicecluster_without_uid_is_refused() {
        let mut v = vc(serde_json::json!({"sip": {"domain": "x"}}));
        v.metadata.uid = None;
        assert!(matches!(
            desired(&v, &settings()),
            Err(BuildError::MissingMetadata("uid"))
        ));
    }
}
