//! The daemon's network-policy service: loads the policy directory, keeps the nftables table
//! (`netpolicy::Enforcer`) in step with the pods and the directory, exports metrics, and logs
//! denied connections.
//!
//! - Start: the directory is loaded and the table rebuilt from the live pods before the CRI
//!   socket accepts calls, so a restarted daemon (even after `nft flush ruleset`) enforces
//!   again before anything else happens.
//! - Pods: `pods` calls [`pods::PolicyHook`] in RunPodSandbox (before it returns) and in
//!   Stop/Remove; only set elements change.
//! - Directory: watched with inotify; a change reloads and recompiles atomically. A file with
//!   an invalid document keeps its previous policies (reported with file, document and field);
//!   the other files' changes apply.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use netpolicy::{Enforcer, EnforcerConfig, Loaded, Severity};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::Instrument as _;

use crate::config::PolicyConfig;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    namespace: String,
    policy: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    operation: &'static str,
}

/// Policy metrics; cardinality is bounded by the number of policies, never pods.
#[derive(Debug, Clone)]
pub struct PolicyMetrics {
    packets: Family<PacketLabels, Counter>,
    rules: Gauge,
    elements: Gauge,
    policies: Gauge,
    problems: Gauge,
    compile: Histogram,
    apply: Family<OpLabels, Histogram>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ]
    .into_iter()
}

impl PolicyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            packets: Family::default(),
            rules: Gauge::default(),
            elements: Gauge::default(),
            policies: Gauge::default(),
            problems: Gauge::default(),
            compile: Histogram::new(seconds_buckets()),
            apply: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
        };
        registry.register(
            "policy_packets",
            "Packets of new connections allowed or denied, by the deciding (allow) or isolating (deny) network policy",
            m.packets.clone(),
        );
        registry.register(
            "policy_rules",
            "nftables rules in sluice's policy table",
            m.rules.clone(),
        );
        registry.register(
            "policy_elements",
            "nftables set elements in sluice's policy table",
            m.elements.clone(),
        );
        registry.register(
            "policy_loaded",
            "NetworkPolicies in force",
            m.policies.clone(),
        );
        registry.register(
            "policy_invalid_documents",
            "Manifests in the policy directory rejected at the last load",
            m.problems.clone(),
        );
        registry.register(
            "policy_compile_duration_seconds",
            "Time to compile policies and pods into nftables sets",
            m.compile.clone(),
        );
        registry.register(
            "policy_apply_duration_seconds",
            "Time to apply a policy change to the kernel, by operation (full, pod_add, pod_remove)",
            m.apply.clone(),
        );
        m
    }

    fn record(&self, operation: &'static str, stats: &netpolicy::ApplyStats) {
        self.rules
            .set(i64::try_from(stats.rules).unwrap_or(i64::MAX));
        self.elements
            .set(i64::try_from(stats.elements).unwrap_or(i64::MAX));
        self.compile.observe(stats.compile.as_secs_f64());
        self.apply
            .get_or_create(&OpLabels { operation })
            .observe(stats.apply.as_secs_f64());
    }
}

/// The running policy service.
pub struct PolicyService {
    enforcer: Arc<Enforcer>,
    dir: PathBuf,
    /// Copies of the valid manifests last applied (`<root>/policy/last-good`).
    mirror: PathBuf,
    /// What is in force (after keeping the previous version of invalid files).
    loaded: tokio::sync::Mutex<Loaded>,
    metrics: PolicyMetrics,
    /// Last kernel counter value per (policy, verdict), to turn kernel counters (which restart
    /// when the table is rebuilt or a pod's elements go) into monotonic ones.
    last_counts: Mutex<HashMap<PacketLabels, u64>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    table: String,
}

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService")
            .field("dir", &self.dir)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Reads the directory (a missing directory is an empty one).
fn load(dir: &Path) -> Result<Loaded, String> {
    if !dir.exists() {
        return Ok(Loaded::default());
    }
    netpolicy::load_dir(dir).map_err(|e| pods::error_chain(&e))
}

/// Documents rejected at the last load.
fn invalid_documents(loaded: &Loaded) -> usize {
    loaded
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count()
}

