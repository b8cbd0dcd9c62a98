//! End-to-end harness: runs the real `sluice` binary on a temporary socket with temporary state
//! directories and config, and hands tests a tonic CRI client connected to it.
//!
//! The daemon's stderr goes to a file in the temp directory; when a test panics the harness
//! prints it, so a failure shows what the daemon said. Dropping a [`Daemon`] kills the process
//! (SIGKILL if it is still running), reaps it, and removes every temp file, on panic too.
//!
//! The binary is `$SLUICE_BIN` if set, else `sluice` next to the test executable's `deps/`
//! directory (what `cargo build` / `cargo nextest run --workspace` produce).

#![allow(clippy::print_stderr)]

pub mod bench;
pub mod containers;
pub mod net;
pub mod otlp;
pub mod registry;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cri_api::runtime::v1::VersionRequest;
use cri_api::runtime::v1::image_service_client::ImageServiceClient;
use cri_api::runtime::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a daemon may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the sluice binary under test.
pub fn sluice_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/sluice
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("sluice"))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        bin.exists(),
        "sluice binary not found at {}: build it first (`cargo build -p sluice`) or set SLUICE_BIN",
        bin.display()
    );
    bin
}

/// Temporary files of one daemon: config, socket, state and log.
#[derive(Debug)]
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Drop-in directory next to the config (`sluice.d`).
    pub dropins: PathBuf,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub runroot: PathBuf,
    /// The CNI config directory the daemon watches (starts empty).
    pub cni_dir: PathBuf,
    /// Where pod network namespaces are pinned (not /run/netns, so tests never see or
    /// garbage-collect each other's pods).
    pub netns_dir: PathBuf,
    /// This daemon's own nftables host-port table name.
    pub hostport_table: String,
    /// This daemon's own nftables policy table (`inet`), used when `[policy] enable = true`.
    pub policy_table: String,
    /// Its policy directory (`<temp>/policies`).
    pub policy_dir: PathBuf,
    /// This daemon's cgroupfs parent for pods (removed on drop).
    pub cgroup_parent: String,
    pub log: PathBuf,
}

/// A name unique to this process and call, for kernel objects shared by the whole host.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{:x}x{n}", std::process::id())
}

impl Layout {
    /// A fresh temp directory with a config that points every path inside it (so a test never
    /// reads the host's `/etc/cni/net.d`), plus `extra` TOML as the drop-in `50-test.toml`,
    /// which may set any section.
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-e2e-")
            .tempdir()
            .expect("temp dir");
        let p = dir.path();
        let layout = Self {
            config: p.join("sluice.toml"),
            dropins: p.join("sluice.d"),
            socket: p.join("sluice.sock"),
            root: p.join("root"),
            runroot: p.join("run"),
            cni_dir: p.join("net.d"),
            netns_dir: p.join("netns"),
            hostport_table: unique("sluice-e2e-"),
            policy_table: unique("sluice-e2e-p"),
            policy_dir: p.join("policies"),
            cgroup_parent: format!("/sluice-e2e/{}", unique("d")),
            log: p.join("daemon.log"),
            dir,
        };
        let text = format!(
            "[server]\nlisten = {:?}\nshutdown_timeout = \"5s\"\n\n\
             [storage]\nroot = {:?}\nrunroot = {:?}\n\n\
             [network]\nnetwork_dir = {:?}\nnetns_dir = {:?}\nhostport_table = {:?}\n\n\
             [runtime]\ncgroup_parent = {:?}\n\n\
             [policy]\ntable = {:?}\ndir = {:?}\n",
            layout.socket,
            layout.root,
            layout.runroot,
            layout.cni_dir,
            layout.netns_dir,
            layout.hostport_table,
            layout.cgroup_parent,
            layout.policy_table,
            layout.policy_dir,
        );
        fs::write(&layout.config, text).expect("write config");
        fs::create_dir(&layout.cni_dir).expect("cni dir");
        fs::create_dir(&layout.dropins).expect("drop-in dir");
        if !extra.is_empty() {
            fs::write(layout.dropins.join("50-test.toml"), extra).expect("write drop-in");
        }
        layout
    }

    /// `sluice --config <ours>` with stderr to the log file (appending) and stdin closed.
    pub fn command(&self, args: &[&str]) -> Command {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open daemon log");
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        cmd
    }

    pub fn read_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Installs an executable test CNI plugin `name` with `script` as its body, in a plugin
    /// directory searched before Debian's `/usr/lib/cni` (a drop-in sets `plugin_dirs`).
    pub fn install_cni_plugin(&self, name: &str, script: &str) -> PathBuf {
        let dir = self.dir.path().join("plugins");
        fs::create_dir_all(&dir).expect("plugin dir");
        let path = dir.join(name);
        fs::write(&path, script).expect("write plugin");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod plugin");
        fs::write(
            self.dropins.join("60-plugins.toml"),
            format!("[network]\nplugin_dirs = [{dir:?}, \"/usr/lib/cni\"]\n"),
        )
        .expect("write plugin drop-in");
        path
    }
}

