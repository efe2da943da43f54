//! Signal-node processes on loopback for the failover benchmarks: members
//! sharing registrations, an edge in front of them, and in-dialog probes
//! sent through the edge.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The release build of signal-node.
pub const BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/signal-node");
/// Heartbeat interval of the edges (the VoiceCluster default).
pub const HEARTBEAT_MS: u64 = 200;
/// Heartbeats missed before a member is down (the VoiceCluster default).
pub const THRESHOLD: u32 = 3;
/// Between two probes.
pub const PROBE_EVERY: Duration = Duration::from_millis(10);

/// A child process, killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on `ip` now.
pub fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

/// A port free for UDP and TCP on both addresses.
pub fn common_port(ips: &[IpAddr]) -> Result<u16> {
    for _ in 0..100 {
        let p = free_port(ips[0])?;
        if ips.iter().all(|ip| {
            UdpSocket::bind((*ip, p)).is_ok() && std::net::TcpListener::bind((*ip, p)).is_ok()
        }) {
            return Ok(p);
        }
    }
    bail!("no common free port")
}

/// A member's addresses and files.
pub struct Member {
    /// Its SIP address.
    pub sip: SocketAddr,
    /// Its TaskEvents address.
    pub grpc: SocketAddr,
    /// The other member's TaskEvents address.
    pub peer: SocketAddr,
    /// Where its files go.
    pub dir: PathBuf,
}

impl Member {
    /// Two members on 127.0.0.2 and 127.0.0.3 (members are known by IP),
    /// on one SIP port, each the other's peer, their files under `dir`.
    pub fn pair(dir: &std::path::Path) -> Result<[Member; 2]> {
        let ips = [
            IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)),
            IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3)),
        ];
        let sip_port = common_port(&ips)?;
        let grpc = [
            SocketAddr::new(ips[0], free_port(ips[0])?),
            SocketAddr::new(ips[1], free_port(ips[1])?),
        ];
        Ok([0, 1].map(|i| Member {
            sip: SocketAddr::new(ips[i], sip_port),
            grpc: grpc[i],
            peer: grpc[1 - i],
            dir: dir.join(format!("m{i}")),
        }))
    }

    /// Starts it.
    pub fn start(&self) -> Result<Process> {
        std::fs::create_dir_all(&self.dir)?;
        let users = self.dir.join("users");
        std::fs::write(&users, "alice:wonder\n")?;
        let config = self.dir.join("config.json");
        std::fs::write(
            &config,
            r#"{"sip": {"domain": "voice.test"}, "signal": {"callLegMode": "Remotely"}}"#,
        )?;
        let admin = SocketAddr::new(self.sip.ip(), free_port(self.sip.ip())?);
        let management = SocketAddr::new(self.sip.ip(), free_port(self.sip.ip())?);
        let child = Command::new(BIN)
            .args(["--sip-addr", &self.sip.to_string()])
            .args(["--grpc-addr", &self.grpc.to_string()])
            .args(["--signal-peers", &self.peer.to_string()])
            .args(["--sip-domain", "voice.test"])
            .args(["--users-file", &users.display().to_string()])
            .args(["--config", &config.display().to_string()])
            .args([
                "--bills-file",
                &self.dir.join("bills").display().to_string(),
            ])
            .args(["--management-addr", &management.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--call-leg-providers", "127.0.0.1:1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {BIN}"))?;
        Ok(Process(child))
    }
}

/// An edge on `sip` in front of `members`, with the default heartbeats,
/// its admin server in the first free of `slots` port slots of `admin`.
pub fn start_edge(
    sip: SocketAddr,
    admin: SocketAddr,
    slots: u16,
    members: &[Member; 2],
) -> Result<Process> {
    Ok(Process(
        Command::new(BIN)
            .args(["--admin-addr", &admin.to_string()])
            .args(["--port-slots", &slots.to_string()])
            .args(["--sip-addr", &sip.to_string()])
            .arg("edge")
            .args([
                "--backends",
                &format!("{},{}", members[0].sip, members[1].sip),
            ])
            .args(["--heartbeat-interval-ms", &HEARTBEAT_MS.to_string()])
            .args(["--failure-threshold", &THRESHOLD.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {BIN}"))?,
    ))
}

/// `s` in hex, as the edge writes addresses in its routes.
pub fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// An in-dialog request of a dialog the edge pinned to `owner`.
pub fn probe(edge: SocketAddr, from: SocketAddr, owner: SocketAddr, n: u32) -> Vec<u8> {
    format!(
        "OPTIONS sip:{owner} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-probe-{n};rport\r\n\
         Route: <sip:{edge};lr;ft=u{};vb={}>\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@voice.test>;tag=probe\r\n\
         To: <sip:bob@voice.test>;tag=dialog\r\n\
         Call-ID: bench-probe-dialog\r\n\
         CSeq: {n} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        hex(&from.to_string()),
        hex(&owner.to_string())
    )
    .into_bytes()
}

/// The sequence number of the probe an answer is for, if it is a 200.
pub fn answered(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    if !text.starts_with("SIP/2.0 200") {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("CSeq: "))?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// The device's side of a dialog the edge pinned to a member: it sends
/// the dialog's in-dialog requests ([`probe`]) through the edge and reads
/// the answers.
pub struct Dialog {
    sock: UdpSocket,
    me: SocketAddr,
    edge: SocketAddr,
    /// The last request's sequence number.
    n: u32,
    buf: [u8; 2048],
}

impl Dialog {
    /// A device on `ip` whose requests go through the edge at `edge`.
    pub fn new(ip: IpAddr, edge: SocketAddr) -> Result<Self> {
        let sock = UdpSocket::bind((ip, 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(1)))?;
        let me = sock.local_addr()?;
        Ok(Self {
            sock,
            me,
            edge,
            n: 0,
            buf: [0; 2048],
        })
    }

    /// Sends the next request, for `owner`; its sequence number.
    pub fn send(&mut self, owner: SocketAddr) -> Result<u32> {
        self.n += 1;
        self.sock
            .send_to(&probe(self.edge, self.me, owner, self.n), self.edge)?;
        Ok(self.n)
    }

    /// The sequence number of the last request sent.
    pub fn sent(&self) -> u32 {
        self.n
    }

    /// Waits a millisecond for an answer: the sequence number of the
    /// request a 200 is for.
    pub fn answer(&mut self) -> Option<u32> {
        let (len, _) = self.sock.recv_from(&mut self.buf).ok()?;
        answered(&self.buf[..len])
    }
}

/// A metric of the process whose admin server is at `admin` (0 if none).
pub fn edge_metric(admin: SocketAddr, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(200)) else {
        return 0.0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The `p` quantile of `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// "median X ms, p99 Y ms" of `figures`.
pub fn median_p99(mut figures: Vec<Duration>) -> String {
    figures.sort();
    format!(
        "median {} ms, p99 {} ms",
        percentile(&figures, 0.5).as_millis(),
        percentile(&figures, 0.99).as_millis()
    )
}

/// Rounds to run: `ROUNDS`, 10 by default.
pub fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
}
