//! Container RPCs: CRI messages in, `pods` container-domain values out, and back.
//!
//! Every conversion is a free function so handlers stay one line each and the rules are
//! unit-tested without a daemon. Every rejection is `InvalidArgument` whose message starts with
//! the CRI field path (`config.linux.security_context.run_as_user: ...`), spelled as in the
//! proto, so `crictl` users see which field of their JSON was wrong. Features sluice does not
//! implement (image volumes, devices, user-namespace ID mappings, ambient capabilities, the
//! Strict supplemental-groups policy) are refused by name rather than silently ignored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use cri_api::runtime::v1 as cri;
use pods::containers::types::{
    AppArmor, BindMount, CapabilityRequest, Propagation, Resources, Seccomp, Security, UserRequest,
};
use pods::{
    ContainerConfig, ContainerFilter, ContainerRecord, ContainerState, ContainerStats, ExecResult,
    NsMode, PodFilter, PodRecord, PodStats,
};
use tonic::Status;

use crate::error::pod_status;

/// ExecSync's `timeout: 0` means "no timeout"; the domain takes a bound, so it gets one that no
/// real command reaches (a year) while still being safe to add to an `Instant`.
pub const EXEC_NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

fn invalid(field: &str, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

fn sorted(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn unsorted(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Converts a domain failure; kept here so handlers read as one line.
pub fn fail(e: pods::PodError) -> Status {
    pod_status(&e)
}

/// Requires a non-empty container id (full or unique prefix; the domain resolves it).
pub fn container_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        Err(invalid("container_id", "required"))
    } else {
        Ok(id)
    }
}

// ---- CreateContainer ----

/// Builds the domain config from a CreateContainer request, naming the field of every problem.
/// Returns the pod sandbox id (full or prefix) and the config.
pub fn container_config(
    req: cri::CreateContainerRequest,
) -> Result<(String, ContainerConfig), Status> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid("pod_sandbox_id", "required"));
    }
    let config = req.config.ok_or_else(|| invalid("config", "required"))?;
    let meta = config
        .metadata
        .ok_or_else(|| invalid("config.metadata", "required"))?;
    if meta.name.is_empty() {
        return Err(invalid("config.metadata.name", "required"));
    }
    if meta.name.contains('_') {
        // The reserved name joins its parts with '_' (as CRI-O and containerd do); Kubernetes
        // container names never contain it, so a name that does is a client bug.
        return Err(invalid("config.metadata.name", "must not contain '_'"));
    }
    // The kubelet sends the resolved image id in `image` and what the user wrote in
    // `user_specified_image`; status reports both back.
    let (image, user_specified_image) = config
        .image
        .map(|i| (i.image, i.user_specified_image))
        .filter(|(i, _)| !i.is_empty())
        .ok_or_else(|| invalid("config.image.image", "required"))?;

    if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
        return Err(invalid(
            "config.working_dir",
            format!("{:?} must be an absolute path", config.working_dir),
        ));
    }

    let mut env = Vec::with_capacity(config.envs.len());
    for (i, kv) in config.envs.into_iter().enumerate() {
        let field = format!("config.envs[{i}].key");
        if kv.key.is_empty() {
            return Err(invalid(&field, "required"));
        }
        if kv.key.contains('=') || kv.key.contains('\0') {
            return Err(invalid(
                &field,
                format!("{:?} must not contain '=' or NUL", kv.key),
            ));
        }
        env.push((kv.key, kv.value));
    }

    let mounts = mounts(&config.mounts)?;

    if !config.devices.is_empty() {
        return Err(invalid(
            "config.devices",
            "host devices are not supported by sluice",
        ));
    }
    if !config.cdi_devices.is_empty() {
        return Err(invalid(
            "config.CDI_devices",
            "CDI devices are not supported by sluice",
        ));
    }

    let log_path = log_path(&config.log_path)?;
    let stop_signal = stop_signal("config.stop_signal", config.stop_signal)?;

    let linux = config.linux.unwrap_or_default();
    let resources = match &linux.resources {
        Some(r) => resources("config.linux.resources", r)?,
        None => Resources::default(),
    };
    let sc = linux.security_context.unwrap_or_default();
    let sc_field = |f: &str| format!("config.linux.security_context.{f}");

    let user = user(&sc)?;
    let security = security(&sc)?;

    // Without namespace options the container gets a PID namespace of its own (the kubelet
    // always sends them; `crictl` configs often do not).
    let (pid, pid_target) = match &sc.namespace_options {
        None => (NsMode::Container, String::new()),
        Some(ns) => {
            let field = sc_field("namespace_options.pid");
            let mode = match cri::NamespaceMode::try_from(ns.pid) {
                Ok(cri::NamespaceMode::Pod) => NsMode::Pod,
                Ok(cri::NamespaceMode::Container) => NsMode::Container,
                Ok(cri::NamespaceMode::Node) => NsMode::Node,
                Ok(cri::NamespaceMode::Target) => NsMode::Target,
                Err(_) => {
                    return Err(invalid(
                        &field,
                        format!("unknown namespace mode {}", ns.pid),
                    ));
                }
            };
            if mode == NsMode::Target && ns.target_id.is_empty() {
                return Err(invalid(
                    &sc_field("namespace_options.target_id"),
                    "required with pid mode TARGET",
                ));
            }
            if ns
                .userns_options
                .as_ref()
                .is_some_and(|u| u.mode != cri::NamespaceMode::Node as i32)
            {
                return Err(invalid(
                    &sc_field("namespace_options.userns_options"),
                    "user namespaces are not supported by sluice",
                ));
            }
            let target = if mode == NsMode::Target {
                ns.target_id.clone()
            } else {
                String::new()
            };
            (mode, target)
        }
    };

    Ok((
        req.pod_sandbox_id,
        ContainerConfig {
            name: meta.name,
            attempt: meta.attempt,
            image,
            user_specified_image,
            command: config.command,
            args: config.args,
            working_dir: config.working_dir,
            env,
            mounts,
            labels: sorted(config.labels),
            annotations: sorted(config.annotations),
            log_path,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            user,
            readonly_rootfs: sc.readonly_rootfs,
            security,
            resources,
            pid,
            pid_target,
            stop_signal,
        },
    ))
}

fn mounts(mounts: &[cri::Mount]) -> Result<Vec<BindMount>, Status> {
    let mut out: Vec<BindMount> = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.iter().enumerate() {
        let field = |f: &str| format!("config.mounts[{i}].{f}");
        if m.image.as_ref().is_some_and(|im| !im.image.is_empty()) {
            return Err(invalid(
                &field("image"),
                "image volume mounts are not supported by sluice",
            ));
        }
        if !m.uid_mappings.is_empty() {
            return Err(invalid(
                &field("uidMappings"),
                "ID-mapped mounts are not supported by sluice",
            ));
        }
        if !m.gid_mappings.is_empty() {
            return Err(invalid(
                &field("gidMappings"),
                "ID-mapped mounts are not supported by sluice",
            ));
        }
        if m.recursive_read_only {
            return Err(invalid(
                &field("recursive_read_only"),
                "recursive read-only mounts are not supported by sluice",
            ));
        }
        if m.container_path.is_empty() {
            return Err(invalid(&field("container_path"), "required"));
        }
        if !m.container_path.starts_with('/') {
            return Err(invalid(
                &field("container_path"),
                format!("{:?} must be an absolute path", m.container_path),
            ));
        }
        if m.host_path.is_empty() {
            return Err(invalid(&field("host_path"), "required"));
        }
        if !m.host_path.starts_with('/') {
            return Err(invalid(
                &field("host_path"),
                format!("{:?} must be an absolute path", m.host_path),
            ));
        }
        let dest = normalize(&m.container_path);
        if let Some(j) = out
            .iter()
            .position(|o| normalize(&o.container_path) == dest)
        {
            return Err(invalid(
                &field("container_path"),
                format!(
                    "{:?} is already the destination of config.mounts[{j}]",
                    m.container_path
                ),
            ));
        }
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
            Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::RSlave,
            Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::RShared,
            Err(_) => {
                return Err(invalid(
                    &field("propagation"),
                    format!("unknown mount propagation {}", m.propagation),
                ));
            }
        };
        // selinux_relabel is ignored: sluice's nodes run without SELinux, where relabelling
        // is meaningless; honouring the mount itself is what matters.
        out.push(BindMount {
            container_path: m.container_path.clone(),
            host_path: PathBuf::from(&m.host_path),
            readonly: m.readonly,
            propagation,
        });
    }
    Ok(out)
}

/// `/a//b/` and `/a/b` name the same destination.
fn normalize(p: &str) -> PathBuf {
    Path::new(p).components().collect()
}

