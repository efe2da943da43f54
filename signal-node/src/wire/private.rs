//! The private SIP headers voicecluster's own edges and members exchange.
//! They carry cluster state (failover, lifecycle) and must never be
//! believed from anyone else; every `X-VC-*` name lives here.

/// The header an edge adds to a request it sends to a buddy because the
/// backend the dialog is pinned to is down; it names that backend, and the
/// buddy takes the call over only then.
pub const FAILOVER_HEADER: &str = "X-VC-Failover";

/// The parameter of [`FAILOVER_HEADER`] saying the backend left on purpose
/// (it answered its heartbeats "gone"): its calls need no approval.
pub const HANDOVER_PARAM: &str = "handover";

/// The header of a heartbeat answer from a member handing its calls over.
pub const STATE_HEADER: &str = "X-VC-State";
