//! Containers: the CRI container lifecycle on top of pods, images and the OCI runtime.
//!
//! CreateContainer resolves the pod (Ready) and the image, reserves the name, mounts the
//! overlay root filesystem (image layers + a per-container writable layer under
//! `<root>/overlay/<id>`), generates the runc spec joining the pod's pinned namespaces and cgroup
//! parent, has conmon + runc create it (bundle under `<runroot>/containers/<id>`), and persists
//! the record. The monitor (conmon) owns the container's stdio, log and exit status, so
//! containers survive a daemon restart; their state is always reconciled from its exit record
//! and `runc state` (`ContainerRuntime::status`).

pub mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::Instrument;

pub use types::*;

use crate::{ErrorKind, PodError, PodManager, PodRecord, PodState, new_pod_id, unix_nanos};

/// Where container images come from (the image service).
pub trait ImageSource: Send + Sync + std::fmt::Debug {
    /// The image named by `image` (reference, id or id prefix), `Ok(None)` if not present.
    fn resolve(&self, image: &str) -> Result<Option<ResolvedImage>, String>;
}

impl ImageSource for images::ImageService {
    fn resolve(&self, image: &str) -> Result<Option<ResolvedImage>, String> {
        let Some(rec) = self.status(image).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let layers = self
            .rootfs(&rec.id)
            .ok_or_else(|| format!("image {} has layers missing from the store", rec.id))?;
        let c = &rec.config;
        Ok(Some(ResolvedImage {
            id: rec.id.to_string(),
            image_ref: rec
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| rec.id.to_string()),
            layers,
            config: oci::spec::ImageConfig {
                entrypoint: c.entrypoint.clone(),
                cmd: c.cmd.clone(),
                env: c.env.clone(),
                working_dir: c.working_dir.clone(),
                user: c.user.clone(),
            },
            stop_signal: Some(c.stop_signal.clone()).filter(|s| !s.is_empty()),
        }))
    }
}

/// Tells the image service which images containers use; set once the pod manager exists
/// (the image service is opened first).
#[derive(Debug, Default)]
pub struct ImageUsageProxy {
    manager: std::sync::OnceLock<std::sync::Weak<PodManager>>,
}

impl ImageUsageProxy {
    pub fn set(&self, manager: &Arc<PodManager>) {
        let _ = self.manager.set(Arc::downgrade(manager));
    }
}

impl images::ImageUsage for ImageUsageProxy {
    fn containers_using(&self, image_id: &images::Digest) -> Vec<String> {
        let Some(m) = self.manager.get().and_then(std::sync::Weak::upgrade) else {
            return Vec::new();
        };
        let id = image_id.to_string();
        m.read_containers()
            .values()
            .map(|e| e.get())
            .filter(|c| c.image_id == id)
            .map(|c| c.id)
            .collect()
    }
}

pub(crate) struct CEntry {
    op: tokio::sync::Mutex<()>,
    record: RwLock<ContainerRecord>,
}

impl CEntry {
    pub(crate) fn new(record: ContainerRecord) -> Arc<Self> {
        Arc::new(Self {
            op: tokio::sync::Mutex::new(()),
            record: RwLock::new(record),
        })
    }

    pub(crate) fn get(&self) -> ContainerRecord {
        self.record
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, record: ContainerRecord) {
        *self
            .record
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = record;
    }
}

fn runtime_err(step: &'static str) -> impl Fn(oci::RuntimeError) -> PodError {
    move |e| {
        let kind = match &e {
            oci::RuntimeError::NotFound(_) => ErrorKind::NotFound,
            oci::RuntimeError::NotRunning(_) => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        };
        PodError::step(step, kind, e)
    }
}

