//! Call flows through the sans-I/O endpoint, with call legs faked: what
//! goes out to each side for what comes in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::digest::{Authenticator, ClientAuth, client_response};
use crate::endpoint::Endpoint;
use crate::legs::{Leg, LegReply, LegRequest, Media};
use crate::metrics::SipMetrics;
use crate::registrar::Registrar;
use crate::transaction::{Peer, Timers};

/// What the fake legs were asked to do.
#[derive(Default)]
struct LegLog {
    next: u64,
    remotes: HashMap<u64, SocketAddr>,
    bridged: Vec<(u64, u64)>,
    released: Vec<u64>,
    /// Calls whose legs were taken over from another member.
    adopted: Vec<u64>,
    /// Setups fail with this, as when no provider can make legs.
    fail: Option<String>,
    /// Requests held back instead of served, as by a slow provider.
    hold: bool,
    held: Vec<LegRequest>,
}

impl LegLog {
    /// Does what the endpoint asks, as a provider that always succeeds would.
    fn serve(&mut self, request: LegRequest) -> Option<LegReply> {
        if self.hold {
            self.held.push(request);
            return None;
        }
        let mut leg = || {
            self.next += 1;
            let port = 30000 + 2 * u16::try_from(self.next).unwrap();
            Leg {
                id: self.next,
                addr: SocketAddr::from(([203, 0, 113, 10], port)),
            }
        };
        match request {
            LegRequest::Setup { task, .. } if self.fail.is_some() => Some(LegReply::Ready {
                task,
                media: Err(self.fail.clone().unwrap_or_default()),
            }),
            LegRequest::Setup { task, caller, .. } => {
                let (a, b) = (leg(), leg());
                self.remotes.insert(a.id, caller);
                self.bridged.push((a.id, b.id));
                Some(LegReply::Ready {
                    task,
                    media: Ok(Media {
                        provider: None,
                        a,
                        b,
                    }),
                })
            }
            LegRequest::Update {
                media,
                side,
                remote,
            } => {
                self.remotes.insert(media.leg(side).id, remote);
                None
            }
            LegRequest::Adopt { task, .. } => {
                self.adopted.push(task);
                None
            }
            LegRequest::Release { media } => {
                self.released.extend([media.a.id, media.b.id]);
                Some(LegReply::Released {
                    to_callee: 0,
                    to_caller: 0,
                })
            }
        }
    }
}

const A: Peer = Peer {
    addr: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(10, 0, 0, 1),
        5060,
    )),
    reliable: false,
};
const B: Peer = Peer {
    addr: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(10, 0, 0, 2),
        5070,
    )),
    reliable: false,
};

struct Harness {
    ep: Endpoint,
    legs: Arc<Mutex<LegLog>>,
    now: Instant,
    wall: SystemTime,
}

impl Harness {
    fn new() -> Self {
        Self::at("192.0.2.1:5060")
    }

    /// An endpoint at SIP address `local`.
    fn at(local: &str) -> Self {
        let wall = SystemTime::now();
        let auth = Authenticator::new(
            "voice.test",
            "k",
            HashMap::from([
                ("alice".to_string(), "a".to_string()),
                ("bob".to_string(), "b".to_string()),
                ("carol".to_string(), "c".to_string()),
            ]),
        );
        let mut registrar = Registrar::new(auth);
        registrar.bind("bob", "sip:bob@10.0.0.2:5070", B, wall);
        let legs = Arc::new(Mutex::new(LegLog::default()));
        let ep = Endpoint::new(
            local.parse().unwrap(),
            registrar,
            true,
            Timers::default(),
            SipMetrics::default(),
        );
        Self {
            ep,
            legs,
            now: Instant::now(),
            wall,
        }
    }

    /// Does the leg work the endpoint asked for.
    fn run_legs(&mut self) {
        while let Some(request) = self.ep.poll_leg_request() {
            let reply = self.legs.lock().unwrap().serve(request);
            if let Some(reply) = reply {
                self.ep.on_leg_reply(reply, self.now, self.wall);
            }
        }
    }

    /// Feeds `text` from `from`; returns what went out, as (peer, text).
    fn feed(&mut self, text: &str, from: Peer) -> Vec<(Peer, String)> {
        self.ep.on_bytes(text.as_bytes(), from, self.now, self.wall);
        self.run_legs();
        std::iter::from_fn(|| self.ep.poll_transmit())
            .map(|(p, b)| (p, String::from_utf8_lossy(&b).into_owned()))
            .collect()
    }
}

