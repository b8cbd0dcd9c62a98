//! Pod sandboxes end to end: the real daemon, real namespaces, Debian's CNI plugins (bridge,
//! host-local, loopback), real nftables host ports, driven through the CRI client. Root only.
//! Every test uses its own bridge, subnet, lease dir, netns dir, nft table and cgroup parent.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cri_api::runtime::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::runtime::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxState,
    PodSandboxStateValue, PodSandboxStatusRequest, PodSandboxStatusResponse, PortMapping, Protocol,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use nix::sys::signal::Signal;
use sluice_e2e::net::{BridgeNet, NsServer, free_port, ns_ipv4, probe};
use sluice_e2e::{Daemon, Layout};
use tonic::Code;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

fn pod(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        ..Default::default()
    }
}

async fn runp(c: &mut Client, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    c.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(c: &mut Client, id: &str) -> PodSandboxStatusResponse {
    c.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn stopp(c: &mut Client, id: &str) {
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
}

async fn rmp(c: &mut Client, id: &str) {
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
}

fn info(s: &PodSandboxStatusResponse) -> serde_json::Value {
    serde_json::from_str(&s.info["info"]).unwrap()
}

fn netns_of(s: &PodSandboxStatusResponse) -> PathBuf {
    PathBuf::from(
        info(s)["netnsPath"]
            .as_str()
            .expect("netnsPath in verbose info"),
    )
}

fn ip_of(s: &PodSandboxStatusResponse) -> IpAddr {
    s.status
        .as_ref()
        .unwrap()
        .network
        .as_ref()
        .unwrap()
        .ip
        .parse()
        .unwrap()
}

fn state_of(s: &PodSandboxStatusResponse) -> i32 {
    s.status.as_ref().unwrap().state
}

fn mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    text.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&p))
}

fn nft_table(table: &str) -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "ip", table])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cgroup_dir(layout: &Layout, id: &str) -> PathBuf {
    // Present on cgroup v1 (memory controller) and v2 hosts alike.
    let root = [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .into_iter()
    .find(|r| Path::new(r).join("cgroup.procs").exists())
    .unwrap();
    Path::new(root)
        .join(layout.cgroup_parent.trim_start_matches('/'))
        .join(format!("sluice-{id}"))
}

async fn daemon_with_net(extra: &str) -> (Daemon, BridgeNet) {
    let layout = Layout::new(extra);
    let net = BridgeNet::install(&layout, &[]);
    (Daemon::start_with(layout, &[]).await, net)
}

#[tokio::test]
async fn pods_get_addresses_reach_each_other_and_release_everything() {
    let (d, net) = daemon_with_net("").await;
    let mut c = d.runtime().await;

    let logs = d.layout.dir.path().join("pod-logs/a");
    let mut pa = pod("a");
    pa.log_directory = logs.display().to_string();
    let a = runp(&mut c, pa).await.unwrap();
    assert!(logs.is_dir(), "the pod log directory is created");
    let b = runp(&mut c, pod("b")).await.unwrap();
    let (sa, sb) = (status(&mut c, &a).await, status(&mut c, &b).await);
    assert_eq!(state_of(&sa), PodSandboxState::SandboxReady as i32);
    let (ip_a, ip_b) = (ip_of(&sa), ip_of(&sb));
    assert!(
        net.subnet.contains(&ip_a) && net.subnet.contains(&ip_b),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);
    let (ns_a, ns_b) = (netns_of(&sa), netns_of(&sb));
    assert!(mounted(&ns_a), "netns pinned at {}", ns_a.display());
    assert_eq!(
        ns_ipv4(&ns_a),
        vec![ip_a],
        "the reported IP is configured in the pod"
    );
    assert_eq!(net.leases().len(), 2);
    assert_eq!(net.ports().len(), 2, "one veth per pod on the bridge");
    let cg = cgroup_dir(&d.layout, &a);
    assert!(cg.is_dir(), "pod cgroup {}", cg.display());
    let v = info(&sa);
    assert_eq!(v["cni"]["network"], net.name.as_str());
    assert!(
        v["cni"]["result"]["ips"].is_array(),
        "verbose info carries the CNI result"
    );

    // A in-pod server answers a client in the other pod.
    let _srv = NsServer::start(&ns_b, 8080, "hello-from-b");
    assert_eq!(
        probe(Some(&ns_a), &ip_b.to_string(), 8080).as_deref(),
        Ok("hello-from-b")
    );

    // Lookups by unique prefix, as crictl users type them.
    let s = status(&mut c, &a[..12]).await;
    assert_eq!(s.status.unwrap().id, a);

    stopp(&mut c, &a).await;
    let sa = status(&mut c, &a).await;
    assert_eq!(state_of(&sa), PodSandboxState::SandboxNotready as i32);
    assert_eq!(net.leases().len(), 1, "a's lease released on stop");
    assert_eq!(net.ports().len(), 1, "a's veth removed on stop");
    assert!(!mounted(&ns_a), "a's netns released on stop");
    stopp(&mut c, &a).await;

    rmp(&mut c, &a).await;
    rmp(&mut c, &a).await;
    let err = c
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: a.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!ns_a.exists(), "pin file gone");
    assert!(!cg.exists(), "pod cgroup removed");
    assert!(
        !d.layout
            .root
            .join("pods")
            .join(format!("{a}.json"))
            .exists(),
        "record gone"
    );
    let cache = std::fs::read_dir(d.layout.root.join("cni/results"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        !cache.iter().any(|f| f.contains(&a)),
        "CNI cache entry of a gone: {cache:?}"
    );

    rmp(&mut c, &b).await;
    assert!(net.leases().is_empty());
    assert!(net.ports().is_empty());
}

#[tokio::test]
async fn host_port_answers_on_loopback_and_gateway_until_stop() {
    let (d, net) = daemon_with_net("").await;
    let mut c = d.runtime().await;
    let hp = free_port();
    let mut cfg = pod("web");
    cfg.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(hp),
        host_ip: String::new(),
    }];
    let id = runp(&mut c, cfg).await.unwrap();
    let s = status(&mut c, &id).await;
    let _srv = NsServer::start(&netns_of(&s), 8080, "hello-web");
    assert_eq!(probe(None, "127.0.0.1", hp).as_deref(), Ok("hello-web"));
    let gw = net.subnet.gateway().to_string();
    assert_eq!(probe(None, &gw, hp).as_deref(), Ok("hello-web"));
    assert!(
        nft_table(&d.layout.hostport_table).contains(&hp.to_string()),
        "mapping element present"
    );

    stopp(&mut c, &id).await;
    assert!(
        probe(None, "127.0.0.1", hp).is_err(),
        "no answer after stop"
    );
    assert!(
        !nft_table(&d.layout.hostport_table).contains(&hp.to_string()),
        "mapping element gone"
    );
    rmp(&mut c, &id).await;
}

