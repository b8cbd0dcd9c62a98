//! The pod cgroup, managed directly on cgroupfs (no systemd on sluice's target nodes).
//!
//! A path such as `/kubepods/besteffort/pod<uid>/sluice-<id>` is created in every mounted
//! hierarchy: each cgroup v1 controller hierarchy and the cgroup v2 tree, which covers v1,
//! hybrid (cgroup2 at `/sys/fs/cgroup/unified`) and pure v2 hosts alike. Parents that do not
//! exist are created too (the kubelet normally made them already) and are left in place on
//! removal: only the pod's own leaf is removed.

use std::fmt::Debug;
use std::path::{Component, Path, PathBuf};

/// A cgroup failure naming the directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading the cgroup mounts from {path}: {source}")]
    Mounts {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("{op} cgroup {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates and removes pod cgroups.
pub trait Cgroups: Send + Sync + Debug {
    /// Creates `path` (absolute, e.g. `/sluice/sluice-<id>`) in every hierarchy.
    fn create(&self, path: &str) -> Result<(), CgroupError>;
    /// Removes the leaf `path` from every hierarchy; absent is fine. Fails (EBUSY) while a
    /// process or child cgroup is still inside.
    fn remove(&self, path: &str) -> Result<(), CgroupError>;
    /// Moves process `pid` into `path` in every hierarchy.
    fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError>;
}

/// Validates a cgroupfs path given by a client: absolute, no `.`/`..` components, and not a
/// systemd slice name (the kubelet sends those only with the systemd driver).
pub fn validate_parent(parent: &str) -> Result<(), String> {
    if parent.is_empty() {
        return Ok(());
    }
    if !parent.starts_with('/') {
        return Err(format!("{parent:?} must be an absolute cgroupfs path"));
    }
    if Path::new(parent)
        .components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(format!("{parent:?} must not contain . or .. components"));
    }
    if parent.ends_with(".slice") {
        return Err(format!(
            "{parent:?} is a systemd slice, but sluice uses the cgroupfs driver: set the kubelet's cgroupDriver to cgroupfs"
        ));
    }
    Ok(())
}

/// The real implementation over the mounted hierarchies.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    roots: Vec<PathBuf>,
}

impl CgroupFs {
    /// Discovers the hierarchies from `/proc/self/mountinfo`.
    pub fn discover() -> Result<Self, CgroupError> {
        let path = PathBuf::from("/proc/self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Mounts {
            path: path.clone(),
            source,
        })?;
        let roots = parse_mountinfo(&text);
        if roots.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Self { roots })
    }

    /// The hierarchy mount points in use.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn each(&self, path: &str) -> impl Iterator<Item = PathBuf> + '_ {
        let rel = path.trim_start_matches('/').to_string();
        self.roots.iter().map(move |r| r.join(&rel))
    }
}

/// cgroup and cgroup2 mount points in mountinfo (field 5 is the mount point; the filesystem
/// type follows the ` - ` separator).
fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = post.split_whitespace().next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        if let Some(mp) = pre.split_whitespace().nth(4) {
            let mp = PathBuf::from(mp.replace("\\040", " "));
            if !roots.contains(&mp) {
                roots.push(mp);
            }
        }
    }
    roots
}

impl Cgroups for CgroupFs {
    fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError> {
        for dir in self.each(path) {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Io {
                op: "adding a process to",
                path: procs,
                source,
            })?;
        }
        Ok(())
    }

    fn create(&self, path: &str) -> Result<(), CgroupError> {
        for dir in self.each(path) {
            std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Io {
                op: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        // A pod being removed keeps nothing running: SIGKILL what is left in its cgroup (the
        // pause process after a crash, say), then give the kernel a moment to empty it.
        let mut killed = false;
        for dir in self.each(path) {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed = true;
                }
            }
        }
        if killed {
            for _ in 0..50 {
                let empty = self.each(path).all(|d| {
                    std::fs::read_to_string(d.join("cgroup.procs"))
                        .map(|p| p.trim().is_empty())
                        .unwrap_or(true)
                });
                if empty {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let mut first_err = None;
        for dir in self.each(path) {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    first_err.get_or_insert(CgroupError::Io {
                        op: "removing",
                        path: dir,
                        source,
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_mountinfo() {
        let text = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                PathBuf::from("/sys/fs/cgroup/memory"),
            ]
        );
    }

    #[test]
    fn parent_validation() {
        assert!(validate_parent("").is_ok());
        assert!(validate_parent("/kubepods/besteffort/pod123").is_ok());
        assert!(validate_parent("kubepods").is_err());
        assert!(validate_parent("/kubepods/../etc").is_err());
        let e = validate_parent("/kubepods.slice/kubepods-besteffort.slice").unwrap_err();
        assert!(e.contains("cgroupfs"), "{e}");
    }
}
