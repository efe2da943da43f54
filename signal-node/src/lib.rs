//! SIP signalling for a VoiceCluster: the wire format, transactions,
//! registrar and transport of a signal node, as a library so the binary
//! and the tests share it.

pub mod b2bua;
pub mod billing;
pub mod calls;
pub mod digest;
pub mod edge;
pub mod endpoint;
pub mod failover_policy;
pub mod framing;
pub mod handover;
pub mod leg_providers;
pub mod legs;
pub mod lifecycle;
pub mod live_config;
pub mod management;
pub mod metrics;
pub mod port_sharing;
pub mod registrar;
pub mod rendezvous;
pub mod replicas;
pub mod sdp;
pub mod tags;
pub mod task_events;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transaction;
pub mod transport;
pub mod wire;

pub use rsipstack::sip;