fn log_path(p: &str) -> Result<String, Status> {
    if p.is_empty() {
        return Ok(String::new());
    }
    let path = Path::new(p);
    if path.is_absolute() {
        return Err(invalid(
            "config.log_path",
            format!("{p:?} must be relative to the pod's log directory"),
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid(
            "config.log_path",
            format!("{p:?} must not contain '..'"),
        ));
    }
    if p.contains('\0') {
        return Err(invalid("config.log_path", "must not contain NUL"));
    }
    Ok(p.to_string())
}

fn user(sc: &cri::LinuxContainerSecurityContext) -> Result<UserRequest, Status> {
    let id = |field: &str, v: i64| {
        u32::try_from(v).map_err(|_| {
            invalid(
                &format!("config.linux.security_context.{field}"),
                format!("{v} is not a valid id (0-4294967295)"),
            )
        })
    };
    let uid = sc
        .run_as_user
        .as_ref()
        .map(|v| id("run_as_user", v.value))
        .transpose()?;
    let gid = sc
        .run_as_group
        .as_ref()
        .map(|v| id("run_as_group", v.value))
        .transpose()?;
    let username = Some(sc.run_as_username.clone()).filter(|s| !s.is_empty());
    if gid.is_some() && uid.is_none() && username.is_none() {
        // As containerd and CRI-O: a group without a user would silently combine with
        // whatever user the image names.
        return Err(invalid(
            "config.linux.security_context.run_as_group",
            "requires run_as_user or run_as_username",
        ));
    }
    let supplemental_groups = sc
        .supplemental_groups
        .iter()
        .enumerate()
        .map(|(i, g)| id(&format!("supplemental_groups[{i}]"), *g))
        .collect::<Result<Vec<_>, _>>()?;
    if sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32 {
        return Err(invalid(
            "config.linux.security_context.supplemental_groups_policy",
            "Strict is not supported by sluice (it reports supplemental_groups_policy: false)",
        ));
    } else if sc.supplemental_groups_policy != cri::SupplementalGroupsPolicy::Merge as i32 {
        return Err(invalid(
            "config.linux.security_context.supplemental_groups_policy",
            format!("unknown policy {}", sc.supplemental_groups_policy),
        ));
    }
    Ok(UserRequest {
        uid,
        username,
        gid,
        supplemental_groups,
        // The domain fills in the image's user at create time.
        image_user: String::new(),
    })
}

fn security(sc: &cri::LinuxContainerSecurityContext) -> Result<Security, Status> {
    let caps = sc.capabilities.clone().unwrap_or_default();
    if !caps.add_ambient_capabilities.is_empty() {
        return Err(invalid(
            "config.linux.security_context.capabilities.add_ambient_capabilities",
            "ambient capabilities are not supported by sluice",
        ));
    }
    let paths = |v: &[String], field: &str| -> Result<Option<Vec<String>>, Status> {
        if v.is_empty() {
            return Ok(None);
        }
        for (i, p) in v.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(invalid(
                    &format!("config.linux.security_context.{field}[{i}]"),
                    format!("{p:?} must be an absolute path"),
                ));
            }
        }
        Ok(Some(v.to_vec()))
    };
    Ok(Security {
        privileged: sc.privileged,
        capabilities: CapabilityRequest {
            add: caps.add_capabilities,
            drop: caps.drop_capabilities,
        },
        no_new_privs: sc.no_new_privs,
        seccomp: seccomp(sc)?,
        apparmor: apparmor(sc)?,
        masked_paths: paths(&sc.masked_paths, "masked_paths")?,
        readonly_paths: paths(&sc.readonly_paths, "readonly_paths")?,
    })
}

/// `seccomp` (a `SecurityProfile`) wins; otherwise the deprecated `seccomp_profile_path`
/// string; neither means unconfined (what the kubelet asks for when the pod says nothing).
fn seccomp(sc: &cri::LinuxContainerSecurityContext) -> Result<Seccomp, Status> {
    if let Some(p) = &sc.seccomp {
        let field = "config.linux.security_context.seccomp";
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok(Seccomp::RuntimeDefault),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(Seccomp::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                localhost_seccomp(&format!("{field}.localhost_ref"), &p.localhost_ref)
            }
            Err(_) => Err(invalid(
                &format!("{field}.profile_type"),
                format!("unknown profile type {}", p.profile_type),
            )),
        };
    }
    let field = "config.linux.security_context.seccomp_profile_path";
    match sc.seccomp_profile_path.as_str() {
        "" | "unconfined" => Ok(Seccomp::Unconfined),
        "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
        p => match p.strip_prefix("localhost/") {
            Some(path) => localhost_seccomp(field, path),
            None => Err(invalid(
                field,
                format!(
                    "{p:?} is not one of runtime/default, docker/default, unconfined, localhost/<path>"
                ),
            )),
        },
    }
}

fn localhost_seccomp(field: &str, path: &str) -> Result<Seccomp, Status> {
    if path.is_empty() {
        return Err(invalid(field, "required for a Localhost profile"));
    }
    if !path.starts_with('/') {
        return Err(invalid(
            field,
            format!("{path:?} must be an absolute path on the node"),
        ));
    }
    Ok(Seccomp::Localhost(PathBuf::from(path)))
}

/// `apparmor` (a `SecurityProfile`) wins; otherwise the deprecated `apparmor_profile` string;
/// neither means unconfined (the domain refuses profiles a node without AppArmor cannot apply).
fn apparmor(sc: &cri::LinuxContainerSecurityContext) -> Result<AppArmor, Status> {
    if let Some(p) = &sc.apparmor {
        let field = "config.linux.security_context.apparmor";
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok(AppArmor::RuntimeDefault),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(AppArmor::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                if p.localhost_ref.is_empty() {
                    Err(invalid(
                        &format!("{field}.localhost_ref"),
                        "required for a Localhost profile",
                    ))
                } else {
                    Ok(AppArmor::Localhost(p.localhost_ref.clone()))
                }
            }
            Err(_) => Err(invalid(
                &format!("{field}.profile_type"),
                format!("unknown profile type {}", p.profile_type),
            )),
        };
    }
    let field = "config.linux.security_context.apparmor_profile";
    match sc.apparmor_profile.as_str() {
        "" | "unconfined" => Ok(AppArmor::Unconfined),
        "runtime/default" => Ok(AppArmor::RuntimeDefault),
        p => match p.strip_prefix("localhost/") {
            Some(name) if !name.is_empty() => Ok(AppArmor::Localhost(name.to_string())),
            _ => Err(invalid(
                field,
                format!("{p:?} is not one of runtime/default, unconfined, localhost/<profile>"),
            )),
        },
    }
}

/// CRI `LinuxContainerResources` → domain resources; `field` is the path of the message
/// (`config.linux.resources` or `linux`).
pub fn resources(field: &str, r: &cri::LinuxContainerResources) -> Result<Resources, Status> {
    let f = |name: &str| format!("{field}.{name}");
    let non_negative = |name: &str, v: i64| {
        u64::try_from(v).map_err(|_| invalid(&f(name), format!("{v} must not be negative")))
    };
    let cpu_period = non_negative("cpu_period", r.cpu_period)?;
    let cpu_shares = non_negative("cpu_shares", r.cpu_shares)?;
    // -1 is the cgroup spelling of "no quota"; zero means unset.
    if r.cpu_quota < -1 {
        return Err(invalid(
            &f("cpu_quota"),
            format!(
                "{} must be -1 (unlimited), 0 (unset) or positive",
                r.cpu_quota
            ),
        ));
    }
    non_negative("memory_limit_in_bytes", r.memory_limit_in_bytes)?;
    non_negative("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes)?;
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(
            &f("oom_score_adj"),
            format!("{} is outside -1000..1000", r.oom_score_adj),
        ));
    }
    cpu_list(&f("cpuset_cpus"), &r.cpuset_cpus)?;
    cpu_list(&f("cpuset_mems"), &r.cpuset_mems)?;
    let mut hugepage_limits = BTreeMap::new();
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        let hf = f(&format!("hugepage_limits[{i}].page_size"));
        if !is_page_size(&h.page_size) {
            return Err(invalid(
                &hf,
                format!("{:?} is not a page size like 2MB or 1GB", h.page_size),
            ));
        }
        if hugepage_limits
            .insert(h.page_size.clone(), h.limit)
            .is_some()
        {
            return Err(invalid(&hf, format!("{:?} is listed twice", h.page_size)));
        }
    }
    for key in r.unified.keys() {
        // Keys become file names in the container's cgroup directory.
        if key.is_empty() || key.contains('/') || key.starts_with('.') || key.contains('\0') {
            return Err(invalid(
                &f("unified"),
                format!("{key:?} is not a cgroup v2 file name"),
            ));
        }
    }
    Ok(Resources {
        cpu_shares,
        cpu_quota: r.cpu_quota,
        cpu_period,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        memory_limit_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_bytes: r.memory_swap_limit_in_bytes,
        // CRI has no per-container pids limit (the kubelet sets it on the pod cgroup).
        pids_limit: 0,
        hugepage_limits,
        unified: sorted(r.unified.clone()),
        oom_score_adj: r.oom_score_adj,
    })
}

