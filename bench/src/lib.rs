//! What the loopback benchmarks share: signal-node processes (release
//! build) on loopback addresses, probes sent through an edge, and figures.

pub mod loopback;
