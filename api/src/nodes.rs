//! Reading a Node the way every part of the project does.

use k8s_openapi::api::core::v1::Node;

/// The node's first address of type `kind` (`ExternalIP`, `InternalIP`, …)
/// in its status.
pub fn address(node: &Node, kind: &str) -> Option<String> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == kind)
        .map(|a| a.address.clone())
}
