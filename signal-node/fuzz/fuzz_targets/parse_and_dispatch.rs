//! Whatever bytes arrive, over UDP or TCP, from a caller or a callee: the
//! endpoint answers or drops them and never panics.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use voicecluster_signal_node::digest::Authenticator;
use voicecluster_signal_node::endpoint::Endpoint;
use voicecluster_signal_node::metrics::SipMetrics;
use voicecluster_signal_node::framing::{Frame, Framer};
use voicecluster_signal_node::legs::{Leg, LegReply, LegRequest, Media};
use voicecluster_signal_node::registrar::Registrar;
use voicecluster_signal_node::transaction::{Peer, Timers};

/// A provider whose legs always work, so call flows go as deep as they can.
fn serve_legs(ep: &mut Endpoint, next: &mut u64, now: Instant, wall: SystemTime) {
    while let Some(request) = ep.poll_leg_request() {
        let reply = match request {
            LegRequest::Setup { task, .. } => {
                *next += 2;
                let leg = |id| Leg {
                    id,
                    addr: SocketAddr::from(([127, 0, 0, 1], 30000)),
                };
                LegReply::Ready {
                    task,
                    media: Ok(Media {
                        provider: None,
                        a: leg(*next - 1),
                        b: leg(*next),
                    }),
                }
            }
            LegRequest::Update { .. } | LegRequest::Adopt { .. } => continue,
            LegRequest::Release { .. } => LegReply::Released {
                to_callee: 0,
                to_caller: 0,
            },
        };
        ep.on_leg_reply(reply, now, wall);
    }
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
        true,
        Timers::default(),
        SipMetrics::default(),
    );
    let mut now = Instant::now();
    let mut framer = Framer::default();
    let mut legs = 0;
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
        serve_legs(&mut ep, &mut legs, now, wall);
        while ep.poll_transmit().is_some() {}
        now += Duration::from_secs(1);
        ep.handle_timeout(now, wall);
    }
});
