use super::*;
use crate::wire::{Inbound, decode};

fn request(method: &str, branch: &str) -> Request {
    let text = format!(
        "{method} sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\n\
Max-Forwards: 70\r\n\
To: <sip:bob@example.com>\r\n\
From: <sip:alice@example.com>;tag=a1\r\n\
Call-ID: call-1\r\n\
CSeq: 1 {method}\r\n\
Content-Length: 0\r\n\r\n"
    );
    match decode(text.as_bytes(), false) {
        Inbound::Request(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn response(req: &Request, code: u16) -> Response {
    response_to(req, code, Some("b1"))
}

const UDP: Peer = Peer {
    addr: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        5060,
    )),
    reliable: false,
};
const TCP: Peer = Peer {
    addr: UDP.addr,
    reliable: true,
};

fn drain(t: &mut Transactions) -> Vec<Output> {
    std::iter::from_fn(|| t.poll_output()).collect()
}

fn transmits(outs: &[Output]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Transmit { bytes, .. } => Some(
                String::from_utf8_lossy(bytes)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            _ => None,
        })
        .collect()
}

/// Runs the timers until `until`, returning at what offsets from `t0`
/// something was transmitted.
fn run_until(t: &mut Transactions, t0: Instant, until: Duration) -> Vec<Duration> {
    let mut at = Vec::new();
    while let Some(due) = t.poll_timeout() {
        if due > t0 + until {
            break;
        }
        t.handle_timeout(due);
        for o in drain(t) {
            if matches!(o, Output::Transmit { .. }) {
                at.push(due - t0);
            }
        }
    }
    at
}

fn secs(s: &[f64]) -> Vec<Duration> {
    s.iter().map(|s| Duration::from_secs_f64(*s)).collect()
}

#[test]
fn non_invite_server_answers_retransmissions_then_forgets() {
    let mut t = Transactions::new(Timers::default());
    let t0 = Instant::now();
    let req = request("OPTIONS", "z9hG4bK-1");
    t.on_request(req.clone(), UDP, t0);
    let outs = drain(&mut t);
    let Some(Output::Request { key, .. }) = outs.first() else {
        panic!("{outs:?}")
    };
    t.respond(key, response(&req, 200), t0).unwrap();
    assert_eq!(transmits(&drain(&mut t)), ["SIP/2.0 200 OK"]);
    // The request again: the same answer, not a new request.
    t.on_request(req.clone(), UDP, t0 + Duration::from_secs(1));
    assert_eq!(transmits(&drain(&mut t)), ["SIP/2.0 200 OK"]);
    // Answering twice is a caller bug.
    assert!(t.respond(key, response(&req, 500), t0).is_err());
    // Timer J (64·T1) ends it; the same branch is then a new request.
    run_until(&mut t, t0, Duration::from_secs(33));
    assert!(t.is_empty());
    t.on_request(req, UDP, t0 + Duration::from_secs(40));
    assert!(matches!(
        drain(&mut t).first(),
        Some(Output::Request { .. })
    ));
}

