//! Building blocks of the containers signal and media pods run: variables,
//! ports, probes and scratch volumes.

use k8s_openapi::api::core::v1::{
    ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    Probe, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use voicecluster_api::voicecluster::Transport;
use voicecluster_api::{ADMIN_PORT_NAME, ENV_ADMIN_ADDR, ENV_DIRECTORY_URL, VoiceCluster};

use super::config::CONFIG_DIR;
use super::settings::Settings;

/// A variable with a fixed value.
pub(super) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// A variable filled from the pod's own object (its name, IP, node).
fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// What every voicecluster process needs: its cluster, its configuration,
/// its admin address, who and where it is, and the Directory.
pub(super) fn common_env(vc: &VoiceCluster, settings: &Settings, admin_port: u16) -> Vec<EnvVar> {
    let mut vars = vec![
        env("VC_CLUSTER", vc.name_any()),
        env("VC_CONFIG", format!("{CONFIG_DIR}/config.json")),
        env(ENV_ADMIN_ADDR, format!("0.0.0.0:{admin_port}")),
        env_from_field("POD_NAME", "metadata.name"),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
        env_from_field("POD_IP", "status.podIP"),
        env_from_field("NODE_NAME", "spec.nodeName"),
    ];
    if let Some(url) = &settings.directory_url {
        vars.push(env(ENV_DIRECTORY_URL, url.clone()));
    }
    vars
}

/// An HTTP probe on the container's admin port.
pub(super) fn http_probe(path: &str, period: i32) -> Probe {
    probe_on(ADMIN_PORT_NAME, path, period)
}

/// Port names are unique in a pod, so a second container's admin port has
/// a name of its own.
pub(super) fn probe_on(port_name: &str, path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(port_name.to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

/// A named container port.
pub(super) fn port(name: &str, port: u16, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(port),
        protocol: Some(protocol.to_string()),
        ..ContainerPort::default()
    }
}

/// The Kubernetes protocol of a SIP transport.
pub(super) fn transport_protocol(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
    }
}

/// The SIP port on each transport of the spec, named `<prefix>-udp`/`-tcp`.
pub(super) fn sip_container_ports(vc: &VoiceCluster, prefix: &str) -> Vec<ContainerPort> {
    let sip_port = u16::try_from(vc.spec.sip.port).unwrap_or(5060);
    vc.spec
        .sip
        .transports
        .iter()
        .map(|t| {
            let proto = transport_protocol(*t);
            port(
                &format!("{prefix}-{}", proto.to_lowercase()),
                sip_port,
                proto,
            )
        })
        .collect()
}

/// An emptyDir volume `name`, mounted at `path`.
pub(super) fn empty_dir(name: &str, path: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        VolumeMount {
            name: name.to_string(),
            mount_path: path.to_string(),
            ..VolumeMount::default()
        },
    )
}
