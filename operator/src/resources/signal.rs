//! The backend signal pods: a StatefulSet (stable names are the handles of
//! the calls' tasks), the headless Service that gives them those names, the
//! SIP Service in front of them and the budget that keeps a majority up.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, KeyToPath, PodSpec, PodTemplateSpec,
    SecretKeySelector, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use voicecluster_api::{
    ADMIN_PORT_NAME, COMPONENT_SIGNAL, DEFAULT_ADMIN_PORT, HEALTHZ_PATH, READYZ_PATH,
    TASK_EVENTS_PORT, VoiceCluster,
};

use super::config::{START_SETTINGS_ANNOTATION, config_volume, start_settings_hash};
use super::container::{
    common_env, empty_dir, env, http_probe, port, sip_container_ports, transport_protocol,
};
use super::meta::{
    child_name, disruption_budget, label_selector, meta, min_ready_seconds, pod_meta,
    selector_labels,
};
use super::settings::Settings;

/// Where a signal pod keeps its bills.
const DATA_DIR: &str = "/var/lib/voicecluster";

/// Port of a signal pod's management API (bills).
pub const MANAGEMENT_PORT: u16 = 8080;

/// Where a signal pod reads its users (from `spec.sip.usersSecret`).
const USERS_DIR: &str = "/var/run/voicecluster/users";

/// The headless Service `<vc>-signal`, giving signal pods stable names.
pub(super) fn headless_service(vc: &VoiceCluster, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(vc, owner, "signal", COMPONENT_SIGNAL),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector_labels(vc, COMPONENT_SIGNAL)),
            // Members must find each other before they are Ready: a new
            // member takes over calls as part of becoming ready.
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some(ADMIN_PORT_NAME.to_string()),
                port: i32::from(DEFAULT_ADMIN_PORT),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The SIP Service `<vc>-sip`: the spec's port on each of its transports.
