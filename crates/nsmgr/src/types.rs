//! Domain types: pod ids, namespace kinds and modes, requests and results.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::PodIdError;

/// Longest pod id we accept. CRI sandbox ids are 64 hex characters; the
/// limit keeps `sluice-<id>` far below `NAME_MAX` (255).
pub const MAX_POD_ID_LEN: usize = 128;

/// A validated pod id, safe to use as a file name in the pin directories.
///
/// Only ASCII letters, digits, `-`, `_` and `.` are allowed, it may not start
/// with `.` nor contain `..`, and it is at most [`MAX_POD_ID_LEN`] bytes long.
/// That rules out `/`, NUL, `.` and `..`, so a pod id can never escape the
/// directory it is pinned in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodId(String);

impl PodId {
    /// Validates `id` and wraps it.
    ///
    /// # Errors
    /// [`PodIdError`] names what is wrong with `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, PodIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(PodIdError::Empty);
        }
        if id.len() > MAX_POD_ID_LEN {
            return Err(PodIdError::TooLong {
                len: id.len(),
                max: MAX_POD_ID_LEN,
            });
        }
        if let Some(ch) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(PodIdError::InvalidChar { id, ch });
        }
        if id.starts_with('.') || id.contains("..") {
            return Err(PodIdError::Dots { id });
        }
        Ok(Self(id))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PodId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for PodId {
    type Err = PodIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for PodId {
    type Error = PodIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for PodId {
    type Error = PodIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

/// The namespaces a pod may get privately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceKind {
    /// Network namespace (`CLONE_NEWNET`).
    Net,
    /// System V IPC and POSIX message queue namespace (`CLONE_NEWIPC`).
    Ipc,
    /// Hostname and NIS domain name namespace (`CLONE_NEWUTS`).
    Uts,
}

impl NamespaceKind {
    /// All kinds, in the order they are pinned and released.
    pub const ALL: [Self; 3] = [Self::Net, Self::Ipc, Self::Uts];

    /// The name the kernel uses under `/proc/<pid>/ns/`.
    #[must_use]
    pub const fn proc_name(self) -> &'static str {
        match self {
            Self::Net => "net",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
        }
    }
}

impl fmt::Display for NamespaceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.proc_name())
    }
}

/// Whether a pod gets its own namespace or shares the host's
/// (CRI `NamespaceMode` `POD` / `NODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NamespaceMode {
    /// A new namespace, private to the pod and pinned.
    #[default]
    Pod,
    /// The host's namespace; nothing is created or pinned.
    Node,
}

impl NamespaceMode {
    /// True for [`NamespaceMode::Pod`].
    #[must_use]
    pub const fn is_private(self) -> bool {
        matches!(self, Self::Pod)
    }
}

/// What `create` should set up for a pod.
///
/// The default is private net, ipc and uts namespaces, the inherited
/// hostname and no sysctls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceRequest {
    /// Network namespace (CRI `NamespaceOption.network`).
    pub network: NamespaceMode,
    /// IPC namespace (CRI `NamespaceOption.ipc`).
    pub ipc: NamespaceMode,
    /// UTS namespace. CRI has no option for it: like CRI-O, the caller
    /// shares the host's UTS namespace exactly when the pod uses the host
    /// network.
    pub uts: NamespaceMode,
    /// Hostname to set inside the new UTS namespace. Requires
    /// `uts == Pod`; `None` keeps the host's name (copied at unshare).
    pub hostname: Option<String>,
    /// Sysctls (CRI `LinuxPodSandboxConfig.sysctls`), applied inside the new
    /// namespaces. Keys use `.` (`net.ipv4.ip_forward`) or `/`
    /// (`net/ipv4/conf/eth0.100/forwarding`) as separator.
    pub sysctls: BTreeMap<String, String>,
}

impl NamespaceRequest {
    /// The mode requested for `kind`.
    #[must_use]
    pub const fn mode(&self, kind: NamespaceKind) -> NamespaceMode {
        match kind {
            NamespaceKind::Net => self.network,
            NamespaceKind::Ipc => self.ipc,
            NamespaceKind::Uts => self.uts,
        }
    }
}

/// Where one of a pod's namespaces lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamespaceLocation {
    /// The pod shares the host's namespace (mode `NODE`): containers must
    /// not join or create one.
    Host,
    /// A private namespace pinned by a bind mount at this path; containers
    /// join it with `setns` (the OCI spec's `linux.namespaces[].path`).
    Pinned(PathBuf),
}

impl NamespaceLocation {
    /// The pin path, or `None` for the host's namespace.
    #[must_use]
    pub fn pin_path(&self) -> Option<&Path> {
        match self {
            Self::Host => None,
            Self::Pinned(path) => Some(path),
        }
    }
}

/// The namespaces of one pod, as returned by `create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNamespaces {
    /// The pod these belong to.
    pub pod_id: PodId,
    /// Network namespace.
    pub net: NamespaceLocation,
    /// IPC namespace.
    pub ipc: NamespaceLocation,
    /// UTS namespace.
    pub uts: NamespaceLocation,
}

impl PodNamespaces {
    /// The location of the namespace of `kind`.
    #[must_use]
    pub const fn get(&self, kind: NamespaceKind) -> &NamespaceLocation {
        match kind {
            NamespaceKind::Net => &self.net,
            NamespaceKind::Ipc => &self.ipc,
            NamespaceKind::Uts => &self.uts,
        }
    }
}

