//! Kernel tests with Debian's real CNI plugins (bridge, host-local, loopback in /usr/lib/cni).
//! Root required. Each test has its own config dir, bridge, /24, IPAM dir and netns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cnimgr::{CniManager, CniResult};
use common::{Netns, TestNet, link_exists, pod, require_root};
use serde_json::Value;

fn pod_ip(r: &CniResult) -> (IpAddr, u8, Option<IpAddr>) {
    let ip = r.pod_ips().next().expect("result has a pod ip");
    (ip.address.addr, ip.address.prefix_len, ip.gateway)
}

fn host_veth(r: &CniResult, bridge: &str) -> String {
    r.interfaces
        .iter()
        .find(|i| i.sandbox.is_none() && i.name != bridge)
        .expect("result names the host veth")
        .name
        .clone()
}

#[tokio::test]
async fn add_gives_eth0_with_ip_and_default_route_and_del_frees_lease() {
    require_root();
    let t = TestNet::new();
    t.write_conf("10-test.conflist", &t.bridge_conflist());
    let mgr = t.manager();
    assert!(mgr.readiness().await.ready);
    let ns = Netns::new();
    let p = pod(Some(&ns));

    let r = mgr.add(&p).await.expect("add");
    let (ip, prefix, gw) = pod_ip(&r);
    assert!(
        ip.to_string()
            .starts_with(&format!("10.203.{}.", t.subnet.third)),
        "{ip} not in {}",
        t.subnet.cidr()
    );
    assert_eq!(gw.map(|g| g.to_string()), Some(t.subnet.gateway()));

    // The kernel agrees with the result.
    let out = ns.ip(&["-j", "addr", "show", "dev", "eth0"]);
    assert!(out.status.success(), "eth0 missing in pod netns");
    let addrs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let info = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["family"] == "inet")
        .expect("ipv4 address on eth0")
        .clone();
    assert_eq!(info["local"].as_str().unwrap(), ip.to_string());
    assert_eq!(info["prefixlen"].as_u64().unwrap(), u64::from(prefix));
    let routes: Value =
        serde_json::from_slice(&ns.ip(&["-j", "route", "show", "default"]).stdout).unwrap();
    assert_eq!(
        routes[0]["gateway"].as_str(),
        Some(t.subnet.gateway().as_str())
    );
    // loopback plugin ran too.
    let lo = String::from_utf8_lossy(&ns.ip(&["link", "show", "lo"]).stdout).into_owned();
    assert!(lo.contains("UP"), "lo not up: {lo}");

    // Lease recorded by host-local; veth on the bridge; cache entry written.
    assert_eq!(t.leases(), vec![ip.to_string()]);
    let veth = host_veth(&r, &t.bridge);
    assert_eq!(t.bridge_ports(), vec![veth.clone()]);
    assert_eq!(t.cache_files().len(), 1);

    mgr.check(&p).await.expect("check");

    mgr.del(&p).await.expect("del");
    assert!(t.leases().is_empty(), "lease left: {:?}", t.leases());
    assert!(!link_exists(&veth), "host veth {veth} left behind");
    assert!(!ns.ip(&["link", "show", "eth0"]).status.success());
    assert!(t.cache_files().is_empty(), "cache entry left");
    // DEL is idempotent.
    mgr.del(&p).await.expect("second del");
}

/// Accept one connection inside `ns` on a dedicated thread and answer "pong".
fn serve_once(
    ns: &Path,
    addr: SocketAddr,
    ready: mpsc::Sender<()>,
) -> std::thread::JoinHandle<String> {
    let ns = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        ready.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match l.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).unwrap();
                    s.write_all(b"pong").unwrap();
                    return peer.ip().to_string();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection within 10s");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    })
}

fn connect_from(ns: &Path, addr: SocketAddr) -> std::thread::JoinHandle<String> {
    let ns = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf
    })
}