/// A cpuset list (`0-3,5`): empty, or comma-separated numbers and ascending ranges.
fn cpu_list(field: &str, s: &str) -> Result<(), Status> {
    if s.is_empty() {
        return Ok(());
    }
    let bad = || invalid(field, format!("{s:?} is not a CPU/node list like 0-3,5"));
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a.trim().parse().map_err(|_| bad())?;
        let b: u32 = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(bad());
        }
    }
    Ok(())
}

/// `2MB`, `1GB`, `64KB`: digits then a binary unit, as the kubelet spells hugepage sizes.
fn is_page_size(s: &str) -> bool {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && matches!(&s[digits..], "KB" | "MB" | "GB" | "TB" | "PB")
}

/// CRI `Signal` → the name the domain parses (`SIGTERM`, `SIGRTMIN+3`); `RUNTIME_DEFAULT` is
/// `None` (the image's stop signal, else SIGTERM). Aliases become their canonical names.
fn stop_signal(field: &str, v: i32) -> Result<Option<String>, Status> {
    let sig =
        cri::Signal::try_from(v).map_err(|_| invalid(field, format!("unknown signal {v}")))?;
    if sig == cri::Signal::RuntimeDefault {
        return Ok(None);
    }
    let name = sig.as_str_name();
    let name = match name {
        "SIGCLD" => "SIGCHLD".to_string(),
        "SIGIOT" => "SIGABRT".to_string(),
        "SIGPOLL" => "SIGIO".to_string(),
        n => {
            if let Some(k) = n.strip_prefix("SIGRTMINPLUS") {
                format!("SIGRTMIN+{k}")
            } else if let Some(k) = n.strip_prefix("SIGRTMAXMINUS") {
                format!("SIGRTMAX-{k}")
            } else {
                n.to_string()
            }
        }
    };
    Ok(Some(name))
}

/// A signal name (`SIGTERM`, `TERM`, `SIGRTMIN+3`) → CRI `Signal`; unknown names (and numbers)
/// report `RUNTIME_DEFAULT`.
fn cri_signal(name: Option<&str>) -> i32 {
    let Some(name) = name else {
        return cri::Signal::RuntimeDefault as i32;
    };
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let proto = if let Some(k) = full.strip_prefix("SIGRTMIN+") {
        format!("SIGRTMINPLUS{k}")
    } else if let Some(k) = full.strip_prefix("SIGRTMAX-") {
        format!("SIGRTMAXMINUS{k}")
    } else {
        full
    };
    cri::Signal::from_str_name(&proto)
        .map(|s| s as i32)
        .unwrap_or(cri::Signal::RuntimeDefault as i32)
}

// ---- Stop, Exec, Update ----

/// StopContainer's `timeout` in seconds; zero kills at once.
pub fn stop_timeout(seconds: i64) -> Result<Duration, Status> {
    u64::try_from(seconds)
        .map(Duration::from_secs)
        .map_err(|_| invalid("timeout", format!("{seconds} must not be negative")))
}

/// An ExecSync request → (container id, command, timeout); timeout 0 is [`EXEC_NO_TIMEOUT`].
pub fn exec_request(req: cri::ExecSyncRequest) -> Result<(String, Vec<String>, Duration), Status> {
    container_id(&req.container_id)?;
    if req.cmd.is_empty() {
        return Err(invalid("cmd", "required"));
    }
    if req.cmd[0].is_empty() {
        return Err(invalid("cmd[0]", "the program to run must not be empty"));
    }
    let timeout = match u64::try_from(req.timeout) {
        Ok(0) => EXEC_NO_TIMEOUT,
        Ok(s) => Duration::from_secs(s),
        Err(_) => {
            return Err(invalid(
                "timeout",
                format!("{} must not be negative", req.timeout),
            ));
        }
    };
    Ok((req.container_id, req.cmd, timeout))
}

/// The ExecSync response; a command killed at its timeout is `DeadlineExceeded`, which the
/// kubelet turns into a probe timeout (and critest expects an error).
pub fn exec_response(
    r: ExecResult,
    cmd: &[String],
    timeout: Duration,
) -> Result<cri::ExecSyncResponse, Status> {
    if r.timed_out {
        return Err(Status::deadline_exceeded(format!(
            "command {cmd:?} timed out after {}s and was killed",
            timeout.as_secs()
        )));
    }
    Ok(cri::ExecSyncResponse {
        stdout: r.stdout,
        stderr: r.stderr,
        exit_code: r.exit_code,
    })
}

/// UpdateContainerResources → domain resources. sluice is Linux-only: `linux` is required.
pub fn update_resources(req: &cri::UpdateContainerResourcesRequest) -> Result<Resources, Status> {
    container_id(&req.container_id)?;
    let linux = req
        .linux
        .as_ref()
        .ok_or_else(|| invalid("linux", "required (sluice runs Linux containers only)"))?;
    resources("linux", linux)
}

// ---- Status and List ----

fn cri_state(s: ContainerState) -> i32 {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown as i32,
    }
}

fn metadata(r: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: r.config.name.clone(),
        attempt: r.config.attempt,
    }
}

fn image_spec(r: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: r.config.image.clone(),
        user_specified_image: r.config.user_specified_image.clone(),
        ..Default::default()
    }
}

fn cri_mount(m: &BindMount) -> cri::Mount {
    cri::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.to_string_lossy().into_owned(),
        readonly: m.readonly,
        propagation: match m.propagation {
            Propagation::Private => cri::MountPropagation::PropagationPrivate as i32,
            Propagation::RSlave => cri::MountPropagation::PropagationHostToContainer as i32,
            Propagation::RShared => cri::MountPropagation::PropagationBidirectional as i32,
        },
        ..Default::default()
    }
}

/// Domain resources → CRI `LinuxContainerResources` (what ContainerStatus reports, and what
/// the kubelet compares with its desired resources during in-place resize).
pub fn cri_resources(r: &Resources) -> cri::LinuxContainerResources {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    cri::LinuxContainerResources {
        cpu_period: i(r.cpu_period),
        cpu_quota: r.cpu_quota,
        cpu_shares: i(r.cpu_shares),
        memory_limit_in_bytes: r.memory_limit_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| cri::HugepageLimit {
                page_size: page_size.clone(),
                limit: *limit,
            })
            .collect(),
        unified: unsorted(&r.unified),
        memory_swap_limit_in_bytes: r.memory_swap_limit_bytes,
    }
}

/// The CRI status of a container record (also what PodSandboxStatus lists).
pub fn container_status(r: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(metadata(r)),
        state: cri_state(r.state),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: Some(image_spec(r)),
        image_ref: r.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: unsorted(&r.config.labels),
        annotations: unsorted(&r.config.annotations),
        mounts: r.config.mounts.iter().map(cri_mount).collect(),
        log_path: r.log_path.to_string_lossy().into_owned(),
        resources: Some(cri::ContainerResources {
            linux: Some(cri_resources(&r.config.resources)),
            windows: None,
        }),
        image_id: r.image_id.clone(),
        // The record keeps the requested user, not the resolved uid/gid/groups; reporting a
        // guess would mislead the kubelet's supplemental-groups checks.
        user: None,
        stop_signal: cri_signal(r.config.stop_signal.as_deref()),
    }
}

/// The whole ContainerStatus response; with `verbose`, `info["info"]` is a JSON document with
/// the pid, bundle, rootfs, writable layer, config and (when readable) the OCI runtime spec —
/// the shape `crictl inspect` prints and its `{{.info.pid}}` templates expect.
pub fn status_response(
    r: &ContainerRecord,
    verbose: bool,
) -> Result<cri::ContainerStatusResponse, Status> {
    let info = if verbose {
        verbose_info(r)?
    } else {
        HashMap::new()
    };
    Ok(cri::ContainerStatusResponse {
        status: Some(container_status(r)),
        info,
    })
}

