//! Container latency through the CRI client: CreateContainer, StartContainer, ExecSync
//! (`true`), StopContainer (of a shell that exits on SIGTERM) and RemoveContainer over N
//! busybox containers (default 20, `SLUICE_BENCH_CONTAINERS`) in one pod on a bridge network,
//! the image pulled through the daemon from a local `docker-registry`. Run it against a
//! release binary (`SLUICE_BIN`). Root only.
//!
//! For comparison, CRI-O on the project's test machine (critest benchmark medians): about
//! 100 ms create, 20 ms start, 130 ms stop, 30 ms remove.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use sluice_e2e::bench::report;
use std::time::{Duration, Instant};

use cri_api::runtime::v1::{
    ContainerState, RemoveContainerRequest, StartContainerRequest, StopContainerRequest,
};
use sluice_e2e::containers::{World, create, exec, shell, status};

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("SLUICE_BENCH_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!("binary: {}", sluice_e2e::sluice_bin().display());
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("bench")).await;
    // Exits at once on SIGTERM (a trapped signal interrupts `wait`, where a foreground
    // `sleep` would delay the trap until it ends); `echo ready` says the trap is in place.
    let script = "trap 'exit 0' TERM; echo ready; sleep 100000 & wait";

    // Warm-up: the first container pays for page-cache misses of runc, conmon and the layer.
    let warm = create(&mut c, &pod, shell("warm", &w.busybox, script))
        .await
        .unwrap();
    c.start_container(StartContainerRequest {
        container_id: warm.clone(),
    })
    .await
    .unwrap();
    exec(&mut c, &warm, &["true"], 10).await.unwrap();
    c.remove_container(RemoveContainerRequest { container_id: warm })
        .await
        .unwrap();

    let (mut creates, mut starts, mut execs, mut stops, mut removes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let id = create(&mut c, &pod, shell(&format!("c{i}"), &w.busybox, script))
            .await
            .unwrap();
        creates.push(t.elapsed());
        let t = Instant::now();
        c.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        starts.push(t.elapsed());
        ids.push(id);
    }
    for id in &ids {
        let t = Instant::now();
        let r = exec(&mut c, id, &["true"], 10).await.unwrap();
        execs.push(t.elapsed());
        assert_eq!(r.exit_code, 0);
    }
    // Every shell has installed its trap before it is stopped.
    for (i, _) in ids.iter().enumerate() {
        let log = pod.log_dir().join(format!("c{i}.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" stdout F ready")
        {
            assert!(Instant::now() < deadline, "c{i} never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for id in &ids {
        let t = Instant::now();
        c.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
        stops.push(t.elapsed());
        let s = status(&mut c, id).await.status.unwrap();
        assert_eq!(s.state, ContainerState::ContainerExited as i32);
        assert_eq!(s.exit_code, 0, "stopped by SIGTERM, not SIGKILL");
    }
    for id in &ids {
        let t = Instant::now();
        c.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        removes.push(t.elapsed());
    }
    report("CreateContainer", creates);
    report("StartContainer", starts);
    report("ExecSync (true)", execs);
    report("StopContainer", stops);
    report("RemoveContainer", removes);
    w.remove_all_pods().await;
}