#[tokio::test]
async fn host_network_pod_has_no_netns_and_no_cni() {
    let (d, net) = daemon_with_net("").await;
    let mut c = d.runtime().await;
    let mut cfg = pod("hostnet");
    cfg.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                pid: NamespaceMode::Container as i32,
                ipc: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = runp(&mut c, cfg).await.unwrap();
    let s = status(&mut c, &id).await;
    let st = s.status.as_ref().unwrap();
    assert_eq!(
        st.linux
            .as_ref()
            .unwrap()
            .namespaces
            .as_ref()
            .unwrap()
            .options
            .as_ref()
            .unwrap()
            .network,
        NamespaceMode::Node as i32
    );
    assert_eq!(st.network.as_ref().unwrap().ip, "", "CNI gave no address");
    assert!(info(&s)["netnsPath"].is_null());
    assert!(net.leases().is_empty(), "no CNI call");
    assert!(
        std::fs::read_dir(&d.layout.netns_dir)
            .map(|r| r.count())
            .unwrap_or(0)
            == 0
    );
    rmp(&mut c, &id).await;
}

#[tokio::test]
async fn bad_requests_get_precise_codes_and_leave_nothing() {
    let (d, net) = daemon_with_net("").await;
    let mut c = d.runtime().await;

    let mut no_meta = pod("x");
    no_meta.metadata = None;
    let e = runp(&mut c, no_meta).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("config.metadata"), "{}", e.message());

    let first = runp(&mut c, pod("dup")).await.unwrap();
    let e = runp(&mut c, pod("dup")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(
        e.message().contains(&first),
        "names the existing pod: {}",
        e.message()
    );

    let mut bad_sysctl = pod("sysctl");
    bad_sysctl.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([("kernel.panic".to_string(), "1".to_string())]),
        ..Default::default()
    });
    let e = runp(&mut c, bad_sysctl).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("kernel.panic"), "{}", e.message());

    let e = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod("h")),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("kata"));

    let e = c
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Only the one good pod holds anything.
    assert_eq!(net.leases().len(), 1);
    assert_eq!(std::fs::read_dir(&d.layout.netns_dir).unwrap().count(), 1);
    rmp(&mut c, &first).await;
    assert!(net.leases().is_empty());
}

