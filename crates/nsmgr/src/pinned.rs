//! The real [`NamespaceManager`]: namespaces created by `unshare(2)` on a
//! dedicated thread and pinned by bind mounts.
//!
//! `create` in order:
//! 1. validate the request (nothing touched yet);
//! 2. make sure the pin directories exist and are shared mount points, as
//!    `ip netns add` does for `/run/netns`;
//! 3. on a new OS thread (never a tokio worker: `unshare` changes the
//!    calling thread for good): `unshare` the private namespaces, set the
//!    hostname, write the sysctls through `/proc/sys`, bring up `lo`, then
//!    bind-mount `/proc/thread-self/ns/<type>` onto an empty pin file for
//!    each namespace. The thread then exits; the bind mounts keep the
//!    namespaces alive without any process in them.
//!
//! Everything that can fail inside the namespaces happens before the first
//! pin, so such a failure leaves nothing behind: the namespaces die with the
//! thread. A failure while pinning releases the pins this call made (never
//! one that already existed).
//!
//! Why `/proc/sys` is written from that thread: `/proc/sys/net` and the IPC
//! sysctls resolve to the namespaces of the task that looks them up
//! (`net_ctl_header_lookup` uses `current->nsproxy`), so the same path shows
//! the pod's values on the namespace thread and the host's values elsewhere.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::sethostname;
use tracing::{debug, warn};

use crate::NamespaceManager;
use crate::error::{CreateError, GcError, ListError, PinFailure, ReleaseError};
use crate::loopback;
use crate::types::{NamespaceKind, NamespaceRequest, PinDirs, PodId, PodNamespaces};
use crate::validate::{Sysctl, validate_request};

/// Unmounts tried on one pin before giving up: more than one only when
/// something stacked extra mounts on it.
const MAX_UNMOUNTS: usize = 8;

/// Namespaces pinned under [`PinDirs`] (`/run/netns` and `/run/sluice/ns` by
/// default).
#[derive(Debug)]
pub struct PinnedNamespaces {
    dirs: PinDirs,
    /// Directories already made shared mount points by this instance.
    shared: Mutex<Vec<PathBuf>>,
}

impl Default for PinnedNamespaces {
    fn default() -> Self {
        Self::new(PinDirs::default())
    }
}

impl PinnedNamespaces {
    /// A manager pinning under `dirs`. Nothing is touched until `create`.
    #[must_use]
    pub fn new(dirs: PinDirs) -> Self {
        Self {
            dirs,
            shared: Mutex::new(Vec::new()),
        }
    }

    /// The directories this manager pins in.
    #[must_use]
    pub const fn dirs(&self) -> &PinDirs {
        &self.dirs
    }

    /// Creates the pin directories that `request` needs and makes them shared
    /// mount points (once per directory and manager).
    fn prepare_dirs(&self, request: &NamespaceRequest) -> Result<(), CreateError> {
        let mut roots = Vec::new();
        if request.network.is_private() {
            roots.push(self.dirs.netns_dir.clone());
        }
        if request.ipc.is_private() || request.uts.is_private() {
            roots.push(self.dirs.ns_dir.clone());
        }
        for kind in NamespaceKind::ALL {
            if request.mode(kind).is_private() {
                create_dir(&self.dirs.dir(kind))?;
            }
        }
        // A poisoned lock only means another create panicked; the list is
        // still a valid cache.
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for root in roots {
            if !shared.contains(&root) {
                make_shared(&root)?;
                shared.push(root);
            }
        }
        Ok(())
    }
}

impl NamespaceManager for PinnedNamespaces {
    #[tracing::instrument(skip_all, fields(pod_id = %pod_id))]
    fn create(
        &self,
        pod_id: &PodId,
        request: &NamespaceRequest,
    ) -> Result<PodNamespaces, CreateError> {
        let sysctls = validate_request(request).map_err(|source| CreateError::InvalidRequest {
            pod_id: pod_id.clone(),
            source,
        })?;
        let namespaces = self.dirs.locations(pod_id, request);
        let pins: Vec<(NamespaceKind, PathBuf)> = NamespaceKind::ALL
            .into_iter()
            .filter_map(|kind| Some((kind, namespaces.get(kind).pin_path()?.to_path_buf())))
            .collect();
        if pins.is_empty() {
            debug!("pod shares every namespace with the host; nothing to create");
            return Ok(namespaces);
        }
        self.prepare_dirs(request)?;

        let job = Job {
            pod_id: pod_id.clone(),
            hostname: request.hostname.clone(),
            sysctls,
            pins,
        };
        let worker = thread::Builder::new()
            .name("sluice-nsmgr".to_owned())
            .spawn(move || job.run())
            .map_err(|source| CreateError::SpawnThread {
                pod_id: pod_id.clone(),
                source,
            })?;
        worker.join().map_err(|_| CreateError::ThreadPanicked {
            pod_id: pod_id.clone(),
        })??;
        debug!(?namespaces, "pod namespaces pinned");
        Ok(namespaces)
    }