/// File names (not paths: the previous version may come from the mirror) with an invalid
/// document.
fn invalid_files(loaded: &Loaded) -> BTreeSet<std::ffi::OsString> {
    loaded
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .filter_map(|p| p.file.file_name().map(ToOwned::to_owned))
        .collect()
}

/// Mirrors the valid manifest files of `dir` into `mirror`, drops mirrored files that left
/// `dir`, and keeps the mirrored copy of files that are invalid now. Best effort: a failure
/// only weakens what a restart can restore, so it is logged.
fn sync_mirror(dir: &Path, mirror: &Path, loaded: &Loaded) {
    let bad = invalid_files(loaded);
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(mirror)?;
        let mut present = BTreeSet::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().map(ToOwned::to_owned) else {
                continue;
            };
            if netpolicy::Format::of(&path).is_none() || !path.is_file() {
                continue;
            }
            present.insert(name.clone());
            if !bad.contains(&name) {
                let tmp = mirror.join(".tmp");
                std::fs::copy(&path, &tmp)?;
                std::fs::rename(&tmp, mirror.join(&name))?;
            }
        }
        for entry in std::fs::read_dir(mirror)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| !present.contains(n)) {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, mirror = %mirror.display(), "saving the last valid policy manifests");
    }
}

/// `new`, except that files with an invalid document keep what `prev` had from them.
fn keep_previous_for_invalid_files(prev: &Loaded, mut new: Loaded) -> Loaded {
    let bad = invalid_files(&new);
    if bad.is_empty() {
        return new;
    }
    let from_bad = |src: &Option<netpolicy::Source>| {
        src.as_ref()
            .and_then(|s| s.file.file_name())
            .is_some_and(|n| bad.contains(n))
    };
    new.policies.retain(|p| !from_bad(&p.source));
    new.policies.extend(
        prev.policies
            .iter()
            .filter(|p| from_bad(&p.source))
            .cloned(),
    );
    new.namespaces.retain(|n| !from_bad(&n.source));
    new.namespaces.extend(
        prev.namespaces
            .iter()
            .filter(|n| from_bad(&n.source))
            .cloned(),
    );
    new
}

/// The node's own addresses (traffic from them to pods is always allowed).
pub fn node_ips() -> Vec<IpAddr> {
    let mut ips = BTreeSet::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                ips.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                ips.insert(IpAddr::V6(v6.ip()));
            }
        }
    }
    ips.into_iter().collect()
}

/// Pods on one bridge reach each other without routing; their packets pass the `inet`
/// forward hook only while br_netfilter hands bridged traffic to it. Turns that on when it is
/// off, and warns when the kernel lacks br_netfilter (only routed traffic is filtered then).
fn ensure_bridge_netfilter() {
    for family in ["iptables", "ip6tables"] {
        let path = format!("/proc/sys/net/bridge/bridge-nf-call-{family}");
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => match std::fs::write(&path, "1") {
                Ok(()) => tracing::warn!(
                    sysctl = %path,
                    "enabled bridge netfilter so network policy sees pod-to-pod traffic on the same bridge"
                ),
                Err(e) => tracing::error!(
                    sysctl = %path, error = %e,
                    "cannot enable bridge netfilter: traffic between pods on the same bridge bypasses network policy"
                ),
            },
            Err(_) => tracing::error!(
                sysctl = %path,
                "br_netfilter is not available (load the module): traffic between pods on the same bridge bypasses network policy"
            ),
        }
    }
}