fn verbose_info(r: &ContainerRecord) -> Result<HashMap<String, String>, Status> {
    // A small local file, read only for verbose requests; absent before create finished
    // writing it or after removal.
    let spec = std::fs::read(r.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let info = serde_json::json!({
        "id": r.id,
        "sandboxID": r.pod_id,
        "state": r.state,
        "pid": r.pid,
        "bundle": r.bundle,
        "rootfs": r.rootfs,
        "upperDir": r.upper_dir,
        "logPath": r.log_path,
        "imageId": r.image_id,
        "imageRef": r.image_ref,
        "config": r.config,
        "runtimeSpec": spec,
    });
    let text = serde_json::to_string(&info)
        .map_err(|e| Status::internal(format!("encoding verbose container info: {e}")))?;
    Ok(HashMap::from([("info".to_string(), text)]))
}

/// The CRI list item of a container record.
pub fn container_item(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.pod_id.clone(),
        metadata: Some(metadata(r)),
        image: Some(image_spec(r)),
        image_ref: r.image_ref.clone(),
        state: cri_state(r.state),
        created_at: r.created_at,
        labels: unsorted(&r.config.labels),
        annotations: unsorted(&r.config.annotations),
        image_id: r.image_id.clone(),
    }
}

/// The domain filter of a ListContainers request.
pub fn filter(f: Option<cri::ContainerFilter>) -> Result<ContainerFilter, Status> {
    let Some(f) = f else {
        return Ok(ContainerFilter::default());
    };
    let state = match f.state {
        None => None,
        Some(s) => Some(match cri::ContainerState::try_from(s.state) {
            Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
            Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited,
            Ok(cri::ContainerState::ContainerUnknown) => ContainerState::Unknown,
            Err(_) => {
                return Err(invalid(
                    "filter.state.state",
                    format!("unknown container state {}", s.state),
                ));
            }
        }),
    };
    Ok(ContainerFilter {
        id: Some(f.id).filter(|s| !s.is_empty()),
        state,
        pod_id: Some(f.pod_sandbox_id).filter(|s| !s.is_empty()),
        labels: sorted(f.label_selector),
    })
}

// ---- Stats ----

/// The domain filter of a ListContainerStats request.
pub fn stats_filter(f: Option<cri::ContainerStatsFilter>) -> ContainerFilter {
    let f = f.unwrap_or_default();
    ContainerFilter {
        id: Some(f.id).filter(|s| !s.is_empty()),
        state: None,
        pod_id: Some(f.pod_sandbox_id).filter(|s| !s.is_empty()),
        labels: sorted(f.label_selector),
    }
}

/// The domain filter of a ListPodSandboxStats request.
pub fn pod_stats_filter(f: Option<cri::PodSandboxStatsFilter>) -> PodFilter {
    let f = f.unwrap_or_default();
    PodFilter {
        id: Some(f.id).filter(|s| !s.is_empty()),
        state: None,
        labels: sorted(f.label_selector),
    }
}

fn u64v(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

fn cpu(timestamp: i64, usage_ns: u64) -> cri::CpuUsage {
    // usage_nano_cores is left unset: the kubelet derives it from two samples.
    cri::CpuUsage {
        timestamp,
        usage_core_nano_seconds: u64v(usage_ns),
        ..Default::default()
    }
}

fn memory(timestamp: i64, working_set: u64, usage: u64) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp,
        working_set_bytes: u64v(working_set),
        usage_bytes: u64v(usage),
        ..Default::default()
    }
}

/// Domain container stats → CRI `ContainerStats`.
pub fn container_stats(s: &ContainerStats) -> cri::ContainerStats {
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: s.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: s.name.clone(),
                attempt: s.attempt,
            }),
            labels: unsorted(&s.labels),
            annotations: unsorted(&s.annotations),
        }),
        cpu: Some(cpu(s.timestamp, s.cpu_usage_ns)),
        memory: Some(memory(
            s.timestamp,
            s.memory_working_set_bytes,
            s.memory_usage_bytes,
        )),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: s.timestamp,
            // The domain does not name the writable layer's filesystem yet; the kubelet
            // skips the filesystem lookup when fs_id is unset.
            fs_id: None,
            used_bytes: u64v(s.writable_bytes),
            inodes_used: u64v(s.writable_inodes),
        }),
        swap: None,
        io: None,
    }
}

/// Domain pod stats → CRI `PodSandboxStats`; `pod` supplies the attributes (metadata, labels,
/// annotations) when the pod still exists.
pub fn pod_sandbox_stats(s: &PodStats, pod: Option<&PodRecord>) -> cri::PodSandboxStats {
    let attributes = cri::PodSandboxAttributes {
        id: s.pod_id.clone(),
        metadata: pod.map(|p| {
            let m = &p.config.metadata;
            cri::PodSandboxMetadata {
                name: m.name.clone(),
                uid: m.uid.clone(),
                namespace: m.namespace.clone(),
                attempt: m.attempt,
            }
        }),
        labels: pod.map(|p| unsorted(&p.config.labels)).unwrap_or_default(),
        annotations: pod
            .map(|p| unsorted(&p.config.annotations))
            .unwrap_or_default(),
    };
    cri::PodSandboxStats {
        attributes: Some(attributes),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu(s.timestamp, s.cpu_usage_ns)),
            memory: Some(memory(
                s.timestamp,
                s.memory_working_set_bytes,
                s.memory_usage_bytes,
            )),
            network: None,
            process: None,
            containers: s.containers.iter().map(container_stats).collect(),
            io: None,
        }),
        windows: None,
    }
}

