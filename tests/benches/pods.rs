//! Pod sandbox latency through the CRI client: RunPodSandbox, StopPodSandbox and
//! RemovePodSandbox over N pods (default 50, `SLUICE_BENCH_PODS`) on a bridge network
//! (Debian's bridge + host-local + loopback plugins, no host ports), plus the daemon's RSS idle
//! and with all pods running, and where RunPodSandbox spends its time (the per-step timings
//! the daemon logs for every pod). Root only.
//!
//! Pods are kubelet-style by default (a PID namespace per container, no pause process);
//! `SLUICE_BENCH_PID=pod` makes them share one PID namespace (a `sluice pause` per pod), as
//! critest's benchmark does.
//!
//! `SLUICE_BENCH_MODE` selects the telemetry: `plain` (default: no metrics endpoint, no
//! tracing), `metrics` (`/metrics` served), `tracing` (OTLP export of every span at 100%
//! sampling to an in-process receiver), to measure the overhead of each.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use sluice_e2e::bench::{report, rss_kib};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use cri_api::runtime::v1::{
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StopPodSandboxRequest,
};
use sluice_e2e::net::BridgeNet;
use sluice_e2e::{Daemon, Layout};

/// The `<step>_us=<n>` fields of the daemon's "pod sandbox set up" log lines.
fn step_times(log: &str) -> HashMap<String, Vec<Duration>> {
    let mut out: HashMap<String, Vec<Duration>> = HashMap::new();
    for line in log.lines().filter(|l| l.contains("pod sandbox set up")) {
        for field in line.split_whitespace() {
            if let Some((k, v)) = field.split_once("_us=")
                && let Ok(us) = v.parse::<u64>()
            {
                out.entry(k.to_string())
                    .or_default()
                    .push(Duration::from_micros(us));
            }
        }
    }
    out
}

fn pod(i: usize, pid: i32) -> PodSandboxConfig {
    PodSandboxConfig {
        linux: Some(cri_api::runtime::v1::LinuxPodSandboxConfig {
            security_context: Some(cri_api::runtime::v1::LinuxSandboxSecurityContext {
                namespace_options: Some(cri_api::runtime::v1::NamespaceOption {
                    pid,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        metadata: Some(PodSandboxMetadata {
            name: format!("bench-{i}"),
            uid: format!("uid-{i}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("bench-{i}"),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("SLUICE_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    println!("binary: {}", sluice_e2e::sluice_bin().display());
    let mode = std::env::var("SLUICE_BENCH_MODE").unwrap_or_else(|_| "plain".into());
    let otlp = sluice_e2e::otlp::Receiver::start().await;
    let extra = match mode.as_str() {
        "plain" => String::new(),
        "metrics" => "[metrics]\nenable = true\naddress = \"127.0.0.1:0\"\n".to_string(),
        "tracing" => format!(
            "[tracing]\nenable = true\nendpoint = {:?}\nsampling_rate_per_million = 1000000\n",
            otlp.endpoint()
        ),
        other => panic!("SLUICE_BENCH_MODE={other}: expected plain, metrics or tracing"),
    };
    println!("telemetry mode: {mode}");
    let pid = match std::env::var("SLUICE_BENCH_PID").as_deref() {
        Ok("pod") => cri_api::runtime::v1::NamespaceMode::Pod as i32,
        _ => cri_api::runtime::v1::NamespaceMode::Container as i32,
    };
    println!(
        "PID namespace: {}",
        if pid == 0 {
            "shared by the pod (sluice pause)"
        } else {
            "per container"
        }
    );
    let layout = Layout::new(&extra);
    let _net = BridgeNet::install(&layout, &[]);
    let d = Daemon::start_with(layout, &[]).await;
    let mut c = d.runtime().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(d.pid().as_raw());

    // Warm-up: the first CNI call pays for page-cache misses of the plugin binaries.
    let w = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod(usize::MAX, pid)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: w })
        .await
        .unwrap();

    let mut ids = Vec::with_capacity(n);
    let mut run = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let id = c
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod(i, pid)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        run.push(t.elapsed());
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = rss_kib(d.pid().as_raw());

    let mut stop = Vec::with_capacity(n);
    for id in &ids {
        let t = Instant::now();
        c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        stop.push(t.elapsed());
    }
    let mut remove = Vec::with_capacity(n);
    for id in &ids {
        let t = Instant::now();
        c.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        remove.push(t.elapsed());
    }

    report("RunPodSandbox", run);
    report("StopPodSandbox", stop);
    report("RemovePodSandbox", remove);
    println!("RunPodSandbox steps (daemon timers):");
    let mut steps: Vec<_> = step_times(&d.layout.read_log()).into_iter().collect();
    steps.sort_by(|a, b| a.0.cmp(&b.0));
    for (step, v) in steps {
        report(&format!("  {step}"), v);
    }
    println!("daemon RSS idle         {idle} KiB");
    println!("daemon RSS with {n} pods {loaded} KiB");
    if mode == "tracing" {
        let spans = otlp
            .wait_for(Duration::from_secs(10), |s| {
                s.iter().filter(|x| x.name == "RunPodSandbox").count() > n
            })
            .await;
        println!("spans received by the OTLP receiver: {}", spans.len());
    }
}
