//! Where media pods may run and which address callers reach them on: pure
//! functions of the spec and a node, run against the node cache.

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use kube::ResourceExt;
use voicecluster_api::nodes::address;
use voicecluster_api::voicecluster::{MediaSpec, PublicAddressSource};

/// The public address of media pods on `node`, per the spec's source.
pub fn public_address(media: &MediaSpec, node: &Node) -> Option<String> {
    match media.public_address.source {
        PublicAddressSource::NodeExternalIP => address(node, "ExternalIP"),
        PublicAddressSource::NodeAnnotation => {
            let key = media.public_address.annotation.as_deref()?;
            node.annotations().get(key).cloned()
        }
        PublicAddressSource::Static => media
            .public_address
            .addresses
            .as_ref()?
            .get(&node.name_any())
            .cloned(),
    }
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

/// Whether media pods of `media` may be scheduled onto `node`: its labels
/// match the node selector and every NoSchedule/NoExecute taint is tolerated.
pub fn is_eligible_media_node(media: &MediaSpec, node: &Node) -> bool {
    let labels = node.labels();
    let selected = media
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let taints_ok = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_none_or(|taints| {
            taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| tolerates(&media.tolerations, t))
        });
    selected && !unschedulable && taints_ok
}

/// How many of `nodes` media pods of `media` may be scheduled onto.
pub fn eligible_media_nodes<'a>(
    media: &MediaSpec,
    nodes: impl IntoIterator<Item = &'a std::sync::Arc<Node>>,
) -> usize {
    nodes
        .into_iter()
        .filter(|n| is_eligible_media_node(media, n))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use voicecluster_api::voicecluster::PublicAddress;

    use crate::fixtures::node;

    #[test]
    fn public_address_follows_the_configured_source() {
        let n = node("edge", &[], Some("203.0.113.10"));
        let mut media = MediaSpec::default();
        assert_eq!(public_address(&media, &n).as_deref(), Some("203.0.113.10"));
        media.public_address = PublicAddress {
            source: PublicAddressSource::NodeAnnotation,
            annotation: Some("voicecluster.io/public-address".into()),
            addresses: None,
        };
        assert_eq!(public_address(&media, &n).as_deref(), Some("192.0.2.99"));
        media.public_address = PublicAddress {
            source: PublicAddressSource::Static,
            annotation: None,
            addresses: Some(BTreeMap::from([(
                "edge".to_string(),
                "192.0.2.5".to_string(),
            )])),
        };
        assert_eq!(public_address(&media, &n).as_deref(), Some("192.0.2.5"));
    }

    #[test]
    fn eligibility_follows_labels_and_taints() {
        let mut media = MediaSpec::default();
        let edge = node("edge", &[("voicecluster.io/internet-facing", "true")], None);
        let core = node(
            "core",
            &[("voicecluster.io/internet-facing", "false")],
            None,
        );
        assert!(is_eligible_media_node(&media, &edge));
        assert!(!is_eligible_media_node(&media, &core));

        let mut tainted = edge.clone();
        tainted.spec = Some(
            serde_json::from_value(serde_json::json!({
                "taints": [{"key": "edge", "value": "yes", "effect": "NoSchedule"}]
            }))
            .unwrap(),
        );
        assert!(!is_eligible_media_node(&media, &tainted));
        media.tolerations = vec![
            serde_json::from_value(serde_json::json!({
                "key": "edge", "operator": "Equal", "value": "yes", "effect": "NoSchedule"
            }))
            .unwrap(),
        ];
        assert!(is_eligible_media_node(&media, &tainted));
    }
}