pub(super) fn sip_service(vc: &VoiceCluster, owner: &OwnerReference) -> Service {
    let sip = &vc.spec.sip;
    let ports: Vec<ServicePort> = sip
        .transports
        .iter()
        .map(|t| {
            let proto = transport_protocol(*t);
            ServicePort {
                name: Some(format!("sip-{}", proto.to_lowercase())),
                port: sip.port,
                target_port: Some(IntOrString::Int(sip.port)),
                protocol: Some(proto.to_string()),
                ..ServicePort::default()
            }
        })
        .collect();
    Service {
        metadata: meta(vc, owner, "sip", COMPONENT_SIGNAL),
        spec: Some(ServiceSpec {
            type_: Some(format!("{:?}", sip.service_type)),
            selector: Some(selector_labels(vc, COMPONENT_SIGNAL)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The StatefulSet `<vc>-signal`.
pub(super) fn stateful_set(
    vc: &VoiceCluster,
    settings: &Settings,
    owner: &OwnerReference,
) -> StatefulSet {
    StatefulSet {
        metadata: meta(vc, owner, "signal", COMPONENT_SIGNAL),
        spec: Some(StatefulSetSpec {
            replicas: Some(vc.spec.signal.replicas),
            service_name: Some(child_name(vc, "signal")),
            // Members start and stop independently; ordering buys nothing.
            pod_management_policy: Some("Parallel".to_string()),
            min_ready_seconds: Some(min_ready_seconds(vc)),
            selector: label_selector(vc, COMPONENT_SIGNAL),
            template: PodTemplateSpec {
                metadata: pod_meta(vc, COMPONENT_SIGNAL).map(|mut m| {
                    m.annotations = Some(BTreeMap::from([(
                        START_SETTINGS_ANNOTATION.to_string(),
                        start_settings_hash(vc),
                    )]));
                    m
                }),
                spec: Some(pod_spec(vc, settings)),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Keeps a majority of signal pods through voluntary disruptions.
pub(super) fn budget(vc: &VoiceCluster, owner: &OwnerReference) -> PodDisruptionBudget {
    // With one replica there is nothing to keep: never block drains.
    let max_unavailable = (vc.spec.signal.replicas / 2).max(1);
    disruption_budget(vc, owner, COMPONENT_SIGNAL, max_unavailable)
}

/// A signal pod: its one container, its volumes and where it may run.
fn pod_spec(vc: &VoiceCluster, settings: &Settings) -> PodSpec {
    let spec = &vc.spec;
    let (config, config_mount) = config_volume(vc);
    let (data, data_mount) = data_volume();
    let mut volumes = vec![config, data];
    let mut mounts = vec![config_mount, data_mount];
    let mut vars = container_env(vc, settings);
    if let Some(secret) = &spec.sip.users_secret {
        let (v, m, users) = users_secret(secret);
        volumes.push(v);
        mounts.push(m);
        vars.extend(users);
    }
    PodSpec {
        containers: vec![Container {
            name: "signal".to_string(),
            image: Some(
                spec.signal
                    .image
                    .clone()
                    .unwrap_or_else(|| settings.images.signal.clone()),
            ),
            image_pull_policy: Some("IfNotPresent".to_string()),
            env: Some(vars),
            ports: Some(container_ports(vc)),
            readiness_probe: Some(http_probe(READYZ_PATH, 2)),
            liveness_probe: Some(http_probe(HEALTHZ_PATH, 10)),
            resources: spec.signal.resources.clone(),
            volume_mounts: Some(mounts),
            ..Container::default()
        }],
        volumes: Some(volumes),
        node_selector: (!spec.signal.node_selector.is_empty())
            .then(|| spec.signal.node_selector.clone()),
        tolerations: (!spec.signal.tolerations.is_empty()).then(|| spec.signal.tolerations.clone()),
        termination_grace_period_seconds: Some(30),
        ..PodSpec::default()
    }
}

/// The signal container's variables, but for the users Secret's.
fn container_env(vc: &VoiceCluster, settings: &Settings) -> Vec<EnvVar> {
    let mut vars = common_env(vc, settings, DEFAULT_ADMIN_PORT);
    vars.push(env(
        "VC_CALL_LEG_MODE",
        format!("{:?}", vc.spec.signal.call_leg_mode),
    ));
    vars.push(env("VC_BILLS_FILE", format!("{DATA_DIR}/bills.jsonl")));
    // The live configuration version last applied, to restart on.
    vars.push(env("VC_LIVE_CONFIG_FILE", format!("{DATA_DIR}/config.bin")));
    vars.push(env(
        "VC_MANAGEMENT_ADDR",
        format!("0.0.0.0:{MANAGEMENT_PORT}"),
    ));
    vars.push(env("VC_GRPC_ADDR", format!("0.0.0.0:{TASK_EVENTS_PORT}")));
    vars
}

/// Admin, SIP, management (bills) and task events, in that order.
fn container_ports(vc: &VoiceCluster) -> Vec<ContainerPort> {
    let mut ports = vec![port(ADMIN_PORT_NAME, DEFAULT_ADMIN_PORT, "TCP")];
    ports.extend(sip_container_ports(vc, "sip"));
    ports.push(port("management", MANAGEMENT_PORT, "TCP"));
    ports.push(port("task-events", TASK_EVENTS_PORT, "TCP"));
    ports
}

/// A signal pod's data volume. An emptyDir outlives container restarts (a
/// crash keeps its bills) but not the pod; a cluster with a storage class
/// would give each member a claim instead.
fn data_volume() -> (Volume, VolumeMount) {
    empty_dir("data", DATA_DIR)
}

/// The users Secret as a volume, and the variables pointing at it.
fn users_secret(secret: &str) -> (Volume, VolumeMount, Vec<EnvVar>) {
    let volume = Volume {
        name: "users".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(vec![KeyToPath {
                key: "users".to_string(),
                path: "users".to_string(),
                ..KeyToPath::default()
            }]),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "users".to_string(),
        mount_path: USERS_DIR.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let nonce = EnvVar {
        name: "VC_NONCE_SECRET".to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: "nonce-secret".to_string(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    (
        volume,
        mount,
        vec![env("VC_USERS_FILE", format!("{USERS_DIR}/users")), nonce],
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{owner, pod_spec, settings, vc};
    use super::super::media::{MediaWorkload, workload};
    use super::*;
    use voicecluster_api::ENV_DIRECTORY_URL;

    /// The signal objects of `voice/demo`.
    struct Objects {
        stateful_set: StatefulSet,
        sip: Service,
        headless: Service,
    }

    fn objects(spec: serde_json::Value) -> Objects {
        let vc = vc(spec);
        let owner = owner(&vc);
        Objects {
            stateful_set: stateful_set(&vc, &settings(), &owner),
            sip: sip_service(&vc, &owner),
            headless: headless_service(&vc, &owner),
        }
    }

    #[test]
    fn signal_pods_follow_the_spec() {
        let d = objects(
            serde_json::json!({"sip": {"domain": "x", "port": 5080, "transports": ["UDP"]},
                                   "signal": {"replicas": 3, "callLegMode": "Locally"}}),
        );
        let sts = d.stateful_set.spec.as_ref().unwrap();
        assert_eq!(sts.replicas, Some(3));
        // What the members read only at start rolls them when it changes.
        let annotations = sts.template.metadata.as_ref().unwrap().annotations.as_ref();
        assert!(annotations.unwrap().contains_key(START_SETTINGS_ANNOTATION));
        assert_eq!(sts.service_name.as_deref(), Some("demo-signal"));
        let c = &pod_spec(&sts.template).containers[0];
        assert_eq!(c.image.as_deref(), Some("sig:1"));
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "VC_CALL_LEG_MODE" && e.value.as_deref() == Some("Locally"))
        );
        assert!(
            env.iter().any(|e| e.name == ENV_DIRECTORY_URL
                && e.value.as_deref() == Some("http://10.252.0.9:9443"))
        );
        // Bills live on the pod's data volume.
        assert!(env.iter().any(|e| e.name == "VC_BILLS_FILE"
            && e.value.as_deref() == Some("/var/lib/voicecluster/bills.jsonl")));
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/var/lib/voicecluster")
        );
        let sip = d.sip.spec.as_ref().unwrap().ports.as_ref().unwrap();
        assert_eq!(sip.len(), 1);
        assert_eq!(
            (sip[0].port, sip[0].protocol.as_deref()),
            (5080, Some("UDP"))
        );
        assert_eq!(
            d.headless.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
    }

    #[test]
    fn a_rollout_waits_for_the_consumers_to_see_a_new_pod_before_stopping_the_next() {
        // Directory share (2 s) plus two heartbeats, rounded up.
        let wait = |spec| objects(spec).stateful_set.spec.unwrap().min_ready_seconds;
        assert_eq!(wait(serde_json::json!({"sip": {"domain": "x"}})), Some(3));
        let slow = serde_json::json!({"sip": {"domain": "x"},
                                      "failover": {"heartbeatIntervalMs": 1500}});
        assert_eq!(wait(slow.clone()), Some(5));
        let vc = vc(slow);
        let MediaWorkload::DaemonSet(ds) = workload(&vc, &settings(), &owner(&vc)) else {
            panic!("DaemonSet expected")
        };
        assert_eq!(ds.spec.unwrap().min_ready_seconds, Some(5));
    }

    #[test]
    fn signal_pods_read_users_from_the_named_secret() {
        let d = objects(serde_json::json!({"sip": {"domain": "x", "usersSecret": "voice-users"}}));
        let pod = pod_spec(&d.stateful_set.spec.as_ref().unwrap().template);
        let secret = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find_map(|v| v.secret.as_ref())
            .unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("voice-users"));
        let env = pod.containers[0].env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "VC_USERS_FILE"
            && e.value.as_deref() == Some("/var/run/voicecluster/users/users")));
        let nonce = env.iter().find(|e| e.name == "VC_NONCE_SECRET").unwrap();
        let key = nonce
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!(
            (key.name.as_str(), key.optional),
            ("voice-users", Some(true))
        );
        // Without the field, no Secret is mounted.
        let d = objects(serde_json::json!({"sip": {"domain": "x"}}));
        let pod = pod_spec(&d.stateful_set.spec.as_ref().unwrap().template);
        assert!(
            pod.volumes
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.secret.is_none())
        );
    }

    #[test]
    fn signal_pods_can_be_pinned_to_nodes() {
        let d = objects(serde_json::json!({"sip": {"domain": "x"},
                                   "signal": {"nodeSelector": {"voicecluster.io/real-node": "true"},
                                              "tolerations": [{"key": "k", "operator": "Exists"}]}}));
        let pod = pod_spec(&d.stateful_set.spec.as_ref().unwrap().template);
        assert_eq!(
            pod.node_selector
                .as_ref()
                .unwrap()
                .get("voicecluster.io/real-node"),
            Some(&"true".to_string())
        );
        assert_eq!(pod.tolerations.as_ref().unwrap().len(), 1);
        let c = &pod.containers[0];
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == "VC_GRPC_ADDR"
                    && e.value.as_deref() == Some(&format!("0.0.0.0:{TASK_EVENTS_PORT}")[..]))
        );
    }
}