const OFFER: &str = "v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
const ANSWER: &str = "v=0\r\no=b 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";

fn invite(to_user: &str, branch: &str, body: &str) -> String {
    invite_with(to_user, branch, body, "")
}

fn invite_with(to_user: &str, branch: &str, body: &str, extra: &str) -> String {
    let ctype = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_string()
    };
    format!(
        "INVITE sip:{to_user}@voice.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@voice.test>;tag=a1\r\n\
To: <sip:{to_user}@voice.test>\r\n\
Call-ID: call-a\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@10.0.0.1:5060>\r\n\
{extra}{ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_default()
}

/// A response from B to the INVITE we sent it.
fn reply_to(req: &str, code: &str, to_tag: &str, body: &str) -> String {
    let ctype = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_string()
    };
    format!(
        "SIP/2.0 {code}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag={to_tag}\r\nCall-ID: {}\r\nCSeq: {}\r\n\
Contact: <sip:bob@10.0.0.2:5070>\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
        header(req, "Via"),
        header(req, "From"),
        header(req, "To"),
        header(req, "Call-ID"),
        header(req, "CSeq"),
        body.len()
    )
}

/// Alice's INVITE, after answering the 407 challenge as `user`/`password`.
fn authed_invite(
    h: &mut Harness,
    to_user: &str,
    branch: &str,
    body: &str,
    user: &str,
    password: &str,
) -> String {
    let out = h.feed(&invite(to_user, &format!("{branch}-first"), body), A);
    let challenge = out
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 407 Proxy Authentication Required")
        .map(|(_, m)| header(m, "Proxy-Authenticate").to_string())
        .expect("a 407 challenge");
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let uri = format!("sip:{to_user}@voice.test");
    let response = client_response(&ClientAuth {
        user,
        password,
        realm: "voice.test",
        nonce,
        method: "INVITE",
        uri: &uri,
        nc: "00000001",
        cnonce: "c",
    });
    let auth = format!(
        "Proxy-Authorization: Digest username=\"{user}\", realm=\"voice.test\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{response}\", qop=auth, nc=00000001, cnonce=\"c\"\r\n"
    );
    invite_with(to_user, branch, body, &auth)
}

/// Starts a call: returns the INVITE that went to B.
fn start_call(h: &mut Harness) -> String {
    let msg = authed_invite(h, "bob", "z9hG4bK-a1", OFFER, "alice", "a");
    let out = h.feed(&msg, A);
    let lines: Vec<&str> = out.iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(
        lines,
        ["SIP/2.0 100 Trying", "INVITE sip:bob@10.0.0.2:5070 SIP/2.0"]
    );
    let (peer, to_b) = out[1].clone();
    assert_eq!(peer, B, "sent along the flow Bob registered from");
    to_b
}

#[test]
fn the_callee_gets_an_offer_for_its_own_leg() {
    let mut h = Harness::new();
    let to_b = start_call(&mut h);
    assert!(to_b.contains("c=IN IP4 203.0.113.10\r\n"), "{to_b}");
    assert!(
        to_b.contains("m=audio 30004 RTP/AVP 0\r\n"),
        "B's leg: {to_b}"
    );
    assert_ne!(
        header(&to_b, "Call-ID"),
        "call-a",
        "each side has its own dialog"
    );
    let legs = h.legs.lock().unwrap();
    assert_eq!(
        legs.remotes.get(&1),
        Some(&"10.0.0.1:4000".parse().unwrap())
    );
    assert_eq!(legs.bridged, [(1, 2)]);
}