    #[tracing::instrument(skip_all, fields(pod_id = %pod_id))]
    fn release(&self, pod_id: &PodId) -> Result<(), ReleaseError> {
        let pins: Vec<_> = NamespaceKind::ALL
            .into_iter()
            .map(|kind| (kind, self.dirs.pin_path(kind, pod_id)))
            .collect();
        release_pins(pod_id, &pins)
    }

    fn list_pinned(&self) -> Result<Vec<PodId>, ListError> {
        let mut pods = Vec::new();
        for kind in NamespaceKind::ALL {
            let dir = self.dirs.dir(kind);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ListError { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| ListError {
                    path: dir.clone(),
                    source,
                })?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                match PinDirs::pod_id_of(kind, name) {
                    Some(Ok(pod_id)) => pods.push(pod_id),
                    Some(Err(error)) => {
                        warn!(dir = %dir.display(), name, %error, "ignoring pin with an invalid pod id");
                    }
                    None => {}
                }
            }
        }
        pods.sort();
        pods.dedup();
        Ok(pods)
    }

    #[tracing::instrument(skip_all)]
    fn gc(&self, keep: &[PodId]) -> Result<Vec<PodId>, GcError> {
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for pod_id in self.list_pinned()? {
            if keep.contains(&pod_id) {
                continue;
            }
            match self.release(&pod_id) {
                Ok(()) => removed.push(pod_id),
                Err(e) => errors.push(e),
            }
        }
        if !removed.is_empty() {
            debug!(?removed, "released orphaned pod namespaces");
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(GcError::Release { removed, errors })
        }
    }
}

/// Everything the namespace thread needs, owned.
struct Job {
    pod_id: PodId,
    hostname: Option<String>,
    sysctls: Vec<Sysctl>,
    /// Namespaces to create and where to pin them, in [`NamespaceKind::ALL`]
    /// order.
    pins: Vec<(NamespaceKind, PathBuf)>,
}

impl Job {
    /// Runs on the dedicated thread, which exits right after.
    fn run(self) -> Result<(), CreateError> {
        let flags = self
            .pins
            .iter()
            .fold(CloneFlags::empty(), |flags, (kind, _)| {
                flags
                    | match kind {
                        NamespaceKind::Net => CloneFlags::CLONE_NEWNET,
                        NamespaceKind::Ipc => CloneFlags::CLONE_NEWIPC,
                        NamespaceKind::Uts => CloneFlags::CLONE_NEWUTS,
                    }
            });
        unshare(flags).map_err(|source| CreateError::Unshare {
            pod_id: self.pod_id.clone(),
            namespaces: self
                .pins
                .iter()
                .map(|(kind, _)| kind.proc_name())
                .collect::<Vec<_>>()
                .join("+"),
            source,
        })?;
        if let Some(hostname) = &self.hostname {
            sethostname(hostname).map_err(|source| CreateError::SetHostname {
                pod_id: self.pod_id.clone(),
                hostname: hostname.clone(),
                source,
            })?;
        }
        for sysctl in &self.sysctls {
            write_sysctl(sysctl).map_err(|source| CreateError::Sysctl {
                pod_id: self.pod_id.clone(),
                key: sysctl.key.clone(),
                value: sysctl.value.clone(),
                path: sysctl.path.clone(),
                source,
            })?;
        }
        if flags.contains(CloneFlags::CLONE_NEWNET) {
            loopback::set_up().map_err(|source| CreateError::Loopback {
                pod_id: self.pod_id.clone(),
                source,
            })?;
        }
        self.pin_all()
    }

    /// Pins every namespace; on failure releases the pins made so far.
    fn pin_all(&self) -> Result<(), CreateError> {
        for (done, (kind, path)) in self.pins.iter().enumerate() {
            if let Err(error) = pin(&self.pod_id, *kind, path) {
                return match release_pins(&self.pod_id, &self.pins[..done]) {
                    Ok(()) => Err(error),
                    Err(cleanup) => Err(CreateError::CleanupFailed {
                        error: Box::new(error),
                        cleanup,
                    }),
                };
            }
        }
        Ok(())
    }
}

/// Writes one sysctl through `/proc/sys`; must run on the namespace thread.
fn write_sysctl(sysctl: &Sysctl) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(&sysctl.path)?;
    file.write_all(sysctl.value.as_bytes())
}

