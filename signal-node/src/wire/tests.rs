use super::*;

const OPTIONS: &str = "OPTIONS sip:alice@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: <sip:alice@example.com>\r\n\
From: <sip:bob@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 63104 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";

fn reply_of(i: &Inbound) -> String {
    match i {
        Inbound::Rejected { reply: Some(r), .. } => String::from_utf8_lossy(r).into_owned(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn a_plain_request_is_accepted() {
    let Inbound::Request(r) = decode(OPTIONS.as_bytes(), false) else {
        panic!("not accepted")
    };
    assert_eq!(r.method(), &sip::Method::Options);
    assert_eq!(r.call_id_header().unwrap().value(), "a84b4c76e66710");
}

#[test]
fn compact_names_folded_lines_ipv6_and_extension_headers_are_accepted() {
    let msg = "INVITE sip:bob@[2001:db8::1]:5060 SIP/2.0\r\n\
v: SIP/2.0/UDP [2001:db8::2]:5070;branch=z9hG4bKnashds8\r\n\
Max-Forwards: 70\r\n\
t: <sip:bob@[2001:db8::1]>\r\n\
f: Alice\r\n <sip:alice@example.com>;tag=88sja8x\r\n\
i: 987asjd97y7atg\r\n\
CSeq: 986759 INVITE\r\n\
m: <sip:alice@[2001:db8::2]:5070>\r\n\
X-Custom-Thing: whatever; it=is\r\n\
l: 4\r\n\r\nv=0\r\n";
    let Inbound::Request(r) = decode(msg.as_bytes(), false) else {
        panic!("not accepted: {:?}", decode(msg.as_bytes(), false))
    };
    assert_eq!(r.method(), &sip::Method::Invite);
    assert_eq!(r.call_id_header().unwrap().value(), "987asjd97y7atg");
    assert_eq!(r.body(), b"v=0\r");
    let via = r.top_via_header().unwrap().typed().unwrap();
    assert_eq!(via.sent_by().to_string(), "[2001:db8::2]:5070");
}

#[test]
fn a_body_longer_than_content_length_is_cut() {
    let msg = OPTIONS.replace("Content-Length: 0", "Content-Length: 2") + "abcdef";
    let Inbound::Request(r) = decode(msg.as_bytes(), false) else {
        panic!("not accepted")
    };
    assert_eq!(r.body(), b"ab");
}

#[test]
fn content_length_beyond_the_body_gets_400_with_the_dialog_headers() {
    let msg = OPTIONS.replace("Content-Length: 0", "Content-Length: 300");
    let reply = reply_of(&decode(msg.as_bytes(), false));
    assert!(reply.starts_with("SIP/2.0 400 Bad Request\r\n"), "{reply}");
    assert!(reply.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"));
    assert!(reply.contains("Call-ID: a84b4c76e66710\r\n"));
    assert!(reply.contains("CSeq: 63104 OPTIONS\r\n"));
    assert!(reply.contains("Content-Length 300"), "{reply}");
    assert!(reply.ends_with("Content-Length: 0\r\n\r\n"));
}

#[test]
fn missing_mandatory_headers_get_400() {
    for header in [
        "Call-ID: a84b4c76e66710\r\n",
        "CSeq: 63104 OPTIONS\r\n",
        "From: <sip:bob@example.com>;tag=1928301774\r\n",
        "To: <sip:alice@example.com>\r\n",
    ] {
        let msg = OPTIONS.replace(header, "");
        let reply = reply_of(&decode(msg.as_bytes(), false));
        assert!(reply.starts_with("SIP/2.0 400 "), "{reply}");
        assert!(reply.contains("missing"), "{reply}");
    }
}

#[test]
fn cseq_must_match_the_method() {
    let msg = OPTIONS.replace("CSeq: 63104 OPTIONS", "CSeq: 63104 INVITE");
    assert!(reply_of(&decode(msg.as_bytes(), false)).starts_with("SIP/2.0 400 "));
    let msg = OPTIONS.replace("CSeq: 63104 OPTIONS", "CSeq: x OPTIONS");
    assert!(reply_of(&decode(msg.as_bytes(), false)).starts_with("SIP/2.0 400 "));
}

#[test]
fn unknown_methods_get_501() {
    let msg = OPTIONS.replace("OPTIONS", "FROBNICATE");
    let reply = reply_of(&decode(msg.as_bytes(), false));
    assert!(
        reply.starts_with("SIP/2.0 501 Not Implemented\r\n"),
        "{reply}"
    );
    assert!(reply.contains("CSeq: 63104 FROBNICATE\r\n"));
}

#[test]
fn a_message_without_via_is_dropped() {
    let msg = OPTIONS.replace(
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n",
        "",
    );
    assert!(matches!(
        decode(msg.as_bytes(), false),
        Inbound::Rejected { reply: None, .. }
    ));
}

#[test]
fn truncated_garbage_and_oversized_input_are_dropped() {
    let truncated = &OPTIONS.as_bytes()[..OPTIONS.len() / 2];
    let garbage: Vec<u8> = (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let huge = OPTIONS.replace("Content-Length: 0", "X-Pad: ") + &"a".repeat(70_000);
    for input in [truncated, &garbage, huge.as_bytes(), b"\0\r\n\r\n"] {
        match decode(input, false) {
            Inbound::Rejected { reply: None, .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_bad_via_or_broken_from_gets_400() {
    let msg = OPTIONS.replace(
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds",
        "Via: nonsense",
    );
    assert!(reply_of(&decode(msg.as_bytes(), false)).starts_with("SIP/2.0 400 "));
    let msg = OPTIONS.replace(";branch=z9hG4bK776asdhds", "");
    assert!(reply_of(&decode(msg.as_bytes(), false)).contains("branch"));
}

#[test]
fn responses_are_never_answered() {
    let msg = "SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n";
    assert!(matches!(
        decode(msg.as_bytes(), false),
        Inbound::Rejected { reply: None, .. }
    ));
}

#[test]
fn crlf_is_a_keep_alive() {
    assert!(matches!(decode(b"\r\n\r\n", false), Inbound::KeepAlive));
}
