//! The edge media pods: one per eligible node (a DaemonSet) or a fixed
//! number (a Deployment), each running the media relay and, beside it, the
//! SIP edge; and the budget that lets only one of them drain at a time.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, ExecAction, PodSpec, PodTemplateSpec, Probe, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use voicecluster_api::voicecluster::PlacementKind;
use voicecluster_api::{
    ADMIN_PORT_NAME, COMPONENT_MEDIA, EDGE_ADMIN_PORT, ENV_INSTANCE_DIR, ENV_PORT_SLOT_FILE,
    ENV_PORT_SLOTS, HEALTHZ_PATH, MEDIA_ADMIN_PORT, MEDIA_GRPC_PORT, READYZ_PATH, VoiceCluster,
};

use super::config::config_volume;
use super::container::{
    common_env, empty_dir, env, http_probe, port, probe_on, sip_container_ports,
};
use super::meta::{disruption_budget, label_selector, meta, min_ready_seconds, pod_meta};
use super::settings::Settings;

/// The media workload: one of the two placements.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaWorkload {
    /// One pod on every eligible node.
    DaemonSet(Box<DaemonSet>),
    /// A fixed number of pods.
    Deployment(Box<Deployment>),
}

/// The media container's program (its instance file has its name).
const MEDIA_BINARY: &str = "media-node";

/// The edge container's program.
const EDGE_BINARY: &str = "signal-node";

/// Where a media pod's containers write the addresses they listen on.
const INSTANCE_DIR: &str = "/run/voicecluster/instance";

/// Port slots a process of a media pod on the node's network may take: the
/// pod and its successor run side by side during a surge rollout (with a
/// margin for a rollout that is itself replaced half-way).
const HOST_NETWORK_PORT_SLOTS: u16 = 4;

/// The edge's admin port: port names are unique in a pod, and the media
/// container's is the common one.
const EDGE_ADMIN_PORT_NAME: &str = "edge-admin";

