//! Enforcement: keeps the compiled world ("policy cache") and the element sets that are in the
//! kernel, and drives `nft` (see [`crate::nft`] for the ruleset).
//!
//! - A policy change (or a daemon start) recompiles everything and replaces the whole table in
//!   one `nft -f -` transaction: the old rules stay in force until the new ones commit, and if
//!   `nft` refuses, the previous in-memory state stays too.
//! - A pod starting or stopping recomputes only the groups (per pod address elements) it can
//!   change — its own, and those of the pods selected by policies whose peers match it — and
//!   sends the exact element diff in one transaction. If that fails (say the table was deleted
//!   behind our back) the whole table is rebuilt from the new state; only if that fails too is
//!   an error returned (and the next change rebuilds again).
//! - Counters: per-element counters are summed per policy (see [`crate::nft`] for how an
//!   element is attributed: the first policy by namespace/name allowing it; an isolated pod's
//!   denials go to the first policy isolating it in that direction). Totals are kept monotonic across table replacements and
//!   element deletions: before elements go away the counters are read, and any drop seen
//!   later is carried over (packets counted between that read and the change are lost).
//!
//! All calls are serialised by one async mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use runcmd::CmdError;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::eval::{
    Compiled, CompiledPeer, CompiledPolicy, World, peer_matches_pod, policy_selects,
};
use crate::model::{Direction, NetworkPolicy, Peer, Pod, PolicyRef};
use crate::netlink;
use crate::nft::{self, ElementKey, Elements, RulesetOptions, SetId, SetKind};
use crate::parse::Loaded;

/// How long one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(30);

/// Enforcer settings.
#[derive(Debug, Clone)]
pub struct EnforcerConfig {
    /// The `table inet` sluice owns (default [`nft::DEFAULT_TABLE`]).
    pub table: String,
    /// The nft binary; a relative name is resolved via `PATH`.
    pub nft: PathBuf,
    /// Log denied new connections (kernel log, prefix [`nft::deny_log_prefix`]).
    pub log_denied: bool,
    /// At most this many log lines per second (0 is taken as 1).
    pub log_rate_per_sec: u32,
}

impl Default for EnforcerConfig {
    fn default() -> Self {
        Self {
            table: nft::DEFAULT_TABLE.to_string(),
            nft: PathBuf::from("nft"),
            log_denied: false,
            log_rate_per_sec: 10,
        }
    }
}

/// Why enforcement could not be applied or read.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("cannot run {nft}: {source}")]
    Spawn {
        nft: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o with {nft}: {source}")]
    Io {
        nft: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{nft} did not finish within {timeout:?}")]
    Timeout { nft: PathBuf, timeout: Duration },
    /// `nft -f -` refused a transaction: nothing of it was applied.
    #[error("nft transaction failed ({status}), the previous rules are still in force: {stderr}")]
    Transaction {
        status: String,
        stderr: String,
        /// The script that was refused.
        script: String,
    },
    #[error("nft {args} failed ({status}): {stderr}")]
    Command {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("cannot understand nft -j output: {0}")]
    Parse(String),
    #[error("incremental update failed ({incremental}) and the full rebuild failed too: {rebuild}")]
    Rebuild {
        incremental: Box<EnforceError>,
        rebuild: Box<EnforceError>,
    },
}

/// Size and cost of what was compiled/applied.
#[derive(Debug, Clone, Default)]
pub struct ApplyStats {
    /// Compiled policy rules (ingress and egress rules of the directions policies affect).
    pub rules: usize,
    /// Set elements: in the kernel for [`Enforcer::stats`] and full replaces, sent (added +
    /// deleted) for incremental pod updates.
    pub elements: usize,
    pub compile: Duration,
    pub apply: Duration,
}

/// Which counter of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CounterVerdict {
    Allow,
    Deny,
}

impl CounterVerdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            CounterVerdict::Allow => "allow",
            CounterVerdict::Deny => "deny",
        }
    }
}

