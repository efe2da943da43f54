//! What the signal-node process tests share: servers, edges and media
//! nodes on loopback, and their metrics.

// Test set-up: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use voicecluster_api::grpc::ListLegsRequest;
use voicecluster_api::grpc::call_legs_client::CallLegsClient;
use voicecluster_signal_node::testing::{self, ALICE, BOB, Sipp};
use voicecluster_telemetry::testing::{RunningBinary, eventually, http_get};

pub const BIN: &str = env!("CARGO_BIN_EXE_signal-node");

pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub fn free_port() -> u16 {
    testing::free_port(LOOPBACK)
}

pub struct Server {
    pub bin: RunningBinary,
    pub sip: SocketAddr,
    /// Its TaskEvents address, the member's name for the others.
    pub grpc: SocketAddr,
    pub management: SocketAddr,
    /// SIPp aimed at its SIP address.
    pub sipp: Sipp,
    /// For an edge: the admin addresses of its backends, whose registrars
    /// must all know a user before a call to them.
    pub backends: Vec<SocketAddr>,
}

/// A media-node process offering CallLegs on loopback.
pub struct MediaNode {
    pub bin: RunningBinary,
    pub grpc: SocketAddr,
}

impl MediaNode {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A media node with more flags.
    pub fn start_with(extra: &[&str]) -> Self {
        // Built by the same `cargo test --workspace` (it is a workspace bin).
        let bin = Path::new(BIN).with_file_name("media-node");
        assert!(
            bin.exists(),
            "{} missing: cargo build -p voicecluster-media-node",
            bin.display()
        );
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let rtp = next_rtp_range();
        let bin = RunningBinary::start_with(
            &bin,
            [
                "--grpc-addr".to_string(),
                grpc.to_string(),
                "--rtp-ports".to_string(),
                format!("{}-{}", rtp.0, rtp.1),
                "--bind-ip".to_string(),
                "127.0.0.1".to_string(),
            ]
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string())),
        )
        .expect("media-node starts");
        Self { bin, grpc }
    }

    /// The legs it holds now, over its CallLegs service.
    pub async fn legs(&self) -> usize {
        let mut client = CallLegsClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap();
        client
            .list(ListLegsRequest {})
            .await
            .unwrap()
            .into_inner()
            .legs
            .len()
    }
}

/// An RTP port range no other process of this test run uses.
pub fn next_rtp_range() -> (u16, u16) {
    static NEXT_RTP: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(31000);
    let rtp = NEXT_RTP.fetch_add(400, std::sync::atomic::Ordering::Relaxed);
    (rtp, rtp + 399)
}

impl Server {
    pub fn start() -> Self {
        Self::start_with("Locally", &[])
    }

    /// A server making its call legs as `mode` says, with more flags.
    pub fn start_with(mode: &str, extra: &[String]) -> Self {
        Self::start_member(mode, ([127, 0, 0, 1], free_port()).into(), extra)
    }

    /// A server whose TaskEvents listen on `grpc`.
    pub fn start_member(mode: &str, grpc: SocketAddr, extra: &[String]) -> Self {
        Self::start_member_on(mode, ([127, 0, 0, 1], free_port()).into(), grpc, extra)
    }

