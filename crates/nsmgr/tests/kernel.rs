//! Kernel tests for `PinnedNamespaces`: real namespaces, real mounts, root
//! required. Each test pins under its own temporary directory (only the
//! `ip netns` test uses `/run/netns`, with a unique pod id), so the tests run
//! in parallel and clean up after themselves even when they fail.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    ReleaseOnDrop, TempPins, count_entries, detach_all, in_ns, inode, is_mount_point, read_sysctl,
    require_root, run, unique_pod_id,
};
use nsmgr::{
    CreateError, NamespaceKind, NamespaceLocation, NamespaceManager, NamespaceMode,
    NamespaceRequest, PinDirs, PinnedNamespaces, PodId, PodNamespaces, RequestError,
};

const PORT_START: &str = "net/ipv4/ip_unprivileged_port_start";

/// A value for `net.ipv4.ip_unprivileged_port_start` that differs from the
/// host's, so the test can tell where it landed.
fn port_start_value() -> String {
    if read_sysctl(PORT_START) == "123" {
        "124".to_owned()
    } else {
        "123".to_owned()
    }
}

fn full_request(hostname: &str, port_start: &str) -> NamespaceRequest {
    NamespaceRequest {
        hostname: Some(hostname.to_owned()),
        sysctls: [
            (
                "net.ipv4.ip_unprivileged_port_start".to_owned(),
                port_start.to_owned(),
            ),
            ("kernel.shmmni".to_owned(), "1234".to_owned()),
        ]
        .into(),
        ..NamespaceRequest::default()
    }
}

fn pin(ns: &PodNamespaces, kind: NamespaceKind) -> &Path {
    ns.get(kind)
        .pin_path()
        .unwrap_or_else(|| panic!("{kind} namespace is not pinned"))
}

/// Waits (bounded) until `f` holds; convergence, not a timing assertion.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn created_namespaces_are_new_configured_and_released() {
    let pins = TempPins::new();
    let pod = unique_pod_id("cfg");
    let _guard = ReleaseOnDrop {
        manager: &pins.manager,
        pod_id: pod.clone(),
    };
    let host_port_start = read_sysctl(PORT_START);
    let host_shmmni = read_sysctl("kernel/shmmni");
    let host_hostname = nix::unistd::gethostname().unwrap();
    let value = port_start_value();
    let caller_ns = || -> Vec<u64> {
        NamespaceKind::ALL
            .iter()
            .map(|k| inode(&Path::new("/proc/thread-self/ns").join(k.proc_name())))
            .collect()
    };
    let caller_before = caller_ns();

    let ns = pins
        .manager
        .create(&pod, &full_request("pod-web-0", &value))
        .unwrap();

    // The calling thread's namespaces did not change.
    assert_eq!(caller_ns(), caller_before);
    // New namespaces, not the host's.
    for kind in NamespaceKind::ALL {
        let host = Path::new("/proc/self/ns").join(kind.proc_name());
        assert_ne!(inode(pin(&ns, kind)), inode(&host), "{kind} is the host's");
        assert!(is_mount_point(pin(&ns, kind)), "{kind} pin is not a mount");
    }
    // lo is up inside.
    let link = in_ns(
        "net",
        pin(&ns, NamespaceKind::Net),
        &["ip", "-o", "link", "show", "lo"],
    );
    let flags = link
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags.split(',').map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(flags.iter().any(|f| f == "UP"), "lo is not up: {link}");
    let addrs = in_ns(
        "net",
        pin(&ns, NamespaceKind::Net),
        &["ip", "-o", "addr", "show", "lo"],
    );
    assert!(
        addrs.contains("127.0.0.1/8"),
        "lo has no 127.0.0.1: {addrs}"
    );
    // Hostname inside the UTS namespace, host's unchanged.
    assert_eq!(
        in_ns("uts", pin(&ns, NamespaceKind::Uts), &["uname", "-n"]),
        "pod-web-0"
    );
    assert_eq!(nix::unistd::gethostname().unwrap(), host_hostname);
    // Sysctls inside, host unchanged.
    let inside = in_ns(
        "net",
        pin(&ns, NamespaceKind::Net),
        &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
    );
    assert_eq!(inside, value);
    assert_eq!(read_sysctl(PORT_START), host_port_start);
    let inside = in_ns(
        "ipc",
        pin(&ns, NamespaceKind::Ipc),
        &["cat", "/proc/sys/kernel/shmmni"],
    );
    assert_eq!(inside, "1234");
    assert_eq!(read_sysctl("kernel/shmmni"), host_shmmni);

    // Release: no mount, no file; twice is fine.
    let pin_paths = |ns: &PodNamespaces| -> BTreeSet<String> {
        NamespaceKind::ALL
            .iter()
            .map(|k| pin(ns, *k).to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(pins.pin_mounts(), pin_paths(&ns));
    pins.manager.release(&pod).unwrap();
    for kind in NamespaceKind::ALL {
        assert!(!pin(&ns, kind).exists(), "{kind} pin still exists");
        assert!(!is_mount_point(pin(&ns, kind)));
    }
    assert!(pins.pin_mounts().is_empty(), "{:?}", pins.pin_mounts());
    pins.manager.release(&pod).unwrap();
    assert!(pins.files().is_empty());
}

#[test]
fn pin_directories_are_shared_mount_points() {
    let pins = TempPins::new();
    let pod = unique_pod_id("shared");
    let _guard = ReleaseOnDrop {
        manager: &pins.manager,
        pod_id: pod.clone(),
    };
    pins.manager
        .create(&pod, &NamespaceRequest::default())
        .unwrap();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dirs = pins.manager.dirs();
    for dir in [&dirs.netns_dir, &dirs.ns_dir] {
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == dir.to_str())
            .unwrap_or_else(|| panic!("{} is not a mount point", dir.display()));
        // Optional fields (before " - ") carry "shared:N" for shared mounts.
        let optional = line.split(" - ").next().unwrap();
        assert!(optional.contains(" shared:"), "not shared: {line}");
    }
}

