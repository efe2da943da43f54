//! Whatever bytes arrive, over UDP or TCP, from a caller or a callee: the
//! endpoint answers or drops them and never panics.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use voicecluster_signal_node::calls::CallLegs;
use voicecluster_signal_node::digest::Authenticator;
use voicecluster_signal_node::endpoint::{Endpoint, SipMetrics};
use voicecluster_signal_node::framing::{Frame, Framer};
use voicecluster_signal_node::registrar::Registrar;
use voicecluster_signal_node::transaction::{Peer, Timers};

/// Legs that always work, so call flows go as deep as they can.
struct Legs(u64);

impl CallLegs for Legs {
    fn create(&mut self) -> Result<(u64, SocketAddr), String> {
        self.0 += 1;
        Ok((self.0, SocketAddr::from(([127, 0, 0, 1], 30000))))
    }
    fn set_remote(&mut self, _: u64, _: SocketAddr) -> Result<(), String> {
        Ok(())
    }
    fn bridge(&mut self, _: u64, _: u64) -> Result<(), String> {
        Ok(())
    }
    fn packets(&self, _: u64) -> Option<(u64, u64)> {
        Some((0, 0))
    }
    fn release(&mut self, _: u64) {}
}

fn peer(port: u16, reliable: bool) -> Peer {
    Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        reliable,
    }
}

fuzz_target!(|data: &[u8]| {
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let users = HashMap::from([
        ("alice".to_string(), "a".to_string()),
        ("bob".to_string(), "b".to_string()),
    ]);
    let mut registrar = Registrar::new(Authenticator::new("voice.test", "k", users));
    registrar.bind("bob", "sip:bob@127.0.0.1:5070", peer(5070, false), wall);
    let mut ep = Endpoint::new(
        SocketAddr::from(([127, 0, 0, 1], 5060)),
        registrar,
        Some(Box::new(Legs(0))),
        Timers::default(),
        SipMetrics::default(),
    );
    let mut now = Instant::now();
    let mut framer = Framer::default();
    // Messages are separated by NUL bytes; the first byte of each says
    // who sends it and how (bit 0: callee, bit 1: over TCP).
    for chunk in data.split(|b| *b == 0).filter(|c| !c.is_empty()) {
        let (how, msg) = (chunk[0], &chunk[1..]);
        let tcp = how & 2 != 0;
        let from = peer(if how & 1 != 0 { 5070 } else { 5080 }, tcp);
        if tcp {
            framer.push(msg);
            while let Ok(Some(frame)) = framer.next_frame() {
                if let Frame::Message(m) = frame {
                    ep.on_bytes(&m, from, now, wall);
                }
            }
        } else {
            ep.on_bytes(msg, from, now, wall);
        }
        while ep.poll_transmit().is_some() {}
        now += Duration::from_secs(1);
        ep.handle_timeout(now, wall);
    }
});
