//! A real OpenLDAP server (Debian's `slapd`) for the tests: its own
//! configuration and database in a temporary directory, loaded with users
//! before it starts, listening on the real node's address so the
//! operator's pods reach it. Stopped (killed) when dropped.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::REAL_NODE_IP;

/// The directory's root.
pub const SUFFIX: &str = "dc=voice,dc=test";
/// Where the users are.
pub const PEOPLE: &str = "ou=people,dc=voice,dc=test";
/// The administrator, who may read passwords.
pub const ADMIN_DN: &str = "cn=admin,dc=voice,dc=test";
/// The administrator's password.
pub const ADMIN_PASSWORD: &str = "ldap-admin-secret";

/// A running slapd.
pub struct Slapd {
    dir: PathBuf,
    child: Option<Child>,
    /// `ldap://<real node>:<port>`.
    pub url: String,
}

/// The password of user `u<i>` as loaded.
pub fn password(i: usize) -> String {
    format!("pw-{i}")
}

/// The name of user `i`.
pub fn user(i: usize) -> String {
    format!("u{i:04}")
}

fn ldif(users: usize, extra: &str) -> String {
    let mut l = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: voice\ndc: voice\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n"
    );
    for i in 0..users {
        let (u, p) = (user(i), password(i));
        let _ = write!(
            l,
            "dn: uid={u},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {u}\ncn: User {i}\nsn: {i}\n\
             displayName: User {i}\nuserPassword: {p}\n\n"
        );
    }
    l.push_str(extra);
    l
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Slapd {
    /// A directory of `users` users (`u0000`… with [`password`]) plus the
    /// entries of `extra` (LDIF), started on a free port.
    pub fn start(users: usize, extra: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("vc-slapd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("db"))?;
        let conf = dir.join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 pidfile {d}/slapd.pid\n\
                 database mdb\nmaxsize 268435456\nsuffix \"{SUFFIX}\"\n\
                 rootdn \"{ADMIN_DN}\"\nrootpw {ADMIN_PASSWORD}\ndirectory {d}/db\n",
                d = dir.display()
            ),
        )?;
        run(
            Command::new("slapadd").arg("-q").arg("-f").arg(&conf),
            Some(&ldif(users, extra)),
        )?;
        let port = TcpListener::bind((REAL_NODE_IP, 0))?.local_addr()?.port();
        let url = format!("ldap://{REAL_NODE_IP}:{port}");
        // `-d 0`: stay in the foreground, so the test owns the process.
        let child = Command::new("slapd")
            .arg("-f")
            .arg(&conf)
            .arg("-h")
            .arg(format!("{url}/"))
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting slapd")?;
        let mut s = Self {
            dir,
            child: Some(child),
            url,
        };
        s.wait_listening(port)?;
        Ok(s)
    }

    fn wait_listening(&mut self, port: u16) -> Result<()> {
        for _ in 0..100 {
            if std::net::TcpStream::connect((REAL_NODE_IP, port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("slapd exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("slapd is not listening on {} after 10 s", self.url)
    }

    /// Changes a user's password in the directory.
    pub fn set_password(&self, user: &str, password: &str) -> Result<()> {
        run(
            Command::new("ldapmodify").args([
                "-x",
                "-H",
                &self.url,
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PASSWORD,
            ]),
            Some(&format!(
                "dn: uid={user},{PEOPLE}\nchangetype: modify\nreplace: userPassword\nuserPassword: {password}\n"
            )),
        )
    }

    /// Freezes the server (SIGSTOP): connections open, nothing answered —
    /// a directory that stops in the middle of a search.
    pub fn freeze(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// Kills the server.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn signal(&self, name: &str) -> Result<()> {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .context("slapd is not running")?;
        run(
            Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string()),
            None,
        )
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
