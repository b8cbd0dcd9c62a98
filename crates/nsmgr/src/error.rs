//! Typed errors. Each keeps the OS error and names the pod, namespace and
//! path involved.

use std::fmt;
use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::types::{NamespaceKind, PodId};

/// A pod id that cannot be used as a pin name.
#[derive(Debug, thiserror::Error)]
pub enum PodIdError {
    /// The id is empty.
    #[error("pod id is empty")]
    Empty,
    /// The id is longer than [`crate::MAX_POD_ID_LEN`].
    #[error("pod id is {len} bytes long, more than {max}")]
    TooLong {
        /// Length of the rejected id.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9._-]`.
    #[error(
        "pod id {id:?} contains {ch:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
    )]
    InvalidChar {
        /// The rejected id.
        id: String,
        /// The first offending character.
        ch: char,
    },
    /// The id starts with `.` or contains `..`.
    #[error("pod id {id:?} must not start with '.' or contain '..'")]
    Dots {
        /// The rejected id.
        id: String,
    },
}

/// A [`crate::NamespaceRequest`] that is rejected before anything is created.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The hostname is not a valid Linux hostname.
    #[error("hostname {hostname:?} is invalid: {reason}")]
    InvalidHostname {
        /// The rejected hostname.
        hostname: String,
        /// Why.
        reason: &'static str,
    },
    /// A hostname was given for a pod that shares the host's UTS namespace.
    #[error(
        "hostname {hostname:?} requires a private uts namespace, but the pod shares the host's"
    )]
    HostnameNeedsPrivateUts {
        /// The requested hostname.
        hostname: String,
    },
    /// The key is not a well-formed sysctl name.
    #[error("sysctl {key:?} is not a valid sysctl name")]
    InvalidSysctlName {
        /// The rejected key.
        key: String,
    },
    /// The key names a sysctl that no pod namespace scopes: setting it would
    /// change the whole node.
    #[error(
        "sysctl {key:?} is not namespaced; a pod may only set net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.*"
    )]
    SysctlNotNamespaced {
        /// The rejected key.
        key: String,
    },
    /// The key is namespaced, but the pod shares that namespace with the host.
    #[error(
        "sysctl {key:?} requires a private {namespace} namespace, but the pod shares the host's"
    )]
    SysctlNeedsPrivateNamespace {
        /// The rejected key.
        key: String,
        /// The namespace that scopes it.
        namespace: NamespaceKind,
    },
    /// The value is empty or contains a NUL byte.
    #[error("value {value:?} of sysctl {key:?} is empty or contains a NUL byte")]
    InvalidSysctlValue {
        /// The key.
        key: String,
        /// The rejected value.
        value: String,
    },
}

