//! Where this process listens, when that is not fixed in advance.
//!
//! A media pod runs on the node's network. During a surge rollout its
//! successor starts beside it on the same node, so the two cannot both take
//! the well-known ports: each listener takes the first free *slot* (its base
//! port plus a multiple of [`PORT_SLOT_STRIDE`]). The addresses taken go to
//! an instance file in a directory the pod's containers share, where the
//! pod's exec probes ([`probe_if_asked`]) and its other container find them.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpListener;
use voicecluster_api::{ENV_INSTANCE_DIR, PORT_SLOT_STRIDE};

/// `base` moved to slot `slot`; port 0 (any port) stays 0.
pub fn slot_addr(base: SocketAddr, slot: u16) -> Option<SocketAddr> {
    if base.port() == 0 {
        return Some(base);
    }
    let port = base
        .port()
        .checked_add(slot.checked_mul(PORT_SLOT_STRIDE)?)?;
    Some(SocketAddr::new(base.ip(), port))
}

/// Listens on the first of `slots` slots of `base` that is free; returns the
/// listener and its slot. Only "address in use" moves on to the next slot.
pub async fn bind_first_free(base: SocketAddr, slots: u16) -> io::Result<(TcpListener, u16)> {
    let slots = slots.max(1);
    for slot in 0..slots {
        let Some(addr) = slot_addr(base, slot) else {
            break;
        };
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok((l, slot)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                tracing::info!(%addr, "port taken (a pod beside this one?): trying the next slot");
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("all {slots} port slots of {base} are taken"),
    ))
}

/// The instance file of this process: `name`'s listening addresses (and
/// its port slot), by key.
#[derive(Debug)]
pub struct Instance {
    path: Option<PathBuf>,
    entries: Mutex<BTreeMap<String, String>>,
}

impl Instance {
    /// The file `name` in `dir`; with no directory nothing is written.
    pub fn new(dir: Option<&Path>, name: &str) -> Self {
        Self {
            path: dir.map(|d| d.join(name)),
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records `key` (an address, or the slot), rewriting the file whole
    /// (a reader sees the old file or the new one, never half of one).
    pub fn record(&self, key: &str, value: impl std::fmt::Display) -> io::Result<()> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.insert(key.to_string(), value.to_string());
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text: String = entries.iter().map(|(k, a)| format!("{k}={a}\n")).collect();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

/// The address `key` listens on, from the instance file at `path`, made
/// reachable from this host (an unspecified address becomes loopback).
pub fn read_instance(path: &Path, key: &str) -> Option<SocketAddr> {
    read_value(path, key)?.parse().ok().map(reachable)
}

/// The value of `key` in the instance file at `path`.
pub fn read_value(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim().to_string())
}

/// The port slot the process whose instance file is at `path` took,
/// waiting up to `within` for it to write it: the containers of a pod take
/// the same slot, so its ports go together.
pub async fn slot_of(path: &Path, within: Duration) -> io::Result<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(slot) = read_value(path, "slot").and_then(|v| v.parse().ok()) {
            return Ok(slot);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no port slot in {} within {within:?}", path.display()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Listens on `base` in slot `slot` exactly.
pub async fn bind_slot(base: SocketAddr, slot: u16) -> io::Result<TcpListener> {
    let addr = slot_addr(base, slot).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no slot {slot} above {base}"),
        )
    })?;
    TcpListener::bind(addr).await
}

/// `addr`, with an unspecified IP replaced by loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// Asks the HTTP server at `addr` for `path`; Ok when it answers 200.
pub fn http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = Vec::new();
    // The status line is all that matters; a short read is enough.
    let mut buf = [0u8; 512];
    while !answer.contains(&b'\n') {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("{addr}{path}: {status:?}"))
    }
}