impl PolicyService {
    /// Loads the directory and rebuilds the table from `pods` (the live pods), before the
    /// daemon serves.
    pub async fn start(
        cfg: &PolicyConfig,
        state_dir: &Path,
        pods: Vec<(String, netpolicy::Pod)>,
        metrics: PolicyMetrics,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating the policy directory {}", cfg.dir.display()))?;
        ensure_bridge_netfilter();
        // Files that are invalid now keep the version that was last in force, even across a
        // restart: the daemon mirrors every valid file under the state directory.
        let mirror = state_dir.join("policy").join("last-good");
        let prev = load(&mirror).map_err(anyhow::Error::msg)?;
        let new = load(&cfg.dir).map_err(anyhow::Error::msg)?;
        sync_mirror(&cfg.dir, &mirror, &new);
        let loaded = keep_previous_for_invalid_files(&prev, new);
        let enforcer = Arc::new(Enforcer::new(EnforcerConfig {
            table: cfg.table.clone(),
            nft: PathBuf::from("nft"),
            log_denied: cfg.log_denied,
            log_rate_per_sec: cfg.log_rate_per_sec,
        }));
        let n_pods = pods.len();
        let span = apply_span("full");
        let stats = enforcer
            .replace_all(&loaded, pods, node_ips())
            .instrument(span.clone())
            .await
            .context("building the network policy table")?;
        record_span(&span, &stats);
        metrics.record("full", &stats);
        metrics
            .policies
            .set(i64::try_from(loaded.policies.len()).unwrap_or(i64::MAX));
        metrics
            .problems
            .set(i64::try_from(invalid_documents(&loaded)).unwrap_or(i64::MAX));
        tracing::info!(
            dir = %cfg.dir.display(),
            table = %cfg.table,
            policies = loaded.policies.len(),
            pods = n_pods,
            rules = stats.rules,
            elements = stats.elements,
            "network policy enforced"
        );
        Ok(Arc::new(Self {
            enforcer,
            dir: cfg.dir.clone(),
            mirror,
            loaded: tokio::sync::Mutex::new(loaded),
            metrics,
            last_counts: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
            table: cfg.table.clone(),
        }))
    }

    /// Re-reads the directory and applies what changed.
    pub async fn reload(&self) {
        let new = match load(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading the policy directory; keeping the policies in force");
                return;
            }
        };
        let mut loaded = self.loaded.lock().await;
        sync_mirror(&self.dir, &self.mirror, &new);
        self.metrics
            .problems
            .set(i64::try_from(invalid_documents(&new)).unwrap_or(i64::MAX));
        let merged = keep_previous_for_invalid_files(&loaded, new);
        if merged.policies == loaded.policies && merged.namespaces == loaded.namespaces {
            return;
        }
        let span = apply_span("full");
        let result = self
            .enforcer
            .set_policies(&merged)
            .instrument(span.clone())
            .await;
        match result {
            Ok(stats) => {
                record_span(&span, &stats);
                self.metrics.record("full", &stats);
                self.metrics
                    .policies
                    .set(i64::try_from(merged.policies.len()).unwrap_or(i64::MAX));
                tracing::info!(
                    policies = merged.policies.len(),
                    rules = stats.rules,
                    elements = stats.elements,
                    compile_us = stats.compile.as_micros() as u64,
                    apply_us = stats.apply.as_micros() as u64,
                    "network policies reloaded"
                );
                *loaded = merged;
            }
            Err(e) => tracing::error!(
                error = %pods::error_chain(&e),
                "applying changed network policies failed; the previous rules stay in force"
            ),
        }
    }

    /// Watches the directory; changes are applied after a short quiet period (editors write
    /// files in several steps).
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
                Ok(_) => {
                    let _ = tx.send(());
                }
                Err(e) => tracing::warn!(error = %e, "watching the policy directory"),
            })
            .context("creating the policy directory watcher")?;
        notify::Watcher::watch(&mut watcher, &self.dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", self.dir.display()))?;
        *self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(watcher);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Debounce: collect the burst of events of one save.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                let Some(svc) = me.upgrade() else { return };
                svc.reload().await;
            }
        });
        Ok(())
    }

    /// Reads the kernel's counters into the metrics (monotonic across table rebuilds).
    pub async fn refresh_counters(&self) {
        let counters = match self.enforcer.counters().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "reading policy counters");
                return;
            }
        };
        let mut sums: HashMap<PacketLabels, u64> = HashMap::new();
        for c in counters {
            let labels = PacketLabels {
                namespace: c.policy.namespace.clone(),
                policy: c.policy.name.clone(),
                verdict: match c.verdict {
                    netpolicy::CounterVerdict::Allow => "allow",
                    netpolicy::CounterVerdict::Deny => "deny",
                }
                .to_string(),
            };
            *sums.entry(labels).or_default() += c.packets;
        }
        let mut last = self
            .last_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (labels, now) in sums {
            let prev = last.insert(labels.clone(), now).unwrap_or(0);
            // A smaller value means the kernel counter restarted (table rebuilt, elements
            // replaced): everything it shows now is new.
            let delta = if now >= prev { now - prev } else { now };
            if delta > 0 {
                self.metrics.packets.get_or_create(&labels).inc_by(delta);
            }
        }
    }

    /// Refreshes the counters every `every` while the service lives.
    pub fn spawn_counter_refresh(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(svc) = me.upgrade() else { return };
                svc.refresh_counters().await;
            }
        });
    }

    /// Logs denied connections with the pods they concern, from the kernel log lines the
    /// table's deny rule writes (rate-limited there).
    pub fn spawn_denied_logger(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let prefix = netpolicy::nft::deny_log_prefix(&self.table);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
        std::thread::Builder::new()
            .name("policy-kmsg".into())
            .spawn(move || read_kmsg(&prefix, &tx))
            .map_err(|e| tracing::warn!(error = %e, "starting the denied-connection logger"))
            .ok();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let Some(svc) = me.upgrade() else { return };
                let world = svc.enforcer.world().await;
                let field = |key: &str| {
                    line.split_whitespace()
                        .find_map(|f| f.strip_prefix(key))
                        .unwrap_or("")
                        .to_string()
                };
                let (src, dst) = (field("SRC="), field("DST="));
                let name_of = |ip: &str| {
                    ip.parse::<IpAddr>()
                        .ok()
                        .and_then(|ip| world.pods.iter().find(|p| p.ips.contains(&ip)))
                        .map(|p| p.key())
                        .unwrap_or_else(|| "-".to_string())
                };
                tracing::warn!(
                    src = %src,
                    src_pod = %name_of(&src),
                    dst = %dst,
                    dst_pod = %name_of(&dst),
                    proto = %field("PROTO="),
                    dport = %field("DPT="),
                    "network policy denied a connection"
                );
            }
        });
    }
}