#[test]
fn the_callee_sees_the_caller_as_the_directory_names_them() {
    let mut h = Harness::new();
    let to_b = start_call(&mut h);
    assert!(
        header(&to_b, "From").starts_with("<sip:alice@voice.test>;tag="),
        "no display name without one in the directory: {to_b}"
    );
    let (now, wall) = (h.now, h.wall);
    let alice = crate::digest::Account {
        ha1: voicecluster_api::config::ha1("alice", "voice.test", "a"),
        display_name: Some("Alice \"Ops\" Liddell".into()),
    };
    h.ep.put_users(
        crate::digest::Users::Changed {
            upsert: vec![("alice".into(), alice)],
            remove: Vec::new(),
        },
        now,
        wall,
    );
    let msg = authed_invite(&mut h, "bob", "z9hG4bK-a2", OFFER, "alice", "a");
    let out = h.feed(&msg, A);
    let (_, to_b) = out.iter().find(|(_, m)| m.starts_with("INVITE")).unwrap();
    let from = header(to_b, "From");
    assert!(
        from.starts_with(r#""Alice \"Ops\" Liddell" <sip:alice@voice.test>;tag="#),
        "{from}"
    );
}

#[test]
fn an_answer_reaches_the_caller_with_its_leg_and_bye_ends_both_sides() {
    let mut h = Harness::new();
    let to_b = start_call(&mut h);
    let out = h.feed(&reply_to(&to_b, "180 Ringing", "b1", ""), B);
    assert_eq!(first_line(&out[0].1), "SIP/2.0 180 Ringing");
    assert_eq!(out[0].0, A);
    let out = h.feed(&reply_to(&to_b, "200 OK", "b1", ANSWER), B);
    let lines: Vec<&str> = out.iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(
        lines,
        ["ACK sip:bob@10.0.0.2:5070 SIP/2.0", "SIP/2.0 200 OK"]
    );
    let ok = &out[1].1;
    assert!(ok.contains("m=audio 30002 RTP/AVP 0\r\n"), "A's leg: {ok}");
    assert!(ok.contains("Contact: <sip:192.0.2.1:5060>"), "{ok}");
    assert_eq!(
        h.legs.lock().unwrap().remotes.get(&2),
        Some(&"10.0.0.2:6000".parse().unwrap())
    );
    assert_eq!(h.ep.active_calls(), 1);

    // B hangs up: B gets 200, A gets a BYE in A's dialog.
    let bye = format!(
        "BYE sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bK-bye\r\n\
Max-Forwards: 70\r\nFrom: {};tag=b1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        header(&to_b, "To"),
        header(&to_b, "From"),
        header(&to_b, "Call-ID")
    );
    let out = h.feed(&bye, B);
    let lines: Vec<&str> = out.iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(
        lines,
        ["SIP/2.0 200 OK", "BYE sip:alice@10.0.0.1:5060 SIP/2.0"]
    );
    assert_eq!((out[0].0, out[1].0), (B, A));
    assert_eq!(header(&out[1].1, "Call-ID"), "call-a");
    assert!(header(&out[1].1, "To").ends_with(";tag=a1"));
    assert_eq!(h.ep.active_calls(), 0);
    let records = h.ep.take_records();
    assert_eq!(records[0].reason, "callee-bye");
    assert!(records[0].answered.is_some());
    let mut released = h.legs.lock().unwrap().released.clone();
    released.sort();
    assert_eq!(released, [1, 2]);
}

#[test]
fn a_busy_callee_is_relayed_and_acked() {
    let mut h = Harness::new();
    let to_b = start_call(&mut h);
    let out = h.feed(&reply_to(&to_b, "486 Busy Here", "b1", ""), B);
    let lines: Vec<&str> = out.iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(
        lines,
        ["ACK sip:bob@10.0.0.2:5070 SIP/2.0", "SIP/2.0 486 Busy Here"]
    );
    assert_eq!(h.ep.take_records()[0].reason, "486");
    assert_eq!(h.legs.lock().unwrap().released.len(), 2);
}

#[test]
fn a_call_waits_for_its_legs_and_a_cancel_meanwhile_releases_them_on_arrival() {
    let mut h = Harness::new();
    h.legs.lock().unwrap().hold = true;
    let msg = authed_invite(&mut h, "bob", "z9hG4bK-a1", OFFER, "alice", "a");
    let out = h.feed(&msg, A);
    let lines: Vec<&str> = out.iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(
        lines,
        ["SIP/2.0 100 Trying"],
        "nothing to B before the legs"
    );
    let cancel = "CANCEL sip:bob@voice.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-a1\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@voice.test>;tag=a1\r\nTo: <sip:bob@voice.test>\r\nCall-ID: call-a\r\n\
CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
    let out = h.feed(cancel, A);
    let lines: Vec<&str> = out.iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(lines, ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]);
    // The legs arrive late: they are released, and B never hears of the call.
    let held = std::mem::take(&mut h.legs.lock().unwrap().held);
    h.legs.lock().unwrap().hold = false;
    for request in held {
        let reply = h.legs.lock().unwrap().serve(request).unwrap();
        h.ep.on_leg_reply(reply, h.now, h.wall);
    }
    let release = h.ep.poll_leg_request().expect("the late legs are released");
    assert!(matches!(release, LegRequest::Release { .. }), "{release:?}");
    assert!(std::iter::from_fn(|| h.ep.poll_transmit()).next().is_none());
    assert_eq!(h.ep.take_records()[0].reason, "cancelled");
    assert_eq!(h.ep.active_calls(), 0);
}

