//! Container fixtures for end-to-end tests: a busybox image with a chosen config (entrypoint,
//! cmd, env, working dir, user) pushed to a local registry and pulled through the daemon, a
//! pod on the test's own bridge network, CRI config builders, a strict CRI log parser, and
//! host-side probes (processes, mounts, cgroups).
//!
//! [`World`] holds one registry, one CNI bridge network and one daemon. Dropping it kills
//! every process left in the daemon's cgroup parent (containers of a test that panicked
//! before removing its pods) before the daemon and its layout go, so nothing outlives a test.

#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cri_api::runtime::v1::image_service_client::ImageServiceClient;
use cri_api::runtime::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::runtime::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    ContainerStatusResponse, CreateContainerRequest, DnsConfig, ExecSyncRequest, ExecSyncResponse,
    ImageSpec, KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use images::Digest;
use tonic::transport::Channel;

use crate::net::BridgeNet;
use crate::registry::{BuiltImage, BuiltLayer, LayerBuilder, OCI_MANIFEST, Registry};
use crate::{Daemon, Layout};

pub type Runtime = RuntimeServiceClient<Channel>;
pub type Images = ImageServiceClient<Channel>;

/// Busybox applets linked into `/bin` of the test image, so `exec`'d argv (ExecSync) finds
/// them; inside `sh` busybox-static runs applets as builtins anyway.
pub const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "env", "grep", "head", "hostname", "httpd", "id", "kill", "ls", "mkdir",
    "nc", "printf", "ps", "pwd", "rm", "sleep", "stat", "tail", "touch", "tr", "true", "false",
    "unshare", "wget", "dd", "wc", "mount", "stty", "seq",
];

/// `/etc/passwd` of the test image: root, `app` (1000:1000, home /home/app).
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
/// `/etc/group`: `app` is also a member of `extra` (2000).
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\n";

/// The root layer of the test image: static busybox, applet links, passwd/group, a few dirs.
pub fn busybox_rootfs(marker: &str) -> Vec<u8> {
    let busybox = fs::read(crate::registry::BUSYBOX)
        .unwrap_or_else(|e| panic!("{}: {e} (install busybox-static)", crate::registry::BUSYBOX));
    let mut b = LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755);
    for a in APPLETS {
        b = b.symlink(&format!("bin/{a}"), "busybox");
    }
    b.dir("etc", 0o755)
        .file("etc/passwd", PASSWD.as_bytes(), 0o644)
        .file("etc/group", GROUP.as_bytes(), 0o644)
        .file("etc/marker", marker.as_bytes(), 0o644)
        .dir("home", 0o755)
        .dir("home/app", 0o755)
        .dir("work", 0o777)
        .dir("tmp", 0o1777)
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("dev", 0o755)
        .finish()
}

/// The runtime part of an image config.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries; `PATH=/bin` is always first.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}

/// An OCI image (gzip layers) with `config` as its runtime config.
pub fn build_image_with(tars: &[Vec<u8>], config: &ImageConfig) -> BuiltImage {
    let layers: Vec<BuiltLayer> = tars
        .iter()
        .map(|t| {
            let blob = crate::registry::compress(t, crate::registry::Compression::Gzip);
            BuiltLayer {
                digest: Digest::of(&blob).to_string(),
                diff_id: Digest::of(t).to_string(),
                blob,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            }
        })
        .collect();
    let mut env = vec!["PATH=/bin".to_string()];
    env.extend(config.env.iter().cloned());
    let mut c = serde_json::json!({
        "Env": env,
        "WorkingDir": config.working_dir,
        "User": config.user,
        "Labels": {"org.example.test": "sluice-containers"},
    });
    if !config.entrypoint.is_empty() {
        c["Entrypoint"] = serde_json::json!(config.entrypoint);
    }
    if !config.cmd.is_empty() {
        c["Cmd"] = serde_json::json!(config.cmd);
    }
    if !config.stop_signal.is_empty() {
        c["StopSignal"] = serde_json::json!(config.stop_signal);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": c,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    }))
    .expect("config json");
    let id = Digest::of(&config).to_string();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": id, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest json");
    BuiltImage {
        manifest_digest: Digest::of(&manifest).to_string(),
        manifest,
        manifest_type: OCI_MANIFEST.to_string(),
        layers,
        config,
        id,
    }
}

