//! The contract shared by the voicecluster operator, the signal and media
//! nodes, the Helm chart and the cluster tests.
//!
//! Anything two parts must agree on by name — the API group, labels, ports,
//! environment variables — is defined here once, so that a rename is a
//! compile error instead of a silent mismatch between the operator and the
//! pods it creates. The `VoiceCluster` custom resource types live here too
//! ([`voicecluster`]).

pub mod config;
pub mod nodes;
pub mod task_events_clients;
pub mod voicecluster;

/// gRPC messages and services generated from `proto/`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod grpc {
    tonic::include_proto!("voicecluster.v1");
}

pub use voicecluster::{VoiceCluster, VoiceClusterSpec, VoiceClusterStatus};

/// The Kubernetes API group of every voicecluster resource, and the prefix of
/// every label and annotation the project owns.
pub const API_GROUP: &str = "voicecluster.io";

/// Node label that marks a node as reachable from the internet. Edge media
/// pods (and the SIP front door) are only placed on nodes that carry it with
/// the value [`INTERNET_FACING_TRUE`].
pub const LABEL_INTERNET_FACING: &str = "voicecluster.io/internet-facing";

/// The value of [`LABEL_INTERNET_FACING`] on internet-facing nodes. Any other
/// value, or no label at all, means the node is backend-only.
pub const INTERNET_FACING_TRUE: &str = "true";

/// The `app.kubernetes.io/managed-by` value on objects the operator owns.
pub const MANAGER_NAME: &str = "voicecluster-operator";

/// Default TCP port of the admin HTTP server every binary runs
/// (`/healthz`, `/readyz`, `/metrics`).
pub const DEFAULT_ADMIN_PORT: u16 = 9090;

/// Name of the admin port in container specs, so probes and scrape configs
/// can refer to it by name rather than by number.
pub const ADMIN_PORT_NAME: &str = "admin";

/// Liveness endpoint: answers 200 while the process is alive.
pub const HEALTHZ_PATH: &str = "/healthz";

/// Readiness endpoint: answers 200 once the process can serve, 503 before
/// that and while it shuts down.
pub const READYZ_PATH: &str = "/readyz";

/// Prometheus/OpenMetrics scrape endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// Environment variable for the log format (`text` or `json`) of every
/// binary. The operator sets it on the pods it creates.
pub const ENV_LOG_FORMAT: &str = "VC_LOG_FORMAT";

/// Environment variable for the log filter of every binary, in
/// `tracing-subscriber` `EnvFilter` syntax (for example `info` or
/// `info,signal_node=debug`).
pub const ENV_LOG_LEVEL: &str = "VC_LOG_LEVEL";

/// Environment variable for the admin server's listen address of every
/// binary (for example `0.0.0.0:9090`).
pub const ENV_ADMIN_ADDR: &str = "VC_ADMIN_ADDR";

/// Environment variable that tells signal and media pods where the
/// operator's Directory is (`http://host:port`). The operator sets it in the
/// pods it creates.
pub const ENV_DIRECTORY_URL: &str = "VC_DIRECTORY_URL";

/// Label with the name of the VoiceCluster an object belongs to.
pub const LABEL_CLUSTER: &str = "voicecluster.io/cluster";

/// Label with the component of a pod or workload: [`COMPONENT_SIGNAL`] or
/// [`COMPONENT_MEDIA`].
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";

/// Component value of backend signal pods.
pub const COMPONENT_SIGNAL: &str = "signal";

/// Component value of edge media pods.
pub const COMPONENT_MEDIA: &str = "media";

/// Standard `app.kubernetes.io/managed-by` label key.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Annotation a media pod sets while it drains: it takes no new call legs.
pub const ANNOTATION_DRAINING: &str = "voicecluster.io/draining";

/// On a VoiceCluster in `failover.mode: Manual`: the failed members
/// (addresses, or pod names, comma-separated; `*` for all) whose calls the
/// other members may take over.
pub const ANNOTATION_APPROVE_FAILOVER: &str = "voicecluster.io/approve-failover";

/// Annotation a media pod keeps current with its number of active legs.
pub const ANNOTATION_ACTIVE_LEGS: &str = "voicecluster.io/active-legs";

/// Node annotation holding the node's public address, for
/// `publicAddress.source: NodeAnnotation` (the local test cluster sets it
/// on its real node).
pub const ANNOTATION_PUBLIC_ADDRESS: &str = "voicecluster.io/public-address";

/// Port of the gRPC `CallLegs` service on media pods.
pub const MEDIA_GRPC_PORT: u16 = 9445;

/// Admin port of media pods. They use the node's network, so it differs
/// from the default admin port to stay clear of other pods on the node.
pub const MEDIA_ADMIN_PORT: u16 = 9091;

/// Admin port of the SIP edge container in media pods (on the node's
/// network too).
pub const EDGE_ADMIN_PORT: u16 = 9092;

/// Port of signal members' gRPC services: TaskEvents, and CallLegs on a
/// `LocallyForOthers` member.
pub const TASK_EVENTS_PORT: u16 = 9446;

/// Port of the operator's gRPC Directory service.
pub const DIRECTORY_PORT: u16 = 9443;

/// How many port slots a process on the node's network may take: during a
/// surge rollout a media pod and its successor run side by side on one
/// node, so each listener (admin, CallLegs) takes the first free slot.
pub const ENV_PORT_SLOTS: &str = "VC_PORT_SLOTS";

/// The instance file of the container whose port slot a process takes (a
/// media pod's edge takes its media node's).
pub const ENV_PORT_SLOT_FILE: &str = "VC_PORT_SLOT_FILE";

/// Slot `k` of a listener is its base port plus `k` times this.
pub const PORT_SLOT_STRIDE: u16 = 10;

/// Where a process writes the addresses it listens on (a directory shared
/// by the containers of its pod), for its exec probes and its neighbours.
pub const ENV_INSTANCE_DIR: &str = "VC_INSTANCE_DIR";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_live_under_the_api_group() {
        let (prefix, name) = LABEL_INTERNET_FACING
            .split_once('/')
            .expect("label has a prefix");
        assert_eq!(prefix, API_GROUP);
        assert_eq!(name, "internet-facing");
    }

    #[test]
    fn endpoint_paths_are_absolute() {
        for path in [HEALTHZ_PATH, READYZ_PATH, METRICS_PATH] {
            assert!(path.starts_with('/'), "{path}");
        }
    }
}
