use std::collections::HashMap;

use super::*;
use crate::digest::{Account, ClientAuth, Users, client_response};
use crate::wire::{Inbound, decode};

fn registrar() -> Registrar {
    Registrar::new(Authenticator::new(
        "voice.example.com",
        "k",
        HashMap::from([
            ("alice".to_string(), "wonder".to_string()),
            ("bob".to_string(), "builder".to_string()),
        ]),
    ))
}

/// A REGISTER for `aor_user` with `extra` header lines, authenticated as
/// `user`/`password` against `challenge` when given.
fn register(aor_user: &str, extra: &str, cseq: u32, auth: Option<(&str, &str, &str)>) -> Request {
    let authz = auth
        .map(|(user, password, challenge)| {
            let nonce = challenge
                .split("nonce=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let resp = client_response(&ClientAuth {
                user,
                password,
                realm: "voice.example.com",
                nonce,
                method: "REGISTER",
                uri: "sip:voice.example.com",
                nc: "00000001",
                cnonce: "abc",
            });
            format!(
                "Authorization: Digest username=\"{user}\", realm=\"voice.example.com\", \
                 nonce=\"{nonce}\", uri=\"sip:voice.example.com\", response=\"{resp}\", \
                 qop=auth, nc=00000001, cnonce=\"abc\"\r\n"
            )
        })
        .unwrap_or_default();
    let text = format!(
        "REGISTER sip:voice.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{cseq}\r\n\
Max-Forwards: 70\r\n\
To: <sip:{aor_user}@voice.example.com>\r\n\
From: <sip:{aor_user}@voice.example.com>;tag=r1\r\n\
Call-ID: reg-1\r\n\
CSeq: {cseq} REGISTER\r\n\
{extra}{authz}Content-Length: 0\r\n\r\n"
    );
    match decode(text.as_bytes(), false) {
        Inbound::Request(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn code(r: &Response) -> u16 {
    r.status_code().code()
}

fn header(r: &Response, name: &str) -> Vec<String> {
    r.headers
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.value().to_string())
        .collect()
}

/// Challenge first, then answer it: what every device does.
fn authed(
    reg: &mut Registrar,
    user: &str,
    pw: &str,
    extra: &str,
    cseq: u32,
    now: SystemTime,
) -> Response {
    let first = reg.register(&register(user, extra, cseq, None), SRC, "t", now);
    assert_eq!(code(&first), 401);
    let challenge = header(&first, "WWW-Authenticate").remove(0);
    reg.register(
        &register(user, extra, cseq + 1, Some((user, pw, &challenge))),
        SRC,
        "t",
        now,
    )
}

const SRC: Peer = Peer {
    addr: std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        5070,
    )),
    reliable: false,
};

const TWO: &str = "Contact: <sip:alice@10.0.0.1:5060>\r\nContact: \"Desk\" <sip:alice@10.0.0.2:5060;transport=tcp>;expires=120\r\n";

#[test]
fn authenticated_users_register_several_contacts() {
    let mut reg = registrar();
    let now = SystemTime::now();
    let ok = authed(&mut reg, "alice", "wonder", TWO, 1, now);
    assert_eq!(code(&ok), 200);
    let contacts = header(&ok, "Contact");
    assert_eq!(contacts.len(), 2, "{contacts:?}");
    assert!(contacts.contains(&"<sip:alice@10.0.0.1:5060>;expires=3600".to_string()));
    assert!(contacts.contains(&"<sip:alice@10.0.0.2:5060;transport=tcp>;expires=120".to_string()));
    assert_eq!(reg.lookup("alice", now).len(), 2);
    assert_eq!(reg.registered_users(now), 1);
    // One lapses after 120 s, the other after an hour.
    assert_eq!(reg.lookup("alice", now + Duration::from_secs(121)).len(), 1);
    reg.expire(now + Duration::from_secs(3601));
    assert!(reg.lookup("alice", now).is_empty());
}

#[test]
fn wrong_passwords_and_foreign_addresses_are_refused() {
    let mut reg = registrar();
    let now = SystemTime::now();
    assert_eq!(code(&authed(&mut reg, "alice", "guess", TWO, 1, now)), 401);
    // Bob may not register Alice's address.
    let first = reg.register(&register("alice", TWO, 1, None), SRC, "t", now);
    let challenge = header(&first, "WWW-Authenticate").remove(0);
    let r = reg.register(
        &register("alice", TWO, 2, Some(("bob", "builder", &challenge))),
        SRC,
        "t",
        now,
    );
    assert_eq!(code(&r), 403);
    assert!(reg.lookup("alice", now).is_empty());
}

