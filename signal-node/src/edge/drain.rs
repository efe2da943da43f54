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
use std::time::Duration;

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

/// Waits until the media node at `admin` carries no leg or stopped, for
/// at most `max`; at once without a media node to watch.
pub async fn until_media_idle(admin: Option<SocketAddr>, max: Duration) {
    let Some(admin) = admin else { return };
    let waited = tokio::time::timeout(max, async {
        loop {
            match media_legs(admin).await {
                Some(legs) if legs > 0.0 => {
                    tracing::debug!(legs, "the pod's calls go on; the edge stays");
                }
                _ => return,
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    if waited.is_err() {
        tracing::warn!(?max, "the edge's drain time is over; leaving with calls up");
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