#[tokio::test]
async fn two_pods_on_the_network_reach_each_other() {
    require_root();
    let t = TestNet::new();
    t.write_conf("10-test.conflist", &t.bridge_conflist());
    let mgr = t.manager();
    let (ns_a, ns_b) = (Netns::new(), Netns::new());
    let (pa, pb) = (pod(Some(&ns_a)), pod(Some(&ns_b)));
    // Different pods: run concurrently.
    let (ra, rb) = tokio::join!(mgr.add(&pa), mgr.add(&pb));
    let (ra, rb) = (ra.expect("add a"), rb.expect("add b"));
    let (ip_a, _, _) = pod_ip(&ra);
    let (ip_b, _, _) = pod_ip(&rb);
    assert_ne!(ip_a, ip_b);

    let addr = SocketAddr::new(ip_a, 18080);
    let (tx, rx) = mpsc::channel();
    let server = serve_once(&ns_a.path, addr, tx);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    let client = connect_from(&ns_b.path, addr);
    assert_eq!(client.join().expect("client thread"), "pong");
    assert_eq!(server.join().expect("server thread"), ip_b.to_string());

    mgr.del(&pa).await.expect("del a");
    mgr.del(&pb).await.expect("del b");
    assert!(t.leases().is_empty());
    assert!(t.bridge_ports().is_empty());
}

#[tokio::test]
async fn del_after_restart_with_config_deleted_uses_the_cache() {
    require_root();
    let t = TestNet::new();
    let conf = t.write_conf("10-test.conflist", &t.bridge_conflist());
    let ns = Netns::new();
    let p = pod(Some(&ns));
    let veth = {
        let mgr = t.manager();
        let r = mgr.add(&p).await.expect("add");
        host_veth(&r, &t.bridge)
    };
    assert_eq!(t.leases().len(), 1);
    std::fs::remove_file(conf).unwrap();

    // "Restart": a new manager with the same cache and no config at all.
    let mgr = CniManager::new(t.config());
    let ready = mgr.readiness().await;
    assert!(!ready.ready);
    assert_eq!(ready.reason, "NetworkPluginNotReady");
    mgr.del(&p).await.expect("del from cache");
    assert!(t.leases().is_empty(), "lease left: {:?}", t.leases());
    assert!(!link_exists(&veth));
    assert!(t.cache_files().is_empty());
}

#[tokio::test]
async fn del_with_netns_gone_still_releases_the_lease() {
    require_root();
    let t = TestNet::new();
    t.write_conf("10-test.conflist", &t.bridge_conflist());
    let mgr = t.manager();
    let ns = Netns::new();
    let p = pod(Some(&ns));
    mgr.add(&p).await.expect("add");
    assert_eq!(t.leases().len(), 1);
    drop(ns); // the pod's netns is gone (the kernel removes the veth pair with it)
    mgr.del(&p).await.expect("del without netns");
    assert!(t.leases().is_empty(), "lease left: {:?}", t.leases());
    assert!(t.cache_files().is_empty());
}

#[tokio::test]
async fn missing_plugin_makes_network_not_ready_and_add_fails_cleanly() {
    require_root();
    let t = TestNet::new();
    let list = t.conflist(
        "1.0.0",
        vec![
            t.bridge_plugin(),
            serde_json::json!({"type": "no-such-plugin-xyz"}),
        ],
    );
    t.write_conf("10-test.conflist", &list);
    let mgr = t.manager();
    let r = mgr.readiness().await;
    assert!(!r.ready);
    assert_eq!(r.reason, "NetworkPluginNotReady");
    assert!(r.message.contains("no-such-plugin-xyz"), "{}", r.message);

    let ns = Netns::new();
    let err = mgr.add(&pod(Some(&ns))).await.unwrap_err();
    assert!(
        matches!(&err, cnimgr::CniError::PluginNotFound { plugin, .. } if plugin == "no-such-plugin-xyz"),
        "{err}"
    );
    // Nothing ran: no bridge, no lease, no cache entry.
    assert!(!link_exists(&t.bridge));
    assert!(t.leases().is_empty());
    assert!(t.cache_files().is_empty());
}