/// A registry, a bridge network and a daemon trusting the registry over plain HTTP.
#[derive(Debug)]
pub struct World {
    // Field order is drop order: the daemon (and its layout) before the network, the registry
    // last. `Drop for World` runs before all of them.
    pub daemon: Daemon,
    pub net: BridgeNet,
    pub registry: Registry,
    /// `127.0.0.1:<port>/e2e/busybox:1`, pulled: a plain busybox image (Cmd `/bin/sh`).
    pub busybox: String,
    pub busybox_id: String,
}

impl World {
    /// Starts everything and pulls the plain busybox image through the daemon.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// Like [`World::start`] with extra daemon TOML.
    pub async fn start_with(extra: &str) -> Self {
        let registry = Registry::start();
        let img = build_image_with(
            &[busybox_rootfs("plain")],
            &ImageConfig {
                cmd: vec!["/bin/sh".into()],
                working_dir: "/".into(),
                ..ImageConfig::default()
            },
        );
        registry.push_image("e2e/busybox", "1", &img);
        let busybox = format!("{}/e2e/busybox:1", registry.host());
        let layout = Layout::new(&format!(
            "[images]\ninsecure_registries = [\"{}\"]\n{extra}",
            registry.host()
        ));
        let net = BridgeNet::install(&layout, &[]);
        let daemon = Daemon::start_with(layout, &[]).await;
        let w = Self {
            daemon,
            net,
            registry,
            busybox,
            busybox_id: img.id.clone(),
        };
        let got = w.pull(&w.busybox).await;
        assert_eq!(got, img.id, "pulled image id");
        w
    }

    /// Pushes `img` as `e2e/<repo>:1` and pulls it through the daemon; returns its name.
    pub async fn push_and_pull(&self, repo: &str, img: &BuiltImage) -> String {
        self.registry.push_image(&format!("e2e/{repo}"), "1", img);
        let name = format!("{}/e2e/{repo}:1", self.registry.host());
        assert_eq!(self.pull(&name).await, img.id);
        name
    }

    async fn pull(&self, name: &str) -> String {
        let mut c = self.daemon.images().await;
        c.pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: name.into(),
                ..ImageSpec::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_or_else(|e| panic!("pull {name}: {e:?}"))
        .into_inner()
        .image_ref
    }

    pub async fn rt(&self) -> Runtime {
        self.daemon.runtime().await
    }

    pub fn layout(&self) -> &Layout {
        &self.daemon.layout
    }

    /// A pod config named `name` whose log directory is `<temp>/logs/<name>`.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let logs = self.layout().dir.path().join("logs").join(name);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "e2e".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            labels: HashMap::from([("pod".to_string(), name.to_string())]),
            dns_config: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["e2e.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            // What the kubelet sends for a pod without hostNetwork/hostPID/hostIPC and
            // without shareProcessNamespace.
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..NamespaceOption::default()
                    }),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..Default::default()
        }
    }

    /// Runs a pod; returns its id and the config (CreateContainer wants it back).
    pub async fn run_pod(&self, config: PodSandboxConfig) -> Pod {
        let mut c = self.rt().await;
        let id = c
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}"))
            .into_inner()
            .pod_sandbox_id;
        Pod { id, config }
    }

    /// Stops and removes every pod through CRI (what a kubelet does at the end).
    pub async fn remove_all_pods(&self) {
        let mut c = self.rt().await;
        let pods = c
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        for p in pods {
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e:?}", p.id));
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e:?}", p.id));
        }
    }

    /// Host pid of the daemon.
    pub fn daemon_pid(&self) -> i32 {
        self.daemon.pid().as_raw()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        kill_cgroup_tree(&self.daemon.layout.cgroup_parent);
    }
}