/// Packets (new connections' packets: established traffic is not counted) allowed or denied
/// attributed to one policy, monotonic for the life of the [`Enforcer`].
#[derive(Debug, Clone)]
pub struct PolicyCounter {
    pub policy: PolicyRef,
    pub verdict: CounterVerdict,
    pub packets: u64,
}

/// The nftables enforcer of one node. See the module documentation.
#[derive(Debug)]
pub struct Enforcer {
    cfg: EnforcerConfig,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Default)]
struct State {
    /// Policies sorted by namespace/name (index-aligned with `compiled.policies`); pods
    /// index-aligned with `ids`.
    world: World,
    ids: Vec<String>,
    compiled: Compiled,
    /// Pod address → policies selecting it.
    selecting: BTreeMap<IpAddr, BTreeSet<usize>>,
    /// Pod address → its elements, as they are in the kernel.
    groups: BTreeMap<IpAddr, Elements>,
    /// `false` when the kernel may differ from `groups` (a failed change): the next change
    /// replaces the whole table.
    in_sync: bool,
    book: CounterBook,
    stats: ApplyStats,
}

/// Keeps per-policy totals monotonic across resets of the kernel counters.
#[derive(Debug, Clone, Default)]
struct CounterBook {
    last: BTreeMap<(PolicyRef, CounterVerdict), u64>,
    carried: BTreeMap<(PolicyRef, CounterVerdict), u64>,
}

impl CounterBook {
    /// Records a kernel reading; a value lower than the previous one means elements went away
    /// (or the table was replaced): the difference is carried.
    fn observe(&mut self, live: &BTreeMap<(PolicyRef, CounterVerdict), u64>) {
        for (key, last) in &self.last {
            let now = live.get(key).copied().unwrap_or(0);
            if now < *last {
                *self.carried.entry(key.clone()).or_default() += last - now;
            }
        }
        self.last = live.clone();
    }

    fn total(&self, key: &(PolicyRef, CounterVerdict)) -> u64 {
        self.carried.get(key).copied().unwrap_or(0) + self.last.get(key).copied().unwrap_or(0)
    }
}

impl State {
    /// A fully compiled state for `world` (policies get sorted here).
    fn compile(mut world: World, ids: Vec<String>) -> Self {
        world.policies.sort_by_key(NetworkPolicy::reference);
        let compiled = Compiled::new(&world);
        let selecting = nft::selecting_index(&compiled);
        let groups = selecting
            .iter()
            .map(|(ip, policies)| (*ip, nft::pod_elements(&compiled, policies, *ip)))
            .collect();
        Self {
            world,
            ids,
            compiled,
            selecting,
            groups,
            in_sync: false,
            book: CounterBook::default(),
            stats: ApplyStats::default(),
        }
    }

    fn element_count(&self) -> usize {
        self.groups.values().map(BTreeMap::len).sum()
    }

    fn all_elements(&self) -> Elements {
        self.groups
            .values()
            .flat_map(|g| g.iter().map(|(e, o)| (e.clone(), *o)))
            .collect()
    }