#[test]
fn too_brief_intervals_get_423_with_min_expires() {
    let mut reg = registrar();
    let now = SystemTime::now();
    let r = authed(
        &mut reg,
        "alice",
        "wonder",
        "Contact: <sip:alice@10.0.0.1>\r\nExpires: 30\r\n",
        1,
        now,
    );
    assert_eq!(code(&r), 423);
    assert_eq!(header(&r, "Min-Expires"), ["60"]);
}

#[test]
fn contacts_are_removed_one_by_one_or_all_with_a_star() {
    let mut reg = registrar();
    let now = SystemTime::now();
    authed(&mut reg, "alice", "wonder", TWO, 1, now);
    let r = authed(
        &mut reg,
        "alice",
        "wonder",
        "Contact: <sip:alice@10.0.0.1:5060>;expires=0\r\n",
        3,
        now,
    );
    assert_eq!(code(&r), 200);
    assert_eq!(reg.lookup("alice", now).len(), 1);
    // An older REGISTER of the same Call-ID cannot bring it back.
    let stale = authed(
        &mut reg,
        "alice",
        "wonder",
        "Contact: <sip:alice@10.0.0.2:5060;transport=tcp>;expires=0\r\n",
        0,
        now,
    );
    assert_eq!(code(&stale), 200);
    assert_eq!(reg.lookup("alice", now).len(), 1);
    let bad = authed(&mut reg, "alice", "wonder", "Contact: *\r\n", 5, now);
    assert_eq!(code(&bad), 400, "* needs Expires: 0");
    let all = authed(
        &mut reg,
        "alice",
        "wonder",
        "Contact: *\r\nExpires: 0\r\n",
        7,
        now,
    );
    assert_eq!(code(&all), 200);
    assert!(reg.lookup("alice", now).is_empty());
}

#[test]
fn contact_lists_and_user_parts_parse() {
    assert_eq!(
        split_list("\"A, B\" <sip:a@x>;q=1, <sip:b@y,z>"),
        ["\"A, B\" <sip:a@x>;q=1", "<sip:b@y,z>"]
    );
    assert_eq!(
        user_of("\"Al\" <sip:alice@h:5060>;tag=1").as_deref(),
        Some("alice")
    );
    assert_eq!(user_of("sip:bob@h;tag=2").as_deref(), Some("bob"));
    assert_eq!(user_of("<sip:h>"), None);
    assert!(parse_contact("<http://x>").is_err());
    assert!(parse_contact("<sip:a@b>;expires=soon").is_err());
}

#[test]
fn users_put_in_force_whole_or_as_changes_drop_the_bindings_of_those_gone() {
    let mut reg = registrar();
    let now = SystemTime::now();
    let ha1 =
        |u: &str, pw: &str| Account::ha1(voicecluster_api::config::ha1(u, "voice.example.com", pw));
    assert_eq!(code(&authed(&mut reg, "alice", "wonder", TWO, 1, now)), 200);
    assert_eq!(code(&authed(&mut reg, "bob", "builder", TWO, 10, now)), 200);
    reg.take_changed();
    // As changes: bob removed, carol added, alice re-passworded.
    let gone = reg.put_users(Users::Changed {
        upsert: vec![
            ("carol".into(), ha1("carol", "c")),
            ("alice".into(), ha1("alice", "new")),
        ],
        remove: vec!["bob".into(), "nobody".into()],
    });
    assert_eq!(gone, vec!["bob".to_string()], "only users that were there");
    assert!(reg.lookup("bob", now).is_empty(), "bob's bindings went");
    assert_eq!(reg.lookup("alice", now).len(), 2, "alice's stay");
    assert_eq!(reg.take_changed(), vec!["bob".to_string()]);
    assert_eq!(code(&authed(&mut reg, "bob", "builder", "", 20, now)), 401);
    assert_eq!(
        code(&authed(&mut reg, "alice", "wonder", TWO, 30, now)),
        401
    );
    assert_eq!(code(&authed(&mut reg, "alice", "new", TWO, 40, now)), 200);
    assert_eq!(code(&authed(&mut reg, "carol", "c", "", 50, now)), 200);
    // Whole: whoever is not in the list is gone.
    let gone = reg.put_users(Users::Whole(HashMap::from([(
        "carol".to_string(),
        ha1("carol", "c"),
    )])));
    assert_eq!(gone, vec!["alice".to_string()]);
    assert!(reg.lookup("alice", now).is_empty());
}