/// SIGKILLs every process in the cgroup `parent` and below, in every hierarchy, until none is
/// left (bounded): the backstop for tests that fail before removing their pods.
pub fn kill_cgroup_tree(parent: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = cgroup_dirs_under(parent)
            .iter()
            .flat_map(|d| {
                fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every cgroup mount point of the host (v1 hierarchies and/or the v2 one).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every cgroup directory at or below `parent` (a cgroupfs path like `/sluice-e2e/dX`) in
/// every hierarchy.
pub fn cgroup_dirs_under(parent: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if !d.is_dir() {
            return;
        }
        out.push(d.to_path_buf());
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    for m in cgroup_mounts() {
        walk(&m.join(parent.trim_start_matches('/')), &mut out);
    }
    out
}

/// A running pod.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

impl Pod {
    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from(&self.config.log_directory)
    }
}

/// A container config: `name`, `image`, `command` (empty: the image's), log path `<name>.log`.
pub fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..ImageSpec::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("name".to_string(), name.to_string())]),
        linux: Some(LinuxContainerConfig {
            resources: None,
            security_context: Some(LinuxContainerSecurityContext::default()),
        }),
        ..Default::default()
    }
}

/// `sh -c script` as a container.
pub fn shell(name: &str, image: &str, script: &str) -> ContainerConfig {
    container(name, image, &["/bin/sh", "-c", script])
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    pairs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.to_string(),
            value: v.to_string(),
        })
        .collect()
}