    /// Policies a pod touches: those selecting it and those with a peer designating it.
    fn touched_by(&self, pod: &Pod) -> Vec<usize> {
        if pod.host_network {
            return Vec::new();
        }
        let namespace_labels = self.world.namespace_labels(&pod.namespace);
        self.world
            .policies
            .iter()
            .enumerate()
            .filter(|(_, policy)| {
                policy_selects(policy, pod)
                    || [Direction::Ingress, Direction::Egress]
                        .into_iter()
                        .filter(|d| policy.affects(*d))
                        .flat_map(|d| policy.rules(d))
                        .flat_map(|rule| rule.peers.iter().flatten())
                        .any(|peer| {
                            peer_matches_pod(&policy.namespace, peer, pod, &namespace_labels)
                        })
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Adds (or removes) `pod` in the compiled form of the policies it touches; returns the
    /// pod addresses whose groups may have changed.
    fn update_compiled(&mut self, pod: &Pod, add: bool) -> BTreeSet<IpAddr> {
        let mut changed: BTreeSet<IpAddr> = pod.ips.iter().copied().collect();
        let namespace_labels = self.world.namespace_labels(&pod.namespace);
        let key = pod.key();
        for index in self.touched_by(pod) {
            let policy = &self.world.policies[index];
            let selects = policy_selects(policy, pod);
            // Another live pod with the same namespace/name (a replaced sandbox) keeps the
            // key selected.
            let key_still_selected = !add
                && self
                    .world
                    .pods
                    .iter()
                    .any(|p| p.key() == key && policy_selects(policy, p));
            let compiled: &mut CompiledPolicy = &mut self.compiled.policies[index];
            if selects {
                for ip in &pod.ips {
                    let entry = self.selecting.entry(*ip).or_default();
                    if add {
                        compiled.selected_ips.insert(*ip);
                        entry.insert(index);
                    } else {
                        compiled.selected_ips.remove(ip);
                        entry.remove(&index);
                    }
                }
                if add {
                    compiled.selected.insert(key.clone());
                } else if !key_still_selected {
                    compiled.selected.remove(&key);
                }
            }
            let mut peer_changed = false;
            for direction in [Direction::Ingress, Direction::Egress] {
                let rules = match direction {
                    Direction::Ingress => compiled.ingress.as_mut(),
                    Direction::Egress => compiled.egress.as_mut(),
                };
                let Some(rules) = rules else { continue };
                for (rule, source) in rules.iter_mut().zip(policy.rules(direction)) {
                    let (Some(peers), Some(sources)) = (rule.peers.as_mut(), &source.peers) else {
                        continue;
                    };
                    for (peer, source) in peers.iter_mut().zip(sources) {
                        if let (CompiledPeer::Pods(ips), Peer::Pods { .. }) = (peer, source)
                            && peer_matches_pod(&policy.namespace, source, pod, &namespace_labels)
                        {
                            peer_changed = true;
                            for ip in &pod.ips {
                                if add {
                                    ips.insert(*ip);
                                } else {
                                    ips.remove(ip);
                                }
                            }
                        }
                    }
                }
            }
            if peer_changed {
                changed.extend(compiled.selected_ips.iter().copied());
            }
        }
        self.selecting.retain(|_, s| !s.is_empty());
        changed
    }

    /// Recomputes the groups of `ips`; returns the kernel diff.
    fn regroup(&mut self, ips: &BTreeSet<IpAddr>) -> nft::Diff {
        let mut total = nft::Diff::default();
        let empty = BTreeSet::new();
        for ip in ips {
            let selecting = self.selecting.get(ip).unwrap_or(&empty);
            let new = nft::pod_elements(&self.compiled, selecting, *ip);
            let old = self.groups.remove(ip).unwrap_or_default();
            let d = nft::diff(&old, &new);
            total.delete.extend(d.delete);
            total.add.extend(d.add);
            if !new.is_empty() {
                self.groups.insert(*ip, new);
            }
        }
        total
    }

    /// Element key (per set) → (policy, verdict), to attribute kernel counters.
    fn attribution(&self) -> HashMap<(String, ElementKey), (usize, CounterVerdict)> {
        let mut out = HashMap::new();
        for group in self.groups.values() {
            for (element, owner) in group {
                let set = element.set();
                let verdict = match set.kind {
                    SetKind::Isolated => CounterVerdict::Deny,
                    SetKind::All | SetKind::Ports => CounterVerdict::Allow,
                };
                out.insert((set.name(), element.key()), (*owner, verdict));
            }
        }
        out
    }
}

impl Enforcer {
    pub fn new(cfg: EnforcerConfig) -> Self {
        Self {
            cfg,
            state: Mutex::new(State::default()),
        }
    }

    pub fn config(&self) -> &EnforcerConfig {
        &self.cfg
    }

    fn options(&self) -> RulesetOptions {
        RulesetOptions {
            table: self.cfg.table.clone(),
            log_rate_per_sec: self.cfg.log_denied.then_some(self.cfg.log_rate_per_sec),
        }
    }

    /// Replaces policies + namespaces (from `loaded`) and pods, recompiles, and atomically
    /// replaces the whole table (whether or not it exists). Used at daemon start and when
    /// everything must be rebuilt. On failure the previous state stays.
    #[tracing::instrument(skip_all, fields(table = %self.cfg.table, pods = pods.len()))]
    pub async fn replace_all(
        &self,
        loaded: &Loaded,
        pods: Vec<(String, Pod)>,
        node_ips: Vec<IpAddr>,
    ) -> Result<ApplyStats, EnforceError> {
        let mut state = self.state.lock().await;
        let (ids, pods): (Vec<String>, Vec<Pod>) = pods.into_iter().unzip();
        let world = World::new(loaded, pods, node_ips);
        self.install(&mut state, world, ids).await
    }

    /// New policies (and namespaces) only; the pods stay. Recompile + atomic replace. If nft
    /// fails, the previous rules and the previous in-memory state stay.
    #[tracing::instrument(skip_all, fields(table = %self.cfg.table, policies = loaded.policies.len()))]
    pub async fn set_policies(&self, loaded: &Loaded) -> Result<ApplyStats, EnforceError> {
        let mut state = self.state.lock().await;
        let world = World::new(
            loaded,
            state.world.pods.clone(),
            state.world.node_ips.clone(),
        );
        let ids = state.ids.clone();
        self.install(&mut state, world, ids).await
    }

    /// Compiles `world` and replaces the table; commits to `state` only on success.
    async fn install(
        &self,
        state: &mut State,
        world: World,
        ids: Vec<String>,
    ) -> Result<ApplyStats, EnforceError> {
        let started = Instant::now();
        let mut next = State::compile(world, ids);
        let compile = started.elapsed();
        let stats = self.apply_full(state, &mut next, compile).await?;
        *state = next;
        Ok(stats)
    }

    /// Writes `next` (compiled) to the kernel as a whole new table, carrying the counters of
    /// `current` over.
    async fn apply_full(
        &self,
        current: &mut State,
        next: &mut State,
        compile: Duration,
    ) -> Result<ApplyStats, EnforceError> {
        // The old elements' counters go away with the table: read them first.
        if current.in_sync && current.element_count() > 0 {
            let _ = self.read_counters(current).await;
        }
        let elements = next.all_elements();
        let script = nft::ruleset(&self.options(), &elements);
        let started = Instant::now();
        self.run_script(script).await?;
        let stats = ApplyStats {
            rules: nft::rule_count(&next.compiled),
            elements: elements.len(),
            compile,
            apply: started.elapsed(),
        };
        tracing::info!(
            rules = stats.rules,
            elements = stats.elements,
            compile_us = compile.as_micros() as u64,
            apply_us = stats.apply.as_micros() as u64,
            "network policy table replaced"
        );
        next.book = std::mem::take(&mut current.book);
        // Everything the old table counted is now history.
        let zero = BTreeMap::new();
        next.book.observe(&zero);
        next.in_sync = true;
        next.stats = stats.clone();
        Ok(stats)
    }

    /// A pod came up: adds its elements (and those it changes for other pods) in one
    /// transaction. Idempotent for the same id and pod; a changed pod for a known id replaces
    /// the old one.
    #[tracing::instrument(skip_all, fields(table = %self.cfg.table, pod_id = %id))]
    pub async fn pod_added(&self, id: &str, pod: Pod) -> Result<ApplyStats, EnforceError> {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        let mut changed = BTreeSet::new();
        if let Some(i) = state.ids.iter().position(|x| x == id) {
            if state.world.pods[i] == pod && state.in_sync {
                return Ok(ApplyStats {
                    rules: state.stats.rules,
                    ..ApplyStats::default()
                });
            }
            state.ids.remove(i);
            let old = state.world.pods.remove(i);
            changed.extend(state.update_compiled(&old, false));
        }
        state.ids.push(id.to_string());
        state.world.pods.push(pod.clone());
        changed.extend(state.update_compiled(&pod, true));
        let diff = state.regroup(&changed);
        let compile = started.elapsed();
        self.apply_diff(&mut state, diff, compile).await
    }

    /// A pod went away: deletes only its elements (and updates other pods' groups where it
    /// was a peer). Unknown id → Ok.
    #[tracing::instrument(skip_all, fields(table = %self.cfg.table, pod_id = %id))]
    pub async fn pod_removed(&self, id: &str) -> Result<ApplyStats, EnforceError> {
        let mut state = self.state.lock().await;
        let Some(i) = state.ids.iter().position(|x| x == id) else {
            return Ok(ApplyStats::default());
        };
        let started = Instant::now();
        state.ids.remove(i);
        let pod = state.world.pods.remove(i);
        let changed = state.update_compiled(&pod, false);
        let diff = state.regroup(&changed);
        let compile = started.elapsed();
        if !diff.delete.is_empty() && state.in_sync {
            // Deleted elements take their counters with them.
            let _ = self.read_counters(&mut state).await;
        }
        self.apply_diff(&mut state, diff, compile).await
    }

    /// Sends an element diff; on failure rebuilds the whole table from the (already
    /// updated) state.
    async fn apply_diff(
        &self,
        state: &mut State,
        diff: nft::Diff,
        compile: Duration,
    ) -> Result<ApplyStats, EnforceError> {
        let started = Instant::now();
        let sent = diff.len();
        let incremental = if !state.in_sync {
            None
        } else if diff.is_empty() {
            Some(Ok(()))
        } else {
            // Straight to the kernel over netlink (no nft process); on any failure the
            // kernel is unchanged and `nft -f` gets the same transaction, reporting errors
            // in its words.
            let table = self.cfg.table.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let result = netlink::apply_diff(&table, &diff);
                (diff, result)
            })
            .await;
            match outcome {
                Ok((_, Ok(()))) => Some(Ok(())),
                Ok((diff, Err(e))) => {
                    match e {
                        netlink::NetlinkError::Kernel { .. } => {
                            tracing::debug!(error = %e, "netlink element update refused, retrying with nft");
                        }
                        _ => {
                            tracing::warn!(error = %e, "netlink element update failed, retrying with nft");
                        }
                    }
                    Some(
                        self.run_script(nft::diff_script(&self.cfg.table, &diff))
                            .await,
                    )
                }
                Err(e) => {
                    // The diff went down with the task; the rebuild below sends everything.
                    tracing::warn!(error = %e, "netlink element update task failed");
                    None
                }
            }
        };
        match incremental {
            Some(Ok(())) => {
                let stats = ApplyStats {
                    rules: state.stats.rules,
                    elements: sent,
                    compile,
                    apply: started.elapsed(),
                };
                state.stats.elements = state.element_count();
                tracing::debug!(
                    elements = sent,
                    apply_us = stats.apply.as_micros() as u64,
                    "network policy elements updated"
                );
                Ok(stats)
            }
            other => {
                let incremental = match other {
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "incremental policy update failed, rebuilding the table");
                        Some(e)
                    }
                    _ => None,
                };
                let mut next = state.clone();
                next.in_sync = false;
                match self.apply_full(state, &mut next, compile).await {
                    Ok(stats) => {
                        *state = next;
                        Ok(stats)
                    }
                    Err(rebuild) => {
                        // Keep the new world; the kernel has whatever it had.
                        state.in_sync = false;
                        Err(match incremental {
                            Some(e) => EnforceError::Rebuild {
                                incremental: Box::new(e),
                                rebuild: Box::new(rebuild),
                            },
                            None => rebuild,
                        })
                    }
                }
            }
        }
    }

    /// Per-policy allowed and denied packet counts (both verdicts for every loaded policy),
    /// read from the kernel and kept monotonic.
    pub async fn counters(&self) -> Result<Vec<PolicyCounter>, EnforceError> {
        let mut state = self.state.lock().await;
        self.read_counters(&mut state).await?;
        let mut out = Vec::new();
        for policy in &state.compiled.policies {
            for verdict in [CounterVerdict::Allow, CounterVerdict::Deny] {
                let key = (policy.policy.clone(), verdict);
                out.push(PolicyCounter {
                    packets: state.book.total(&key),
                    policy: key.0,
                    verdict,
                });
            }
        }
        Ok(out)
    }

    /// Reads the per-element counters (over netlink; with `nft -j list table` if that
    /// fails) and records the per-policy sums in the book.
    async fn read_counters(&self, state: &mut State) -> Result<(), EnforceError> {
        let table = self.cfg.table.clone();
        let read = tokio::task::spawn_blocking(move || netlink::read_counters(&table)).await;
        let counters = match read {
            Ok(Ok(counters)) => counters,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "netlink counter read failed, reading with nft -j");
                self.nft_counters().await?
            }
            Err(e) => {
                tracing::debug!(error = %e, "netlink counter read task failed, reading with nft -j");
                self.nft_counters().await?
            }
        };
        let attribution = state.attribution();
        let mut live: BTreeMap<(PolicyRef, CounterVerdict), u64> = BTreeMap::new();
        for (set, key, packets) in counters {
            if let Some((owner, verdict)) = attribution.get(&(set, key))
                && let Some(policy) = state.compiled.policies.get(*owner)
            {
                *live.entry((policy.policy.clone(), *verdict)).or_default() += packets;
            }
        }
        state.book.observe(&live);
        Ok(())
    }

    /// The per-element counters as `nft -j list table` shows them.
    async fn nft_counters(&self) -> Result<Vec<netlink::ElementCounter>, EnforceError> {
        let text = self
            .run(&["-j", "list", "table", "inet", &self.cfg.table], None)
            .await?;
        parse_counters(&text)
    }

    /// The current world: policies (sorted by namespace/name), namespaces, pods, node IPs.
    pub async fn world(&self) -> World {
        self.state.lock().await.world.clone()
    }

    /// The compiled form of the current world (what is in the kernel).
    pub async fn compiled(&self) -> Compiled {
        self.state.lock().await.compiled.clone()
    }

    /// Size of what is loaded now (`compile`/`apply` of the last full replace).
    pub async fn stats(&self) -> ApplyStats {
        let state = self.state.lock().await;
        ApplyStats {
            elements: state.element_count(),
            ..state.stats.clone()
        }
    }

    /// Deletes the table (it is fine if it does not exist). Not for daemon shutdown: rules
    /// must stay in force while the daemon is down. The next change rebuilds the table.
    pub async fn remove_table(&self) -> Result<(), EnforceError> {
        let mut state = self.state.lock().await;
        self.run_script(nft::delete_script(&self.cfg.table)).await?;
        state.in_sync = false;
        Ok(())
    }

    async fn run_script(&self, script: String) -> Result<(), EnforceError> {
        match self.run_raw(&["-f", "-"], Some(&script)).await? {
            (status, _, _) if status.success() => Ok(()),
            (status, _, stderr) => Err(EnforceError::Transaction {
                status: status.to_string(),
                stderr,
                script,
            }),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, EnforceError> {
        match self.run_raw(args, stdin).await? {
            (status, stdout, _) if status.success() => Ok(stdout),
            (status, _, stderr) => Err(EnforceError::Command {
                args: args.join(" "),
                status: status.to_string(),
                stderr,
            }),
        }
    }

    /// Runs nft with a bounded wait (see [`runcmd::run_output`]): stdout, and stderr without
    /// trailing whitespace, whatever the exit status.
    async fn run_raw(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<(std::process::ExitStatus, String, String), EnforceError> {
        let nft = &self.cfg.nft;
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let out = runcmd::run_output(nft, &argv, stdin.map(str::as_bytes), NFT_TIMEOUT)
            .await
            .map_err(|e| match e {
                CmdError::Spawn { source, .. } => EnforceError::Spawn {
                    nft: nft.clone(),
                    source,
                },
                CmdError::Io { source, .. } => EnforceError::Io {
                    nft: nft.clone(),
                    source,
                },
                CmdError::Timeout { .. } => EnforceError::Timeout {
                    nft: nft.clone(),
                    timeout: NFT_TIMEOUT,
                },
                // `run_output` never judges the exit status.
                e @ CmdError::Failed { .. } => EnforceError::Io {
                    nft: nft.clone(),
                    source: std::io::Error::other(e.to_string()),
                },
            })?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
        ))
    }
}

