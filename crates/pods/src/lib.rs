//! The domain core: the pod sandbox lifecycle.
//!
//! [`PodManager`] composes the subsystem crates into CRI's sandbox operations:
//! - **run**: validate → reserve the name → wait (bounded) for network readiness → `nsmgr`
//!   pins net/ipc/uts (hostname, sysctls) → pod cgroup → CNI ADD → host ports → pod files →
//!   log directory → persist Ready. A failing step unwinds the completed ones in reverse and the
//!   error names the step.
//! - **stop**: host ports → CNI DEL → namespaces, persisting what is left after each attempt;
//!   idempotent, best-effort, reporting every failure.
//! - **remove**: whatever stop left, the cgroup and pod files, then the record and the name.
//! - **recover** (daemon start): reload records, mark pods whose namespaces died (or whose
//!   boot is over) NotReady, tear down pods a crash caught mid-creation, CNI GC with the live
//!   attachments, rebuild the host-port tables from live pods, GC orphaned namespace pins.
//!
//! Concurrency: each pod has an async mutex that serializes its operations; the map of
//! records sits behind a short synchronous lock, so List and Status never wait behind a slow
//! CNI plugin.

#![forbid(unsafe_code)]

pub mod cgroup;
pub mod containers;
pub mod files;
mod metrics;
pub mod net;
pub mod policy;
pub mod store;
mod streams;
pub mod types;

#[cfg(any(test, feature = "test-util"))]
pub mod fake;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hostport::HostPortManager;
use nsmgr::{NamespaceManager, NamespaceMode, NamespaceRequest, PodId};
use tracing::Instrument;

pub use cgroup::{CgroupError, CgroupFs, Cgroups};
pub use containers::{
    ContainerConfig, ContainerFilter, ContainerRecord, ContainerState, ContainerStats, ExecResult,
    ImageSource, ImageUsageProxy, PodStats, ResolvedImage,
};
pub use metrics::PodMetrics;
pub use net::{Attached, CniNetworking, NetAttach, PodNetworking, Readiness};
pub use policy::{PolicyHook, policy_pod};
pub use store::{Store, StoreError};
pub use types::{
    DnsConfig, NsMode, PodFilter, PodMetadata, PodNetworkState, PodRecord, PodState, PortMapping,
    Protocol, SandboxConfig,
};

/// An error with all its causes, `outer: inner: root`, as operators need to see it (thiserror
/// types display only their own level).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// What a failure means for the client (the server maps each kind to one gRPC code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    AlreadyExists,
    NotFound,
    FailedPrecondition,
    Internal,
}

/// A pod operation failure.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("pod sandbox name {name:?} is already reserved by pod sandbox {id}")]
    NameReserved { name: String, id: String },
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    #[error("container {0:?} not found")]
    ContainerNotFound(String),
    #[error("container name {name:?} is already reserved by container {id}")]
    ContainerNameReserved { name: String, id: String },
    #[error("image {0:?} not found: pull it first")]
    ImageNotFound(String),
    #[error("pod sandbox id prefix {prefix:?} is ambiguous: it matches {}", matches.join(", "))]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },
    #[error("runtime handler {handler:?} not found; this sluice serves {}", known.join(", "))]
    UnknownHandler { handler: String, known: Vec<String> },
    #[error("pod network is not ready (waited {waited:?}): {message}")]
    NetworkNotReady { waited: Duration, message: String },
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        kind: ErrorKind,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("releasing pod sandbox {id}: {}", errors.join("; "))]
    Teardown { id: String, errors: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PodError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            PodError::InvalidArgument { .. } | PodError::Ambiguous { .. } => {
                ErrorKind::InvalidArgument
            }
            PodError::NameReserved { .. } | PodError::ContainerNameReserved { .. } => {
                ErrorKind::AlreadyExists
            }
            PodError::NotFound(_)
            | PodError::ContainerNotFound(_)
            | PodError::ImageNotFound(_)
            | PodError::UnknownHandler { .. } => ErrorKind::NotFound,
            PodError::NetworkNotReady { .. } => ErrorKind::FailedPrecondition,
            PodError::Step { kind, .. } => *kind,
            PodError::Teardown { .. } | PodError::Store(_) => ErrorKind::Internal,
        }
    }

    fn step(
        step: &'static str,
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        PodError::Step {
            step,
            kind,
            source: source.into(),
        }
    }
}