/// Chain the real bridge with a failing plugin: ADD fails with the plugin's evidence, and the
/// bridge's veth and lease are rolled back.
async fn failing_second_plugin(script: &str, timeout: Duration) -> (TestNet, cnimgr::CniError) {
    let t = TestNet::new();
    t.plugin_script("failer", script);
    let list = t.conflist(
        "1.0.0",
        vec![t.bridge_plugin(), serde_json::json!({"type": "failer"})],
    );
    t.write_conf("10-test.conflist", &list);
    let mut cfg = t.config();
    cfg.add_timeout = timeout;
    let mgr = CniManager::new(cfg);
    let ns = Netns::new();
    let err = mgr.add(&pod(Some(&ns))).await.expect_err("add must fail");
    assert!(t.leases().is_empty(), "lease left: {:?}", t.leases());
    assert!(
        t.bridge_ports().is_empty(),
        "veth left: {:?}",
        t.bridge_ports()
    );
    assert!(
        !ns.ip(&["link", "show", "eth0"]).status.success(),
        "eth0 left"
    );
    assert!(t.cache_files().is_empty(), "cache entry left");
    (t, err)
}

#[tokio::test]
async fn plugin_cni_error_is_typed_and_rolled_back() {
    require_root();
    let (_t, err) = failing_second_plugin(
        r#"cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo "failer: on stderr" >&2
  echo '{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"field x is wrong"}'
  exit 1
fi"#,
        Duration::from_secs(30),
    )
    .await;
    let pe = err
        .plugin_error()
        .unwrap_or_else(|| panic!("not a plugin error: {err}"));
    assert_eq!(pe.plugin, "failer");
    assert_eq!(pe.command, cnimgr::Command::Add);
    assert_eq!(pe.code, Some(7));
    assert_eq!(pe.msg.as_deref(), Some("bad config"));
    assert_eq!(pe.details.as_deref(), Some("field x is wrong"));
    assert_eq!(pe.exit_status.code(), Some(1));
    assert!(pe.stderr.contains("failer: on stderr"));
    let text = err.to_string();
    assert!(
        text.contains("failer") && text.contains("bad config"),
        "{text}"
    );
}

#[tokio::test]
async fn plugin_garbage_exit_is_kept_as_evidence() {
    require_root();
    let (_t, err) = failing_second_plugin(
        r#"cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then echo 'this is not json'; echo boom >&2; exit 3; fi"#,
        Duration::from_secs(30),
    )
    .await;
    let pe = err
        .plugin_error()
        .unwrap_or_else(|| panic!("not a plugin error: {err}"));
    assert_eq!(pe.code, None);
    assert_eq!(pe.exit_status.code(), Some(3));
    assert!(pe.stdout.contains("this is not json"));
    assert!(pe.stderr.contains("boom"));
}

fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; a zombie is dead already.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn hanging_plugin_is_killed_at_the_timeout() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().display().to_string();
    let script = format!(
        r#"cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo $$ > {pids}/sh.pid
  sleep 300 &
  echo $! > {pids}/sleep.pid
  wait
fi"#
    );
    let (_t, err) = failing_second_plugin(&script, Duration::from_secs(2)).await;
    let cnimgr::CniError::AddFailed { source, .. } = &err else {
        panic!("unexpected error {err}");
    };
    assert!(
        matches!(&**source, cnimgr::CniError::Timeout { plugin, command: cnimgr::Command::Add, .. } if plugin == "failer"),
        "{source}"
    );
    let text = err.to_string();
    assert!(
        text.contains("failer") && text.contains("ADD") && text.contains("timed out"),
        "{text}"
    );
    // The plugin and its child are gone (process group killed).
    for f in ["sh.pid", "sleep.pid"] {
        let pid: i32 = std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = common::wait_for(Duration::from_secs(5), async || !running(pid)).await;
        assert!(gone, "{f} {pid} still running");
    }
}
