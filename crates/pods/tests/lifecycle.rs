//! The pod state machine against in-memory subsystems (no privileges needed). The real
//! kernel, CNI plugins and nftables are exercised by the end-to-end tests in `tests/`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hostport::fake::FakeHostPortManager;
use nsmgr::fake::FakeNamespaceManager;
use nsmgr::{NamespaceManager, PodId};
use pods::fake::{FakeCgroups, FakeNetworking};
use pods::{
    Deps, ErrorKind, NsMode, PodError, PodFilter, PodManager, PodMetadata, PodState, PodsConfig,
    PortMapping, Protocol, SandboxConfig,
};

struct World {
    dir: tempfile::TempDir,
    ns: Arc<FakeNamespaceManager>,
    net: Arc<FakeNetworking>,
    ports: Arc<FakeHostPortManager>,
    cg: Arc<FakeCgroups>,
    rt: Arc<oci::fake::FakeRuntime>,
    images: Arc<pods::fake::FakeImages>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        Self {
            ns: Arc::new(FakeNamespaceManager::new()),
            net: Arc::new(FakeNetworking::default()),
            ports: Arc::new(FakeHostPortManager::default()),
            cg: Arc::new(FakeCgroups::default()),
            rt: Arc::new(oci::fake::FakeRuntime::new()),
            images: Arc::new(pods::fake::FakeImages::new(layer)),
            dir,
        }
    }

    fn config(&self) -> PodsConfig {
        let mut c = PodsConfig::new(&self.dir.path().join("root"), &self.dir.path().join("run"));
        c.network_ready_timeout = Duration::from_millis(300);
        c.host_resolv_conf = self.dir.path().join("no-resolv.conf");
        c
    }

    fn manager(&self) -> PodManager {
        self.manager_with(self.config(), |p| p.to_string_lossy().contains("sluice-"))
    }

    fn manager_with(&self, config: PodsConfig, namespace_alive: fn(&Path) -> bool) -> PodManager {
        PodManager::new(
            config,
            Deps {
                namespaces: self.ns.clone(),
                network: self.net.clone(),
                hostports: self.ports.clone(),
                cgroups: self.cg.clone(),
                namespace_alive,
                metrics: pods::PodMetrics::default(),
                runtime: self.rt.clone(),
                images: self.images.clone(),
                host: Arc::new(
                    oci::spec::Host::detect(oci::spec::Host::default_capability_names())
                        .expect("host"),
                ),
                hierarchies: Arc::new(oci::stats::Hierarchies::discover().expect("cgroups")),
            },
        )
        .unwrap()
    }
}

fn sandbox(name: &str) -> SandboxConfig {
    SandboxConfig {
        metadata: PodMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        },
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        // A shared PID namespace needs the `sluice pause` binary (end-to-end tests cover it).
        pid: NsMode::Container,
        ..Default::default()
    }
}

fn pinned(w: &World, id: &str) -> bool {
    w.ns.is_pinned(&PodId::new(id).unwrap())
}

#[tokio::test]
async fn run_sets_everything_up_and_persists_ready() {
    let w = World::new();
    let m = w.manager();
    let mut cfg = sandbox("web");
    cfg.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp,
        container_port: 80,
        host_port: 8080,
        host_ip: None,
    }];
    let pod = m.run(cfg).await.unwrap();
    assert_eq!(pod.state, PodState::Ready);
    assert_eq!(pod.id.len(), 64);
    assert_eq!(pod.ips().len(), 1);
    assert!(pinned(&w, &pod.id));
    assert_eq!(w.net.attached(), vec![pod.id.clone()]);
    assert_eq!(w.ports.pods().len(), 1);
    assert_eq!(w.cg.paths(), vec![format!("/sluice/sluice-{}", pod.id)]);
    let files = pod.files_dir.clone().unwrap();
    assert_eq!(
        std::fs::read_to_string(files.join("hostname")).unwrap(),
        "web\n"
    );
    let stored = w
        .dir
        .path()
        .join("root/pods")
        .join(format!("{}.json", pod.id));
    assert!(
        stored.exists(),
        "the record is persisted before run returns"
    );
    assert_eq!(
        m.status(&pod.id[..8]).unwrap().id,
        pod.id,
        "unique prefix lookup"
    );
}

