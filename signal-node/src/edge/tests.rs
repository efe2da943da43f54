//! The edge as a stateless proxy: what goes where, and how it is rewritten.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::flow::{flow_of, flow_token, hex, uri_param};
use super::*;
use crate::rendezvous::rendezvous;

const EDGE: &str = "198.51.100.1:5060";

fn peer(addr: &str, reliable: bool) -> Peer {
    Peer {
        addr: addr.parse().unwrap(),
        reliable,
    }
}

fn backends() -> Vec<SocketAddr> {
    vec![
        "10.1.0.1:5060".parse().unwrap(),
        "10.1.0.2:5060".parse().unwrap(),
    ]
}

fn edge_with(list: Vec<SocketAddr>) -> Edge {
    Edge::new(
        EDGE.parse().unwrap(),
        Box::new(move || list.clone()),
        HeartbeatConfig::default(),
        EdgeMetrics::default(),
    )
}

fn feed(edge: &mut Edge, text: &str, from: Peer) -> Vec<(Peer, String)> {
    feed_at(edge, text, from, Instant::now())
}

fn feed_at(edge: &mut Edge, text: &str, from: Peer, at: Instant) -> Vec<(Peer, String)> {
    edge.on_bytes(text.as_bytes(), from, at);
    std::iter::from_fn(|| edge.poll_transmit())
        .map(|(p, b)| (p, String::from_utf8(b).unwrap()))
        .collect()
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

fn request(method: &str, call_id: &str, to_tag: &str, extra: &str) -> String {
    format!(
        "{method} sip:bob@voice.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK-ua1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@voice.test>;tag=a1\r\n\
         To: <sip:bob@voice.test>{to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         {extra}Content-Length: 0\r\n\r\n"
    )
}

const ALICE_NAT: &str = "203.0.113.7:40000";

#[test]
fn a_register_goes_to_a_backend_with_the_devices_flow_in_its_path() {
    let mut e = edge_with(backends());
    let out = feed(
        &mut e,
        &request(
            "REGISTER",
            "reg-1",
            "",
            "Contact: <sip:alice@192.168.1.20:5062>\r\n",
        ),
        peer(ALICE_NAT, true),
    );
    assert_eq!(out.len(), 1);
    let (to, msg) = &out[0];
    assert!(backends().contains(&to.addr) && !to.reliable);
    let vias = header(msg, "Via");
    assert!(vias[0].starts_with(&format!("SIP/2.0/UDP {EDGE};branch=z9hG4bK")));
    assert!(
        vias[1].ends_with(";received=203.0.113.7;rport=40000"),
        "the device's real address: {}",
        vias[1]
    );
    assert_eq!(header(msg, "Max-Forwards"), ["69"]);
    let path = header(msg, "Path");
    assert_eq!(path.len(), 1);
    let flow = uri_param(&uri_of(path[0]), "ft").unwrap();
    assert_eq!(flow_of(&flow), Some(peer(ALICE_NAT, true)));
}

#[test]
fn a_call_id_always_goes_to_the_same_backend_and_calls_spread() {
    let mut e = edge_with(backends());
    let mut seen = std::collections::HashMap::new();
    for i in 0..64 {
        let call_id = format!("call-{i}");
        let first = feed(
            &mut e,
            &request("OPTIONS", &call_id, "", ""),
            peer(ALICE_NAT, false),
        );
        let again = feed(
            &mut e,
            &request("OPTIONS", &call_id, "", ""),
            peer(ALICE_NAT, false),
        );
        assert_eq!(first[0].0, again[0].0, "affinity for {call_id}");
        *seen.entry(first[0].0.addr).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both backends get calls: {seen:?}");
    // When a backend leaves, only its Call-IDs move.
    let all = backends();
    let survivor = [all[0]];
    for i in 0..64 {
        let call_id = format!("call-{i}");
        if rendezvous(&call_id, &all) == Some(all[0]) {
            assert_eq!(rendezvous(&call_id, &survivor), Some(all[0]));
        }
    }
}

#[test]
fn a_backends_invite_follows_the_path_and_the_dialog_stays_on_that_backend() {
    let mut e = edge_with(backends());
    let bob = peer("203.0.113.9:5070", false);
    let route = format!("<sip:{EDGE};lr;ft={}>", flow_token(bob));
    let backend = backends()[1];
    let invite = format!(
        "INVITE sip:bob@192.168.1.30:5070 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {backend};branch=z9hG4bK-b1;rport\r\n\
         Max-Forwards: 69\r\nFrom: <sip:alice@voice.test>;tag=b1\r\nTo: <sip:bob@voice.test>\r\n\
         Call-ID: leg-b@10.1.0.2\r\nCSeq: 1 INVITE\r\nRoute: {route}\r\nContent-Length: 0\r\n\r\n"
    );
    let out = feed(&mut e, &invite, peer(&backend.to_string(), false));
    assert_eq!(out.len(), 1);
    let (to, msg) = &out[0];
    assert_eq!(*to, bob, "along Bob's flow");
    assert!(
        header(msg, "Route").is_empty(),
        "the edge's route is consumed"
    );
    let rr = header(msg, "Record-Route");
    assert_eq!(rr.len(), 1);
    // Bob's BYE comes back with that route: it goes to the backend of the
    // dialog, whatever the Call-ID would hash to.
    for call_id in ["leg-b@10.1.0.2", "x", "y", "z"] {
        let bye = request("BYE", call_id, ";tag=bob", &format!("Route: {}\r\n", rr[0]));
        let out = feed(&mut e, &bye, bob);
        assert_eq!(out[0].0.addr, backend, "{call_id}");
        assert!(header(&out[0].1, "Route").is_empty());
    }
    // If that backend is gone, affinity picks a live one.
    let mut e = edge_with(vec![backends()[0]]);
    let bye = request("BYE", "x", ";tag=bob", &format!("Route: {}\r\n", rr[0]));
    assert_eq!(feed(&mut e, &bye, bob)[0].0.addr, backends()[0]);
}

#[test]
fn responses_follow_the_via_chain_both_ways() {
    let mut e = edge_with(backends());
    let alice = peer(ALICE_NAT, true);
    let over_tcp =
        request("INVITE", "c1", "", "").replace("SIP/2.0/UDP 192.168", "SIP/2.0/TCP 192.168");
    let out = feed(&mut e, &over_tcp, alice);
    let (backend, forwarded) = out[0].clone();
    assert_eq!(
        header(&forwarded, "Record-Route").len(),
        1,
        "dialog-creating"
    );
    // The backend answers to the edge; the edge's Via comes off and the
    // response goes to Alice's TCP flow.
    let vias = header(&forwarded, "Via");
    let ringing = format!(
        "SIP/2.0 180 Ringing\r\nVia: {}\r\nVia: {}\r\nFrom: <sip:alice@voice.test>;tag=a1\r\n\
         To: <sip:bob@voice.test>;tag=x\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        vias[0], vias[1]
    );
    let out = feed(&mut e, &ringing, backend);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, alice);
    assert_eq!(header(&out[0].1, "Via").len(), 1);
    // A response whose top Via is not the edge's is dropped.
    let stray = ringing.replacen(&format!("Via: {}\r\n", vias[0]), "", 1);
    assert!(feed(&mut e, &stray, backend).is_empty());
}

#[test]
fn without_backends_or_hops_requests_are_refused_and_acks_dropped() {
    let mut e = edge_with(Vec::new());
    let alice = peer(ALICE_NAT, false);
    let out = feed(&mut e, &request("INVITE", "c1", "", ""), alice);
    assert!(out[0].1.starts_with("SIP/2.0 503 "), "{}", out[0].1);
    assert_eq!(out[0].0, alice);
    assert!(header(&out[0].1, "To")[0].contains(";tag="));
    assert!(feed(&mut e, &request("ACK", "c1", ";tag=x", ""), alice).is_empty());

    let mut e = edge_with(backends());
    let spent = request("OPTIONS", "c2", "", "").replace("Max-Forwards: 70", "Max-Forwards: 0");
    let out = feed(&mut e, &spent, alice);
    assert!(out[0].1.starts_with("SIP/2.0 483 "), "{}", out[0].1);
}

#[test]
fn malformed_input_is_answered_or_dropped() {
    let mut e = edge_with(backends());
    let alice = peer(ALICE_NAT, false);
    let no_call_id = request("OPTIONS", "c", "", "").replace("Call-ID: c\r\n", "");
    let out = feed(&mut e, &no_call_id, alice);
    assert!(out[0].1.starts_with("SIP/2.0 400 "), "{}", out[0].1);
    assert!(feed(&mut e, "\u{1}\u{2}garbage", alice).is_empty());
    assert!(
        feed(
            &mut e,
            "INVITE sip:bob@voice.test SIP/2.0\r\nVia: SIP/2.0/UDP",
            alice
        )
        .is_empty()
    );
}

/// Runs heartbeat rounds from `t0` for `rounds` intervals; the backends in
/// `answering` answer every probe.
fn heartbeat_rounds(e: &mut Edge, t0: Instant, rounds: u32, answering: &[SocketAddr]) -> Instant {
    let mut now = t0;
    for _ in 0..rounds {
        e.handle_timeout(now);
        assert!(
            e.poll_transmit().is_none(),
            "heartbeats leave from the probe socket only"
        );
        let probes: Vec<(SocketAddr, Vec<u8>)> = std::iter::from_fn(|| e.poll_probe()).collect();
        for (to, bytes) in probes {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with("OPTIONS "), "{text}");
            if !answering.contains(&to) {
                continue;
            }
            let via = header(&text, "Via")[0].to_string();
            let answer = format!(
                "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: <sip:heartbeat@{EDGE}>;tag=hb\r\n\
                 To: <sip:x>;tag=b\r\nCall-ID: hb\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            );
            e.on_bytes(answer.as_bytes(), peer(&to.to_string(), false), now);
            assert!(
                e.poll_transmit().is_none(),
                "a heartbeat answer goes nowhere"
            );
        }
        now += Duration::from_millis(200);
    }
    now
}

#[test]
fn a_backend_that_misses_its_heartbeats_gets_no_new_calls_and_its_dialogs_go_to_its_buddy() {
    let all = backends();
    let (dead, alive) = (all[0], all[1]);
    let mut e = edge_with(all.clone());
    let t0 = Instant::now();
    let now = heartbeat_rounds(&mut e, t0, 2, &all);
    // dead stops answering: three missed probes later it is down.
    let now = heartbeat_rounds(&mut e, now, 4, &[alive]);
    for i in 0..32 {
        let out = feed(
            &mut e,
            &request("INVITE", &format!("new-{i}"), "", ""),
            peer(ALICE_NAT, false),
        );
        assert_eq!(out[0].0.addr, alive, "new calls only to live backends");
    }
    // A BYE in a dialog pinned to the dead backend goes to its buddy.
    let route = format!(
        "Route: <sip:{EDGE};lr;ft={};vb={}>\r\n",
        flow_token(peer(ALICE_NAT, false)),
        hex(&dead.to_string())
    );
    let out = feed(
        &mut e,
        &request("BYE", "old-call", ";tag=b1", &route),
        peer(ALICE_NAT, false),
    );
    assert_eq!(out[0].0.addr, alive);
    assert_eq!(Some(alive), buddy(dead, &all));
    assert_eq!(e.metrics.failovers(), 1);

    // It comes back: its dialogs are its own again, and new calls ramp.
    let now = heartbeat_rounds(&mut e, now, 1, &all);
    let out = feed(
        &mut e,
        &request("BYE", "old-call", ";tag=b1", &route),
        peer(ALICE_NAT, false),
    );
    assert_eq!(out[0].0.addr, dead);
    let to_dead = |e: &mut Edge, at: Instant| {
        (0..200)
            .filter(|i| {
                let out = feed_at(
                    e,
                    &request("INVITE", &format!("ramp-{i}"), "", ""),
                    peer(ALICE_NAT, false),
                    at,
                );
                out[0].0.addr == dead
            })
            .count()
    };
    let early = to_dead(&mut e, now);
    let halfway = to_dead(&mut e, now + Duration::from_secs(5));
    let ramped = to_dead(&mut e, now + Duration::from_secs(11));
    assert!(
        early < 10,
        "just back, it takes almost no new calls: {early}"
    );
    assert!(
        early < halfway && halfway < ramped,
        "{early} {halfway} {ramped}"
    );
    assert!(ramped > 60, "then its rendezvous share of 200: {ramped}");
}
