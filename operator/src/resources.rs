//! The objects a VoiceCluster becomes, as pure functions of its spec: the
//! reconciler applies them with server-side apply, tests inspect them
//! without an API server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    RollingUpdateDaemonSet, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, SecretKeySelector, SecretVolumeSource, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use voicecluster_api::voicecluster::{PlacementKind, Transport};
use voicecluster_api::{
    ADMIN_PORT_NAME, COMPONENT_MEDIA, COMPONENT_SIGNAL, DEFAULT_ADMIN_PORT, EDGE_ADMIN_PORT,
    ENV_ADMIN_ADDR, ENV_DIRECTORY_URL, ENV_INSTANCE_DIR, ENV_PORT_SLOT_FILE, ENV_PORT_SLOTS,
    HEALTHZ_PATH, LABEL_CLUSTER, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGER_NAME, MEDIA_ADMIN_PORT,
    MEDIA_GRPC_PORT, READYZ_PATH, TASK_EVENTS_PORT, VoiceCluster,
};

/// Images the operator uses when a VoiceCluster names none.
#[derive(Clone, Debug)]
pub struct Images {
    /// signal-node image.
    pub signal: String,
    /// media-node image.
    pub media: String,
}

/// Operator-wide settings that shape the objects.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Default images.
    pub images: Images,
    /// Where pods reach the Directory; pods get no address when unset.
    pub directory_url: Option<String>,
}

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

/// The media workload: one of the two placements.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaWorkload {
    /// One pod on every eligible node.
    DaemonSet(Box<DaemonSet>),
    /// A fixed number of pods.
    Deployment(Box<Deployment>),
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

/// Name of an owned object: `<vc>-<suffix>`.
pub fn child_name(vc: &VoiceCluster, suffix: &str) -> String {
    format!("{}-{suffix}", vc.name_any())
}

/// Labels that select one component's pods of one VoiceCluster.
pub fn selector_labels(vc: &VoiceCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CLUSTER.to_string(), vc.name_any()),
        (LABEL_COMPONENT.to_string(), component.to_string()),
    ])
}

fn labels(vc: &VoiceCluster, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(vc, component);
    l.insert(LABEL_MANAGED_BY.to_string(), MANAGER_NAME.to_string());
    l.insert(
        "app.kubernetes.io/name".to_string(),
        "voicecluster".to_string(),
    );
    l.insert("app.kubernetes.io/instance".to_string(), vc.name_any());
    l
}