/// `(set name, element key, packets)` of every counted element of our sets in the output of
/// `nft -j list table` (or `list set`); what [`netlink::read_counters`] reads directly.
pub fn parse_counters(text: &str) -> Result<Vec<netlink::ElementCounter>, EnforceError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| EnforceError::Parse(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| EnforceError::Parse("no \"nftables\" array".into()))?;
    let known: BTreeSet<String> = SetId::all().map(|s| s.name()).collect();
    let mut out = Vec::new();
    for item in items {
        let Some(set) = item.get("set") else { continue };
        let Some(name) = set.get("name").and_then(Value::as_str) else {
            continue;
        };
        if !known.contains(name) {
            continue;
        }
        for elem in set
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // {"elem": {"val": ..., "counter": {"packets": N, "bytes": M}}}
            let Some(inner) = elem.get("elem") else {
                continue;
            };
            let Some(packets) = inner
                .get("counter")
                .and_then(|c| c.get("packets"))
                .and_then(Value::as_u64)
            else {
                continue;
            };
            let Some(val) = inner.get("val") else {
                continue;
            };
            let parts: Vec<&Value> = match val.get("concat").and_then(Value::as_array) {
                Some(parts) => parts.iter().collect(),
                None => vec![val],
            };
            let key: Option<ElementKey> = parts.into_iter().map(json_part).collect();
            let key = key
                .ok_or_else(|| EnforceError::Parse(format!("element value {val} of set {name}")))?;
            out.push((name.to_string(), key, packets));
        }
    }
    Ok(out)
}

