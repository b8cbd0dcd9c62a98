//! `cnimgr`: pod networking through CNI plugins, the way the CNI specification (1.0 / 1.1) says
//! a runtime must drive them.
//!
//! The daemon gives each pod a network namespace (crate `nsmgr`); this crate attaches that
//! namespace to the node's default CNI network and detaches it again. It:
//!
//! - loads network configs (`.conflist`, `.conf`, `.json`) from a directory in lexical order,
//!   picks the default network (the configured name, else the first valid file), reports and
//!   skips invalid files, and watches the directory (inotify) so changes apply without restart;
//! - finds plugin binaries in the plugin dirs and reports [`NetworkReadiness`] for CRI `Status`;
//! - runs plugins with the spec's environment and stdin (`name`, `cniVersion`, `runtimeConfig`
//!   for declared capabilities, chained `prevResult`), ADD in order, DEL in reverse continuing
//!   past errors, CHECK, and STATUS / GC for 1.1.0 configs, each bounded by a timeout;
//! - keeps a result cache on disk so DEL after a restart replays the exact config and result;
//! - serializes operations per pod and lets different pods proceed in parallel.
//!
//! Processes are spawned with tokio; nothing here enters a namespace (the plugins do that).

#![forbid(unsafe_code)]

mod cache;
pub mod config;
mod error;
mod exec;
mod metrics;
mod pod;
mod result;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Map, Value, json};

pub use cache::{CacheEntry, ResultCache};
pub use config::{InvalidConfig, NetworkConfigList, PluginConf};
pub use error::{CniError, PluginError, Result};
pub use exec::Command;
pub use metrics::CniMetrics;
pub use pod::{
    DEFAULT_IFNAME, EGRESS_BANDWIDTH_ANNOTATION, INGRESS_BANDWIDTH_ANNOTATION, IpRange, PodNetwork,
    PortMapping, parse_quantity,
};
pub use result::{CniResult, Dns, Interface, IpCidr, IpConfig, Route};

use config::version_at_least;
use exec::{Attachment, Invocation};

/// CRI `NetworkReady` reason when the network is not ready.
pub const NETWORK_NOT_READY_REASON: &str = "NetworkPluginNotReady";

/// Upper bound for one STATUS call: readiness answers the kubelet's `Status` RPC.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings (the `[network]` section of sluice's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// Directory of network configs.
    pub network_dir: PathBuf,
    /// Directories searched for plugin binaries, in order (also `CNI_PATH`).
    pub plugin_dirs: Vec<PathBuf>,
    /// Name of the network pods join; `None` = first valid file.
    pub default_network: Option<String>,
    /// Result cache directory.
    pub cache_dir: PathBuf,
    /// Timeout for each plugin's ADD (and CHECK).
    pub add_timeout: Duration,
    /// Timeout for each plugin's DEL (and GC).
    pub del_timeout: Duration,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            network_dir: PathBuf::from("/etc/cni/net.d"),
            plugin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            default_network: None,
            cache_dir: PathBuf::from("/var/lib/sluice/cni/results"),
            add_timeout: Duration::from_secs(120),
            del_timeout: Duration::from_secs(60),
        }
    }
}

/// Answer for CRI `Status` condition `NetworkReady`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkReadiness {
    /// Whether pods can be networked.
    pub ready: bool,
    /// Machine-readable reason, [`NETWORK_NOT_READY_REASON`] when not ready, else empty.
    pub reason: String,
    /// Human-readable explanation, empty when ready.
    pub message: String,
}

impl NetworkReadiness {
    fn ready() -> Self {
        Self {
            ready: true,
            reason: String::new(),
            message: String::new(),
        }
    }

    fn not_ready(message: String) -> Self {
        Self {
            ready: false,
            reason: NETWORK_NOT_READY_REASON.to_owned(),
            message,
        }
    }
}

/// Identifies one attachment for GC's valid list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttachmentKey {
    /// Pod sandbox id.
    pub container_id: String,
    /// Interface name in the pod.
    pub ifname: String,
}

/// Time spent inside plugin processes (spawn to exit), for metrics and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PluginTime {
    /// Plugin processes that exited successfully.
    pub calls: u64,
    /// Their total run time.
    pub total: Duration,
}

