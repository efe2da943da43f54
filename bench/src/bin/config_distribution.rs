//! The live configuration's distribution, in one process and no cluster:
//! the operator's real `ConfigStore` behind its real Directory gRPC service
//! on 127.0.0.1 (a port the OS picks), and pods that follow it with the
//! real directory-client: `follow_config` on the configuration stream, and
//! `follow_with_config` on the Directory stream, where each pod's
//! `ConfigResult` goes back. Each pod applies a version as a signal-node
//! member does: `live_config::InForce::check`, then the users put into a
//! `Registrar`. Only the VoiceCluster cache is filled by hand, as the
//! operator's tests do, because the Directory serves pods of clusters it
//! has; the rates going to the bill writer and the copy on the volume are
//! left out (neither is on the way to the pod's answer).
//!
//! Printed, with the targets beside them (PASS/MISS is information only):
//! 1. a one-user change as a delta and as the whole snapshot: bytes on the
//!    wire, time to build it in the store, to rebuild it on a client and
//!    to apply it in the member;
//! 2. publish → the Directory recorded every pod's `ConfigResult` of the
//!    version, over 20 successive one-user changes (p50, p99), when the
//!    last pod had rebuilt and applied it, and the CPU it all took;
//! 3. a new pod: start → the Directory recorded its `ConfigResult` of the
//!    whole current version;
//! 4. what a member holds per user, as VmRSS growth.
//!
//! The pods share this process's cores (and the machine's: the load
//! average is printed): a change costs every pod work on the whole user
//! list (rebuild, check, swap), so with many pods on few cores figure 2 is
//! about the sum of their work, more than pods on their own nodes see.
//!
//! `config-distribution [USERS] [PODS]`: 100000 users and 10 pods by default.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use voicecluster_telemetry::LogFilter;

use anyhow::{Context, Result, bail, ensure};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use voicecluster_api::VoiceCluster;
use voicecluster_api::config::{compress, ha1, hash};
use voicecluster_api::grpc::directory_server::DirectoryServer;
use voicecluster_api::grpc::{
    BillingConfig, ClusterConfig, ConfigResult, ConfigUpdate, ConfigUser, DirectorySnapshot,
    RateConfig, config_update,
};
use voicecluster_api::voicecluster::{DirectoryStatus, VoiceClusterStatus};
use voicecluster_bench::loopback::percentile;
use voicecluster_directory_client::config::{Offered, follow_config};
use voicecluster_directory_client::{ClientMetrics, Target, follow_with_config};
use voicecluster_operator::acks::AckBook;
use voicecluster_operator::cache::Cache;
use voicecluster_operator::directory::{DirectoryMetrics, DirectoryService};
use voicecluster_operator::live_config::store::{
    ClusterKey, ConfigStore, Part, StoreMetrics, Version,
};
use voicecluster_signal_node::digest::Authenticator;
use voicecluster_signal_node::live_config::InForce;
use voicecluster_signal_node::registrar::Registrar;

const NAMESPACE: &str = "voice";
const CLUSTER: &str = "demo";
/// The SIP domain, the realm of every HA1.
const REALM: &str = "voice.test";
/// One-user changes timed in figure 2.
const CHANGES: usize = 20;
/// Runs of each in-process timing of figure 1; the median is printed.
const REPEATS: usize = 5;
/// Versions held in figure 4 beyond the first (which soaks up what the
/// allocator kept from setting up).
const MEMORY_COPIES: usize = 3;
/// Longest wait for any pod before giving up.
const WAIT: Duration = Duration::from_secs(120);

/// One-user delta, as the gRPC message, in bytes.
const DELTA_TARGET_BYTES: usize = 1000;
/// A change applied on every pod, p99.
const EVERY_POD_TARGET: Duration = Duration::from_secs(1);
/// The whole version to a new pod.
const NEW_POD_TARGET: Duration = Duration::from_secs(5);

/// The command line.
struct Args {
    users: usize,
    pods: usize,
}

fn args() -> Result<Args> {
    let mut given = std::env::args().skip(1);
    let mut count = |what: &str, default: usize| -> Result<usize> {
        given.next().map_or(Ok(default), |s| {
            s.parse()
                .with_context(|| format!("{what}: {s:?} is not a count"))
        })
    };
    let users = count("USERS", 100_000)?;
    let pods = count("PODS", 10)?;
    ensure!(users > 0 && pods > 0, "USERS and PODS must be at least 1");
    Ok(Args { users, pods })
}