/// The DaemonSet or Deployment `<vc>-media`, as the spec's placement says.
pub(super) fn workload(
    vc: &VoiceCluster,
    settings: &Settings,
    owner: &OwnerReference,
) -> MediaWorkload {
    let metadata = meta(vc, owner, "media", COMPONENT_MEDIA);
    let selector = label_selector(vc, COMPONENT_MEDIA);
    let template = pod_template(vc, settings);
    let placement = &vc.spec.media.placement;
    match placement.kind {
        PlacementKind::DaemonSet => MediaWorkload::DaemonSet(Box::new(DaemonSet {
            metadata,
            spec: Some(DaemonSetSpec {
                selector,
                template,
                min_ready_seconds: Some(min_ready_seconds(vc)),
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
            metadata,
            spec: Some(DeploymentSpec {
                replicas: Some(placement.replicas.unwrap_or(1)),
                selector,
                template,
                min_ready_seconds: Some(min_ready_seconds(vc)),
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        })),
    }
}

/// Lets only one media pod drain at a time.
pub(super) fn budget(vc: &VoiceCluster, owner: &OwnerReference) -> PodDisruptionBudget {
    disruption_budget(vc, owner, COMPONENT_MEDIA, 1)
}

/// A media pod: the relay, the SIP edge unless turned off, on the node's
/// network unless told otherwise.
fn pod_template(vc: &VoiceCluster, settings: &Settings) -> PodTemplateSpec {
    let media = &vc.spec.media;
    let (config, config_mount) = config_volume(vc);
    let mut containers = vec![media_container(vc, settings, config_mount.clone())];
    if vc.spec.sip.edge {
        containers.push(edge_container(vc, settings, config_mount));
    }
    let (instance, instance_mount) = instance_volume();
    for c in &mut containers {
        let binary = if c.name == "media" {
            MEDIA_BINARY
        } else {
            EDGE_BINARY
        };
        fit_to_network(c, binary, media.host_network, instance_mount.clone());
    }
    PodTemplateSpec {
        metadata: pod_meta(vc, COMPONENT_MEDIA),
        spec: Some(PodSpec {
            host_network: Some(media.host_network),
            dns_policy: Some(
                if media.host_network {
                    "ClusterFirstWithHostNet"
                } else {
                    "ClusterFirst"
                }
                .to_string(),
            ),
            node_selector: Some(media.node_selector.clone()),
            tolerations: (!media.tolerations.is_empty()).then(|| media.tolerations.clone()),
            containers,
            volumes: Some(vec![config, instance]),
            // The drain (legs end or the timeout passes) happens inside
            // the grace period.
            termination_grace_period_seconds: Some(i64::from(media.drain_timeout_seconds) + 10),
            ..PodSpec::default()
        }),
    }
}

/// The call-leg relay.
fn media_container(vc: &VoiceCluster, settings: &Settings, config: VolumeMount) -> Container {
    let media = &vc.spec.media;
    let mut vars = common_env(vc, settings, MEDIA_ADMIN_PORT);
    vars.push(env("VC_GRPC_ADDR", format!("0.0.0.0:{MEDIA_GRPC_PORT}")));
    vars.push(env(
        "VC_RTP_PORTS",
        format!("{}-{}", media.rtp_port_range.min, media.rtp_port_range.max),
    ));
    vars.push(env("VC_CAPACITY", media.capacity.to_string()));
    // The process drains within the pod's grace period (drain timeout + 10 s).
    vars.push(env(
        "VC_DRAIN_TIMEOUT_SECONDS",
        media.drain_timeout_seconds.to_string(),
    ));
    Container {
        name: "media".to_string(),
        image: Some(
            media
                .image
                .clone()
                .unwrap_or_else(|| settings.images.media.clone()),
        ),
        image_pull_policy: Some("IfNotPresent".to_string()),
        env: Some(vars),
        ports: Some(vec![
            port(ADMIN_PORT_NAME, MEDIA_ADMIN_PORT, "TCP"),
            port("grpc", MEDIA_GRPC_PORT, "TCP"),
        ]),
        readiness_probe: Some(http_probe(READYZ_PATH, 1)),
        liveness_probe: Some(http_probe(HEALTHZ_PATH, 10)),
        resources: media.resources.clone(),
        volume_mounts: Some(vec![config]),
        ..Container::default()
    }
}

/// The SIP front door beside each media pod's relay: the `signal-node`
/// image in its edge role, on the pod's (the node's) network.
fn edge_container(vc: &VoiceCluster, settings: &Settings, config: VolumeMount) -> Container {
    let spec = &vc.spec;
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
        env: Some(edge_env(vc, settings)),
        ports: Some(ports),
        readiness_probe: Some(probe_on(EDGE_ADMIN_PORT_NAME, READYZ_PATH, 1)),
        liveness_probe: Some(probe_on(EDGE_ADMIN_PORT_NAME, HEALTHZ_PATH, 10)),
        volume_mounts: Some(vec![config]),
        ..Container::default()
    }
}

fn edge_env(vc: &VoiceCluster, settings: &Settings) -> Vec<EnvVar> {
    let spec = &vc.spec;
    let mut vars = common_env(vc, settings, EDGE_ADMIN_PORT);
    vars.push(env("VC_SIP_ADDR", format!("0.0.0.0:{}", spec.sip.port)));
    vars.push(env(
        "VC_HEARTBEAT_INTERVAL_MS",
        spec.failover.heartbeat_interval_ms.to_string(),
    ));
    vars.push(env(
        "VC_FAILURE_THRESHOLD",
        spec.failover.failure_threshold.to_string(),
    ));
    // On its way out the edge stays while the media node beside it (the
    // same network namespace) drains the pod's calls.
    vars.push(env(
        "VC_EDGE_MEDIA_ADMIN",
        format!("127.0.0.1:{MEDIA_ADMIN_PORT}"),
    ));
    // Where the media node beside it says it listens (its admin port may be
    // in another slot).
    vars.push(env(
        "VC_EDGE_MEDIA_INSTANCE",
        format!("{INSTANCE_DIR}/{MEDIA_BINARY}"),
    ));
    vars.push(env(
        "VC_EDGE_DRAIN_SECONDS",
        (i64::from(spec.media.drain_timeout_seconds) + 5).to_string(),
    ));
    vars
}

/// The emptyDir shared by a media pod's containers for their instance files.
fn instance_volume() -> (Volume, VolumeMount) {
    empty_dir("instance", INSTANCE_DIR)
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
    c.readiness_probe = Some(exec_probe(binary, READYZ_PATH, 1));
    c.liveness_probe = Some(exec_probe(binary, HEALTHZ_PATH, 10));
}

/// A probe that runs `<binary> probe <path>`: the process reads where it
/// listens from its instance file.
fn exec_probe(binary: &str, path: &str, period: i32) -> Probe {
    Probe {
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
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{owner, pod_spec, settings, vc};
    use super::*;
    use voicecluster_api::ENV_DIRECTORY_URL;

    /// The media workload of `voice/demo` with `spec`.
    fn media(spec: serde_json::Value) -> MediaWorkload {
        let vc = vc(spec);
        workload(&vc, &settings(), &owner(&vc))
    }

    #[test]
    fn live_settings_leave_the_media_pod_template_alone() {
        // What media pods apply live must not be in their template, or a
        // change would roll them (draining every call) as well.
        let template = |spec| match media(spec) {
            MediaWorkload::DaemonSet(ds) => ds.spec.unwrap().template,
            MediaWorkload::Deployment(d) => d.spec.unwrap().template,
        };
        let base = template(serde_json::json!({"sip": {"domain": "x"}}));
        let live = template(serde_json::json!({
            "sip": {"domain": "x"}, "logLevel": "debug",
            "media": {"mediaTimeoutSeconds": 5, "legStatsSeconds": 1}
        }));
        assert_eq!(live, base);
        // A setting media pods read at start does change it.
        let drained = template(serde_json::json!({
            "sip": {"domain": "x"}, "media": {"drainTimeoutSeconds": 5}
        }));
        assert_ne!(drained, base);
    }

    #[test]
    fn media_pods_go_to_the_selected_nodes_on_the_host_network() {
        let d = media(serde_json::json!({"sip": {"domain": "x"},
                                   "media": {"image": "custom:2", "rtpPortRange": {"min": 30000, "max": 30099}}}));
        let MediaWorkload::DaemonSet(ds) = &d else {
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
        let d = media(serde_json::json!({"sip": {"domain": "x"}, "media": {"hostNetwork": false}}));
        let MediaWorkload::DaemonSet(ds) = &d else {
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
        // On the pod network, where the containers declare their ports.
        let d = media(serde_json::json!({"sip": {"domain": "x", "port": 15060},
                                         "signal": {"image": "sig:3"},
                                         "media": {"hostNetwork": false}}));
        let MediaWorkload::DaemonSet(ds) = &d else {
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
        let pinned = media(
            serde_json::json!({"sip": {"domain": "x", "edgeImage": "sig:2"},
                                   "signal": {"image": "sig:3"}}),
        );
        let MediaWorkload::DaemonSet(pinned) = &pinned else {
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

        let off = media(serde_json::json!({"sip": {"domain": "x", "edge": false}}));
        let MediaWorkload::DaemonSet(ds) = &off else {
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
    fn deployment_placement_has_its_replicas() {
        let d = media(serde_json::json!({"sip": {"domain": "x"},
                                   "media": {"placement": {"kind": "Deployment", "replicas": 4}}}));
        let MediaWorkload::Deployment(dep) = &d else {
            panic!("Deployment expected")
        };
        assert_eq!(dep.spec.as_ref().unwrap().replicas, Some(4));
    }
}
