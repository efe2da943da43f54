//! `spec.sip`: the SIP service users and trunks reach.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::default_true;
use super::user_sources::UserSource;

/// A SIP transport.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Transport {
    /// SIP over UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SIP over TCP.
    #[serde(rename = "TCP")]
    Tcp,
}

/// Kubernetes Service type of the SIP Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Through the cloud's load balancer.
    LoadBalancer,
}

/// The SIP service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipSpec {
    /// The SIP domain users register in (`sip:alice@<domain>`), also the
    /// digest realm. A change rolls the signal pods.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    )]
    pub domain: String,
    /// Transports to listen on, each once.
    #[serde(default = "default_transports")]
    #[schemars(length(min = 1, max = 2), extend("x-kubernetes-list-type" = "set"))]
    pub transports: Vec<Transport>,
    /// SIP port.
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Service type of the SIP Service.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Name of a Secret in this namespace holding the users who may
    /// register and call: key `users`, one `user:password` per line. An
    /// optional key `nonce-secret` keys the digest nonces, so that every
    /// signal member accepts the nonces of the others. Without it, every
    /// REGISTER is refused. Applies live: the operator watches the Secret
    /// (type Opaque) and running members take added, removed and changed
    /// users within a second or two (`status.config`); the nonce key is
    /// read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub users_secret: Option<String>,
    /// More sources of users (CSV files, LDAP directories), read in order
    /// after `usersSecret`: the first source naming a user wins. Apply live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub user_sources: Vec<UserSource>,
    /// Run the SIP front door (`signal-node edge`) in every media pod, on
    /// the media pod's network: devices reach the service there, and it
    /// forwards to the live signal pods with Call-ID affinity. Turn it off
    /// to put another SBC in front of the SIP Service.
    #[serde(default = "default_true")]
    pub edge: bool,
    /// Image of the SIP front door; defaults to `signal.image`. Pin it to
    /// upgrade the signal pods without rolling the media pods (whose edge
    /// containers drain their calls), and change it on its own to upgrade
    /// the edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_image: Option<String>,
}

fn default_transports() -> Vec<Transport> {
    vec![Transport::Udp, Transport::Tcp]
}

fn default_sip_port() -> i32 {
    5060
}