fn key() -> ClusterKey {
    (NAMESPACE.to_string(), CLUSTER.to_string())
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}

fn median(mut figures: Vec<Duration>) -> Duration {
    figures.sort();
    percentile(&figures, 0.5)
}

/// "p50 X ms, p99 Y ms" of `figures`, and the p99.
fn p50_p99(mut figures: Vec<Duration>) -> (String, Duration) {
    figures.sort();
    let p99 = percentile(&figures, 0.99);
    (
        format!("p50 {}, p99 {}", ms(percentile(&figures, 0.5)), ms(p99)),
        p99,
    )
}

// ---- the configuration ----

fn rate(prefix: &str, price: &str) -> RateConfig {
    RateConfig {
        prefix: prefix.into(),
        price_per_minute: price.into(),
        increment_seconds: 1,
    }
}

/// `users` users with their HA1s and a small rate table. The names are
/// zero-padded so they come out sorted, the canonical order: sorting would
/// leave freed memory behind that figure 4's measure could reuse. (A list
/// out of order would not hash the same once rebuilt, and no pod would
/// apply anything.)
fn initial_config(users: usize) -> ClusterConfig {
    ClusterConfig {
        users: (0..users)
            .map(|i| {
                let name = format!("user{i:07}");
                ConfigUser {
                    ha1: ha1(&name, REALM, &format!("password-{i}")),
                    display_name: String::new(),
                    name,
                }
            })
            .collect(),
        billing: Some(BillingConfig {
            currency: "EUR".into(),
            rates: vec![rate("", "0.02"), rate("1", "0.01"), rate("44", "0.015")],
        }),
        settings: None,
    }
}

/// `config` with one user (picked by `round`) re-passworded.
fn one_user_changed(config: &ClusterConfig, round: usize) -> ClusterConfig {
    let mut next = config.clone();
    let i = round.wrapping_mul(7919) % next.users.len();
    if let Some(u) = next.users.get_mut(i) {
        u.ha1 = ha1(&u.name, REALM, &format!("changed-{round}"));
    }
    next
}

/// A version of `config`, hashed: the operator hashes when it assembles,
/// before it publishes, so no figure includes it.
fn version(number: i64, config: Arc<ClusterConfig>) -> Version {
    Version::new(number, hash(&config), unix_ms(), config)
}

fn body_len(update: &ConfigUpdate) -> usize {
    match &update.body {
        Some(config_update::Body::Delta(b) | config_update::Body::Snapshot(b)) => b.len(),
        None => 0,
    }
}

/// Bytes of `update` on the stream: the message and gRPC's 5-byte prefix
/// (HTTP/2 frames add 9 bytes per 16 kB or less).
fn message_len(update: &ConfigUpdate) -> usize {
    update.encoded_len() + 5
}

// ---- the member ----

/// A member's users as signal-node holds them: `InForce::check` checks a
/// version (only its delta when it came as one on the version in force)
/// and the `Registrar` keeps the HA1 map.
struct Member {
    registrar: Registrar,
    in_force: InForce,
}

impl Member {
    fn new() -> Self {
        Self {
            registrar: Registrar::new(Authenticator::with_ha1s(
                REALM,
                "bench-secret",
                HashMap::new(),
            )),
            in_force: InForce::default(),
        }
    }

    /// What the driver's `apply_config` does with a version's users.
    fn apply(&mut self, offered: &Offered) -> Result<(), String> {
        self.apply_timed(offered).map(drop)
    }
}

// ---- figure 1: one change, in-process ----

/// What a fresh store made for version 2, and how long each took.
struct Built {
    v1: Arc<Version>,
    /// For a pod on version 1.
    delta: ConfigUpdate,
    delta_build: Duration,
    /// For a new pod.
    snapshot: ConfigUpdate,
    snapshot_build: Duration,
}

