//! Objects as the API server hands them over, for the tests of the pure
//! parts: pods, nodes and VoiceClusters built from a few facts.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use voicecluster_api::VoiceCluster;

/// The VoiceCluster `voice/demo` with `spec`.
pub fn vc(spec: serde_json::Value) -> VoiceCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "voicecluster.io/v1alpha1", "kind": "VoiceCluster",
        "metadata": {"name": "demo", "namespace": "voice", "uid": "1234"},
        "spec": spec,
    }))
    .unwrap()
}

/// A node with an internal address, `external` if any, and the public
/// address annotation `192.0.2.99`.
pub fn node(name: &str, labels: &[(&str, &str)], external: Option<&str>) -> Node {
    let mut addresses = vec![serde_json::json!({"type": "InternalIP", "address": "198.51.100.1"})];
    if let Some(ip) = external {
        addresses.push(serde_json::json!({"type": "ExternalIP", "address": ip}));
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                     "annotations": {"voicecluster.io/public-address": "192.0.2.99"}},
        "status": {"addresses": addresses},
    }))
    .unwrap()
}

/// A running pod on `node` with IP 10.0.0.7.
pub fn pod(name: &str, node: &str, ready: bool) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": []},
        "status": {"podIP": "10.0.0.7", "phase": "Running",
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
    }))
    .unwrap()
}

/// Looks `nodes` up by name, as the node cache does.
pub fn lookup(nodes: Vec<Node>) -> impl Fn(&str) -> Option<Arc<Node>> {
    move |name| {
        nodes
            .iter()
            .find(|n| n.name_any() == name)
            .cloned()
            .map(Arc::new)
    }
}