/// Settings of the pod manager (from sluice's config).
#[derive(Debug, Clone)]
pub struct PodsConfig {
    /// Where pod records are kept (`<storage.root>/pods`).
    pub state_dir: PathBuf,
    /// Where pod files live (`<storage.runroot>/pods`).
    pub files_dir: PathBuf,
    /// cgroupfs parent for pods that do not name one.
    pub default_cgroup_parent: String,
    /// How long RunPodSandbox waits for the pod network to become ready.
    pub network_ready_timeout: Duration,
    /// Runtime handler names accepted (`""` is the default handler).
    pub runtime_handlers: Vec<String>,
    /// The node's resolv.conf, used when a pod has no DNS config.
    pub host_resolv_conf: PathBuf,
    /// Source of the boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id_path: PathBuf,
    /// Container records (`<storage.root>/containers`).
    pub containers_dir: PathBuf,
    /// Container writable layers and rootfs mounts (`<storage.root>/overlay/<id>`).
    pub overlay_dir: PathBuf,
    /// OCI bundles (`<storage.runroot>/containers/<id>`).
    pub bundles_dir: PathBuf,
    /// The `sluice` executable, whose `pause` subcommand holds a pod's shared PID namespace
    /// (PID mode POD); `None` makes such pods fail with FailedPrecondition.
    pub pause_command: Option<PathBuf>,
}

impl PodsConfig {
    /// Defaults under the given state directories.
    pub fn new(root: &Path, runroot: &Path) -> Self {
        Self {
            state_dir: root.join("pods"),
            files_dir: runroot.join("pods"),
            default_cgroup_parent: "/sluice".to_string(),
            network_ready_timeout: Duration::from_secs(10),
            runtime_handlers: vec![String::new(), "runc".to_string()],
            host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
            boot_id_path: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            containers_dir: root.join("containers"),
            overlay_dir: root.join("overlay"),
            bundles_dir: runroot.join("containers"),
            pause_command: None,
        }
    }
}

/// The subsystems a pod is made of.
#[derive(Debug, Clone)]
pub struct Deps {
    pub namespaces: Arc<dyn NamespaceManager>,
    pub network: Arc<dyn PodNetworking>,
    pub hostports: Arc<dyn HostPortManager>,
    pub cgroups: Arc<dyn Cgroups>,
    /// Whether a pinned namespace is still alive ([`is_live_namespace`] on real systems).
    pub namespace_alive: fn(&Path) -> bool,
    /// Where timings and counts go (`PodMetrics::default()` when nobody scrapes).
    pub metrics: PodMetrics,
    /// The OCI runtime (runc under conmon).
    pub runtime: Arc<dyn oci::ContainerRuntime>,
    /// Images for container root filesystems.
    pub images: Arc<dyn ImageSource>,
    /// The node and daemon facts that shape container specs (capability bounding set, ...).
    pub host: Arc<oci::spec::Host>,
    /// cgroup hierarchies, for container stats.
    pub hierarchies: Arc<oci::stats::Hierarchies>,
}

/// What start-up recovery found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub loaded: usize,
    pub corrupt: usize,
    /// Pods a crash caught in RunPodSandbox, torn down and forgotten.
    pub removed_incomplete: usize,
    /// Ready pods found dead (namespace gone or previous boot), now NotReady.
    pub marked_not_ready: usize,
    /// Namespace pins no pod owned.
    pub orphan_pins: usize,
    /// Problems that did not stop recovery.
    pub warnings: Vec<String>,
}

struct Entry {
    op: tokio::sync::Mutex<()>,
    record: RwLock<PodRecord>,
}

impl Entry {
    fn new(record: PodRecord) -> Arc<Self> {
        Arc::new(Self {
            op: tokio::sync::Mutex::new(()),
            record: RwLock::new(record),
        })
    }

    fn get(&self) -> PodRecord {
        self.record
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, record: PodRecord) {
        *self
            .record
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = record;
    }
}

/// The pod sandbox manager.
pub struct PodManager {
    cfg: PodsConfig,
    deps: Deps,
    store: Store<PodRecord>,
    boot_id: String,
    pods: RwLock<HashMap<String, Arc<Entry>>>,
    /// Reserved name → pod id.
    names: Mutex<HashMap<String, String>>,
    containers: RwLock<HashMap<String, Arc<containers::CEntry>>>,
    /// Reserved container name → container id.
    container_names: Mutex<HashMap<String, String>>,
    cstore: Store<ContainerRecord>,
    /// Network policy, when enabled.
    policy: policy::PolicySlot,
}

impl std::fmt::Debug for PodManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodManager")
            .field("cfg", &self.cfg)
            .field("pods", &self.read_pods().len())
            .finish_non_exhaustive()
    }
}

/// Which resources a teardown releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Teardown {
    /// What the record says is held (Stop, Remove).
    Recorded,
    /// Everything the pod could hold, whatever the record says (a crash during creation left
    /// a record that does not list what was already set up).
    Everything,
}