#[test]
fn invite_server_sends_trying_and_retransmits_a_failure_until_the_ack() {
    let mut t = Transactions::new(Timers::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK-2");
    t.on_request(req.clone(), UDP, t0);
    let outs = drain(&mut t);
    assert_eq!(transmits(&outs), ["SIP/2.0 100 Trying"]);
    let Some(Output::Request { key, .. }) = outs.last() else {
        panic!()
    };
    let key = key.clone();
    t.respond(&key, response(&req, 486), t0).unwrap();
    assert_eq!(transmits(&drain(&mut t)), ["SIP/2.0 486 Busy Here"]);
    // Timer G: T1, then doubling up to T2.
    let sent = run_until(&mut t, t0, Duration::from_secs(8));
    assert_eq!(sent, secs(&[0.5, 1.5, 3.5, 7.5]));
    // The ACK stops them; the transaction ends after T4.
    let mut ack = request("ACK", "z9hG4bK-2");
    ack.headers.retain(|h| !matches!(h, Header::CSeq(_)));
    ack.headers.push(make_header("CSeq", "1 ACK".into()));
    t.on_request(ack, UDP, t0 + Duration::from_secs(8));
    assert!(drain(&mut t).is_empty(), "the ACK is absorbed");
    let later = run_until(&mut t, t0, Duration::from_secs(20));
    assert!(later.is_empty(), "retransmitted after the ACK: {later:?}");
    assert!(t.is_empty());
}

#[test]
fn invite_server_gives_up_on_a_missing_ack() {
    let mut t = Transactions::new(Timers::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK-3");
    t.on_request(req.clone(), UDP, t0);
    let key = TxKey::of("z9hG4bK-3", &Method::Invite);
    drain(&mut t);
    t.respond(&key, response(&req, 404), t0).unwrap();
    drain(&mut t);
    let sent = run_until(&mut t, t0, Duration::from_secs(40));
    // 0.5, 1.5, 3.5, 7.5, then every 4 s until Timer H at 32 s.
    assert_eq!(sent.len(), 10, "{sent:?}");
    assert!(t.is_empty());
}

#[test]
fn an_accepted_invite_absorbs_retransmissions_and_passes_the_ack_on() {
    let mut t = Transactions::new(Timers::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK-4");
    t.on_request(req.clone(), UDP, t0);
    drain(&mut t);
    let key = TxKey::of("z9hG4bK-4", &Method::Invite);
    t.respond(&key, response(&req, 200), t0).unwrap();
    drain(&mut t);
    t.on_request(req, UDP, t0 + Duration::from_millis(500));
    assert!(drain(&mut t).is_empty());
    // The ACK for a 2xx has its own branch.
    let mut ack = request("ACK", "z9hG4bK-ack");
    ack.headers.retain(|h| !matches!(h, Header::CSeq(_)));
    ack.headers.push(make_header("CSeq", "1 ACK".into()));
    t.on_request(ack, UDP, t0 + Duration::from_secs(1));
    assert!(matches!(drain(&mut t).as_slice(), [Output::Ack { .. }]));
}

#[test]
fn a_2xx_is_resent_until_the_dialog_has_the_ack() {
    let mut t = Transactions::new(Timers::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK-9");
    t.on_request(req.clone(), UDP, t0);
    drain(&mut t);
    let key = TxKey::of("z9hG4bK-9", &Method::Invite);
    t.respond(&key, response(&req, 200), t0).unwrap();
    drain(&mut t);
    let sent = run_until(&mut t, t0, Duration::from_secs(2));
    assert_eq!(sent, secs(&[0.5, 1.5]));
    t.acknowledged(&key);
    assert!(run_until(&mut t, t0, Duration::from_secs(40)).is_empty());
    assert!(t.is_empty());
}

#[test]
fn non_invite_client_retransmits_then_times_out() {
    let mut t = Transactions::new(Timers::default());
    let t0 = Instant::now();
    let key = t
        .send_request(request("OPTIONS", "z9hG4bK-5"), UDP, t0)
        .unwrap();
    assert_eq!(transmits(&drain(&mut t)).len(), 1);
    let mut sent = Vec::new();
    let mut timed_out = false;
    while let Some(due) = t.poll_timeout() {
        t.handle_timeout(due);
        for o in drain(&mut t) {
            match o {
                Output::Transmit { .. } => sent.push(due - t0),
                Output::Timeout { key: k } => timed_out = k == key,
                _ => {}
            }
        }
    }
    assert_eq!(
        &sent[..6],
        secs(&[0.5, 1.5, 3.5, 7.5, 11.5, 15.5]).as_slice()
    );
    assert!(timed_out, "no Timer F");
    assert!(t.is_empty());
}

#[test]
fn invite_client_acks_a_failure_even_when_it_is_repeated() {
    let mut t = Transactions::new(Timers::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK-6");
    t.send_request(req.clone(), UDP, t0).unwrap();
    drain(&mut t);
    t.on_response(response(&req, 180), t0);
    assert!(matches!(
        drain(&mut t).as_slice(),
        [Output::Response { .. }]
    ));
    // A provisional response stops Timer A.
    assert!(run_until(&mut t, t0, Duration::from_secs(5)).is_empty());
    t.on_response(response(&req, 486), t0 + Duration::from_secs(5));
    let outs = drain(&mut t);
    assert_eq!(transmits(&outs), ["ACK sip:bob@example.com SIP/2.0"]);
    let ack = outs
        .iter()
        .find_map(|o| match o {
            Output::Transmit { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .unwrap();
    assert!(ack.contains("CSeq: 1 ACK"), "{ack}");
    assert!(ack.contains("branch=z9hG4bK-6"), "{ack}");
    assert!(ack.contains("tag=b1"), "the ACK carries the To tag: {ack}");
    t.on_response(response(&req, 486), t0 + Duration::from_secs(6));
    assert_eq!(
        transmits(&drain(&mut t)),
        ["ACK sip:bob@example.com SIP/2.0"]
    );
}

#[test]
fn reliable_transports_never_retransmit() {
    let mut t = Transactions::new(Timers::default());
    let t0 = Instant::now();
    t.send_request(request("OPTIONS", "z9hG4bK-7"), TCP, t0)
        .unwrap();
    drain(&mut t);
    let req = request("OPTIONS", "z9hG4bK-8");
    t.on_request(req.clone(), TCP, t0);
    drain(&mut t);
    let key = TxKey::of("z9hG4bK-8", &Method::Options);
    t.respond(&key, response(&req, 200), t0).unwrap();
    drain(&mut t);
    assert_eq!(
        t.len(),
        (0, 1),
        "a TCP server transaction ends with its answer"
    );
    let sent = run_until(&mut t, t0, Duration::from_secs(40));
    assert!(sent.is_empty(), "{sent:?}");
    assert!(t.is_empty(), "Timer F still ends the client transaction");
}
