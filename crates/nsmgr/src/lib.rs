//! Create, pin and release the Linux namespaces of a pod.
//!
//! Every pod sandbox gets its own network, IPC and UTS namespaces before any
//! container exists (unless the pod shares the host's). They are pinned by
//! bind mounts so that they outlive every process, and containers join them
//! by path. This is sluice's counterpart of CRI-O's `nsmgr` and its `pinns`
//! helper; unlike CRI-O, sluice does the work in-process on a dedicated OS
//! thread instead of exec'ing a binary.
//!
//! Layout (see [`PinDirs`]):
//! - network: `/run/netns/sluice-<pod-id>`, where `ip netns list` and
//!   `ip netns exec` find it;
//! - IPC and UTS: `/run/sluice/ns/{ipc,uts}/<pod-id>`.
//!
//! The crate's edge is the [`NamespaceManager`] trait: [`PinnedNamespaces`]
//! is the real implementation, and `fake::FakeNamespaceManager` (feature
//! `test-util`) an in-memory one for the tests of crates above.
//!
//! [`dial_tcp_in`] connects to a port on the loopback of a pod's network
//! namespace (port-forward) from a socket created inside it.
//!
//! The trait is synchronous: a `create` takes about a millisecond and blocks
//! on joining its namespace thread, so async callers run it in
//! `tokio::task::spawn_blocking`. No call ever changes the namespaces of the
//! calling thread.

#![forbid(unsafe_code)]

mod dial;
mod error;
mod loopback;
mod pinned;
mod types;
mod validate;

#[cfg(any(test, feature = "test-util"))]
pub mod fake;

pub use dial::{DialError, dial_tcp_in};
pub use error::{
    CreateError, GcError, ListError, LoopbackError, PinFailure, PodIdError, ReleaseError,
    RequestError,
};
pub use pinned::PinnedNamespaces;
pub use types::{
    MAX_POD_ID_LEN, NETNS_PREFIX, NamespaceKind, NamespaceLocation, NamespaceMode,
    NamespaceRequest, PinDirs, PodId, PodNamespaces,
};

/// Creates and removes the namespaces of pods.
///
/// All methods block briefly (syscalls, one short-lived thread per
/// `create`); call them from `spawn_blocking` in async code.
pub trait NamespaceManager: Send + Sync + std::fmt::Debug {
    /// Creates the private namespaces `request` asks for, configures them
    /// (hostname, sysctls, `lo` up) and pins them.
    ///
    /// The request is validated before anything is created. On failure,
    /// whatever this call created is released again.
    ///
    /// # Errors
    /// [`CreateError::InvalidRequest`] for a bad hostname or sysctl,
    /// [`CreateError::AlreadyExists`] when the pod is already pinned, and
    /// system errors naming the step, namespace and path.
    fn create(
        &self,
        pod_id: &PodId,
        request: &NamespaceRequest,
    ) -> Result<PodNamespaces, CreateError>;

    /// Unmounts and removes every pin of `pod_id`.
    ///
    /// Idempotent and best-effort: pins that are already gone, pin files
    /// that are no longer mounts, and namespaces still used by a process
    /// all count as success; after a failure the other pins are still
    /// released.
    ///
    /// # Errors
    /// [`ReleaseError`] lists every pin that could not be released.
    fn release(&self, pod_id: &PodId) -> Result<(), ReleaseError>;

    /// The pods that have at least one pin (or stale pin file), sorted.
    ///
    /// # Errors
    /// [`ListError`] when a pin directory cannot be read.
    fn list_pinned(&self) -> Result<Vec<PodId>, ListError>;

    /// Releases the pins of every pod not in `keep` (startup recovery) and
    /// returns the pods released.
    ///
    /// # Errors
    /// [`GcError::List`] when nothing could be listed, [`GcError::Release`]
    /// with the pods that were and were not released.
    fn gc(&self, keep: &[PodId]) -> Result<Vec<PodId>, GcError>;
}
