//! Containers end to end: the real daemon running busybox containers with runc under conmon in
//! real pods (namespaces, CNI bridge, cgroups), images pulled through the daemon from a local
//! `docker-registry`, everything driven through the CRI client as a kubelet would. Root only.
//! Each test has its own registry, bridge network, daemon, temp dir and cgroup parent.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cri_api::runtime::v1::{
    Capability, ContainerFilter, ContainerState, ContainerStateValue, ContainerStatusRequest,
    ImageSpec, Int64Value, LinuxContainerResources, ListContainersRequest, Mount, NamespaceMode,
    RemoveContainerRequest, RemoveImageRequest, SecurityProfile, StopContainerRequest,
    security_profile::ProfileType,
};
use nix::sys::signal::Signal;
use sluice_e2e::containers::{
    ImageConfig, LogLine, Pod, Runtime, World, build_image_with, busybox_rootfs, cap_field,
    cgroup_dirs_under, container, create, env, exec, exec_ok, mounts_under, now_ns, paths_named,
    pids_with_cmdline, read_log, run, run_to_exit, security, set_pod_pid_mode, shell, start_time,
    status, stdout_of, wait_gone, wait_state,
};
use tonic::Code;

const SECS30: Duration = Duration::from_secs(30);

/// CRI-O's default capabilities as numbers: CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4,
/// KILL 5, SETGID 6, SETUID 7, SETPCAP 8, NET_BIND_SERVICE 10.
const DEFAULT_CAPS: [u32; 9] = [0, 1, 3, 4, 5, 6, 7, 8, 10];

fn default_cap_mask() -> u64 {
    DEFAULT_CAPS.iter().fold(0u64, |m, c| m | (1u64 << c))
}

fn daemon_cap_bnd(w: &World) -> u64 {
    let text = fs::read_to_string(format!("/proc/{}/status", w.daemon_pid())).unwrap();
    cap_field(&text, "CapBnd")
}

async fn stop(c: &mut Runtime, id: &str, timeout: i64) {
    c.stop_container(StopContainerRequest {
        container_id: id.into(),
        timeout,
    })
    .await
    .unwrap_or_else(|e| panic!("StopContainer {id}: {e:?}"));
}

