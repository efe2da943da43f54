//! Helpers for tests of the admin server and of the binaries that use it
//! (feature `testing`; never used by production code).
//!
//! [`http_get`] speaks just enough HTTP/1.1 to check an endpoint's status
//! and body, so tests need no HTTP client crate. [`RunningBinary`] runs a
//! built binary the way a pod does — JSON logs, admin server on a free
//! port — and stops it with a signal. The `assert_*` functions are the
//! checks every voicecluster binary must pass; they panic on failure.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use voicecluster_api::{
    ENV_ADMIN_ADDR, ENV_LOG_FORMAT, ENV_LOG_LEVEL, HEALTHZ_PATH, METRICS_PATH, READYZ_PATH,
};

/// How long a test waits for a binary or an endpoint before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `GET path` on `addr` over a fresh connection that the server closes
/// after the response (`Connection: close`), so the body is everything up
/// to end of stream.
pub async fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    tokio::time::timeout(TIMEOUT, get(addr, path))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("GET {path} timed out")))?
}

async fn get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&String::from_utf8_lossy(&raw))
}

fn parse_response(raw: &str) -> io::Result<HttpResponse> {
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {raw:?}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A binary started as a pod would run it, with JSON logs and its admin
/// server on a free loopback port. Killed when dropped.
#[derive(Debug)]
pub struct RunningBinary {
    child: KillOnDrop,
    admin_addr: SocketAddr,
    log_lines: Receiver<String>,
    logs: Vec<String>,
}

/// How a [`RunningBinary`] ended.
#[derive(Debug)]
pub struct Stopped {
    /// The exit status.
    pub status: ExitStatus,
    /// Every line the binary wrote to stderr.
    pub logs: Vec<String>,
}

impl RunningBinary {
    /// Starts `program` with `VC_LOG_FORMAT=json`, `VC_LOG_LEVEL=info` and
    /// `VC_ADMIN_ADDR=127.0.0.1:0`, and waits for its `started` log line,
    /// which must carry the admin address in an `admin_addr` field.
    pub fn start(program: impl AsRef<OsStr>) -> io::Result<Self> {
        Self::start_with(program, std::iter::empty::<&str>())
    }

    /// As [`Self::start`], with command-line arguments.
    pub fn start_with(
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> io::Result<Self> {
        let mut child = KillOnDrop(
            Command::new(program)
                .args(args)
                .env(ENV_LOG_FORMAT, "json")
                .env(ENV_LOG_LEVEL, "info")
                .env(ENV_ADMIN_ADDR, "127.0.0.1:0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?,
        );
        let stderr = child
            .0
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("child has no stderr pipe"))?;
        let (sender, log_lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut logs = Vec::new();
        let started = wait_for_message(&log_lines, &mut logs, "started")?;
        let admin_addr = started
            .get("admin_addr")
            .and_then(|addr| addr.as_str())
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no admin_addr in {started}")))?;
        Ok(Self {
            child,
            admin_addr,
            log_lines,
            logs,
        })
    }

    /// Where the binary's admin server listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Sends `signal` (a name `kill -s` knows, e.g. `TERM`) and returns.
    pub fn signal(&self, signal: &str) -> io::Result<()> {
        let pid = self.child.0.id().to_string();
        let sent = Command::new("kill").args(["-s", signal, &pid]).status()?;
        if !sent.success() {
            return Err(io::Error::other(format!("kill -s {signal} {pid}: {sent}")));
        }
        Ok(())
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.0.try_wait()
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit
    /// status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.0.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (a name `kill -s` knows, e.g. `TERM`) and waits for
    /// the process to exit and close its stderr.
    pub fn stop(mut self, signal: &str) -> io::Result<Stopped> {
        self.signal(signal)?;
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.0.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("still running {TIMEOUT:?} after SIG{signal}"),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        };
        loop {
            match self.log_lines.recv_timeout(TIMEOUT) {
                Ok(line) => self.logs.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "stderr still open after exit",
                    ));
                }
            }
        }
        Ok(Stopped {
            status,
            logs: std::mem::take(&mut self.logs),
        })
    }
}

