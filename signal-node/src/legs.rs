//! What a call asks of its call legs, as data: the endpoint queues
//! [`LegRequest`]s and is told the outcome with [`LegReply`]s, so the SIP
//! core stays free of I/O while legs are made in this process or on a media
//! pod across the network (the leg providers module).

use std::net::SocketAddr;

/// Which dialog of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller's.
    A,
    /// The callee's.
    B,
}

impl Side {
    /// The other dialog of the call.
    pub fn other(self) -> Self {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// One call leg: its id on its provider and the address its endpoint sends
/// media to (the one put in SDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leg {
    /// Id on the provider.
    pub id: u64,
    /// Public address of its RTP port.
    pub addr: SocketAddr,
}

/// A call's media: two bridged legs on one provider, facing A and B.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// The provider's gRPC address; `None` for legs in this process.
    pub provider: Option<String>,
    /// The leg facing the caller.
    pub a: Leg,
    /// The leg facing the callee.
    pub b: Leg,
}

impl Media {
    /// The leg facing `side`.
    pub fn leg(&self, side: Side) -> Leg {
        match side {
            Side::A => self.a,
            Side::B => self.b,
        }
    }
}

/// Work for the call legs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegRequest {
    /// Two bridged legs for call `task`, A's pointed at `caller` (from the
    /// offer). Answered with [`LegReply::Ready`].
    Setup {
        /// The call's task id on this member.
        task: u64,
        /// Where the caller receives media.
        caller: SocketAddr,
        /// The offer's telephone-event payload type: DTMF to report.
        dtmf: Option<u8>,
    },
    /// The endpoint on `side` now receives media at `remote`.
    Update {
        /// The call's media.
        media: Media,
        /// Which leg.
        side: Side,
        /// The new address.
        remote: SocketAddr,
    },
    /// Call `task` was taken over from a failed member: its legs report to
    /// this member's task from now on.
    Adopt {
        /// The call's task id on this member.
        task: u64,
        /// The call's media.
        media: Media,
    },
    /// The call is over. Answered with [`LegReply::Released`].
    Release {
        /// The call's media.
        media: Media,
    },
}

/// What became of a [`LegRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegReply {
    /// The legs of call `task`, or why there are none.
    Ready {
        /// The call's task id.
        task: u64,
        /// The legs, or the reason no provider could make them.
        media: Result<Media, String>,
    },
    /// A call's legs are gone; RTP packets relayed to the callee and to the
    /// caller over the call's life.
    Released {
        /// Packets the callee's leg sent to the callee.
        to_callee: u64,
        /// Packets the caller's leg sent to the caller.
        to_caller: u64,
    },
}