    /// A server whose SIP listens on `sip` and TaskEvents on `grpc`.
    pub fn start_member_on(
        mode: &str,
        sip: SocketAddr,
        grpc: SocketAddr,
        extra: &[String],
    ) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vc-sip-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("users");
        std::fs::write(&users, "alice:wonder\nbob:builder\n").unwrap();
        let management: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        // Servers of one test run get RTP ranges of their own.
        let rtp = next_rtp_range();
        // A spec as the operator mounts it: prices per second, 0.60 a minute.
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            serde_json::json!({
                "sip": {"domain": "voice.test"},
                "signal": {"callLegMode": mode},
                "media": {"rtpPortRange": {"min": rtp.0, "max": rtp.1}},
                "billing": {"currency": "EUR", "rates": [
                    {"prefix": "", "pricePerMinute": "0.60", "incrementSeconds": 1}
                ]},
            })
            .to_string(),
        )
        .unwrap();
        let bin = RunningBinary::start_with(
            BIN,
            [
                "--grpc-addr".to_string(),
                grpc.to_string(),
                "--sip-addr".to_string(),
                sip.to_string(),
                "--sip-domain".to_string(),
                "voice.test".to_string(),
                "--users-file".to_string(),
                users.display().to_string(),
                "--nonce-secret".to_string(),
                "test".to_string(),
                "--config".to_string(),
                config.display().to_string(),
                "--bills-file".to_string(),
                dir.join("bills.jsonl").display().to_string(),
                "--management-addr".to_string(),
                management.to_string(),
            ]
            .into_iter()
            .chain(extra.iter().cloned()),
        )
        .expect("signal-node starts");
        Self {
            bin,
            sip,
            grpc,
            management,
            sipp: Sipp::new(sip, LOOPBACK),
            backends: Vec::new(),
        }
    }

    /// Alice and Bob register with SIPp; Bob answers `calls` calls (and
    /// echoes their RTP), Alice places them with `scenario` and `caller_args`.
    /// Fails unless both SIPp runs succeed (SIPp exits 0 only when every
    /// call did).
    pub async fn alice_calls_bob(&self, scenario: &str, calls: u32, caller_args: &[&str]) {
        self.alice_calls_bob_of(self, scenario, calls, caller_args)
            .await;
    }

    /// As [`Self::alice_calls_bob`], with Bob registered through `bobs`
    /// (another member, or this one).
    pub async fn alice_calls_bob_of(
        &self,
        bobs: &Server,
        scenario: &str,
        calls: u32,
        caller_args: &[&str],
    ) {
        let ports = (free_port(), free_port());
        self.sipp.register(ALICE, ports.0);
        bobs.sipp.register(BOB, ports.1);
        // Bob's registration reaches this member (or, behind an edge, every
        // backend) as a task event.
        if self.backends.is_empty() {
            self.metric_reaching("voicecluster_sip_registered_users", 2.0)
                .await;
        }
        for admin in &self.backends {
            // As before: a member that never hears of Bob fails the call.
            let _ = eventually(
                "both users registered",
                Duration::from_secs(5),
                async || match metric_at(*admin, "voicecluster_sip_registered_users").await {
                    Some(2.0) => Ok(()),
                    n => Err(format!("{n:?} users")),
                },
            )
            .await;
        }
        // The hold scenario has a callee of its own.
        let callee = if scenario.starts_with("hold-") {
            "hold-callee"
        } else {
            "callee"
        };
        self.sipp
            .alice_calls_bob(&bobs.sipp, ports, (scenario, callee), calls, caller_args)
            .await;
    }

    /// For an edge: waits until it sees every backend up (members serve
    /// once they synced with the others).
    pub async fn backends_up(&self) {
        // The members first: until they synced they answer "starting", and
        // an edge that has not heard from them yet counts them up.
        for admin in &self.backends {
            let ready =
                eventually(
                    "a backend ready",
                    Duration::from_secs(10),
                    async || match http_get(*admin, "/readyz").await {
                        Ok(r) if r.status == 200 => Ok(()),
                        other => Err(format!("{admin}: {:?}", other.map(|r| r.status))),
                    },
                )
                .await;
            if let Err(e) = ready {
                panic!("{e}");
            }
        }
        let want = self.backends.len() as f64;
        let edge = self.bin.admin_addr();
        let up = eventually(
            "the edge sees its backends up",
            Duration::from_secs(10),
            async || match metric_at(edge, "voicecluster_edge_backends").await {
                Some(n) if n == want => Ok(()),
                n => Err(format!("{n:?} of {want} up")),
            },
        )
        .await;
        if let Err(e) = up {
            panic!("{e}");
        }
    }

    /// A metric once it reached `at_least` (work after a call, like
    /// releasing its legs, ends a moment after SIPp does).
    pub async fn metric_reaching(&self, name: &str, at_least: f64) -> f64 {
        let mut last = 0.0;
        // Up to 10 s: a member syncs every 2 s, slower on a loaded machine.
        let _ = eventually(name, Duration::from_secs(10), async || {
            last = self.metric(name).await.unwrap_or(0.0);
            if last >= at_least {
                Ok(())
            } else {
                Err(last.to_string())
            }
        })
        .await;
        last
    }

    pub async fn metric(&self, name: &str) -> Option<f64> {
        metric_at(self.bin.admin_addr(), name).await
    }

    /// An edge in front of `backends`, on a SIP port of its own.
    pub fn start_edge(backends: &[&Server]) -> Self {
        Self::start_edge_with(backends, &[])
    }

    /// An edge in front of `backends`, with more edge flags.
    pub fn start_edge_with(backends: &[&Server], extra: &[&str]) -> Self {
        let sip: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self::start_edge_on(sip, backends, &[], extra)
    }

    /// An edge on `sip` in front of `backends`, with more flags for the
    /// process (`common`, like the admin address) and for the edge role.
    pub fn start_edge_on(
        sip: SocketAddr,
        backends: &[&Server],
        common: &[String],
        extra: &[&str],
    ) -> Self {
        let list: Vec<String> = backends.iter().map(|b| b.sip.to_string()).collect();
        let bin = RunningBinary::start_with(
            BIN,
            common
                .iter()
                .cloned()
                .chain([
                    "--sip-addr".to_string(),
                    sip.to_string(),
                    "edge".to_string(),
                    "--backends".to_string(),
                    list.join(","),
                ])
                .chain(extra.iter().map(|s| s.to_string())),
        )
        .expect("the edge starts");
        Self {
            bin,
            sip,
            grpc: sip,
            management: sip,
            sipp: Sipp::new(sip, LOOPBACK),
            backends: backends.iter().map(|b| b.bin.admin_addr()).collect(),
        }
    }
}

