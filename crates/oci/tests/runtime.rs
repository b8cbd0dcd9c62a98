//! runc + conmon end to end on the real kernel (root).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::World;

const SECS: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exit_code() {
    let w = World::new();
    let id = common::unique_id("log");
    let c = w
        .run(w.spec(&id, &["sh", "-c", "echo hello; echo oops >&2; exit 3"]))
        .await;
    assert_eq!(c.wait_exit(SECS), 3);
    let mut lines = c.log_lines();
    lines.sort();
    assert_eq!(lines, vec!["stderr F oops", "stdout F hello"]);
    let exits = w.runtime.config().exits_dir.join(&id);
    assert_eq!(std::fs::read_to_string(exits).unwrap().trim(), "3");
    match w.runtime.reconcile(&id, &c.bundle).await.unwrap() {
        oci::ContainerStatus::Exited {
            code, oom_killed, ..
        } => {
            assert_eq!((code, oom_killed), (3, false))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_args_cwd_and_user_from_config() {
    let w = World::new();
    let id = common::unique_id("env");
    let mut s = w.spec(&id, &["sh", "-c"]);
    s.args = vec![
        "echo \"$GREETING $0 $1\"; pwd; id -u; id -g; id -G; echo $HOME".into(),
        "a0".into(),
        "a1".into(),
    ];
    s.env = vec![("GREETING".into(), "hi".into())];
    s.working_dir = "/work".into();
    s.user.uid = Some(1000);
    s.user.supplemental_groups = vec![3000];
    let c = w.run(s).await;
    assert_eq!(c.wait_exit(SECS), 0);
    assert_eq!(
        c.stdout(),
        vec![
            "hi a0 a1",
            "/work",
            "1000",
            "1000",
            "1000 2000 3000",
            "/home/app"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_from_image_passwd() {
    let w = World::new();
    let id = common::unique_id("pw");
    let mut s = w.spec(&id, &["sh", "-c", "id -u; id -g; id -G"]);
    s.image.user = "app".into();
    let c = w.run(s).await;
    assert_eq!(c.wait_exit(SECS), 0);
    assert_eq!(c.stdout(), vec!["1000", "1000", "1000 2000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_refuses_writes() {
    let w = World::new();
    let id = common::unique_id("ro");
    let mut s = w.spec(
        &id,
        &[
            "sh",
            "-c",
            "touch /newfile && echo wrote; echo tmp > /dev/shm/x && echo shm",
        ],
    );
    s.readonly_rootfs = true;
    let c = w.run(s).await;
    c.wait_exit(SECS);
    assert_eq!(c.stdout(), vec!["shm"], "{:?}", c.log_lines());
    assert!(
        c.log_lines()
            .iter()
            .any(|l| l.contains("Read-only file system")),
        "{:?}",
        c.log_lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_mounts_keep_mode_and_readonly() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let host = w.dir.path().join("vol");
    std::fs::create_dir(&host).unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::write(host.join("data"), "from host\n").unwrap();
    let id = common::unique_id("bind");
    let mut s = w.spec(
        &id,
        &[
            "sh",
            "-c",
            "stat -c %a /mnt/vol; cat /mnt/vol/data; touch /mnt/ro/x || echo refused",
        ],
    );
    s.mounts = vec![
        oci::spec::BindMount {
            container_path: "/mnt/vol".into(),
            host_path: host.clone(),
            readonly: false,
            propagation: oci::spec::Propagation::Private,
        },
        oci::spec::BindMount {
            container_path: "/mnt/ro".into(),
            host_path: host.clone(),
            readonly: true,
            propagation: oci::spec::Propagation::Private,
        },
    ];
    let c = w.run(s).await;
    assert_eq!(c.wait_exit(SECS), 0);
    assert_eq!(c.stdout(), vec!["751", "from host", "refused"]);
    assert!(!host.join("x").exists());
}

/// A network namespace pinned with `ip netns add`, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new() -> Self {
        let name = format!("ocit{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success());
        Self(name)
    }
    fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.0).into()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_a_pinned_network_namespace() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new();
    let ns = NetNs::new();
    let ino = std::fs::metadata(ns.path()).unwrap().ino();
    let id = common::unique_id("net");
    let mut s = w.spec(&id, &["readlink", "/proc/self/ns/net"]);
    s.namespaces.network = oci::spec::NsTarget::Path(ns.path());
    let c = w.run(s).await;
    assert_eq!(c.wait_exit(SECS), 0);
    assert_eq!(c.stdout(), vec![format!("net:[{ino}]")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pod_pid_namespace_versus_private() {
    let w = World::new();
    let a_id = common::unique_id("pida");
    let a = w.run(w.spec(&a_id, &["sleep", "4242"])).await;
    let pod_ns = std::path::PathBuf::from(format!("/proc/{}/ns/pid", a.pid()));

    let b_id = common::unique_id("pidb");
    let mut b = w.spec(&b_id, &["ps", "-o", "args"]);
    b.namespaces.pid = oci::spec::PidMode::Pod(pod_ns);
    let b = w.run(b).await;
    assert_eq!(b.wait_exit(SECS), 0);
    assert!(
        b.stdout().iter().any(|l| l.contains("sleep 4242")),
        "{:?}",
        b.stdout()
    );

    let c_id = common::unique_id("pidc");
    let c = w.run(w.spec(&c_id, &["ps", "-o", "args"])).await;
    assert_eq!(c.wait_exit(SECS), 0);
    assert!(
        !c.stdout().iter().any(|l| l.contains("sleep 4242")),
        "{:?}",
        c.stdout()
    );
    let out = w
        .runtime
        .stop(&a_id, &a.bundle, 15, Duration::from_secs(0))
        .await
        .unwrap();
    assert!(out.killed);
}

fn process(c: &common::Container, args: &[&str]) -> oci::spec::oci::Process {
    let mut p = c.spec.as_ref().unwrap().process.clone();
    p.args = args.iter().map(|s| s.to_string()).collect();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_output_and_exit_code() {
    let w = World::new();
    let id = common::unique_id("exec");
    let c = w.run(w.spec(&id, &["sleep", "1000"])).await;
    let out = w
        .runtime
        .exec_sync(
            &id,
            &c.bundle,
            &process(&c, &["sh", "-c", "echo out; echo err >&2; exit 4"]),
            Some(SECS),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            out.stdout.as_slice(),
            out.stderr.as_slice(),
            out.exit_code,
            out.timed_out
        ),
        (&b"out\n"[..], &b"err\n"[..], 4, false)
    );
    // A missing binary is the process's failure (runc reports it), not a hang.
    let err = w
        .runtime
        .exec_sync(&id, &c.bundle, &process(&c, &["/nonexistent"]), Some(SECS))
        .await;
    match err {
        Err(oci::RuntimeError::ExecStart { stderr, .. }) => {
            assert!(stderr.contains("nonexistent"), "{stderr}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_timeout_kills_and_leaves_nothing() {
    let w = World::new();
    let id = common::unique_id("exto");
    let c = w.run(w.spec(&id, &["sleep", "1000"])).await;
    let procs = c.cgroup_file("pids", "cgroup.procs");
    let init = c.pid();
    // Find the exec'd process while it runs.
    let watcher = tokio::spawn(async move {
        for _ in 0..500 {
            let text = std::fs::read_to_string(&procs).unwrap_or_default();
            if let Some(p) = text
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .find(|p| *p != init)
            {
                return Some(p);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    });
    let out = w
        .runtime
        .exec_sync(
            &id,
            &c.bundle,
            &process(&c, &["sh", "-c", "sleep 3171; echo never"]),
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, -1);
    let exec_pid = watcher
        .await
        .unwrap()
        .expect("exec'd process seen in the container cgroup");
    // Gone entirely: neither running nor a zombie.
    assert!(
        !std::path::Path::new(&format!("/proc/{exec_pid}")).exists(),
        "exec pid {exec_pid} still exists"
    );
    let left = std::fs::read_to_string(c.cgroup_file("pids", "cgroup.procs")).unwrap();
    assert_eq!(left.trim(), init.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_delivers_sigterm_to_a_trapping_shell() {
    let w = World::new();
    let id = common::unique_id("term");
    let c = w
        .run(w.spec(
            &id,
            &[
                "sh",
                "-c",
                "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.05; done",
            ],
        ))
        .await;
    wait_for_line(&c, "ready").await;
    let out = w
        .runtime
        .stop(&id, &c.bundle, 15, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        out,
        oci::StopOutcome {
            exit_code: 0,
            killed: false
        }
    );
    assert!(c.stdout().contains(&"got TERM".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_process_ignoring_sigterm_after_the_timeout() {
    let w = World::new();
    let id = common::unique_id("kill");
    let c = w
        .run(w.spec(
            &id,
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 0.05; done",
            ],
        ))
        .await;
    wait_for_line(&c, "ready").await;
    let out = w
        .runtime
        .stop(&id, &c.bundle, 15, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        out,
        oci::StopOutcome {
            exit_code: 137,
            killed: true
        }
    );
}

async fn wait_for_line(c: &common::Container, line: &str) {
    for _ in 0..1000 {
        if c.stdout().iter().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{line:?} never logged: {:?}", c.log_lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kill_is_detected() {
    let w = World::new();
    let id = common::unique_id("oom");
    let mut s = w.spec(&id, &["tail", "/dev/zero"]);
    s.resources.memory_limit_bytes = 32 << 20;
    let c = w.run(s).await;
    assert_eq!(c.wait_exit(SECS), 137);
    let h = oci::stats::Hierarchies::discover().unwrap();
    assert!(oci::stats::oom_kills(&h, &c.cgroup).unwrap() >= 1);
    let limit = std::fs::read_to_string(c.cgroup_file("memory", "memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    match w.runtime.reconcile(&id, &c.bundle).await.unwrap() {
        oci::ContainerStatus::Exited {
            code: 137,
            oom_killed: true,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

fn cap_eff(c: &common::Container) -> u64 {
    let line = c
        .stdout()
        .into_iter()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap();
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_and_add_all_get_exactly_the_bounding_set() {
    let w = World::new();
    let bnd = w.host.bounding_caps;
    let id = common::unique_id("priv");
    let mut s = w.spec(&id, &["grep", "CapEff", "/proc/1/status"]);
    s.security.privileged = true;
    let c = w.run(s).await;
    assert_eq!(c.wait_exit(SECS), 0);
    assert_eq!(cap_eff(&c), bnd);

    let id = common::unique_id("all");
    let mut s = w.spec(&id, &["grep", "CapEff", "/proc/1/status"]);
    s.security.capabilities.add = vec!["ALL".into()];
    let c = w.run(s).await;
    assert_eq!(c.wait_exit(SECS), 0);
    assert_eq!(cap_eff(&c), bnd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_dropped_capabilities() {
    let w = World::new();
    let id = common::unique_id("capd");
    let c = w
        .run(w.spec(&id, &["grep", "CapEff", "/proc/1/status"]))
        .await;
    assert_eq!(c.wait_exit(SECS), 0);
    // CRI-O's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE.
    assert_eq!(cap_eff(&c), 0x0000_0000_0000_05fb);

    let id = common::unique_id("capx");
    let mut s = w.spec(&id, &["grep", "CapEff", "/proc/1/status"]);
    s.security.capabilities.drop = vec!["ALL".into()];
    let c = w.run(s).await;
    assert_eq!(c.wait_exit(SECS), 0);
    assert_eq!(cap_eff(&c), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_default_seccomp_blocks_unshare() {
    let w = World::new();
    // Creating a user namespace needs no capability, so only seccomp can refuse it.
    let script = "unshare -U true && echo allowed || echo refused";
    let id = common::unique_id("secu");
    let c = w.run(w.spec(&id, &["sh", "-c", script])).await;
    c.wait_exit(SECS);
    assert_eq!(
        c.stdout(),
        vec!["allowed"],
        "control: unconfined may unshare"
    );

    let id = common::unique_id("secd");
    let mut s = w.spec(
        &id,
        &[
            "sh",
            "-c",
            &format!("grep Seccomp: /proc/self/status; {script}"),
        ],
    );
    s.security.seccomp = oci::spec::Seccomp::RuntimeDefault;
    let c = w.run(s).await;
    c.wait_exit(SECS);
    assert_eq!(
        c.stdout(),
        vec!["Seccomp:\t2", "refused"],
        "{:?}",
        c.log_lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_after_a_simulated_daemon_restart() {
    let w = World::new();
    let id = common::unique_id("rec");
    let c = w
        .run(w.spec(
            &id,
            &[
                "sh",
                "-c",
                "while [ ! -e /tmp/stop ]; do sleep 0.05; done; exit 5",
            ],
        ))
        .await;
    // Forget everything: a new runtime value over the same directories.
    let cfg = w.runtime.config().clone();
    drop(w.runtime.clone());
    let fresh = oci::Runc::new(cfg).unwrap();
    match fresh.reconcile(&id, &c.bundle).await.unwrap() {
        oci::ContainerStatus::Running { pid } => assert_eq!(pid, c.pid()),
        other => panic!("{other:?}"),
    }
    std::fs::write(c.overlay.target.join("tmp/stop"), "").unwrap();
    assert_eq!(c.wait_exit(SECS), 5);
    match fresh.reconcile(&id, &c.bundle).await.unwrap() {
        oci::ContainerStatus::Exited {
            code: 5,
            oom_killed: false,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    fresh.delete(&id).await.unwrap();
    assert!(fresh.state(&id).await.unwrap().is_none());
    match fresh
        .reconcile("never-created", &c.bundle.join("nope"))
        .await
        .unwrap()
    {
        oci::ContainerStatus::Unknown { .. } => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_update_and_writable_layer() {
    let w = World::new();
    let id = common::unique_id("stat");
    let c = w
        .run(w.spec(
            &id,
            &[
                "sh",
                "-c",
                "head -c 300000 /dev/urandom > /tmp/blob; echo ready; sleep 1000",
            ],
        ))
        .await;
    wait_for_line(&c, "ready").await;
    let h = oci::stats::Hierarchies::discover().unwrap();
    let s = oci::stats::cgroup_stats(&h, &c.cgroup).unwrap();
    assert!(s.cpu_usage_ns > 0 && s.memory_usage_bytes > 0, "{s:?}");
    assert!(s.memory_working_set_bytes <= s.memory_usage_bytes);
    let layer = oci::rootfs::layer_usage(&c.overlay.upper).unwrap();
    assert!(layer.bytes >= 300_000 && layer.inodes >= 3, "{layer:?}");

    let res = oci::spec::oci::LinuxResources {
        memory: Some(oci::spec::oci::Memory {
            limit: Some(64 << 20),
            swap: Some(64 << 20),
        }),
        ..Default::default()
    };
    w.runtime.update(&id, &res).await.unwrap();
    let limit = std::fs::read_to_string(c.cgroup_file("memory", "memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_log_after_rotation() {
    let w = World::new();
    let id = common::unique_id("rot");
    let c = w
        .run(w.spec(
            &id,
            &[
                "sh",
                "-c",
                "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done",
            ],
        ))
        .await;
    wait_for_line(&c, "line1").await;
    let rotated = c.log.with_extension("log.1");
    std::fs::rename(&c.log, &rotated).unwrap();
    w.runtime.reopen_log(&id, &c.bundle, &c.log).await.unwrap();
    for _ in 0..200 {
        if !c.stdout().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new = c.stdout();
    assert!(!new.is_empty(), "nothing written to the reopened log");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("line1"));
    assert!(
        !old.contains(&format!(" {}\n", new[0])),
        "{} in both files",
        new[0]
    );
    w.runtime
        .stop(&id, &c.bundle, 9, Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(
        w.runtime.reopen_log(&id, &c.bundle, &c.log).await,
        Err(oci::RuntimeError::NotRunning(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_failure_keeps_runc_error() {
    let w = World::new();
    let id = common::unique_id("fail");
    let s = w.spec(&id, &["/bin/definitely-missing"]);
    let bundle = w.dir.path().join(&id);
    let overlay =
        oci::rootfs::Overlay::in_dir(&bundle.join("rootfs"), vec![w.layer.clone()], false);
    overlay.mount().unwrap();
    let mut gen_spec = oci::spec::generate(&s, &w.host).unwrap().spec;
    // Joining a namespace that does not exist fails inside runc create.
    gen_spec.linux.namespaces.push(oci::spec::oci::Namespace {
        kind: "network".into(),
        path: "/proc/0/ns/net".into(),
    });
    gen_spec
        .linux
        .namespaces
        .retain(|n| !(n.kind == "network" && n.path.is_empty()));
    let log = bundle.join("ctr.log");
    let req = oci::CreateRequest {
        id: &id,
        bundle: &bundle,
        spec: &gen_spec,
        log_path: &log,
        stdin: false,
        stdin_once: false,
    };
    let err = w.runtime.create(&req).await.unwrap_err();
    overlay.unmount().unwrap();
    let _ = w.runtime.delete(&id).await;
    let msg = err.to_string();
    assert!(msg.contains("/proc/0/ns/net"), "{msg}");
}
