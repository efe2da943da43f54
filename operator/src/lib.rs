//! The voicecluster operator as a library: the binary in `main.rs` parses
//! flags and calls [`controller::run`]; tests use the pure parts
//! ([`resources`], [`providers`], [`conditions`]) directly.

pub mod ack_reporter;
pub mod acks;
pub mod conditions;
pub mod controller;
pub mod directory;
pub mod failover;
pub mod metrics;
pub mod providers;
pub mod reconcile;
pub mod resources;
