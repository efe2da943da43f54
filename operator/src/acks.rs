//! Which Directory version each pod has applied, and what draining media
//! pods still carry (their load reports, which travel the same way).
//!
//! A pod acknowledges versions on its Directory stream, to whichever replica
//! it reached. Each replica keeps the acks of its own open streams; followers
//! report their full set to the leader, which merges them with its own and
//! writes the counts into the status. An ack lives as long as its stream, a
//! follower's report as long as the follower keeps refreshing it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use voicecluster_api::VoiceCluster;
use voicecluster_api::grpc::{ConfigResult, FailoverReport, Load, PodAck};

/// A follower's report is dropped when it is older than this: the follower
/// refreshes it well within, so only a dead follower's report ages out.
pub const REPORT_TTL: Duration = Duration::from_secs(15);

/// (namespace, cluster).
type ClusterKey = (String, String);

/// One open Directory stream.
#[derive(Debug)]
struct StreamAck {
    cluster: ClusterKey,
    pod: String,
    /// The last version the pod acknowledged on this stream.
    version: Option<i64>,
    /// The pod's last load report on this stream.
    load: Option<Load>,
    /// The pod's last failover report on this stream.
    failover: Option<FailoverReport>,
    /// The port of the pod's CallLegs service, as it subscribed.
    call_legs_port: Option<u32>,
    /// What the pod did with the last configuration version it got.
    config: Option<ConfigResult>,
}

impl StreamAck {
    /// Whether the stream has told anything worth counting.
    fn said_anything(&self) -> bool {
        self.version.is_some()
            || self.load.is_some()
            || self.failover.is_some()
            || self.call_legs_port.is_some()
            || self.config.is_some()
    }
}

#[derive(Debug)]
struct Report {
    received: Instant,
    acks: Vec<PodAck>,
}

#[derive(Debug, Default)]
struct Inner {
    next_stream: u64,
    streams: HashMap<u64, StreamAck>,
    reports: HashMap<String, Report>,
    /// Clusters whose counts may have changed since the controller last
    /// looked; a set, so a burst of acks costs one reconcile per cluster.
    dirty: HashSet<ClusterKey>,
}

/// The acknowledgement book of one replica.
#[derive(Debug, Default)]
pub struct AckBook {
    inner: Mutex<Inner>,
    /// Wakes the controller's trigger stream.
    dirty: Notify,
    /// Wakes the follower's reporter.
    local_changed: Notify,
}

/// A stream's handle in the book; dropping it forgets the stream's ack.
pub struct StreamEntry {
    book: Arc<AckBook>,
    id: u64,
}

