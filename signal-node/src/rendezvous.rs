//! Who serves what, agreed without talking: rendezvous (highest random
//! weight) hashing over the member list. Edges use it to pin a Call-ID to a
//! backend, members and edges both use it to name a member's buddy, so
//! every party that has the same member list makes the same choice.

use std::net::SocketAddr;

/// FNV-1a: stable across processes and versions, which affinity needs
/// (every edge must pick the same backend for a Call-ID).
pub fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The backend for `call_id`: the highest rendezvous score.
pub fn rendezvous(call_id: &str, backends: &[SocketAddr]) -> Option<SocketAddr> {
    ranked(call_id, backends).into_iter().next()
}

/// `backends` in rendezvous order for `key`, best first.
pub fn ranked(key: &str, backends: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut scored: Vec<(u64, SocketAddr)> = backends
        .iter()
        .map(|b| (fnv(&[key.as_bytes(), b.to_string().as_bytes()]), *b))
        .collect();
    scored.sort_by(|x, y| y.cmp(x));
    scored.into_iter().map(|(_, b)| b).collect()
}

/// The buddy of backend `owner`: the member that holds replicas of its
/// calls and takes them over when it goes down. The first of the others in
/// rendezvous order for the owner's address, so the owner and every edge
/// agree on it from the same member list, and losing one member moves only
/// the calls it was buddy for.
pub fn buddy(owner: SocketAddr, members: &[SocketAddr]) -> Option<SocketAddr> {
    let others: Vec<SocketAddr> = members.iter().copied().filter(|m| *m != owner).collect();
    rendezvous(&owner.to_string(), &others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buddy_is_the_same_for_everyone_and_never_the_owner() {
        let members: Vec<SocketAddr> = (1..=5)
            .map(|i| format!("10.1.0.{i}:5060").parse().unwrap())
            .collect();
        for m in &members {
            let b = buddy(*m, &members).unwrap();
            assert_ne!(b, *m);
            let mut shuffled = members.clone();
            shuffled.reverse();
            assert_eq!(buddy(*m, &shuffled), Some(b), "order does not matter");
        }
        assert_eq!(buddy(members[0], &members[..1]), None, "alone: no buddy");
    }
}
