//! Domain types of containers: what CreateContainer asks for ([`ContainerConfig`]) and what
//! sluice records ([`ContainerRecord`]). The security and resource parts reuse the `oci`
//! crate's domain types, which the spec generator consumes as they are.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::types::NsMode;

pub use oci::spec::{
    AppArmor, BindMount, CapabilityRequest, Propagation, Resources, Seccomp, Security, UserRequest,
};

/// Everything CreateContainer needs, already validated for shape by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerConfig {
    pub name: String,
    pub attempt: u32,
    /// The image as the client named it (reference, id or id prefix).
    pub image: String,
    /// What the user wrote in the pod spec when the kubelet resolved it to an id (CRI
    /// `ImageSpec.user_specified_image`); reported back in status.
    #[serde(default)]
    pub user_specified_image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the pod's log directory.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// run_as_user / run_as_username / run_as_group / supplemental groups (the image user is
    /// filled in at create time).
    pub user: UserRequest,
    pub readonly_rootfs: bool,
    pub security: Security,
    pub resources: Resources,
    /// The container's PID namespace mode (CRI `NamespaceOption.pid`).
    pub pid: NsMode,
    /// Target container id for `pid == Target`.
    pub pid_target: String,
    /// The stop signal the client asked for (`SIGTERM`, ...); `None`: the image's, else SIGTERM.
    pub stop_signal: Option<String>,
}

impl ContainerConfig {
    /// The reserved name within the node: `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`.
    pub fn reserved_name(&self, pod: &crate::types::PodMetadata) -> String {
        format!(
            "{}_{}_{}_{}_{}",
            self.name, pod.name, pod.namespace, pod.uid, self.attempt
        )
    }
}

/// Lifecycle state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created = 0,
    Running = 1,
    Exited = 2,
    Unknown = 3,
}

/// What sluice knows and persists about one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 lowercase hex characters.
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    pub state: ContainerState,
    /// Unix nanoseconds; 0 = not yet.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled` once exited; why it is Unknown otherwise.
    pub reason: String,
    pub message: String,
    /// The image id (`sha256:<config digest>`).
    pub image_id: String,
    /// A digest reference of the image (`repo@sha256:...`), or the id when it has none.
    pub image_ref: String,
    /// Absolute CRI log path (empty when the pod has no log directory).
    pub log_path: PathBuf,
    /// Host pid of the container's init (0 when not running).
    pub pid: i32,
    /// The OCI bundle (runtime directory) under the runroot.
    pub bundle: PathBuf,
    /// The rootfs mount point and the writable layer.
    pub rootfs: PathBuf,
    pub upper_dir: PathBuf,
}

/// ListContainers / ListContainerStats filter; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    /// Full id or unique prefix.
    pub id: Option<String>,
    pub state: Option<ContainerState>,
    /// Full pod id or unique prefix.
    pub pod_id: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// ExecSync's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// -1 with `timed_out` when the command was killed at the timeout.
    pub exit_code: i32,
    pub timed_out: bool,
}

/// Resource usage of one container at `timestamp` (unix nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStats {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub timestamp: i64,
    pub cpu_usage_ns: u64,
    pub memory_working_set_bytes: u64,
    pub memory_usage_bytes: u64,
    /// The writable layer.
    pub writable_bytes: u64,
    pub writable_inodes: u64,
}

/// Resource usage of a pod: its cgroup, plus its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStats {
    pub pod_id: String,
    pub timestamp: i64,
    pub cpu_usage_ns: u64,
    pub memory_working_set_bytes: u64,
    pub memory_usage_bytes: u64,
    pub containers: Vec<ContainerStats>,
}

/// An image resolved for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub id: String,
    pub image_ref: String,
    /// Overlay lower dirs, topmost first.
    pub layers: Vec<PathBuf>,
    pub config: oci::spec::ImageConfig,
    /// The image's `StopSignal`, if any.
    pub stop_signal: Option<String>,
}

impl crate::store::Record for ContainerRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> i64 {
        self.created_at
    }
}
