//! Shared helpers for the kernel tests: unique pod ids, private pin
//! directories that are cleaned up even when a test panics, and readers of
//! kernel state.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nsmgr::{NamespaceManager, PinDirs, PinnedNamespaces, PodId};

/// Fails loudly when the tests cannot exercise the kernel.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "nsmgr kernel tests need root (unshare, mount); run them as root, they must not pass silently"
    );
}

/// A pod id unique across test processes and within one.
pub fn unique_pod_id(tag: &str) -> PodId {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    PodId::new(format!("nsmgrtest-{tag}-{}-{n}", std::process::id())).unwrap()
}

/// A manager whose pins all live under a private temporary directory.
/// Dropping it releases every pod and undoes the shared-mount setup.
pub struct TempPins {
    pub manager: PinnedNamespaces,
    root: tempfile::TempDir,
}

impl TempPins {
    pub fn new() -> Self {
        require_root();
        let root = tempfile::Builder::new()
            .prefix("nsmgr-test-")
            .tempdir()
            .unwrap();
        let dirs = PinDirs {
            netns_dir: root.path().join("netns"),
            ns_dir: root.path().join("ns"),
        };
        Self {
            manager: PinnedNamespaces::new(dirs),
            root,
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Mount points at or below the temporary root, from mountinfo.
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(self.root.path())
    }

    /// Distinct mount points below the pin directories, i.e. the pins
    /// (the directories' own self bind mounts excluded).
    pub fn pin_mounts(&self) -> BTreeSet<String> {
        let dirs = self.manager.dirs();
        let own = [
            dirs.netns_dir.to_str().unwrap(),
            dirs.ns_dir.to_str().unwrap(),
        ];
        self.mounts()
            .into_iter()
            .filter(|m| !own.contains(&m.as_str()))
            .collect()
    }

    /// Every file in the pin directories.
    pub fn files(&self) -> Vec<PathBuf> {
        let dirs = self.manager.dirs();
        [
            dirs.netns_dir.clone(),
            dirs.ns_dir.join("ipc"),
            dirs.ns_dir.join("uts"),
        ]
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flat_map(|entries| entries.map(|e| e.unwrap().path()))
        .collect()
    }
}

impl Drop for TempPins {
    fn drop(&mut self) {
        let _ = self.manager.gc(&[]);
        let dirs = self.manager.dirs().clone();
        for dir in [&dirs.netns_dir, &dirs.ns_dir] {
            detach_all(dir);
        }
    }
}

/// Releases one pod at the end of a test, even on panic.
pub struct ReleaseOnDrop<'a> {
    pub manager: &'a dyn NamespaceManager,
    pub pod_id: PodId,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.manager.release(&self.pod_id);
    }
}

/// Unmounts every mount stacked on `path`.
pub fn detach_all(path: &Path) {
    for _ in 0..8 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(Errno::EINVAL | Errno::ENOENT) => return,
            Err(e) => panic!("unmounting {}: {e}", path.display()),
        }
    }
}

/// Mount points (field 5 of mountinfo) at or below `root`.
pub fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| *point == root || point.starts_with(&format!("{root}/")))
        .map(str::to_owned)
        .collect()
}

/// Lines of mountinfo whose mount point is exactly `path`.
pub fn is_mount_point(path: &Path) -> bool {
    let path = path.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

pub fn inode(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

pub fn count_entries(dir: &str) -> usize {
    fs::read_dir(dir).unwrap().count()
}

/// Runs `cmd` inside the namespace pinned at `pin` (`nsenter --<flag>=pin`),
/// stdin closed, and returns its trimmed stdout; panics with stderr on failure.
pub fn in_ns(flag: &str, pin: &Path, cmd: &[&str]) -> String {
    let output = run(Command::new("nsenter")
        .arg(format!("--{flag}={}", pin.display()))
        .arg("--")
        .args(cmd));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Runs a command with stdin closed and asserts it succeeded.
pub fn run(cmd: &mut Command) -> Output {
    let output = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        output.status.success(),
        "{cmd:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn read_sysctl(key_path: &str) -> String {
    fs::read_to_string(Path::new("/proc/sys").join(key_path))
        .unwrap()
        .trim()
        .to_owned()
}