/// When the process was started as `<binary> probe <path>` (an exec probe),
/// asks its own admin server for `<path>` and exits: 0 when it answered 200.
/// The admin address comes from the instance file of `name` in
/// `VC_INSTANCE_DIR`. Call first thing in `main`.
pub fn probe_if_asked(name: &str) {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("probe") {
        return;
    }
    let path = args.get(2).map_or("/readyz", String::as_str);
    let outcome = std::env::var_os(ENV_INSTANCE_DIR)
        .ok_or_else(|| format!("{ENV_INSTANCE_DIR} is not set"))
        .and_then(|dir| {
            let file = Path::new(&dir).join(name);
            read_instance(&file, "admin")
                .ok_or_else(|| format!("no admin address in {} yet", file.display()))
        })
        .and_then(|addr| http_ok(addr, path, Duration::from_secs(1)));
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("probe failed: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_slot_moves_the_listener_to_the_next() {
        let (first, slot) = bind_first_free("127.0.0.1:0".parse().unwrap(), 4)
            .await
            .unwrap();
        assert_eq!(slot, 0, "port 0 always binds in slot 0");
        // A base port whose slot 0 is taken: the next slot is used.
        let base = first.local_addr().unwrap();
        match bind_first_free(base, 4).await {
            Ok((l, slot)) => {
                assert_eq!(slot, 1);
                assert_eq!(
                    l.local_addr().unwrap().port(),
                    base.port() + PORT_SLOT_STRIDE
                );
            }
            // The next slot's port may belong to someone else on a shared
            // machine; then it must say so, not bind the taken port.
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::AddrInUse),
        }
        let err = bind_first_free(base, 1).await.unwrap_err();
        assert!(err.to_string().contains("all 1 port slots"), "{err}");
    }

    #[tokio::test]
    async fn the_instance_file_gives_back_what_was_recorded() {
        let dir = std::env::temp_dir().join(format!("vc-instance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let instance = Instance::new(Some(&dir), "media-node");
        instance.record("admin", "0.0.0.0:9101").unwrap();
        instance.record("grpc", "10.0.0.7:9455").unwrap();
        let file = dir.join("media-node");
        assert_eq!(
            read_instance(&file, "admin"),
            Some("127.0.0.1:9101".parse().unwrap())
        );
        assert_eq!(
            read_instance(&file, "grpc"),
            Some("10.0.0.7:9455".parse().unwrap())
        );
        assert_eq!(read_instance(&file, "other"), None);
        instance.record("slot", 1).unwrap();
        assert_eq!(slot_of(&file, Duration::from_millis(10)).await.unwrap(), 1);
        assert!(
            slot_of(&dir.join("missing"), Duration::from_millis(10))
                .await
                .is_err()
        );
        assert_eq!(read_instance(&dir.join("missing"), "admin"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_probe_passes_only_when_the_admin_server_says_ready() {
        let readiness = crate::Readiness::new("starting");
        let (listener, _) = bind_first_free("127.0.0.1:0".parse().unwrap(), 1)
            .await
            .unwrap();
        let admin = crate::AdminServer::on(
            listener,
            std::sync::Arc::new(prometheus_client::registry::Registry::default()),
            readiness.clone(),
        )
        .unwrap()
        .spawn();
        let addr = admin.local_addr();
        let ask = move || {
            tokio::task::spawn_blocking(move || http_ok(addr, "/readyz", Duration::from_secs(2)))
        };
        let err = ask().await.unwrap().unwrap_err();
        assert!(err.contains("503"), "{err}");
        readiness.set_ready();
        assert_eq!(ask().await.unwrap(), Ok(()));
        admin.shutdown().await.unwrap();
        let gone = ask().await.unwrap();
        assert!(gone.is_err(), "a stopped server passed the probe");
    }

    #[test]
    fn slots_beyond_the_port_range_do_not_exist() {
        let base: SocketAddr = "0.0.0.0:65530".parse().unwrap();
        assert_eq!(slot_addr(base, 0), Some(base));
        assert_eq!(slot_addr(base, 1), None);
    }
}