#[test]
fn ip_netns_lists_and_execs_into_the_pod() {
    require_root();
    // The network pin must be in /run/netns for iproute2 to see it; the
    // others go to a private directory.
    let ns_root = tempfile::tempdir().unwrap();
    let manager = PinnedNamespaces::new(PinDirs {
        netns_dir: PinDirs::default().netns_dir,
        ns_dir: ns_root.path().join("ns"),
    });
    struct DetachNsDir<'a>(&'a Path);
    impl Drop for DetachNsDir<'_> {
        fn drop(&mut self) {
            detach_all(self.0);
        }
    }
    let _detach = DetachNsDir(&manager.dirs().ns_dir);
    let pod = unique_pod_id("ipnetns");
    let guard = ReleaseOnDrop {
        manager: &manager,
        pod_id: pod.clone(),
    };
    let name = format!("sluice-{pod}");

    let ns = manager.create(&pod, &NamespaceRequest::default()).unwrap();
    assert_eq!(
        pin(&ns, NamespaceKind::Net),
        Path::new("/run/netns").join(&name)
    );

    let list = run(Command::new("ip").args(["netns", "list"])).stdout;
    let list = String::from_utf8(list).unwrap();
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str())),
        "{name} not in ip netns list:\n{list}"
    );
    let exec =
        run(Command::new("ip").args(["netns", "exec", &name, "readlink", "/proc/self/ns/net"]));
    let inside = String::from_utf8(exec.stdout).unwrap();
    let pinned = format!("net:[{}]", inode(pin(&ns, NamespaceKind::Net)));
    assert_eq!(inside.trim(), pinned);

    manager.release(&pod).unwrap();
    drop(guard);
    let list = String::from_utf8(run(Command::new("ip").args(["netns", "list"])).stdout).unwrap();
    assert!(!list.contains(&name), "{name} still listed:\n{list}");
    assert!(!Path::new("/run/netns").join(&name).exists());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&name), "{name} still mounted");
}

