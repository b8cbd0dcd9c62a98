//! Container lifecycle latency through runc + conmon on the real kernel (root): create (overlay
//! mount + spec + conmon/runc create), start, exec-sync `true`, stop (a shell that exits on
//! SIGTERM), remove (runc delete + unmount + directory removal); p50/p90 over 20 containers.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use oci::rootfs::Overlay;
use oci::spec::{self, ContainerSpec, Host, ImageConfig};
use oci::{CreateRequest, Runc, RuntimeConfig};

const N: usize = 20;

fn busybox_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for a in ["sh", "true", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    for d in ["etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lifecycle bench needs root"
    );
    let dir = tempfile::Builder::new()
        .prefix("oci-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    let runtime = Runc::new(RuntimeConfig::new(dir.path()).unwrap()).unwrap();
    let host = Host::detect(Host::default_capability_names()).unwrap();
    let layer = dir.path().join("layer");
    busybox_rootfs(&layer);
    let parent = format!("/sluice-bench-{}", std::process::id());
    let (mut create, mut start, mut exec, mut stop, mut remove) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..N {
        let id = format!("bench-{}-{i}", std::process::id());
        let bundle = dir.path().join(&id);
        let log = bundle.join("ctr.log");

        let t = Instant::now();
        let overlay = Overlay::in_dir(&bundle.join("rootfs"), vec![layer.clone()], false);
        overlay.mount().unwrap();
        let s = ContainerSpec {
            id: id.clone(),
            image: ImageConfig {
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            },
            command: vec![
                "sh".into(),
                "-c".into(),
                "trap 'exit 0' TERM; while true; do sleep 0.02; done".into(),
            ],
            rootfs: overlay.target.clone(),
            cgroup_parent: parent.clone(),
            ..Default::default()
        };
        let generated = spec::generate(&s, &host).unwrap();
        let req = CreateRequest {
            id: &id,
            bundle: &bundle,
            spec: &generated.spec,
            log_path: &log,
            stdin: false,
            stdin_once: false,
        };
        runtime.create(&req).await.unwrap();
        create.push(t.elapsed());

        let t = Instant::now();
        runtime.start(&id).await.unwrap();
        start.push(t.elapsed());

        let mut p = generated.spec.process.clone();
        p.args = vec!["true".into()];
        let t = Instant::now();
        let out = runtime
            .exec_sync(&id, &bundle, &p, Some(Duration::from_secs(10)))
            .await
            .unwrap();
        exec.push(t.elapsed());
        assert_eq!(out.exit_code, 0);

        let t = Instant::now();
        let st = runtime
            .stop(&id, &bundle, 15, Duration::from_secs(10))
            .await
            .unwrap();
        stop.push(t.elapsed());
        assert!(!st.killed);

        let t = Instant::now();
        runtime.delete(&id).await.unwrap();
        overlay.unmount().unwrap();
        std::fs::remove_dir_all(&bundle).unwrap();
        remove.push(t.elapsed());
    }
    for root in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(root.path().join(parent.trim_start_matches('/')));
    }
    println!("container lifecycle through conmon 2.1.6 + runc 1.1.5, {N} containers (ms)");
    println!(
        "{:<10} {:>8} {:>8}   CRI-O reference (median)",
        "op", "p50", "p90"
    );
    for (name, v, cri_o) in [
        ("create", &mut create, "~100"),
        ("start", &mut start, "~20"),
        ("exec-sync", &mut exec, "-"),
        ("stop", &mut stop, "~130"),
        ("remove", &mut remove, "~30"),
    ] {
        println!(
            "{name:<10} {:>8.1} {:>8.1}   {cri_o}",
            pct(v, 0.5),
            pct(v, 0.9)
        );
    }
}