#[tokio::test]
async fn duplicate_name_is_already_exists_naming_the_pod() {
    let w = World::new();
    let m = w.manager();
    let first = m.run(sandbox("a")).await.unwrap();
    let err = m.run(sandbox("a")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.to_string().contains(&first.id), "{err}");
    // A new attempt is a different name.
    let mut again = sandbox("a");
    again.metadata.attempt = 1;
    m.run(again).await.unwrap();
}

#[tokio::test]
async fn unknown_handler_is_not_found_and_creates_nothing() {
    let w = World::new();
    let m = w.manager();
    let mut cfg = sandbox("a");
    cfg.runtime_handler = "kata".into();
    let err = m.run(cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("kata"));
    assert_eq!(w.ns.create_calls(), 0);
}

#[tokio::test]
async fn network_not_ready_is_failed_precondition_with_the_reason() {
    let w = World::new();
    let m = w.manager();
    w.net.set_not_ready(Some("no CNI config in /etc/cni/net.d"));
    let err = m.run(sandbox("a")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(err.to_string().contains("no CNI config"), "{err}");
    assert_eq!(w.ns.create_calls(), 0);
    // The name is free again.
    w.net.set_not_ready(None);
    m.run(sandbox("a")).await.unwrap();
}

#[tokio::test]
async fn failing_cni_unwinds_every_step_and_frees_the_name() {
    let w = World::new();
    let m = w.manager();
    w.net.fail_attach(Some("plugin bridge failed: boom"));
    let err = m.run(sandbox("a")).await.unwrap_err();
    let text = pods::error_chain(&err);
    assert!(text.contains("CNI ADD") && text.contains("boom"), "{text}");
    assert!(
        w.ns.list_pinned().unwrap().is_empty(),
        "namespaces released"
    );
    assert!(w.cg.paths().is_empty(), "cgroup removed");
    assert!(m.list(&PodFilter::default()).is_empty());
    let records = std::fs::read_dir(w.dir.path().join("root/pods"))
        .unwrap()
        .count();
    assert_eq!(records, 0, "no record left");
    w.net.fail_attach(None);
    m.run(sandbox("a")).await.unwrap();
}

#[tokio::test]
async fn host_port_conflict_is_already_exists_and_unwinds() {
    let w = World::new();
    let m = w.manager();
    let ports = vec![PortMapping {
        protocol: Protocol::Tcp,
        container_port: 80,
        host_port: 8080,
        host_ip: None,
    }];
    let mut a = sandbox("a");
    a.port_mappings = ports.clone();
    let first = m.run(a).await.unwrap();
    let mut b = sandbox("b");
    b.port_mappings = ports;
    let err = m.run(b).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(
        err.to_string().contains(&first.id),
        "names the owner: {err}"
    );
    assert_eq!(
        w.net.attached(),
        vec![first.id.clone()],
        "b's network detached"
    );
}

#[tokio::test]
async fn bad_sysctl_is_invalid_argument() {
    let w = World::new();
    let m = w.manager();
    let mut cfg = sandbox("a");
    cfg.sysctls.insert("kernel.panic".into(), "1".into());
    let err = m.run(cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let text = pods::error_chain(&err);
    assert!(text.contains("kernel.panic"), "{text}");
    assert!(w.net.attached().is_empty());
}

#[tokio::test]
async fn stop_and_remove_are_idempotent_and_release_everything() {
    let w = World::new();
    let m = w.manager();
    let pod = m.run(sandbox("a")).await.unwrap();
    m.stop(&pod.id).await.unwrap();
    let st = m.status(&pod.id).unwrap();
    assert_eq!(st.state, PodState::NotReady);
    assert!(st.fully_released());
    assert!(!pinned(&w, &pod.id));
    assert!(w.net.attached().is_empty());
    m.stop(&pod.id).await.unwrap();
    m.remove(&pod.id).await.unwrap();
    m.remove(&pod.id).await.unwrap();
    assert!(matches!(m.status(&pod.id), Err(PodError::NotFound(_))));
    assert!(w.cg.paths().is_empty());
    assert!(!pod.files_dir.unwrap().exists());
    // Unknown ids are fine for stop and remove, not for status.
    m.stop("feedface").await.unwrap();
    m.remove("feedface").await.unwrap();
    // The name can be used again.
    m.run(sandbox("a")).await.unwrap();
}

#[tokio::test]
async fn remove_without_stop_releases_too() {
    let w = World::new();
    let m = w.manager();
    let pod = m.run(sandbox("a")).await.unwrap();
    m.remove(&pod.id).await.unwrap();
    assert!(!pinned(&w, &pod.id));
    assert!(w.net.attached().is_empty());
}

#[tokio::test]
async fn ambiguous_prefix_is_invalid_argument() {
    let w = World::new();
    let m = w.manager();
    let mut ids = Vec::new();
    // With 17 pods, two share a first hex digit (pigeonhole).
    for i in 0..17 {
        ids.push(m.run(sandbox(&format!("p{i}"))).await.unwrap().id);
    }
    let shared = ids
        .iter()
        .find(|a| ids.iter().filter(|b| b[..1] == a[..1]).count() > 1)
        .unwrap();
    let err = m.status(&shared[..1]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("ambiguous"));
}

#[tokio::test]
async fn list_filters_by_id_state_and_labels() {
    let w = World::new();
    let m = w.manager();
    let a = m.run(sandbox("a")).await.unwrap();
    let b = m.run(sandbox("b")).await.unwrap();
    m.stop(&b.id).await.unwrap();
    let ids = |f: PodFilter| m.list(&f).into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(ids(PodFilter::default()).len(), 2);
    assert_eq!(
        ids(PodFilter {
            state: Some(PodState::Ready),
            ..Default::default()
        }),
        vec![a.id.clone()]
    );
    assert_eq!(
        ids(PodFilter {
            labels: BTreeMap::from([("app".into(), "b".into())]),
            ..Default::default()
        }),
        vec![b.id.clone()]
    );
    assert_eq!(
        ids(PodFilter {
            id: Some(a.id[..10].to_string()),
            ..Default::default()
        }),
        vec![a.id.clone()]
    );
}

#[tokio::test]
async fn host_network_pod_gets_no_netns_and_no_cni() {
    let w = World::new();
    let m = w.manager();
    let mut cfg = sandbox("h");
    cfg.network = NsMode::Node;
    let pod = m.run(cfg).await.unwrap();
    assert!(pod.netns.is_none() && pod.uts_ns.is_none());
    assert!(pod.ipc_ns.is_some(), "ipc stays private unless asked");
    assert!(w.net.attached().is_empty());
    assert!(pod.ips().is_empty());
}

#[tokio::test]
async fn recovery_reloads_pods_and_releases_interrupted_creations() {
    let w = World::new();
    let id;
    {
        let m = w.manager();
        id = m.run(sandbox("keep")).await.unwrap().id;
    }
    // A crash during RunPodSandbox leaves a Creating record and possibly resources.
    let store = pods::Store::open(w.dir.path().join("root/pods")).unwrap();
    let mut creating = {
        let m = w.manager();
        m.recover().await.unwrap();
        m.status(&id).unwrap()
    };
    creating.id = "ab".repeat(32);
    creating.state = PodState::Creating;
    creating.config.metadata.name = "half".into();
    store.save(&creating).unwrap();
    w.ns.insert_orphan(&PodId::new(&creating.id).unwrap());

    let m = w.manager();
    let report = m.recover().await.unwrap();
    assert_eq!(report.loaded, 2);
    assert_eq!(report.removed_incomplete, 1);
    assert_eq!(m.status(&id).unwrap().state, PodState::Ready);
    assert!(m.status(&creating.id).is_err());
    assert!(
        !pinned(&w, &creating.id),
        "interrupted pod's namespaces released"
    );
    assert_eq!(w.net.gc_calls().last().unwrap(), &vec![id.clone()]);
    // The reloaded pod's name stays reserved.
    assert_eq!(
        m.run(sandbox("keep")).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
}

#[tokio::test]
async fn recovery_marks_pods_of_a_previous_boot_not_ready() {
    let w = World::new();
    let boot = w.dir.path().join("boot_id");
    std::fs::write(&boot, "boot-1\n").unwrap();
    let manager = |w: &World| {
        let mut c = w.config();
        c.boot_id_path = boot.clone();
        w.manager_with(c, |_| true)
    };
    let id = manager(&w).run(sandbox("a")).await.unwrap().id;
    std::fs::write(&boot, "boot-2\n").unwrap();
    let m = manager(&w);
    let report = m.recover().await.unwrap();
    assert_eq!(report.marked_not_ready, 1);
    let st = m.status(&id).unwrap();
    assert_eq!(st.state, PodState::NotReady);
    assert!(st.reason.contains("rebooted"), "{}", st.reason);
    m.stop(&id).await.unwrap();
    m.remove(&id).await.unwrap();
}

#[tokio::test]
async fn cgroup_parent_as_systemd_slice_is_rejected() {
    let w = World::new();
    let m = w.manager();
    let mut cfg = sandbox("a");
    cfg.cgroup_parent = "/kubepods.slice".into();
    let err = m.run(cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("config.linux.cgroup_parent"));
}

#[tokio::test]
async fn shared_pid_namespace_without_a_pause_command_is_failed_precondition() {
    let w = World::new();
    let m = w.manager();
    let mut cfg = sandbox("p");
    cfg.pid = NsMode::Pod;
    let err = m.run(cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(
        w.net.attached().is_empty() && w.cg.paths().is_empty(),
        "unwound"
    );
}

impl Drop for World {
    /// Detaches rootfs overlays a failed container test left under the temp dir.
    fn drop(&mut self) {
        let base = format!("{}/", self.dir.path().display());
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .filter(|p| p.starts_with(&base))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn container(name: &str) -> pods::ContainerConfig {
    pods::ContainerConfig {
        name: name.into(),
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), "sleep 100".into()],
        labels: BTreeMap::from([("c".to_string(), name.to_string())]),
        pid: NsMode::Container,
        ..Default::default()
    }
}

fn mounted(path: &std::path::Path) -> bool {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

#[tokio::test]
async fn container_lifecycle_over_the_runtime() {
    let w = World::new();
    let m = w.manager();
    let pod = m.run(sandbox("web")).await.unwrap();
    let c = m.create_container(&pod.id, container("app")).await.unwrap();
    assert_eq!(c.state, pods::ContainerState::Created);
    assert!(mounted(&c.rootfs), "the rootfs overlay is mounted");
    let spec = w.rt.spec(&c.id).unwrap();
    let ns = serde_json::to_string(&spec.linux.namespaces).unwrap();
    assert!(
        ns.contains(pod.netns.as_ref().unwrap().to_str().unwrap()),
        "joins the pod netns: {ns}"
    );

    // Names are reserved per pod.
    let err = m
        .create_container(&pod.id, container("app"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.to_string().contains(&c.id));

    m.start_container(&c.id[..10]).await.unwrap();
    assert_eq!(
        m.container_status(&c.id).await.unwrap().state,
        pods::ContainerState::Running
    );
    let err = m.start_container(&c.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);

    w.rt.exit(&c.id, 3);
    let st = m.container_status(&c.id).await.unwrap();
    assert_eq!(
        (st.state, st.exit_code, st.reason.as_str()),
        (pods::ContainerState::Exited, 3, "Error")
    );
    m.stop_container(&c.id, Duration::from_secs(1))
        .await
        .unwrap();

    let listed = m
        .list_containers(&pods::ContainerFilter {
            pod_id: Some(pod.id[..8].to_string()),
            ..Default::default()
        })
        .await;
    assert_eq!(listed.len(), 1);

    m.remove_container(&c.id).await.unwrap();
    m.remove_container(&c.id).await.unwrap();
    assert!(!mounted(&c.rootfs) && !c.upper_dir.exists() && !c.bundle.exists());
    assert!(w.rt.ids().is_empty(), "deleted in the runtime");
    assert_eq!(
        m.container_status(&c.id).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // The name is free again.
    m.create_container(&pod.id, container("app")).await.unwrap();
}

#[tokio::test]
async fn create_container_errors_are_precise_and_unwind() {
    let w = World::new();
    let m = w.manager();
    let pod = m.run(sandbox("web")).await.unwrap();
    w.images.remove("nope");
    let mut cfg = container("a");
    cfg.image = "nope".into();
    let err = m.create_container(&pod.id, cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("nope"));

    w.rt.fail_next("create", "runc exploded");
    let err = m
        .create_container(&pod.id, container("b"))
        .await
        .unwrap_err();
    assert!(pods::error_chain(&err).contains("runc exploded"));
    let overlay = w.dir.path().join("root/overlay");
    assert_eq!(
        std::fs::read_dir(&overlay).map(|d| d.count()).unwrap_or(0),
        0,
        "rootfs unwound"
    );
    // The failed name is free.
    m.create_container(&pod.id, container("b")).await.unwrap();

    m.stop(&pod.id).await.unwrap();
    let err = m
        .create_container(&pod.id, container("c"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "pod not ready");
}

#[tokio::test]
async fn pod_stop_kills_and_pod_remove_removes_its_containers_and_restart_reloads_them() {
    let w = World::new();
    let (pod, keep) = {
        let m = w.manager();
        let pod = m.run(sandbox("web")).await.unwrap();
        let a = m.create_container(&pod.id, container("a")).await.unwrap();
        m.start_container(&a.id).await.unwrap();
        (pod, a)
    };
    // A new manager (daemon restart) reloads and reconciles the container.
    let m = w.manager();
    m.recover().await.unwrap();
    assert_eq!(
        m.container_status(&keep.id).await.unwrap().state,
        pods::ContainerState::Running
    );
    assert_eq!(
        m.create_container(&pod.id, container("a"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists,
        "names survive the restart"
    );

    m.stop(&pod.id).await.unwrap();
    assert!(
        w.rt.calls()
            .iter()
            .any(|c| c == &format!("stop {}", keep.id)),
        "{:?}",
        w.rt.calls()
    );
    m.remove(&pod.id).await.unwrap();
    assert!(m.list_containers(&Default::default()).await.is_empty());
    assert!(!mounted(&keep.rootfs));
}

/// Records what the pod manager tells network policy; can be told to fail.
#[derive(Debug, Default)]
struct RecordingPolicy {
    log: std::sync::Mutex<Vec<String>>,
    fail: std::sync::atomic::AtomicBool,
}

impl pods::PolicyHook for RecordingPolicy {
    fn pod_up<'a>(
        &'a self,
        id: &'a str,
        pod: netpolicy::Pod,
    ) -> pods::policy::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.log.lock().unwrap().push(format!(
                "up {id} {}/{} {:?} ips={}",
                pod.namespace,
                pod.name,
                pod.labels,
                pod.ips.len()
            ));
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                Err("nft: boom".to_string())
            } else {
                Ok(())
            }
        })
    }

    fn pod_down<'a>(&'a self, id: &'a str) -> pods::policy::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.log.lock().unwrap().push(format!("down {id}"));
            Ok(())
        })
    }
}

#[tokio::test]
async fn policy_is_in_force_before_ready_and_withdrawn_first() {
    let w = World::new();
    let m = w.manager();
    let hook = Arc::new(RecordingPolicy::default());
    m.set_policy(hook.clone());
    let pod = m.run(sandbox("a")).await.unwrap();
    {
        let log = hook.log.lock().unwrap();
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(
            log[0].starts_with(&format!("up {} default/a", pod.id))
                && log[0].contains("\"app\": \"a\"")
                && log[0].ends_with("ips=1"),
            "{log:?}"
        );
    }
    assert_eq!(m.policy_pods().len(), 1);
    m.stop(&pod.id).await.unwrap();
    assert_eq!(
        hook.log.lock().unwrap().last().cloned(),
        Some(format!("down {}", pod.id))
    );
    assert!(m.policy_pods().is_empty(), "a stopped pod is not enforced");

    // A policy that cannot be applied fails RunPodSandbox and unwinds the pod.
    hook.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = m.run(sandbox("b")).await.unwrap_err();
    let text = pods::error_chain(&err);
    assert!(
        text.contains("applying network policy") && text.contains("boom"),
        "{text}"
    );
    assert_eq!(
        m.list(&PodFilter::default()).len(),
        1,
        "only the stopped pod a is left"
    );
    assert!(
        hook.log
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .starts_with("down ")
    );

    // Host-network pods are not subject to policy.
    hook.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let before = hook.log.lock().unwrap().len();
    let mut host = sandbox("h");
    host.network = NsMode::Node;
    m.run(host).await.unwrap();
    assert_eq!(hook.log.lock().unwrap().len(), before);
}
