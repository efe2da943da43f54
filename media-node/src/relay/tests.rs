use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0, (seq >> 8) as u8, seq as u8, 0, 0, 0, 0, 0, 0, 0, 1];
    p.extend_from_slice(payload);
    p
}

fn rtcp() -> Vec<u8> {
    // An empty receiver report.
    vec![0x80, 201, 0, 1, 0, 0, 0, 1]
}

fn relay() -> Relay {
    Relay::new(
        PortPool::new(30000, 30099).unwrap(),
        10,
        Duration::from_secs(5),
    )
}

/// A bridged pair: A at 10.0.0.1:4000, B at 10.0.0.2:6000 per their SDP.
fn pair(r: &mut Relay, now: Instant) -> ((LegId, u16), (LegId, u16)) {
    let a = r.create_leg(now).unwrap();
    let b = r.create_leg(now).unwrap();
    r.set_remote(a.0, addr("10.0.0.1:4000")).unwrap();
    r.set_remote(b.0, addr("10.0.0.2:6000")).unwrap();
    r.bridge(a.0, b.0).unwrap();
    (a, b)
}

#[test]
fn packets_cross_the_bridge_in_order_and_intact() {
    let mut r = relay();
    let now = Instant::now();
    let ((a, pa), (b, pb)) = pair(&mut r, now);
    for seq in 0..100u16 {
        let p = rtp(seq, &seq.to_be_bytes());
        let out = r.on_packet(pa, addr("10.0.0.1:4000"), &p, now).unwrap();
        assert_eq!(
            out,
            Transmit {
                from_port: pb,
                to: Destination::Udp(addr("10.0.0.2:6000")),
                bytes: p
            }
        );
        let back = rtp(seq, b"pong");
        let out = r.on_packet(pb, addr("10.0.0.2:6000"), &back, now).unwrap();
        assert_eq!(
            out,
            Transmit {
                from_port: pa,
                to: Destination::Udp(addr("10.0.0.1:4000")),
                bytes: back
            }
        );
    }
    let sa = r.stats(a).unwrap();
    let sb = r.stats(b).unwrap();
    assert_eq!(
        (sa.packets_in, sa.packets_out, sb.packets_in, sb.packets_out),
        (100, 100, 100, 100)
    );
}

#[test]
fn latching_follows_the_real_source_and_drops_strangers() {
    let mut r = relay();
    let now = Instant::now();
    let ((_, pa), (b, pb)) = pair(&mut r, now);
    // Before B sends anything, A's media goes where B's SDP says.
    let out = r
        .on_packet(pa, addr("10.0.0.1:4000"), &rtp(1, b"x"), now)
        .unwrap();
    assert_eq!(out.to, Destination::Udp(addr("10.0.0.2:6000")));
    // B is behind a NAT: its packets come from another port.
    let out = r
        .on_packet(pb, addr("192.0.2.7:50123"), &rtp(1, b"y"), now)
        .unwrap();
    assert_eq!(out.to, Destination::Udp(addr("10.0.0.1:4000")));
    let out = r
        .on_packet(pa, addr("10.0.0.1:4000"), &rtp(2, b"x"), now)
        .unwrap();
    assert_eq!(
        out.to,
        Destination::Udp(addr("192.0.2.7:50123")),
        "A's media follows B's real source"
    );
    // Someone else sending to B's port is ignored.
    assert_eq!(
        r.on_packet(pb, addr("198.51.100.9:1234"), &rtp(9, b"evil"), now),
        None
    );
    assert_eq!(r.stats(b).unwrap().dropped, 1);
    // A re-INVITE with a new address starts latching afresh.
    r.set_remote(b, addr("10.0.0.3:6000")).unwrap();
    let out = r
        .on_packet(pa, addr("10.0.0.1:4000"), &rtp(3, b"x"), now)
        .unwrap();
    assert_eq!(out.to, Destination::Udp(addr("10.0.0.3:6000")));
}

#[test]
fn rtcp_goes_port_plus_one_and_garbage_is_dropped() {
    let mut r = relay();
    let now = Instant::now();
    let ((a, pa), (_, pb)) = pair(&mut r, now);
    let out = r
        .on_packet(pa + 1, addr("10.0.0.1:4001"), &rtcp(), now)
        .unwrap();
    assert_eq!(
        (out.from_port, out.to),
        (pb + 1, Destination::Udp(addr("10.0.0.2:6001")))
    );
    assert_eq!(r.on_packet(pa, addr("10.0.0.1:4000"), b"hello", now), None);
    assert_eq!(
        r.on_packet(pa, addr("10.0.0.1:4000"), &rtcp(), now),
        None,
        "RTCP on the RTP port"
    );
    assert_eq!(
        r.on_packet(40000, addr("10.0.0.1:4000"), &rtp(1, b""), now),
        None,
        "no such leg"
    );
    assert_eq!(r.stats(a).unwrap().dropped, 2);
}