async fn list(c: &mut Runtime, filter: Option<ContainerFilter>) -> BTreeSet<String> {
    c.list_containers(ListContainersRequest { filter })
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Waits (bounded) until the log at `path` has a stdout line `msg`.
async fn wait_log_line(path: &Path, msg: &str) {
    let deadline = Instant::now() + SECS30;
    loop {
        if path.exists() && stdout_of(&read_log(path)).iter().any(|m| m == msg) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no stdout line {msg:?} in {}: {:?}",
            path.display(),
            fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn group_set(line: &str) -> BTreeSet<u32> {
    line.split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect()
}

/// A unique number for a `sleep` argument, so host-side /proc scans find only our process.
fn unique_secs() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{}", 100_000 + (std::process::id() % 50_000) * 16 + n)
}

/// ExecSync `sleep <unique>` with a 1 s timeout in container `id`: the call comes back well
/// before the sleep would end, reports the timeout (an error or a non-zero exit code with
/// "timed out", as the kubelet's client interprets both), and the exec'd process is gone from
/// the host — neither running nor a zombie.
async fn assert_exec_timeout_kills(c: &mut Runtime, id: &str) {
    let secs = unique_secs();
    let argv = ["sleep", secs.as_str()];
    let mut c2 = c.clone();
    let id2 = id.to_string();
    let argv2: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let t = Instant::now();
    let call = tokio::spawn(async move {
        let a: Vec<&str> = argv2.iter().map(String::as_str).collect();
        exec(&mut c2, &id2, &a, 1).await
    });
    // Find the exec'd process on the host while it runs.
    let mut seen = None;
    while seen.is_none() && !call.is_finished() && t.elapsed() < Duration::from_secs(10) {
        if let Some(p) = pids_with_cmdline(&argv).first() {
            seen = Some((*p, start_time(*p)));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let res = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("ExecSync with a 1 s timeout returns")
        .unwrap();
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "ExecSync with a 1 s timeout took {took:?}"
    );
    match res {
        Err(e) => assert!(
            e.code() == Code::DeadlineExceeded
                || e.message().to_lowercase().contains("timed out")
                || e.message().to_lowercase().contains("timeout"),
            "a timed-out exec's error should say so: {e:?}"
        ),
        Ok(r) => {
            assert_ne!(r.exit_code, 0, "timed-out exec reported success: {r:?}");
            let err = String::from_utf8_lossy(&r.stderr).to_lowercase();
            assert!(
                err.contains("timed out") || err.contains("timeout"),
                "a timed-out exec's stderr should say so: {r:?}"
            );
        }
    }
    let (pid, started) = seen.expect("the exec'd sleep was seen on the host while it ran");
    let left = wait_gone(pid, started, Duration::from_secs(5)).await;
    assert_eq!(
        left, None,
        "exec'd process {pid} still exists (state {left:?}) after the timed-out ExecSync"
    );
    assert!(
        pids_with_cmdline(&argv).is_empty(),
        "no `sleep {secs}` may be left on the host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_exit_codes_and_reasons() {
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("logs")).await;
    let t0 = now_ns();

    let cfg = shell("fail", &w.busybox, "echo hello; echo oops >&2; exit 3");
    let log_path = pod.log_dir().join("fail.log");
    let (s, lines) = run_to_exit(&mut c, &pod, cfg).await;
    let t1 = now_ns();
    assert_eq!(s.exit_code, 3);
    assert_eq!(s.reason, "Error");
    assert_eq!(s.log_path, log_path.display().to_string());
    assert!(
        0 < s.created_at && s.created_at <= s.started_at && s.started_at <= s.finished_at,
        "{s:?}"
    );
    assert!(!s.image_ref.is_empty(), "{s:?}");
    assert_eq!(s.labels.get("name").map(String::as_str), Some("fail"));
    let mut short: Vec<String> = lines.iter().map(LogLine::short).collect();
    short.sort();
    assert_eq!(short, vec!["stderr F oops", "stdout F hello"]);
    for l in &lines {
        assert!(
            t0 - 1_000_000_000 <= l.time_ns && l.time_ns <= t1 + 1_000_000_000,
            "log timestamp {} outside the test's run [{t0}, {t1}]",
            l.time_ns
        );
    }

    let (s, lines) = run_to_exit(&mut c, &pod, shell("ok", &w.busybox, "exit 0")).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert!(lines.is_empty(), "{lines:?}");

    // Lines are split at newlines (also several in one write) and a long line at the
    // logger's maximum line size: P pieces then one F, which concatenate to the line.
    let (s, lines) = run_to_exit(
        &mut c,
        &pod,
        shell(
            "long",
            &w.busybox,
            "printf 'a\\nb\\n\\nc\\n'; printf '%020000d\\n' 0",
        ),
    )
    .await;
    assert_eq!(s.exit_code, 0);
    let short: Vec<String> = lines.iter().take(4).map(LogLine::short).collect();
    assert_eq!(
        short,
        vec!["stdout F a", "stdout F b", "stdout F ", "stdout F c"]
    );
    let rest = &lines[4..];
    assert!(rest.len() > 1, "a 20000-byte line is split: {}", rest.len());
    let (last, pieces) = rest.split_last().unwrap();
    assert!(pieces.iter().all(|l| l.tag == 'P' && l.stream == "stdout"));
    assert_eq!(last.tag, 'F');
    let joined: String = rest.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(joined, "0".repeat(20_000));
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_env_workdir_and_user_from_config_and_image() {
    let w = World::start().await;
    let img = build_image_with(
        &[busybox_rootfs("cfg")],
        &ImageConfig {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo \"image-cmd $FROM_IMAGE $OVERRIDE\"; pwd; id -u; id -g; id -G".into()],
            env: vec!["FROM_IMAGE=img".into(), "OVERRIDE=img".into()],
            working_dir: "/work".into(),
            user: "app".into(),
            stop_signal: String::new(),
        },
    );
    let image = w.push_and_pull("cfg", &img).await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("cfg")).await;

    // Nothing set: the image's entrypoint + cmd, env, working dir and user (app = 1000:1000,
    // also in group extra = 2000 per the image's /etc/group).
    let (s, lines) = run_to_exit(&mut c, &pod, container("img", &image, &[])).await;
    assert_eq!(s.exit_code, 0, "{lines:?}");
    let out = stdout_of(&lines);
    assert_eq!(out[..4], ["image-cmd img img", "/work", "1000", "1000"]);
    assert_eq!(group_set(&out[4]), BTreeSet::from([1000, 2000]));

    // Args only: image entrypoint + our args; env merged (ours wins); our working dir and
    // uid 0 explicitly.
    let mut cfg = container("args", &image, &[]);
    cfg.args = vec![
        "echo \"args $0 $FROM_IMAGE $OVERRIDE $FROM_CTR\"; pwd; id -u".into(),
        "zero".into(),
    ];
    cfg.envs = env(&[("OVERRIDE", "ctr"), ("FROM_CTR", "yes")]);
    cfg.working_dir = "/tmp".into();
    security(&mut cfg).run_as_user = Some(Int64Value { value: 0 });
    let (s, lines) = run_to_exit(&mut c, &pod, cfg).await;
    assert_eq!(s.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["args zero img ctr yes", "/tmp", "0"]);

    // A command replaces entrypoint and cmd (the image's cmd is not appended as args).
    let (s, lines) = run_to_exit(
        &mut c,
        &pod,
        container("cmd", &image, &["/bin/sh", "-c", "echo \"cmd $0\""]),
    )
    .await;
    assert_eq!(s.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["cmd /bin/sh"]);

    // uid/gid/supplemental groups from the config.
    let mut cfg = shell("ids", &image, "id -u; id -g; id -G");
    let sc = security(&mut cfg);
    sc.run_as_user = Some(Int64Value { value: 1234 });
    sc.run_as_group = Some(Int64Value { value: 5678 });
    sc.supplemental_groups = vec![3000, 3001];
    let (s, lines) = run_to_exit(&mut c, &pod, cfg).await;
    assert_eq!(s.exit_code, 0, "{lines:?}");
    let out = stdout_of(&lines);
    assert_eq!(out[..2], ["1234", "5678"]);
    assert_eq!(group_set(&out[2]), BTreeSet::from([5678, 3000, 3001]));

    // run_as_username resolved against the image's passwd and group, from the plain image
    // (whose user is root).
    let mut cfg = shell("byname", &w.busybox, "id -u; id -g; id -G; echo $HOME");
    security(&mut cfg).run_as_username = "app".into();
    let (s, lines) = run_to_exit(&mut c, &pod, cfg).await;
    assert_eq!(s.exit_code, 0, "{lines:?}");
    let out = stdout_of(&lines);
    assert_eq!(out[..2], ["1000", "1000"]);
    assert_eq!(group_set(&out[2]), BTreeSet::from([1000, 2000]));
    assert_eq!(out[3], "/home/app");
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_bind_mounts_and_pod_files() {
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("files")).await;
    let data = w.layout().dir.path().join("data");
    let ro = w.layout().dir.path().join("ro");
    fs::create_dir(&data).unwrap();
    fs::create_dir(&ro).unwrap();
    fs::write(data.join("hostfile"), "from-host\n").unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o750)).unwrap();

    let mut cfg = shell(
        "ro",
        &w.busybox,
        "cat /data/hostfile; stat -c %a /data; \
         echo w > /data/new && echo rw-ok; \
         (echo w > /ro/new) 2>/dev/null || echo ro-refused; \
         touch /rootfs-write 2>/dev/null || echo rootfs-refused",
    );
    cfg.mounts = vec![
        Mount {
            container_path: "/data".into(),
            host_path: data.display().to_string(),
            ..Mount::default()
        },
        Mount {
            container_path: "/ro".into(),
            host_path: ro.display().to_string(),
            readonly: true,
            ..Mount::default()
        },
    ];
    security(&mut cfg).readonly_rootfs = true;
    let log = pod.log_dir().join("ro.log");
    let id = run(&mut c, &pod, cfg).await;
    let s = wait_state(&mut c, &id, ContainerState::ContainerExited, SECS30).await;
    let out = stdout_of(&read_log(&log));
    assert_eq!(s.exit_code, 0, "{out:?}");
    assert_eq!(
        out,
        ["from-host", "750", "rw-ok", "ro-refused", "rootfs-refused"]
    );
    assert_eq!(fs::read_to_string(data.join("new")).unwrap(), "w\n");
    assert!(!ro.join("new").exists());
    let mounts: HashMap<String, bool> = s
        .mounts
        .iter()
        .map(|m| (m.container_path.clone(), m.readonly))
        .collect();
    assert_eq!(mounts.get("/data"), Some(&false), "{:?}", s.mounts);
    assert_eq!(mounts.get("/ro"), Some(&true), "{:?}", s.mounts);

    // A writable rootfs takes writes (into the container's upper dir).
    let (s, lines) = run_to_exit(
        &mut c,
        &pod,
        shell("rw", &w.busybox, "touch /rootfs-write && echo rootfs-ok"),
    )
    .await;
    assert_eq!(
        (s.exit_code, stdout_of(&lines)),
        (0, vec!["rootfs-ok".to_string()])
    );

    // /etc/hosts, /etc/resolv.conf and the hostname are the pod's.
    let (s, lines) = run_to_exit(
        &mut c,
        &pod,
        shell(
            "etc",
            &w.busybox,
            "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; hostname",
        ),
    )
    .await;
    assert_eq!(s.exit_code, 0);
    let out = stdout_of(&lines).join("\n");
    let mut parts = out.split("\n---\n");
    let (resolv, hosts, hostname) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    for want in [
        "nameserver 10.96.0.10",
        "search e2e.svc.cluster.local",
        "options ndots:5",
    ] {
        assert!(
            resolv.lines().any(|l| l.trim() == want),
            "{want:?} in the container's resolv.conf:\n{resolv}"
        );
    }
    let pod_dir = w.layout().runroot.join("pods").join(&pod.id);
    assert_eq!(
        resolv.trim_end(),
        fs::read_to_string(pod_dir.join("resolv.conf"))
            .unwrap()
            .trim_end()
    );
    assert_eq!(
        hosts.trim_end(),
        fs::read_to_string(pod_dir.join("hosts"))
            .unwrap()
            .trim_end()
    );
    assert_eq!(hostname, "files");
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_its_network() {
    let w = World::start().await;
    let mut c = w.rt().await;
    let port = sluice_e2e::net::free_port();
    let pod = w.run_pod(w.pod_config("net")).await;
    let server = run(
        &mut c,
        &pod,
        shell(
            "server",
            &w.busybox,
            &format!(
                "mkdir -p /tmp/www && echo hello-net > /tmp/www/index.html && \
                 exec httpd -f -p 127.0.0.1:{port} -h /tmp/www"
            ),
        ),
    )
    .await;
    // (No `-T`: Debian's static busybox wget crashes with a timeout set.)
    let get = format!("wget -q -O - http://127.0.0.1:{port}/index.html");
    let (s, lines) = run_to_exit(
        &mut c,
        &pod,
        shell(
            "client",
            &w.busybox,
            &format!("i=0; until {get}; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done"),
        ),
    )
    .await;
    assert_eq!(s.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["hello-net"]);

    // Another pod's loopback is its own.
    let other = w.run_pod(w.pod_config("other")).await;
    let (s, lines) = run_to_exit(&mut c, &other, shell("client", &w.busybox, &get)).await;
    assert_ne!(
        s.exit_code, 0,
        "another pod reached 127.0.0.1:{port}: {lines:?}"
    );
    assert_eq!(
        status(&mut c, &server).await.status.unwrap().state,
        ContainerState::ContainerRunning as i32
    );
    w.remove_all_pods().await;
}

/// The `ps` output of a container that runs next to `sleep <secs>` in a pod with `mode`.
async fn ps_next_to_sleep(w: &World, mode: NamespaceMode, name: &str, secs: &str) -> Vec<String> {
    let mut c = w.rt().await;
    let mut pc = w.pod_config(name);
    set_pod_pid_mode(&mut pc, mode);
    let pod = w.run_pod(pc).await;
    run(
        &mut c,
        &pod,
        container("sleeper", &w.busybox, &["sleep", secs]),
    )
    .await;
    let (s, lines) = run_to_exit(
        &mut c,
        &pod,
        shell(
            "looker",
            &w.busybox,
            "ps; echo pid1=$(cat /proc/1/cmdline | tr '\\0' ' ')",
        ),
    )
    .await;
    assert_eq!(s.exit_code, 0, "{lines:?}");
    stdout_of(&lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_namespace_pod_is_shared_container_is_not() {
    let w = World::start().await;
    let secs = unique_secs();
    let shown = format!("sleep {secs}");

    let out = ps_next_to_sleep(&w, NamespaceMode::Pod, "pidpod", &secs).await;
    assert!(
        out.iter().any(|l| l.ends_with(&shown)),
        "POD mode: the other container's process is visible: {out:?}"
    );
    assert!(
        !out.iter().any(|l| l.trim() == format!("pid1={shown}")),
        "POD mode: pid 1 is the pod's, not a container's: {out:?}"
    );

    let out = ps_next_to_sleep(&w, NamespaceMode::Container, "pidctr", &secs).await;
    assert!(
        !out.iter().any(|l| l.ends_with(&shown)),
        "CONTAINER mode: the other container's process is hidden: {out:?}"
    );
    assert!(
        out.iter().any(|l| l.starts_with("pid1=/bin/sh -c ps")),
        "CONTAINER mode: the container's own process is pid 1: {out:?}"
    );

    // TARGET: a container joins another container's PID namespace (a debug container).
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("pidtarget")).await;
    let target = run(
        &mut c,
        &pod,
        container("target", &w.busybox, &["sleep", &secs]),
    )
    .await;
    let mut cfg = shell("debugger", &w.busybox, "ps");
    security(&mut cfg).namespace_options = Some(cri_api::runtime::v1::NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Target as i32,
        ipc: NamespaceMode::Pod as i32,
        target_id: target.clone(),
        ..Default::default()
    });
    let (s, lines) = run_to_exit(&mut c, &pod, cfg).await;
    assert_eq!(s.exit_code, 0, "{lines:?}");
    let out = stdout_of(&lines);
    assert!(
        out.iter()
            .any(|l| l.ends_with(&shown) && l.split_whitespace().next() == Some("1")),
        "TARGET mode: the target's process is visible as pid 1: {out:?}"
    );
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_output_exit_code_and_timeout() {
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("exec")).await;
    let id = run(
        &mut c,
        &pod,
        container("box", &w.busybox, &["sleep", "100000"]),
    )
    .await;

    let r = exec(
        &mut c,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 5"],
        10,
    )
    .await
    .unwrap();
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.exit_code, 5);
    assert_eq!(exec_ok(&mut c, &id, &["cat", "/etc/marker"]).await, "plain");
    // Verbose status: the host pid of the container's process and its OCI spec, in the
    // shape `crictl inspect` reads.
    let v: serde_json::Value =
        serde_json::from_str(&status(&mut c, &id).await.info["info"]).unwrap();
    let pid = i32::try_from(v["pid"].as_i64().unwrap()).unwrap();
    assert_eq!(
        fs::read(format!("/proc/{pid}/cmdline")).unwrap(),
        b"sleep\x00100000\x00",
        "info.pid is the container's process"
    );
    assert_eq!(
        v["runtimeSpec"]["process"]["args"],
        serde_json::json!(["sleep", "100000"])
    );
    // No timeout (0) means none.
    let r = exec(&mut c, &id, &["echo", "no-timeout"], 0).await.unwrap();
    assert_eq!(
        (r.exit_code, r.stdout.as_slice()),
        (0, &b"no-timeout\n"[..])
    );

    assert_exec_timeout_kills(&mut c, &id).await;
    assert_eq!(
        status(&mut c, &id).await.status.unwrap().state,
        ContainerState::ContainerRunning as i32,
        "the container outlives a timed-out exec"
    );
    assert_eq!(exec_ok(&mut c, &id, &["echo", "again"]).await, "again\n");

    stop(&mut c, &id, 0).await;
    assert!(
        exec(&mut c, &id, &["true"], 5).await.is_err(),
        "ExecSync in an exited container fails"
    );
    let e = exec(&mut c, "0123456789abcdef", &["true"], 5)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_sigterm_then_kills_after_the_timeout() {
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("stop")).await;

    let trapper = run(
        &mut c,
        &pod,
        shell(
            "trapper",
            &w.busybox,
            "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 1; done",
        ),
    )
    .await;
    let ignorer = run(
        &mut c,
        &pod,
        shell(
            "ignorer",
            &w.busybox,
            "trap '' TERM; echo ready; sleep 1000; echo not-killed",
        ),
    )
    .await;
    let quick = run(
        &mut c,
        &pod,
        shell("quick", &w.busybox, "trap '' TERM; echo ready; sleep 1000"),
    )
    .await;
    for n in ["trapper", "ignorer", "quick"] {
        wait_log_line(&pod.log_dir().join(format!("{n}.log")), "ready").await;
    }

    stop(&mut c, &trapper, 30).await;
    let s = status(&mut c, &trapper).await.status.unwrap();
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert_eq!(
        stdout_of(&read_log(&pod.log_dir().join("trapper.log"))),
        ["ready", "got-term"]
    );

    let t = Instant::now();
    stop(&mut c, &ignorer, 2).await;
    let took = t.elapsed();
    let s = status(&mut c, &ignorer).await.status.unwrap();
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "Error"));
    assert!(
        took >= Duration::from_millis(1500),
        "SIGKILL only after the 2 s grace period ({took:?})"
    );
    assert_eq!(
        stdout_of(&read_log(&pod.log_dir().join("ignorer.log"))),
        ["ready"]
    );

    // Timeout 0: killed at once.
    stop(&mut c, &quick, 0).await;
    let s = status(&mut c, &quick).await.status.unwrap();
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "Error"));

    // Stopping again is a no-op.
    stop(&mut c, &trapper, 10).await;

    // The image's StopSignal replaces SIGTERM.
    let img = build_image_with(
        &[busybox_rootfs("usr1")],
        &ImageConfig {
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap 'echo got-usr1; exit 0' USR1; trap 'echo got-term' TERM; echo ready; \
                 while true; do sleep 1; done"
                    .into(),
            ],
            working_dir: "/".into(),
            stop_signal: "SIGUSR1".into(),
            ..ImageConfig::default()
        },
    );
    let image = w.push_and_pull("usr1", &img).await;
    let usr1 = run(&mut c, &pod, container("usr1", &image, &[])).await;
    let log = pod.log_dir().join("usr1.log");
    wait_log_line(&log, "ready").await;
    stop(&mut c, &usr1, 30).await;
    let s = status(&mut c, &usr1).await.status.unwrap();
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert_eq!(stdout_of(&read_log(&log)), ["ready", "got-usr1"]);
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_exceeded_is_oom_killed() {
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("oom")).await;
    let mut cfg = shell(
        "hog",
        &w.busybox,
        "echo start; x=0123456789abcdef; while true; do x=\"$x$x\"; done",
    );
    cfg.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..LinuxContainerResources::default()
    });
    let (s, lines) = run_to_exit(&mut c, &pod, cfg).await;
    assert_eq!(s.reason, "OOMKilled", "{s:?} {lines:?}");
    assert_eq!(s.exit_code, 137, "{s:?}");
    assert_eq!(
        s.resources
            .as_ref()
            .and_then(|r| r.linux.as_ref())
            .map(|l| l.memory_limit_in_bytes),
        Some(32 << 20),
        "status reports the limit"
    );
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_and_add_all_get_the_daemons_bounding_set() {
    let w = World::start().await;
    let bnd = daemon_cap_bnd(&w);
    let mut c = w.rt().await;
    let mut pc = w.pod_config("priv");
    pc.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let pod = w.run_pod(pc).await;

    let mut p = container("privileged", &w.busybox, &["sleep", "100000"]);
    security(&mut p).privileged = true;
    let mut a = container("addall", &w.busybox, &["sleep", "100000"]);
    security(&mut a).capabilities = Some(Capability {
        add_capabilities: vec!["ALL".into()],
        ..Capability::default()
    });
    for cfg in [p, a] {
        let name = cfg.metadata.as_ref().unwrap().name.clone();
        let id = run(&mut c, &pod, cfg).await;
        let st = exec_ok(&mut c, &id, &["cat", "/proc/1/status"]).await;
        assert_eq!(
            cap_field(&st, "CapEff"),
            bnd,
            "{name}: CapEff {:x} vs the daemon's CapBnd {bnd:x}",
            cap_field(&st, "CapEff")
        );
        assert_eq!(cap_field(&st, "CapBnd"), bnd, "{name}");
        assert_exec_timeout_kills(&mut c, &id).await;
    }
    // A capability the daemon's bounding set lacks, named explicitly, fails CreateContainer
    // with a message naming it (only checkable on a host whose set lacks one).
    if bnd & (1 << 24) == 0 {
        let mut cfg = container("sysres", &w.busybox, &["sleep", "1"]);
        security(&mut cfg).capabilities = Some(Capability {
            add_capabilities: vec!["SYS_RESOURCE".into()],
            ..Capability::default()
        });
        let e = create(&mut c, &pod, cfg).await.unwrap_err();
        assert!(e.message().contains("SYS_RESOURCE"), "{e:?}");
    }
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_capabilities_drop_all_and_seccomp() {
    let w = World::start().await;
    let bnd = daemon_cap_bnd(&w);
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("caps")).await;
    let caps_script = "grep -E '^Cap(Eff|Bnd):' /proc/self/status";

    let (s, lines) = run_to_exit(&mut c, &pod, shell("default", &w.busybox, caps_script)).await;
    assert_eq!(s.exit_code, 0);
    let text = stdout_of(&lines).join("\n");
    assert_eq!(
        cap_field(&text, "CapEff"),
        default_cap_mask() & bnd,
        "CRI-O's default set: {text}"
    );

    let mut cfg = shell("dropall", &w.busybox, caps_script);
    security(&mut cfg).capabilities = Some(Capability {
        drop_capabilities: vec!["ALL".into()],
        ..Capability::default()
    });
    let (s, lines) = run_to_exit(&mut c, &pod, cfg).await;
    assert_eq!(s.exit_code, 0);
    assert_eq!(cap_field(&stdout_of(&lines).join("\n"), "CapEff"), 0);

    let mut cfg = shell("addone", &w.busybox, caps_script);
    security(&mut cfg).capabilities = Some(Capability {
        add_capabilities: vec!["NET_ADMIN".into()],
        drop_capabilities: vec!["KILL".into()],
        ..Capability::default()
    });
    let (s, lines) = run_to_exit(&mut c, &pod, cfg).await;
    assert_eq!(s.exit_code, 0);
    assert_eq!(
        cap_field(&stdout_of(&lines).join("\n"), "CapEff"),
        (default_cap_mask() | (1 << 12)) & !(1 << 5)
    );

    // RuntimeDefault refuses unshare(CLONE_NEWUSER) without CAP_SYS_ADMIN; Unconfined allows it.
    let unshare = "unshare -U true && echo unshare-ok || echo unshare-refused";
    for (name, profile, want) in [
        ("confined", ProfileType::RuntimeDefault, "unshare-refused"),
        ("unconfined", ProfileType::Unconfined, "unshare-ok"),
    ] {
        let mut cfg = shell(name, &w.busybox, unshare);
        security(&mut cfg).seccomp = Some(SecurityProfile {
            profile_type: profile as i32,
            localhost_ref: String::new(),
        });
        let (s, lines) = run_to_exit(&mut c, &pod, cfg).await;
        assert_eq!(s.exit_code, 0);
        assert_eq!(stdout_of(&lines), [want], "{name}");
    }
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_containers_keep_running_and_exits_are_recovered() {
    let mut w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("restart")).await;
    let trigger = w.layout().dir.path().join("trigger");
    fs::create_dir(&trigger).unwrap();
    let mount = Mount {
        container_path: "/trigger".into(),
        host_path: trigger.display().to_string(),
        ..Mount::default()
    };
    let wait_go = "while [ ! -e /trigger/go ]; do sleep 0.1; done";
    let mut runner = shell(
        "runner",
        &w.busybox,
        &format!("echo up; {wait_go}; echo during-downtime; while true; do sleep 1; done"),
    );
    runner.mounts = vec![mount.clone()];
    let mut quitter = shell(
        "quitter",
        &w.busybox,
        &format!("echo up; {wait_go}; echo bye; exit 7"),
    );
    quitter.mounts = vec![mount];
    let runner = run(&mut c, &pod, runner).await;
    let quitter = run(&mut c, &pod, quitter).await;
    let (rlog, qlog) = (
        pod.log_dir().join("runner.log"),
        pod.log_dir().join("quitter.log"),
    );
    wait_log_line(&rlog, "up").await;
    wait_log_line(&qlog, "up").await;

    w.daemon.signal(Signal::SIGKILL);
    assert!(w.daemon.wait_exit(Duration::from_secs(10)).await.is_some());
    fs::write(trigger.join("go"), "").unwrap();
    // Both containers act while the daemon is down; conmon keeps logging for them.
    wait_log_line(&rlog, "during-downtime").await;
    wait_log_line(&qlog, "bye").await;
    // Let the quitter's monitor record its exit before the restart.
    tokio::time::sleep(Duration::from_millis(500)).await;

    w.daemon.restart(&[]).await;
    let mut c = w.rt().await;
    let s = status(&mut c, &runner).await.status.unwrap();
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    let s = wait_state(&mut c, &quitter, ContainerState::ContainerExited, SECS30).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"));
    assert!(s.finished_at >= s.started_at && s.finished_at > 0, "{s:?}");
    assert_eq!(stdout_of(&read_log(&qlog)), ["up", "bye"]);
    assert_eq!(stdout_of(&read_log(&rlog)), ["up", "during-downtime"]);
    // The recovered running container is fully manageable.
    assert_eq!(
        exec_ok(&mut c, &runner, &["echo", "alive"]).await,
        "alive\n"
    );
    stop(&mut c, &runner, 0).await;
    let s = status(&mut c, &runner).await.status.unwrap();
    assert_eq!(
        (s.state, s.exit_code),
        (ContainerState::ContainerExited as i32, 137)
    );
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_pod_removes_its_containers_and_leaves_nothing() {
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("gone")).await;
    let running = run(
        &mut c,
        &pod,
        container("running", &w.busybox, &["sleep", "100000"]),
    )
    .await;
    let (_, _) = run_to_exit(
        &mut c,
        &pod,
        shell("exited", &w.busybox, "echo data > /written"),
    )
    .await;
    let created = create(&mut c, &pod, container("created", &w.busybox, &["true"]))
        .await
        .unwrap();
    let ids: Vec<String> = list(&mut c, None).await.into_iter().collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&running) && ids.contains(&created));
    let (root, runroot) = (w.layout().root.clone(), w.layout().runroot.clone());
    // What exists now, so the checks below can fail.
    let before_mounts: Vec<String> = [&root, &runroot]
        .iter()
        .flat_map(|d| mounts_under(d))
        .filter(|m| m.contains(&running))
        .collect();
    assert!(
        !before_mounts.is_empty(),
        "the running container's rootfs is mounted under the daemon's root/runroot"
    );
    for id in &ids {
        assert!(
            !paths_named(&root, id).is_empty() || !paths_named(&runroot, id).is_empty(),
            "container {id} has state under the daemon's directories"
        );
    }
    let pid = status(&mut c, &running).await;
    let running_cgroups: Vec<_> = cgroup_dirs_under(&w.layout().cgroup_parent)
        .into_iter()
        .filter(|d| d.to_string_lossy().contains(&running))
        .collect();
    assert!(
        !running_cgroups.is_empty(),
        "the running container has cgroups under the pod's: {pid:?}"
    );
    let procs: Vec<i32> = running_cgroups
        .iter()
        .flat_map(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    assert!(!procs.is_empty());

    c.stop_pod_sandbox(cri_api::runtime::v1::StopPodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .unwrap();
    let s = status(&mut c, &running).await.status.unwrap();
    assert_eq!(
        s.state,
        ContainerState::ContainerExited as i32,
        "StopPodSandbox stops the pod's containers: {s:?}"
    );
    for p in &procs {
        assert!(
            sluice_e2e::containers::proc_state(*p).is_none_or(|st| st == 'Z'),
            "container process {p} still runs after StopPodSandbox"
        );
    }
    w.remove_all_pods().await;
    assert!(list(&mut c, None).await.is_empty());
    for id in &ids {
        let e = c
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert_eq!(paths_named(&root, id), Vec::<std::path::PathBuf>::new());
        assert_eq!(paths_named(&runroot, id), Vec::<std::path::PathBuf>::new());
    }
    let after_mounts: Vec<String> = [&root, &runroot]
        .iter()
        .flat_map(|d| mounts_under(d))
        // nsmgr's pin directories stay shared mount points, like iproute2's /run/netns.
        .filter(|m| !(m.ends_with("/ns") || m.ends_with("/ns/ipc") || m.ends_with("/ns/uts")))
        .collect();
    assert_eq!(after_mounts, Vec::<String>::new(), "mounts left behind");
    let cgroups: Vec<_> = cgroup_dirs_under(&w.layout().cgroup_parent)
        .into_iter()
        .filter(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sluice-"))
        })
        .collect();
    assert_eq!(
        cgroups,
        Vec::<std::path::PathBuf>::new(),
        "cgroups left behind"
    );
    for p in procs {
        assert!(
            sluice_e2e::containers::proc_state(p).is_none(),
            "container process {p} still exists"
        );
    }
    let log = fs::read_to_string(pod.log_dir().join("exited.log")).unwrap_or_default();
    let _ = log; // logs belong to the kubelet: not asserted either way
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_error_codes() {
    let w = World::start().await;
    let mut c = w.rt().await;
    let p1 = w.run_pod(w.pod_config("one")).await;
    let p2 = w.run_pod(w.pod_config("two")).await;
    let label = |cfg: &mut cri_api::runtime::v1::ContainerConfig, tier: &str| {
        cfg.labels.insert("tier".into(), tier.into());
    };
    let mut a = container("a", &w.busybox, &["sleep", "100000"]);
    label(&mut a, "web");
    let a = run(&mut c, &p1, a).await;
    let mut b = shell("b", &w.busybox, "exit 0");
    label(&mut b, "db");
    let b = run(&mut c, &p1, b).await;
    wait_state(&mut c, &b, ContainerState::ContainerExited, SECS30).await;
    let mut cc = container("c", &w.busybox, &["true"]);
    label(&mut cc, "web");
    let cid = create(&mut c, &p2, cc).await.unwrap();

    let set = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let f = |id: &str, state: Option<ContainerState>, pod: &str, labels: &[(&str, &str)]| {
        Some(ContainerFilter {
            id: id.into(),
            state: state.map(|s| ContainerStateValue { state: s as i32 }),
            pod_sandbox_id: pod.into(),
            label_selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    };
    assert_eq!(list(&mut c, None).await, set(&[&a, &b, &cid]));
    assert_eq!(list(&mut c, f(&a[..12], None, "", &[])).await, set(&[&a]));
    assert_eq!(list(&mut c, f(&a, None, "", &[])).await, set(&[&a]));
    use ContainerState::*;
    assert_eq!(
        list(&mut c, f("", Some(ContainerRunning), "", &[])).await,
        set(&[&a])
    );
    assert_eq!(
        list(&mut c, f("", Some(ContainerExited), "", &[])).await,
        set(&[&b])
    );
    assert_eq!(
        list(&mut c, f("", Some(ContainerCreated), "", &[])).await,
        set(&[&cid])
    );
    assert_eq!(list(&mut c, f("", None, &p2.id, &[])).await, set(&[&cid]));
    assert_eq!(
        list(&mut c, f("", None, &p1.id[..12], &[])).await,
        set(&[&a, &b])
    );
    assert_eq!(
        list(&mut c, f("", None, "", &[("tier", "web")])).await,
        set(&[&a, &cid])
    );
    assert_eq!(
        list(&mut c, f("", None, &p1.id, &[("tier", "web")])).await,
        set(&[&a])
    );
    assert_eq!(
        list(&mut c, f("", None, "", &[("tier", "web"), ("name", "c")])).await,
        set(&[&cid])
    );
    assert!(list(&mut c, f("ffffffff", None, "", &[])).await.is_empty());
    assert!(
        list(&mut c, f(&a, Some(ContainerExited), "", &[]))
            .await
            .is_empty()
    );

    // Errors a kubelet acts on.
    let missing = format!("{}/e2e/missing:1", w.registry.host());
    let e = create(&mut c, &p1, container("m", &missing, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains(&missing), "{}", e.message());
    let e = create(&mut c, &p1, container("a", &w.busybox, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // The same name in another pod is fine.
    let a2 = create(&mut c, &p2, container("a", &w.busybox, &["true"]))
        .await
        .unwrap();
    let mut img = w.daemon.images().await;
    let e = img
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: w.busybox.clone(),
                ..ImageSpec::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = c
        .container_status(ContainerStatusRequest {
            container_id: "0123456789abcdef".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // RemoveContainer force-removes a running one; removing twice succeeds.
    for id in [&a, &b, &cid, &a2] {
        for _ in 0..2 {
            c.remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e:?}"));
        }
    }
    assert!(list(&mut c, None).await.is_empty());
    // Unused now: the image can go.
    img.remove_image(RemoveImageRequest {
        image: Some(ImageSpec {
            image: w.busybox.clone(),
            ..ImageSpec::default()
        }),
    })
    .await
    .unwrap();
    let _: &Pod = &p1;
    w.remove_all_pods().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_resource_updates_and_log_reopening() {
    use cri_api::runtime::v1::{
        ContainerStatsFilter, ContainerStatsRequest, ListContainerStatsRequest,
        ListPodSandboxStatsRequest, PodSandboxStatsFilter, PodSandboxStatsRequest,
        ReopenContainerLogRequest, UpdateContainerResourcesRequest,
    };
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("stats")).await;
    let log = pod.log_dir().join("busy.log");
    let mut cfg = shell(
        "busy",
        &w.busybox,
        "dd if=/dev/zero of=/blob bs=1M count=4 2>/dev/null; i=0; \
         while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ready; \
         while true; do echo tick; sleep 0.1; done",
    );
    cfg.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        ..LinuxContainerResources::default()
    });
    let id = run(&mut c, &pod, cfg).await;
    wait_log_line(&log, "ready").await;

    let s = c
        .container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(s.attributes.as_ref().unwrap().id, id);
    assert_eq!(
        s.attributes
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .name,
        "busy"
    );
    let cpu = s.cpu.as_ref().unwrap();
    assert!(
        cpu.usage_core_nano_seconds.as_ref().unwrap().value > 0,
        "{s:?}"
    );
    assert!(cpu.timestamp > 0);
    let mem = s.memory.as_ref().unwrap();
    assert!(mem.working_set_bytes.as_ref().unwrap().value > 0, "{s:?}");
    let fs_use = s.writable_layer.as_ref().unwrap();
    assert!(
        fs_use.used_bytes.as_ref().unwrap().value >= 4 << 20,
        "the 4 MiB written to the rootfs count: {s:?}"
    );
    assert!(fs_use.inodes_used.as_ref().unwrap().value >= 1);

    let listed = c
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                pod_sandbox_id: pod.id.clone(),
                ..ContainerStatsFilter::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attributes.as_ref().unwrap().id, id);
    let none = c
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                id: "ffffffffffff".into(),
                ..ContainerStatsFilter::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(none.is_empty());

    let ps = c
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(ps.attributes.as_ref().unwrap().id, pod.id);
    let linux = ps.linux.as_ref().unwrap();
    assert!(
        linux
            .containers
            .iter()
            .any(|x| x.attributes.as_ref().unwrap().id == id),
        "{ps:?}"
    );
    assert!(
        linux
            .cpu
            .as_ref()
            .unwrap()
            .usage_core_nano_seconds
            .as_ref()
            .unwrap()
            .value
            > 0,
        "{ps:?}"
    );
    let all = c
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter::default()),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1);

    // UpdateContainerResources reaches the cgroup and the status.
    c.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..LinuxContainerResources::default()
        }),
        ..UpdateContainerResourcesRequest::default()
    })
    .await
    .unwrap();
    let s = status(&mut c, &id).await.status.unwrap();
    assert_eq!(
        s.resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(64 << 20)
    );
    let limits: Vec<String> = cgroup_dirs_under(&w.layout().cgroup_parent)
        .into_iter()
        .filter(|d| d.to_string_lossy().contains(&id))
        .filter_map(|d| {
            fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .map(|v| v.trim().to_string())
        .collect();
    assert_eq!(
        limits,
        vec![(64u64 << 20).to_string()],
        "the container's memory cgroup"
    );

    // The kubelet rotates a log by renaming it and asking for a reopen: new lines go to a
    // new file at the log path, complete and well-formed.
    let rotated = pod.log_dir().join("busy.log.1");
    fs::rename(&log, &rotated).unwrap();
    c.reopen_container_log(ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(
        log.exists(),
        "ReopenContainerLog recreated {}",
        log.display()
    );
    wait_log_line(&log, "tick").await;
    assert!(stdout_of(&read_log(&rotated)).starts_with(&["ready".to_string()]));
    stop(&mut c, &id, 0).await;
    let e = c
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::FailedPrecondition | Code::Unknown | Code::Internal
        ),
        "reopening the log of a stopped container fails: {e:?}"
    );
    w.remove_all_pods().await;
}

/// A container that exits at once must not be reported as finishing before it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_never_finishes_before_it_started() {
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("quick")).await;
    for i in 0..10 {
        let (s, _) = run_to_exit(
            &mut c,
            &pod,
            container(&format!("q{i}"), &w.busybox, &["true"]),
        )
        .await;
        assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
        assert!(
            0 < s.created_at && s.created_at <= s.started_at && s.started_at <= s.finished_at,
            "created {} started {} finished {}",
            s.created_at,
            s.started_at,
            s.finished_at
        );
    }
    w.remove_all_pods().await;
}