/// A store with `base` as version 1 and `next` as version 2, nothing
/// compressed yet; the delta and the snapshot it sends.
fn build(base: &Arc<ClusterConfig>, next: &Arc<ClusterConfig>) -> Result<Built> {
    let store = ConfigStore::new(StoreMetrics::default());
    store.publish(&key(), version(1, Arc::clone(base)));
    let v1 = store.current(&key()).context("version 1 not served")?;
    store.publish(&key(), version(2, Arc::clone(next)));
    let v2 = store.current(&key()).context("version 2 not served")?;
    let t = Instant::now();
    let delta = store.update(&key(), Some((1, &v1.hash)), &v2, Part::Whole);
    let delta_build = t.elapsed();
    let t = Instant::now();
    let snapshot = store.update(&key(), None, &v2, Part::Whole);
    let snapshot_build = t.elapsed();
    ensure!(
        matches!(delta.body, Some(config_update::Body::Delta(_))),
        "the store sent no delta to a pod on version 1"
    );
    Ok(Built {
        v1,
        delta,
        delta_build,
        snapshot,
        snapshot_build,
    })
}

/// A pod's work on what the store made, timed.
struct ClientRun {
    /// `follow_config`'s rebuild of each form.
    delta_rebuild: Duration,
    snapshot_rebuild: Duration,
    /// The part of either rebuild that hashes the whole version.
    hash: Duration,
    /// A member's check and swap of the whole version 1 (a new pod) ...
    whole: Applying,
    /// ... and of version 2 on top of it, the delta alone.
    on_top: Applying,
}

/// A member putting one version in force.
struct Applying {
    /// `InForce::check` ...
    check: Duration,
    /// ... and the swap into the Registrar.
    swap: Duration,
}

impl Member {
    /// [`Member::apply`], timed in its two steps.
    fn apply_timed(&mut self, offered: &Offered) -> Result<Applying, String> {
        let t = Instant::now();
        let checked = self.in_force.check(offered, &LogFilter::detached("info"))?;
        let check = t.elapsed();
        let t = Instant::now();
        self.registrar.put_users(checked.users);
        let swap = t.elapsed();
        self.in_force.applied(offered);
        Ok(Applying { check, swap })
    }
}

/// The delta and the snapshot rebuilt as `follow_config` does, and the
/// two versions applied in turn as a new member does.
fn client_run(built: &Built) -> Result<ClientRun> {
    let v1 = &built.v1;
    let on_v1 = Offered {
        version: 1,
        hash: v1.hash.clone(),
        effective_unix_ms: v1.effective_unix_ms,
        config: Arc::clone(&v1.config),
        delta: None,
    };
    let mut member = Member::new();
    let whole = member.apply_timed(&on_v1).map_err(anyhow::Error::msg)?;
    let (delta, snapshot) = (built.delta.clone(), built.snapshot.clone());
    let t = Instant::now();
    let rebuilt = Offered::rebuild(Some(&on_v1), delta).map_err(anyhow::Error::msg)?;
    let delta_rebuild = t.elapsed();
    let t = Instant::now();
    Offered::rebuild(None, snapshot).map_err(anyhow::Error::msg)?;
    let snapshot_rebuild = t.elapsed();
    let t = Instant::now();
    hash(&rebuilt.config);
    let hash = t.elapsed();
    let on_top = member.apply_timed(&rebuilt).map_err(anyhow::Error::msg)?;
    ensure!(
        rebuilt.delta.is_some(),
        "version 2 came as a delta but does not say so"
    );
    Ok(ClientRun {
        delta_rebuild,
        snapshot_rebuild,
        hash,
        whole,
        on_top,
    })
}