/// ListPodSandboxStats: each pod's stats with the attributes of its record in `pods`.
pub fn pod_sandbox_stats_list(stats: &[PodStats], pods: &[PodRecord]) -> Vec<cri::PodSandboxStats> {
    stats
        .iter()
        .map(|s| pod_sandbox_stats(s, pods.iter().find(|p| p.id == s.pod_id)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request() -> cri::CreateContainerRequest {
        cri::CreateContainerRequest {
            pod_sandbox_id: "pod1".into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "web".into(),
                    attempt: 3,
                }),
                image: Some(cri::ImageSpec {
                    image: "busybox:latest".into(),
                    ..Default::default()
                }),
                command: vec!["sh".into()],
                args: vec!["-c".into(), "echo hi".into()],
                working_dir: "/srv".into(),
                envs: vec![cri::KeyValue {
                    key: "A".into(),
                    value: "b=c".into(),
                }],
                mounts: vec![cri::Mount {
                    container_path: "/data".into(),
                    host_path: "/var/lib/data".into(),
                    readonly: true,
                    selinux_relabel: true,
                    propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                    ..Default::default()
                }],
                labels: HashMap::from([("app".into(), "web".into())]),
                annotations: HashMap::from([("note".into(), "x".into())]),
                log_path: "web/3.log".into(),
                stdin: true,
                stdin_once: true,
                tty: true,
                linux: Some(cri::LinuxContainerConfig {
                    resources: Some(cri::LinuxContainerResources {
                        cpu_period: 100_000,
                        cpu_quota: 50_000,
                        cpu_shares: 512,
                        memory_limit_in_bytes: 32 << 20,
                        oom_score_adj: 500,
                        cpuset_cpus: "0-1".into(),
                        cpuset_mems: "0".into(),
                        hugepage_limits: vec![cri::HugepageLimit {
                            page_size: "2MB".into(),
                            limit: 4 << 20,
                        }],
                        unified: HashMap::from([("memory.high".into(), "1000000".into())]),
                        memory_swap_limit_in_bytes: 64 << 20,
                    }),
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        capabilities: Some(cri::Capability {
                            add_capabilities: vec!["NET_ADMIN".into()],
                            drop_capabilities: vec!["ALL".into()],
                            add_ambient_capabilities: vec![],
                        }),
                        privileged: false,
                        namespace_options: Some(cri::NamespaceOption {
                            pid: cri::NamespaceMode::Target as i32,
                            target_id: "c0".into(),
                            ..Default::default()
                        }),
                        run_as_user: Some(cri::Int64Value { value: 1000 }),
                        run_as_group: Some(cri::Int64Value { value: 2000 }),
                        supplemental_groups: vec![1234, 5678],
                        readonly_rootfs: true,
                        no_new_privs: true,
                        masked_paths: vec!["/proc/kcore".into()],
                        readonly_paths: vec![],
                        seccomp: Some(cri::SecurityProfile {
                            profile_type: cri::security_profile::ProfileType::Localhost as i32,
                            localhost_ref: "/var/lib/kubelet/seccomp/p.json".into(),
                        }),
                        ..Default::default()
                    }),
                }),
                stop_signal: cri::Signal::Sigrtminplus3 as i32,
                ..Default::default()
            }),
            sandbox_config: None,
        }
    }

    fn sc(r: &mut cri::CreateContainerRequest) -> &mut cri::LinuxContainerSecurityContext {
        r.config
            .as_mut()
            .unwrap()
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
    }

    fn res(r: &mut cri::CreateContainerRequest) -> &mut cri::LinuxContainerResources {
        r.config
            .as_mut()
            .unwrap()
            .linux
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
    }

    fn cfg(r: &mut cri::CreateContainerRequest) -> &mut cri::ContainerConfig {
        r.config.as_mut().unwrap()
    }

    #[test]
    fn a_full_request_converts_field_by_field() {
        let (pod, c) = container_config(request()).unwrap();
        assert_eq!(pod, "pod1");
        assert_eq!(c.name, "web");
        assert_eq!(c.attempt, 3);
        assert_eq!(c.image, "busybox:latest");
        assert_eq!(c.command, vec!["sh"]);
        assert_eq!(c.args, vec!["-c", "echo hi"]);
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.env, vec![("A".to_string(), "b=c".to_string())]);
        assert_eq!(
            c.mounts,
            vec![BindMount {
                container_path: "/data".into(),
                host_path: "/var/lib/data".into(),
                readonly: true,
                propagation: Propagation::RSlave,
            }]
        );
        assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(c.annotations.get("note").map(String::as_str), Some("x"));
        assert_eq!(c.log_path, "web/3.log");
        assert!(c.stdin && c.stdin_once && c.tty);
        assert_eq!(
            c.user,
            UserRequest {
                uid: Some(1000),
                username: None,
                gid: Some(2000),
                supplemental_groups: vec![1234, 5678],
                image_user: String::new(),
            }
        );
        assert!(c.readonly_rootfs);
        assert_eq!(
            c.security,
            Security {
                privileged: false,
                capabilities: CapabilityRequest {
                    add: vec!["NET_ADMIN".into()],
                    drop: vec!["ALL".into()],
                },
                no_new_privs: true,
                seccomp: Seccomp::Localhost("/var/lib/kubelet/seccomp/p.json".into()),
                apparmor: AppArmor::Unconfined,
                masked_paths: Some(vec!["/proc/kcore".into()]),
                readonly_paths: None,
            }
        );
        assert_eq!(
            c.resources,
            Resources {
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                cpuset_cpus: "0-1".into(),
                cpuset_mems: "0".into(),
                memory_limit_bytes: 32 << 20,
                memory_swap_limit_bytes: 64 << 20,
                pids_limit: 0,
                hugepage_limits: [("2MB".to_string(), 4u64 << 20)].into(),
                unified: [("memory.high".to_string(), "1000000".to_string())].into(),
                oom_score_adj: 500,
            }
        );
        assert_eq!(c.pid, NsMode::Target);
        assert_eq!(c.pid_target, "c0");
        assert_eq!(c.stop_signal.as_deref(), Some("SIGRTMIN+3"));
    }

    #[test]
    fn a_minimal_request_gets_the_defaults() {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: "p".into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "c".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: "sha256:abc".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        let (_, c) = container_config(req).unwrap();
        assert_eq!(c.pid, NsMode::Container);
        assert_eq!(c.security, Security::default());
        assert_eq!(c.security.seccomp, Seccomp::Unconfined);
        assert_eq!(c.resources, Resources::default());
        assert_eq!(c.user, UserRequest::default());
        assert_eq!(c.stop_signal, None);
        assert_eq!(c.log_path, "");
        assert!(c.mounts.is_empty());
    }

    #[test]
    fn pid_modes_map_one_to_one() {
        for (mode, want) in [
            (cri::NamespaceMode::Pod, NsMode::Pod),
            (cri::NamespaceMode::Container, NsMode::Container),
            (cri::NamespaceMode::Node, NsMode::Node),
        ] {
            let mut r = request();
            sc(&mut r).namespace_options = Some(cri::NamespaceOption {
                pid: mode as i32,
                target_id: "ignored".into(),
                ..Default::default()
            });
            let (_, c) = container_config(r).unwrap();
            assert_eq!(c.pid, want);
            assert_eq!(c.pid_target, "", "target only for TARGET");
        }
    }

    #[test]
    fn seccomp_profiles_new_and_deprecated_forms() {
        use cri::security_profile::ProfileType;
        let profile = |t: ProfileType, r: &str| {
            let mut req = request();
            sc(&mut req).seccomp = Some(cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            });
            // The new field wins over the deprecated one.
            sc(&mut req).seccomp_profile_path = "unconfined".into();
            container_config(req).map(|(_, c)| c.security.seccomp)
        };
        assert_eq!(
            profile(ProfileType::RuntimeDefault, "").unwrap(),
            Seccomp::RuntimeDefault
        );
        assert_eq!(
            profile(ProfileType::Unconfined, "").unwrap(),
            Seccomp::Unconfined
        );
        assert_eq!(
            profile(ProfileType::Localhost, "/p.json").unwrap(),
            Seccomp::Localhost("/p.json".into())
        );
        let path = |p: &str| {
            let mut req = request();
            sc(&mut req).seccomp = None;
            sc(&mut req).seccomp_profile_path = p.into();
            container_config(req).map(|(_, c)| c.security.seccomp)
        };
        assert_eq!(path("").unwrap(), Seccomp::Unconfined);
        assert_eq!(path("unconfined").unwrap(), Seccomp::Unconfined);
        assert_eq!(path("runtime/default").unwrap(), Seccomp::RuntimeDefault);
        assert_eq!(path("docker/default").unwrap(), Seccomp::RuntimeDefault);
        assert_eq!(
            path("localhost//etc/s.json").unwrap(),
            Seccomp::Localhost("/etc/s.json".into())
        );
    }

    #[test]
    fn apparmor_profiles_new_and_deprecated_forms() {
        use cri::security_profile::ProfileType;
        let profile = |t: ProfileType, r: &str| {
            let mut req = request();
            sc(&mut req).apparmor = Some(cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            });
            container_config(req).map(|(_, c)| c.security.apparmor)
        };
        assert_eq!(
            profile(ProfileType::RuntimeDefault, "").unwrap(),
            AppArmor::RuntimeDefault
        );
        assert_eq!(
            profile(ProfileType::Unconfined, "").unwrap(),
            AppArmor::Unconfined
        );
        assert_eq!(
            profile(ProfileType::Localhost, "k8s-nginx").unwrap(),
            AppArmor::Localhost("k8s-nginx".into())
        );
        let old = |p: &str| {
            let mut req = request();
            sc(&mut req).apparmor_profile = p.into();
            container_config(req).map(|(_, c)| c.security.apparmor)
        };
        assert_eq!(old("").unwrap(), AppArmor::Unconfined);
        assert_eq!(old("unconfined").unwrap(), AppArmor::Unconfined);
        assert_eq!(old("runtime/default").unwrap(), AppArmor::RuntimeDefault);
        assert_eq!(
            old("localhost/k8s-x").unwrap(),
            AppArmor::Localhost("k8s-x".into())
        );
    }

    #[test]
    fn username_alone_and_with_group_is_accepted() {
        let mut r = request();
        sc(&mut r).run_as_user = None;
        sc(&mut r).run_as_username = "nobody".into();
        let (_, c) = container_config(r).unwrap();
        assert_eq!(c.user.username.as_deref(), Some("nobody"));
        assert_eq!(c.user.uid, None);
        assert_eq!(c.user.gid, Some(2000));
    }

    #[test]
    fn mount_propagations_map() {
        for (p, want) in [
            (
                cri::MountPropagation::PropagationPrivate,
                Propagation::Private,
            ),
            (
                cri::MountPropagation::PropagationHostToContainer,
                Propagation::RSlave,
            ),
            (
                cri::MountPropagation::PropagationBidirectional,
                Propagation::RShared,
            ),
        ] {
            let mut r = request();
            cfg(&mut r).mounts[0].propagation = p as i32;
            let (_, c) = container_config(r).unwrap();
            assert_eq!(c.mounts[0].propagation, want);
            // And back, for ContainerStatus.
            assert_eq!(cri_mount(&c.mounts[0]).propagation, p as i32);
        }
    }

    #[test]
    fn stop_signals_map_to_names_and_back() {
        let cases = [
            (cri::Signal::Sigterm, "SIGTERM"),
            (cri::Signal::Sigkill, "SIGKILL"),
            (cri::Signal::Sigusr1, "SIGUSR1"),
            (cri::Signal::Sigrtmin, "SIGRTMIN"),
            (cri::Signal::Sigrtminplus15, "SIGRTMIN+15"),
            (cri::Signal::Sigrtmaxminus1, "SIGRTMAX-1"),
            (cri::Signal::Sigrtmax, "SIGRTMAX"),
        ];
        for (sig, name) in cases {
            assert_eq!(stop_signal("f", sig as i32).unwrap().as_deref(), Some(name));
            assert_eq!(cri_signal(Some(name)), sig as i32, "{name}");
        }
        // Aliases become the canonical signal.
        assert_eq!(
            stop_signal("f", cri::Signal::Sigcld as i32)
                .unwrap()
                .as_deref(),
            Some("SIGCHLD")
        );
        assert_eq!(
            stop_signal("f", cri::Signal::Sigiot as i32)
                .unwrap()
                .as_deref(),
            Some("SIGABRT")
        );
        assert_eq!(
            stop_signal("f", cri::Signal::Sigpoll as i32)
                .unwrap()
                .as_deref(),
            Some("SIGIO")
        );
        assert_eq!(
            stop_signal("f", cri::Signal::RuntimeDefault as i32).unwrap(),
            None
        );
        assert_eq!(cri_signal(None), cri::Signal::RuntimeDefault as i32);
        assert_eq!(cri_signal(Some("term")), cri::Signal::Sigterm as i32);
        assert_eq!(cri_signal(Some("15")), cri::Signal::RuntimeDefault as i32);
    }

    type Mutation = Box<dyn Fn(&mut cri::CreateContainerRequest)>;

    #[test]
    fn bad_create_requests_name_the_field() {
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.pod_sandbox_id.clear()), "pod_sandbox_id:"),
            (Box::new(|r| r.config = None), "config:"),
            (Box::new(|r| cfg(r).metadata = None), "config.metadata:"),
            (
                Box::new(|r| cfg(r).metadata.as_mut().unwrap().name.clear()),
                "config.metadata.name:",
            ),
            (
                Box::new(|r| cfg(r).metadata.as_mut().unwrap().name = "a_b".into()),
                "config.metadata.name:",
            ),
            (Box::new(|r| cfg(r).image = None), "config.image.image:"),
            (
                Box::new(|r| cfg(r).image.as_mut().unwrap().image.clear()),
                "config.image.image:",
            ),
            (
                Box::new(|r| cfg(r).working_dir = "srv".into()),
                "config.working_dir:",
            ),
            (
                Box::new(|r| cfg(r).envs[0].key.clear()),
                "config.envs[0].key:",
            ),
            (
                Box::new(|r| cfg(r).envs[0].key = "A=B".into()),
                "config.envs[0].key:",
            ),
            (
                Box::new(|r| cfg(r).mounts[0].container_path.clear()),
                "config.mounts[0].container_path:",
            ),
            (
                Box::new(|r| cfg(r).mounts[0].container_path = "data".into()),
                "config.mounts[0].container_path:",
            ),
            (
                Box::new(|r| cfg(r).mounts[0].host_path.clear()),
                "config.mounts[0].host_path:",
            ),
            (
                Box::new(|r| cfg(r).mounts[0].host_path = "rel".into()),
                "config.mounts[0].host_path:",
            ),
            (
                Box::new(|r| cfg(r).mounts[0].propagation = 7),
                "config.mounts[0].propagation:",
            ),
            (
                Box::new(|r| {
                    cfg(r).mounts[0].image = Some(cri::ImageSpec {
                        image: "img".into(),
                        ..Default::default()
                    })
                }),
                "config.mounts[0].image:",
            ),
            (
                Box::new(|r| {
                    cfg(r).mounts[0].uid_mappings = vec![cri::IdMapping {
                        host_id: 1,
                        container_id: 0,
                        length: 1,
                    }]
                }),
                "config.mounts[0].uidMappings:",
            ),
            (
                Box::new(|r| {
                    cfg(r).mounts[0].gid_mappings = vec![cri::IdMapping {
                        host_id: 1,
                        container_id: 0,
                        length: 1,
                    }]
                }),
                "config.mounts[0].gidMappings:",
            ),
            (
                Box::new(|r| cfg(r).mounts[0].recursive_read_only = true),
                "config.mounts[0].recursive_read_only:",
            ),
            (
                Box::new(|r| {
                    let mut m = cfg(r).mounts[0].clone();
                    m.container_path = "/data/".into();
                    cfg(r).mounts.push(m);
                }),
                "config.mounts[1].container_path:",
            ),
            (
                Box::new(|r| {
                    cfg(r).devices = vec![cri::Device {
                        container_path: "/dev/x".into(),
                        host_path: "/dev/null".into(),
                        permissions: "rwm".into(),
                    }]
                }),
                "config.devices:",
            ),
            (
                Box::new(|r| {
                    cfg(r).cdi_devices = vec![cri::CdiDevice {
                        name: "vendor.com/gpu=0".into(),
                    }]
                }),
                "config.CDI_devices:",
            ),
            (
                Box::new(|r| cfg(r).log_path = "/abs/0.log".into()),
                "config.log_path:",
            ),
            (
                Box::new(|r| cfg(r).log_path = "a/../../0.log".into()),
                "config.log_path:",
            ),
            (
                Box::new(|r| cfg(r).stop_signal = 999),
                "config.stop_signal:",
            ),
            (
                Box::new(|r| res(r).cpu_period = -1),
                "config.linux.resources.cpu_period:",
            ),
            (
                Box::new(|r| res(r).cpu_shares = -2),
                "config.linux.resources.cpu_shares:",
            ),
            (
                Box::new(|r| res(r).cpu_quota = -2),
                "config.linux.resources.cpu_quota:",
            ),
            (
                Box::new(|r| res(r).memory_limit_in_bytes = -1),
                "config.linux.resources.memory_limit_in_bytes:",
            ),
            (
                Box::new(|r| res(r).memory_swap_limit_in_bytes = -5),
                "config.linux.resources.memory_swap_limit_in_bytes:",
            ),
            (
                Box::new(|r| res(r).oom_score_adj = 1001),
                "config.linux.resources.oom_score_adj:",
            ),
            (
                Box::new(|r| res(r).cpuset_cpus = "0-x".into()),
                "config.linux.resources.cpuset_cpus:",
            ),
            (
                Box::new(|r| res(r).cpuset_mems = "3-1".into()),
                "config.linux.resources.cpuset_mems:",
            ),
            (
                Box::new(|r| res(r).hugepage_limits[0].page_size = "2M".into()),
                "config.linux.resources.hugepage_limits[0].page_size:",
            ),
            (
                Box::new(|r| {
                    let h = res(r).hugepage_limits[0].clone();
                    res(r).hugepage_limits.push(h);
                }),
                "config.linux.resources.hugepage_limits[1].page_size:",
            ),
            (
                Box::new(|r| {
                    res(r).unified.insert("../cgroup.procs".into(), "1".into());
                }),
                "config.linux.resources.unified:",
            ),
            (
                Box::new(|r| sc(r).run_as_user = Some(cri::Int64Value { value: -1 })),
                "config.linux.security_context.run_as_user:",
            ),
            (
                Box::new(|r| sc(r).run_as_group = Some(cri::Int64Value { value: 1 << 40 })),
                "config.linux.security_context.run_as_group:",
            ),
            (
                Box::new(|r| sc(r).run_as_user = None),
                "config.linux.security_context.run_as_group:",
            ),
            (
                Box::new(|r| sc(r).supplemental_groups[1] = -3),
                "config.linux.security_context.supplemental_groups[1]:",
            ),
            (
                Box::new(|r| {
                    sc(r).supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32
                }),
                "config.linux.security_context.supplemental_groups_policy:",
            ),
            (
                Box::new(|r| {
                    sc(r)
                        .capabilities
                        .as_mut()
                        .unwrap()
                        .add_ambient_capabilities = vec!["NET_RAW".into()]
                }),
                "config.linux.security_context.capabilities.add_ambient_capabilities:",
            ),
            (
                Box::new(|r| sc(r).masked_paths = vec!["proc/kcore".into()]),
                "config.linux.security_context.masked_paths[0]:",
            ),
            (
                Box::new(|r| sc(r).readonly_paths = vec!["/ok".into(), "rel".into()]),
                "config.linux.security_context.readonly_paths[1]:",
            ),
            (
                Box::new(|r| sc(r).seccomp.as_mut().unwrap().localhost_ref.clear()),
                "config.linux.security_context.seccomp.localhost_ref:",
            ),
            (
                Box::new(|r| sc(r).seccomp.as_mut().unwrap().localhost_ref = "p.json".into()),
                "config.linux.security_context.seccomp.localhost_ref:",
            ),
            (
                Box::new(|r| sc(r).seccomp.as_mut().unwrap().profile_type = 9),
                "config.linux.security_context.seccomp.profile_type:",
            ),
            (
                Box::new(|r| {
                    sc(r).seccomp = None;
                    sc(r).seccomp_profile_path = "bogus".into();
                }),
                "config.linux.security_context.seccomp_profile_path:",
            ),
            (
                Box::new(|r| {
                    sc(r).seccomp = None;
                    sc(r).seccomp_profile_path = "localhost/rel.json".into();
                }),
                "config.linux.security_context.seccomp_profile_path:",
            ),
            (
                Box::new(|r| {
                    sc(r).apparmor = Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::Localhost as i32,
                        localhost_ref: String::new(),
                    })
                }),
                "config.linux.security_context.apparmor.localhost_ref:",
            ),
            (
                Box::new(|r| {
                    sc(r).apparmor = Some(cri::SecurityProfile {
                        profile_type: 5,
                        localhost_ref: String::new(),
                    })
                }),
                "config.linux.security_context.apparmor.profile_type:",
            ),
            (
                Box::new(|r| sc(r).apparmor_profile = "localhost/".into()),
                "config.linux.security_context.apparmor_profile:",
            ),
            (
                Box::new(|r| sc(r).apparmor_profile = "docker-default".into()),
                "config.linux.security_context.apparmor_profile:",
            ),
            (
                Box::new(|r| sc(r).namespace_options.as_mut().unwrap().pid = 8),
                "config.linux.security_context.namespace_options.pid:",
            ),
            (
                Box::new(|r| sc(r).namespace_options.as_mut().unwrap().target_id.clear()),
                "config.linux.security_context.namespace_options.target_id:",
            ),
            (
                Box::new(|r| {
                    sc(r).namespace_options.as_mut().unwrap().userns_options =
                        Some(cri::UserNamespace {
                            mode: cri::NamespaceMode::Pod as i32,
                            ..Default::default()
                        })
                }),
                "config.linux.security_context.namespace_options.userns_options:",
            ),
        ];
        for (mutate, field) in cases {
            let mut r = request();
            mutate(&mut r);
            let err = container_config(r).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(
                err.message().starts_with(field),
                "{} vs {field}",
                err.message()
            );
        }
    }

    #[test]
    fn selinux_relabel_and_node_userns_are_accepted() {
        let mut r = request();
        cfg(&mut r).mounts[0].selinux_relabel = true;
        sc(&mut r)
            .namespace_options
            .as_mut()
            .unwrap()
            .userns_options = Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        });
        sc(&mut r).selinux_options = Some(cri::SeLinuxOption {
            level: "s0:c1".into(),
            ..Default::default()
        });
        assert!(container_config(r).is_ok());
    }

    #[test]
    fn update_resources_requires_linux_and_names_fields() {
        let mut req = cri::UpdateContainerResourcesRequest {
            container_id: "c1".into(),
            linux: Some(cri::LinuxContainerResources {
                cpu_shares: 2,
                memory_limit_in_bytes: 1 << 30,
                cpu_quota: -1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = update_resources(&req).unwrap();
        assert_eq!(r.cpu_shares, 2);
        assert_eq!(r.memory_limit_bytes, 1 << 30);
        assert_eq!(r.cpu_quota, -1);
        req.linux.as_mut().unwrap().oom_score_adj = -1001;
        let e = update_resources(&req).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("linux.oom_score_adj:"), "{e:?}");
        req.linux = None;
        let e = update_resources(&req).unwrap_err();
        assert!(e.message().starts_with("linux:"), "{e:?}");
        req.container_id.clear();
        let e = update_resources(&req).unwrap_err();
        assert!(e.message().starts_with("container_id:"), "{e:?}");
    }

    #[test]
    fn resources_round_trip_through_status() {
        let mut r = request();
        let want = res(&mut r).clone();
        let (_, c) = container_config(r).unwrap();
        let mut got = cri_resources(&c.resources);
        got.hugepage_limits
            .sort_by(|a, b| a.page_size.cmp(&b.page_size));
        assert_eq!(got, want);
    }

    #[test]
    fn exec_requests_convert_and_reject() {
        let req = |cmd: Vec<&str>, t: i64| cri::ExecSyncRequest {
            container_id: "c1".into(),
            cmd: cmd.into_iter().map(String::from).collect(),
            timeout: t,
        };
        let (id, cmd, t) = exec_request(req(vec!["ls", "-l"], 5)).unwrap();
        assert_eq!(id, "c1");
        assert_eq!(cmd, vec!["ls", "-l"]);
        assert_eq!(t, Duration::from_secs(5));
        assert_eq!(exec_request(req(vec!["ls"], 0)).unwrap().2, EXEC_NO_TIMEOUT);
        for (r, field) in [
            (req(vec![], 1), "cmd:"),
            (req(vec![""], 1), "cmd[0]:"),
            (req(vec!["ls"], -1), "timeout:"),
            (
                cri::ExecSyncRequest {
                    container_id: String::new(),
                    ..req(vec!["ls"], 1)
                },
                "container_id:",
            ),
        ] {
            let e = exec_request(r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{e:?}");
        }
    }

    #[test]
    fn exec_results_and_timeouts() {
        let ok = exec_response(
            ExecResult {
                stdout: b"out".to_vec(),
                stderr: b"err".to_vec(),
                exit_code: 3,
                timed_out: false,
            },
            &["x".into()],
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(ok.stdout, b"out");
        assert_eq!(ok.stderr, b"err");
        assert_eq!(ok.exit_code, 3);
        let e = exec_response(
            ExecResult {
                stdout: vec![],
                stderr: vec![],
                exit_code: -1,
                timed_out: true,
            },
            &["sleep".into(), "9".into()],
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert!(e.message().contains("timed out after 1s"), "{e:?}");
    }

    #[test]
    fn stop_timeouts() {
        assert_eq!(stop_timeout(0).unwrap(), Duration::ZERO);
        assert_eq!(stop_timeout(30).unwrap(), Duration::from_secs(30));
        let e = stop_timeout(-1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("timeout:"));
        assert!(
            container_id("")
                .unwrap_err()
                .message()
                .starts_with("container_id:")
        );
        assert_eq!(container_id("abc").unwrap(), "abc");
    }

    fn record(bundle: PathBuf) -> ContainerRecord {
        let (_, config) = container_config(request()).unwrap();
        ContainerRecord {
            id: "c".repeat(64),
            pod_id: "p".repeat(64),
            config,
            state: ContainerState::Exited,
            created_at: 10,
            started_at: 20,
            finished_at: 30,
            exit_code: 3,
            reason: "Error".into(),
            message: "boom".into(),
            image_id: "sha256:img".into(),
            image_ref: "docker.io/library/busybox@sha256:dig".into(),
            log_path: "/var/log/pods/x/web/3.log".into(),
            pid: 0,
            bundle,
            rootfs: "/run/sluice/overlay/c/merged".into(),
            upper_dir: "/var/lib/sluice/overlay/c/upper".into(),
        }
    }

    #[test]
    fn status_reports_every_field() {
        let r = record("/nonexistent".into());
        let s = container_status(&r);
        assert_eq!(s.id, r.id);
        assert_eq!(
            s.metadata,
            Some(cri::ContainerMetadata {
                name: "web".into(),
                attempt: 3
            })
        );
        assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!((s.created_at, s.started_at, s.finished_at), (10, 20, 30));
        assert_eq!(s.exit_code, 3);
        assert_eq!(s.image.as_ref().unwrap().image, "busybox:latest");
        assert_eq!(s.image_ref, "docker.io/library/busybox@sha256:dig");
        assert_eq!(s.image_id, "sha256:img");
        assert_eq!((s.reason.as_str(), s.message.as_str()), ("Error", "boom"));
        assert_eq!(s.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(s.annotations.get("note").map(String::as_str), Some("x"));
        assert_eq!(s.mounts.len(), 1);
        assert_eq!(s.mounts[0].container_path, "/data");
        assert_eq!(s.mounts[0].host_path, "/var/lib/data");
        assert!(s.mounts[0].readonly);
        assert_eq!(s.log_path, "/var/log/pods/x/web/3.log");
        let res = s.resources.unwrap().linux.unwrap();
        assert_eq!(res.memory_limit_in_bytes, 32 << 20);
        assert_eq!(res.cpu_shares, 512);
        assert_eq!(s.stop_signal, cri::Signal::Sigrtminplus3 as i32);
        assert!(s.user.is_none());

        for (st, want) in [
            (
                ContainerState::Created,
                cri::ContainerState::ContainerCreated,
            ),
            (
                ContainerState::Running,
                cri::ContainerState::ContainerRunning,
            ),
            (ContainerState::Exited, cri::ContainerState::ContainerExited),
            (
                ContainerState::Unknown,
                cri::ContainerState::ContainerUnknown,
            ),
        ] {
            let mut r = record("/nonexistent".into());
            r.state = st;
            assert_eq!(container_status(&r).state, want as i32);
            assert_eq!(container_item(&r).state, want as i32);
        }
    }

    #[test]
    fn verbose_status_carries_pid_bundle_and_the_runtime_spec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"]}}"#,
        )
        .unwrap();
        let mut r = record(dir.path().to_path_buf());
        r.pid = 4242;
        r.state = ContainerState::Running;
        let quiet = status_response(&r, false).unwrap();
        assert!(quiet.info.is_empty());
        let resp = status_response(&r, true).unwrap();
        let info: serde_json::Value = serde_json::from_str(resp.info.get("info").unwrap()).unwrap();
        assert_eq!(info["pid"], 4242);
        assert_eq!(info["sandboxID"], r.pod_id);
        assert_eq!(info["bundle"], dir.path().to_str().unwrap());
        assert_eq!(info["rootfs"], "/run/sluice/overlay/c/merged");
        assert_eq!(info["config"]["name"], "web");
        assert_eq!(info["runtimeSpec"]["process"]["args"][0], "sh");
        assert_eq!(resp.status.unwrap().id, r.id);

        // Without a readable spec the rest is still reported.
        let r = record(dir.path().join("gone"));
        let resp = status_response(&r, true).unwrap();
        let info: serde_json::Value = serde_json::from_str(resp.info.get("info").unwrap()).unwrap();
        assert!(info["runtimeSpec"].is_null());
        assert_eq!(info["pid"], 0);
    }

    #[test]
    fn list_items_carry_the_summary() {
        let r = record("/x".into());
        let c = container_item(&r);
        assert_eq!(c.id, r.id);
        assert_eq!(c.pod_sandbox_id, r.pod_id);
        assert_eq!(c.metadata.unwrap().name, "web");
        assert_eq!(c.image.unwrap().image, "busybox:latest");
        assert_eq!(c.image_ref, r.image_ref);
        assert_eq!(c.image_id, r.image_id);
        assert_eq!(c.created_at, 10);
        assert_eq!(c.labels.len(), 1);
        assert_eq!(c.annotations.len(), 1);
    }

    #[test]
    fn list_filters_convert() {
        assert_eq!(filter(None).unwrap(), ContainerFilter::default());
        let f = filter(Some(cri::ContainerFilter {
            id: "abc".into(),
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            pod_sandbox_id: "p1".into(),
            label_selector: HashMap::from([("a".into(), "b".into())]),
        }))
        .unwrap();
        assert_eq!(
            f,
            ContainerFilter {
                id: Some("abc".into()),
                state: Some(ContainerState::Running),
                pod_id: Some("p1".into()),
                labels: [("a".to_string(), "b".to_string())].into(),
            }
        );
        let empty = filter(Some(cri::ContainerFilter::default())).unwrap();
        assert_eq!(empty, ContainerFilter::default());
        let e = filter(Some(cri::ContainerFilter {
            state: Some(cri::ContainerStateValue { state: 9 }),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("filter.state.state:"), "{e:?}");

        let sf = stats_filter(Some(cri::ContainerStatsFilter {
            id: String::new(),
            pod_sandbox_id: "p2".into(),
            label_selector: HashMap::from([("k".into(), "v".into())]),
        }));
        assert_eq!(sf.id, None);
        assert_eq!(sf.pod_id.as_deref(), Some("p2"));
        assert_eq!(sf.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(stats_filter(None), ContainerFilter::default());

        let pf = pod_stats_filter(Some(cri::PodSandboxStatsFilter {
            id: "p3".into(),
            label_selector: HashMap::from([("x".into(), "y".into())]),
        }));
        assert_eq!(pf.id.as_deref(), Some("p3"));
        assert_eq!(pf.state, None);
        assert_eq!(pf.labels.get("x").map(String::as_str), Some("y"));
        assert_eq!(pod_stats_filter(None).id, None);
    }

    fn cstats(id: &str) -> ContainerStats {
        ContainerStats {
            id: id.into(),
            pod_id: "p1".into(),
            name: "web".into(),
            attempt: 1,
            labels: [("app".to_string(), "web".to_string())].into(),
            annotations: [("n".to_string(), "1".to_string())].into(),
            timestamp: 99,
            cpu_usage_ns: 1_000,
            memory_working_set_bytes: 2_000,
            memory_usage_bytes: 3_000,
            writable_bytes: 4_000,
            writable_inodes: 5,
        }
    }

    #[test]
    fn container_stats_convert() {
        let s = container_stats(&cstats("c1"));
        let a = s.attributes.unwrap();
        assert_eq!(a.id, "c1");
        assert_eq!(
            a.metadata,
            Some(cri::ContainerMetadata {
                name: "web".into(),
                attempt: 1
            })
        );
        assert_eq!(a.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(a.annotations.get("n").map(String::as_str), Some("1"));
        let cpu = s.cpu.unwrap();
        assert_eq!(cpu.timestamp, 99);
        assert_eq!(cpu.usage_core_nano_seconds.unwrap().value, 1_000);
        assert!(cpu.usage_nano_cores.is_none());
        let mem = s.memory.unwrap();
        assert_eq!(mem.timestamp, 99);
        assert_eq!(mem.working_set_bytes.unwrap().value, 2_000);
        assert_eq!(mem.usage_bytes.unwrap().value, 3_000);
        let w = s.writable_layer.unwrap();
        assert_eq!(w.timestamp, 99);
        assert_eq!(w.used_bytes.unwrap().value, 4_000);
        assert_eq!(w.inodes_used.unwrap().value, 5);
    }

    #[test]
    fn pod_stats_convert_with_and_without_the_record() {
        let ps = PodStats {
            pod_id: "p1".into(),
            timestamp: 7,
            cpu_usage_ns: 11,
            memory_working_set_bytes: 12,
            memory_usage_bytes: 13,
            containers: vec![cstats("c1"), cstats("c2")],
        };
        let bare = pod_sandbox_stats(&ps, None);
        let attrs = bare.attributes.unwrap();
        assert_eq!(attrs.id, "p1");
        assert!(attrs.metadata.is_none());
        let linux = bare.linux.unwrap();
        assert_eq!(
            linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value,
            11
        );
        let mem = linux.memory.unwrap();
        assert_eq!(mem.working_set_bytes.unwrap().value, 12);
        assert_eq!(mem.usage_bytes.unwrap().value, 13);
        assert_eq!(linux.containers.len(), 2);
        assert_eq!(linux.containers[1].attributes.as_ref().unwrap().id, "c2");

        let req = cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "pod".into(),
                    uid: "u1".into(),
                    namespace: "ns".into(),
                    attempt: 2,
                }),
                labels: HashMap::from([("l".into(), "1".into())]),
                annotations: HashMap::from([("a".into(), "2".into())]),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        };
        let config = crate::sandbox::sandbox_config(req).unwrap();
        let pod: PodRecord = serde_json::from_value(serde_json::json!({
            "id": "p1",
            "config": config,
            "state": "ready",
            "created_at": 1,
            "boot_id": "",
            "hostports": false,
        }))
        .unwrap_or_else(|e| panic!("building a PodRecord from JSON: {e}"));
        let full = pod_sandbox_stats_list(std::slice::from_ref(&ps), std::slice::from_ref(&pod));
        assert_eq!(full.len(), 1);
        let attrs = full[0].attributes.as_ref().unwrap();
        let m = attrs.metadata.as_ref().unwrap();
        assert_eq!(
            (
                m.name.as_str(),
                m.uid.as_str(),
                m.namespace.as_str(),
                m.attempt
            ),
            ("pod", "u1", "ns", 2)
        );
        assert_eq!(attrs.labels.get("l").map(String::as_str), Some("1"));
        assert_eq!(attrs.annotations.get("a").map(String::as_str), Some("2"));
    }

    #[test]
    fn page_sizes_and_cpu_lists() {
        for ok in ["2MB", "1GB", "64KB"] {
            assert!(is_page_size(ok), "{ok}");
        }
        for bad in ["", "MB", "2mb", "2M", "2 MB", "x2MB"] {
            assert!(!is_page_size(bad), "{bad}");
        }
        for ok in ["", "0", "0-3", "0-3,5,7-8"] {
            assert!(cpu_list("f", ok).is_ok(), "{ok}");
        }
        for bad in ["a", "0-", "-1", "3-1", "0,,1"] {
            assert!(cpu_list("f", bad).is_err(), "{bad}");
        }
    }
}
