//! SIPp, the real SIP peer of the tests, driven the same way by the
//! process-level tests (`signal-node/tests`) and the cluster tests
//! (`tests/e2e`): registrations with digest, a callee that answers and
//! echoes RTP, a caller that streams it, load runs.

#![allow(clippy::expect_used)]

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The SIPp scenarios.
pub const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");

/// The users every test service knows: (user, password).
pub const ALICE: (&str, &str) = ("alice", "wonder");
/// The callee.
pub const BOB: (&str, &str) = ("bob", "builder");

/// A port free on both UDP and TCP of `ip`.
pub fn free_port(ip: IpAddr) -> u16 {
    loop {
        let udp = UdpSocket::bind((ip, 0)).expect("a free UDP port");
        let port = udp.local_addr().expect("its address").port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// An injection-file line: the user, then SIPp's authentication keyword.
pub fn auth(user: &str, password: &str) -> String {
    format!("{user};[authentication username={user} password={password}];")
}

/// The path of scenario `name`.
pub fn scenario_path(name: &str) -> String {
    Path::new(SCENARIOS)
        .join(format!("{name}.xml"))
        .display()
        .to_string()
}

/// Two seconds of mu-law silence as `audio.wav` in `dir`, for the
/// scenarios' `rtp_stream`.
pub fn write_audio(dir: &Path) {
    let data = vec![0xffu8; 16_000];
    let len = |n: usize| u32::try_from(n).expect("a small file").to_le_bytes();
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&len(36 + data.len()));
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    // Format 7 (mu-law), mono, 8000 Hz, 8000 B/s, block 1, 8 bits.
    for v in [7u16, 1] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    for v in [1u16, 8] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&len(data.len()));
    wav.extend_from_slice(&data);
    std::fs::write(dir.join("audio.wav"), wav).expect("writing audio.wav");
}

/// SIPp pointed at one SIP service address.
#[derive(Clone, Debug)]
pub struct Sipp {
    /// Where SIPp sends (a signal node, or an edge).
    pub target: SocketAddr,
    /// The address SIPp's SIP and RTP sockets use.
    pub local_ip: IpAddr,
    /// Working directory: injection files, audio.
    pub dir: PathBuf,
}