/// One concatenated field as an integer range.
fn json_part(v: &Value) -> Option<(u128, u128)> {
    if let Some(n) = v.as_u64() {
        return Some((u128::from(n), u128::from(n)));
    }
    if let Some(s) = v.as_str() {
        let n = json_scalar(s)?;
        return Some((n, n));
    }
    if let Some([a, b]) = v.get("range").and_then(Value::as_array).map(Vec::as_slice) {
        return Some((json_part(a)?.0, json_part(b)?.1));
    }
    if let Some(prefix) = v.get("prefix") {
        let addr: IpAddr = prefix.get("addr")?.as_str()?.parse().ok()?;
        let len = u8::try_from(prefix.get("len")?.as_u64()?).ok()?;
        let range = nft::AddrRange::from_cidr(&crate::model::Cidr::new(addr, len)?);
        return Some((range.start, range.end));
    }
    None
}

fn json_scalar(s: &str) -> Option<u128> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        let r = nft::AddrRange::single(ip);
        return Some(r.start);
    }
    match s {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nft_json_counters() {
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "t", "handle": 1}},
          {"set": {"family": "inet", "name": "in_ports4", "table": "t",
            "type": ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"],
            "elem": [{"elem": {"val": {"concat": ["10.0.0.1", {"range": ["10.0.0.2", "10.0.0.9"]}, "tcp", 80]},
                               "counter": {"packets": 3, "bytes": 180}}},
                     {"elem": {"val": {"concat": ["10.0.0.1", {"prefix": {"addr": "10.0.0.0", "len": 8}}, "udp", {"range": [53, 54]}]},
                               "counter": {"packets": 1, "bytes": 60}}}]}},
          {"set": {"family": "inet", "name": "in_iso4", "table": "t", "type": "ipv4_addr",
            "elem": [{"elem": {"val": "10.0.0.1", "counter": {"packets": 7, "bytes": 1}}}]}},
          {"set": {"family": "inet", "name": "other", "table": "t", "type": "ipv4_addr",
            "elem": [{"elem": {"val": "10.0.0.1", "counter": {"packets": 7, "bytes": 1}}}]}}]}"#;
        let got = parse_counters(text).unwrap();
        let ip = |s: &str| u128::from(u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()));
        assert_eq!(
            got,
            vec![
                (
                    "in_ports4".to_string(),
                    vec![
                        (ip("10.0.0.1"), ip("10.0.0.1")),
                        (ip("10.0.0.2"), ip("10.0.0.9")),
                        (6, 6),
                        (80, 80)
                    ],
                    3
                ),
                (
                    "in_ports4".to_string(),
                    vec![
                        (ip("10.0.0.1"), ip("10.0.0.1")),
                        (ip("10.0.0.0"), ip("10.255.255.255")),
                        (17, 17),
                        (53, 54)
                    ],
                    1
                ),
                (
                    "in_iso4".to_string(),
                    vec![(ip("10.0.0.1"), ip("10.0.0.1"))],
                    7
                ),
            ]
        );
    }

    fn pod(name: &str, app: &str, ip: &str) -> Pod {
        Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            ips: vec![ip.parse().unwrap()],
            host_network: false,
        }
    }

    fn loaded() -> Loaded {
        let mut loaded = Loaded::default();
        let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}, {ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.128/25]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {}}]
    ports: [{port: 9000, endPort: 9100}]