fn figure_1(base: &Arc<ClusterConfig>) -> Result<()> {
    let next = Arc::new(one_user_changed(base, 0));
    let mut runs = Vec::new();
    for _ in 0..REPEATS {
        let built = build(base, &next)?;
        let client = client_run(&built)?;
        runs.push((built, client));
    }
    let med = |f: fn(&(Built, ClientRun)) -> Duration| ms(median(runs.iter().map(f).collect()));
    let (last, _) = runs.last().context("no run")?;
    println!("1. one user re-passworded, version 1 → 2 (median of {REPEATS} runs, in-process):");
    println!(
        "   delta:    {:>9} B zstd, {:>9} B gRPC message; built {:>9} (diff + zstd), rebuilt on a client {:>9} (zstd, apply, SHA-256)",
        body_len(&last.delta),
        message_len(&last.delta),
        med(|r| r.0.delta_build),
        med(|r| r.1.delta_rebuild),
    );
    println!(
        "   snapshot: {:>9} B zstd, {:>9} B gRPC message; built {:>9} (encode + zstd), rebuilt on a client {:>9} (zstd, decode, SHA-256)",
        body_len(&last.snapshot),
        message_len(&last.snapshot),
        med(|r| r.0.snapshot_build),
        med(|r| r.1.snapshot_rebuild),
    );
    println!(
        "   either rebuild includes the SHA-256 of the whole version: {}",
        med(|r| r.1.hash)
    );
    println!(
        "   a member puts version 1 in force whole: check {} (every user, HA1 map) + swap into the Registrar {}",
        med(|r| r.1.whole.check),
        med(|r| r.1.whole.swap)
    );
    println!(
        "   then version 2 as the delta on top of it: check {} + swap {}",
        med(|r| r.1.on_top.check),
        med(|r| r.1.on_top.swap)
    );
    let bytes = message_len(&last.delta);
    println!(
        "   target: one-user delta < {DELTA_TARGET_BYTES} B: {bytes} B  {}",
        verdict(bytes < DELTA_TARGET_BYTES)
    );
    Ok(())
}

// ---- the Directory and the pods, over gRPC ----

/// The operator's side: the Directory on loopback over a store and a book
/// of acks this benchmark reads.
struct Directory {
    url: String,
    acks: Arc<AckBook>,
    configs: Arc<ConfigStore>,
    // Held: the cache stays ready, and its change signal open (a closed
    // one ends every Directory stream).
    _writer: reflector::store::Writer<VoiceCluster>,
    _changes: watch::Sender<u64>,
}

/// The cluster the pods belong to, with a status: the Directory refuses
/// pods of a cluster it has no status for.
fn cluster() -> Result<VoiceCluster> {
    let mut vc: VoiceCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "voicecluster.io/v1alpha1", "kind": "VoiceCluster",
        "metadata": {"name": CLUSTER, "namespace": NAMESPACE},
        "spec": {"sip": {"domain": REALM}},
    }))?;
    vc.status = Some(VoiceClusterStatus {
        directory: Some(DirectoryStatus {
            version: 1,
            ..DirectoryStatus::default()
        }),
        ..VoiceClusterStatus::default()
    });
    Ok(vc)
}

async fn start_directory() -> Result<Directory> {
    let (store, mut writer) = reflector::store::<VoiceCluster>();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitApply(cluster()?));
    writer.apply_watcher_event(&Event::InitDone);
    let (changes, changes_rx) = watch::channel(0);
    let acks = AckBook::new();
    let configs = ConfigStore::new(StoreMetrics::default());
    let service = DirectoryService::new(
        Cache::from_parts(store, changes_rx),
        Arc::clone(&acks),
        DirectoryMetrics::default(),
    )
    .with_configs(Arc::clone(&configs));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DirectoryServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(Directory {
        url,
        acks,
        configs,
        _writer: writer,
        _changes: changes,
    })
}

impl Directory {
    /// Serves `v` now; when.
    fn publish(&self, v: Version) -> Result<Instant> {
        let number = v.version;
        let at = Instant::now();
        ensure!(
            self.configs.publish(&key(), v),
            "version {number} not newer"
        );
        Ok(at)
    }