impl AckBook {
    /// A new, empty book.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, which are
        // still consistent enough to count from.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mark(&self, inner: &mut Inner, cluster: ClusterKey) {
        inner.dirty.insert(cluster);
        self.dirty.notify_one();
    }

    /// Registers a newly opened stream.
    pub fn open(self: &Arc<Self>, namespace: &str, cluster: &str, pod: &str) -> StreamEntry {
        let mut inner = self.lock();
        inner.next_stream += 1;
        let id = inner.next_stream;
        inner.streams.insert(
            id,
            StreamAck {
                cluster: (namespace.to_string(), cluster.to_string()),
                pod: pod.to_string(),
                version: None,
                load: None,
                failover: None,
                call_legs_port: None,
                config: None,
            },
        );
        StreamEntry {
            book: Arc::clone(self),
            id,
        }
    }

    /// The acks of this replica's own streams, one per pod (its highest
    /// version, and its newest load report).
    pub fn local(&self) -> Vec<PodAck> {
        let inner = self.lock();
        let mut ids: Vec<&u64> = inner.streams.keys().collect();
        // Oldest stream first, so a newer stream's load wins.
        ids.sort();
        let mut best: HashMap<(&ClusterKey, &str), PodAck> = HashMap::new();
        for id in ids {
            let s = &inner.streams[id];
            if !s.said_anything() {
                continue;
            }
            let e = best
                .entry((&s.cluster, s.pod.as_str()))
                .or_insert_with(|| PodAck {
                    namespace: s.cluster.0.clone(),
                    cluster: s.cluster.1.clone(),
                    pod: s.pod.clone(),
                    version: 0,
                    load: None,
                    failover: None,
                    call_legs_port: 0,
                    config: None,
                });
            e.version = e.version.max(s.version.unwrap_or(0));
            if let Some(port) = s.call_legs_port {
                e.call_legs_port = port;
            }
            if s.load.is_some() {
                e.load = s.load;
            }
            if s.failover.is_some() {
                e.failover.clone_from(&s.failover);
            }
            if s.config.is_some() {
                e.config.clone_from(&s.config);
            }
        }
        let mut acks: Vec<PodAck> = best.into_values().collect();
        acks.sort_by(|a, b| {
            (&a.namespace, &a.cluster, &a.pod).cmp(&(&b.namespace, &b.cluster, &b.pod))
        });
        acks
    }

    /// Takes in a follower's full report, replacing its previous one.
    pub fn report(&self, replica: &str, acks: Vec<PodAck>, now: Instant) {
        let mut inner = self.lock();
        let mut touched: HashSet<ClusterKey> = acks
            .iter()
            .map(|a| (a.namespace.clone(), a.cluster.clone()))
            .collect();
        let previous = inner.reports.insert(
            replica.to_string(),
            Report {
                received: now,
                acks: acks.clone(),
            },
        );
        if let Some(previous) = previous {
            if previous.acks == acks {
                return;
            }
            touched.extend(
                previous
                    .acks
                    .iter()
                    .map(|a| (a.namespace.clone(), a.cluster.clone())),
            );
        }
        for c in touched {
            self.mark(&mut inner, c);
        }
    }

    /// Drops reports not refreshed within [`REPORT_TTL`].
    pub fn expire(&self, now: Instant) {
        let mut inner = self.lock();
        let stale: Vec<String> = inner
            .reports
            .iter()
            .filter(|(_, r)| now.duration_since(r.received) > REPORT_TTL)
            .map(|(k, _)| k.clone())
            .collect();
        for replica in stale {
            if let Some(r) = inner.reports.remove(&replica) {
                tracing::info!(%replica, "dropping a Directory ack report that was not refreshed");
                for a in r.acks {
                    self.mark(&mut inner, (a.namespace, a.cluster));
                }
            }
        }
    }

    /// Every pod's highest acknowledged version for one cluster, from this
    /// replica's streams and the live reports.
    pub fn versions(&self, namespace: &str, cluster: &str) -> HashMap<String, i64> {
        let inner = self.lock();
        let mut out: HashMap<String, i64> = HashMap::new();
        let mut put = |pod: &str, v: i64| {
            let e = out.entry(pod.to_string()).or_insert(v);
            *e = (*e).max(v);
        };
        for s in inner.streams.values() {
            if let Some(v) = s.version
                && s.cluster.0 == namespace
                && s.cluster.1 == cluster
            {
                put(&s.pod, v);
            }
        }
        for r in inner.reports.values() {
            for a in &r.acks {
                if a.namespace == namespace && a.cluster == cluster && a.version > 0 {
                    put(&a.pod, a.version);
                }
            }
        }
        out
    }

    /// Every pod's last load report for one cluster, from this replica's
    /// streams and the live reports. A pod reports to one replica at a
    /// time, so there is one report per pod but for a reconnect's moment.
    pub fn loads(&self, namespace: &str, cluster: &str) -> HashMap<String, Load> {
        self.per_pod(namespace, cluster, |a| a.load, |s| s.load)
    }

    /// Every pod's last failover report for one cluster, as [`Self::loads`].
    pub fn failovers(&self, namespace: &str, cluster: &str) -> HashMap<String, FailoverReport> {
        self.per_pod(
            namespace,
            cluster,
            |a| a.failover.clone(),
            |s| s.failover.clone(),
        )
    }

    /// What each pod did with its last configuration version, for one
    /// cluster, as [`Self::loads`].
    pub fn configs(&self, namespace: &str, cluster: &str) -> HashMap<String, ConfigResult> {
        self.per_pod(
            namespace,
            cluster,
            |a| a.config.clone(),
            |s| s.config.clone(),
        )
    }

    /// The CallLegs port each pod said it serves on, for one cluster.
    pub fn call_legs_ports(&self, namespace: &str, cluster: &str) -> HashMap<String, u16> {
        let port = |p: u32| u16::try_from(p).ok().filter(|p| *p != 0);
        self.per_pod(
            namespace,
            cluster,
            |a| port(a.call_legs_port),
            |s| s.call_legs_port.and_then(port),
        )
    }

    fn per_pod<T>(
        &self,
        namespace: &str,
        cluster: &str,
        reported: impl Fn(&PodAck) -> Option<T>,
        streamed: impl Fn(&StreamAck) -> Option<T>,
    ) -> HashMap<String, T> {
        let inner = self.lock();
        let mut out = HashMap::new();
        for r in inner.reports.values() {
            for a in &r.acks {
                if a.namespace == namespace
                    && a.cluster == cluster
                    && let Some(v) = reported(a)
                {
                    out.insert(a.pod.clone(), v);
                }
            }
        }
        for s in inner.streams.values() {
            if s.cluster.0 == namespace
                && s.cluster.1 == cluster
                && let Some(v) = streamed(s)
            {
                out.insert(s.pod.clone(), v);
            }
        }
        out
    }

    /// Clusters to reconcile whenever their counts may have changed.
    pub fn triggers(self: Arc<Self>) -> impl Stream<Item = ObjectRef<VoiceCluster>> + Send {
        futures::stream::unfold(self, |book| async move {
            loop {
                let batch: Vec<ClusterKey> = book.lock().dirty.drain().collect();
                if !batch.is_empty() {
                    let refs: Vec<ObjectRef<VoiceCluster>> = batch
                        .into_iter()
                        .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
                        .collect();
                    return Some((futures::stream::iter(refs), book));
                }
                book.dirty.notified().await;
            }
        })
        .flatten()
    }

    /// Resolves when this replica's own acks changed.
    pub async fn local_changed(&self) {
        self.local_changed.notified().await;
    }
}

