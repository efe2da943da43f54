//! What the tests of the object builders share besides the crate's
//! fixtures: the operator's settings and the owner reference.

use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use voicecluster_api::VoiceCluster;

pub(super) use crate::fixtures::vc;

use super::settings::{Images, Settings};

/// The reference its objects carry.
pub(super) fn owner(vc: &VoiceCluster) -> OwnerReference {
    vc.controller_owner_ref(&()).unwrap()
}

/// Settings with a Directory URL, so the variables pointing at it show.
pub(super) fn settings() -> Settings {
    Settings {
        images: Images {
            signal: "sig:1".into(),
            media: "med:1".into(),
        },
        directory_url: Some("http://10.252.0.9:9443".into()),
    }
}

/// The pod a workload's template makes.
pub(super) fn pod_spec(t: &PodTemplateSpec) -> &PodSpec {
    t.spec.as_ref().unwrap()
}
