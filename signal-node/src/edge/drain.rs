//! An edge on its way out either hands the SIP port to its successor or
//! drains.
//!
//! - In a surge rollout the successor edge runs beside it on the same node
//!   and shares the SIP port ([`crate::port_sharing`]). The old edge closes
//!   its sockets and the kernel gives their traffic to the new one: every
//!   message of every dialog goes on, since edges keep no call state.
//! - Alone (a node drained, a pod deleted), it stays while the calls of its
//!   pod go on: the media node beside it drains its legs (the calls end, or
//!   its drain timeout cuts them), and the edge forwards their in-dialog
//!   requests until then, refusing new calls meanwhile.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use voicecluster_telemetry::instance::{http_ok, reachable, read_instance, slot_addr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The media node's gauge of the legs it carries.
const LEGS_METRIC: &str = "voicecluster_media_legs_active";
const POLL: Duration = Duration::from_millis(500);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The legs the media node whose admin server is at `admin` carries now;
/// `None` when it does not answer (it stopped) or says nothing usable.
pub async fn media_legs(admin: SocketAddr) -> Option<f64> {
    let ask = async {
        let mut stream = TcpStream::connect(admin).await.ok()?;
        let req = format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut page = String::new();
        stream.read_to_string(&mut page).await.ok()?;
        legs_in(&page)
    };
    tokio::time::timeout(ASK_TIMEOUT, ask).await.ok().flatten()
}

fn legs_in(page: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        let (name, value) = l.split_once(' ')?;
        (name == LEGS_METRIC).then(|| value.trim().parse().ok())?
    })
}

/// The first of `slots` whose edge is ready, `base` being the edge admin
/// port's slot 0: the successor that takes the SIP port over. The slots
/// are those whose edge shares this one's port ([`crate::port_sharing`]).
pub async fn successor(base: SocketAddr, slots: Vec<u16>) -> Option<SocketAddr> {
    let admins: Vec<SocketAddr> = slots
        .into_iter()
        .filter_map(|slot| slot_addr(base, slot))
        .map(reachable)
        .collect();
    tokio::task::spawn_blocking(move || {
        admins
            .into_iter()
            .find(|a| http_ok(*a, "/readyz", ASK_TIMEOUT).is_ok())
    })
    .await
    .ok()
    .flatten()
}

/// The admin address of the media node beside this edge: from its instance
/// file when it wrote one (its port may be in another slot), else `fixed`.
pub fn media_admin(instance: Option<&Path>, fixed: Option<SocketAddr>) -> Option<SocketAddr> {
    instance
        .and_then(|file| read_instance(file, "admin"))
        .or(fixed)
}

/// An edge's wait for the media node beside it, sans I/O: it asks the
/// node how many legs it carries, every [`POLL`] while there are some,
/// until there are none (or the node stopped) or the deadline passes. The
/// caller asks when [`Self::next`] says so and brings the answer and the
/// time; the state decides.
#[derive(Debug)]
pub struct MediaDrain {
    /// When the edge leaves with calls up; `None`: a limit too far off to
    /// name, never.
    deadline: Option<Instant>,
    /// When to ask the media node next.
    next_ask: Instant,
    /// It said it carries no leg, or did not answer.
    idle: bool,
}

/// What the edge does next in its drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainStep {
    /// Ask the media node for its legs and bring the answer to
    /// [`MediaDrain::on_legs`]; give up asking at `until` (the deadline).
    Ask {
        /// The deadline, if any.
        until: Option<Instant>,
    },
    /// Nothing until then.
    Wait(Instant),
    /// The media node carries no leg: the edge may go.
    Idle,
    /// The drain time is over: the edge goes with calls up.
    Overdue,
}

impl MediaDrain {
    /// A drain starting `now` that lasts at most `max`.
    pub fn new(now: Instant, max: Duration) -> Self {
        Self {
            deadline: now.checked_add(max),
            next_ask: now,
            idle: false,
        }
    }

    /// What to do at `now`.
    pub fn next(&self, now: Instant) -> DrainStep {
        if self.idle {
            return DrainStep::Idle;
        }
        match self.deadline {
            Some(deadline) if now >= deadline => DrainStep::Overdue,
            _ if now >= self.next_ask => DrainStep::Ask {
                until: self.deadline,
            },
            Some(deadline) => DrainStep::Wait(self.next_ask.min(deadline)),
            None => DrainStep::Wait(self.next_ask),
        }
    }