#[tokio::test]
async fn failing_cni_plugin_fails_runp_and_rolls_back() {
    let layout = Layout::new("");
    layout.install_cni_plugin(
        "e2e-failer",
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"injected failure\"}'; exit 1; fi\necho '{}'\n",
    );
    let net = BridgeNet::install(&layout, &[r#"{"type": "e2e-failer"}"#]);
    let d = Daemon::start_with(layout, &[]).await;
    let mut c = d.runtime().await;
    let e = runp(&mut c, pod("f")).await.unwrap_err();
    assert!(
        e.message().contains("e2e-failer") && e.message().contains("injected failure"),
        "{}",
        e.message()
    );
    assert!(
        net.leases().is_empty(),
        "the bridge plugin's lease was rolled back"
    );
    assert!(net.ports().is_empty());
    assert_eq!(
        std::fs::read_dir(&d.layout.netns_dir).unwrap().count(),
        0,
        "no netns left"
    );
    let list = c
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap();
    assert!(list.into_inner().items.is_empty());
}

#[tokio::test]
async fn runp_fails_with_failed_precondition_while_network_is_not_ready() {
    let d = Daemon::start_with(
        Layout::new("[network]\nnetwork_ready_timeout = \"500ms\"\n"),
        &[],
    )
    .await;
    let mut c = d.runtime().await;
    let e = runp(&mut c, pod("early")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not ready"), "{}", e.message());
    assert_eq!(
        std::fs::read_dir(&d.layout.netns_dir)
            .map(|r| r.count())
            .unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn list_filters_by_state_labels_and_id_prefix() {
    let (d, _net) = daemon_with_net("").await;
    let mut c = d.runtime().await;
    let a = runp(&mut c, pod("la")).await.unwrap();
    let b = runp(&mut c, pod("lb")).await.unwrap();
    stopp(&mut c, &b).await;
    let list = |f: Option<PodSandboxFilter>| {
        let mut c = c.clone();
        async move {
            let mut ids: Vec<String> = c
                .list_pod_sandbox(ListPodSandboxRequest { filter: f })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(None).await, both);
    assert_eq!(
        list(Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady as i32
            }),
            ..Default::default()
        }))
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(Some(PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "lb".into())]),
            ..Default::default()
        }))
        .await,
        vec![b.clone()]
    );
    assert_eq!(
        list(Some(PodSandboxFilter {
            id: a[..8].to_string(),
            ..Default::default()
        }))
        .await,
        vec![a.clone()]
    );
    rmp(&mut c, &a).await;
    rmp(&mut c, &b).await;
}

#[tokio::test]
async fn pods_survive_kill_9_and_host_ports_come_back_after_a_flush() {
    let (mut d, net) = daemon_with_net("").await;
    let mut c = d.runtime().await;
    let hp = free_port();
    let mut cfg = pod("persist");
    cfg.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 9090,
        host_port: i32::from(hp),
        host_ip: String::new(),
    }];
    let id = runp(&mut c, cfg).await.unwrap();
    let other = runp(&mut c, pod("other")).await.unwrap();
    let before = status(&mut c, &id).await;
    let ns = netns_of(&before);
    let _srv = NsServer::start(&ns, 9090, "still-here");
    assert_eq!(probe(None, "127.0.0.1", hp).as_deref(), Ok("still-here"));

    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10)).await.expect("killed");
    d.restart(&[]).await;
    let mut c = d.runtime().await;
    let after = status(&mut c, &id).await;
    assert_eq!(state_of(&after), PodSandboxState::SandboxReady as i32);
    assert_eq!(ip_of(&after), ip_of(&before), "same IP after restart");
    assert_eq!(
        state_of(&status(&mut c, &other).await),
        PodSandboxState::SandboxReady as i32
    );
    assert_eq!(probe(None, "127.0.0.1", hp).as_deref(), Ok("still-here"));
    let ip_other = ip_of(&status(&mut c, &other).await);
    let _srv2 = NsServer::start(&netns_of(&status(&mut c, &other).await), 7070, "other-ok");
    assert_eq!(
        probe(Some(&ns), &ip_other.to_string(), 7070).as_deref(),
        Ok("other-ok")
    );

    // Someone flushes our table; a restart rebuilds it from the live pods.
    for family in ["ip", "ip6"] {
        let ok = std::process::Command::new("nft")
            .args(["flush", "table", family, &d.layout.hostport_table])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    assert!(probe(None, "127.0.0.1", hp).is_err(), "flushed: no answer");
    d.restart(&[]).await;
    assert_eq!(probe(None, "127.0.0.1", hp).as_deref(), Ok("still-here"));

    let mut c = d.runtime().await;
    for p in [&id, &other] {
        stopp(&mut c, p).await;
        rmp(&mut c, p).await;
    }
    assert!(net.leases().is_empty());
    assert!(net.ports().is_empty());
    assert_eq!(std::fs::read_dir(&d.layout.netns_dir).unwrap().count(), 0);
    assert!(probe(None, "127.0.0.1", hp).is_err());
}

