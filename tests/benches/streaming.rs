//! Streaming through the real daemon: Exec round-trip latency of `true` over SPDY (the CRI
//! `Exec` call, the upgrade, the five streams, runc exec, the status, the teardown: what
//! `crictl exec` costs) next to ExecSync of the same command, and the throughput of a
//! 100 MiB download through a SPDY port-forward from busybox httpd in the pod. Run it
//! against a release binary (`SLUICE_BIN`). Root only. `SLUICE_BENCH_EXECS` (default 30)
//! and `SLUICE_BENCH_PF_MIB` (default 100) change the sizes.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cri_api::runtime::v1::{ExecRequest, PortForwardRequest};
use sluice_e2e::bench::report;
use sluice_e2e::containers::{World, exec, run, shell};
use streaming::client::{self, SessionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let n = env_or("SLUICE_BENCH_EXECS", 30);
    let mib = env_or("SLUICE_BENCH_PF_MIB", 100);
    println!("binary: {}", sluice_e2e::sluice_bin().display());
    let w = World::start().await;
    let mut c = w.rt().await;
    let pod = w.run_pod(w.pod_config("bench")).await;
    let script = format!(
        "mkdir -p /w && dd if=/dev/zero of=/w/big bs=1048576 count={mib} 2>/dev/null && \
         httpd -p 8080 -h /w && echo ready && sleep 100000"
    );
    let id = run(&mut c, &pod, shell("web", &w.busybox, &script)).await;
    // Wait until httpd serves.
    let deadline = Instant::now() + Duration::from_secs(60);
    while exec(
        &mut c,
        &id,
        &["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/big"],
        30,
    )
    .await
    .map(|r| r.exit_code)
    .unwrap_or(1)
        != 0
    {
        assert!(Instant::now() < deadline, "httpd did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut spdy = Vec::with_capacity(n);
    let mut sync = Vec::with_capacity(n);
    let (mut rpc, mut upgrade, mut session) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=n {
        let t = Instant::now();
        let url = c
            .exec(ExecRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let t_rpc = t.elapsed();
        let (handle, _incoming, _) = client::connect_spdy(&url, client::CRICTL_PROTOCOLS)
            .await
            .unwrap();
        let t_upgrade = t.elapsed();
        let out = client::run_remote_command(&handle, SessionOptions::output())
            .await
            .unwrap();
        let took = t.elapsed();
        handle.close().await;
        assert_eq!(out.exit_code(), Some(0), "{:?}", out.status());
        let t = Instant::now();
        exec(&mut c, &id, &["true"], 10).await.unwrap();
        let took_sync = t.elapsed();
        // The first round pays for cold caches.
        if i > 0 {
            spdy.push(took);
            sync.push(took_sync);
            rpc.push(t_rpc);
            upgrade.push(t_upgrade - t_rpc);
            session.push(took - t_upgrade);
        }
    }
    report("exec `true` over SPDY (Exec + session)", spdy);
    report("  of which the Exec RPC", rpc);
    report("  of which connect + upgrade", upgrade);
    report("  of which streams, runc exec, status", session);
    report("exec `true` via ExecSync", sync);

    let url = c
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (handle, _incoming, _) = client::connect_spdy(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    for round in 0..3 {
        let (data, _error) = client::port_forward_spdy(&handle, 8080, round)
            .await
            .unwrap();
        let (mut r, mut wr) = data.into_split();
        let t = Instant::now();
        wr.write_all(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let k = r.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            total += k;
        }
        let secs = t.elapsed().as_secs_f64();
        assert!(total > mib * 1024 * 1024, "short download: {total} bytes");
        println!(
            "port-forward download round {round}: {total} bytes in {:.3} s = {:.1} MiB/s",
            secs,
            total as f64 / secs / 1048576.0
        );
    }
    handle.close().await;
    w.remove_all_pods().await;
}