#[test]
fn a_call_no_provider_can_make_legs_for_gets_503() {
    let mut h = Harness::new();
    h.legs.lock().unwrap().fail = Some("every provider at capacity".into());
    let msg = authed_invite(&mut h, "bob", "z9hG4bK-a1", OFFER, "alice", "a");
    let out = h.feed(&msg, A);
    let lines: Vec<&str> = out.iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(
        lines,
        ["SIP/2.0 100 Trying", "SIP/2.0 503 Service Unavailable"]
    );
    assert_eq!(h.ep.take_records()[0].reason, "503");
}

#[test]
fn cancel_gets_487_and_is_passed_on() {
    let mut h = Harness::new();
    let to_b = start_call(&mut h);
    let cancel = "CANCEL sip:bob@voice.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-a1\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@voice.test>;tag=a1\r\nTo: <sip:bob@voice.test>\r\nCall-ID: call-a\r\n\
CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
    let out = h.feed(cancel, A);
    let lines: Vec<&str> = out.iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(
        lines,
        [
            "SIP/2.0 200 OK",
            "SIP/2.0 487 Request Terminated",
            "CANCEL sip:bob@10.0.0.2:5070 SIP/2.0"
        ]
    );
    assert_eq!(
        header(&out[2].1, "Via"),
        header(&to_b, "Via"),
        "same branch as the INVITE"
    );
    assert!(header(&out[1].1, "CSeq").ends_with("INVITE"));
    assert_eq!(h.ep.take_records()[0].reason, "cancelled");
}

#[test]
fn calls_that_cannot_be_placed_get_the_right_status() {
    let mut h = Harness::new();
    let cases = [
        (
            invite("bob", "z9hG4bK-0", OFFER),
            "SIP/2.0 407 Proxy Authentication Required",
        ),
        (
            authed_invite(&mut h, "bob", "z9hG4bK-w", OFFER, "alice", "wrong"),
            "SIP/2.0 407 Proxy Authentication Required",
        ),
        (
            authed_invite(&mut h, "bob", "z9hG4bK-c", OFFER, "carol", "c"),
            "SIP/2.0 403 Forbidden",
        ),
        (
            authed_invite(&mut h, "nobody", "z9hG4bK-1", OFFER, "alice", "a"),
            "SIP/2.0 404 Not Found",
        ),
        (
            authed_invite(&mut h, "carol", "z9hG4bK-2", OFFER, "alice", "a"),
            "SIP/2.0 480 Temporarily Unavailable",
        ),
        (
            authed_invite(&mut h, "bob", "z9hG4bK-3", "", "alice", "a"),
            "SIP/2.0 488 Not Acceptable Here",
        ),
    ];
    for (msg, want) in cases {
        let out = h.feed(&msg, A);
        assert_eq!(first_line(&out.last().unwrap().1), want);
    }
    let bye = "BYE sip:x@voice.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-9\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@voice.test>;tag=a1\r\nTo: <sip:x@voice.test>;tag=z\r\nCall-ID: nope\r\n\
CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        first_line(&h.feed(bye, A)[0].1),
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    );
    assert_eq!(h.ep.active_calls(), 0);
    assert!(h.legs.lock().unwrap().bridged.is_empty());
}

/// A re-INVITE from Alice in her dialog, with `body` as the offer.
fn alice_reinvite(branch: &str, cseq: u32, body: &str) -> String {
    format!(
        "INVITE sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@voice.test>;tag=a1\r\nTo: <sip:bob@voice.test>;tag={tag}\r\n\
Call-ID: call-a\r\nCSeq: {cseq} INVITE\r\nContact: <sip:alice@10.0.0.1:5060>\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        tag = "{tag}",
    )
}