/// Directories that hold the pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDirs {
    /// Network namespace pins, named `sluice-<pod-id>`. The default,
    /// `/run/netns`, is where iproute2 looks, so `ip netns list` and
    /// `ip netns exec sluice-<pod-id>` work for operators.
    pub netns_dir: PathBuf,
    /// Other pins, at `<ns_dir>/ipc/<pod-id>` and `<ns_dir>/uts/<pod-id>`.
    pub ns_dir: PathBuf,
}

/// Prefix of network namespace pin names in [`PinDirs::netns_dir`].
pub const NETNS_PREFIX: &str = "sluice-";

impl Default for PinDirs {
    fn default() -> Self {
        Self {
            netns_dir: PathBuf::from("/run/netns"),
            ns_dir: PathBuf::from("/run/sluice/ns"),
        }
    }
}

impl PinDirs {
    /// The directory that holds pins of `kind`.
    #[must_use]
    pub fn dir(&self, kind: NamespaceKind) -> PathBuf {
        match kind {
            NamespaceKind::Net => self.netns_dir.clone(),
            NamespaceKind::Ipc | NamespaceKind::Uts => self.ns_dir.join(kind.proc_name()),
        }
    }

    /// The pin path of `kind` for `pod_id`.
    #[must_use]
    pub fn pin_path(&self, kind: NamespaceKind, pod_id: &PodId) -> PathBuf {
        match kind {
            NamespaceKind::Net => self.netns_dir.join(format!("{NETNS_PREFIX}{pod_id}")),
            NamespaceKind::Ipc | NamespaceKind::Uts => self.dir(kind).join(pod_id.as_str()),
        }
    }

    /// The pod id a pin file name in the directory of `kind` belongs to, if
    /// it is one of ours.
    pub(crate) fn pod_id_of(
        kind: NamespaceKind,
        file_name: &str,
    ) -> Option<Result<PodId, PodIdError>> {
        let id = match kind {
            NamespaceKind::Net => file_name.strip_prefix(NETNS_PREFIX)?,
            NamespaceKind::Ipc | NamespaceKind::Uts => file_name,
        };
        Some(PodId::new(id))
    }

    /// The locations `create` reports for `pod_id` under `request`.
    #[must_use]
    pub fn locations(&self, pod_id: &PodId, request: &NamespaceRequest) -> PodNamespaces {
        let location = |kind| {
            if request.mode(kind).is_private() {
                NamespaceLocation::Pinned(self.pin_path(kind, pod_id))
            } else {
                NamespaceLocation::Host
            }
        };
        PodNamespaces {
            pod_id: pod_id.clone(),
            net: location(NamespaceKind::Net),
            ipc: location(NamespaceKind::Ipc),
            uts: location(NamespaceKind::Uts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ids_that_cannot_escape_a_directory_are_accepted() {
        for ok in ["a", "0123abcd", "pod_1.x-y", &"f".repeat(MAX_POD_ID_LEN)] {
            assert_eq!(
                PodId::new(ok).map(|p| p.to_string()).ok().as_deref(),
                Some(ok)
            );
        }
    }

    #[test]
    fn bad_pod_ids_are_rejected_with_the_reason() {
        assert!(matches!(PodId::new(""), Err(PodIdError::Empty)));
        assert!(matches!(
            PodId::new("x".repeat(MAX_POD_ID_LEN + 1)),
            Err(PodIdError::TooLong { .. })
        ));
        assert!(matches!(
            PodId::new("a/b"),
            Err(PodIdError::InvalidChar { ch: '/', .. })
        ));
        assert!(matches!(
            PodId::new("a\0"),
            Err(PodIdError::InvalidChar { ch: '\0', .. })
        ));
        assert!(matches!(PodId::new(".."), Err(PodIdError::Dots { .. })));
        assert!(matches!(PodId::new("."), Err(PodIdError::Dots { .. })));
        assert!(matches!(PodId::new("a..b"), Err(PodIdError::Dots { .. })));
        assert!(matches!(
            PodId::new(".hidden"),
            Err(PodIdError::Dots { .. })
        ));
    }

    #[test]
    fn pin_paths_follow_the_documented_layout() {
        let dirs = PinDirs::default();
        let id = PodId::new("abc").expect("valid");
        assert_eq!(
            dirs.pin_path(NamespaceKind::Net, &id),
            Path::new("/run/netns/sluice-abc")
        );
        assert_eq!(
            dirs.pin_path(NamespaceKind::Ipc, &id),
            Path::new("/run/sluice/ns/ipc/abc")
        );
        assert_eq!(
            dirs.pin_path(NamespaceKind::Uts, &id),
            Path::new("/run/sluice/ns/uts/abc")
        );
        assert!(PinDirs::pod_id_of(NamespaceKind::Net, "other").is_none());
        assert_eq!(
            PinDirs::pod_id_of(NamespaceKind::Net, "sluice-abc").and_then(Result::ok),
            Some(id.clone())
        );
        assert_eq!(
            PinDirs::pod_id_of(NamespaceKind::Uts, "abc").and_then(Result::ok),
            Some(id)
        );
    }

    #[test]
    fn host_namespaces_have_no_pin() {
        let dirs = PinDirs::default();
        let id = PodId::new("abc").expect("valid");
        let request = NamespaceRequest {
            network: NamespaceMode::Node,
            uts: NamespaceMode::Node,
            ..NamespaceRequest::default()
        };
        let ns = dirs.locations(&id, &request);
        assert_eq!(ns.net, NamespaceLocation::Host);
        assert_eq!(ns.uts.pin_path(), None);
        assert_eq!(ns.ipc.pin_path(), Some(Path::new("/run/sluice/ns/ipc/abc")));
    }
}