fn signal_number(name: &str) -> Option<i32> {
    let name = name.trim();
    if let Ok(n) = name.parse::<i32>() {
        return Some(n);
    }
    let full = if name.starts_with("SIG") {
        name.to_string()
    } else {
        format!("SIG{name}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

impl PodManager {
    pub(crate) fn read_containers(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<CEntry>>> {
        self.containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_containers(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<CEntry>>> {
        self.containers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn container_names(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.container_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves a full container id or unique prefix.
    fn find_container(&self, id: &str) -> Result<Option<Arc<CEntry>>, PodError> {
        if id.is_empty() {
            return Err(PodError::InvalidArgument {
                field: "container_id".into(),
                message: "must not be empty".into(),
            });
        }
        let map = self.read_containers();
        if let Some(e) = map.get(id) {
            return Ok(Some(Arc::clone(e)));
        }
        let mut matches: Vec<&String> = map.keys().filter(|k| k.starts_with(id)).collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(map.get(matches[0]).cloned()),
            _ => {
                matches.sort();
                Err(PodError::Ambiguous {
                    prefix: id.to_string(),
                    matches: matches.into_iter().cloned().collect(),
                })
            }
        }
    }

    fn must_find_container(&self, id: &str) -> Result<Arc<CEntry>, PodError> {
        self.find_container(id)?
            .ok_or_else(|| PodError::ContainerNotFound(id.to_string()))
    }

    fn container_cgroup(&self, pod: &PodRecord, id: &str) -> String {
        let parent = if pod.config.cgroup_parent.is_empty() {
            &self.cfg.default_cgroup_parent
        } else {
            &pod.config.cgroup_parent
        };
        oci::spec::cgroup_path(parent, id)
    }

    async fn persist_container(&self, rec: &ContainerRecord) -> Result<(), PodError> {
        let store = self.cstore.clone();
        let rec = rec.clone();
        tokio::task::spawn_blocking(move || store.save(&rec))
            .await
            .map_err(|e| PodError::step("persisting the container", ErrorKind::Internal, e))?
            .map_err(PodError::from)
    }

    /// CreateContainer.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: ContainerConfig,
    ) -> Result<ContainerRecord, PodError> {
        let pod = self.status(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(PodError::step(
                "creating a container",
                ErrorKind::FailedPrecondition,
                format!("pod sandbox {} is not ready ({})", pod.id, pod.reason),
            ));
        }
        let name = config.reserved_name(&pod.config.metadata);
        let id = new_pod_id()
            .map_err(|e| PodError::step("generating a container id", ErrorKind::Internal, e))?;
        {
            let mut names = self.container_names();
            if let Some(existing) = names.get(&name) {
                return Err(PodError::ContainerNameReserved {
                    name,
                    id: existing.clone(),
                });
            }
            names.insert(name.clone(), id.clone());
        }
        let span = tracing::info_span!("create_container", container_id = %id, pod_id = %pod.id);
        let result = self
            .create_reserved(&pod, id, config)
            .instrument(span)
            .await;
        if result.is_err() {
            self.container_names().remove(&name);
        }
        result
    }

    async fn create_reserved(
        &self,
        pod: &PodRecord,
        id: String,
        config: ContainerConfig,
    ) -> Result<ContainerRecord, PodError> {
        let deps = &self.deps;
        let image = deps
            .images
            .resolve(&config.image)
            .map_err(|e| PodError::step("resolving the image", ErrorKind::Internal, e))?
            .ok_or_else(|| PodError::ImageNotFound(config.image.clone()))?;

        let overlay_dir = self.cfg.overlay_dir.join(&id);
        let bundle = self.cfg.bundles_dir.join(&id);
        // Mounted read-write even for a read-only rootfs: runc must create the mount points of
        // the pod files and bind mounts first, then applies `root.readonly` itself.
        let overlay = oci::rootfs::Overlay::in_dir(&overlay_dir, image.layers.clone(), false);
        let log_path = match &pod.config.log_directory {
            Some(dir) if !config.log_path.is_empty() => dir.join(&config.log_path),
            _ => bundle.join("container.log"),
        };
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config: config.clone(),
            state: ContainerState::Created,
            created_at: unix_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image_id: image.id.clone(),
            image_ref: image.image_ref.clone(),
            log_path: log_path.clone(),
            pid: 0,
            bundle: bundle.clone(),
            rootfs: overlay.target.clone(),
            upper_dir: overlay.upper.clone(),
        };

        let mounted = {
            let o = overlay.clone();
            tokio::task::spawn_blocking(move || o.mount())
                .instrument(tracing::info_span!("rootfs_mount"))
                .await
                .map_err(|e| PodError::step("mounting the rootfs", ErrorKind::Internal, e))?
        };
        if let Err(e) = mounted {
            let _ = std::fs::remove_dir_all(&overlay_dir);
            return Err(PodError::step(
                "mounting the rootfs",
                ErrorKind::Internal,
                e,
            ));
        }

        let created = self.create_in_runtime(pod, &rec, &image, &overlay).await;
        match created {
            Ok(c) => rec.pid = c.pid,
            Err(e) => {
                self.discard(&rec).await;
                return Err(e);
            }
        }
        if let Err(e) = self.persist_container(&rec).await {
            self.discard(&rec).await;
            return Err(e);
        }
        self.write_containers()
            .insert(id.clone(), CEntry::new(rec.clone()));
        self.refresh_gauges();
        tracing::info!(image = %rec.image_ref, "container created");
        Ok(rec)
    }

    async fn create_in_runtime(
        &self,
        pod: &PodRecord,
        rec: &ContainerRecord,
        image: &ResolvedImage,
        overlay: &oci::rootfs::Overlay,
    ) -> Result<oci::Created, PodError> {
        use oci::spec::{Namespaces, NsTarget, PidMode, PodFiles};
        let config = &rec.config;
        let ns = |p: &Option<PathBuf>| match p {
            Some(p) => NsTarget::Path(p.clone()),
            None => NsTarget::Host,
        };
        let pid = match config.pid {
            crate::NsMode::Container => PidMode::Container,
            crate::NsMode::Node => PidMode::Node,
            crate::NsMode::Pod => match &pod.pause_pid_ns {
                Some(p) => PidMode::Pod(p.clone()),
                None => PidMode::Container,
            },
            crate::NsMode::Target => {
                let target = self.must_find_container(&config.pid_target)?.get();
                if target.pid <= 0 || target.state != ContainerState::Running {
                    return Err(PodError::step(
                        "joining the target container's PID namespace",
                        ErrorKind::FailedPrecondition,
                        format!("container {} is not running", target.id),
                    ));
                }
                PidMode::Target(PathBuf::from(format!("/proc/{}/ns/pid", target.pid)))
            }
        };
        let files = pod.files_dir.clone();
        let pod_file = |name: &str| files.as_ref().map(|d| d.join(name));
        let mut user = config.user.clone();
        user.image_user = image.config.user.clone();
        let spec = oci::spec::ContainerSpec {
            id: rec.id.clone(),
            image: image.config.clone(),
            command: config.command.clone(),
            args: config.args.clone(),
            env: config.env.clone(),
            working_dir: config.working_dir.clone(),
            user,
            rootfs: overlay.target.clone(),
            readonly_rootfs: config.readonly_rootfs,
            mounts: config.mounts.clone(),
            pod_files: PodFiles {
                hosts: pod_file("hosts"),
                resolv_conf: pod_file("resolv.conf"),
                hostname: pod_file("hostname"),
                shm: None,
            },
            hostname: pod.config.hostname.clone(),
            namespaces: Namespaces {
                network: ns(&pod.netns),
                ipc: ns(&pod.ipc_ns),
                uts: ns(&pod.uts_ns),
                pid,
            },
            security: config.security.clone(),
            resources: config.resources.clone(),
            cgroup_parent: self.pod_cgroup_parent(pod),
            tty: config.tty,
            stdin: config.stdin,
            annotations: config.annotations.clone(),
        };
        let generated = oci::spec::generate(&spec, &self.deps.host).map_err(|e| {
            let kind = match e {
                oci::spec::SpecError::Read { .. } => ErrorKind::Internal,
                _ => ErrorKind::InvalidArgument,
            };
            PodError::step("generating the OCI spec", kind, e)
        })?;
        for a in &generated.adjustments {
            tracing::warn!(adjustment = ?a, "container spec adjusted to what this node allows");
        }
        self.deps
            .runtime
            .create(&oci::CreateRequest {
                id: &rec.id,
                bundle: &rec.bundle,
                spec: &generated.spec,
                log_path: &rec.log_path,
                stdin: config.stdin,
                stdin_once: config.stdin_once,
            })
            .instrument(tracing::info_span!("runtime_create"))
            .await
            .map_err(runtime_err("creating the container in the OCI runtime"))
    }

    fn pod_cgroup_parent(&self, pod: &PodRecord) -> String {
        if pod.config.cgroup_parent.is_empty() {
            self.cfg.default_cgroup_parent.clone()
        } else {
            pod.config.cgroup_parent.clone()
        }
    }

    /// Best-effort removal of everything a container holds; returns the errors.
    async fn discard(&self, rec: &ContainerRecord) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self
            .deps
            .runtime
            .delete(&rec.id)
            .instrument(tracing::info_span!("runtime_delete"))
            .await
        {
            errors.push(format!("deleting the container in runc: {e}"));
        }
        let target = rec.rootfs.clone();
        let overlay_dir = rec
            .upper_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let bundle = rec.bundle.clone();
        let local = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            if let Err(e) = oci::rootfs::unmount(&target) {
                errors.push(format!("unmounting the rootfs: {e}"));
            }
            for dir in [overlay_dir, bundle] {
                if dir.as_os_str().is_empty() {
                    continue;
                }
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => errors.push(format!("removing {}: {e}", dir.display())),
                }
            }
            errors
        })
        .await;
        match local {
            Ok(e) => errors.extend(e),
            Err(e) => errors.push(format!("cleanup task: {e}")),
        }
        errors
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<(), PodError> {
        let entry = self.must_find_container(id)?;
        let _op = entry.op.lock().await;
        // No runc state call: a created container's process waits in runc init until
        // `runc start`, so the record's Created is current (and runc start refuses otherwise).
        let mut rec = entry.get();
        if rec.state != ContainerState::Created {
            return Err(PodError::step(
                "starting the container",
                ErrorKind::FailedPrecondition,
                format!("container {} is {:?}, not created", rec.id, rec.state),
            ));
        }
        // Taken before the start: a process that exits at once must not look like it finished
        // before it started.
        let started_at = unix_nanos();
        self.deps
            .runtime
            .start(&rec.id)
            .instrument(tracing::info_span!("runtime_start", container_id = %rec.id))
            .await
            .map_err(runtime_err("starting the container"))?;
        rec.state = ContainerState::Running;
        rec.started_at = started_at;
        self.persist_container(&rec).await?;
        entry.set(rec);
        self.refresh_gauges();
        Ok(())
    }

    /// Reconciles the record with the runtime (exit record, `runc state`) and persists a
    /// change.
    /// The record, reconciled with the runtime only when it may be stale: a Running record
    /// whose monitor has written no exit file is still running (the rule ListContainers
    /// uses), which saves a `runc state` call on hot paths such as exec.
    async fn current(&self, entry: &CEntry) -> ContainerRecord {
        let rec = entry.get();
        if rec.state == ContainerState::Running && !rec.bundle.join("exit").exists() {
            return rec;
        }
        self.refresh(entry).await
    }

    /// The full id of a running container (by id or unique prefix): what Exec and Attach
    /// check before they hand out a streaming URL.
    pub async fn running_container_id(&self, id: &str) -> Result<String, PodError> {
        let entry = self.must_find_container(id)?;
        let rec = self.current(&entry).await;
        if rec.state != ContainerState::Running {
            return Err(PodError::step(
                "checking the container",
                ErrorKind::FailedPrecondition,
                format!(
                    "container {} is not running (state {:?})",
                    rec.id, rec.state
                ),
            ));
        }
        Ok(rec.id)
    }

    async fn refresh(&self, entry: &CEntry) -> ContainerRecord {
        let mut rec = entry.get();
        if rec.state == ContainerState::Exited {
            return rec;
        }
        let status = self.deps.runtime.status(&rec.id, &rec.bundle).await;
        let changed = apply_status(&mut rec, status);
        if changed {
            if rec.reason == "OOMKilled" {
                self.deps.metrics.oom_kills.inc();
            }
            if let Err(e) = self.persist_container(&rec).await {
                tracing::warn!(container_id = %rec.id, error = %e, "persisting the container state");
            }
            entry.set(rec.clone());
            self.refresh_gauges();
        }
        rec
    }

    /// StopContainer: the stop signal, then SIGKILL after `timeout`. Stopping a stopped
    /// container succeeds.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), PodError> {
        let entry = self.must_find_container(id)?;
        let _op = entry.op.lock().await;
        self.stop_locked(&entry, timeout).await
    }

    async fn stop_locked(&self, entry: &CEntry, timeout: Duration) -> Result<(), PodError> {
        let rec = self.refresh(entry).await;
        if matches!(rec.state, ContainerState::Exited) {
            return Ok(());
        }
        let signal = rec
            .config
            .stop_signal
            .as_deref()
            .or(self.image_stop_signal(&rec).as_deref())
            .and_then(signal_number)
            .unwrap_or(libc_sigterm());
        let outcome = self
            .deps
            .runtime
            .stop(&rec.id, &rec.bundle, signal, timeout)
            .instrument(tracing::info_span!("runtime_stop", container_id = %rec.id))
            .await;
        match outcome {
            Ok(_) | Err(oci::RuntimeError::NotRunning(_)) => {}
            Err(e) => return Err(runtime_err("stopping the container")(e)),
        }
        let rec = self.refresh(entry).await;
        tracing::info!(container_id = %rec.id, exit_code = rec.exit_code, "container stopped");
        Ok(())
    }

    fn image_stop_signal(&self, rec: &ContainerRecord) -> Option<String> {
        self.deps
            .images
            .resolve(&rec.image_id)
            .ok()
            .flatten()
            .and_then(|i| i.stop_signal)
    }

    /// RemoveContainer: kills a running container, then removes everything it holds.
    /// Succeeds for unknown ids.
    pub async fn remove_container(&self, id: &str) -> Result<(), PodError> {
        let Some(entry) = self.find_container(id)? else {
            return Ok(());
        };
        let _op = entry.op.lock().await;
        self.remove_locked(&entry).await
    }

    async fn remove_locked(&self, entry: &CEntry) -> Result<(), PodError> {
        let rec = entry.get();
        if !matches!(rec.state, ContainerState::Exited) {
            let _ = self.stop_locked(entry, Duration::ZERO).await;
        }
        let errors = self.discard(&rec).await;
        if !errors.is_empty() {
            return Err(PodError::Teardown {
                id: rec.id.clone(),
                errors,
            });
        }
        self.cstore.delete(&rec.id)?;
        self.write_containers().remove(&rec.id);
        self.refresh_gauges();
        let name = self
            .status(&rec.pod_id)
            .map(|p| rec.config.reserved_name(&p.config.metadata))
            .ok();
        let mut names = self.container_names();
        names.retain(|n, v| !(v == &rec.id || Some(n) == name.as_ref()));
        tracing::info!(container_id = %rec.id, "container removed");
        Ok(())
    }

    /// ContainerStatus (reconciled with the runtime).
    pub async fn container_status(&self, id: &str) -> Result<ContainerRecord, PodError> {
        let entry = self.must_find_container(id)?;
        Ok(self.refresh(&entry).await)
    }

    /// ListContainers, oldest first. Running containers are checked for an exit record
    /// (a file check, no runc call) so exits show up without a status call.
    pub async fn list_containers(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        let pod_id = match &filter.pod_id {
            Some(p) => match self.find(p) {
                Ok(Some(e)) => Some(e.get().id),
                _ => return Vec::new(),
            },
            None => None,
        };
        let entries: Vec<Arc<CEntry>> = self.read_containers().values().cloned().collect();
        let mut out = Vec::new();
        for e in entries {
            let mut rec = e.get();
            if rec.state == ContainerState::Running && rec.bundle.join("exit").exists() {
                rec = self.refresh(&e).await;
            }
            if filter
                .id
                .as_ref()
                .is_some_and(|id| !rec.id.starts_with(id.as_str()))
                || pod_id.as_ref().is_some_and(|p| &rec.pod_id != p)
                || filter.state.is_some_and(|s| s != rec.state)
                || !filter
                    .labels
                    .iter()
                    .all(|(k, v)| rec.config.labels.get(k) == Some(v))
            {
                continue;
            }
            out.push(rec);
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    /// ExecSync: runs `cmd` in the container and returns its output; a command still running
    /// at `timeout` is killed (with its process group) and reported as timed out.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecResult, PodError> {
        let (rec, spec) = self.running_container(id, "exec in the container").await?;
        let mut process = spec.process;
        process.args = cmd;
        process.terminal = false;
        let timeout = (!timeout.is_zero()).then_some(timeout);
        let out = self
            .deps
            .runtime
            .exec_sync(&rec.id, &rec.bundle, &process, timeout)
            .instrument(tracing::info_span!("runtime_exec", container_id = %rec.id))
            .await
            .map_err(runtime_err("exec in the container"))?;
        Ok(ExecResult {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
            timed_out: out.timed_out,
        })
    }

    /// The container with this id (or unique prefix), which must be running, and the OCI spec
    /// it was created with (for exec and attach). `step` names the operation in errors.
    pub(crate) async fn running_container(
        &self,
        id: &str,
        step: &'static str,
    ) -> Result<(ContainerRecord, oci::spec::oci::Spec), PodError> {
        let entry = self.must_find_container(id)?;
        let rec = self.current(&entry).await;
        if rec.state != ContainerState::Running {
            return Err(PodError::step(
                step,
                ErrorKind::FailedPrecondition,
                format!("container {} is not running", rec.id),
            ));
        }
        let spec_path = rec.bundle.join("config.json");
        let spec = tokio::fs::read(&spec_path)
            .await
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| {
                PodError::step(
                    "reading the container spec",
                    ErrorKind::Internal,
                    format!("{}: {e}", spec_path.display()),
                )
            })?;
        Ok((rec, spec))
    }

    /// ReopenContainerLog.
    pub async fn reopen_container_log(&self, id: &str) -> Result<(), PodError> {
        let entry = self.must_find_container(id)?;
        let rec = self.refresh(&entry).await;
        if rec.state != ContainerState::Running {
            return Err(PodError::step(
                "reopening the container log",
                ErrorKind::FailedPrecondition,
                format!("container {} is not running", rec.id),
            ));
        }
        self.deps
            .runtime
            .reopen_log(&rec.id, &rec.bundle, &rec.log_path)
            .await
            .map_err(runtime_err("reopening the container log"))
    }

    /// UpdateContainerResources.
    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: Resources,
    ) -> Result<(), PodError> {
        let entry = self.must_find_container(id)?;
        let _op = entry.op.lock().await;
        let mut rec = self.refresh(&entry).await;
        let linux =
            oci::spec::linux_resources(&resources, &self.deps.host, rec.config.security.privileged)
                .map_err(|e| {
                    PodError::step("converting resources", ErrorKind::InvalidArgument, e)
                })?;
        if matches!(rec.state, ContainerState::Created | ContainerState::Running) {
            self.deps
                .runtime
                .update(&rec.id, &linux)
                .await
                .map_err(runtime_err("updating container resources"))?;
        }
        rec.config.resources = resources;
        self.persist_container(&rec).await?;
        entry.set(rec);
        Ok(())
    }

    /// ContainerStats.
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats, PodError> {
        let entry = self.must_find_container(id)?;
        let rec = entry.get();
        Ok(self.stats_of(&rec))
    }

    fn stats_of(&self, rec: &ContainerRecord) -> ContainerStats {
        let cg = self
            .status(&rec.pod_id)
            .map(|p| self.container_cgroup(&p, &rec.id))
            .unwrap_or_default();
        let usage = oci::stats::cgroup_stats(&self.deps.hierarchies, &cg).unwrap_or_default();
        let layer = oci::rootfs::layer_usage(&rec.upper_dir).unwrap_or_default();
        ContainerStats {
            id: rec.id.clone(),
            pod_id: rec.pod_id.clone(),
            name: rec.config.name.clone(),
            attempt: rec.config.attempt,
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            timestamp: unix_nanos(),
            cpu_usage_ns: usage.cpu_usage_ns,
            memory_working_set_bytes: usage.memory_working_set_bytes,
            memory_usage_bytes: usage.memory_usage_bytes,
            writable_bytes: layer.bytes,
            writable_inodes: layer.inodes,
        }
    }

    /// ListContainerStats.
    pub async fn list_container_stats(&self, filter: &ContainerFilter) -> Vec<ContainerStats> {
        self.list_containers(filter)
            .await
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| self.stats_of(c))
            .collect()
    }

    /// PodSandboxStats: the sum of the pod's running containers.
    pub async fn pod_stats(&self, pod_id: &str) -> Result<PodStats, PodError> {
        let pod = self.status(pod_id)?;
        let containers = self
            .list_container_stats(&ContainerFilter {
                pod_id: Some(pod.id.clone()),
                ..Default::default()
            })
            .await;
        Ok(PodStats {
            pod_id: pod.id,
            timestamp: unix_nanos(),
            cpu_usage_ns: containers.iter().map(|c| c.cpu_usage_ns).sum(),
            memory_working_set_bytes: containers.iter().map(|c| c.memory_working_set_bytes).sum(),
            memory_usage_bytes: containers.iter().map(|c| c.memory_usage_bytes).sum(),
            containers,
        })
    }

    /// ListPodSandboxStats.
    pub async fn list_pod_stats(&self, filter: &crate::PodFilter) -> Vec<PodStats> {
        let mut out = Vec::new();
        for p in self.list(filter) {
            if let Ok(s) = self.pod_stats(&p.id).await {
                out.push(s);
            }
        }
        out
    }

    /// Stops (kills) every container of a pod: StopPodSandbox forcibly terminates them.
    pub(crate) async fn stop_pod_containers(&self, pod_id: &str) -> Vec<String> {
        self.for_pod_containers(pod_id, PodContainerOp::Stop).await
    }

    /// Removes every container of a pod (RemovePodSandbox).
    pub(crate) async fn remove_pod_containers(&self, pod_id: &str) -> Vec<String> {
        self.for_pod_containers(pod_id, PodContainerOp::Remove)
            .await
    }

    /// Runs `op` on each container of the pod under its lock; collects every failure.
    async fn for_pod_containers(&self, pod_id: &str, op: PodContainerOp) -> Vec<String> {
        let entries: Vec<Arc<CEntry>> = self
            .read_containers()
            .values()
            .filter(|e| e.get().pod_id == pod_id)
            .cloned()
            .collect();
        let mut errors = Vec::new();
        for e in entries {
            let _op = e.op.lock().await;
            let (verb, result) = match op {
                PodContainerOp::Stop => ("stopping", self.stop_locked(&e, Duration::ZERO).await),
                PodContainerOp::Remove => ("removing", self.remove_locked(&e).await),
            };
            if let Err(err) = result {
                errors.push(format!(
                    "{verb} container {}: {}",
                    e.get().id,
                    crate::error_chain(&err)
                ));
            }
        }
        errors
    }

    /// Loads container records and reconciles each with the runtime (start-up).
    pub(crate) async fn recover_containers(
        &self,
        warnings: &mut Vec<String>,
    ) -> Result<usize, PodError> {
        let (records, corrupt) = self.cstore.load_all()?;
        for c in corrupt {
            warnings.push(format!(
                "unreadable container record {}: {}",
                c.path.display(),
                c.reason
            ));
        }
        let n = records.len();
        for rec in records {
            let pod = self.status(&rec.pod_id).ok();
            if let Some(p) = &pod {
                self.container_names()
                    .insert(rec.config.reserved_name(&p.config.metadata), rec.id.clone());
            }
            let entry = CEntry::new(rec.clone());
            self.write_containers()
                .insert(rec.id.clone(), Arc::clone(&entry));
            let rec = self.refresh(&entry).await;
            if pod.is_none() {
                warnings.push(format!(
                    "container {} belongs to no known pod; removing it",
                    rec.id
                ));
                let _op = entry.op.lock().await;
                if let Err(e) = self.remove_locked(&entry).await {
                    warnings.push(format!("removing orphan container {}: {e}", rec.id));
                }
            }
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy)]
enum PodContainerOp {
    Stop,
    Remove,
}

fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

/// Applies a runtime status to a record; true when something changed.
fn apply_status(
    rec: &mut ContainerRecord,
    status: Result<oci::ContainerStatus, oci::RuntimeError>,
) -> bool {
    let before = rec.clone();
    match status {
        Ok(oci::ContainerStatus::Created { pid }) => {
            rec.state = ContainerState::Created;
            rec.pid = pid;
        }
        Ok(oci::ContainerStatus::Running { pid } | oci::ContainerStatus::Paused { pid }) => {
            rec.state = ContainerState::Running;
            rec.pid = pid;
        }
        Ok(oci::ContainerStatus::Exited {
            code,
            finished_at,
            oom_killed,
        }) => {
            rec.state = ContainerState::Exited;
            rec.exit_code = code;
            rec.pid = 0;
            rec.finished_at = finished_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or_default();
            if rec.started_at == 0 {
                rec.started_at = rec.finished_at;
            }
            // The exit record's time comes from a file mtime (a coarse, jiffy-granular clock);
            // started_at from a fine clock read before `runc start`. Never report an end
            // before the start.
            rec.finished_at = rec.finished_at.max(rec.started_at);
            rec.reason = if oom_killed {
                "OOMKilled".to_string()
            } else if code == 0 {
                "Completed".to_string()
            } else {
                "Error".to_string()
            };
        }
        Ok(oci::ContainerStatus::Unknown { reason }) => {
            rec.state = ContainerState::Unknown;
            rec.reason = "Unknown".to_string();
            rec.message = reason;
        }
        Err(e) => {
            rec.state = ContainerState::Unknown;
            rec.reason = "Unknown".to_string();
            rec.message = e.to_string();
        }
    }
    *rec != before
}