fn meta(vc: &VoiceCluster, owner: &OwnerReference, suffix: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(child_name(vc, suffix)),
        namespace: vc.namespace(),
        labels: Some(labels(vc, component)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

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

fn http_probe(path: &str, period: i32) -> Probe {
    probe_on(ADMIN_PORT_NAME, path, period)
}

/// Port names are unique in a pod, so a second container's admin port has
/// a name of its own.
fn probe_on(port_name: &str, path: &str, period: i32) -> Probe {
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

/// The media container's program (its instance file has its name).
const MEDIA_BINARY: &str = "media-node";

/// Where a media pod's containers write the addresses they listen on.
const INSTANCE_DIR: &str = "/run/voicecluster/instance";

/// Port slots a process of a media pod on the node's network may take: the
/// pod and its successor run side by side during a surge rollout (with a
/// margin for a rollout that is itself replaced half-way).
const HOST_NETWORK_PORT_SLOTS: u16 = 4;

/// The emptyDir shared by a media pod's containers for their instance files.
fn instance_volume() -> (Volume, VolumeMount) {
    empty_dir("instance", INSTANCE_DIR)
}

/// An emptyDir volume `name`, mounted at `path`.
fn empty_dir(name: &str, path: &str) -> (Volume, VolumeMount) {
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

/// Fits a media pod's container (running `binary`) for its pod's network.
/// Every container records its listening addresses in the shared instance
/// directory. On the node's network a pod's successor starts beside it on
/// the same node (a surge rollout), so nothing may claim fixed host ports:
/// no declared ports (they would be host ports the scheduler keeps
/// exclusive), listeners in the first free port slot, and probes that ask
/// the process itself where it listens.
fn fit_to_network(c: &mut Container, binary: &str, host_network: bool, mount: VolumeMount) {
    let vars = c.env.get_or_insert_with(Vec::new);
    vars.push(env(ENV_INSTANCE_DIR, INSTANCE_DIR.to_string()));
    c.volume_mounts.get_or_insert_with(Vec::new).push(mount);
    if !host_network {
        return;
    }
    vars.push(env(ENV_PORT_SLOTS, HOST_NETWORK_PORT_SLOTS.to_string()));
    if binary != MEDIA_BINARY {
        // The pod's ports go together: the edge takes the media node's slot.
        vars.push(env(
            ENV_PORT_SLOT_FILE,
            format!("{INSTANCE_DIR}/{MEDIA_BINARY}"),
        ));
    }
    c.ports = None;
    let exec = |path: &str, period: i32| Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                binary.to_string(),
                "probe".to_string(),
                path.to_string(),
            ]),
        }),
        period_seconds: Some(period),
        // The probe is a process of its own: room for it to start on a
        // busy node, beyond its one-second HTTP ask.
        timeout_seconds: Some(3),
        ..Probe::default()
    };
    c.readiness_probe = Some(exec(READYZ_PATH, 1));
    c.liveness_probe = Some(exec(HEALTHZ_PATH, 10));
}

fn port(name: &str, port: u16, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(port),
        protocol: Some(protocol.to_string()),
        ..ContainerPort::default()
    }
}

const CONFIG_DIR: &str = "/etc/voicecluster";

/// Where a signal pod keeps its bills.
const DATA_DIR: &str = "/var/lib/voicecluster";

/// Port of a signal pod's management API (bills).
pub const MANAGEMENT_PORT: u16 = 8080;

/// Where a signal pod reads its users (from `spec.sip.usersSecret`).
const USERS_DIR: &str = "/var/run/voicecluster/users";

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

/// A signal pod's data volume. An emptyDir outlives container restarts (a
/// crash keeps its bills) but not the pod; a cluster with a storage class
/// would give each member a claim instead.
fn data_volume() -> (Volume, VolumeMount) {
    empty_dir("data", DATA_DIR)
}