/// What the config directory currently yields.
#[derive(Debug, Default)]
struct Loaded {
    networks: Vec<Arc<NetworkConfigList>>,
    invalid: Vec<InvalidConfig>,
    default: Option<Arc<NetworkConfigList>>,
    load_error: Option<String>,
}

#[derive(Debug)]
struct Inner {
    config: CniConfig,
    cni_path: String,
    state: RwLock<Arc<Loaded>>,
    cache: ResultCache,
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// ADD/DEL/CHECK take it shared; GC takes it exclusively so that it never releases the
    /// resources of an attachment that is being set up while it runs.
    gc_lock: tokio::sync::RwLock<()>,
    plugin_nanos: AtomicU64,
    plugin_calls: AtomicU64,
    metrics: CniMetrics,
}

/// The CNI network manager. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct CniManager {
    inner: Arc<Inner>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

/// Serializes operations of one pod; drops its map entry when nobody else waits.
struct PodLock<'a> {
    inner: &'a Inner,
    key: String,
    arc: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for PodLock<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self
            .inner
            .pod_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Ours plus the map's: nobody else holds or waits for this pod.
        if Arc::strong_count(&self.arc) == 2 {
            map.remove(&self.key);
        }
    }
}

impl CniManager {
    /// Create a manager and load the config directory once. Call
    /// [`start_watching`](Self::start_watching) to follow changes.
    #[must_use]
    pub fn new(config: CniConfig) -> Self {
        Self::with_metrics(config, CniMetrics::default())
    }

    /// Like [`new`](Self::new), recording plugin timings and failures in `metrics`.
    #[must_use]
    pub fn with_metrics(config: CniConfig, metrics: CniMetrics) -> Self {
        let cni_path = config
            .plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let inner = Arc::new(Inner {
            cache: ResultCache::new(config.cache_dir.clone()),
            config,
            cni_path,
            state: RwLock::new(Arc::new(Loaded::default())),
            pod_locks: Mutex::new(HashMap::new()),
            gc_lock: tokio::sync::RwLock::new(()),
            plugin_nanos: AtomicU64::new(0),
            plugin_calls: AtomicU64::new(0),
            metrics,
        });
        inner.reload();
        Self {
            inner,
            watcher: Mutex::new(None),
        }
    }

    /// The settings in use.
    #[must_use]
    pub fn config(&self) -> &CniConfig {
        &self.inner.config
    }

