//! Test support: a busybox rootfs, a per-test runtime directory, and a container guard that
//! removes everything (runc state, conmon, overlay mount, cgroups, files) even on panic.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use oci::rootfs::Overlay;
use oci::spec::{self, ContainerSpec, Host, ImageConfig};
use oci::{CreateRequest, Created, Runc, RuntimeConfig};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails loudly when not root: these tests need runc, conmon, mounts and cgroups.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the oci runtime tests need root (runc, conmon, overlay mounts, cgroups)"
    );
    for bin in ["/usr/sbin/runc", "/usr/bin/conmon", "/bin/busybox"] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: apt-get install runc conmon busybox-static"
        );
    }
}

/// A unique, short container id.
pub fn unique_id(tag: &str) -> String {
    format!(
        "t{}-{}-{tag}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's world: a temp dir holding runc's root, exits, attach links, the busybox layer,
/// and container dirs.
pub struct World {
    pub dir: tempfile::TempDir,
    pub runtime: Runc,
    pub host: Host,
    pub layer: PathBuf,
    pub cgroup_parent: String,
}

impl World {
    pub fn new() -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("oci-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut cfg = RuntimeConfig::new(dir.path()).unwrap();
        cfg.command_timeout = Duration::from_secs(20);
        cfg.create_timeout = Duration::from_secs(30);
        let runtime = Runc::new(cfg).unwrap();
        let layer = dir.path().join("layer");
        busybox_rootfs(&layer);
        Self {
            host: Host::detect(Host::default_capability_names()).unwrap(),
            runtime,
            layer,
            cgroup_parent: format!("/sluice-test-{}", std::process::id()),
            dir,
        }
    }

    /// A spec running `args` with the busybox image defaults.
    pub fn spec(&self, id: &str, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            image: ImageConfig {
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            },
            command: args.iter().map(|s| s.to_string()).collect(),
            rootfs: self.dir.path().join(id).join("rootfs/merged"),
            cgroup_parent: self.cgroup_parent.clone(),
            ..Default::default()
        }
    }

    /// Mounts the rootfs, generates the spec and creates the container (not started).
    pub async fn create(&self, spec: ContainerSpec) -> Container {
        let id = spec.id.clone();
        let bundle = self.dir.path().join(&id);
        let overlay = Overlay::in_dir(
            &bundle.join("rootfs"),
            vec![self.layer.clone()],
            spec.readonly_rootfs,
        );
        let mut guard = Container {
            id: id.clone(),
            bundle: bundle.clone(),
            log: bundle.join("logs/ctr.log"),
            overlay: overlay.clone(),
            runc_root: self.runtime.config().runc_root.clone(),
            cgroup: spec::cgroup_path(&spec.cgroup_parent, &id),
            cgroup_parent: spec.cgroup_parent.clone(),
            created: None,
            spec: None,
        };
        overlay.mount().unwrap();
        let generated = spec::generate(&spec, &self.host).unwrap();
        let req = CreateRequest {
            id: &id,
            bundle: &bundle,
            spec: &generated.spec,
            log_path: &guard.log,
            stdin: false,
            stdin_once: false,
        };
        guard.created = Some(self.runtime.create(&req).await.unwrap());
        guard.spec = Some(generated.spec);
        guard
    }

    /// Creates and starts.
    pub async fn run(&self, spec: ContainerSpec) -> Container {
        let c = self.create(spec).await;
        self.runtime.start(&c.id).await.unwrap();
        c
    }
}

/// Removes a container's every trace on drop.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub overlay: Overlay,
    pub runc_root: PathBuf,
    pub cgroup: String,
    pub cgroup_parent: String,
    pub created: Option<Created>,
    pub spec: Option<oci::spec::oci::Spec>,
}

impl Container {
    pub fn pid(&self) -> i32 {
        self.created.unwrap().pid
    }

    /// Waits (bounded) for conmon's exit record and returns the code.
    pub fn wait_exit(&self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some((code, _, _)) = oci::runtime::read_exit(&self.bundle).unwrap() {
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "container {} did not exit within {within:?}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The CRI log lines with the timestamp removed (`stdout F hello`), after checking each
    /// timestamp parses as RFC 3339 with nanoseconds.
    pub fn log_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let (ts, rest) = l.split_once(' ').unwrap();
                assert!(is_rfc3339_nano(ts), "bad timestamp {ts:?} in {l:?}");
                rest.to_string()
            })
            .collect()
    }

    /// The stdout lines of the log.
    pub fn stdout(&self) -> Vec<String> {
        self.log_lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix("stdout F ").map(String::from))
            .collect()
    }

    pub fn cgroup_file(&self, controller: &str, file: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(self.cgroup.trim_start_matches('/'))
            .join(file)
    }
}

/// `2026-11-26T14:04:37.180819582+00:00` or `...Z`.
pub fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() >= 30
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[19] == b'.'
        && ts[20..29].bytes().all(|c| c.is_ascii_digit())
        && (ts.ends_with('Z') || ts[29..].starts_with('+') || ts[29..].starts_with('-'))
}

impl Drop for Container {
    fn drop(&mut self) {
        let runc = |args: &[&str]| {
            std::process::Command::new("/usr/sbin/runc")
                .arg("--root")
                .arg(&self.runc_root)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
        };
        let _ = runc(&["delete", "--force", &self.id]);
        if let Some(pid) = std::fs::read_to_string(self.bundle.join("conmon.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // Only if it is still our conmon (pid reuse).
            let cmdline =
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.contains("conmon") && cmdline.contains(&self.id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = self.overlay.unmount();
        for root in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let leaf = root.path().join(self.cgroup.trim_start_matches('/'));
            for _ in 0..50 {
                match std::fs::remove_dir(&leaf) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
            let _ =
                std::fs::remove_dir(root.path().join(self.cgroup_parent.trim_start_matches('/')));
        }
        if std::thread::panicking() {
            eprintln!(
                "log of {}:\n{}",
                self.id,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A busybox rootfs: /bin/busybox with an applet symlink per applet, passwd/group with a
/// non-root user, and the directories runc mounts onto.
pub fn busybox_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    for d in [
        "etc", "proc", "sys", "dev", "tmp", "root", "home/app", "work", "mnt",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}