impl Sipp {
    /// SIPp for `target`, working in a new directory under the system temp
    /// directory, with the audio the callers stream.
    pub fn new(target: SocketAddr, local_ip: IpAddr) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vc-sipp-{}-{}",
            std::process::id(),
            free_port(local_ip)
        ));
        std::fs::create_dir_all(&dir).expect("a SIPp directory");
        write_audio(&dir);
        Self {
            target,
            local_ip,
            dir,
        }
    }

    /// A SIPp command for one run of `scenario` from `port`, with `users`
    /// as its injection file.
    pub fn command(&self, scenario: &str, transport: &str, users: &str, port: u16) -> Command {
        let inf = self.dir.join(format!("{scenario}-{transport}-{port}.csv"));
        std::fs::write(&inf, format!("SEQUENTIAL\n{users}\n")).expect("an injection file");
        let mut cmd = Command::new("sipp");
        cmd.arg(self.target.to_string())
            .args(["-sf", &scenario_path(scenario), "-inf"])
            .arg(&inf)
            .args(["-t", transport, "-i", &self.local_ip.to_string()])
            .args(["-p", &port.to_string()])
            .args(["-m", "1", "-timeout", "15s", "-timeout_error", "-nostdin"])
            // Unexpected messages go to <scenario>_<pid>_errors.log.
            .arg("-trace_err")
            // Call length of scenarios that pause for it; a later -d wins.
            .args(["-d", "2000"])
            .current_dir(&self.dir);
        cmd
    }

    /// Runs SIPp once; true when its call succeeded (SIPp exits 0 only
    /// when every call did).
    pub fn run(&self, scenario: &str, transport: &str, users: &str) -> bool {
        let out = self
            .command(scenario, transport, users, free_port(self.local_ip))
            .output()
            .expect("sipp runs (apt install sip-tester)");
        report(scenario, &out);
        out.status.success()
    }

    /// Whether `user` with `password` gets a 200 to a REGISTER.
    pub fn registers(&self, (user, password): (&str, &str)) -> bool {
        self.command(
            "register",
            "u1",
            &auth(user, password),
            free_port(self.local_ip),
        )
        .output()
        .is_ok_and(|o| o.status.success())
    }

    /// `user` registers from `port` (where it then calls or answers).
    pub fn register(&self, (user, password): (&str, &str), port: u16) {
        let out = self
            .command("register", "u1", &auth(user, password), port)
            .output()
            .expect("sipp runs (apt install sip-tester)");
        report("register", &out);
        assert!(
            out.status.success(),
            "{user} registers through {}",
            self.target
        );
    }

    /// Bob answers `calls` calls on `bob_port` with the `callee` scenario
    /// (echoing their RTP; he registered through `bobs`), Alice places them
    /// from `alice_port` with the `caller` scenario and `caller_args`.
    /// Panics unless both SIPp runs succeed.
    pub async fn alice_calls_bob(
        &self,
        bobs: &Sipp,
        (alice_port, bob_port): (u16, u16),
        (caller, callee): (&str, &str),
        calls: u32,
        caller_args: &[&str],
    ) {
        let scenario = caller;
        let calls = calls.to_string();
        // Bob waits as long as Alice's run may take.
        let timeout = caller_args
            .windows(2)
            .find(|w| w[0] == "-timeout")
            .map_or("15s", |w| w[1]);
        let callee = bobs
            .command(callee, "u1", "bob;", bob_port)
            .args(["-rtp_echo", "-m", &calls, "-timeout", timeout])
            .args(["-mp", &free_port(bobs.local_ip).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sipp runs");
        // Give the callee a moment to bind its port.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut caller = self.command(
            scenario,
            "u1",
            &format!(
                "alice;bob;[authentication username={} password={}];",
                ALICE.0, ALICE.1
            ),
            alice_port,
        );
        caller
            .args(["-m", &calls])
            .args(caller_args)
            .args(["-mp", &free_port(self.local_ip).to_string()]);
        // SIPp runs for the whole call: off the runtime's threads, so a test
        // can watch the call meanwhile.
        let (caller, callee) = tokio::task::spawn_blocking(move || {
            let caller = caller.output().expect("sipp runs");
            (caller, callee.wait_with_output().expect("callee sipp ends"))
        })
        .await
        .expect("the SIPp runs end");
        assert!(
            caller.status.success(),
            "caller: {}{}",
            String::from_utf8_lossy(&caller.stderr),
            self.errors()
        );
        assert!(
            callee.status.success(),
            "callee: {}{}",
            String::from_utf8_lossy(&callee.stderr),
            bobs.errors()
        );
    }
}

impl Sipp {
    /// Alice (registered from `ports.0`, through this SIPp's target) places
    /// `n` calls to Bob (registered from `ports.1`), `rate` a second, each
    /// `ms` long with RTP both ways, in the background; the task fails
    /// unless every call ends normally on both sides (SIPp exits 0 only
    /// then).
    pub fn spawn_calls(
        &self,
        ports: (u16, u16),
        n: u32,
        rate: u32,
        ms: u64,
    ) -> tokio::task::JoinHandle<()> {
        let sipp = self.clone();
        let timeout = format!("{}s", 60 + n / rate.max(1) + ms as u32 / 1000);
        tokio::spawn(async move {
            let (d, r, l) = (ms.to_string(), rate.to_string(), n.to_string());
            let args = ["-d", &d, "-r", &r, "-l", &l, "-timeout", &timeout];
            sipp.alice_calls_bob(&sipp, ports, ("caller", "callee"), n, &args)
                .await;
        })
    }

    /// The end of what SIPp logged as errors here, for a failed run.
    fn errors(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with("_errors.log")
                && let Ok(log) = std::fs::read_to_string(entry.path())
            {
                let tail: String = log
                    .chars()
                    .rev()
                    .take(3000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                text.push_str(&format!("\n--- {name} (end)\n{tail}"));
            }
        }
        text
    }
}

fn report(scenario: &str, out: &Output) {
    if !out.status.success() {
        eprintln!(
            "sipp {scenario}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