/// Why `create` failed. Whatever it had created is released again; if that
/// fails too, the error is [`CreateError::CleanupFailed`].
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The request was rejected before anything was created.
    #[error("invalid namespace request for pod {pod_id}")]
    InvalidRequest {
        /// The pod.
        pod_id: PodId,
        /// What is wrong.
        #[source]
        source: RequestError,
    },
    /// A pin for this pod already exists (the pod was created before, or a
    /// stale pin was left): it is left untouched.
    #[error("{namespace} namespace of pod {pod_id} is already pinned at {}", path.display())]
    AlreadyExists {
        /// The pod.
        pod_id: PodId,
        /// The namespace whose pin exists.
        namespace: NamespaceKind,
        /// The existing pin.
        path: PathBuf,
    },
    /// A pin directory could not be created.
    #[error("creating pin directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A pin directory could not be made a shared mount point.
    #[error("making {} a shared mount point: {step}", path.display())]
    MakeShared {
        /// The directory.
        path: PathBuf,
        /// The step that failed, e.g. `mount --bind`.
        step: &'static str,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// The thread that creates the namespaces could not be started.
    #[error("starting the namespace creation thread for pod {pod_id}")]
    SpawnThread {
        /// The pod.
        pod_id: PodId,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The namespace creation thread panicked (a bug).
    #[error("the namespace creation thread for pod {pod_id} panicked")]
    ThreadPanicked {
        /// The pod.
        pod_id: PodId,
    },
    /// `unshare(2)` failed.
    #[error("unsharing {namespaces} namespaces for pod {pod_id}")]
    Unshare {
        /// The pod.
        pod_id: PodId,
        /// The namespaces requested, e.g. `net+ipc+uts`.
        namespaces: String,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// `sethostname(2)` failed in the new UTS namespace.
    #[error("setting hostname {hostname:?} in the uts namespace of pod {pod_id}")]
    SetHostname {
        /// The pod.
        pod_id: PodId,
        /// The hostname.
        hostname: String,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// Writing a sysctl inside the new namespaces failed (no such key in a
    /// pod namespace, or a value the kernel rejects).
    #[error("setting sysctl {key}={value:?} ({}) for pod {pod_id}", path.display())]
    Sysctl {
        /// The pod.
        pod_id: PodId,
        /// The key as requested.
        key: String,
        /// The value.
        value: String,
        /// The `/proc/sys` file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Bringing up `lo` in the new network namespace failed.
    #[error("bringing up lo in the network namespace of pod {pod_id}")]
    Loopback {
        /// The pod.
        pod_id: PodId,
        /// What failed.
        #[source]
        source: LoopbackError,
    },
    /// The empty pin file could not be created.
    #[error("creating pin file {} for the {namespace} namespace of pod {pod_id}", path.display())]
    PinFile {
        /// The pod.
        pod_id: PodId,
        /// The namespace.
        namespace: NamespaceKind,
        /// The pin.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Bind-mounting the namespace onto its pin failed.
    #[error("bind-mounting the {namespace} namespace of pod {pod_id} onto {}", path.display())]
    BindMount {
        /// The pod.
        pod_id: PodId,
        /// The namespace.
        namespace: NamespaceKind,
        /// The pin.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// `create` failed and releasing what it had pinned failed too.
    #[error("create failed and releasing what it had pinned failed too: {cleanup}")]
    CleanupFailed {
        /// The original failure.
        #[source]
        error: Box<CreateError>,
        /// The failures of the cleanup.
        cleanup: ReleaseError,
    },
}

impl CreateError {
    /// True when the request itself is at fault (a caller error, CRI
    /// `InvalidArgument`), false for system failures.
    #[must_use]
    pub const fn is_invalid_request(&self) -> bool {
        matches!(self, Self::InvalidRequest { .. })
    }
}

/// Failure to bring up `lo`, by step of the netlink exchange.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// `socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)` failed.
    #[error("opening a NETLINK_ROUTE socket")]
    Socket(#[source] Errno),
    /// Sending `RTM_NEWLINK` failed.
    #[error("sending RTM_NEWLINK")]
    Send(#[source] Errno),
    /// Receiving the acknowledgement failed.
    #[error("receiving the RTM_NEWLINK acknowledgement")]
    Receive(#[source] Errno),
    /// The kernel answered with an error.
    #[error("the kernel rejected RTM_NEWLINK")]
    Kernel(#[source] Errno),
    /// The answer was not the acknowledgement we asked for.
    #[error("unexpected netlink reply ({len} bytes, type {msg_type}, seq {seq})")]
    UnexpectedReply {
        /// Bytes received.
        len: usize,
        /// `nlmsg_type`, 0 if too short to tell.
        msg_type: u16,
        /// `nlmsg_seq`, 0 if too short to tell.
        seq: u32,
    },
}

/// One pin that could not be released.
#[derive(Debug, thiserror::Error)]
pub enum PinFailure {
    /// `umount2(MNT_DETACH)` failed with something else than "not mounted".
    #[error("unmounting the {namespace} pin {}: {errno}", path.display())]
    Unmount {
        /// The namespace.
        namespace: NamespaceKind,
        /// The pin.
        path: PathBuf,
        /// The OS error.
        errno: Errno,
    },
    /// The pin stayed a mount point after repeated unmounts.
    #[error("the {namespace} pin {} is still mounted after {attempts} unmounts", path.display())]
    StillMounted {
        /// The namespace.
        namespace: NamespaceKind,
        /// The pin.
        path: PathBuf,
        /// Unmounts tried.
        attempts: usize,
    },
    /// The pin file could not be removed.
    #[error("removing the {namespace} pin {}: {error}", path.display())]
    Remove {
        /// The namespace.
        namespace: NamespaceKind,
        /// The pin.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
}

/// Every failure met while releasing one pod's pins (release goes on after
/// a failure).
#[derive(Debug, thiserror::Error)]
#[error("releasing the namespaces of pod {pod_id}: {}", FailureList(failures))]
pub struct ReleaseError {
    /// The pod.
    pub pod_id: PodId,
    /// One entry per failed step, never empty.
    pub failures: Vec<PinFailure>,
}

/// Reading a pin directory failed.
#[derive(Debug, thiserror::Error)]
#[error("listing pins in {}", path.display())]
pub struct ListError {
    /// The directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// Why `gc` did not finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The pins could not be listed; nothing was removed.
    #[error("garbage-collecting pod namespaces")]
    List(#[from] ListError),
    /// Some pods could not be released; the others were.
    #[error("garbage-collecting pod namespaces: released {} pod(s), {} failed: {}", removed.len(), errors.len(), FailureList(errors))]
    Release {
        /// Pods whose pins were all removed.
        removed: Vec<PodId>,
        /// One entry per pod that failed.
        errors: Vec<ReleaseError>,
    },
}

/// Displays a list of errors as `a; b; c`.
struct FailureList<'a, E>(&'a [E]);

impl<E: fmt::Display> fmt::Display for FailureList<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn release_error_lists_every_failure_with_namespace_and_path() {
        let err = ReleaseError {
            pod_id: PodId::new("p1").expect("valid"),
            failures: vec![
                PinFailure::Unmount {
                    namespace: NamespaceKind::Net,
                    path: PathBuf::from("/run/netns/sluice-p1"),
                    errno: Errno::EPERM,
                },
                PinFailure::Remove {
                    namespace: NamespaceKind::Uts,
                    path: PathBuf::from("/run/sluice/ns/uts/p1"),
                    error: io::Error::from(Errno::EBUSY),
                },
            ],
        };
        let text = err.to_string();
        for needle in [
            "pod p1",
            "net pin /run/netns/sluice-p1",
            "EPERM",
            "uts pin /run/sluice/ns/uts/p1",
            "busy",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text:?}");
        }
    }

    #[test]
    fn create_errors_keep_the_os_error_as_source() {
        let err = CreateError::BindMount {
            pod_id: PodId::new("p1").expect("valid"),
            namespace: NamespaceKind::Ipc,
            path: PathBuf::from("/run/sluice/ns/ipc/p1"),
            source: Errno::EACCES,
        };
        assert_eq!(
            err.to_string(),
            "bind-mounting the ipc namespace of pod p1 onto /run/sluice/ns/ipc/p1"
        );
        let source = err.source().expect("source kept");
        assert_eq!(source.downcast_ref::<Errno>(), Some(&Errno::EACCES));
    }
}
