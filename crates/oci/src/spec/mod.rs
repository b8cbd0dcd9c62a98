//! OCI runtime spec generation: a domain [`ContainerSpec`] (what CreateContainer asked for,
//! already merged with the image config and the pod) plus the [`Host`] facts become the
//! `config.json` runc reads.
//!
//! Everything here is pure except reading the rootfs's `/etc/passwd` and `/etc/group`
//! (confined to the rootfs with `openat2(RESOLVE_IN_ROOT)`, so an image's symlink cannot make
//! sluice read the host's files) and [`Host::detect`].

pub mod caps;
pub mod command;
pub mod oci;
pub mod seccomp;
pub mod user;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use caps::{CapError, CapMask, CapabilityRequest};
pub use user::{ResolvedUser, UserError, UserRequest};

/// The image config fields a container inherits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// Mount propagation of a bind mount (CRI `MountPropagation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    #[default]
    Private,
    /// Host → container (`HostToContainer`).
    RSlave,
    /// Both ways (`Bidirectional`); needs a shared source mount.
    RShared,
}

/// A bind mount into the container (CRI `Mount`; SELinux relabel is ignored: no SELinux on
/// sluice's nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
    pub propagation: Propagation,
}

/// Pod files bind-mounted into every container, unless a [`BindMount`] already targets the path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodFiles {
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
    /// The pod's shared `/dev/shm` (a tmpfs the pod mounted); `None` gives the container a
    /// private 64 MiB tmpfs.
    pub shm: Option<PathBuf>,
}

/// Which network/IPC/UTS namespace the container is in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsTarget {
    /// A namespace of its own (pods always pin theirs; this serves tests and tools).
    #[default]
    New,
    /// Join the pinned namespace at this path.
    Path(PathBuf),
    /// The node's.
    Host,
}

/// PID namespace mode (CRI `NamespaceOption.pid`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PidMode {
    /// A PID namespace of the container's own (CRI `CONTAINER`).
    #[default]
    Container,
    /// The pod's PID namespace: the path of a namespace held by the pod's long-lived process.
    Pod(PathBuf),
    /// Another container's (CRI `TARGET`): `/proc/<its pid>/ns/pid`.
    Target(PathBuf),
    /// The node's (CRI `NODE`).
    Node,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub network: NsTarget,
    pub ipc: NsTarget,
    pub uts: NsTarget,
    pub pid: PidMode,
}

/// Seccomp profile (CRI `SecurityProfile`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    /// No filter (CRI's default when the kubelet says nothing).
    #[default]
    Unconfined,
    /// sluice's built-in profile ([`seccomp::runtime_default`]).
    RuntimeDefault,
    /// An OCI `linux.seccomp` JSON document at this path on the node.
    Localhost(PathBuf),
}

/// AppArmor profile (CRI `SecurityProfile`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppArmor {
    #[default]
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    pub privileged: bool,
    pub capabilities: CapabilityRequest,
    pub no_new_privs: bool,
    pub seccomp: Seccomp,
    pub apparmor: AppArmor,
    /// Replace the default masked paths (CRI `masked_paths`, when non-empty).
    pub masked_paths: Option<Vec<String>>,
    /// Replace the default read-only paths (CRI `readonly_paths`, when non-empty).
    pub readonly_paths: Option<Vec<String>>,
}

/// CRI `LinuxContainerResources`, zero meaning "not set" as in CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_shares: u64,
    pub cpu_quota: i64,
    pub cpu_period: u64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub memory_limit_bytes: i64,
    /// Memory plus swap; with a memory limit and this unset, swap is disabled (equal to the
    /// limit) where the host accounts swap.
    pub memory_swap_limit_bytes: i64,
    pub pids_limit: i64,
    /// Page size (`2MB`, `1GB`) → limit in bytes.
    pub hugepage_limits: BTreeMap<String, u64>,
    /// cgroup v2 files.
    pub unified: BTreeMap<String, String>,
    pub oom_score_adj: i64,
}