    /// Watch the config directory (inotify) and reload on every change. Creates the directory
    /// if it does not exist. Idempotent; the watch stops when the manager is dropped.
    pub fn start_watching(&self) -> Result<()> {
        let mut slot = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some() {
            return Ok(());
        }
        let dir = self.inner.config.network_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| CniError::ConfigDir {
            dir: dir.clone(),
            source,
        })?;
        let inner = Arc::clone(&self.inner);
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
                Ok(_) => inner.reload(),
                Err(e) => tracing::warn!(error = %e, "cni config watch error"),
            })
            .map_err(|source| CniError::Watch {
                dir: dir.clone(),
                source,
            })?;
        notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive).map_err(
            |source| CniError::Watch {
                dir: dir.clone(),
                source,
            },
        )?;
        // Anything that changed between the first load and the watch.
        self.inner.reload();
        *slot = Some(watcher);
        tracing::info!(dir = %dir.display(), "watching cni config dir");
        Ok(())
    }

    /// Re-read the config directory now (the watcher does this on every change).
    pub fn reload(&self) {
        self.inner.reload();
    }

    /// The network pods are attached to, if any.
    #[must_use]
    pub fn default_network(&self) -> Option<Arc<NetworkConfigList>> {
        self.inner.snapshot().default.clone()
    }

    /// All valid networks, in file order.
    #[must_use]
    pub fn networks(&self) -> Vec<Arc<NetworkConfigList>> {
        self.inner.snapshot().networks.clone()
    }

    /// Files skipped at the last load, with reasons.
    #[must_use]
    pub fn invalid_configs(&self) -> Vec<InvalidConfig> {
        self.inner.snapshot().invalid.clone()
    }

    /// The result cache.
    #[must_use]
    pub fn cache(&self) -> &ResultCache {
        &self.inner.cache
    }

    /// Cumulative time spent inside plugin processes.
    #[must_use]
    pub fn plugin_time(&self) -> PluginTime {
        PluginTime {
            calls: self.inner.plugin_calls.load(Ordering::Relaxed),
            total: Duration::from_nanos(self.inner.plugin_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Ready when a default network is loaded, all its plugins exist, and (for 1.1.0) STATUS
    /// succeeds for each of them.
    pub async fn readiness(&self) -> NetworkReadiness {
        let state = self.inner.snapshot();
        let Some(list) = state.default.clone() else {
            return NetworkReadiness::not_ready(self.inner.no_network_message(&state));
        };
        for plugin in &list.plugins {
            if let Err(e) = exec::find_plugin(&plugin.plugin_type, &self.inner.config.plugin_dirs) {
                return NetworkReadiness::not_ready(format!(
                    "network {:?} ({}): {e}",
                    list.name,
                    list.source.display()
                ));
            }
        }
        if let Err(e) = self.inner.status_of(&list).await {
            return NetworkReadiness::not_ready(format!(
                "network {:?} ({}): {e}",
                list.name,
                list.source.display()
            ));
        }
        NetworkReadiness::ready()
    }

    /// STATUS of the default network (a no-op success for configs older than 1.1.0).
    pub async fn status(&self) -> Result<()> {
        let state = self.inner.snapshot();
        let list = state
            .default
            .clone()
            .ok_or_else(|| CniError::NotReady(self.inner.no_network_message(&state)))?;
        self.inner.status_of(&list).await
    }

    /// Attach the pod to the default network. On failure the partial attachment is deleted again
    /// (DEL over the whole list) so no lease or link is left behind.
    #[tracing::instrument(skip_all, fields(pod_id = %pod.pod_id))]
    pub async fn add(&self, pod: &PodNetwork) -> Result<CniResult> {
        pod.validate()?;
        let netns = pod
            .netns_path
            .as_deref()
            .ok_or_else(|| CniError::InvalidRequest("ADD needs a netns path".to_owned()))?
            .display()
            .to_string();
        let caps = pod.capability_args()?;
        let _gc = self.inner.gc_lock.read().await;
        let _pod = self.inner.lock_pod(&pod.pod_id).await;
        let state = self.inner.snapshot();
        let list = state
            .default
            .clone()
            .ok_or_else(|| CniError::NotReady(self.inner.no_network_message(&state)))?;
        let paths = self.inner.plugin_paths(&list)?;
        let cni_args = pod.cni_args();
        let att = Attachment {
            container_id: &pod.pod_id,
            netns: &netns,
            ifname: &pod.ifname,
            cni_args: &cni_args,
        };
        let mut entry = CacheEntry::new(
            &list.name,
            &pod.pod_id,
            &pod.ifname,
            &netns,
            cni_args.clone(),
            caps.clone(),
            list.to_value(),
        );
        // Written before any plugin runs: a crash mid-ADD leaves a record for GC to DEL.
        self.inner.cache.write(&entry)?;

        let mut prev: Option<Value> = None;
        let outcome = self
            .inner
            .add_list(&list, &paths, &att, &caps, &mut prev)
            .await
            .and_then(|raw| {
                let parsed =
                    CniResult::parse(raw.clone(), &list.cni_version).map_err(|reason| {
                        CniError::InvalidResult {
                            plugin: list
                                .plugins
                                .last()
                                .map(|p| p.plugin_type.clone())
                                .unwrap_or_default(),
                            command: Command::Add,
                            reason,
                            stdout: raw.to_string(),
                        }
                    })?;
                entry.result = Some(raw);
                self.inner.cache.write(&entry)?;
                Ok(parsed)
            });
        match outcome {
            Ok(result) => {
                tracing::info!(network = %list.name, ips = ?result.pod_ips().map(|i| i.address.to_string()).collect::<Vec<_>>(), "pod attached");
                Ok(result)
            }
            Err(e) => {
                tracing::warn!(network = %list.name, error = %e, "cni add failed, deleting partial attachment");
                let cleanup = self.inner.del_list(&list, &att, &caps, prev.as_ref()).await;
                if cleanup.is_empty()
                    && let Err(ce) = self
                        .inner
                        .cache
                        .remove(&list.name, &pod.pod_id, &pod.ifname)
                {
                    return Err(CniError::AddFailed {
                        source: Box::new(e),
                        cleanup: vec![ce],
                    });
                }
                Err(CniError::AddFailed {
                    source: Box::new(e),
                    cleanup,
                })
            }
        }
    }

    /// Detach the pod. Uses the cached config and result of its ADD when there is one (so it
    /// works after a restart and after config changes), else the current default network. A
    /// missing netns is passed as an empty `CNI_NETNS` so IPAM still releases the lease.
    /// Succeeds when there is nothing to delete. Keeps going past plugin errors and reports all.
    #[tracing::instrument(skip_all, fields(pod_id = %pod.pod_id))]
    pub async fn del(&self, pod: &PodNetwork) -> Result<()> {
        pod.validate()?;
        let _gc = self.inner.gc_lock.read().await;
        let _pod = self.inner.lock_pod(&pod.pod_id).await;
        let netns = pod
            .netns_path
            .as_deref()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let entries = self.inner.cache.find(&pod.pod_id, &pod.ifname)?;
        if entries.is_empty() {
            let Some(list) = self.default_network() else {
                tracing::debug!("no cached attachment and no network: nothing to delete");
                return Ok(());
            };
            let cni_args = pod.cni_args();
            let caps = pod.capability_args().unwrap_or_default();
            let att = Attachment {
                container_id: &pod.pod_id,
                netns: &netns,
                ifname: &pod.ifname,
                cni_args: &cni_args,
            };
            return CniError::from_list(self.inner.del_list(&list, &att, &caps, None).await);
        }
        let mut errs = Vec::new();
        for entry in entries {
            errs.extend(self.inner.del_entry(&entry, &netns).await);
        }
        CniError::from_list(errs)
    }

    /// CHECK the pod's attachment against its cached ADD result. A no-op for configs older than
    /// 0.4.0 or with `disableCheck`.
    #[tracing::instrument(skip_all, fields(pod_id = %pod.pod_id))]
    pub async fn check(&self, pod: &PodNetwork) -> Result<()> {
        pod.validate()?;
        let netns = pod
            .netns_path
            .as_deref()
            .ok_or_else(|| CniError::InvalidRequest("CHECK needs a netns path".to_owned()))?
            .display()
            .to_string();
        let _gc = self.inner.gc_lock.read().await;
        let _pod = self.inner.lock_pod(&pod.pod_id).await;
        let entries = self.inner.cache.find(&pod.pod_id, &pod.ifname)?;
        let no_cache = || CniError::NoCachedResult {
            container_id: pod.pod_id.clone(),
            ifname: pod.ifname.clone(),
            command: Command::Check,
        };
        if entries.is_empty() {
            return Err(no_cache());
        }
        for entry in entries {
            let list = entry_list(&entry)?;
            if !version_at_least(&list.cni_version, "0.4.0") || list.disable_check {
                continue;
            }
            let prev = entry.result.as_ref().ok_or_else(no_cache)?;
            let paths = self.inner.plugin_paths(&list)?;
            let att = Attachment {
                container_id: &entry.container_id,
                netns: &netns,
                ifname: &entry.ifname,
                cni_args: &entry.cni_args,
            };
            for (plugin, path) in list.plugins.iter().zip(&paths) {
                self.inner
                    .invoke(
                        Command::Check,
                        &list,
                        plugin,
                        path,
                        Some(att.clone()),
                        Some(&entry.capability_args),
                        Some(prev),
                        &[],
                        self.inner.config.add_timeout,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Garbage-collect: DEL every cached attachment not in `valid` (with its cached config), then
    /// send GC with `cni.dev/valid-attachments` to the plugins of every loaded 1.1.0 network
    /// without `disableGC`, so they release what they hold for attachments nobody knows about.
    /// Keeps going past errors and reports all of them.
    #[tracing::instrument(skip_all, fields(valid = valid.len()))]
    pub async fn gc(&self, valid: &[AttachmentKey]) -> Result<()> {
        let _gc = self.inner.gc_lock.write().await;
        let mut errs = Vec::new();
        let (entries, bad) = self.inner.cache.list()?;
        errs.extend(bad);
        let is_valid = |cid: &str, ifname: &str| {
            valid
                .iter()
                .any(|v| v.container_id == cid && v.ifname == ifname)
        };
        for entry in entries
            .iter()
            .filter(|e| !is_valid(&e.container_id, &e.ifname))
        {
            tracing::info!(container_id = %entry.container_id, network = %entry.network_name, "gc: deleting stale attachment");
            let netns = Some(Path::new(&entry.netns))
                .filter(|p| !entry.netns.is_empty() && p.exists())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let _pod = self.inner.lock_pod(&entry.container_id).await;
            errs.extend(self.inner.del_entry(entry, &netns).await);
        }

        // Whatever is still cached is live (or failed to delete, so still owned): keep it too.
        let mut keep: Vec<AttachmentKey> = valid.to_vec();
        if let Ok((remaining, _)) = self.inner.cache.list() {
            for e in remaining {
                if !is_valid(&e.container_id, &e.ifname) {
                    keep.push(AttachmentKey {
                        container_id: e.container_id,
                        ifname: e.ifname,
                    });
                }
            }
        }
        let attachments: Vec<Value> = keep
            .iter()
            .map(|k| json!({"containerID": k.container_id, "ifname": k.ifname}))
            .collect();
        let attachments = Value::Array(attachments);
        for list in self.networks() {
            if !version_at_least(&list.cni_version, "1.1.0") || list.disable_gc {
                continue;
            }
            for plugin in &list.plugins {
                let path =
                    match exec::find_plugin(&plugin.plugin_type, &self.inner.config.plugin_dirs) {
                        Ok(p) => p,
                        Err(e) => {
                            errs.push(e);
                            continue;
                        }
                    };
                // Both keys: the 1.1.0 spec text used `cni.dev/attachments` in one place and
                // libcni sends both for compatibility.
                let extra = [
                    ("cni.dev/valid-attachments", attachments.clone()),
                    ("cni.dev/attachments", attachments.clone()),
                ];
                if let Err(e) = self
                    .inner
                    .invoke(
                        Command::Gc,
                        &list,
                        plugin,
                        &path,
                        None,
                        None,
                        None,
                        &extra,
                        self.inner.config.del_timeout,
                    )
                    .await
                {
                    errs.push(e);
                }
            }
        }
        CniError::from_list(errs)
    }
}

/// Restore the config list a cache entry was added with.
fn entry_list(entry: &CacheEntry) -> Result<NetworkConfigList> {
    let Value::Object(obj) = entry.config.clone() else {
        return Err(CniError::InvalidRequest(format!(
            "cached config of {} is not an object",
            entry.container_id
        )));
    };
    NetworkConfigList::from_object(obj, true, Path::new("")).map_err(|reason| {
        CniError::InvalidRequest(format!(
            "cached config of {} is invalid: {reason}",
            entry.container_id
        ))
    })
}

impl Inner {
    fn snapshot(&self) -> Arc<Loaded> {
        Arc::clone(
            &self
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn reload(&self) {
        let dir = &self.config.network_dir;
        let mut loaded = Loaded::default();
        match config::load_dir(dir) {
            Ok(found) => {
                loaded.networks = found.networks.into_iter().map(Arc::new).collect();
                loaded.invalid = found.invalid;
            }
            Err(e) => loaded.load_error = Some(format!("failed to read {}: {e}", dir.display())),
        }
        loaded.default = match &self.config.default_network {
            Some(name) => loaded.networks.iter().find(|n| &n.name == name).cloned(),
            None => loaded.networks.first().cloned(),
        };
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.invalid != loaded.invalid {
            for bad in &loaded.invalid {
                tracing::warn!(file = %bad.path.display(), reason = %bad.reason, "skipping invalid cni config");
            }
        }
        if let Some(e) = &loaded.load_error {
            tracing::warn!(error = %e, "cni config dir unreadable");
        }
        let old = state.default.as_ref().map(|n| (&n.name, &n.source));
        let new = loaded.default.as_ref().map(|n| (&n.name, &n.source));
        if old != new || state.default != loaded.default {
            match &loaded.default {
                Some(n) => {
                    tracing::info!(network = %n.name, file = %n.source.display(), cni_version = %n.cni_version, "default cni network loaded")
                }
                None => tracing::warn!(dir = %dir.display(), "no default cni network"),
            }
        }
        *state = Arc::new(loaded);
    }

    fn no_network_message(&self, state: &Loaded) -> String {
        let dir = self.config.network_dir.display();
        let mut msg = match &self.config.default_network {
            Some(name) => format!("default network {name:?} not found in {dir}"),
            None => format!("no valid CNI network config found in {dir}"),
        };
        if let Some(e) = &state.load_error {
            msg.push_str(&format!(": {e}"));
        }
        if !state.invalid.is_empty() {
            let skipped = state
                .invalid
                .iter()
                .map(|i| format!("{}: {}", i.path.display(), i.reason))
                .collect::<Vec<_>>()
                .join(", ");
            msg.push_str(&format!(" (skipped invalid: {skipped})"));
        }
        msg
    }

    async fn lock_pod(&self, pod_id: &str) -> PodLock<'_> {
        let arc = {
            let mut map = self
                .pod_locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(map.entry(pod_id.to_owned()).or_default())
        };
        let mut lock = PodLock {
            inner: self,
            key: pod_id.to_owned(),
            arc: Arc::clone(&arc),
            guard: None,
        };
        lock.guard = Some(arc.lock_owned().await);
        lock
    }

    fn plugin_paths(&self, list: &NetworkConfigList) -> Result<Vec<PathBuf>> {
        list.plugins
            .iter()
            .map(|p| exec::find_plugin(&p.plugin_type, &self.config.plugin_dirs))
            .collect()
    }

    async fn status_of(&self, list: &NetworkConfigList) -> Result<()> {
        if !version_at_least(&list.cni_version, "1.1.0") {
            return Ok(());
        }
        let paths = self.plugin_paths(list)?;
        for (plugin, path) in list.plugins.iter().zip(&paths) {
            self.invoke(
                Command::Status,
                list,
                plugin,
                path,
                None,
                None,
                None,
                &[],
                STATUS_TIMEOUT.min(self.config.add_timeout),
            )
            .await?;
        }
        Ok(())
    }

    /// ADD every plugin in order, chaining results. `prev` holds the last good result, which
    /// the caller needs for cleanup if a later plugin fails.
    async fn add_list(
        &self,
        list: &NetworkConfigList,
        paths: &[PathBuf],
        att: &Attachment<'_>,
        caps: &Map<String, Value>,
        prev: &mut Option<Value>,
    ) -> Result<Value> {
        for (plugin, path) in list.plugins.iter().zip(paths) {
            let stdout = self
                .invoke(
                    Command::Add,
                    list,
                    plugin,
                    path,
                    Some(att.clone()),
                    Some(caps),
                    prev.as_ref(),
                    &[],
                    self.config.add_timeout,
                )
                .await?;
            let value: Value =
                serde_json::from_slice(&stdout).map_err(|e| CniError::InvalidResult {
                    plugin: plugin.plugin_type.clone(),
                    command: Command::Add,
                    reason: e.to_string(),
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                })?;
            *prev = Some(value);
        }
        prev.clone().ok_or_else(|| CniError::InvalidResult {
            plugin: String::new(),
            command: Command::Add,
            reason: "network has no plugins".to_owned(),
            stdout: String::new(),
        })
    }

    /// DEL every plugin in reverse order, continuing past errors. `prevResult` is passed for
    /// spec versions that define it for DEL (0.4.0 and later).
    async fn del_list(
        &self,
        list: &NetworkConfigList,
        att: &Attachment<'_>,
        caps: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Vec<CniError> {
        let prev = prev.filter(|_| version_at_least(&list.cni_version, "0.4.0"));
        let mut errs = Vec::new();
        for plugin in list.plugins.iter().rev() {
            let path = match exec::find_plugin(&plugin.plugin_type, &self.config.plugin_dirs) {
                Ok(p) => p,
                Err(e) => {
                    errs.push(e);
                    continue;
                }
            };
            if let Err(e) = self
                .invoke(
                    Command::Del,
                    list,
                    plugin,
                    &path,
                    Some(att.clone()),
                    Some(caps),
                    prev,
                    &[],
                    self.config.del_timeout,
                )
                .await
            {
                tracing::warn!(plugin = %plugin.plugin_type, error = %e, "cni del failed, continuing");
                errs.push(e);
            }
        }
        errs
    }

    /// DEL one cached attachment with its own config; drop the entry when that succeeded.
    async fn del_entry(&self, entry: &CacheEntry, netns: &str) -> Vec<CniError> {
        let list = match entry_list(entry) {
            Ok(l) => l,
            Err(e) => return vec![e],
        };
        let att = Attachment {
            container_id: &entry.container_id,
            netns,
            ifname: &entry.ifname,
            cni_args: &entry.cni_args,
        };
        let mut errs = self
            .del_list(&list, &att, &entry.capability_args, entry.result.as_ref())
            .await;
        if errs.is_empty()
            && let Err(e) =
                self.cache
                    .remove(&entry.network_name, &entry.container_id, &entry.ifname)
        {
            errs.push(e);
        }
        errs
    }

    /// Build the plugin's stdin and run it.
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(
        name = "cni_plugin",
        skip_all,
        fields(
            plugin = %plugin.plugin_type,
            command = command.as_str(),
            network = %list.name,
            otel.status_code = tracing::field::Empty,
        )
    )]
    async fn invoke(
        &self,
        command: Command,
        list: &NetworkConfigList,
        plugin: &PluginConf,
        path: &Path,
        attachment: Option<Attachment<'_>>,
        caps: Option<&Map<String, Value>>,
        prev: Option<&Value>,
        extra: &[(&str, Value)],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let stdin = plugin_stdin(list, plugin, caps, prev, extra);
        let labels = metrics::PluginLabels {
            plugin: plugin.plugin_type.clone(),
            command: command.as_str().to_owned(),
        };
        let started = std::time::Instant::now();
        let out = exec::run(Invocation {
            command,
            plugin: &plugin.plugin_type,
            path,
            cni_path: &self.cni_path,
            attachment,
            stdin,
            timeout,
        })
        .await;
        self.metrics
            .duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                self.metrics.errors.get_or_create(&labels).inc();
                tracing::Span::current().record("otel.status_code", "ERROR");
                return Err(e);
            }
        };
        self.plugin_calls.fetch_add(1, Ordering::Relaxed);
        self.plugin_nanos.fetch_add(
            u64::try_from(out.elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(out.stdout)
    }
}

/// The config a plugin reads on stdin: its own object from the list, plus `name` and
/// `cniVersion` of the list, `runtimeConfig` with the capabilities it declares and we have
/// values for, and `prevResult` (CNI spec section 3, "Deriving execution configuration").
fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConf,
    caps: Option<&Map<String, Value>>,
    prev: Option<&Value>,
    extra: &[(&str, Value)],
) -> Vec<u8> {
    let mut obj = plugin.raw.clone();
    obj.insert("name".into(), Value::String(list.name.clone()));
    obj.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(caps) = caps {
        let runtime: Map<String, Value> = plugin
            .capabilities
            .iter()
            .filter(|(_, enabled)| **enabled)
            .filter_map(|(cap, _)| caps.get(cap).map(|v| (cap.clone(), v.clone())))
            .collect();
        if !runtime.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(runtime));
        }
    }
    if let Some(prev) = prev {
        obj.insert("prevResult".into(), prev.clone());
    }
    for (k, v) in extra {
        obj.insert((*k).to_owned(), v.clone());
    }
    // Serializing a Map of Values cannot fail.
    serde_json::to_vec(&Value::Object(obj)).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stdin_gets_only_declared_capabilities() {
        let list = NetworkConfigList::from_bytes(
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"bridge"},
                {"type":"bandwidth","capabilities":{"bandwidth":true,"portMappings":false}}]}"#,
            true,
            Path::new("x"),
        )
        .unwrap();
        let mut caps = Map::new();
        caps.insert("bandwidth".into(), json!({"ingressRate": 1000}));
        caps.insert("portMappings".into(), json!([]));
        let prev = json!({"cniVersion": "1.0.0"});
        let s: Value = serde_json::from_slice(&plugin_stdin(
            &list,
            &list.plugins[0],
            Some(&caps),
            None,
            &[],
        ))
        .unwrap();
        assert_eq!(s["name"], "net");
        assert_eq!(s["cniVersion"], "1.0.0");
        assert!(s.get("runtimeConfig").is_none());
        let s: Value = serde_json::from_slice(&plugin_stdin(
            &list,
            &list.plugins[1],
            Some(&caps),
            Some(&prev),
            &[],
        ))
        .unwrap();
        assert_eq!(
            s["runtimeConfig"],
            json!({"bandwidth": {"ingressRate": 1000}})
        );
        assert_eq!(s["prevResult"], prev);
    }
}