/// Pins the calling thread's namespace of `kind` at `path`, like
/// `ip netns add`: an empty file created exclusively (so an existing pin is
/// never replaced), then a bind mount of the thread's nsfs file onto it.
fn pin(pod_id: &PodId, kind: NamespaceKind, path: &Path) -> Result<(), CreateError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
    {
        Ok(file) => drop(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(CreateError::AlreadyExists {
                pod_id: pod_id.clone(),
                namespace: kind,
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(CreateError::PinFile {
                pod_id: pod_id.clone(),
                namespace: kind,
                path: path.to_path_buf(),
                source,
            });
        }
    }
    // `thread-self`, not `self`: `/proc/self` is the thread group leader,
    // which stays in the host's namespaces.
    let source = format!("/proc/thread-self/ns/{}", kind.proc_name());
    if let Err(errno) = mount(
        Some(source.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        if let Err(error) = fs::remove_file(path) {
            warn!(path = %path.display(), %error, "removing the pin file after a failed bind mount");
        }
        return Err(CreateError::BindMount {
            pod_id: pod_id.clone(),
            namespace: kind,
            path: path.to_path_buf(),
            source: errno,
        });
    }
    Ok(())
}

/// Unmounts and removes every pin in `pins`, going on after failures.
/// Missing pins, and pin files that are no longer mounts, count as released.
fn release_pins(pod_id: &PodId, pins: &[(NamespaceKind, PathBuf)]) -> Result<(), ReleaseError> {
    let mut failures = Vec::new();
    for (kind, path) in pins {
        if let Err(failure) = release_pin(*kind, path) {
            failures.push(failure);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ReleaseError {
            pod_id: pod_id.clone(),
            failures,
        })
    }
}

fn release_pin(kind: NamespaceKind, path: &Path) -> Result<(), PinFailure> {
    // MNT_DETACH: succeeds even while a process has the namespace open or
    // lives in it; the kernel frees the namespace when the last user goes.
    let mut unmounted = false;
    for _ in 0..MAX_UNMOUNTS {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            // EINVAL: not a mount point (already unmounted, or a stale file
            // after a reboot). ENOENT: already removed.
            Err(Errno::EINVAL | Errno::ENOENT) => {
                unmounted = true;
                break;
            }
            Err(errno) => {
                return Err(PinFailure::Unmount {
                    namespace: kind,
                    path: path.to_path_buf(),
                    errno,
                });
            }
        }
    }
    if !unmounted {
        return Err(PinFailure::StillMounted {
            namespace: kind,
            path: path.to_path_buf(),
            attempts: MAX_UNMOUNTS,
        });
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(PinFailure::Remove {
            namespace: kind,
            path: path.to_path_buf(),
            error,
        }),
    }
}

fn create_dir(path: &Path) -> Result<(), CreateError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| CreateError::CreateDir {
            path: path.to_path_buf(),
            source,
        })
}

/// Makes `dir` a shared mount point, the way `ip netns add` prepares
/// `/run/netns` (iproute2 `ip/ipnetns.c`, `netns_add`): try
/// `mount --make-rshared`; if the kernel answers `EINVAL` because `dir` is
/// not a mount point, bind-mount it onto itself and try again.
///
/// Shared propagation means that unmounting a pin here also unmounts its
/// copies in mount namespaces created later from this one (containers,
/// other daemons), so the namespace can actually be freed.
///
/// Unlike iproute2 the upgrade step runs under an exclusive `flock` on the
/// directory, so two sluice processes (or threads) racing here cannot stack
/// two self bind mounts.
fn make_shared(dir: &Path) -> Result<(), CreateError> {
    let make_rshared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    let fail = |step, source| CreateError::MakeShared {
        path: dir.to_path_buf(),
        step,
        source,
    };
    match make_rshared() {
        Ok(()) => return Ok(()),
        Err(Errno::EINVAL) => {}
        Err(errno) => return Err(fail("mount --make-rshared", errno)),
    }
    let handle = File::open(dir).map_err(|source| CreateError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let _lock =
        Flock::lock(handle, FlockArg::LockExclusive).map_err(|(_, errno)| fail("flock", errno))?;
    // Someone may have done the upgrade while we waited for the lock.
    match make_rshared() {
        Ok(()) => return Ok(()),
        Err(Errno::EINVAL) => {}
        Err(errno) => return Err(fail("mount --make-rshared", errno)),
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|errno| fail("mount --rbind onto itself", errno))?;
    make_rshared().map_err(|errno| fail("mount --make-rshared", errno))?;
    debug!(dir = %dir.display(), "made the pin directory a shared mount point");
    Ok(())
}
