//! Container resource usage from cgroupfs (v1 controllers or the v2 unified tree), as CRI's
//! `ContainerStats` reports it.

use std::path::{Path, PathBuf};

/// A stats read failure naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no {0} cgroup hierarchy is mounted")]
    NoHierarchy(&'static str),
    #[error("parsing {path}: unexpected content {content:?}")]
    Parse { path: PathBuf, content: String },
}

/// The mounted cgroup hierarchies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// v1 `cpuacct` controller mount.
    pub cpuacct: Option<PathBuf>,
    /// v1 `memory` controller mount.
    pub memory: Option<PathBuf>,
    /// The v2 tree, when it has the memory controller (pure v2 hosts).
    pub unified: Option<PathBuf>,
}

impl Hierarchies {
    /// From `/proc/self/mountinfo`.
    pub fn discover() -> Result<Self, StatsError> {
        let path = PathBuf::from("/proc/self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|source| StatsError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Self::parse(&text, |p| p.join("cgroup.controllers")))
    }

    /// Parses mountinfo; `controllers_file` maps a cgroup2 mount to its `cgroup.controllers`
    /// (read to see whether v2 has the memory controller).
    pub fn parse(text: &str, controllers_file: impl Fn(&Path) -> PathBuf) -> Self {
        let mut h = Self::default();
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mut post = post.split_whitespace();
            let fstype = post.next().unwrap_or_default();
            let opts = post.nth(1).unwrap_or_default();
            let Some(mp) = pre.split_whitespace().nth(4).map(PathBuf::from) else {
                continue;
            };
            match fstype {
                "cgroup" => {
                    let o: Vec<&str> = opts.split(',').collect();
                    if o.contains(&"cpuacct") {
                        h.cpuacct.get_or_insert(mp.clone());
                    }
                    if o.contains(&"memory") {
                        h.memory.get_or_insert(mp);
                    }
                }
                "cgroup2" => {
                    let ctrls = std::fs::read_to_string(controllers_file(&mp)).unwrap_or_default();
                    if ctrls.split_whitespace().any(|c| c == "memory") {
                        h.unified = Some(mp);
                    }
                }
                _ => {}
            }
        }
        h
    }
}

/// CRI container stats from the cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory usage minus inactive file pages (what the kubelet evicts on).
    pub memory_working_set_bytes: u64,
    pub memory_usage_bytes: u64,
}

fn read(path: PathBuf) -> Result<String, StatsError> {
    std::fs::read_to_string(&path).map_err(|source| StatsError::Read { path, source })
}

fn read_u64(path: PathBuf) -> Result<u64, StatsError> {
    let s = read(path.clone())?;
    s.trim()
        .parse()
        .map_err(|_| StatsError::Parse { path, content: s })
}

/// A `key value` line of a stat file.
pub fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Usage of the cgroup at `cgroup` (the spec's `cgroupsPath`, absolute within each
/// hierarchy).
pub fn cgroup_stats(h: &Hierarchies, cgroup: &str) -> Result<CgroupStats, StatsError> {
    let rel = cgroup.trim_start_matches('/');
    if let Some(root) = &h.unified {
        let dir = root.join(rel);
        let cpu = read(dir.join("cpu.stat"))?;
        let usage = read_u64(dir.join("memory.current"))?;
        let mstat = read(dir.join("memory.stat"))?;
        let inactive = stat_value(&mstat, "inactive_file").unwrap_or(0);
        return Ok(CgroupStats {
            cpu_usage_ns: stat_value(&cpu, "usage_usec").unwrap_or(0) * 1000,
            memory_working_set_bytes: usage.saturating_sub(inactive),
            memory_usage_bytes: usage,
        });
    }
    let cpu_root = h
        .cpuacct
        .as_ref()
        .ok_or(StatsError::NoHierarchy("cpuacct"))?;
    let mem_root = h.memory.as_ref().ok_or(StatsError::NoHierarchy("memory"))?;
    let cpu = read_u64(cpu_root.join(rel).join("cpuacct.usage"))?;
    let mdir = mem_root.join(rel);
    let usage = read_u64(mdir.join("memory.usage_in_bytes"))?;
    let mstat = read(mdir.join("memory.stat"))?;
    let inactive = stat_value(&mstat, "total_inactive_file").unwrap_or(0);
    Ok(CgroupStats {
        cpu_usage_ns: cpu,
        memory_working_set_bytes: usage.saturating_sub(inactive),
        memory_usage_bytes: usage,
    })
}

/// Whether the kernel OOM-killed a process in the cgroup (v1 `memory.oom_control` `oom_kill`,
/// v2 `memory.events` `oom_kill`): a second source besides conmon's `oom` marker.
pub fn oom_kills(h: &Hierarchies, cgroup: &str) -> Result<u64, StatsError> {
    let rel = cgroup.trim_start_matches('/');
    let text = if let Some(root) = &h.unified {
        read(root.join(rel).join("memory.events"))?
    } else {
        let root = h.memory.as_ref().ok_or(StatsError::NoHierarchy("memory"))?;
        read(root.join(rel).join("memory.oom_control"))?
    };
    Ok(stat_value(&text, "oom_kill").unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_mountinfo_uses_v1_controllers() {
        let text = "\
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let h = Hierarchies::parse(text, |_| PathBuf::from("/nonexistent"));
        assert_eq!(h.cpuacct, Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(h.memory, Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(h.unified, None);
    }

    #[test]
    fn v1_and_v2_files() {
        let d = tempfile::tempdir().unwrap();
        let v1 = Hierarchies {
            cpuacct: Some(d.path().join("cpu")),
            memory: Some(d.path().join("mem")),
            unified: None,
        };
        std::fs::create_dir_all(d.path().join("cpu/p/c")).unwrap();
        std::fs::create_dir_all(d.path().join("mem/p/c")).unwrap();
        std::fs::write(d.path().join("cpu/p/c/cpuacct.usage"), "12345\n").unwrap();
        std::fs::write(d.path().join("mem/p/c/memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(
            d.path().join("mem/p/c/memory.stat"),
            "inactive_file 1\ntotal_inactive_file 300\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("mem/p/c/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let s = cgroup_stats(&v1, "/p/c").unwrap();
        assert_eq!(
            s,
            CgroupStats {
                cpu_usage_ns: 12345,
                memory_working_set_bytes: 700,
                memory_usage_bytes: 1000
            }
        );
        assert_eq!(oom_kills(&v1, "/p/c").unwrap(), 2);

        let v2 = Hierarchies {
            unified: Some(d.path().join("u")),
            ..Default::default()
        };
        std::fs::create_dir_all(d.path().join("u/p/c")).unwrap();
        std::fs::write(
            d.path().join("u/p/c/cpu.stat"),
            "usage_usec 7\nuser_usec 5\n",
        )
        .unwrap();
        std::fs::write(d.path().join("u/p/c/memory.current"), "5000\n").unwrap();
        std::fs::write(
            d.path().join("u/p/c/memory.stat"),
            "anon 1\ninactive_file 1000\n",
        )
        .unwrap();
        let s = cgroup_stats(&v2, "p/c").unwrap();
        assert_eq!(
            s,
            CgroupStats {
                cpu_usage_ns: 7000,
                memory_working_set_bytes: 4000,
                memory_usage_bytes: 5000
            }
        );
        assert!(matches!(
            cgroup_stats(&v2, "/missing"),
            Err(StatsError::Read { .. })
        ));
    }
}