#[test]
fn release_tolerates_missing_stale_and_busy_pins() {
    let pins = TempPins::new();
    // Unknown pod: nothing to do.
    pins.manager.release(&unique_pod_id("unknown")).unwrap();

    // Stale pin files that are not mounts (as after a reboot).
    let warm = unique_pod_id("warm");
    pins.manager
        .create(&warm, &NamespaceRequest::default())
        .unwrap();
    pins.manager.release(&warm).unwrap();
    let stale = unique_pod_id("stale");
    let dirs = pins.manager.dirs().clone();
    for kind in NamespaceKind::ALL {
        fs::write(dirs.pin_path(kind, &stale), b"").unwrap();
    }
    pins.manager.release(&stale).unwrap();
    for kind in NamespaceKind::ALL {
        assert!(!dirs.pin_path(kind, &stale).exists());
    }

    // A namespace still used by a process.
    let busy = unique_pod_id("busy");
    let ns = pins
        .manager
        .create(&busy, &NamespaceRequest::default())
        .unwrap();
    let net_inode = inode(pin(&ns, NamespaceKind::Net));
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        Command::new("nsenter")
            .arg(format!("--net={}", pin(&ns, NamespaceKind::Net).display()))
            .arg(format!("--ipc={}", pin(&ns, NamespaceKind::Ipc).display()))
            .arg(format!("--uts={}", pin(&ns, NamespaceKind::Uts).display()))
            .args(["--", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child_ns = format!("/proc/{}/ns/net", child.0.id());
    eventually("the child to enter the pod netns", || {
        fs::metadata(&child_ns).map(|m| m.ino()).ok() == Some(net_inode)
    });
    pins.manager.release(&busy).unwrap();
    for kind in NamespaceKind::ALL {
        assert!(!pin(&ns, kind).exists());
    }
    assert!(pins.files().is_empty());
    // The process keeps its namespace.
    assert_eq!(inode(Path::new(&child_ns)), net_inode);
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the process in the pod died"
    );
    child.0.kill().unwrap();
}

#[test]
fn non_namespaced_sysctl_is_rejected_before_anything_is_created() {
    let pins = TempPins::new();
    let pod = unique_pod_id("panic");
    let host_panic = read_sysctl("kernel/panic");
    let request = NamespaceRequest {
        sysctls: [
            (
                "net.ipv4.ip_unprivileged_port_start".to_owned(),
                "80".to_owned(),
            ),
            ("kernel.panic".to_owned(), "7".to_owned()),
        ]
        .into(),
        ..NamespaceRequest::default()
    };
    let err = pins.manager.create(&pod, &request).unwrap_err();
    assert!(err.is_invalid_request());
    match &err {
        CreateError::InvalidRequest {
            source: RequestError::SysctlNotNamespaced { key },
            ..
        } => assert_eq!(key, "kernel.panic"),
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(
        format!("{err}: {}", std::error::Error::source(&err).unwrap()).contains("kernel.panic")
    );
    assert_eq!(read_sysctl("kernel/panic"), host_panic);
    // Not even the pin directories were created.
    assert_eq!(fs::read_dir(pins.root()).unwrap().count(), 0);
    assert!(pins.mounts().is_empty(), "{:?}", pins.mounts());
}

#[test]
fn failure_inside_the_namespaces_leaves_nothing() {
    let pins = TempPins::new();
    let pod = unique_pod_id("badval");
    let host_port_start = read_sysctl(PORT_START);
    let request = NamespaceRequest {
        sysctls: [(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "not-a-number".to_owned(),
        )]
        .into(),
        ..NamespaceRequest::default()
    };
    let err = pins.manager.create(&pod, &request).unwrap_err();
    assert!(
        matches!(&err, CreateError::Sysctl { key, .. } if key == "net.ipv4.ip_unprivileged_port_start"),
        "{err:?}"
    );
    assert!(pins.files().is_empty(), "{:?}", pins.files());
    assert!(pins.pin_mounts().is_empty(), "{:?}", pins.pin_mounts());
    assert_eq!(read_sysctl(PORT_START), host_port_start);

    // A key that does not exist inside a pod netns (global net sysctls are
    // only registered in the initial namespace).
    let request = NamespaceRequest {
        sysctls: [("net.core.rmem_max".to_owned(), "1000000".to_owned())].into(),
        ..NamespaceRequest::default()
    };
    let err = pins.manager.create(&pod, &request).unwrap_err();
    assert!(matches!(err, CreateError::Sysctl { .. }), "{err:?}");
    assert!(pins.files().is_empty());
}

#[test]
fn failure_while_pinning_releases_the_pins_already_made() {
    let pins = TempPins::new();
    let warm = unique_pod_id("warm");
    pins.manager
        .create(&warm, &NamespaceRequest::default())
        .unwrap();
    pins.manager.release(&warm).unwrap();

    // Someone else's file where the uts pin goes: net and ipc get pinned
    // first, then pinning uts fails.
    let pod = unique_pod_id("clash");
    let dirs = pins.manager.dirs().clone();
    let foreign = dirs.pin_path(NamespaceKind::Uts, &pod);
    fs::write(&foreign, b"not ours").unwrap();
    let err = pins
        .manager
        .create(&pod, &NamespaceRequest::default())
        .unwrap_err();
    assert!(
        matches!(&err, CreateError::AlreadyExists { namespace: NamespaceKind::Uts, path, .. } if *path == foreign),
        "{err:?}"
    );
    assert!(!dirs.pin_path(NamespaceKind::Net, &pod).exists());
    assert!(!dirs.pin_path(NamespaceKind::Ipc, &pod).exists());
    assert_eq!(
        fs::read(&foreign).unwrap(),
        b"not ours",
        "foreign file touched"
    );
    assert!(pins.pin_mounts().is_empty(), "{:?}", pins.pin_mounts());
}

#[test]
fn creating_a_pinned_pod_again_fails_and_keeps_the_first() {
    let pins = TempPins::new();
    let pod = unique_pod_id("twice");
    let ns = pins
        .manager
        .create(&pod, &NamespaceRequest::default())
        .unwrap();
    let before: Vec<u64> = NamespaceKind::ALL
        .iter()
        .map(|k| inode(pin(&ns, *k)))
        .collect();
    let err = pins
        .manager
        .create(&pod, &NamespaceRequest::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            CreateError::AlreadyExists {
                namespace: NamespaceKind::Net,
                ..
            }
        ),
        "{err:?}"
    );
    let after: Vec<u64> = NamespaceKind::ALL
        .iter()
        .map(|k| inode(pin(&ns, *k)))
        .collect();
    assert_eq!(before, after);
    pins.manager.release(&pod).unwrap();
}

#[test]
fn host_namespaces_are_shared_not_created() {
    let pins = TempPins::new();
    let pod = unique_pod_id("host");
    let host = NamespaceRequest {
        network: NamespaceMode::Node,
        ipc: NamespaceMode::Node,
        uts: NamespaceMode::Node,
        ..NamespaceRequest::default()
    };
    let ns = pins.manager.create(&pod, &host).unwrap();
    for kind in NamespaceKind::ALL {
        assert_eq!(ns.get(kind), &NamespaceLocation::Host);
    }
    assert_eq!(fs::read_dir(pins.root()).unwrap().count(), 0);

    // hostNetwork pod with a private IPC namespace.
    let mixed = NamespaceRequest {
        network: NamespaceMode::Node,
        uts: NamespaceMode::Node,
        sysctls: [("kernel.msgmax".to_owned(), "4096".to_owned())].into(),
        ..NamespaceRequest::default()
    };
    let ns = pins.manager.create(&pod, &mixed).unwrap();
    assert_eq!(ns.net, NamespaceLocation::Host);
    assert_eq!(ns.uts, NamespaceLocation::Host);
    let ipc = pin(&ns, NamespaceKind::Ipc);
    assert_ne!(inode(ipc), inode(Path::new("/proc/self/ns/ipc")));
    assert_eq!(
        in_ns("ipc", ipc, &["cat", "/proc/sys/kernel/msgmax"]),
        "4096"
    );
    assert_eq!(pins.files(), vec![ipc.to_path_buf()]);
    pins.manager.release(&pod).unwrap();
    assert!(pins.files().is_empty());
}

#[test]
fn create_release_cycles_leak_nothing() {
    const CYCLES: usize = 200;
    let pins = TempPins::new();
    let value = port_start_value();
    let request = full_request("leak", &value);
    // Warm up: the first create sets up the shared pin directories.
    let warm = unique_pod_id("leakwarm");
    pins.manager.create(&warm, &request).unwrap();
    pins.manager.release(&warm).unwrap();

    let threads = || count_entries("/proc/self/task");
    let mounts_before = pins.mounts();
    let fds_before = count_entries("/proc/self/fd");
    let threads_before = threads();
    for i in 0..CYCLES {
        let pod = PodId::new(format!("{warm}-{i}")).unwrap();
        let ns = pins.manager.create(&pod, &request).unwrap();
        assert!(is_mount_point(pin(&ns, NamespaceKind::Net)));
        pins.manager.release(&pod).unwrap();
    }
    assert_eq!(pins.mounts(), mounts_before);
    assert!(pins.files().is_empty(), "{:?}", pins.files());
    assert_eq!(
        count_entries("/proc/self/fd"),
        fds_before,
        "file descriptors leaked"
    );
    // A joined thread can linger in /proc for a moment after join returns
    // (it is reaped after it wakes the joiner), so wait for it to go.
    eventually("namespace threads to exit", || threads() == threads_before);
}

#[test]
fn concurrent_creates_get_distinct_namespaces() {
    const PODS: usize = 20;
    let pins = TempPins::new();
    let pods: Vec<PodId> = (0..PODS).map(|_| unique_pod_id("conc")).collect();
    let created: Vec<PodNamespaces> = thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| {
                let manager = &pins.manager;
                s.spawn(move || manager.create(pod, &full_request("conc", "1000")))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    for kind in NamespaceKind::ALL {
        let host = inode(&Path::new("/proc/self/ns").join(kind.proc_name()));
        let inodes: HashSet<u64> = created.iter().map(|ns| inode(pin(ns, kind))).collect();
        assert_eq!(inodes.len(), PODS, "{kind} namespaces are not distinct");
        assert!(
            !inodes.contains(&host),
            "a pod got the host's {kind} namespace"
        );
    }
    assert_eq!(pins.manager.list_pinned().unwrap().len(), PODS);
    for pod in &pods {
        pins.manager.release(pod).unwrap();
    }
    assert!(pins.files().is_empty());
    assert!(pins.pin_mounts().is_empty(), "{:?}", pins.pin_mounts());
}

#[test]
fn gc_removes_unknown_pods_and_keeps_the_others() {
    let pins = TempPins::new();
    let keep = unique_pod_id("keep");
    let orphan_a = unique_pod_id("orphan");
    let orphan_b = unique_pod_id("orphan");
    let keep_ns = pins
        .manager
        .create(&keep, &NamespaceRequest::default())
        .unwrap();
    pins.manager
        .create(&orphan_a, &NamespaceRequest::default())
        .unwrap();
    // An orphan with only a network namespace.
    let net_only = NamespaceRequest {
        ipc: NamespaceMode::Node,
        uts: NamespaceMode::Node,
        ..NamespaceRequest::default()
    };
    pins.manager.create(&orphan_b, &net_only).unwrap();
    // A stale pin file from a previous boot.
    let stale = unique_pod_id("stale");
    fs::write(
        pins.manager.dirs().pin_path(NamespaceKind::Uts, &stale),
        b"",
    )
    .unwrap();
    // Files that are not ours stay.
    let foreign = pins.manager.dirs().netns_dir.join("someone-else");
    fs::write(&foreign, b"").unwrap();

    let mut listed = pins.manager.list_pinned().unwrap();
    listed.sort();
    let mut expected = vec![
        keep.clone(),
        orphan_a.clone(),
        orphan_b.clone(),
        stale.clone(),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    let mut removed = pins.manager.gc(std::slice::from_ref(&keep)).unwrap();
    removed.sort();
    let mut expected_removed = vec![orphan_a, orphan_b, stale];
    expected_removed.sort();
    assert_eq!(removed, expected_removed);
    assert_eq!(pins.manager.list_pinned().unwrap(), vec![keep.clone()]);
    for kind in NamespaceKind::ALL {
        assert!(
            is_mount_point(pin(&keep_ns, kind)),
            "kept pod lost its {kind} pin"
        );
    }
    assert!(foreign.exists());
    let kept: BTreeSet<String> = NamespaceKind::ALL
        .iter()
        .map(|k| pin(&keep_ns, *k).to_str().unwrap().to_owned())
        .collect();
    assert_eq!(pins.pin_mounts(), kept);
    pins.manager.release(&keep).unwrap();
    fs::remove_file(foreign).unwrap();
}