fn config_volume(vc: &VoiceCluster) -> (Volume, VolumeMount) {
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

const EDGE_ADMIN_PORT_NAME: &str = "edge-admin";

/// The SIP port on each transport of the spec, named `<prefix>-udp`/`-tcp`.
fn sip_container_ports(vc: &VoiceCluster, prefix: &str) -> Vec<ContainerPort> {
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

/// The SIP front door beside each media pod's relay: the `signal-node`
/// image in its edge role, on the pod's (the node's) network.
fn edge_container(vc: &VoiceCluster, settings: &Settings, config: VolumeMount) -> Container {
    let spec = &vc.spec;
    let mut edge_env = common_env(vc, settings, EDGE_ADMIN_PORT);
    edge_env.push(env("VC_SIP_ADDR", format!("0.0.0.0:{}", spec.sip.port)));
    edge_env.push(env(
        "VC_HEARTBEAT_INTERVAL_MS",
        spec.failover.heartbeat_interval_ms.to_string(),
    ));
    edge_env.push(env(
        "VC_FAILURE_THRESHOLD",
        spec.failover.failure_threshold.to_string(),
    ));
    // On its way out the edge stays while the media node beside it (the
    // same network namespace) drains the pod's calls.
    edge_env.push(env(
        "VC_EDGE_MEDIA_ADMIN",
        format!("127.0.0.1:{MEDIA_ADMIN_PORT}"),
    ));
    // Where the media node beside it says it listens (its admin port may be
    // in another slot).
    edge_env.push(env(
        "VC_EDGE_MEDIA_INSTANCE",
        format!("{INSTANCE_DIR}/{MEDIA_BINARY}"),
    ));
    edge_env.push(env(
        "VC_EDGE_DRAIN_SECONDS",
        (i64::from(spec.media.drain_timeout_seconds) + 5).to_string(),
    ));
    let mut ports = vec![port(EDGE_ADMIN_PORT_NAME, EDGE_ADMIN_PORT, "TCP")];
    ports.extend(sip_container_ports(vc, "edge"));
    Container {
        name: "sip-edge".to_string(),
        image: Some(
            spec.sip
                .edge_image
                .clone()
                .or_else(|| spec.signal.image.clone())
                .unwrap_or_else(|| settings.images.signal.clone()),
        ),
        image_pull_policy: Some("IfNotPresent".to_string()),
        args: Some(vec!["edge".to_string()]),
        env: Some(edge_env),
        ports: Some(ports),
        readiness_probe: Some(probe_on(EDGE_ADMIN_PORT_NAME, READYZ_PATH, 1)),
        liveness_probe: Some(probe_on(EDGE_ADMIN_PORT_NAME, HEALTHZ_PATH, 10)),
        volume_mounts: Some(vec![config]),
        ..Container::default()
    }
}

fn common_env(vc: &VoiceCluster, settings: &Settings, admin_port: u16) -> Vec<EnvVar> {
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
    let spec = &vc.spec;

    let config = ConfigMap {
        metadata: meta(vc, &owner, "config", COMPONENT_SIGNAL),
        data: Some(BTreeMap::from([(
            "config.json".to_string(),
            serde_json::to_string_pretty(spec).map_err(BuildError::Config)?,
        )])),
        ..ConfigMap::default()
    };

    let signal_selector = selector_labels(vc, COMPONENT_SIGNAL);
    let signal_headless = Service {
        metadata: meta(vc, &owner, "signal", COMPONENT_SIGNAL),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(signal_selector.clone()),
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
    };

    let sip_ports: Vec<ServicePort> = spec
        .sip
        .transports
        .iter()
        .map(|t| {
            let proto = transport_protocol(*t);
            ServicePort {
                name: Some(format!("sip-{}", proto.to_lowercase())),
                port: spec.sip.port,
                target_port: Some(IntOrString::Int(spec.sip.port)),
                protocol: Some(proto.to_string()),
                ..ServicePort::default()
            }
        })
        .collect();
    let sip = Service {
        metadata: meta(vc, &owner, "sip", COMPONENT_SIGNAL),
        spec: Some(ServiceSpec {
            type_: Some(format!("{:?}", spec.sip.service_type)),
            selector: Some(signal_selector.clone()),
            ports: Some(sip_ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let (volume, mount) = config_volume(vc);
    let mut signal_ports = vec![port(ADMIN_PORT_NAME, DEFAULT_ADMIN_PORT, "TCP")];
    signal_ports.extend(sip_container_ports(vc, "sip"));
    let mut signal_env = common_env(vc, settings, DEFAULT_ADMIN_PORT);
    signal_env.push(env(
        "VC_CALL_LEG_MODE",
        format!("{:?}", spec.signal.call_leg_mode),
    ));
    signal_env.push(env("VC_BILLS_FILE", format!("{DATA_DIR}/bills.jsonl")));
    signal_env.push(env(
        "VC_MANAGEMENT_ADDR",
        format!("0.0.0.0:{MANAGEMENT_PORT}"),
    ));
    signal_ports.push(port("management", MANAGEMENT_PORT, "TCP"));
    signal_ports.push(port("task-events", TASK_EVENTS_PORT, "TCP"));
    signal_env.push(env("VC_GRPC_ADDR", format!("0.0.0.0:{TASK_EVENTS_PORT}")));
    let (data, data_mount) = data_volume();
    let mut signal_volumes = vec![volume.clone(), data];
    let mut signal_mounts = vec![mount.clone(), data_mount];
    if let Some(secret) = &spec.sip.users_secret {
        let (v, m, vars) = users_secret(secret);
        signal_volumes.push(v);
        signal_mounts.push(m);
        signal_env.extend(vars);
    }
    let signal = StatefulSet {
        metadata: meta(vc, &owner, "signal", COMPONENT_SIGNAL),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.signal.replicas),
            service_name: Some(child_name(vc, "signal")),
            // Members start and stop independently; ordering buys nothing.
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(signal_selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(vc, COMPONENT_SIGNAL)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "signal".to_string(),
                        image: Some(
                            spec.signal
                                .image
                                .clone()
                                .unwrap_or_else(|| settings.images.signal.clone()),
                        ),
                        image_pull_policy: Some("IfNotPresent".to_string()),
                        env: Some(signal_env),
                        ports: Some(signal_ports),
                        readiness_probe: Some(http_probe(READYZ_PATH, 2)),
                        liveness_probe: Some(http_probe(HEALTHZ_PATH, 10)),
                        resources: spec.signal.resources.clone(),
                        volume_mounts: Some(signal_mounts),
                        ..Container::default()
                    }],
                    volumes: Some(signal_volumes),
                    node_selector: (!spec.signal.node_selector.is_empty())
                        .then(|| spec.signal.node_selector.clone()),
                    tolerations: (!spec.signal.tolerations.is_empty())
                        .then(|| spec.signal.tolerations.clone()),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };

    let media_selector = selector_labels(vc, COMPONENT_MEDIA);
    let mut media_env = common_env(vc, settings, MEDIA_ADMIN_PORT);
    media_env.push(env("VC_GRPC_ADDR", format!("0.0.0.0:{MEDIA_GRPC_PORT}")));
    media_env.push(env(
        "VC_RTP_PORTS",
        format!(
            "{}-{}",
            spec.media.rtp_port_range.min, spec.media.rtp_port_range.max
        ),
    ));
    media_env.push(env("VC_CAPACITY", spec.media.capacity.to_string()));
    // The process drains within the pod's grace period (drain timeout + 10 s).
    media_env.push(env(
        "VC_DRAIN_TIMEOUT_SECONDS",
        spec.media.drain_timeout_seconds.to_string(),
    ));
    let mut media_containers = vec![Container {
        name: "media".to_string(),
        image: Some(
            spec.media
                .image
                .clone()
                .unwrap_or_else(|| settings.images.media.clone()),
        ),
        image_pull_policy: Some("IfNotPresent".to_string()),
        env: Some(media_env),
        ports: Some(vec![
            port(ADMIN_PORT_NAME, MEDIA_ADMIN_PORT, "TCP"),
            port("grpc", MEDIA_GRPC_PORT, "TCP"),
        ]),
        readiness_probe: Some(http_probe(READYZ_PATH, 1)),
        liveness_probe: Some(http_probe(HEALTHZ_PATH, 10)),
        resources: spec.media.resources.clone(),
        volume_mounts: Some(vec![mount.clone()]),
        ..Container::default()
    }];
    if spec.sip.edge {
        media_containers.push(edge_container(vc, settings, mount.clone()));
    }
    let (instance, instance_mount) = instance_volume();
    for c in &mut media_containers {
        let binary = if c.name == "media" {
            MEDIA_BINARY
        } else {
            "signal-node"
        };
        fit_to_network(c, binary, spec.media.host_network, instance_mount.clone());
    }
    let media_template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(vc, COMPONENT_MEDIA)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            host_network: Some(spec.media.host_network),
            dns_policy: Some(
                if spec.media.host_network {
                    "ClusterFirstWithHostNet"
                } else {
                    "ClusterFirst"
                }
                .to_string(),
            ),
            node_selector: Some(spec.media.node_selector.clone()),
            tolerations: (!spec.media.tolerations.is_empty())
                .then(|| spec.media.tolerations.clone()),
            containers: media_containers,
            volumes: Some(vec![volume, instance]),
            // The drain (legs end or the timeout passes) happens inside
            // the grace period.
            termination_grace_period_seconds: Some(
                i64::from(spec.media.drain_timeout_seconds) + 10,
            ),
            ..PodSpec::default()
        }),
    };
    let media_label_selector = LabelSelector {
        match_labels: Some(media_selector.clone()),
        ..LabelSelector::default()
    };
    let media = match spec.media.placement.kind {
        PlacementKind::DaemonSet => MediaWorkload::DaemonSet(Box::new(DaemonSet {
            metadata: meta(vc, &owner, "media", COMPONENT_MEDIA),
            spec: Some(DaemonSetSpec {
                selector: media_label_selector,
                template: media_template,
                // The new pod starts beside the old one on each node and
                // takes the SIP port over from it once ready (the edges
                // share it); the old one then drains its calls. A node is
                // never without a front door.
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".to_string()),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_surge: Some(IntOrString::Int(1)),
                        max_unavailable: Some(IntOrString::Int(0)),
                    }),
                }),
                ..DaemonSetSpec::default()
            }),
            ..DaemonSet::default()
        })),
        PlacementKind::Deployment => MediaWorkload::Deployment(Box::new(Deployment {
            metadata: meta(vc, &owner, "media", COMPONENT_MEDIA),
            spec: Some(DeploymentSpec {
                replicas: Some(spec.media.placement.replicas.unwrap_or(1)),
                selector: media_label_selector,
                template: media_template,
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        })),
    };

    let pdb = |suffix: &str, component: &str, spec: PodDisruptionBudgetSpec| PodDisruptionBudget {
        metadata: meta(vc, &owner, suffix, component),
        spec: Some(spec),
        ..PodDisruptionBudget::default()
    };
    let signal_pdb = pdb(
        "signal",
        COMPONENT_SIGNAL,
        PodDisruptionBudgetSpec {
            // With one replica there is nothing to keep: never block drains.
            max_unavailable: Some(IntOrString::Int((spec.signal.replicas / 2).max(1))),
            selector: Some(LabelSelector {
                match_labels: Some(signal_selector),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        },
    );
    let media_pdb = pdb(
        "media",
        COMPONENT_MEDIA,
        PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(media_selector),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        },
    );

    Ok(Desired {
        config,
        signal_headless,
        sip,
        signal,
        media,
        signal_pdb,
        media_pdb,
    })
}

fn transport_protocol(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc(spec: serde_json::Value) -> VoiceCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "voicecluster.io/v1alpha1", "kind": "VoiceCluster",
            "metadata": {"name": "demo", "namespace": "voice", "uid": "1234"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn settings() -> Settings {
        Settings {
            images: Images {
                signal: "sig:1".into(),
                media: "med:1".into(),
            },
            directory_url: Some("http://10.252.0.9:9443".into()),
        }
    }

    fn pod_spec(t: &PodTemplateSpec) -> &PodSpec {
        t.spec.as_ref().unwrap()
    }

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
    fn signal_pods_follow_the_spec() {
        let d = desired(
            &vc(
                serde_json::json!({"sip": {"domain": "x", "port": 5080, "transports": ["UDP"]},
                                   "signal": {"replicas": 3, "callLegMode": "Locally"}}),
            ),
            &settings(),
        )
        .unwrap();
        let sts = d.signal.spec.as_ref().unwrap();
        assert_eq!(sts.replicas, Some(3));
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
            d.signal_headless
                .spec
                .as_ref()
                .unwrap()
                .cluster_ip
                .as_deref(),
            Some("None")
        );
    }

    #[test]
    fn signal_pods_read_users_from_the_named_secret() {
        let d = desired(
            &vc(serde_json::json!({"sip": {"domain": "x", "usersSecret": "voice-users"}})),
            &settings(),
        )
        .unwrap();
        let pod = pod_spec(&d.signal.spec.as_ref().unwrap().template);
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
        let d = desired(
            &vc(serde_json::json!({"sip": {"domain": "x"}})),
            &settings(),
        )
        .unwrap();
        let pod = pod_spec(&d.signal.spec.as_ref().unwrap().template);
        assert!(
            pod.volumes
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.secret.is_none())
        );
    }

    #[test]
    fn media_pods_go_to_the_selected_nodes_on_the_host_network() {
        let d = desired(
            &vc(serde_json::json!({"sip": {"domain": "x"},
                                   "media": {"image": "custom:2", "rtpPortRange": {"min": 30000, "max": 30099}}})),
            &settings(),
        )
        .unwrap();
        let MediaWorkload::DaemonSet(ds) = &d.media else {
            panic!("DaemonSet expected")
        };
        let spec = pod_spec(&ds.spec.as_ref().unwrap().template);
        assert_eq!(
            spec.node_selector
                .as_ref()
                .unwrap()
                .get("voicecluster.io/internet-facing")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(spec.host_network, Some(true));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("custom:2"));
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "VC_RTP_PORTS" && e.value.as_deref() == Some("30000-30099"))
        );
        assert!(env.iter().any(|e| e.name == ENV_DIRECTORY_URL));

        // The successor starts beside the pod on its node: no host ports,
        // listeners in free slots, probes that ask the process.
        let strategy = ds.spec.as_ref().unwrap().update_strategy.as_ref().unwrap();
        let rolling = strategy.rolling_update.as_ref().unwrap();
        assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
        for (c, binary) in spec.containers.iter().zip(["media-node", "signal-node"]) {
            assert_eq!(c.ports, None, "{} declares host ports", c.name);
            let env = c.env.as_ref().unwrap();
            let var = |n: &str| env.iter().find(|e| e.name == n)?.value.clone();
            assert_eq!(var(ENV_PORT_SLOTS).as_deref(), Some("4"));
            assert_eq!(var(ENV_INSTANCE_DIR).as_deref(), Some(INSTANCE_DIR));
            // One slot per pod: the edge takes the media node's.
            assert_eq!(
                var(ENV_PORT_SLOT_FILE),
                (binary == "signal-node").then(|| format!("{INSTANCE_DIR}/media-node"))
            );
            let command = |p: &Option<Probe>| p.as_ref()?.exec.as_ref()?.command.clone();
            assert_eq!(
                command(&c.readiness_probe),
                Some(vec![binary.to_string(), "probe".into(), READYZ_PATH.into()])
            );
            assert_eq!(
                command(&c.liveness_probe),
                Some(vec![
                    binary.to_string(),
                    "probe".into(),
                    HEALTHZ_PATH.into()
                ])
            );
            assert!(
                c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.mount_path == INSTANCE_DIR)
            );
        }

        // On the pod network the ports are the pod's own: declared, probed.
        let d = desired(
            &vc(serde_json::json!({"sip": {"domain": "x"}, "media": {"hostNetwork": false}})),
            &settings(),
        )
        .unwrap();
        let MediaWorkload::DaemonSet(ds) = &d.media else {
            panic!("DaemonSet expected")
        };
        let spec = pod_spec(&ds.spec.as_ref().unwrap().template);
        for c in &spec.containers {
            assert!(c.ports.is_some());
            assert!(c.readiness_probe.as_ref().unwrap().http_get.is_some());
            assert!(!c.env.iter().flatten().any(|e| e.name == ENV_PORT_SLOTS));
        }
    }

    #[test]
    fn media_pods_carry_the_sip_edge_unless_turned_off() {
        let d = desired(
            // On the pod network, where the containers declare their ports.
            &vc(serde_json::json!({"sip": {"domain": "x", "port": 15060},
                                   "signal": {"image": "sig:3"},
                                   "media": {"hostNetwork": false}})),
            &settings(),
        )
        .unwrap();
        let MediaWorkload::DaemonSet(ds) = &d.media else {
            panic!("DaemonSet expected")
        };
        let spec = pod_spec(&ds.spec.as_ref().unwrap().template);
        let edge = spec
            .containers
            .iter()
            .find(|c| c.name == "sip-edge")
            .expect("an edge container");
        assert_eq!(edge.image.as_deref(), Some("sig:3"));
        let media_env = spec.containers[0].env.as_ref().unwrap();
        assert!(media_env.iter().any(|e| e.name == "VC_DRAIN_TIMEOUT_SECONDS"
            && e.value.as_deref() == Some("3600")));
        assert_eq!(edge.args.as_deref(), Some(&["edge".to_string()][..]));
        let env = edge.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "VC_SIP_ADDR" && e.value.as_deref() == Some("0.0.0.0:15060"))
        );
        assert!(env.iter().any(|e| e.name == ENV_DIRECTORY_URL));
        // The heartbeats run as the spec's failover settings say.
        assert!(
            env.iter()
                .any(|e| e.name == "VC_HEARTBEAT_INTERVAL_MS" && e.value.as_deref() == Some("200"))
        );
        assert!(
            env.iter()
                .any(|e| e.name == "VC_FAILURE_THRESHOLD" && e.value.as_deref() == Some("3"))
        );
        // It drains with the media node beside it, inside the grace period.
        assert!(env.iter().any(
            |e| e.name == "VC_EDGE_MEDIA_ADMIN" && e.value.as_deref() == Some("127.0.0.1:9091")
        ));
        assert!(
            env.iter()
                .any(|e| e.name == "VC_EDGE_DRAIN_SECONDS" && e.value.as_deref() == Some("3605"))
        );
        let pinned = desired(
            &vc(
                serde_json::json!({"sip": {"domain": "x", "edgeImage": "sig:2"},
                                   "signal": {"image": "sig:3"}}),
            ),
            &settings(),
        )
        .unwrap();
        let MediaWorkload::DaemonSet(pinned) = &pinned.media else {
            panic!("DaemonSet expected")
        };
        assert_eq!(
            pod_spec(&pinned.spec.as_ref().unwrap().template)
                .containers
                .iter()
                .find(|c| c.name == "sip-edge")
                .and_then(|c| c.image.as_deref()),
            Some("sig:2"),
            "a pinned edge image stays while the signal image changes"
        );
        // Port names are unique across the pod's containers.
        let mut names: Vec<&str> = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| p.name.as_deref())
            .collect();
        let all = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all, "{names:?}");
        assert!(
            edge.ports
                .iter()
                .flatten()
                .any(|p| p.container_port == 15060 && p.protocol.as_deref() == Some("UDP"))
        );

        let off = desired(
            &vc(serde_json::json!({"sip": {"domain": "x", "edge": false}})),
            &settings(),
        )
        .unwrap();
        let MediaWorkload::DaemonSet(ds) = &off.media else {
            panic!("DaemonSet expected")
        };
        assert_eq!(
            pod_spec(&ds.spec.as_ref().unwrap().template)
                .containers
                .len(),
            1
        );
    }

    #[test]
    fn signal_pods_can_be_pinned_to_nodes() {
        let d = desired(
            &vc(serde_json::json!({"sip": {"domain": "x"},
                                   "signal": {"nodeSelector": {"voicecluster.io/real-node": "true"},
                                              "tolerations": [{"key": "k", "operator": "Exists"}]}})),
            &settings(),
        )
        .unwrap();
        let pod = pod_spec(&d.signal.spec.as_ref().unwrap().template);
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

    #[test]
    fn deployment_placement_has_its_replicas() {
        let d = desired(
            &vc(serde_json::json!({"sip": {"domain": "x"},
                                   "media": {"placement": {"kind": "Deployment", "replicas": 4}}})),
            &settings(),
        )
        .unwrap();
        let MediaWorkload::Deployment(dep) = &d.media else {
            panic!("Deployment expected")
        };
        assert_eq!(dep.spec.as_ref().unwrap().replicas, Some(4));
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