impl PodManager {
    /// Opens the state store; call [`recover`](Self::recover) before serving.
    pub fn new(cfg: PodsConfig, deps: Deps) -> Result<Self, PodError> {
        let store = Store::open(&cfg.state_dir)?;
        let cstore = Store::open(&cfg.containers_dir)?;
        let boot_id = std::fs::read_to_string(&cfg.boot_id_path)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| {
                tracing::warn!(path = %cfg.boot_id_path.display(), error = %e, "cannot read the boot id");
                String::new()
            });
        Ok(Self {
            cfg,
            deps,
            store,
            boot_id,
            pods: RwLock::default(),
            names: Mutex::default(),
            containers: RwLock::default(),
            container_names: Mutex::default(),
            cstore,
            policy: policy::PolicySlot::default(),
        })
    }

    fn read_pods(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        self.pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_pods(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Entry>>> {
        self.pods
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enforces network policy for pods from now on (set once, before serving).
    pub fn set_policy(&self, hook: Arc<dyn PolicyHook>) {
        if !self.policy.set(hook) {
            tracing::warn!("network policy hook set twice; keeping the first");
        }
    }

    /// The policy identities of the Ready pods that are subject to policy (not host-network),
    /// keyed by pod sandbox id: what the enforcer rebuilds its tables from at start.
    pub fn policy_pods(&self) -> Vec<(String, netpolicy::Pod)> {
        self.list(&PodFilter::default())
            .into_iter()
            .filter(|r| r.state == PodState::Ready && !r.config.host_network())
            .map(|r| (r.id.clone(), policy::policy_pod(&r)))
            .collect()
    }

    // ---- lookups -------------------------------------------------------------------------

    /// Resolves a full id or unique prefix; `Ok(None)` when nothing matches.
    fn find(&self, id_or_prefix: &str) -> Result<Option<Arc<Entry>>, PodError> {
        if id_or_prefix.is_empty() {
            return Err(PodError::InvalidArgument {
                field: "pod_sandbox_id".into(),
                message: "must not be empty".into(),
            });
        }
        let pods = self.read_pods();
        if let Some(e) = pods.get(id_or_prefix) {
            return Ok(Some(Arc::clone(e)));
        }
        let mut matches: Vec<&String> = pods
            .keys()
            .filter(|k| k.starts_with(id_or_prefix))
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(pods.get(matches[0]).cloned()),
            _ => {
                matches.sort();
                Err(PodError::Ambiguous {
                    prefix: id_or_prefix.to_string(),
                    matches: matches.into_iter().cloned().collect(),
                })
            }
        }
    }

    /// The pod with this id or unique id prefix.
    pub fn status(&self, id_or_prefix: &str) -> Result<PodRecord, PodError> {
        self.find(id_or_prefix)?
            .map(|e| e.get())
            .ok_or_else(|| PodError::NotFound(id_or_prefix.to_string()))
    }

    /// Pods matching `filter`, oldest first; pods still being created are not listed.
    pub fn list(&self, filter: &PodFilter) -> Vec<PodRecord> {
        let mut out: Vec<PodRecord> = self
            .read_pods()
            .values()
            .map(|e| e.get())
            .filter(|r| r.state != PodState::Creating && filter.matches(r))
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    // ---- run -----------------------------------------------------------------------------

    /// RunPodSandbox. Returns the Ready record.
    pub async fn run(&self, config: SandboxConfig) -> Result<PodRecord, PodError> {
        self.validate(&config)?;
        let name = config.metadata.reserved_name();
        let id = new_pod_id()
            .map_err(|e| PodError::step("generating a pod id", ErrorKind::Internal, e))?;
        {
            let mut names = self.names();
            if let Some(existing) = names.get(&name) {
                return Err(PodError::NameReserved {
                    name,
                    id: existing.clone(),
                });
            }
            names.insert(name.clone(), id.clone());
        }
        let span = tracing::info_span!("run_pod_sandbox", pod_id = %id, pod = %name);
        let result = self.run_reserved(id, config).instrument(span).await;
        if result.is_err() {
            self.names().remove(&name);
        }
        result
    }

    fn validate(&self, config: &SandboxConfig) -> Result<(), PodError> {
        if !self
            .cfg
            .runtime_handlers
            .iter()
            .any(|h| h == &config.runtime_handler)
        {
            return Err(PodError::UnknownHandler {
                handler: config.runtime_handler.clone(),
                known: self
                    .cfg
                    .runtime_handlers
                    .iter()
                    .map(|h| format!("{h:?}"))
                    .collect(),
            });
        }
        cgroup::validate_parent(&config.cgroup_parent).map_err(|message| {
            PodError::InvalidArgument {
                field: "config.linux.cgroup_parent".into(),
                message,
            }
        })?;
        if matches!(config.network, NsMode::Container | NsMode::Target)
            || matches!(config.ipc, NsMode::Container | NsMode::Target)
        {
            return Err(PodError::InvalidArgument {
                field: "config.linux.security_context.namespace_options".into(),
                message: "network and ipc must be POD or NODE".into(),
            });
        }
        if config.host_network()
            && let Some(key) = config.sysctls.keys().find(|k| k.starts_with("net."))
        {
            return Err(PodError::InvalidArgument {
                field: "config.linux.sysctls".into(),
                message: format!(
                    "{key} needs the pod's own network namespace, but the pod uses the node's"
                ),
            });
        }
        Ok(())
    }

    async fn wait_network_ready(&self) -> Result<(), PodError> {
        let start = Instant::now();
        loop {
            let r = self.deps.network.readiness().await;
            if r.ready {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= self.cfg.network_ready_timeout {
                return Err(PodError::NetworkNotReady {
                    waited,
                    message: r.message,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn run_reserved(&self, id: String, config: SandboxConfig) -> Result<PodRecord, PodError> {
        if !config.host_network() {
            self.wait_network_ready().await?;
        }
        let mut rec = PodRecord {
            id: id.clone(),
            config,
            state: PodState::Creating,
            reason: String::new(),
            created_at: unix_nanos(),
            boot_id: self.boot_id.clone(),
            netns: None,
            ipc_ns: None,
            uts_ns: None,
            network: None,
            hostports: false,
            policy: false,
            cgroup: None,
            files_dir: None,
            pause_pid_ns: None,
            pause_pid: None,
        };
        // The Creating record is written first: if sluice dies during setup, recovery finds
        // it and releases whatever was set up.
        self.persist(&rec).await?;
        let setup = self.setup(&mut rec).await;
        let setup = match setup {
            Ok(()) => {
                rec.state = PodState::Ready;
                self.persist(&rec).await.map_err(PodError::from)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = setup {
            tracing::warn!(error = %e, "RunPodSandbox failed; releasing what was set up");
            let errors = self.release_all(&mut rec, Teardown::Everything).await;
            if errors.is_empty() {
                if let Err(se) = self.store.delete(&id) {
                    tracing::error!(error = %se, "cannot delete the failed pod's record");
                }
            } else {
                // Keep the record so recovery retries the release; the pod never becomes
                // visible because it stays Creating.
                tracing::error!(errors = ?errors, "unwinding the failed pod left resources behind");
                let _ = self.persist(&rec).await;
            }
            return Err(e);
        }
        self.write_pods().insert(id, Entry::new(rec.clone()));
        self.refresh_gauges();
        Ok(rec)
    }

    async fn setup(&self, rec: &mut PodRecord) -> Result<(), PodError> {
        let cfg = rec.config.clone();
        let host_net = cfg.host_network();
        let hostname = if cfg.hostname.is_empty() {
            cfg.metadata.name.clone()
        } else {
            cfg.hostname.clone()
        };
        let mut times = StepTimes::default();

        // 1. Namespaces. UTS follows the network: host-network pods see the node's hostname.
        let t = Instant::now();
        let pod_id =
            PodId::new(&rec.id).map_err(|e| PodError::step("pod id", ErrorKind::Internal, e))?;
        let mode = |m: NsMode| {
            if m == NsMode::Node {
                NamespaceMode::Node
            } else {
                NamespaceMode::Pod
            }
        };
        let request = NamespaceRequest {
            network: mode(cfg.network),
            ipc: mode(cfg.ipc),
            uts: mode(cfg.network),
            hostname: (!host_net).then(|| hostname.clone()),
            sysctls: cfg.sysctls.clone(),
        };
        let nsm = Arc::clone(&self.deps.namespaces);
        let created = tokio::task::spawn_blocking(move || nsm.create(&pod_id, &request))
            .instrument(tracing::info_span!("nsmgr_create"))
            .await
            .map_err(|e| PodError::step("creating namespaces", ErrorKind::Internal, e))?
            .map_err(|e| {
                let kind = if e.is_invalid_request() {
                    ErrorKind::InvalidArgument
                } else {
                    ErrorKind::Internal
                };
                PodError::step("creating namespaces", kind, e)
            })?;
        rec.netns = created.net.pin_path().map(Path::to_path_buf);
        rec.ipc_ns = created.ipc.pin_path().map(Path::to_path_buf);
        rec.uts_ns = created.uts.pin_path().map(Path::to_path_buf);
        times.netns = t.elapsed();
        self.deps.metrics.setup_step("netns", times.netns);

        // 2. The pod cgroup.
        let t = Instant::now();
        let cg = self.cgroup_path(rec);
        self.deps
            .cgroups
            .create(&cg)
            .map_err(|e| PodError::step("creating the pod cgroup", ErrorKind::Internal, e))?;
        rec.cgroup = Some(cg.clone());
        times.cgroup = t.elapsed();

        // 2b. A shared PID namespace (PID mode POD) lives as long as its pause process.
        if cfg.pid == NsMode::Pod {
            let exe = self.cfg.pause_command.clone().ok_or_else(|| {
                PodError::step(
                    "sharing a PID namespace in the pod",
                    ErrorKind::FailedPrecondition,
                    "this sluice has no pause command configured",
                )
            })?;
            let (holder, init) = tokio::task::spawn_blocking(move || start_pause(&exe))
                .instrument(tracing::info_span!("pause_start"))
                .await
                .map_err(|e| PodError::step("starting the pause process", ErrorKind::Internal, e))?
                .map_err(|e| {
                    PodError::step("starting the pause process", ErrorKind::Internal, e)
                })?;
            rec.pause_pid = Some(holder);
            rec.pause_pid_ns = Some(PathBuf::from(format!("/proc/{init}/ns/pid")));
            for pid in [holder, init] {
                if let Err(e) = self.deps.cgroups.add_process(&cg, pid) {
                    tracing::warn!(pid, error = %e, "cannot move the pause process into the pod cgroup");
                }
            }
        }

        // 3. CNI.
        if !host_net {
            let t = Instant::now();
            let attach = self.net_attach(rec);
            let attached = self
                .deps
                .network
                .attach(&attach)
                .instrument(tracing::info_span!("cni_add"))
                .await
                .map_err(|e| {
                    PodError::step(
                        "attaching the pod network (CNI ADD)",
                        ErrorKind::Internal,
                        e,
                    )
                })?;
            rec.network = Some(PodNetworkState {
                network: attached.network,
                ips: attached.ips,
                result: attached.result,
            });
            times.cni = t.elapsed();
            self.deps.metrics.setup_step("cni", times.cni);
        }

        // 4. Host ports.
        let mappings = hostport_mappings(&cfg);
        if !host_net && !mappings.is_empty() {
            let t = Instant::now();
            let name = cfg.metadata.reserved_name();
            let ips = rec.ips().to_vec();
            // Mark first: a failed add may have applied nothing or (on a kernel error
            // mid-way) something; remove is idempotent either way.
            rec.hostports = true;
            self.deps
                .hostports
                .add(&rec.id, &name, &ips, &mappings)
                .instrument(tracing::info_span!("hostport_add"))
                .await
                .map_err(|e| {
                    let kind = match e.kind() {
                        hostport::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                        hostport::ErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
                        _ => ErrorKind::Internal,
                    };
                    PodError::step("publishing host ports", kind, e)
                })?;
            times.hostport = t.elapsed();
            self.deps.metrics.setup_step("hostport", times.hostport);
        }

        // 5. Network policy: in force before the pod is reported Ready.
        if !host_net && let Some(hook) = self.policy.get() {
            let t = Instant::now();
            rec.policy = true;
            hook.pod_up(&rec.id, policy::policy_pod(rec))
                .instrument(tracing::info_span!("policy_add"))
                .await
                .map_err(|e| PodError::step("applying network policy", ErrorKind::Internal, e))?;
            times.policy = t.elapsed();
            self.deps.metrics.setup_step("policy", times.policy);
        }

        // 6. Pod files and the log directory.
        let t = Instant::now();
        let dir = self.cfg.files_dir.join(&rec.id);
        rec.files_dir = Some(dir.clone());
        files::write_pod_files(
            &dir,
            &hostname,
            cfg.dns.as_ref(),
            &self.cfg.host_resolv_conf,
            rec.ips(),
        )
        .map_err(|(path, e)| {
            PodError::step(
                "writing pod files",
                ErrorKind::Internal,
                format!("{}: {e}", path.display()),
            )
        })?;
        if let Some(logs) = &cfg.log_directory {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(logs)
                .map_err(|e| {
                    PodError::step(
                        "creating the log directory",
                        ErrorKind::Internal,
                        format!("{}: {e}", logs.display()),
                    )
                })?;
        }
        times.files = t.elapsed();
        tracing::info!(
            netns_us = times.netns.as_micros() as u64,
            cgroup_us = times.cgroup.as_micros() as u64,
            cni_us = times.cni.as_micros() as u64,
            hostport_us = times.hostport.as_micros() as u64,
            policy_us = times.policy.as_micros() as u64,
            files_us = times.files.as_micros() as u64,
            ips = ?rec.ips(),
            "pod sandbox set up"
        );
        Ok(())
    }

    fn cgroup_path(&self, rec: &PodRecord) -> String {
        let parent = if rec.config.cgroup_parent.is_empty() {
            &self.cfg.default_cgroup_parent
        } else {
            &rec.config.cgroup_parent
        };
        format!("{}/sluice-{}", parent.trim_end_matches('/'), rec.id)
    }

    fn net_attach(&self, rec: &PodRecord) -> NetAttach {
        let m = &rec.config.metadata;
        NetAttach {
            pod_id: rec.id.clone(),
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            // A pin that is no longer a namespace (unmounted, or left from a previous boot)
            // must not reach the plugins: they reject it. DEL without a netns still releases
            // the IPAM lease, as the CNI spec allows.
            netns: rec.netns.clone().filter(|p| (self.deps.namespace_alive)(p)),
            annotations: rec.config.annotations.clone(),
            cgroup: rec.cgroup.clone(),
        }
    }

    // ---- stop / remove -------------------------------------------------------------------

    /// StopPodSandbox: succeeds for unknown ids and already-stopped pods.
    pub async fn stop(&self, id_or_prefix: &str) -> Result<(), PodError> {
        let Some(entry) = self.find(id_or_prefix)? else {
            return Ok(());
        };
        let _op = entry.op.lock().await;
        let mut rec = entry.get();
        let span = tracing::info_span!("stop_pod_sandbox", pod_id = %rec.id);
        async {
            // Containers first: StopPodSandbox forcibly terminates them (they are already
            // stopped gracefully by the kubelet), so nothing still uses the network below.
            let mut errors = self.stop_pod_containers(&rec.id).await;
            if rec.state == PodState::NotReady && rec.fully_released() && errors.is_empty() {
                return Ok(());
            }
            errors.extend(self.release_all(&mut rec, Teardown::Recorded).await);
            rec.state = PodState::NotReady;
            if rec.reason.is_empty() {
                rec.reason = "stopped".to_string();
            }
            let saved = self.persist(&rec).await;
            entry.set(rec.clone());
            self.refresh_gauges();
            saved?;
            if errors.is_empty() {
                tracing::info!("pod sandbox stopped");
                Ok(())
            } else {
                Err(PodError::Teardown {
                    id: rec.id.clone(),
                    errors,
                })
            }
        }
        .instrument(span)
        .await
    }

    /// RemovePodSandbox: stops what is left, removes the cgroup, files, record and name.
    /// Succeeds for unknown ids.
    pub async fn remove(&self, id_or_prefix: &str) -> Result<(), PodError> {
        let Some(entry) = self.find(id_or_prefix)? else {
            return Ok(());
        };
        let _op = entry.op.lock().await;
        let mut rec = entry.get();
        let span = tracing::info_span!("remove_pod_sandbox", pod_id = %rec.id);
        async {
            let mut errors = self.remove_pod_containers(&rec.id).await;
            errors.extend(self.release_all(&mut rec, Teardown::Recorded).await);
            errors.extend(self.remove_local(&mut rec));
            if !errors.is_empty() {
                rec.state = PodState::NotReady;
                let saved = self.persist(&rec).await;
                entry.set(rec.clone());
                saved?;
                return Err(PodError::Teardown {
                    id: rec.id.clone(),
                    errors,
                });
            }
            self.store.delete(&rec.id)?;
            self.write_pods().remove(&rec.id);
            self.refresh_gauges();
            let name = rec.config.metadata.reserved_name();
            let mut names = self.names();
            if names.get(&name) == Some(&rec.id) {
                names.remove(&name);
            }
            tracing::info!("pod sandbox removed");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Host ports → CNI DEL → namespaces, clearing each field of `rec` whose resource is
    /// released. Keeps going after a failure and returns every error.
    async fn release_all(&self, rec: &mut PodRecord, mode: Teardown) -> Vec<String> {
        let mut errors = Vec::new();
        let all = mode == Teardown::Everything;
        let host_net = rec.config.host_network();

        // Policy first, while the pod still holds its addresses. Not only when the record
        // says so: a pod created before policy was enabled is in the table since the start-up
        // rebuild. Withdrawing an unknown pod is free.
        if let Some(hook) = self.policy.get()
            && (rec.policy || !host_net)
        {
            let t = Instant::now();
            let r = hook
                .pod_down(&rec.id)
                .instrument(tracing::info_span!("policy_remove"))
                .await;
            self.deps.metrics.teardown_step("policy", t.elapsed());
            match r {
                Ok(()) => rec.policy = false,
                Err(e) => errors.push(format!("withdrawing network policy: {e}")),
            }
        }
        if rec.hostports || (all && !host_net) {
            let t = Instant::now();
            let r = self
                .deps
                .hostports
                .remove(&rec.id)
                .instrument(tracing::info_span!("hostport_remove"))
                .await;
            self.deps.metrics.teardown_step("hostport", t.elapsed());
            match r {
                Ok(()) => rec.hostports = false,
                Err(e) => errors.push(format!("withdrawing host ports: {}", error_chain(&e))),
            }
        }
        if rec.network.is_some() || (all && !host_net) {
            let attach = self.net_attach(rec);
            let t = Instant::now();
            let r = self
                .deps
                .network
                .detach(&attach)
                .instrument(tracing::info_span!("cni_del"))
                .await;
            self.deps.metrics.teardown_step("cni", t.elapsed());
            match r {
                Ok(()) => rec.network = None,
                Err(e) => errors.push(format!(
                    "detaching the pod network (CNI DEL): {}",
                    error_chain(e.as_ref())
                )),
            }
        }
        if rec.netns.is_some() || rec.ipc_ns.is_some() || rec.uts_ns.is_some() || all {
            let nsm = Arc::clone(&self.deps.namespaces);
            let t = Instant::now();
            let result = match PodId::new(&rec.id) {
                Ok(pod_id) => tokio::task::spawn_blocking(move || nsm.release(&pod_id))
                    .instrument(tracing::info_span!("nsmgr_release"))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| error_chain(&e))),
                Err(e) => Err(e.to_string()),
            };
            self.deps.metrics.teardown_step("netns", t.elapsed());
            match result {
                Ok(()) => {
                    rec.netns = None;
                    rec.ipc_ns = None;
                    rec.uts_ns = None;
                }
                Err(e) => errors.push(format!("releasing namespaces: {e}")),
            }
        }
        if let Some(pid) = rec.pause_pid {
            match stop_pause(pid) {
                Ok(()) => {
                    rec.pause_pid = None;
                    rec.pause_pid_ns = None;
                }
                Err(e) => errors.push(format!("stopping the pause process {pid}: {e}")),
            }
        }
        if all {
            errors.extend(self.remove_local(rec));
        }
        errors
    }

    /// The pod cgroup and the pod files directory.
    fn remove_local(&self, rec: &mut PodRecord) -> Vec<String> {
        let mut errors = Vec::new();
        let cg = rec.cgroup.clone().unwrap_or_else(|| self.cgroup_path(rec));
        match self.deps.cgroups.remove(&cg) {
            Ok(()) => rec.cgroup = None,
            Err(e) => errors.push(format!("removing the pod cgroup: {}", error_chain(&e))),
        }
        let dir = rec
            .files_dir
            .clone()
            .unwrap_or_else(|| self.cfg.files_dir.join(&rec.id));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => rec.files_dir = None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => rec.files_dir = None,
            Err(e) => errors.push(format!("removing pod files {}: {e}", dir.display())),
        }
        errors
    }

    /// Recomputes the pods-by-state and host-port gauges from the records (cheap, and always
    /// consistent, unlike incrementing on each transition).
    fn refresh_gauges(&self) {
        let (mut ready, mut not_ready, mut mappings) = (0i64, 0i64, 0i64);
        for e in self.read_pods().values() {
            let r = e.get();
            match r.state {
                PodState::Ready => {
                    ready += 1;
                    if r.hostports {
                        mappings += hostport_mappings(&r.config).len() as i64;
                    }
                }
                PodState::NotReady => not_ready += 1,
                PodState::Creating => {}
            }
        }
        let m = &self.deps.metrics;
        m.pods
            .get_or_create(&metrics::StateLabels { state: "ready" })
            .set(ready);
        m.pods
            .get_or_create(&metrics::StateLabels { state: "notready" })
            .set(not_ready);
        m.hostport_mappings.set(mappings);
        let mut by_state = [0i64; 4];
        for c in self.read_containers().values() {
            by_state[c.get().state as usize] += 1;
        }
        for (state, n) in ["created", "running", "exited", "unknown"]
            .iter()
            .zip(by_state)
        {
            m.containers
                .get_or_create(&metrics::StateLabels { state })
                .set(n);
        }
    }

    async fn persist(&self, rec: &PodRecord) -> Result<(), StoreError> {
        let store = self.store.clone();
        let rec = rec.clone();
        match tokio::task::spawn_blocking(move || store.save(&rec)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Io {
                path: self.store.dir().to_path_buf(),
                source: std::io::Error::other(e),
            }),
        }
    }

    // ---- recovery ------------------------------------------------------------------------

    /// Reloads state after a (re)start and reconciles it with the kernel. Call once, before
    /// serving.
    pub async fn recover(&self) -> Result<RecoveryReport, PodError> {
        let mut report = RecoveryReport::default();
        let (records, corrupt) = self.store.load_all()?;
        report.loaded = records.len();
        report.corrupt = corrupt.len();
        for c in &corrupt {
            tracing::error!(path = %c.path.display(), reason = %c.reason, "unreadable pod record kept aside");
            report.warnings.push(format!(
                "unreadable pod record {}: {}",
                c.path.display(),
                c.reason
            ));
        }

        for mut rec in records {
            if rec.state == PodState::Creating {
                tracing::warn!(pod_id = %rec.id, "pod was being created when sluice stopped; releasing it");
                let errors = self.release_all(&mut rec, Teardown::Everything).await;
                if errors.is_empty() {
                    self.store.delete(&rec.id)?;
                    report.removed_incomplete += 1;
                } else {
                    report.warnings.push(format!(
                        "releasing interrupted pod {}: {}",
                        rec.id,
                        errors.join("; ")
                    ));
                    self.persist(&rec).await?;
                }
                continue;
            }
            if rec.state == PodState::Ready {
                let dead = if !self.boot_id.is_empty() && rec.boot_id != self.boot_id {
                    Some("the node rebooted since the pod sandbox was created".to_string())
                } else {
                    rec.netns
                        .as_ref()
                        .filter(|p| !(self.deps.namespace_alive)(p))
                        .map(|p| format!("the pod network namespace {} is gone", p.display()))
                };
                if let Some(reason) = dead {
                    tracing::warn!(pod_id = %rec.id, %reason, "pod sandbox is no longer ready");
                    rec.state = PodState::NotReady;
                    rec.reason = reason;
                    self.persist(&rec).await?;
                    report.marked_not_ready += 1;
                }
            }
            self.names()
                .insert(rec.config.metadata.reserved_name(), rec.id.clone());
            self.write_pods().insert(rec.id.clone(), Entry::new(rec));
        }

        let pods: Vec<PodRecord> = self.read_pods().values().map(|e| e.get()).collect();

        // Containers kept running under their monitors; learn what happened meanwhile.
        let mut cwarn = Vec::new();
        match self.recover_containers(&mut cwarn).await {
            Ok(n) => tracing::info!(containers = n, "container state recovered"),
            Err(e) => cwarn.push(format!("loading container records: {e}")),
        }
        report.warnings.extend(cwarn);

        // CNI: release attachments (and leases) of pods sluice no longer knows.
        let live: Vec<String> = pods
            .iter()
            .filter(|p| p.network.is_some())
            .map(|p| p.id.clone())
            .collect();
        if let Err(e) = self.deps.network.gc(&live).await {
            tracing::warn!(error = %e, "CNI garbage collection failed");
            report.warnings.push(format!("CNI GC: {e}"));
        }

        // Host ports: the tables are rebuilt from the live pods in one transaction, which also
        // repairs a flushed ruleset.
        let live_ports: Vec<hostport::PodPorts> = pods
            .iter()
            .filter(|p| p.state == PodState::Ready && p.hostports)
            .map(|p| hostport::PodPorts {
                pod_id: p.id.clone(),
                pod_name: p.config.metadata.reserved_name(),
                ips: p.ips().to_vec(),
                mappings: hostport_mappings(&p.config),
            })
            .collect();
        if let Err(e) = self.deps.hostports.sync(&live_ports).await {
            tracing::error!(error = %e, "rebuilding the host port tables failed");
            report.warnings.push(format!("host port sync: {e}"));
        }

        // Namespace pins that no pod owns.
        let keep: Vec<PodId> = pods
            .iter()
            .filter(|p| p.netns.is_some() || p.ipc_ns.is_some() || p.uts_ns.is_some())
            .filter_map(|p| PodId::new(&p.id).ok())
            .collect();
        let nsm = Arc::clone(&self.deps.namespaces);
        match tokio::task::spawn_blocking(move || nsm.gc(&keep)).await {
            Ok(Ok(released)) => report.orphan_pins = released.len(),
            Ok(Err(e)) => report.warnings.push(format!("namespace GC: {e}")),
            Err(e) => report.warnings.push(format!("namespace GC: {e}")),
        }

        self.refresh_gauges();
        tracing::info!(
            loaded = report.loaded,
            removed_incomplete = report.removed_incomplete,
            marked_not_ready = report.marked_not_ready,
            orphan_pins = report.orphan_pins,
            warnings = report.warnings.len(),
            "pod state recovered"
        );
        Ok(report)
    }
}

#[derive(Default)]
struct StepTimes {
    netns: Duration,
    cgroup: Duration,
    cni: Duration,
    hostport: Duration,
    policy: Duration,
    files: Duration,
}

/// The CRI mappings that publish a host port, in the host-port manager's types.
fn hostport_mappings(cfg: &SandboxConfig) -> Vec<hostport::PortMapping> {
    cfg.port_mappings
        .iter()
        .filter(|m| m.host_port != 0)
        .map(|m| hostport::PortMapping {
            protocol: match m.protocol {
                Protocol::Tcp => hostport::Protocol::Tcp,
                Protocol::Udp => hostport::Protocol::Udp,
                Protocol::Sctp => hostport::Protocol::Sctp,
            },
            container_port: m.container_port,
            host_port: m.host_port,
            host_ip: m.host_ip,
        })
        .collect()
}

/// Starts `<exe> pause` in its own session (so it outlives a daemon restart) and returns the
/// holder's and the namespace init's host pids, which the holder prints.
fn start_pause(exe: &Path) -> Result<(i32, i32), String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("setsid")
        .arg(exe)
        .arg("pause")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running setsid {} pause: {e}", exe.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    let read = std::io::BufReader::new(stdout).read_line(&mut line);
    let parsed = line
        .split_whitespace()
        .map(str::parse::<i32>)
        .collect::<Result<Vec<_>, _>>();
    match (read, parsed.as_deref()) {
        (Ok(_), Ok([holder, init])) => Ok((*holder, *init)),
        _ => {
            let _ = child.kill();
            let out = child
                .wait_with_output()
                .map(|o| o.stderr)
                .unwrap_or_default();
            Err(format!(
                "the pause process did not report its pids (got {line:?}): {}",
                String::from_utf8_lossy(&out).trim()
            ))
        }
    }
    // The child is not waited for here: it lives in its own session and the daemon's reaper
    // collects it when it exits.
}

/// Asks the pause holder to end the PID namespace; gone already is fine.
fn stop_pause(pid: i32) -> Result<(), String> {
    use nix::sys::signal::{Signal, kill};
    match kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// 256 random bits as 64 hex characters, the id format of CRI runtimes.
fn new_pod_id() -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A pin is live when a namespace filesystem (nsfs) is mounted on it; after a reboot or an
/// external unmount it is a plain empty file.
pub fn is_live_namespace(path: &Path) -> bool {
    // NSFS_MAGIC from linux/magic.h.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == NSFS_MAGIC)
        .unwrap_or(false)
}