#[test]
fn capacity_and_ports_are_limits_with_clear_errors_and_destroy_frees() {
    let mut r = Relay::new(
        PortPool::new(30000, 30007).unwrap(),
        3,
        Duration::from_secs(5),
    );
    let now = Instant::now();
    let legs: Vec<LegId> = (0..3).map(|_| r.create_leg(now).unwrap().0).collect();
    assert_eq!(r.create_leg(now), Err(RelayError::AtCapacity(3)));
    let mut r2 = Relay::new(
        PortPool::new(30000, 30003).unwrap(),
        10,
        Duration::from_secs(5),
    );
    r2.create_leg(now).unwrap();
    r2.create_leg(now).unwrap();
    let err = r2.create_leg(now).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    assert_eq!(r.free_ports(), 1);
    for l in legs {
        r.destroy(l).unwrap();
    }
    assert_eq!(r.free_ports(), 4);
    assert!(r.is_empty());
    assert_eq!(r.destroy(LegId(99)), Err(RelayError::NoSuchLeg(LegId(99))));
}

#[test]
fn bridges_are_one_to_one() {
    let mut r = relay();
    let now = Instant::now();
    let ((a, _), (b, _)) = pair(&mut r, now);
    let c = r.create_leg(now).unwrap().0;
    assert!(r.bridge(a, c).is_err());
    assert!(r.bridge(c, c).is_err());
    r.destroy(b).unwrap();
    r.bridge(a, c).unwrap();
}

#[test]
fn silent_legs_time_out_once() {
    let mut r = relay();
    let t0 = Instant::now();
    let ((a, pa), (b, _)) = pair(&mut r, t0);
    r.on_packet(
        pa,
        addr("10.0.0.1:4000"),
        &rtp(1, b"x"),
        t0 + Duration::from_secs(4),
    )
    .unwrap();
    assert_eq!(r.timed_out(t0 + Duration::from_secs(6)), vec![b]);
    assert!(r.timed_out(t0 + Duration::from_secs(7)).is_empty());
    assert_eq!(r.timed_out(t0 + Duration::from_secs(9)), vec![a]);
}

#[test]
fn a_new_media_timeout_holds_for_the_legs_already_there() {
    let mut r = relay();
    let t0 = Instant::now();
    let ((a, _), (b, _)) = pair(&mut r, t0);
    // 3 s of silence: under the 5 s timeout.
    assert!(r.timed_out(t0 + Duration::from_secs(3)).is_empty());
    r.set_media_timeout(Duration::from_secs(2));
    assert_eq!(r.media_timeout(), Duration::from_secs(2));
    assert_eq!(r.timed_out(t0 + Duration::from_secs(3)), vec![a, b]);
    // Longer again: a leg silent for less is not reported.
    let c = r.create_leg(t0 + Duration::from_secs(3)).unwrap().0;
    r.set_media_timeout(Duration::from_secs(60));
    assert!(r.timed_out(t0 + Duration::from_secs(30)).is_empty());
    assert_eq!(r.timed_out(t0 + Duration::from_secs(63)), vec![c]);
}

#[test]
fn an_in_process_leg_gets_rtp_handed_over_and_keeps_rtcp_to_itself() {
    let mut r = relay();
    let now = Instant::now();
    let (a, pa) = r.create_leg(now).unwrap();
    let (w, pw) = r.create_leg(now).unwrap();
    r.set_remote(a, addr("10.0.0.1:4000")).unwrap();
    r.set_in_process(w).unwrap();
    r.bridge(a, w).unwrap();

    let p = rtp(1, b"to the browser");
    let out = r.on_packet(pa, addr("10.0.0.1:4000"), &p, now).unwrap();
    assert_eq!(
        out,
        Transmit {
            from_port: pw,
            to: Destination::InProcess,
            bytes: p
        }
    );
    let back = rtp(1, b"from the browser");
    let out = r.on_media(w, &back, now).unwrap();
    assert_eq!(
        out,
        Transmit {
            from_port: pa,
            to: Destination::Udp(addr("10.0.0.1:4000")),
            bytes: back
        }
    );
    // RTCP either way stays on its side, and is not a drop.
    assert_eq!(
        r.on_packet(pa + 1, addr("10.0.0.1:4001"), &rtcp(), now),
        None
    );
    assert_eq!(r.on_media(w, &rtcp(), now), None);
    // Nobody reaches the in-process leg's port over the relay's UDP path.
    assert_eq!(
        r.on_packet(pw, addr("10.0.0.9:1"), &rtp(2, b"x"), now),
        None
    );
    let (sa, sw) = (r.stats(a).unwrap(), r.stats(w).unwrap());
    assert_eq!((sa.packets_in, sa.rtcp_in, sa.dropped), (1, 1, 0));
    assert_eq!(
        (sw.packets_in, sw.packets_out, sw.rtcp_in, sw.dropped),
        (1, 1, 1, 1)
    );
}

#[test]
fn telephone_events_take_the_payload_type_of_each_side() {
    let mut r = relay();
    let now = Instant::now();
    let ((a, pa), (b, _)) = pair(&mut r, now);
    r.detect_dtmf(a, 101).unwrap();
    r.detect_dtmf(b, 126).unwrap();
    let mut event = rtp(1, &[5, 0x80, 0, 160]);
    event[1] = 0x80 | 101;
    let out = r.on_packet(pa, addr("10.0.0.1:4000"), &event, now).unwrap();
    assert_eq!(out.bytes[1], 0x80 | 126, "marker kept, payload type mapped");
    assert_eq!(out.bytes[2..], event[2..]);
    // Audio is left alone.
    let audio = rtp(2, b"pcmu");
    let out = r.on_packet(pa, addr("10.0.0.1:4000"), &audio, now).unwrap();
    assert_eq!(out.bytes, audio);
}
