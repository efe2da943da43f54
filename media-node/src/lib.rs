//! The media engine of a VoiceCluster: RTP port pairs and the relay between
//! bridged call legs, as a library so that media-node and `Locally`
//! signal nodes run the same code.

pub mod engine;
pub mod leg_events;
pub mod live_config;
pub mod metrics;
pub mod ports;
pub mod relay;
pub mod service;
pub mod webrtc_peer;
