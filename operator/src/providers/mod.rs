//! Which media pods are call-leg providers right now (and which signal pods
//! are members), and where media pods may run: pure functions over pods
//! ([`pods`]) and nodes ([`nodes`]), so they are tested without an API
//! server and run against the watch caches in the operator.

pub mod nodes;
pub mod pods;

pub use nodes::{eligible_media_nodes, is_eligible_media_node, public_address};
pub use pods::{
    ProviderView, cluster_pods, draining_media, is_draining, is_ready, providers, signal_members,
};