    /// Waits until the Directory recorded a `ConfigResult` of `version`
    /// from each of `pods`; when it saw the last.
    async fn all_acked(&self, pods: &[String], version: i64) -> Result<Instant> {
        let wait = async {
            loop {
                let results = self.acks.configs(NAMESPACE, CLUSTER);
                refused(&results, version)?;
                if pods
                    .iter()
                    .all(|p| results.get(p).is_some_and(|r| r.version == version))
                {
                    return Ok(Instant::now());
                }
                // Wakes on every change of this replica's acks; a change
                // between the look and the wait is kept as a permit.
                self.acks.local_changed().await;
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .with_context(|| format!("not every pod applied version {version} within {WAIT:?}"))?
    }
}

/// Fails when a pod refused `version`.
fn refused(results: &HashMap<String, ConfigResult>, version: i64) -> Result<()> {
    match results
        .iter()
        .find(|(_, r)| r.version == version && r.failed)
    {
        Some((pod, r)) => bail!("{pod} refused version {version}: {}", r.reason),
        None => Ok(()),
    }
}

/// A member's note of a version it applied.
struct Applied {
    pod: String,
    version: i64,
    /// When it had the version from `follow_config`, rebuilt and checked.
    offered: Instant,
    /// When its users were swapped in.
    applied: Instant,
}

/// The pods, and their members' notes.
struct Fleet {
    url: String,
    names: Vec<String>,
    // Held: each pod's Directory stream lives while its view does.
    views: Vec<watch::Receiver<Option<Arc<DirectorySnapshot>>>>,
    notes_tx: mpsc::UnboundedSender<Applied>,
    notes: mpsc::UnboundedReceiver<Applied>,
}

impl Fleet {
    fn new(url: String) -> Self {
        let (notes_tx, notes) = mpsc::unbounded_channel();
        Self {
            url,
            names: Vec::new(),
            views: Vec::new(),
            notes_tx,
            notes,
        }
    }

    /// Starts a pod as signal-node's main does for a member: it follows
    /// its configuration, and the Directory with its `ConfigResult`s.
    fn start(&mut self, name: &str) {
        let target = Target {
            url: self.url.clone(),
            namespace: NAMESPACE.into(),
            cluster: CLUSTER.into(),
            pod: name.to_string(),
            call_legs_port: 0,
        };
        let offered = follow_config(target.clone(), None);
        let (results, results_rx) = watch::channel(None);
        // No load or failover reports: a closed channel says so.
        let (_, reports) = watch::channel(None);
        let view = follow_with_config(target, ClientMetrics::default(), reports, Some(results_rx));
        tokio::spawn(run_member(
            name.to_string(),
            offered,
            results,
            self.notes_tx.clone(),
        ));
        self.names.push(name.to_string());
        self.views.push(view);
    }

    /// Waits for the notes of `version` from each of `pods`: when the last
    /// had it rebuilt, and when the last had it applied.
    async fn last_applied(&mut self, pods: &[String], version: i64) -> Result<(Instant, Instant)> {
        let mut left: Vec<&String> = pods.iter().collect();
        let (mut offered, mut applied) = (None::<Instant>, None::<Instant>);
        while !left.is_empty() {
            let note = tokio::time::timeout(WAIT, self.notes.recv())
                .await
                .context("a member's note is late")?
                .context("the members are gone")?;
            if note.version != version || !left.contains(&&note.pod) {
                continue;
            }
            left.retain(|p| **p != note.pod);
            offered = offered.max(Some(note.offered));
            applied = applied.max(Some(note.applied));
        }
        offered.zip(applied).context("no pods")
    }
}

/// A member: each version `follow_config` offers is applied, and what
/// came of it goes to the Directory stream and to the benchmark.
async fn run_member(
    pod: String,
    mut offered: watch::Receiver<Option<Arc<Offered>>>,
    results: watch::Sender<Option<ConfigResult>>,
    notes: mpsc::UnboundedSender<Applied>,
) {
    let mut member = Member::new();
    while offered.changed().await.is_ok() {
        let Some(o) = offered.borrow_and_update().clone() else {
            continue;
        };
        let seen = Instant::now();
        let outcome = member.apply(&o);
        let applied = Instant::now();
        results.send_replace(Some(o.result(&outcome)));
        let _ = notes.send(Applied {
            pod: pod.clone(),
            version: o.version,
            offered: seen,
            applied,
        });
    }
}

/// One version published and followed to `pods`: from the publish until
/// the Directory recorded the last pod's result, the last pod had it
/// rebuilt, and the last pod had applied it.
struct Reach {
    acked: Duration,
    rebuilt: Duration,
    applied: Duration,
}

async fn reach(
    dir: &Directory,
    fleet: &mut Fleet,
    pods: &[String],
    version: i64,
    since: Instant,
) -> Result<Reach> {
    let acked = dir.all_acked(pods, version).await?;
    let (rebuilt, applied) = fleet.last_applied(pods, version).await?;
    Ok(Reach {
        acked: acked - since,
        rebuilt: rebuilt - since,
        applied: applied - since,
    })
}

/// One version published and followed to every pod of `fleet`, and the
/// CPU this process spent meanwhile.
async fn one_change(dir: &Directory, fleet: &mut Fleet, v: Version) -> Result<(Reach, Duration)> {
    let (pods, number) = (fleet.names.clone(), v.version);
    let cpu_before = cpu()?;
    let at = dir.publish(v)?;
    let reached = reach(dir, fleet, &pods, number, at).await?;
    Ok((reached, cpu()?.saturating_sub(cpu_before)))
}

/// Figure 2: `CHANGES` one-user changes after `config` (version 1), each
/// published once every pod applied the one before.
async fn figure_2(
    dir: &Directory,
    fleet: &mut Fleet,
    mut config: Arc<ClusterConfig>,
) -> Result<i64> {
    let (mut reaches, mut cpu) = (Vec::new(), Duration::ZERO);
    let mut number = 1;
    for round in 1..=CHANGES {
        config = Arc::new(one_user_changed(&config, round));
        number += 1;
        let (reached, spent) = one_change(dir, fleet, version(number, Arc::clone(&config))).await?;
        reaches.push(reached);
        cpu += spent;
    }
    let (acked, p99) = p50_p99(reaches.iter().map(|r| r.acked).collect());
    let (rebuilt, _) = p50_p99(reaches.iter().map(|r| r.rebuilt).collect());
    let (applied, _) = p50_p99(reaches.iter().map(|r| r.applied).collect());
    let pods = fleet.names.len();
    println!(
        "2. a one-user change to all {pods} pods, {CHANGES} successive changes, from the publish (p99 of {CHANGES} is the slowest):"
    );
    println!("   last pod rebuilt it (follow_config offered it): {rebuilt}");
    println!("   last pod applied it (check + swap done):        {applied}");
    println!("   the Directory recorded the last ConfigResult:   {acked}");
    let per_change = cpu / u32::try_from(CHANGES)?;
    println!(
        "   CPU of this process per change: {} (every pod and the Directory), {} ÷ pods",
        ms(per_change),
        ms(per_change / u32::try_from(pods)?)
    );
    println!(
        "   target: p99 < {} to every pod (ConfigResult recorded): {}  {}",
        ms(EVERY_POD_TARGET),
        ms(p99),
        verdict(p99 < EVERY_POD_TARGET)
    );
    Ok(number)
}

/// A pod started now, until the Directory recorded its result of `version`.
async fn new_pod(dir: &Directory, fleet: &mut Fleet, name: &str, version: i64) -> Result<Reach> {
    let started = Instant::now();
    fleet.start(name);
    reach(dir, fleet, &[name.to_string()], version, started).await
}

fn print_reach(what: &str, r: &Reach) {
    println!(
        "   {what}: rebuilt {}, applied {}, ConfigResult recorded {}",
        ms(r.rebuilt),
        ms(r.applied),
        ms(r.acked)
    );
}

/// Figure 3: two pods join on `version`; the first makes the store
/// compress its snapshot (nobody had asked for the whole of it), the
/// second finds it made.
async fn figure_3(dir: &Directory, fleet: &mut Fleet, users: usize, version: i64) -> Result<()> {
    println!("3. the whole version ({users} users) to a new pod, from its start:");
    let first = new_pod(dir, fleet, "demo-signal-new-0", version).await?;
    print_reach("first new pod (snapshot compressed on its request)", &first);
    let second = new_pod(dir, fleet, "demo-signal-new-1", version).await?;
    print_reach("second new pod (snapshot already compressed)", &second);
    println!(
        "   target: < {} to a new pod (ConfigResult recorded, first pod): {}  {}",
        ms(NEW_POD_TARGET),
        ms(first.acked),
        verdict(first.acked < NEW_POD_TARGET)
    );
    Ok(())
}

/// Figures 2 and 3, and before them the first version to every pod at once.
async fn over_grpc(args: &Args, base: Arc<ClusterConfig>) -> Result<()> {
    let dir = start_directory().await?;
    let mut fleet = Fleet::new(dir.url.clone());
    for i in 0..args.pods {
        fleet.start(&format!("demo-signal-{i}"));
    }
    let pods = fleet.names.clone();
    let at = dir.publish(version(1, Arc::clone(&base)))?;
    let first = reach(&dir, &mut fleet, &pods, 1, at).await?;
    println!(
        "   (over gRPC at {}: version 1, whole, to {} pods at once: ConfigResults recorded {} after the publish)",
        dir.url,
        args.pods,
        ms(first.acked)
    );
    let last = figure_2(&dir, &mut fleet, base).await?;
    figure_3(&dir, &mut fleet, args.users, last).await
}

// ---- what this process uses ----

/// CPU time of this process so far, all threads, from /proc/self/stat
/// (utime and stime, in the kernel's fixed 100 ticks per second).
fn cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14, stime 15.
    let after = stat
        .rsplit_once(')')
        .context("no command in /proc/self/stat")?
        .1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |n: usize| -> Result<u64> {
        Ok(fields
            .get(n - 3)
            .context("/proc/self/stat is short")?
            .parse()?)
    };
    Ok(Duration::from_millis((ticks(14)? + ticks(15)?) * 10))
}

/// The machine's load averages, as /proc/loadavg says: the pods share
/// the cores with whatever else runs.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// ---- figure 4: memory ----

/// This process's resident set, in bytes.
fn rss() -> Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// What one member holds for a version: the version as `follow_config`
/// keeps it (its view holds the newest), and the users in its Registrar.
struct Held {
    _offered: Offered,
    _member: Member,
}

/// RSS growth of one more version held: (its `Offered`, its Registrar's
/// map), rebuilt from `snapshot` and applied as a pod does.
fn hold_one(snapshot: &ConfigUpdate, kept: &mut Vec<Held>) -> Result<(i64, i64)> {
    let before = rss()?;
    let offered = Offered::rebuild(None, snapshot.clone()).map_err(anyhow::Error::msg)?;
    let rebuilt = rss()?;
    let mut member = Member::new();
    member.apply(&offered).map_err(anyhow::Error::msg)?;
    let applied = rss()?;
    kept.push(Held {
        _offered: offered,
        _member: member,
    });
    Ok((rebuilt - before, applied - rebuilt))
}

/// What a member holds per user, in bytes.
struct Memory {
    offered: f64,
    map: f64,
}

/// Figure 4, measured first, on the main thread, before anything else
/// runs: versions of `config` held one after another; the first is not
/// counted, since it may reuse what the allocator kept from building the
/// input, and the next [`MEMORY_COPIES`] are, each as a member holds one.
fn member_memory(config: &Arc<ClusterConfig>) -> Result<Memory> {
    let snapshot = ConfigUpdate {
        version: 1,
        hash: hash(config),
        body: Some(config_update::Body::Snapshot(compress(config.as_ref()))),
        base_version: 0,
        effective_unix_ms: unix_ms(),
    };
    let mut kept = Vec::new();
    hold_one(&snapshot, &mut kept)?;
    let (mut offered, mut map) = (0, 0);
    for _ in 0..MEMORY_COPIES {
        let (o, m) = hold_one(&snapshot, &mut kept)?;
        offered += o;
        map += m;
    }
    let per_user = |bytes: i64| bytes as f64 / (MEMORY_COPIES * config.users.len()) as f64;
    Ok(Memory {
        offered: per_user(offered),
        map: per_user(map),
    })
}

impl Memory {
    fn print(&self) {
        println!(
            "4. member memory: {:.0} B per user while it holds a version: after follow_config's rebuild {:.0} B, after check and the swap into the Registrar {:.0} B more",
            self.offered + self.map,
            self.offered,
            self.map
        );
        println!(
            "   (VmRSS of this process before and after each step, {MEMORY_COPIES} versions held after a first one not counted, divided by users; glibc malloc, so the map reuses memory the rebuild freed and only the sum is the member's; a swap holds two versions for a moment)"
        );
    }
}

fn main() -> Result<()> {
    let args = args()?;
    let base = Arc::new(initial_config(args.users));
    let memory = member_memory(&base)?;
    println!(
        "config-distribution: {} users, {} pods; operator ConfigStore + Directory gRPC on loopback, directory-client followers, signal-node check + Registrar",
        args.users, args.pods
    );
    println!(
        "   ({} cores, load average {} at the start)",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average()
    );
    figure_1(&base)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(over_grpc(&args, base))?;
    memory.print();
    Ok(())
}