"#;
        crate::parse::load_str(
            &mut loaded,
            std::path::Path::new("p.yaml"),
            crate::parse::Format::Yaml,
            yaml,
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.problems);
        loaded
    }

    /// Adding and removing pods one by one gives exactly the elements of a full compile.
    #[test]
    fn incremental_updates_equal_a_full_compile() {
        let pods = [
            ("1".to_string(), pod("db", "db", "10.0.0.3")),
            ("2".to_string(), pod("web", "web", "10.0.0.2")),
            ("3".to_string(), pod("web2", "web", "10.0.0.4")),
            ("4".to_string(), pod("other", "other", "10.0.0.5")),
            ("5".to_string(), pod("db2", "db", "10.0.0.200")),
        ];
        let full = |pods: &[(String, Pod)]| {
            let (ids, pods): (Vec<String>, Vec<Pod>) = pods.iter().cloned().unzip();
            State::compile(World::new(&loaded(), pods, vec![]), ids)
        };
        let mut state = full(&[]);
        for n in 0..pods.len() {
            let (id, p) = &pods[n];
            state.ids.push(id.clone());
            state.world.pods.push(p.clone());
            let changed = state.update_compiled(p, true);
            state.regroup(&changed);
            let want = full(&pods[..=n]);
            assert_eq!(
                state.all_elements(),
                want.all_elements(),
                "after adding {id}"
            );
            assert_eq!(state.selecting, want.selecting);
        }
        for n in (0..pods.len()).rev().step_by(2) {
            let i = state.ids.iter().position(|x| *x == pods[n].0).unwrap();
            state.ids.remove(i);
            let p = state.world.pods.remove(i);
            let changed = state.update_compiled(&p, false);
            state.regroup(&changed);
            let rest: Vec<(String, Pod)> = pods
                .iter()
                .filter(|(id, _)| state.ids.contains(id))
                .cloned()
                .collect();
            let want = full(&rest);
            assert_eq!(
                state.all_elements(),
                want.all_elements(),
                "after removing {n}"
            );
            for (a, b) in state.compiled.policies.iter().zip(&want.compiled.policies) {
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn counter_book_is_monotonic() {
        let key = (
            PolicyRef {
                namespace: "a".into(),
                name: "p".into(),
            },
            CounterVerdict::Deny,
        );
        let mut book = CounterBook::default();
        book.observe(&BTreeMap::from([(key.clone(), 5)]));
        assert_eq!(book.total(&key), 5);
        book.observe(&BTreeMap::from([(key.clone(), 2)]));
        assert_eq!(book.total(&key), 5);
        book.observe(&BTreeMap::from([(key.clone(), 4)]));
        assert_eq!(book.total(&key), 7);
        book.observe(&BTreeMap::new());
        assert_eq!(book.total(&key), 7);
    }
}
