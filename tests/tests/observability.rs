//! Metrics and traces of the real daemon: a real Prometheus scrapes /metrics, an in-process
//! OTLP receiver collects the spans of a RunPodSandbox continued from the caller's traceparent,
//! and a dead collector does not break anything. Root only.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri_api::runtime::v1::{
    PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol, RemovePodSandboxRequest,
    RunPodSandboxRequest, StatusRequest, VersionRequest,
};
use nix::sys::signal::Signal;
use sluice_e2e::net::{BridgeNet, free_port};
use sluice_e2e::otlp::Receiver;
use sluice_e2e::{Daemon, Layout};

fn pod(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "obs".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

/// RunPodSandbox of a plain pod; its id.
async fn runp(
    c: &mut cri_api::runtime::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    name: &str,
) -> String {
    c.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(pod(name)),
        runtime_handler: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

/// `GET path` over HTTP/1.0 on a TCP address or unix socket; returns the body.
fn http_get(addr: &str, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut resp = String::new();
    if let Some(sock) = addr.strip_prefix("unix:") {
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s.read_to_string(&mut resp).unwrap();
    } else {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s.read_to_string(&mut resp).unwrap();
    }
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// The address the daemon logged for /metrics.
async fn metrics_addr(d: &Daemon) -> String {
    let line = d.wait_for_log("serving Prometheus metrics").await;
    let start = line.find("address=").unwrap() + "address=".len();
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .trim_start_matches("https://")
        .to_string()
}

async fn daemon_with(extra: &str) -> (Daemon, BridgeNet) {
    let layout = Layout::new(extra);
    let net = BridgeNet::install(&layout, &[]);
    (Daemon::start_with(layout, &[]).await, net)
}

#[tokio::test]
async fn metrics_endpoint_reports_cri_pod_cni_and_process_families() {
    let (d, _net) = daemon_with("[metrics]\nenable = true\naddress = \"127.0.0.1:0\"\n").await;
    let addr = metrics_addr(&d).await;
    let mut c = d.runtime().await;
    c.version(VersionRequest::default()).await.unwrap();
    let _ = c
        .checkpoint_container(cri_api::runtime::v1::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    let id = runp(&mut c, "m").await;

    let body = http_get(&addr, "/metrics");
    for needle in [
        r#"sluice_cri_operations_total{operation="Version",code="Ok"} "#,
        r#"sluice_cri_operations_total{operation="CheckpointContainer",code="Unimplemented"} 1"#,
        r#"sluice_cri_operations_errors_total{operation="CheckpointContainer",code="Unimplemented"} 1"#,
        r#"sluice_cri_operation_duration_seconds_bucket{le="#,
        r#"sluice_pod_network_setup_duration_seconds_count{step="cni"} 1"#,
        r#"sluice_pod_network_setup_duration_seconds_count{step="netns"} 1"#,
        r#"sluice_cni_plugin_duration_seconds_count{plugin="bridge",command="ADD"} 1"#,
        r#"sluice_cni_plugin_duration_seconds_count{plugin="loopback",command="ADD"} 1"#,
        r#"sluice_pods{state="ready"} 1"#,
        "sluice_hostport_mappings 0",
        "sluice_process_resident_memory_bytes ",
        "sluice_process_open_fds ",
        "# EOF",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in:\n{body}");
    }
    assert!(!body.contains(&id), "pod ids never become label values");

    c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    let body = http_get(&addr, "/metrics");
    assert!(body.contains(r#"sluice_pods{state="ready"} 0"#), "{body}");
    assert!(
        body.contains(r#"sluice_pod_network_teardown_duration_seconds_count{step="cni"} 1"#),
        "{body}"
    );
}

#[tokio::test]
async fn metrics_listen_on_loopback_by_default_and_optionally_on_a_unix_socket() {
    // The shipped default binds 127.0.0.1 only.
    let defaults = std::process::Command::new(sluice_e2e::sluice_bin())
        .arg("config")
        .output()
        .unwrap();
    let text = String::from_utf8(defaults.stdout).unwrap();
    assert!(text.contains("address = \"127.0.0.1:9537\""), "{text}");

    // A daemon with port 0 listens on 127.0.0.1 and nowhere else: check the kernel's table.
    let d = Daemon::start_with(
        Layout::new("[metrics]\nenable = true\naddress = \"127.0.0.1:0\"\n"),
        &[],
    )
    .await;
    let addr = metrics_addr(&d).await;
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let listening: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(3) == Some(&"0A") && f[1].ends_with(&format!(":{port:04X}"))
        })
        .collect();
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert!(
        listening[0]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .starts_with("0100007F:"),
        "{listening:?}"
    );

    let sock = Layout::new("");
    let path = sock.dir.path().join("metrics.sock");
    let d2 = Daemon::start_with(
        Layout::new(&format!("[metrics]\nenable = true\nsocket = {:?}\n", path)),
        &[],
    )
    .await;
    d2.wait_for_log("serving Prometheus metrics").await;
    let body = http_get(&format!("unix:{}", path.display()), "/metrics");
    assert!(body.contains("sluice_process_threads"), "{body}");
}

struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`, installed by make deps)");
        Self {
            child,
            _dir: dir,
            port,
        }
    }

    fn query(&self, q: &str) -> Option<serde_json::Value> {
        let path = format!(
            "/api/v1/query?query={}",
            q.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
        );
        let addr = format!("127.0.0.1:{}", self.port);
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let body = resp.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_sluice() {
    let (d, _net) = daemon_with("[metrics]\nenable = true\naddress = \"127.0.0.1:0\"\n").await;
    let addr = metrics_addr(&d).await;
    let mut c = d.runtime().await;
    for _ in 0..3 {
        c.status(StatusRequest { verbose: false }).await.unwrap();
    }
    let id = runp(&mut c, "p").await;

    let prom = Prometheus::start(&addr);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = None;
    let ops = loop {
        if let Some(v) = prom.query("sluice_cri_operations_total") {
            let ops: Vec<String> = v["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["metric"]["operation"].as_str().map(str::to_string))
                .collect();
            if ops.iter().any(|o| o == "RunPodSandbox") && ops.iter().any(|o| o == "Status") {
                break ops;
            }
            last = Some(v);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned sluice's series: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        ops.contains(&"Version".to_string()),
        "the harness's readiness calls: {ops:?}"
    );
    let buckets = prom
        .query("sluice_cri_operation_duration_seconds_bucket{operation=\"RunPodSandbox\"}")
        .unwrap();
    assert!(
        buckets["data"]["result"]
            .as_array()
            .map(|a| a.len() > 5)
            .unwrap_or(false),
        "histogram buckets: {buckets}"
    );
    c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
}

fn traceparent(
    trace_id: &str,
    span_id: &str,
) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("00-{trace_id}-{span_id}-01").parse().unwrap()
}

#[tokio::test]
async fn run_pod_sandbox_is_one_trace_continued_from_the_callers_traceparent() {
    let otlp = Receiver::start().await;
    let (mut d, _net) = daemon_with(&format!(
        "[tracing]\nenable = true\nendpoint = {:?}\nsampling_rate_per_million = 0\n",
        otlp.endpoint()
    ))
    .await;
    let mut c = d.runtime().await;
    let trace_id = "5b8aa5a2d2c872e8321cf37308d69df2";
    let parent = "051581bf3cb55c13";
    let mut config = pod("traced");
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: i32::from(free_port()),
        host_ip: String::new(),
    }];
    let mut req = tonic::Request::new(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    });
    req.metadata_mut()
        .insert("traceparent", traceparent(trace_id, parent));
    let id = c
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    // Untraced calls: sampling_rate_per_million = 0 and no parent, so not exported.
    c.version(VersionRequest::default()).await.unwrap();

    // SIGTERM flushes the batch exporter.
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(20))
        .await
        .expect("daemon stops");
    let spans = otlp
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().any(|x| x.name == "RunPodSandbox")
        })
        .await;
    let root = spans
        .iter()
        .find(|s| s.name == "RunPodSandbox")
        .unwrap_or_else(|| panic!("no RunPodSandbox span in {spans:#?}"));
    assert_eq!(root.trace_id, trace_id);
    assert_eq!(
        root.parent_span_id, parent,
        "the caller's span is the parent"
    );
    assert!(
        spans.iter().all(|s| s.trace_id == trace_id),
        "only the sampled trace: {spans:#?}"
    );
    assert!(
        !spans.iter().any(|s| s.name == "Version"),
        "unsampled root not exported"
    );

    // Children: the pod steps, each CNI plugin call and the host-port step, all in one tree.
    let by_id: HashMap<&str, &sluice_e2e::otlp::Span> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let under_root = |s: &sluice_e2e::otlp::Span| {
        let mut cur = s;
        for _ in 0..16 {
            if cur.span_id == root.span_id {
                return true;
            }
            match by_id.get(cur.parent_span_id.as_str()) {
                Some(p) => cur = p,
                None => return false,
            }
        }
        false
    };
    for name in ["nsmgr_create", "cni_add", "hostport_add"] {
        let s = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"));
        assert!(under_root(s), "{name} is not under RunPodSandbox");
    }
    let plugins: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "cni_plugin" && under_root(s))
        .filter_map(|s| s.attr("plugin"))
        .collect();
    assert!(
        plugins.iter().any(|p| p.contains("bridge"))
            && plugins.iter().any(|p| p.contains("loopback")),
        "one span per CNI plugin: {plugins:?}"
    );

    d.restart(&[]).await;
    let mut c = d.runtime().await;
    c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_dead_collector_does_not_break_rpcs() {
    // Nothing listens on this port: every export fails.
    let port = free_port();
    let (mut d, _net) = daemon_with(&format!(
        "[tracing]\nenable = true\nendpoint = \"http://127.0.0.1:{port}\"\n"
    ))
    .await;
    let mut c = d.runtime().await;
    let id = runp(&mut c, "nocollector").await;
    c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("daemon stops");
    assert_eq!(status.code(), Some(0), "{}", d.layout.read_log());
    let log = d.layout.read_log();
    assert!(
        log.contains("trace export failed"),
        "the failure is reported: {log}"
    );
    assert!(
        log.matches("trace export failed").count() <= 2,
        "rate-limited: {log}"
    );
}

/// Every metric name a running sluice exports, as series names (`_total`, `_bucket`, ...).
fn exported_series(body: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in body.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some("#") && f.next() == Some("TYPE") {
            let (Some(name), Some(kind)) = (f.next(), f.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_count", "_sum"] {
                        out.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn grafana_dashboard_queries_parse_and_use_only_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/metrics-exporter");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");

    // Grafana variables become what Grafana would substitute, then promtool parses each
    // query as a recording rule.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let q = e.replace("$__rate_interval", "5m").replace("$node", ".*");
        rules.push_str(&format!(
            "      - record: sluice:dashboard:{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("promtool (Debian package `prometheus`, installed by make deps)");
    assert!(
        out.status.success(),
        "promtool rejected a dashboard query:\n{}\n{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every sluice_* name used must be a series the daemon exports. Families only appear once
    // they have a sample, so exercise every path first: a pod set up and torn down, an
    // unimplemented call, and a CNI plugin failure (a failing plugin's network made default).
    let layout = Layout::new("[metrics]\nenable = true\naddress = \"127.0.0.1:0\"\n");
    layout.install_cni_plugin(
        "obs-failer",
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"injected\"}'; exit 1; fi\n",
    );
    let _net = BridgeNet::install(&layout, &[]);
    let failing_conf = layout.cni_dir.join("00-failing.conflist");
    let d = Daemon::start_with(layout, &[]).await;
    let mut c = d.runtime().await;
    let id = runp(&mut c, "dash").await;
    c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    std::fs::write(
        &failing_conf,
        r#"{"cniVersion":"1.0.0","name":"failing","plugins":[{"type":"obs-failer"}]}"#,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod("dash-fail")),
                runtime_handler: String::new(),
            })
            .await;
        match r {
            Err(e) if e.message().contains("obs-failer") => break,
            Ok(r) => {
                // The watcher had not switched networks yet: clean up and retry.
                let id = r.into_inner().pod_sandbox_id;
                c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await
                    .unwrap();
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the failing network never became default"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An image pull (success and failure) for the image families.
    let reg = sluice_e2e::registry::Registry::start();
    let img = sluice_e2e::registry::build_image(
        &[sluice_e2e::registry::busybox_layer("dash")],
        &sluice_e2e::registry::ImageOptions::default(),
    );
    reg.push_image("library/busybox", "1.0", &img);
    let mut ic = d.images().await;
    // The daemon was started without insecure_registries: the plain-HTTP registry fails,
    // which is all this needs (a failed pull still counts and is timed).
    let _ = ic
        .pull_image(cri_api::runtime::v1::PullImageRequest {
            image: Some(cri_api::runtime::v1::ImageSpec {
                image: format!("{}/library/busybox:1.0", reg.host()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let exported = exported_series(&http_get(&metrics_addr(&d).await, "/metrics"));
    let mut text = exprs.join("\n");
    for v in dash["templating"]["list"].as_array().unwrap() {
        text.push('\n');
        text.push_str(v["query"].as_str().unwrap_or_default());
    }
    let mut used = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("sluice_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        used.insert(text[start..end].to_string());
        i = end;
    }
    assert!(used.len() >= 8, "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|u| !exported.contains(*u)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses metrics sluice does not export: {unknown:?}\nexported: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pulls_are_counted_by_result_with_bytes_and_duration() {
    use sluice_e2e::registry::{Compression, ImageOptions, Registry, build_image, busybox_layer};
    let reg = Registry::start();
    let img = build_image(
        &[busybox_layer("metrics")],
        &ImageOptions {
            compression: Compression::Gzip,
            ..ImageOptions::default()
        },
    );
    reg.push_image("library/busybox", "1.0", &img);
    let d = Daemon::start_with(
        Layout::new(&format!(
            "[metrics]\nenable = true\naddress = \"127.0.0.1:0\"\n\n[images]\ninsecure_registries = [\"{}\"]\n",
            reg.host()
        )),
        &[],
    )
    .await;
    let addr = metrics_addr(&d).await;
    let mut c = d.images().await;
    let image = |name: String| cri_api::runtime::v1::PullImageRequest {
        image: Some(cri_api::runtime::v1::ImageSpec {
            image: name,
            ..Default::default()
        }),
        ..Default::default()
    };
    c.pull_image(image(format!("{}/library/busybox:1.0", reg.host())))
        .await
        .unwrap();
    let e = c
        .pull_image(image(format!("{}/library/busybox:nope", reg.host())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    let body = http_get(&addr, "/metrics");
    assert!(
        body.contains(r#"sluice_image_pulls_total{result="success"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"sluice_image_pulls_total{result="NotFound"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("sluice_image_pull_duration_seconds_count 2"),
        "{body}"
    );
    let bytes: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("sluice_image_pulled_bytes_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(bytes > 100_000, "the busybox layer was downloaded: {bytes}");
    assert!(
        body.contains(r#"sluice_cri_operations_total{operation="PullImage",code="NotFound"} 1"#)
    );
}

#[tokio::test]
async fn metrics_over_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=sluice-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl could not make a test certificate");
    let d = Daemon::start_with(
        Layout::new(&format!(
            "[metrics]\nenable = true\naddress = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
        )),
        &[],
    )
    .await;
    let addr = metrics_addr(&d).await;
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(&cert)
        .arg(format!("https://{addr}/metrics"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sluice_process_threads"));
    // Plain HTTP to the HTTPS port gets no metrics.
    let plain = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .unwrap();
    assert!(!plain.status.success());
}

#[test]
fn metrics_tls_needs_both_files() {
    let layout = Layout::new("[metrics]\nenable = true\ntls_cert = \"/etc/x.pem\"\n");
    let (status, out) = sluice_e2e::run_to_exit(layout.command(&[]), Duration::from_secs(15));
    assert_eq!(status.code(), Some(64), "{out}");
    assert!(
        out.contains("metrics.tls_cert") && out.contains("tls_key"),
        "{out}"
    );
}