/// Everything CreateContainer decided about one container, in domain terms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The container id (names the cgroup leaf `sluice-<id>`).
    pub id: String,
    pub image: ImageConfig,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Empty: the image's, else `/`.
    pub working_dir: String,
    pub user: UserRequest,
    /// The mounted root filesystem (see [`crate::rootfs`]).
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    pub mounts: Vec<BindMount>,
    pub pod_files: PodFiles,
    /// Set only with a new UTS namespace (a pinned one already has the pod's hostname).
    pub hostname: String,
    pub namespaces: Namespaces,
    pub security: Security,
    pub resources: Resources,
    /// cgroupfs parent (the pod cgroup, `/kubepods/.../pod<uid>`); empty means `/sluice`.
    pub cgroup_parent: String,
    pub tty: bool,
    pub stdin: bool,
    pub annotations: BTreeMap<String, String>,
}

/// Facts about the node and the daemon itself that shape the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The daemon's capability bounding set (`CapBnd` of `/proc/self/status`).
    pub bounding_caps: CapMask,
    /// Capabilities an unprivileged container gets by default (config
    /// `runtime.default_capabilities`).
    pub default_capabilities: Vec<String>,
    /// The daemon's own `oom_score_adj`.
    pub oom_score_adj: i64,
    /// Whether the daemon holds CAP_SYS_RESOURCE (needed to lower an `oom_score_adj`).
    pub has_sys_resource: bool,
    pub apparmor_enabled: bool,
    /// `memory.memsw.limit_in_bytes` exists (cgroup v1 swap accounting) or cgroup v2.
    pub swap_accounting: bool,
    /// The unified hierarchy is the only one (pure cgroup v2).
    pub cgroup_v2: bool,
    /// Host devices for privileged containers (`/dev` scanned by [`Host::detect`]).
    pub devices: Vec<oci::Device>,
}

impl Host {
    /// Reads the facts from `/proc/self`, `/sys` and `/dev`.
    pub fn detect(default_capabilities: Vec<String>) -> Result<Self, SpecError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| SpecError::Read {
                path: PathBuf::from(p),
                source,
            })
        };
        let status = read("/proc/self/status")?;
        let bounding_caps = caps::parse_cap_bnd(&status).ok_or_else(|| SpecError::Read {
            path: "/proc/self/status".into(),
            source: std::io::Error::other("no CapBnd line"),
        })?;
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let oom_score_adj = read("/proc/self/oom_score_adj")?
            .trim()
            .parse()
            .unwrap_or(0);
        let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        Ok(Self {
            bounding_caps,
            default_capabilities,
            oom_score_adj,
            has_sys_resource: effective & (1 << 24) != 0,
            apparmor_enabled: std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .is_ok_and(|s| s.trim() == "Y"),
            swap_accounting: cgroup_v2
                || Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            cgroup_v2,
            devices: host_devices(Path::new("/dev")),
        })
    }

    /// CRI-O's default capability names.
    pub fn default_capability_names() -> Vec<String> {
        caps::DEFAULT_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// Character and block devices under `dir` (recursively, skipping the per-container
/// filesystems `pts`, `shm`, `mqueue` and the `console`/`ptmx` nodes runc makes itself).
pub fn host_devices(dir: &Path) -> Vec<oci::Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let name = e.file_name();
            let name = name.to_string_lossy();
            let ft = md.file_type();
            if ft.is_dir() {
                if !matches!(
                    name.as_ref(),
                    "pts" | "shm" | "mqueue" | "fd" | ".lxc" | ".udev"
                ) {
                    stack.push(path);
                }
                continue;
            }
            if d == dir && matches!(name.as_ref(), "console" | "ptmx") {
                continue;
            }
            let kind = if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else {
                continue;
            };
            let rdev = md.rdev();
            out.push(oci::Device {
                kind: kind.into(),
                path: path.to_string_lossy().into_owned(),
                major: nix::sys::stat::major(rdev) as i64,
                minor: nix::sys::stat::minor(rdev) as i64,
                file_mode: Some(md.mode() & 0o7777),
                uid: Some(md.uid()),
                gid: Some(md.gid()),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// A spec that cannot be generated.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "no command to run: the config has no command or args and the image no Entrypoint or Cmd"
    )]
    NoCommand,
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Capability(#[from] CapError),
    #[error(
        "apparmor profile {0:?} requested, but AppArmor is not enabled on this node (sluice supports only unconfined here)"
    )]
    AppArmorUnavailable(String),
    #[error(
        "apparmor profile runtime/default is not supported by sluice yet; use unconfined or localhost/<profile>"
    )]
    AppArmorRuntimeDefault,
    #[error("seccomp profile {path}: {message}")]
    SeccompProfile { path: PathBuf, message: String },
    #[error("cgroup v2 unified resources given, but this node uses cgroup v1")]
    UnifiedOnV1,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Default masked paths (as containerd and CRI-O).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Default read-only paths (as containerd and CRI-O).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The cgroupfs path of a container: `<parent>/sluice-<id>`.