#[tokio::test]
async fn a_pod_whose_netns_vanished_is_not_ready_after_restart() {
    let (mut d, net) = daemon_with_net("").await;
    let mut c = d.runtime().await;
    let id = runp(&mut c, pod("ghost")).await.unwrap();
    let ns = netns_of(&status(&mut c, &id).await);
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10)).await.expect("killed");
    // An operator (or a reboot) unmounts the pin.
    assert!(
        std::process::Command::new("umount")
            .arg(&ns)
            .status()
            .unwrap()
            .success()
    );
    d.restart(&[]).await;
    let mut c = d.runtime().await;
    let s = status(&mut c, &id).await;
    assert_eq!(state_of(&s), PodSandboxState::SandboxNotready as i32);
    assert!(
        info(&s)["reason"].as_str().unwrap().contains("is gone"),
        "{:?}",
        info(&s)["reason"]
    );
    stopp(&mut c, &id).await;
    rmp(&mut c, &id).await;
    assert!(
        net.leases().is_empty(),
        "the lease is released even though the netns was gone"
    );
    assert!(!ns.exists());
}

#[tokio::test]
async fn thirty_concurrent_pods_get_distinct_ips_and_clean_up() {
    let (d, net) = daemon_with_net("").await;
    let c = d.runtime().await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            runp(&mut c, pod(&format!("c{i}"))).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    let mut c = c.clone();
    let mut ips = std::collections::BTreeSet::new();
    for id in &ids {
        assert!(ips.insert(ip_of(&status(&mut c, id).await)));
    }
    assert_eq!(ips.len(), 30);
    assert_eq!(net.leases().len(), 30);

    let mut tasks = Vec::new();
    for id in ids {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            stopp(&mut c, &id).await;
            rmp(&mut c, &id).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(net.leases().is_empty());
    assert!(net.ports().is_empty());
    assert_eq!(std::fs::read_dir(&d.layout.netns_dir).unwrap().count(), 0);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let under = format!("{}/", d.layout.netns_dir.display());
    assert!(!mounts.contains(&under), "no pin mounts left");
    assert!(
        std::fs::read_dir(d.layout.root.join("pods"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test]
async fn list_and_status_answer_while_a_cni_add_is_stuck() {
    // A plugin that blocks in ADD until the test opens a gate: while it blocks, List and
    // Status of other pods must still answer (they never wait behind a pod's operation).
    let layout = Layout::new("");
    let gate = layout.dir.path().join("gate");
    let entered = layout.dir.path().join("entered");
    let body = r#"#!/bin/sh
# Test plugin: passes the previous result through; for pod "slow" it first blocks in ADD
# until the test creates the gate file (at most 30 s).
input=$(cat)
if [ "$CNI_COMMAND" = ADD ] && echo "$CNI_ARGS" | grep -q 'K8S_POD_NAME=slow;'; then
  touch ENTERED
  i=0; while [ ! -e GATE ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
fi
if [ "$CNI_COMMAND" = ADD ]; then
  printf '%s' "$input" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["prevResult"]))'
fi
"#
    .replace("ENTERED", &entered.display().to_string())
    .replace("GATE", &gate.display().to_string());
    layout.install_cni_plugin("e2e-gate", &body);
    let net = BridgeNet::install(&layout, &[r#"{"type": "e2e-gate"}"#]);
    let d = Daemon::start_with(layout, &[]).await;
    let mut c = d.runtime().await;
    let fast = runp(&mut c, pod("fast")).await.unwrap();

    let mut c2 = c.clone();
    let slow = tokio::spawn(async move { runp(&mut c2, pod("slow")).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !entered.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gate plugin never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slow ADD is in progress now; these must answer without it finishing.
    let list = tokio::time::timeout(
        Duration::from_secs(10),
        c.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
    )
    .await
    .expect("List answered while a CNI ADD was blocked")
    .unwrap()
    .into_inner();
    assert_eq!(
        list.items.len(),
        1,
        "the pod being created is not listed yet"
    );
    assert!(!slow.is_finished(), "the slow ADD is still blocked");
    let st = tokio::time::timeout(Duration::from_secs(10), status(&mut c, &fast))
        .await
        .expect("Status answered while a CNI ADD was blocked");
    assert_eq!(state_of(&st), PodSandboxState::SandboxReady as i32);

    std::fs::write(&gate, "").unwrap();
    let slow_id = slow.await.unwrap().unwrap();
    for id in [&fast, &slow_id] {
        rmp(&mut c, id).await;
    }
    assert!(net.leases().is_empty());
}
