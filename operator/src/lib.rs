//! The voicecluster operator as a library: the binary in `main.rs` parses
//! flags and calls [`controller::run`]; tests use the pure parts
//! ([`resources`], [`status`], [`providers`], [`conditions`]) directly.
//!
//! One reconcile ([`reconcile`]) builds the objects ([`resources`]), applies
//! them, and assembles the status ([`status`]) from the pod and node caches
//! ([`providers`]), the pods' Directory acks ([`acks`], [`directory`]) and
//! failover reports ([`failover`]); [`conditions`] sums it up for people.

pub mod ack_reporter;
pub mod acks;
pub mod cache;
pub mod conditions;
pub mod controller;
pub mod directory;
pub mod failover;
#[cfg(test)]
mod fixtures;
pub mod live_config;
pub mod metrics;
pub mod providers;
pub mod reconcile;
pub mod resources;
pub mod status;
