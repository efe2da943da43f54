//! The edge's SIP port, shared with the edge that replaces it.
//!
//! A media pod on the node's network is upgraded by starting its successor
//! beside it (a surge rollout). Both edges bind the node's SIP port with
//! `SO_REUSEPORT`, and a one-instruction classic BPF program steers every
//! datagram and every new connection to the group's *oldest* socket. So the
//! old edge keeps all the traffic while the new one gets ready, and the
//! moment it closes its sockets the kernel hands the next packet to the new
//! one: devices keep the same address and no request is refused. (A plain
//! `SO_REUSEPORT` group would split flows between the two by hash.)
//!
//! Only edges of one VoiceCluster share: each says it holds the port under
//! an abstract socket name of its cluster and port slot (abstract names
//! live in the network namespace, the node's here), and an edge joins a
//! port already in use only when an edge of its own cluster holds it. The
//! edge of another VoiceCluster on the same port waits instead, as it did
//! before sharing existed.

use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};

use nix::libc::{sock_filter, sock_fprog};
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

/// `BPF_RET | BPF_K`: return the constant, the index of the socket in the
/// group that gets the packet; sockets keep the order they joined in, and
/// when the first leaves the last one takes its place.
const RETURN_CONSTANT: u16 = 0x06;

fn oldest_first(socket: &Socket) -> io::Result<()> {
    let mut program = [sock_filter {
        code: RETURN_CONSTANT,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let fprog = sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    setsockopt(socket, sockopt::AttachReusePortCbpf, &fprog).map_err(io::Error::from)
}

fn shared(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A UDP socket on `addr`, shared with later edges.
pub fn shared_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = shared(addr, Type::DGRAM, Protocol::UDP)?;
    oldest_first(&socket)?;
    Ok(socket.into())
}

/// A TCP listener on `addr`, shared with later edges.
pub fn shared_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = shared(addr, Type::STREAM, Protocol::TCP)?;
    socket.listen(1024)?;
    // Only now: a listener that is not listening yet is in no group, and a
    // program attached then keeps the next listener from binding.
    oldest_first(&socket)?;
    Ok(socket.into())
}

/// The abstract socket name of the edge of `group` in port slot `slot`
/// holding SIP port `port`.
fn claim_name(group: &str, port: u16, slot: u16) -> io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(format!("voicecluster.io/edge/{group}/{port}/{slot}"))
}

/// Says that the edge of `group` in `slot` holds SIP port `port`, as long
/// as the returned listener lives.
pub fn claim(group: &str, port: u16, slot: u16) -> io::Result<UnixListener> {
    UnixListener::bind_addr(&claim_name(group, port, slot)?)
}

/// May the edge of `group` in `slot` bind `addr` now: it is free, or
/// another edge of `group` (in one of `slots` other slots) holds it.
pub fn may_bind(addr: SocketAddr, group: &str, slot: u16, slots: u16) -> bool {
    let free = match std::net::UdpSocket::bind(addr) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::AddrInUse,
    };
    free || !holders(group, addr.port(), slot, slots).is_empty()
}

/// The slots (of `slots`, but `own`) whose edge of `group` holds SIP port
/// `port`.
pub fn holders(group: &str, port: u16, own: u16, slots: u16) -> Vec<u16> {
    (0..slots.max(1))
        .filter(|s| *s != own)
        .filter(|s| {
            claim_name(group, port, *s)
                .and_then(|name| UnixStream::connect_addr(&name))
                .is_ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn receives(socket: &std::net::UdpSocket) -> Option<Vec<u8>> {
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        socket.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 64];
        socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    #[test]
    fn the_oldest_socket_gets_everything_until_it_closes() {
        let old = shared_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = old.local_addr().unwrap();
        let new = shared_udp(addr).unwrap();
        // Many flows: with plain SO_REUSEPORT some would hash to `new`.
        let senders: Vec<std::net::UdpSocket> = (0..16)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for s in &senders {
            s.send_to(b"to the old one", addr).unwrap();
        }
        for _ in &senders {
            assert_eq!(receives(&old).as_deref(), Some(&b"to the old one"[..]));
        }
        assert_eq!(receives(&new), None, "the new socket got a datagram early");
        drop(old);
        for s in &senders {
            s.send_to(b"to the new one", addr).unwrap();
        }
        for _ in &senders {
            assert_eq!(receives(&new).as_deref(), Some(&b"to the new one"[..]));
        }
    }

    #[test]
    fn new_connections_go_to_the_oldest_listener_then_to_its_successor() {
        // Linux does not share a port it picked itself: name one.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let old = shared_tcp(addr).unwrap();
        let new = shared_tcp(addr).unwrap();
        old.set_nonblocking(false).unwrap();
        new.set_nonblocking(true).unwrap();
        for _ in 0..8 {
            let _c = std::net::TcpStream::connect(addr).unwrap();
            assert!(old.accept().is_ok());
            assert!(
                new.accept().is_err(),
                "the new listener got a connection early"
            );
        }
        drop(old);
        new.set_nonblocking(false).unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        assert!(new.accept().is_ok());
    }

    #[test]
    fn only_an_edge_of_the_same_cluster_may_join_a_port_in_use() {
        let old = shared_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = old.local_addr().unwrap();
        let group = format!("test-{}/{}", std::process::id(), addr.port());
        assert!(!may_bind(addr, &group, 1, 4), "nobody said it holds it");
        let _claim = claim(&group, addr.port(), 0).unwrap();
        assert!(may_bind(addr, &group, 1, 4), "its predecessor holds it");
        assert_eq!(holders(&group, addr.port(), 1, 4), vec![0]);
        assert!(holders(&group, addr.port(), 0, 4).is_empty(), "not itself");
        assert!(
            !may_bind(addr, &format!("{group}-other"), 1, 4),
            "another cluster's edge holds it"
        );
        assert!(claim(&group, addr.port(), 0).is_err(), "one edge per slot");
        drop(old);
        let free = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(may_bind(free, &group, 0, 4), "a free port");
    }

    #[test]
    fn a_port_bound_without_sharing_is_not_shared() {
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = shared_udp(plain.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