/// The container's security context (created if missing).
pub fn security(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// Sets the pod's PID namespace mode.
pub fn set_pod_pid_mode(p: &mut PodSandboxConfig, mode: NamespaceMode) {
    let sc = p
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(LinuxSandboxSecurityContext::default);
    sc.namespace_options
        .get_or_insert_with(NamespaceOption::default)
        .pid = mode as i32;
}

/// CreateContainer. Like the kubelet, gives the container the pod's namespace options
/// unless the config sets its own.
pub async fn create(
    c: &mut Runtime,
    pod: &Pod,
    mut config: ContainerConfig,
) -> Result<String, tonic::Status> {
    let pod_ns = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let sc = security(&mut config);
    if sc.namespace_options.is_none() {
        sc.namespace_options = pod_ns;
    }
    c.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.id.clone(),
        config: Some(config),
        sandbox_config: Some(pod.config.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// Create + start; panics with the gRPC status on failure.
pub async fn run(c: &mut Runtime, pod: &Pod, config: ContainerConfig) -> String {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = create(c, pod, config)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"));
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {name}: {e:?}"));
    id
}

pub async fn status(c: &mut Runtime, id: &str) -> ContainerStatusResponse {
    c.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: true,
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e:?}"))
    .into_inner()
}

/// Polls ContainerStatus until the container is in `state` (at most `timeout`).
pub async fn wait_state(
    c: &mut Runtime,
    id: &str,
    state: ContainerState,
    timeout: Duration,
) -> cri_api::runtime::v1::ContainerStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(c, id).await.status.expect("status");
        if s.state == state as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} not {state:?} within {timeout:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a container to its exit and returns its status and its log.
pub async fn run_to_exit(
    c: &mut Runtime,
    pod: &Pod,
    config: ContainerConfig,
) -> (cri_api::runtime::v1::ContainerStatus, Vec<LogLine>) {
    let log = pod.log_dir().join(&config.log_path);
    let id = run(c, pod, config).await;
    let s = wait_state(
        c,
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await;
    (s, read_log(&log))
}

pub async fn exec(
    c: &mut Runtime,
    id: &str,
    cmd: &[&str],
    timeout_s: i64,
) -> Result<ExecSyncResponse, tonic::Status> {
    c.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: timeout_s,
    })
    .await
    .map(|r| r.into_inner())
}

/// ExecSync that must succeed with exit 0; returns stdout.
pub async fn exec_ok(c: &mut Runtime, id: &str, cmd: &[&str]) -> String {
    let r = exec(c, id, cmd, 20)
        .await
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e:?}"));
    assert_eq!(
        r.exit_code,
        0,
        "ExecSync {cmd:?}: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Unix nanoseconds.
    pub time_ns: i128,
    pub stream: String,
    /// `P` (partial) or `F` (full).
    pub tag: char,
    pub message: String,
}

impl LogLine {
    /// `stream tag message`, the comparable part.
    pub fn short(&self) -> String {
        format!("{} {} {}", self.stream, self.tag, self.message)
    }
}

/// Parses a CRI log file strictly; panics naming the offending line.
pub fn read_log(path: &Path) -> Vec<LogLine> {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading CRI log {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{}: the last line is not newline-terminated: {text:?}",
        path.display()
    );
    text.lines()
        .map(|l| {
            parse_log_line(l)
                .unwrap_or_else(|e| panic!("{}: bad CRI log line {l:?}: {e}", path.display()))
        })
        .collect()
}

/// `<RFC3339Nano> <stdout|stderr> <P|F> <message>`.
pub fn parse_log_line(line: &str) -> Result<LogLine, String> {
    let mut parts = line.splitn(4, ' ');
    let ts = parts.next().ok_or("no timestamp")?;
    let stream = parts.next().ok_or("no stream")?;
    let tag = parts.next().ok_or("no tag")?;
    let message = parts.next().ok_or("no message separator")?;
    if stream != "stdout" && stream != "stderr" {
        return Err(format!("stream {stream:?}"));
    }
    let tag = match tag {
        "P" => 'P',
        "F" => 'F',
        other => return Err(format!("tag {other:?}")),
    };
    Ok(LogLine {
        time_ns: parse_rfc3339_nano(ts)?,
        stream: stream.into(),
        tag,
        message: message.into(),
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)` to unix nanoseconds.
pub fn parse_rfc3339_nano(ts: &str) -> Result<i128, String> {
    let err = || format!("timestamp {ts:?} is not RFC 3339");
    let b = ts.as_bytes();
    if b.len() < 20 {
        return Err(err());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let s = ts.get(r).ok_or_else(err)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        s.parse().map_err(|_| err())
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return Err(err());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(err());
    }
    let mut i = 19;
    let mut nanos: i128 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let digits = end - start;
        if digits == 0 || digits > 9 {
            return Err(err());
        }
        let frac: i128 = ts[start..end].parse().map_err(|_| err())?;
        nanos = frac * 10i128.pow((9 - digits) as u32);
        i = end;
    }
    let offset_s: i64 = match &ts[i..] {
        "Z" => 0,
        rest if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':' =>
        {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(err()),
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_s;
    Ok(i128::from(secs) * 1_000_000_000 + nanos)
}

pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after epoch")
        .as_nanos() as i128
}

/// stdout messages of a log, in order.
pub fn stdout_of(lines: &[LogLine]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.stream == "stdout")
        .map(|l| l.message.clone())
        .collect()
}

/// Host pids whose `/proc/<pid>/cmdline` is exactly `argv`.
pub fn pids_with_cmdline(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// Field 22 (starttime) of `/proc/<pid>/stat`, to tell a pid from its reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The state letter of `/proc/<pid>/stat` (`Z` for a zombie), if the pid exists.
pub fn proc_state(pid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits (bounded) until the process `(pid, start time)` no longer exists at all (neither
/// running nor a zombie); returns what is left of it (state letter) otherwise.
pub async fn wait_gone(pid: i32, started: Option<u64>, timeout: Duration) -> Option<char> {
    let deadline = Instant::now() + timeout;
    loop {
        let st = proc_state(pid).filter(|_| start_time(pid) == started);
        if st.is_none() || Instant::now() > deadline {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A capability mask from a `/proc/<pid>/status` field (`CapEff`, `CapBnd`, ...).
pub fn cap_field(status_text: &str, field: &str) -> u64 {
    status_text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in {status_text}"))
}

/// Mount points (field 5 of mountinfo) under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let base = format!("{}/", dir.display());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|mp| mp.starts_with(&base))
        .map(str::to_string)
        .collect()
}

/// Paths under `dir` (recursively, not following symlinks, not descending into mount points
/// other than `dir`'s own file system) whose file name contains `needle`.
pub fn paths_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, needle: &str, dev: u64, out: &mut Vec<PathBuf>) {
        use std::os::unix::fs::MetadataExt;
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(needle) {
                out.push(p.clone());
            }
            if let Ok(m) = fs::symlink_metadata(&p)
                && m.is_dir()
                && m.dev() == dev
            {
                walk(&p, needle, dev, out);
            }
        }
    }
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    if let Ok(m) = fs::metadata(dir) {
        walk(dir, needle, m.dev(), &mut out);
    }
    out
}
