//! Domain types of a pod sandbox: what the kubelet asks for ([`SandboxConfig`]) and what sluice
//! records about it ([`PodRecord`]). No protobuf here: `server` translates CRI messages into
//! these.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Whether a namespace is the pod's own or the node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NsMode {
    /// Private to the pod (CRI `POD`; for PID also `CONTAINER`, decided per container later).
    #[default]
    Pod,
    /// Per container (CRI `CONTAINER`; meaningful for PID only).
    Container,
    /// The node's (CRI `NODE`).
    Node,
    /// Another container's (CRI `TARGET`; PID only).
    Target,
}

/// Transport protocol of a host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A CRI port mapping; `host_port == 0` means "no host port" (informational only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_port: u16,
    /// Bind only on this node address.
    pub host_ip: Option<IpAddr>,
}

/// The pod's resolv.conf contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Identity of a sandbox; `(name, namespace, uid, attempt)` is unique on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PodMetadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
}

impl PodMetadata {
    /// The reserved name: `<name>_<namespace>_<uid>_<attempt>` (what CRI-O and containerd
    /// reserve, so a retried RunPodSandbox cannot create a second pod).
    pub fn reserved_name(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

/// Everything RunPodSandbox needs, already validated for shape by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SandboxConfig {
    pub metadata: PodMetadata,
    /// Hostname inside the pod's UTS namespace; empty means the pod name.
    pub hostname: String,
    /// Directory for container logs, created if given.
    pub log_directory: Option<PathBuf>,
    pub dns: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// cgroupfs parent path (`/kubepods/besteffort/pod<uid>`); empty means sluice's default.
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub network: NsMode,
    pub ipc: NsMode,
    pub pid: NsMode,
    /// Target container id when `pid` is `Target`.
    pub pid_target: String,
    pub runtime_handler: String,
}

impl SandboxConfig {
    /// Host-network pods share the node's network (and, as in the kubelet, its UTS namespace).
    pub fn host_network(&self) -> bool {
        self.network == NsMode::Node
    }
}

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodState {
    /// RunPodSandbox is in progress (or was interrupted by a crash: recovery removes it).
    Creating,
    Ready,
    NotReady,
}

/// The network attachment of a pod as CNI reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodNetworkState {
    /// The CNI network the pod joined.
    pub network: String,
    /// Pod addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// The CNI result as the plugins returned it (for verbose status).
    pub result: serde_json::Value,
}

/// What sluice knows and persists about one sandbox. Every resource the pod holds has a field
/// here, cleared when the resource is released, so a Stop that failed half-way (or a crash)
/// leaves a record that says exactly what is left to release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    /// 64 lowercase hex characters.
    pub id: String,
    pub config: SandboxConfig,
    pub state: PodState,
    /// Why the pod is NotReady (empty when Ready).
    #[serde(default)]
    pub reason: String,
    /// Unix time in nanoseconds.
    pub created_at: i64,
    /// `/proc/sys/kernel/random/boot_id` when the pod was created; a different boot id at
    /// start-up means the namespaces, veths and nft elements died with the previous boot.
    pub boot_id: String,
    /// Pinned namespaces still held (`None` once released or for a host-network pod).
    pub netns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// CNI attachment still held.
    pub network: Option<PodNetworkState>,
    /// Host ports published (and not yet withdrawn).
    pub hostports: bool,
    /// Registered with the network-policy enforcer (and not yet withdrawn).
    #[serde(default)]
    pub policy: bool,
    /// The pod cgroup (relative to each cgroup hierarchy root), until removed.
    pub cgroup: Option<String>,
    /// Directory of the pod's resolv.conf, hostname and hosts files, until removed.
    pub files_dir: Option<PathBuf>,
    /// The pod's shared PID namespace (`/proc/<pid>/ns/pid` of its pause process) when the pod
    /// shares one (PID mode POD).
    #[serde(default)]
    pub pause_pid_ns: Option<PathBuf>,
    /// The pause holder process (killed to release the PID namespace).
    #[serde(default)]
    pub pause_pid: Option<i32>,
}

impl PodRecord {
    /// IPs as CRI reports them: the first is primary.
    pub fn ips(&self) -> &[IpAddr] {
        self.network
            .as_ref()
            .map(|n| n.ips.as_slice())
            .unwrap_or(&[])
    }

    /// True when nothing but the record itself remains.
    pub fn fully_released(&self) -> bool {
        self.netns.is_none()
            && self.ipc_ns.is_none()
            && self.uts_ns.is_none()
            && self.network.is_none()
            && !self.hostports
            && self.pause_pid.is_none()
    }
}

/// ListPodSandbox filter; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFilter {
    /// Full id or unique prefix.
    pub id: Option<String>,
    pub state: Option<PodState>,
    pub labels: BTreeMap<String, String>,
}

impl PodFilter {
    pub fn matches(&self, pod: &PodRecord) -> bool {
        if let Some(id) = &self.id
            && !pod.id.starts_with(id.as_str())
        {
            return false;
        }
        if let Some(state) = self.state
            && pod.state != state
        {
            return false;
        }
        self.labels
            .iter()
            .all(|(k, v)| pod.config.labels.get(k) == Some(v))
    }
}