    /// The media node's answer at `now`: the legs it carries, `None` when
    /// it does not answer (it stopped) or says nothing usable.
    pub fn on_legs(&mut self, legs: Option<f64>, now: Instant) {
        match legs {
            Some(legs) if legs > 0.0 => {
                tracing::debug!(legs, "the pod's calls go on; the edge stays");
                self.next_ask = now + POLL;
            }
            _ => self.idle = true,
        }
    }
}

/// Waits until the media node at `admin` carries no leg or stopped, for
/// at most `max`; at once without a media node to watch. The driver of
/// [`MediaDrain`].
pub async fn until_media_idle(admin: Option<SocketAddr>, max: Duration) {
    let Some(admin) = admin else { return };
    let mut drain = MediaDrain::new(Instant::now(), max);
    loop {
        match drain.next(Instant::now()) {
            DrainStep::Idle => return,
            DrainStep::Overdue => {
                tracing::warn!(?max, "the edge's drain time is over; leaving with calls up");
                return;
            }
            DrainStep::Wait(until) => tokio::time::sleep_until(until.into()).await,
            DrainStep::Ask { until } => {
                let legs = match until {
                    Some(deadline) => tokio::time::timeout_at(deadline.into(), media_legs(admin))
                        .await
                        // Cut short by the deadline, which the next step says.
                        .ok(),
                    None => Some(media_legs(admin).await),
                };
                if let Some(legs) = legs {
                    drain.on_legs(legs, Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legs_gauge_is_read_from_the_metrics_page() {
        let page = "HTTP/1.0 200 OK\r\n\r\n# HELP voicecluster_media_legs_active Legs\n\
# TYPE voicecluster_media_legs_active gauge\nvoicecluster_media_legs_active 4\n\
voicecluster_media_legs_active_total 9\n";
        assert_eq!(legs_in(page), Some(4.0));
        assert_eq!(legs_in("voicecluster_media_legs_active x\n"), None);
        assert_eq!(legs_in("nothing here\n"), None);
    }

    #[tokio::test]
    async fn a_ready_edge_in_another_slot_is_the_successor() {
        use voicecluster_telemetry::{AdminServer, Readiness};
        // An admin server in slot 1 of some base port.
        let (base, listener) = loop {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let base = free.local_addr().unwrap();
            drop(free);
            if let Some(next) = slot_addr(base, 1)
                && let Ok(l) = tokio::net::TcpListener::bind(next).await
            {
                break (base, l);
            }
        };
        let readiness = Readiness::new("starting");
        let registry = std::sync::Arc::new(prometheus_client::registry::Registry::default());
        let _next = AdminServer::on(listener, registry, readiness.clone())
            .unwrap()
            .spawn();
        assert_eq!(successor(base, vec![1]).await, None, "not ready yet");
        readiness.set_ready();
        assert_eq!(successor(base, vec![1]).await, slot_addr(base, 1));
        assert_eq!(
            successor(base, vec![]).await,
            None,
            "no edge shares the port"
        );
    }

    #[test]
    fn the_drain_asks_while_legs_remain_until_none_or_the_deadline() {
        let t0 = Instant::now();
        let max = Duration::from_secs(2);
        let mut drain = MediaDrain::new(t0, max);
        let deadline = Some(t0 + max);
        assert_eq!(drain.next(t0), DrainStep::Ask { until: deadline });
        drain.on_legs(Some(3.0), t0);
        assert_eq!(drain.next(t0), DrainStep::Wait(t0 + POLL), "legs up: wait");
        let later = t0 + POLL;
        assert_eq!(drain.next(later), DrainStep::Ask { until: deadline });
        drain.on_legs(Some(1.0), t0 + Duration::from_millis(1900));
        assert_eq!(
            drain.next(t0 + Duration::from_millis(1900)),
            DrainStep::Wait(t0 + max),
            "never past the deadline"
        );
        assert_eq!(drain.next(t0 + max), DrainStep::Overdue);

        let mut done = MediaDrain::new(t0, max);
        done.on_legs(Some(0.0), t0);
        assert_eq!(done.next(t0), DrainStep::Idle, "no leg left");
        let mut stopped = MediaDrain::new(t0, max);
        stopped.on_legs(None, t0);
        assert_eq!(stopped.next(t0 + max), DrainStep::Idle, "the node stopped");
        let endless = MediaDrain::new(t0, Duration::MAX);
        assert_eq!(endless.next(t0), DrainStep::Ask { until: None });
    }

    #[tokio::test]
    async fn a_stopped_media_node_ends_the_wait() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        assert_eq!(media_legs(addr).await, None);
        tokio::time::timeout(
            Duration::from_secs(5),
            until_media_idle(Some(addr), Duration::from_secs(60)),
        )
        .await
        .expect("nothing to wait for");
    }
}