/// Reads log lines until a JSON line whose `message` is `message`, and
/// returns it parsed. Every line read is kept in `logs`.
fn wait_for_message(
    lines: &Receiver<String>,
    logs: &mut Vec<String>,
    message: &str,
) -> io::Result<serde_json::Value> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).map_err(|err| {
            io::Error::other(format!("no {message:?} log line ({err}); got: {logs:#?}"))
        })?;
        let parsed = serde_json::from_str::<serde_json::Value>(&line).ok();
        logs.push(line);
        if let Some(event) = parsed
            && event.get("message").and_then(|m| m.as_str()) == Some(message)
        {
            return Ok(event);
        }
    }
}

#[derive(Debug)]
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already exited is fine; a test that failed must not leak a process.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_flag(program: &str, flag: &str) -> (String, String) {
    let output = match Command::new(program).arg(flag).output() {
        Ok(output) => output,
        Err(err) => panic!("cannot run {program} {flag}: {err}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{program} {flag}: {}\n{stdout}{stderr}",
        output.status
    );
    (stdout, stderr)
}

/// Asserts that `program --version` prints exactly `<name> <version>` and
/// exits 0.
pub fn assert_version(program: &str, name: &str, version: &str) {
    let (stdout, _) = run_flag(program, "--version");
    assert_eq!(stdout, format!("{name} {version}\n"));
}

/// Asserts that `program --help` exits 0 and documents the common flags
/// together with their environment variables.
pub fn assert_help(program: &str) {
    let (stdout, _) = run_flag(program, "--help");
    for expected in [
        "--log-format",
        "--log-level",
        "--admin-addr",
        ENV_LOG_FORMAT,
        ENV_LOG_LEVEL,
        ENV_ADMIN_ADDR,
        "--version",
    ] {
        assert!(stdout.contains(expected), "no {expected} in:\n{stdout}");
    }
}

/// Runs `program`, checks that it is alive, ready and exports its build
/// info, then stops it with `signal` and checks that it logged its shutdown
/// and exited 0.
pub async fn assert_serves_admin_then_stops(
    program: &str,
    name: &str,
    version: &str,
    signal: &str,
) {
    let binary = match RunningBinary::start(program) {
        Ok(binary) => binary,
        Err(err) => panic!("{program} did not start: {err}"),
    };
    let addr = binary.admin_addr();
    for (path, status, body) in [(HEALTHZ_PATH, 200, "ok"), (READYZ_PATH, 200, "ok")] {
        match http_get(addr, path).await {
            Ok(response) => {
                assert_eq!(response.status, status, "GET {path}: {response:?}");
                assert_eq!(response.body, body, "GET {path}");
            }
            Err(err) => panic!("GET {path}: {err}"),
        }
    }
    let build_info = format!(r#"voicecluster_build_info{{binary="{name}",version="{version}"}} 1"#);
    match http_get(addr, METRICS_PATH).await {
        Ok(response) => {
            assert_eq!(response.status, 200, "{response:?}");
            assert!(response.body.contains(&build_info), "{}", response.body);
            assert!(
                response.body.contains("process_start_time_seconds "),
                "{}",
                response.body
            );
        }
        Err(err) => panic!("GET {METRICS_PATH}: {err}"),
    }
    let stopped = match binary.stop(signal) {
        Ok(stopped) => stopped,
        Err(err) => panic!("{program} did not stop on SIG{signal}: {err}"),
    };
    assert!(
        stopped.status.success(),
        "{program} exited with {} after SIG{signal}; logs: {:#?}",
        stopped.status,
        stopped.logs
    );
    let signal_field = format!(r#""signal":"SIG{signal}""#);
    for message in [signal_field.as_str(), "\"shutting down\"", "\"stopped\""] {
        assert!(
            stopped.logs.iter().any(|line| line.contains(message)),
            "no {message} in {:#?}",
            stopped.logs
        );
    }
}

/// Polls `check` until it gives `Ok`, or fails after `within` with the
/// last state it reported (its `Err`), so a failure says what the system
/// was doing rather than only that it took too long. Every test suite
/// waits on conditions through this one helper.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(state) => state,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: not true after {within:?}; last seen: {last}"
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// How often [`eventually`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response() {
        let response = parse_response(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nContent-Length: 5\r\n\r\nnope!",
        )
        .unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.header("content-length"), Some("5"));
        assert_eq!(response.body, "nope!");
    }

    #[test]
    fn rejects_a_truncated_response() {
        assert!(parse_response("HTTP/1.1 200 OK\r\n").is_err());
    }
}