/// A metric of the process whose admin server is at `admin`.
pub async fn metric_at(admin: SocketAddr, name: &str) -> Option<f64> {
    let page = http_get(admin, "/metrics").await.ok()?;
    page.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Two Remotely backends sharing registrations, a media node, and an edge
/// in front of them.
pub struct EdgeCluster {
    pub edge: Server,
    pub backends: [Server; 2],
    pub media: MediaNode,
}

impl EdgeCluster {
    pub async fn start() -> Self {
        // Statistics every second: a two-second call hears of them.
        let media = MediaNode::start_with(&["--leg-stats-seconds", "1"]);
        let (g0, g1) = (free_port(), free_port());
        let grpc = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let member = |me: u16, peer: u16| {
            Server::start_member(
                "Remotely",
                grpc(me),
                &[
                    "--signal-peers".to_string(),
                    grpc(peer).to_string(),
                    "--call-leg-providers".to_string(),
                    media.grpc.to_string(),
                ],
            )
        };
        let backends = [member(g0, g1), member(g1, g0)];
        let edge = Server::start_edge(&[&backends[0], &backends[1]]);
        edge.backends_up().await;
        Self {
            edge,
            backends,
            media,
        }
    }

    /// A metric summed over the backends, once the sum reached `at_least`.
    pub async fn backends_metric(&self, name: &str, at_least: f64) -> f64 {
        let mut sum = 0.0;
        let _ = eventually(name, Duration::from_secs(5), async || {
            sum = 0.0;
            for b in &self.backends {
                sum += b.metric(name).await.unwrap_or(0.0);
            }
            if sum >= at_least {
                Ok(())
            } else {
                Err(sum.to_string())
            }
        })
        .await;
        sum
    }

    /// Every backend's bills.
    pub async fn bills(&self) -> Vec<Vec<serde_json::Value>> {
        let mut all = Vec::new();
        for b in &self.backends {
            let page = http_get(b.management, "/bills").await.unwrap();
            all.push(serde_json::from_str(&page.body).unwrap());
        }
        all
    }
}