/// Follows /dev/kmsg from its end and forwards lines that carry `prefix`.
fn read_kmsg(prefix: &str, tx: &tokio::sync::mpsc::Sender<String>) {
    use std::io::{BufRead, Seek, SeekFrom};
    let file = match std::fs::File::open("/dev/kmsg") {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /dev/kmsg: denied connections are not logged");
            return;
        }
    };
    let mut file = file;
    let _ = file.seek(SeekFrom::End(0));
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.contains(prefix) && tx.blocking_send(line.trim_end().to_string()).is_err() {
                    return;
                }
            }
            // EPIPE: messages were overwritten before we read them; keep going.
            Err(e) if e.raw_os_error() == Some(libc_epipe()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading /dev/kmsg stopped");
                return;
            }
        }
    }
}

fn libc_epipe() -> i32 {
    nix::errno::Errno::EPIPE as i32
}

/// The span of one policy change; its counts are recorded when it is applied.
fn apply_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "policy_apply",
        operation,
        rules = tracing::field::Empty,
        elements = tracing::field::Empty,
        compile_us = tracing::field::Empty,
        apply_us = tracing::field::Empty,
    )
}

fn record_span(span: &tracing::Span, stats: &netpolicy::ApplyStats) {
    span.record("rules", stats.rules);
    span.record("elements", stats.elements);
    span.record("compile_us", stats.compile.as_micros() as u64);
    span.record("apply_us", stats.apply.as_micros() as u64);
}

impl pods::PolicyHook for PolicyService {
    fn pod_up<'a>(
        &'a self,
        id: &'a str,
        pod: netpolicy::Pod,
    ) -> pods::policy::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let span = apply_span("pod_add");
            let stats = self
                .enforcer
                .pod_added(id, pod)
                .instrument(span.clone())
                .await
                .map_err(|e| pods::error_chain(&e))?;
            record_span(&span, &stats);
            self.metrics.record("pod_add", &stats);
            Ok(())
        })
    }

    fn pod_down<'a>(&'a self, id: &'a str) -> pods::policy::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let span = apply_span("pod_remove");
            let stats = self
                .enforcer
                .pod_removed(id)
                .instrument(span.clone())
                .await
                .map_err(|e| pods::error_chain(&e))?;
            record_span(&span, &stats);
            self.metrics.record("pod_remove", &stats);
            Ok(())
        })
    }
}
