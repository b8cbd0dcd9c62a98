//! Latency of `create` + `release` with `PinnedNamespaces`, for
//! net+ipc+uts and for net only. Needs root. Prints p50/p90/p99 in
//! milliseconds; `cargo bench -p nsmgr --bench ns_latency`.
//!
//! Pins go to a temporary directory, unmounted and removed at the end; the
//! cost is in the thread, `unshare`, the mount syscalls and, at release, the
//! kernel's teardown of the namespaces, not in the directory's filesystem.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nsmgr::{NamespaceManager, NamespaceMode, NamespaceRequest, PinDirs, PinnedNamespaces, PodId};

const WARMUP: usize = 20;
const ITERATIONS: usize = 200;

struct Cleanup {
    manager: PinnedNamespaces,
    _root: tempfile::TempDir,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.manager.gc(&[]);
        let dirs = self.manager.dirs();
        for dir in [&dirs.netns_dir, &dirs.ns_dir] {
            for _ in 0..8 {
                if umount2(dir, MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    let index = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[index].as_secs_f64() * 1e3
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label:<40} p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms  (n={})",
        percentile(&samples, 50),
        percentile(&samples, 90),
        percentile(&samples, 99),
        samples.len()
    );
}

fn bench(manager: &PinnedNamespaces, tag: &str, label: &str, request: &NamespaceRequest) {
    let mut cycle = Vec::with_capacity(ITERATIONS);
    let mut create = Vec::with_capacity(ITERATIONS);
    let mut release = Vec::with_capacity(ITERATIONS);
    for i in 0..WARMUP + ITERATIONS {
        let pod = PodId::new(format!("bench-{}-{tag}-{i}", std::process::id())).unwrap();
        let start = Instant::now();
        manager.create(&pod, request).unwrap();
        let created = Instant::now();
        manager.release(&pod).unwrap();
        let end = Instant::now();
        if i >= WARMUP {
            cycle.push(end - start);
            create.push(created - start);
            release.push(end - created);
        }
    }
    report(&format!("{label} create+release"), cycle);
    report(&format!("{label} create"), create);
    report(&format!("{label} release"), release);
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    assert!(
        nix::unistd::geteuid().is_root(),
        "ns_latency needs root (unshare, mount)"
    );
    let root = tempfile::Builder::new()
        .prefix("nsmgr-bench-")
        .tempdir()
        .unwrap();
    let manager = PinnedNamespaces::new(PinDirs {
        netns_dir: root.path().join("netns"),
        ns_dir: root.path().join("ns"),
    });
    let cleanup = Cleanup {
        manager,
        _root: root,
    };

    let all = NamespaceRequest {
        hostname: Some("bench".to_owned()),
        ..NamespaceRequest::default()
    };
    let net_only = NamespaceRequest {
        ipc: NamespaceMode::Node,
        uts: NamespaceMode::Node,
        ..NamespaceRequest::default()
    };
    let with_sysctls = NamespaceRequest {
        sysctls: [
            (
                "net.ipv4.ip_unprivileged_port_start".to_owned(),
                "0".to_owned(),
            ),
            (
                "net.ipv4.ping_group_range".to_owned(),
                "0 2147483647".to_owned(),
            ),
        ]
        .into(),
        ..all.clone()
    };
    bench(&cleanup.manager, "all", "net+ipc+uts", &all);
    bench(&cleanup.manager, "net", "net", &net_only);
    bench(
        &cleanup.manager,
        "sysctl",
        "net+ipc+uts+2 sysctls",
        &with_sysctls,
    );
}
