//! The spec's defaults and the schema's, and how the types serialise.

use kube::CustomResourceExt;

use super::*;
use crate::LABEL_INTERNET_FACING;

#[test]
fn a_minimal_spec_gets_the_documented_defaults() {
    let spec: VoiceClusterSpec =
        serde_json::from_value(serde_json::json!({"sip": {"domain": "voice.example.com"}}))
            .unwrap();
    assert_eq!(spec.signal.replicas, 2);
    assert_eq!(spec.signal.call_leg_mode, CallLegMode::Remotely);
    assert_eq!(
        spec.media
            .node_selector
            .get(LABEL_INTERNET_FACING)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(spec.media.placement.kind, PlacementKind::DaemonSet);
    assert!(spec.media.host_network);
    assert_eq!(
        spec.media.rtp_port_range,
        PortRange {
            min: 20000,
            max: 29999
        }
    );
    assert_eq!(spec.sip.transports, vec![Transport::Udp, Transport::Tcp]);
    assert_eq!(spec.sip.port, 5060);
    assert_eq!(spec.failover.mode, FailoverMode::Automatic);
    assert_eq!(spec.billing.currency, "EUR");
    assert_eq!(spec.log_level, "info");
    assert_eq!(spec.media.media_timeout_seconds, 30);
    assert_eq!(spec.media.leg_stats_seconds, 10);
}

/// The API server fills defaults from the schema, the operator from
/// serde: both must agree, or an object means different things to each.
#[test]
fn schema_defaults_match_serde_defaults() {
    let crd = serde_json::to_value(VoiceCluster::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let ours = serde_json::to_value(VoiceClusterSpec {
        signal: SignalSpec::default(),
        media: MediaSpec::default(),
        sip: serde_json::from_value(serde_json::json!({"domain": "x"})).unwrap(),
        failover: FailoverSpec::default(),
        billing: BillingSpec::default(),
        log_level: "info".to_string(),
    })
    .unwrap();
    for field in ["signal", "media", "failover", "billing", "logLevel"] {
        assert_eq!(
            spec[field]["default"], ours[field],
            "default of spec.{field}"
        );
    }
}

#[test]
fn enums_serialise_as_kubernetes_style_strings() {
    let v = serde_json::to_value(Transport::Udp).unwrap();
    assert_eq!(v, "UDP");
    let v = serde_json::to_value(PublicAddressSource::NodeExternalIP).unwrap();
    assert_eq!(v, "NodeExternalIP");
}

#[test]
fn pod_counts_print_ready_over_desired() {
    assert_eq!(PodCounts::new(1, 3).summary, "1/3");
}