impl StreamEntry {
    /// Records the pod's load report.
    pub fn load(&self, load: Load) {
        self.update(|s| s.load.replace(load) != Some(load));
    }

    /// Records the pod's failover report.
    pub fn failover(&self, report: FailoverReport) {
        self.update(|s| {
            let changed = s.failover.as_ref() != Some(&report);
            s.failover = Some(report);
            changed
        });
    }

    /// Applies `change` to the stream's entry; when it says something
    /// changed, the cluster's status and this replica's report follow.
    fn update(&self, change: impl FnOnce(&mut StreamAck) -> bool) {
        let book = &self.book;
        let mut inner = book.lock();
        let Some(s) = inner.streams.get_mut(&self.id) else {
            return;
        };
        if !change(s) {
            return;
        }
        let cluster = s.cluster.clone();
        book.mark(&mut inner, cluster);
        book.local_changed.notify_one();
    }

    /// Records the port of the pod's CallLegs service.
    pub fn call_legs_port(&self, port: u32) {
        self.update(|s| s.call_legs_port.replace(port) != Some(port));
    }

    /// Records what the pod did with a configuration version.
    pub fn config(&self, result: ConfigResult) {
        self.update(|s| {
            let changed = s.config.as_ref() != Some(&result);
            s.config = Some(result);
            changed
        });
    }

    /// Records that the pod applied `version`.
    pub fn ack(&self, version: i64) {
        self.update(|s| s.version.replace(version) != Some(version));
    }
}