pub fn cgroup_path(parent: &str, id: &str) -> String {
    let parent = parent.trim_end_matches('/');
    let parent = if parent.is_empty() { "/sluice" } else { parent };
    format!("{parent}/sluice-{id}")
}

/// A warning the caller should log (spec generation stays free of side effects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjustment {
    /// `oom_score_adj` raised from `requested` to `applied`: the daemon cannot lower it.
    OomScoreAdjClamped { requested: i64, applied: i64 },
}

/// The generated spec plus what was adjusted on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub spec: oci::Spec,
    pub adjustments: Vec<Adjustment>,
    /// The user the process runs as (for status and exec).
    pub user: ResolvedUser,
}

/// The OCI `linux.resources` of CRI resources on this host (also what UpdateContainerResources
/// hands `runc update`).
pub fn linux_resources(
    resources: &Resources,
    host: &Host,
    privileged: bool,
) -> Result<oci::LinuxResources, SpecError> {
    let r = resources;
    if !r.unified.is_empty() && !host.cgroup_v2 {
        return Err(SpecError::UnifiedOnV1);
    }
    let mut res = oci::LinuxResources {
        devices: vec![oci::DeviceCgroup {
            allow: privileged,
            kind: None,
            major: None,
            minor: None,
            access: Some("rwm".into()),
        }],
        ..Default::default()
    };
    let cpu = oci::Cpu {
        shares: (r.cpu_shares > 0).then_some(r.cpu_shares),
        quota: (r.cpu_quota > 0).then_some(r.cpu_quota),
        period: (r.cpu_period > 0).then_some(r.cpu_period),
        cpus: r.cpuset_cpus.clone(),
        mems: r.cpuset_mems.clone(),
    };
    if cpu != oci::Cpu::default() {
        res.cpu = Some(cpu);
    }
    if r.memory_limit_bytes > 0 {
        let swap = if r.memory_swap_limit_bytes > 0 {
            Some(r.memory_swap_limit_bytes.max(r.memory_limit_bytes))
        } else if host.swap_accounting {
            Some(r.memory_limit_bytes)
        } else {
            None
        };
        res.memory = Some(oci::Memory {
            limit: Some(r.memory_limit_bytes),
            swap: swap.filter(|_| host.swap_accounting),
        });
    }
    if r.pids_limit > 0 {
        res.pids = Some(oci::Pids {
            limit: r.pids_limit,
        });
    }
    res.hugepage_limits = r
        .hugepage_limits
        .iter()
        .map(|(size, limit)| oci::HugepageLimit {
            page_size: size.clone(),
            limit: *limit,
        })
        .collect();
    res.unified = r.unified.clone();
    Ok(res)
}

/// Reads `rel` (relative, e.g. `etc/passwd`) inside `root` with every symlink resolved as if
/// `root` were `/`. `Ok(None)` when it does not exist.
pub fn read_rootfs_file(root: &Path, rel: &str) -> Result<Option<String>, SpecError> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::Mode;
    let err = |source: std::io::Error| SpecError::Read {
        path: root.join(rel),
        source,
    };
    let dir = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(&dir, rel, how) {
        Ok(fd) => {
            let mut s = String::new();
            std::fs::File::from(fd)
                .read_to_string(&mut s)
                .map_err(err)?;
            Ok(Some(s))
        }
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(err(e.into())),
    }
}