impl Drop for Layout {
    /// Removes what a daemon may leave on the host outside the temp dir when a test ends
    /// early: its nftables tables and its cgroup parent (only if empty: pods' own cgroups
    /// are the daemon's to remove, and a test asserts that).
    fn drop(&mut self) {
        // nsmgr makes its pin directories shared mount points (as iproute2 does) and a killed
        // daemon may leave pins: detach every mount under our temp dir, deepest first, so
        // the temp dir can be removed and nothing stays in the mount table.
        if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
            let base = format!("{}/", self.dir.path().display());
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .filter(|mp| mp.starts_with(&base))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            points.dedup();
            for mp in points {
                let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        for family in ["ip", "ip6"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &self.hostport_table])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.policy_table])
            .stderr(Stdio::null())
            .status();
        if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
            for line in mounts.lines() {
                let Some((pre, post)) = line.split_once(" - ") else {
                    continue;
                };
                if !post.starts_with("cgroup") {
                    continue;
                }
                if let Some(mp) = pre.split_whitespace().nth(4) {
                    let ours = Path::new(mp).join(self.cgroup_parent.trim_start_matches('/'));
                    remove_cgroup_tree(&ours);
                    // The shared "/sluice-e2e" level goes when the last test leaves it.
                    if let Some(parent) = ours.parent() {
                        let _ = fs::remove_dir(parent);
                    }
                }
            }
        }
    }
}

/// Removes a cgroup directory and every child cgroup, deepest first (cgroupfs allows rmdir of
/// a cgroup that holds no process, control files and all).
fn remove_cgroup_tree(dir: &Path) {
    // Processes a failed test left in the daemon's cgroups (pause processes, containers).
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if !procs.trim().is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// A running sluice daemon.
#[derive(Debug)]
pub struct Daemon {
    pub layout: Layout,
    child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon with the default test config and waits for its socket.
    pub async fn start() -> Self {
        Self::start_with(Layout::new(""), &[]).await
    }

    /// Starts a daemon on `layout` with extra CLI args and waits until it accepts CRI calls.
    pub async fn start_with(layout: Layout, args: &[&str]) -> Self {
        let child = layout.command(args).spawn().expect("spawn sluice");
        let mut d = Self {
            layout,
            child: Some(child),
        };
        d.wait_ready().await;
        d
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "sluice exited during start-up with {status}; its log:\n{}",
                    self.layout.read_log()
                );
            }
            // The socket exists before the daemon serves (it recovers pod state first), so
            // ready means answering a CRI call.
            if let Ok(ch) = connect(&self.layout.socket).await
                && RuntimeServiceClient::new(ch)
                    .version(VersionRequest::default())
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not create {} within {START_TIMEOUT:?}; its log:\n{}",
                self.layout.socket.display(),
                self.layout.read_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the daemon again on the same layout (state, socket path, log), killing the
    /// current process first if it still runs: what an operator's restart or a crash-and-restart
    /// looks like.
    pub async fn restart(&mut self, args: &[&str]) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.child = Some(self.layout.command(args).spawn().expect("spawn sluice"));
        self.wait_ready().await;
    }

    /// Waits up to 10 s for a log line containing `needle` and returns it.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.layout.read_log().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?}; the log:\n{}",
                self.layout.read_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> Pid {
        let id = self.child.as_ref().expect("daemon child").id();
        Pid::from_raw(i32::try_from(id).expect("pid fits i32"))
    }

    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal daemon");
    }

    /// The exit status if the daemon has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(connect(&self.layout.socket).await.expect("connect"))
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(connect(&self.layout.socket).await.expect("connect"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- sluice daemon log ({}) ----\n{}---- end of daemon log ----",
                self.layout.log.display(),
                self.layout.read_log()
            );
        }
    }
}

/// A tonic channel over the unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the socket.
    Endpoint::from_static("http://sluice.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// Runs `sluice` to completion (for start-up failures) and returns its status and output.
pub fn run_to_exit(mut cmd: Command, timeout: Duration) -> (ExitStatus, String) {
    let out = tempfile::NamedTempFile::new().expect("temp output");
    cmd.stdout(out.reopen().expect("reopen"))
        .stderr(out.reopen().expect("reopen"))
        .stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn sluice");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sluice did not exit within {timeout:?}; output:\n{}",
                fs::read_to_string(out.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, fs::read_to_string(out.path()).unwrap_or_default())
}

/// Copies the binary into a world-readable temp directory, for running it as an unprivileged
/// user regardless of the permissions of the build tree.
pub fn world_executable_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.path().join("sluice");
    fs::copy(sluice_bin(), &bin).expect("copy binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod bin");
    (dir, bin)
}