impl Drop for StreamEntry {
    fn drop(&mut self) {
        let book = &self.book;
        let mut inner = book.lock();
        if let Some(s) = inner.streams.remove(&self.id)
            && s.said_anything()
        {
            book.mark(&mut inner, s.cluster);
            book.local_changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(cluster: &str, pod: &str, version: i64) -> PodAck {
        PodAck {
            namespace: "voice".into(),
            cluster: cluster.into(),
            pod: pod.into(),
            version,
            load: None,
            failover: None,
            call_legs_port: 0,
            config: None,
        }
    }

    fn draining(active_legs: i32) -> Load {
        Load {
            active_legs,
            draining: true,
        }
    }

    #[test]
    fn load_reports_travel_with_the_acks_and_go_with_their_stream() {
        let book = AckBook::new();
        let s = book.open("voice", "demo", "media-x");
        s.ack(2);
        s.load(draining(5));
        assert_eq!(
            book.loads("voice", "demo").get("media-x"),
            Some(&draining(5))
        );
        let local = book.local();
        assert_eq!(local.len(), 1);
        assert_eq!((local[0].version, local[0].load), (2, Some(draining(5))));
        // Another replica's report of another pod, without a version yet.
        let mut reported = ack("demo", "media-y", 0);
        reported.load = Some(draining(1));
        book.report("replica-b", vec![reported], Instant::now());
        let loads = book.loads("voice", "demo");
        assert_eq!(loads.get("media-y"), Some(&draining(1)));
        assert!(
            !book.versions("voice", "demo").contains_key("media-y"),
            "a load is not an ack"
        );
        drop(s);
        assert!(!book.loads("voice", "demo").contains_key("media-x"));
    }

    #[test]
    fn a_media_pods_call_legs_port_reaches_the_leader_before_any_ack() {
        let book = AckBook::new();
        let media = book.open("voice", "demo", "media-x");
        // The pod's edge container shares its name and says no port.
        let _edge = book.open("voice", "demo", "media-x");
        assert!(book.call_legs_ports("voice", "demo").is_empty());
        media.call_legs_port(9455);
        assert_eq!(
            book.call_legs_ports("voice", "demo").get("media-x"),
            Some(&9455)
        );
        // A follower reports it to the leader even before the first ack.
        let local = book.local();
        assert_eq!((local.len(), local[0].call_legs_port), (1, 9455));
        let leader = AckBook::new();
        leader.report("replica-b", local, Instant::now());
        assert_eq!(
            leader.call_legs_ports("voice", "demo").get("media-x"),
            Some(&9455)
        );
        drop(media);
        assert!(book.call_legs_ports("voice", "demo").is_empty());
    }

    #[test]
    fn a_pods_edge_and_media_streams_report_side_by_side() {
        let book = AckBook::new();
        let media = book.open("voice", "demo", "media-x");
        let edge = book.open("voice", "demo", "media-x");
        media.load(draining(3));
        let report = FailoverReport {
            backends: vec![voicecluster_api::grpc::BackendHealth {
                address: "10.0.0.2".into(),
                state: "Down".into(),
            }],
            ..Default::default()
        };
        edge.failover(report.clone());
        let local = book.local();
        assert_eq!(local.len(), 1);
        assert_eq!(
            local[0].load,
            Some(draining(3)),
            "the edge's report keeps the load"
        );
        assert_eq!(local[0].failover.as_ref(), Some(&report));
        assert_eq!(
            book.failovers("voice", "demo").get("media-x"),
            Some(&report)
        );
        drop(edge);
        assert!(book.failovers("voice", "demo").is_empty());
        assert!(book.loads("voice", "demo").contains_key("media-x"));
    }

    #[test]
    fn a_stream_counts_while_open() {
        let book = AckBook::new();
        let s = book.open("voice", "demo", "signal-0");
        assert!(book.versions("voice", "demo").is_empty());
        s.ack(3);
        assert_eq!(book.versions("voice", "demo").get("signal-0"), Some(&3));
        assert_eq!(book.local(), vec![ack("demo", "signal-0", 3)]);
        drop(s);
        assert!(book.versions("voice", "demo").is_empty());
        assert!(book.local().is_empty());
    }

    #[test]
    fn the_highest_version_of_a_pod_wins_across_streams_and_reports() {
        let book = AckBook::new();
        let a = book.open("voice", "demo", "media-x");
        a.ack(4);
        book.report("replica-b", vec![ack("demo", "media-x", 5)], Instant::now());
        book.report("replica-b", vec![ack("demo", "media-x", 5)], Instant::now());
        assert_eq!(book.versions("voice", "demo").get("media-x"), Some(&5));
        // Other clusters and namespaces are separate.
        assert!(book.versions("voice", "other").is_empty());
        assert!(book.versions("elsewhere", "demo").is_empty());
    }

    #[test]
    fn a_report_replaces_the_previous_one_and_ages_out() {
        let book = AckBook::new();
        let t0 = Instant::now();
        book.report(
            "replica-b",
            vec![ack("demo", "a", 1), ack("demo", "b", 1)],
            t0,
        );
        book.report("replica-b", vec![ack("demo", "a", 2)], t0);
        let v = book.versions("voice", "demo");
        assert_eq!(v.len(), 1);
        assert_eq!(v.get("a"), Some(&2));
        book.expire(t0 + REPORT_TTL / 2);
        assert_eq!(book.versions("voice", "demo").len(), 1);
        book.expire(t0 + REPORT_TTL + Duration::from_secs(1));
        assert!(book.versions("voice", "demo").is_empty());
    }

    #[tokio::test]
    async fn changes_trigger_each_cluster_once_per_burst() {
        let book = AckBook::new();
        let s1 = book.open("voice", "demo", "a");
        let s2 = book.open("voice", "demo", "b");
        let s3 = book.open("voice", "other", "c");
        s1.ack(1);
        s2.ack(1);
        s3.ack(7);
        // Acking the same version again is no change.
        s1.ack(1);
        let mut triggers = Box::pin(Arc::clone(&book).triggers());
        let mut got = [
            triggers.next().await.unwrap(),
            triggers.next().await.unwrap(),
        ];
        got.sort_by_key(|r| r.name.clone());
        assert_eq!(got[0].name, "demo");
        assert_eq!(got[1].name, "other");
        // Nothing else is pending; a close with an ack triggers again.
        drop(s3);
        let next = triggers.next().await.unwrap();
        assert_eq!(next.name, "other");
        assert_eq!(next.namespace.as_deref(), Some("voice"));
    }
}