#[test]
fn a_reinvite_is_relayed_to_the_other_side_and_its_answer_comes_back() {
    let mut h = Harness::new();
    let to_b = start_call(&mut h);
    let out = h.feed(&reply_to(&to_b, "200 OK", "b1", ANSWER), B);
    let a_tag = tag_in(header(&out[1].1, "To"));
    // Alice puts Bob on hold from a new address, and offers another codec.
    let hold = "v=0\r\no=a 1 2 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 4100 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendonly\r\n";
    let reinvite = alice_reinvite("z9hG4bK-re1", 2, hold).replace("{tag}", &a_tag);
    let out = h.feed(&reinvite, A);
    let to_b_again = out
        .iter()
        .find(|(p, m)| *p == B && first_line(m).starts_with("INVITE "))
        .map(|(_, m)| m.clone())
        .expect("the re-INVITE goes on to Bob");
    assert_eq!(header(&to_b_again, "Call-ID"), header(&to_b, "Call-ID"));
    assert_eq!(header(&to_b_again, "CSeq"), "2 INVITE");
    assert!(to_b_again.contains("a=sendonly"), "hold reaches Bob");
    assert!(
        to_b_again.contains("m=audio 30004 RTP/AVP 8"),
        "Bob's leg, new codec: {to_b_again}"
    );
    assert_eq!(
        h.legs.lock().unwrap().remotes.get(&1),
        Some(&"10.0.0.9:4100".parse().unwrap()),
        "Alice's leg follows her"
    );
    // A second re-INVITE meanwhile is refused (glare).
    let out = h.feed(
        &alice_reinvite("z9hG4bK-re2", 3, hold).replace("{tag}", &a_tag),
        A,
    );
    assert!(
        out.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 491 Request Pending")
    );

    let held = "v=0\r\no=b 1 2 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 8\r\na=recvonly\r\n";
    let out = h.feed(&reply_to(&to_b_again, "200 OK", "b1", held), B);
    let lines: Vec<&str> = out.iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(
        lines,
        ["ACK sip:bob@10.0.0.2:5070 SIP/2.0", "SIP/2.0 200 OK"]
    );
    assert_eq!(header(&out[0].1, "CSeq"), "2 ACK");
    let ok = &out[1].1;
    assert_eq!(out[1].0, A);
    assert_eq!(header(ok, "CSeq"), "2 INVITE");
    assert!(
        ok.contains("a=recvonly"),
        "Bob's answer reaches Alice: {ok}"
    );
    assert!(ok.contains("m=audio 30002 RTP/AVP 8"), "Alice's leg: {ok}");

    // Alice's ACK ends the 200's retransmissions.
    let ack = format!(
        "ACK sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-ack2\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@voice.test>;tag=a1\r\nTo: <sip:bob@voice.test>;tag={a_tag}\r\n\
Call-ID: call-a\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    h.feed(&ack, A);
    h.now += std::time::Duration::from_secs(2);
    h.ep.handle_timeout(h.now, h.wall);
    let resent: Vec<String> = std::iter::from_fn(|| h.ep.poll_transmit())
        .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
        .filter(|m| m.starts_with("SIP/2.0 200") && m.contains("CSeq: 2 INVITE"))
        .collect();
    assert!(
        resent.is_empty(),
        "the re-INVITE's 200 is not resent after its ACK: {resent:?}"
    );
}

#[test]
fn a_refused_reinvite_is_refused_to_the_side_that_sent_it() {
    let mut h = Harness::new();
    let to_b = start_call(&mut h);
    let out = h.feed(&reply_to(&to_b, "200 OK", "b1", ANSWER), B);
    let a_tag = tag_in(header(&out[1].1, "To"));
    let out = h.feed(
        &alice_reinvite("z9hG4bK-re1", 2, OFFER).replace("{tag}", &a_tag),
        A,
    );
    let to_b_again = out
        .iter()
        .find(|(p, m)| *p == B && first_line(m).starts_with("INVITE "))
        .map(|(_, m)| m.clone())
        .expect("relayed");
    let out = h.feed(
        &reply_to(&to_b_again, "488 Not Acceptable Here", "b1", ""),
        B,
    );
    assert!(
        out.iter()
            .any(|(p, m)| *p == A && first_line(m) == "SIP/2.0 488 Not Acceptable Here"),
        "{out:?}"
    );
    assert_eq!(h.ep.active_calls(), 1, "the call goes on");
}

fn tag_in(to: &str) -> String {
    to.split(";tag=").nth(1).unwrap_or_default().to_string()
}

mod failover {
    use voicecluster_api::grpc::task_event::Kind;
    use voicecluster_api::grpc::{
        CallReplica, DirectorySnapshot, FailoverPolicy, ReplicaStored, SignalMember, TaskEvent,
        TaskHandle,
    };

    use super::*;
    use crate::lifecycle::Lifecycle;
    use crate::task_events::{Outbound, REGISTRAR_TASK};

    const OWNER: &str = "192.0.2.1:9446";
    const BUDDY: &str = "192.0.2.2:9446";

    fn as_member(h: Harness, member: &str) -> Harness {
        Harness {
            ep: h.ep.with_member(member.into()),
            ..h
        }
    }

    fn events(h: &mut Harness) -> Vec<(u64, Outbound)> {
        std::iter::from_fn(|| h.ep.poll_task_event()).collect()
    }

    fn deliver(h: &mut Harness, to: TaskHandle, from: TaskHandle, kind: Kind) {
        h.ep.on_task_event(
            TaskEvent {
                to: Some(to),
                from: Some(from),
                kind: Some(kind),
            },
            h.now,
            h.wall,
        );
    }

    fn out(h: &mut Harness) -> Vec<(Peer, String)> {
        std::iter::from_fn(|| h.ep.poll_transmit())
            .map(|(p, b)| (p, String::from_utf8_lossy(&b).into_owned()))
            .collect()
    }

    fn alice_bye(extra: &str) -> String {
        format!(
            "BYE sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-abye\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@voice.test>;tag=a1\r\nTo: <sip:bob@voice.test>;tag={}\r\n\
Call-ID: call-a\r\nCSeq: 2 BYE\r\n{extra}Content-Length: 0\r\n\r\n",
            "TAG"
        )
    }

    #[test]
    fn a_sync_is_answered_in_order_and_ends_with_sync_done() {
        // The owner carries an answered call; a member that comes back
        // asks it for what it knows.
        let (mut owner, _buddy, _task, _tag, _replica) = replicated_call();
        let _ = events(&mut owner);
        let asker = TaskHandle {
            member: BUDDY.into(),
            task: REGISTRAR_TASK,
        };
        let registrar = TaskHandle {
            member: OWNER.into(),
            task: REGISTRAR_TASK,
        };
        deliver(
            &mut owner,
            registrar.clone(),
            asker.clone(),
            Kind::Sync(voicecluster_api::grpc::SyncRegistrations {}),
        );
        let told = events(&mut owner);
        let answer = told
            .iter()
            .find_map(|(_, o)| match o {
                Outbound::InOrder(to, answers) if *to == asker => Some(answers),
                _ => None,
            })
            .expect("one answer in order to the asker");
        let kinds: Vec<&str> = answer
            .iter()
            .map(|(_, k)| crate::task_events::kind_name(k))
            .collect();
        assert_eq!(
            kinds,
            ["registrations", "call_replica", "sync_done"],
            "Bob's bindings, the call's replica, then the end of the answer"
        );
        // The asker's side: a SyncDone says that member's answers all came.
        let mut asking = as_member(Harness::new(), BUDDY);
        assert_eq!(asking.ep.poll_sync_done(), None);
        deliver(
            &mut asking,
            asker,
            registrar,
            Kind::SyncDone(voicecluster_api::grpc::SyncDone {}),
        );
        assert_eq!(asking.ep.poll_sync_done().as_deref(), Some(OWNER));
    }

    /// A call answered at the owner once its replica was stored at a new
    /// buddy: (owner, buddy, the owner's task, A's To tag, the replica).
    fn replicated_call() -> (Harness, Harness, TaskHandle, String, CallReplica) {
        let mut owner = as_member(Harness::new(), OWNER);
        let to_b = start_call(&mut owner);
        let sent = owner.feed(&reply_to(&to_b, "200 OK", "b1", ANSWER), B);
        let lines: Vec<&str> = sent.iter().map(|(_, m)| first_line(m)).collect();
        assert_eq!(
            lines,
            ["ACK sip:bob@10.0.0.2:5070 SIP/2.0"],
            "A's 200 is held"
        );
        let replicated = events(&mut owner);
        let [(task, Outbound::Buddy(Kind::CallReplica(replica)))] = &replicated[..] else {
            panic!("one replica for the buddy: {replicated:?}")
        };
        assert_eq!(replica.version, 1);
        assert_eq!(replica.caller, "alice");
        let owner_task = TaskHandle {
            member: OWNER.into(),
            task: *task,
        };

        // The buddy stores it and says so; then A hears the call is up.
        let mut buddy = as_member(Harness::at("192.0.2.2:5060"), BUDDY);
        let registrar = TaskHandle {
            member: BUDDY.into(),
            task: REGISTRAR_TASK,
        };
        deliver(
            &mut buddy,
            registrar,
            owner_task.clone(),
            Kind::CallReplica(replica.clone()),
        );
        let acked = events(&mut buddy);
        assert!(
            matches!(&acked[..], [(_, Outbound::To(to, Kind::ReplicaStored(ReplicaStored { version: 1 })))] if *to == owner_task),
            "{acked:?}"
        );
        deliver(
            &mut owner,
            owner_task.clone(),
            TaskHandle {
                member: BUDDY.into(),
                task: REGISTRAR_TASK,
            },
            Kind::ReplicaStored(ReplicaStored { version: 1 }),
        );
        let released = out(&mut owner);
        assert_eq!(first_line(&released[0].1), "SIP/2.0 200 OK");
        assert_eq!(released[0].0, A);
        let a_tag = tag_in(header(&released[0].1, "To"));
        // The buddy passing the replica back (after losing touch with the
        // owner) gives the owner no replica of its own call.
        deliver(
            &mut owner,
            TaskHandle {
                member: OWNER.into(),
                task: REGISTRAR_TASK,
            },
            TaskHandle {
                member: BUDDY.into(),
                task: REGISTRAR_TASK,
            },
            Kind::CallReplica(replica.clone()),
        );
        assert!(
            events(&mut owner).is_empty(),
            "nothing stored, nothing acked"
        );
        (owner, buddy, owner_task, a_tag, replica.clone())
    }

    /// The buddy took the call: the owner was told, the legs re-owned.
    fn assert_taken_over(buddy: &mut Harness, owner_task: &TaskHandle) {
        let told = events(buddy);
        assert!(
            told.iter().any(
                |(_, o)| matches!(o, Outbound::To(to, Kind::TakenOver(_)) if to == owner_task)
            ),
            "{told:?}"
        );
        assert!(
            told.iter().any(|(_, o)| matches!(o, Outbound::Broadcast(Kind::CallDropped(d)) if d.call_id == "call-a")),
            "every copy of the replica elsewhere goes: {told:?}"
        );
        buddy.run_legs();
        assert_eq!(buddy.legs.lock().unwrap().adopted.len(), 1);
    }

    fn policy(manual: bool, approved: &[&str]) -> DirectorySnapshot {
        DirectorySnapshot {
            signal_members: ["192.0.2.1", "192.0.2.2"]
                .iter()
                .map(|a| SignalMember {
                    address: (*a).into(),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            failover: Some(FailoverPolicy {
                manual,
                approved: approved.iter().map(|a| (*a).into()).collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_answer_waits_for_the_buddy_and_the_buddy_takes_the_call_over_only_when_told() {
        let (_owner, mut buddy, owner_task, a_tag, _) = replicated_call();

        // A BYE for the call without an edge saying its member is down is
        // not the buddy's to take.
        let bye = alice_bye("").replace("TAG", &a_tag);
        let refused = buddy.feed(&bye, A);
        assert_eq!(
            first_line(&refused[0].1),
            "SIP/2.0 481 Call/Transaction Does Not Exist"
        );
        // With it, the buddy takes over: 200 to A, BYE to B, the old member
        // told, the legs re-owned, and the whole call billed here.
        let bye = alice_bye("X-VC-Failover: 192.0.2.1:5060\r\n")
            .replace("TAG", &a_tag)
            .replace("z9hG4bK-abye", "z9hG4bK-abye2");
        let done = buddy.feed(&bye, A);
        let lines: Vec<&str> = done.iter().map(|(_, m)| first_line(m)).collect();
        assert_eq!(
            lines,
            ["SIP/2.0 200 OK", "BYE sip:bob@10.0.0.2:5070 SIP/2.0"]
        );
        assert_eq!(done[1].0, B);
        assert!(header(&done[1].1, "To").ends_with(";tag=b1"));
        assert_taken_over(&mut buddy, &owner_task);
        let records = buddy.ep.take_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].reason, "caller-bye");
        assert!(records[0].answered.is_some());
    }

    #[test]
    fn in_manual_mode_the_buddy_waits_for_approval_then_takes_the_calls_at_once() {
        let (_owner, mut buddy, owner_task, a_tag, _) = replicated_call();
        let (now, wall) = (buddy.now, buddy.wall);
        buddy.ep.on_directory(&policy(true, &[]), now, wall);
        let bye = alice_bye("X-VC-Failover: 192.0.2.1:5060\r\n").replace("TAG", &a_tag);
        let refused = buddy.feed(&bye, A);
        assert_eq!(first_line(&refused[0].1), "SIP/2.0 503 Service Unavailable");
        assert!(header(&refused[0].1, "Retry-After").starts_with('5'));
        assert_eq!(buddy.ep.b2bua.replicas.len(), 1, "the call waits, not lost");
        assert!(buddy.legs.lock().unwrap().adopted.is_empty());
        let report = buddy.ep.failover_report();
        assert_eq!(report.held[0].member, "192.0.2.1");
        assert_eq!(report.held[0].calls, 1);

        // Approved through the Directory: taken over before any request.
        buddy
            .ep
            .on_directory(&policy(true, &["192.0.2.1"]), now, wall);
        assert_taken_over(&mut buddy, &owner_task);
        let report = buddy.ep.failover_report();
        assert!(report.held.is_empty());
        assert_eq!(report.taken_over[0].calls, 1);
        let bye = alice_bye("X-VC-Failover: 192.0.2.1:5060\r\n")
            .replace("TAG", &a_tag)
            .replace("z9hG4bK-abye", "z9hG4bK-abye2");
        let done = buddy.feed(&bye, A);
        assert_eq!(first_line(&done[0].1), "SIP/2.0 200 OK");
        assert_eq!(buddy.ep.take_records().len(), 1);
    }

    #[test]
    fn a_member_handing_over_needs_no_approval() {
        let (mut owner, mut buddy, owner_task, _, _) = replicated_call();
        let (now, wall) = (buddy.now, buddy.wall);
        buddy.ep.on_directory(&policy(true, &[]), now, wall);
        owner.ep.set_lifecycle(Lifecycle::Left);
        let told = events(&mut owner);
        let [(task, Outbound::Buddy(Kind::HandOver(h)))] = &told[..] else {
            panic!("the buddy is told: {told:?}")
        };
        deliver(
            &mut buddy,
            TaskHandle {
                member: BUDDY.into(),
                task: REGISTRAR_TASK,
            },
            TaskHandle {
                member: OWNER.into(),
                task: *task,
            },
            Kind::HandOver(*h),
        );
        assert_taken_over(&mut buddy, &owner_task);
    }

    #[test]
    fn a_call_moves_to_the_member_the_edges_now_send_its_dialogs_to() {
        // The buddy took the call over from the failed member; then the
        // member set changed, and the edges send the dialog of the failed
        // member to a third member, which holds a copy of the replica.
        let (_owner, _buddy, _, a_tag, mut replica) = replicated_call();
        replica.owner_sip = "192.0.2.2:5060".into();
        replica.version += 1;
        let carrier = TaskHandle {
            member: BUDDY.into(),
            task: 7,
        };
        let mut third = as_member(Harness::at("192.0.2.3:5060"), "192.0.2.3:9446");
        deliver(
            &mut third,
            TaskHandle {
                member: "192.0.2.3:9446".into(),
                task: REGISTRAR_TASK,
            },
            carrier.clone(),
            Kind::CallReplica(replica),
        );
        events(&mut third);
        let bye = alice_bye("X-VC-Failover: 192.0.2.1:5060\r\n").replace("TAG", &a_tag);
        let done = third.feed(&bye, A);
        let lines: Vec<&str> = done.iter().map(|(_, m)| first_line(m)).collect();
        assert_eq!(
            lines,
            ["SIP/2.0 200 OK", "BYE sip:bob@10.0.0.2:5070 SIP/2.0"]
        );
        assert_taken_over(&mut third, &carrier);
        assert_eq!(third.ep.take_records().len(), 1, "billed where it ended");
        assert!(
            third.ep.failover_report().taken_over.is_empty(),
            "a move is no failover"
        );
    }
}