/// Resolves the user of `spec` against its rootfs.
pub fn resolve_user(spec: &ContainerSpec) -> Result<ResolvedUser, SpecError> {
    let passwd = read_rootfs_file(&spec.rootfs, "etc/passwd")?.unwrap_or_default();
    let group = read_rootfs_file(&spec.rootfs, "etc/group")?.unwrap_or_default();
    let mut req = spec.user.clone();
    if req.image_user.is_empty() {
        req.image_user = spec.image.user.clone();
    }
    Ok(user::resolve_user(
        &req,
        &user::parse_passwd(&passwd),
        &user::parse_group(&group),
    )?)
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> oci::Mount {
    oci::Mount {
        destination: dest.into(),
        kind: kind.into(),
        source: source.into(),
        options: options.iter().map(|s| s.to_string()).collect(),
    }
}

fn ns(kind: &str, target: &NsTarget) -> Option<oci::Namespace> {
    match target {
        NsTarget::Host => None,
        NsTarget::New => Some(oci::Namespace {
            kind: kind.into(),
            path: String::new(),
        }),
        NsTarget::Path(p) => Some(oci::Namespace {
            kind: kind.into(),
            path: p.to_string_lossy().into_owned(),
        }),
    }
}

/// Generates the OCI spec.
pub fn generate(spec: &ContainerSpec, host: &Host) -> Result<Generated, SpecError> {
    let sec = &spec.security;
    let mut adjustments = Vec::new();

    let args = command::merge_command(
        &spec.command,
        &spec.args,
        &spec.image.entrypoint,
        &spec.image.cmd,
    )
    .ok_or(SpecError::NoCommand)?;
    let user = resolve_user(spec)?;
    let hostname_env = if spec.hostname.is_empty() {
        None
    } else {
        Some(spec.hostname.as_str())
    };
    let mut extra = vec![("HOME", user.home.as_str())];
    if let Some(h) = hostname_env {
        extra.push(("HOSTNAME", h));
    }
    if spec.tty {
        extra.push(("TERM", "xterm"));
    }
    let env = command::merge_env(&spec.image.env, &spec.env, &extra);
    let cwd = [spec.working_dir.as_str(), spec.image.working_dir.as_str()]
        .into_iter()
        .find(|d| !d.is_empty())
        .unwrap_or("/")
        .to_string();
    if !cwd.starts_with('/') {
        return Err(SpecError::Invalid {
            field: "working_dir",
            message: format!("{cwd:?} must be an absolute path"),
        });
    }

    // Capabilities, seccomp, apparmor.
    let cap_mask = caps::container_caps(
        &sec.capabilities,
        sec.privileged,
        &host.default_capabilities,
        host.bounding_caps,
    )?;
    let cap_names = caps::names(cap_mask);
    let capabilities = oci::Capabilities {
        bounding: cap_names.clone(),
        effective: cap_names.clone(),
        inheritable: Vec::new(),
        permitted: cap_names,
        ambient: Vec::new(),
    };
    let seccomp = if sec.privileged {
        // As containerd: a privileged container is not filtered.
        None
    } else {
        match &sec.seccomp {
            Seccomp::Unconfined => None,
            Seccomp::RuntimeDefault => Some(seccomp::runtime_default(cap_mask)),
            Seccomp::Localhost(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| SpecError::SeccompProfile {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| SpecError::SeccompProfile {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if v.get("defaultAction").is_none() {
                    return Err(SpecError::SeccompProfile {
                        path: path.clone(),
                        message: "not an OCI seccomp profile (no defaultAction)".into(),
                    });
                }
                Some(v)
            }
        }
    };
    let apparmor_profile = match &sec.apparmor {
        AppArmor::Unconfined => None,
        AppArmor::RuntimeDefault if !host.apparmor_enabled => {
            return Err(SpecError::AppArmorUnavailable("runtime/default".into()));
        }
        AppArmor::RuntimeDefault => return Err(SpecError::AppArmorRuntimeDefault),
        AppArmor::Localhost(name) if !host.apparmor_enabled => {
            return Err(SpecError::AppArmorUnavailable(format!("localhost/{name}")));
        }
        AppArmor::Localhost(name) => Some(name.clone()),
    };

    // oom_score_adj: the kernel refuses to lower it below the writer's own value without
    // CAP_SYS_RESOURCE, and runc would fail the container; clamp instead.
    let mut oom = spec.resources.oom_score_adj.clamp(-1000, 1000);
    if !host.has_sys_resource && oom < host.oom_score_adj {
        adjustments.push(Adjustment::OomScoreAdjClamped {
            requested: oom,
            applied: host.oom_score_adj,
        });
        oom = host.oom_score_adj;
    }

    let process = oci::Process {
        terminal: spec.tty,
        user: oci::User {
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids.clone(),
        },
        args,
        env,
        cwd,
        capabilities: Some(capabilities),
        rlimits: Vec::new(),
        no_new_privileges: sec.no_new_privs && !sec.privileged,
        apparmor_profile,
        oom_score_adj: Some(oom as i32),
    };

    // Mounts.
    let privileged = sec.privileged;
    let sys_opts: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev", "rw"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let cg_opts: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev", "relatime", "rw"]
    } else {
        &["nosuid", "noexec", "nodev", "relatime", "ro"]
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", sys_opts),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", cg_opts),
    ];
    let user_has = |dest: &str| spec.mounts.iter().any(|m| m.container_path == dest);
    match &spec.pod_files.shm {
        _ if user_has("/dev/shm") => {}
        Some(p) => mounts.push(mount(
            "/dev/shm",
            "bind",
            &p.to_string_lossy(),
            &["rbind", "rprivate", "nosuid", "noexec", "nodev"],
        )),
        None => mounts.push(mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )),
    }
    for (dest, src) in [
        ("/etc/hosts", &spec.pod_files.hosts),
        ("/etc/resolv.conf", &spec.pod_files.resolv_conf),
        ("/etc/hostname", &spec.pod_files.hostname),
    ] {
        if let Some(src) = src
            && !user_has(dest)
        {
            let mut opts = vec!["rbind", "rprivate", "nosuid", "nodev", "noexec"];
            if spec.readonly_rootfs {
                opts.push("ro");
            }
            mounts.push(mount(dest, "bind", &src.to_string_lossy(), &opts));
        }
    }
    let mut binds: Vec<&BindMount> = spec.mounts.iter().collect();
    // Parents before children: fewer path components first (stable for equal depth).
    binds.sort_by_key(|m| Path::new(&m.container_path).components().count());
    let mut rootfs_propagation = String::new();
    for m in binds {
        if !m.container_path.starts_with('/') {
            return Err(SpecError::Invalid {
                field: "mounts.container_path",
                message: format!("{:?} must be absolute", m.container_path),
            });
        }
        let prop = match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::RSlave => {
                if rootfs_propagation.is_empty() {
                    rootfs_propagation = "rslave".into();
                }
                "rslave"
            }
            Propagation::RShared => {
                rootfs_propagation = "rshared".into();
                "rshared"
            }
        };
        let mut opts = vec!["rbind", prop];
        if m.readonly {
            opts.push("ro");
        }
        mounts.push(mount(
            &m.container_path,
            "bind",
            &m.host_path.to_string_lossy(),
            &opts,
        ));
    }

    // Namespaces.
    let n = &spec.namespaces;
    let mut namespaces: Vec<oci::Namespace> = vec![oci::Namespace {
        kind: "mount".into(),
        path: String::new(),
    }];
    namespaces.extend(ns("network", &n.network));
    namespaces.extend(ns("ipc", &n.ipc));
    namespaces.extend(ns("uts", &n.uts));
    match &n.pid {
        PidMode::Container => namespaces.push(oci::Namespace {
            kind: "pid".into(),
            path: String::new(),
        }),
        PidMode::Pod(p) | PidMode::Target(p) => namespaces.push(oci::Namespace {
            kind: "pid".into(),
            path: p.to_string_lossy().into_owned(),
        }),
        PidMode::Node => {}
    }
    let hostname = if n.uts == NsTarget::New {
        spec.hostname.clone()
    } else {
        String::new()
    };

    // Resources.
    let res = linux_resources(&spec.resources, host, privileged)?;

    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        let own = |o: &Option<Vec<String>>, d: &[&str]| {
            o.clone()
                .unwrap_or_else(|| d.iter().map(|s| s.to_string()).collect())
        };
        (
            own(&sec.masked_paths, MASKED_PATHS),
            own(&sec.readonly_paths, READONLY_PATHS),
        )
    };

    let linux = oci::Linux {
        resources: Some(res),
        cgroups_path: cgroup_path(&spec.cgroup_parent, &spec.id),
        namespaces,
        devices: if privileged {
            host.devices.clone()
        } else {
            Vec::new()
        },
        seccomp,
        rootfs_propagation,
        masked_paths: masked,
        readonly_paths: readonly,
        sysctl: BTreeMap::new(),
    };
    let oci_spec = oci::Spec {
        oci_version: "1.0.2".into(),
        process,
        root: oci::Root {
            path: spec.rootfs.to_string_lossy().into_owned(),
            readonly: spec.readonly_rootfs,
        },
        hostname,
        mounts,
        annotations: spec.annotations.clone(),
        linux,
    };
    Ok(Generated {
        spec: oci_spec,
        adjustments,
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            bounding_caps: 0x0000_01ff_feff_ffff,
            default_capabilities: Host::default_capability_names(),
            oom_score_adj: 0,
            has_sys_resource: false,
            apparmor_enabled: false,
            swap_accounting: true,
            cgroup_v2: false,
            devices: vec![oci::Device {
                kind: "c".into(),
                path: "/dev/null".into(),
                major: 1,
                minor: 3,
                file_mode: Some(0o666),
                uid: Some(0),
                gid: Some(0),
            }],
        }
    }

    fn base(root: &Path) -> ContainerSpec {
        ContainerSpec {
            id: "abc".into(),
            image: ImageConfig {
                entrypoint: vec!["/bin/sh".into()],
                cmd: vec!["-c".into(), "true".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: "/work".into(),
                user: "app".into(),
            },
            rootfs: root.to_path_buf(),
            ..Default::default()
        }
    }

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nextra:x:3000:app\n").unwrap();
        d
    }

    #[test]
    fn basic_spec_from_image() {
        let root = rootfs();
        let g = generate(&base(root.path()), &host()).unwrap();
        let s = &g.spec;
        assert_eq!(s.process.args, vec!["/bin/sh", "-c", "true"]);
        assert_eq!(s.process.cwd, "/work");
        assert_eq!(
            (
                s.process.user.uid,
                s.process.user.gid,
                s.process.user.additional_gids.clone()
            ),
            (1000, 1000, vec![1000, 3000])
        );
        assert!(s.process.env.contains(&"HOME=/home/app".to_string()));
        assert_eq!(s.linux.cgroups_path, "/sluice/sluice-abc");
        assert_eq!(s.linux.masked_paths.len(), MASKED_PATHS.len());
        assert!(s.linux.seccomp.is_none());
        let caps = s.process.capabilities.as_ref().unwrap();
        assert_eq!(caps.bounding.len(), 9);
        assert!(caps.inheritable.is_empty());
        let kinds: Vec<&str> = s.linux.namespaces.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(kinds, vec!["mount", "network", "ipc", "uts", "pid"]);
        assert!(!s.linux.resources.as_ref().unwrap().devices[0].allow);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["linux"]["cgroupsPath"], "/sluice/sluice-abc");
        assert_eq!(json["process"]["oomScoreAdj"], 0);
    }

    #[test]
    fn rootfs_symlinks_cannot_escape() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // An absolute symlink resolves inside the rootfs, where /etc/hostname-x does not exist.
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("etc/passwd")).unwrap();
        assert_eq!(read_rootfs_file(root.path(), "etc/passwd").unwrap(), None);
        std::os::unix::fs::symlink(
            "../../../../../../etc/hostname",
            root.path().join("etc/group"),
        )
        .unwrap();
        assert_eq!(read_rootfs_file(root.path(), "etc/group").unwrap(), None);
    }

    #[test]
    fn privileged_gets_bounding_set_devices_and_no_masks() {
        let root = rootfs();
        let mut c = base(root.path());
        c.security.privileged = true;
        c.security.seccomp = Seccomp::RuntimeDefault;
        c.security.no_new_privs = true;
        let s = generate(&c, &host()).unwrap().spec;
        assert_eq!(s.process.capabilities.unwrap().bounding.len(), 40);
        assert!(s.linux.masked_paths.is_empty() && s.linux.readonly_paths.is_empty());
        assert!(s.linux.seccomp.is_none());
        assert!(!s.process.no_new_privileges);
        assert_eq!(s.linux.devices.len(), 1);
        assert!(s.linux.resources.unwrap().devices[0].allow);
        assert!(
            s.mounts
                .iter()
                .any(|m| m.destination == "/sys" && m.options.contains(&"rw".into()))
        );
    }

    #[test]
    fn namespaces_paths_and_pid_modes() {
        let root = rootfs();
        let mut c = base(root.path());
        c.namespaces = Namespaces {
            network: NsTarget::Path("/run/netns/x".into()),
            ipc: NsTarget::Host,
            uts: NsTarget::Path("/run/sluice/ns/uts/x".into()),
            pid: PidMode::Pod("/proc/42/ns/pid".into()),
        };
        c.hostname = "pod".into();
        let s = generate(&c, &host()).unwrap().spec;
        let got: Vec<(String, String)> = s
            .linux
            .namespaces
            .iter()
            .map(|n| (n.kind.clone(), n.path.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("mount".into(), "".into()),
                ("network".into(), "/run/netns/x".into()),
                ("uts".into(), "/run/sluice/ns/uts/x".into()),
                ("pid".into(), "/proc/42/ns/pid".into()),
            ]
        );
        assert_eq!(
            s.hostname, "",
            "a joined UTS namespace keeps the pod's hostname"
        );
        c.namespaces.pid = PidMode::Node;
        let s = generate(&c, &host()).unwrap().spec;
        assert!(!s.linux.namespaces.iter().any(|n| n.kind == "pid"));
    }

    #[test]
    fn mounts_pod_files_and_propagation() {
        let root = rootfs();
        let mut c = base(root.path());
        c.readonly_rootfs = true;
        c.pod_files = PodFiles {
            hosts: Some("/pod/hosts".into()),
            resolv_conf: Some("/pod/resolv.conf".into()),
            hostname: Some("/pod/hostname".into()),
            shm: Some("/pod/shm".into()),
        };
        c.mounts = vec![
            BindMount {
                container_path: "/data/sub".into(),
                host_path: "/h/sub".into(),
                readonly: false,
                propagation: Propagation::RSlave,
            },
            BindMount {
                container_path: "/data".into(),
                host_path: "/h/data".into(),
                readonly: true,
                propagation: Propagation::Private,
            },
            BindMount {
                container_path: "/etc/hosts".into(),
                host_path: "/kubelet/hosts".into(),
                readonly: false,
                propagation: Propagation::Private,
            },
        ];
        let s = generate(&c, &host()).unwrap().spec;
        let find = |d: &str| {
            s.mounts
                .iter()
                .filter(|m| m.destination == d)
                .collect::<Vec<_>>()
        };
        assert_eq!(find("/etc/hosts").len(), 1);
        assert_eq!(find("/etc/hosts")[0].source, "/kubelet/hosts");
        assert!(
            find("/etc/resolv.conf")[0]
                .options
                .contains(&"ro".to_string())
        );
        assert_eq!(find("/dev/shm")[0].source, "/pod/shm");
        let data = s
            .mounts
            .iter()
            .position(|m| m.destination == "/data")
            .unwrap();
        let sub = s
            .mounts
            .iter()
            .position(|m| m.destination == "/data/sub")
            .unwrap();
        assert!(data < sub, "parents mount first");
        assert_eq!(s.mounts[data].options, vec!["rbind", "rprivate", "ro"]);
        assert_eq!(s.mounts[sub].options, vec!["rbind", "rslave"]);
        assert_eq!(s.linux.rootfs_propagation, "rslave");
        assert!(s.root.readonly);
    }

    #[test]
    fn resources_and_oom_clamp() {
        let root = rootfs();
        let mut c = base(root.path());
        c.cgroup_parent = "/kubepods/pod1/".into();
        c.resources = Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0".into(),
            memory_limit_bytes: 32 << 20,
            pids_limit: 100,
            hugepage_limits: [("2MB".to_string(), 0u64)].into(),
            oom_score_adj: -998,
            ..Default::default()
        };
        let mut h = host();
        h.oom_score_adj = -500;
        let g = generate(&c, &h).unwrap();
        assert_eq!(
            g.adjustments,
            vec![Adjustment::OomScoreAdjClamped {
                requested: -998,
                applied: -500
            }]
        );
        let s = g.spec;
        assert_eq!(s.process.oom_score_adj, Some(-500));
        assert_eq!(s.linux.cgroups_path, "/kubepods/pod1/sluice-abc");
        let r = s.linux.resources.unwrap();
        assert_eq!(r.memory.unwrap().swap, Some(32 << 20));
        assert_eq!(r.cpu.unwrap().quota, Some(50_000));
        assert_eq!(r.pids.unwrap().limit, 100);
        assert_eq!(r.hugepage_limits[0].page_size, "2MB");
        // With CAP_SYS_RESOURCE nothing is clamped.
        h.has_sys_resource = true;
        assert_eq!(
            generate(&c, &h).unwrap().spec.process.oom_score_adj,
            Some(-998)
        );
        c.resources.unified.insert("memory.high".into(), "1".into());
        assert!(matches!(generate(&c, &h), Err(SpecError::UnifiedOnV1)));
    }

    #[test]
    fn security_profiles() {
        let root = rootfs();
        let mut c = base(root.path());
        c.security.seccomp = Seccomp::RuntimeDefault;
        c.security.capabilities.add = vec!["SYS_RESOURCE".into()];
        let e = generate(&c, &host()).unwrap_err();
        assert!(e.to_string().contains("CAP_SYS_RESOURCE"), "{e}");
        c.security.capabilities.add.clear();
        let s = generate(&c, &host()).unwrap().spec;
        assert!(s.linux.seccomp.unwrap().to_string().contains("\"unshare\""));
        c.security.apparmor = AppArmor::RuntimeDefault;
        let e = generate(&c, &host()).unwrap_err();
        assert!(e.to_string().contains("AppArmor is not enabled"), "{e}");
        c.security.apparmor = AppArmor::Unconfined;
        let p = root.path().join("profile.json");
        std::fs::write(&p, "{\"syscalls\": []}").unwrap();
        c.security.seccomp = Seccomp::Localhost(p.clone());
        assert!(matches!(
            generate(&c, &host()),
            Err(SpecError::SeccompProfile { .. })
        ));
        std::fs::write(&p, "{\"defaultAction\": \"SCMP_ACT_ALLOW\"}").unwrap();
        assert!(generate(&c, &host()).unwrap().spec.linux.seccomp.is_some());
    }

    #[test]
    fn errors_for_missing_command_and_user() {
        let root = rootfs();
        let mut c = base(root.path());
        c.image.entrypoint.clear();
        c.image.cmd.clear();
        assert!(matches!(generate(&c, &host()), Err(SpecError::NoCommand)));
        let mut c = base(root.path());
        c.image.user = "ghost".into();
        assert!(
            generate(&c, &host())
                .unwrap_err()
                .to_string()
                .contains("ghost")
        );
    }
}
