//! Call legs in this process (`Locally` and `LocallyForOthers`), from
//! media-node's engine.

use std::net::SocketAddr;

use voicecluster_media_node::engine::MediaEngine;
use voicecluster_media_node::relay::LegId;

use crate::calls::CallLegs;

/// The in-process media engine as a source of call legs.
pub struct LocalLegs {
    engine: MediaEngine,
}

impl LocalLegs {
    /// Legs from `engine`.
    pub fn new(engine: MediaEngine) -> Self {
        Self { engine }
    }
}

impl CallLegs for LocalLegs {
    fn create(&mut self) -> Result<(u64, SocketAddr), String> {
        self.engine
            .create_leg()
            .map(|(id, addr)| (id.0, addr))
            .map_err(|e| e.to_string())
    }

    fn set_remote(&mut self, leg: u64, addr: SocketAddr) -> Result<(), String> {
        self.engine
            .set_remote(LegId(leg), addr)
            .map_err(|e| e.to_string())
    }

    fn bridge(&mut self, a: u64, b: u64) -> Result<(), String> {
        self.engine
            .bridge(LegId(a), LegId(b))
            .map_err(|e| e.to_string())
    }

    fn packets(&self, leg: u64) -> Option<(u64, u64)> {
        self.engine
            .stats(LegId(leg))
            .map(|s| (s.packets_in, s.packets_out))
    }

    fn release(&mut self, leg: u64) {
        let engine = self.engine.clone();
        // Closing the sockets is asynchronous; the call is already over.
        tokio::spawn(async move {
            if let Err(e) = engine.destroy(LegId(leg)).await {
                tracing::debug!(error = %e, "releasing a call leg");
            }
        });
    }
}
