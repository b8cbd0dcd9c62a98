//! Test support: unique names, netns / link guards, per-test subnets, plugin scripts.
//! Everything a test creates is removed by a Drop guard, also when the test panics.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cnimgr::{CniConfig, CniManager, PodNetwork};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Kernel tests need root; say so loudly instead of passing.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cnimgr kernel tests need root (netns, bridges, veth): run them as root"
    );
}

/// `<pid hex><counter>`: unique among live test processes.
pub fn unique() -> String {
    format!(
        "{:x}{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {cmd} {args:?}: {e}"))
}

pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named netns (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new() -> Self {
        let name = format!("slc-cni-{}", unique());
        run_ok("ip", &["netns", "add", &name]);
        Self {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        }
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Deletes a link on drop if it exists (the bridge the plugins created for this test).
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if link_exists(&self.0) {
            let _ = run("ip", &["link", "del", &self.0]);
        }
    }
}

pub fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

/// A /24 out of 10.203.0.0/16 reserved with an flock, so parallel test processes never share
/// one (the kernel drops the lock if the process dies).
pub struct Subnet {
    pub third: u8,
    _lock: Flock<File>,
}

impl Subnet {
    pub fn alloc() -> Self {
        let dir = Path::new("/tmp/cnimgr-test-subnets");
        std::fs::create_dir_all(dir).unwrap();
        let start = std::process::id() as usize;
        for i in 0..250 {
            let third = ((start + i) % 250 + 1) as u8;
            let f = File::create(dir.join(format!("{third}.lock"))).unwrap();
            if let Ok(lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                return Self { third, _lock: lock };
            }
        }
        panic!("no free test subnet in 10.203.0.0/16");
    }

    pub fn cidr(&self) -> String {
        format!("10.203.{}.0/24", self.third)
    }

    pub fn gateway(&self) -> String {
        format!("10.203.{}.1", self.third)
    }
}

/// One test's world: config dir, cache dir, IPAM dir, plugin dir, bridge name and subnet.
pub struct TestNet {
    pub root: tempfile::TempDir,
    pub conf_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub data_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub net_name: String,
    pub bridge: String,
    pub subnet: Subnet,
    _bridge_guard: LinkGuard,
}

impl TestNet {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let conf_dir = root.path().join("net.d");
        let cache_dir = root.path().join("cache");
        let data_dir = root.path().join("ipam");
        let plugin_dir = root.path().join("plugins");
        for d in [&conf_dir, &data_dir, &plugin_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let u = unique();
        let bridge = format!("slcb{u}");
        assert!(bridge.len() <= 15, "bridge name {bridge} too long");
        Self {
            root,
            conf_dir,
            cache_dir,
            data_dir,
            plugin_dir,
            net_name: format!("slctest-{u}"),
            _bridge_guard: LinkGuard(bridge.clone()),
            bridge,
            subnet: Subnet::alloc(),
        }
    }

    /// The real bridge plugin (no masquerade: no iptables state to leak) with host-local IPAM.
    pub fn bridge_plugin(&self) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data_dir,
                "routes": [{"dst": "0.0.0.0/0"}],
                "ranges": [[{"subnet": self.subnet.cidr(), "gateway": self.subnet.gateway()}]]
            }
        })
    }

    /// bridge + loopback, as sluice ships it.
    pub fn bridge_conflist(&self) -> Value {
        self.conflist(
            "1.0.0",
            vec![self.bridge_plugin(), json!({"type": "loopback"})],
        )
    }

    pub fn conflist(&self, version: &str, plugins: Vec<Value>) -> Value {
        json!({"cniVersion": version, "name": self.net_name, "plugins": plugins})
    }

    pub fn write_conf(&self, file: &str, v: &Value) -> PathBuf {
        let p = self.conf_dir.join(file);
        std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p
    }

    pub fn config(&self) -> CniConfig {
        CniConfig {
            network_dir: self.conf_dir.clone(),
            plugin_dirs: vec![self.plugin_dir.clone(), PathBuf::from("/usr/lib/cni")],
            default_network: None,
            cache_dir: self.cache_dir.clone(),
            add_timeout: Duration::from_secs(30),
            del_timeout: Duration::from_secs(30),
        }
    }

    pub fn manager(&self) -> CniManager {
        CniManager::new(self.config())
    }

    /// host-local's lease files (one per allocated IP) for this network.
    pub fn leases(&self) -> Vec<String> {
        let dir = self.data_dir.join(&self.net_name);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect();
        v.sort();
        v
    }

    /// Links enslaved to this test's bridge (the host ends of pod veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        if !link_exists(&self.bridge) {
            return Vec::new();
        }
        let out = run_ok("ip", &["-o", "link", "show", "master", &self.bridge]);
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .collect()
    }

    /// Write an executable plugin script into the test's plugin dir.
    pub fn plugin_script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.plugin_dir.join(name);
        // Write to a temp name and rename: executing a file still open for writing is ETXTBSY.
        let tmp = self.plugin_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }

    pub fn cache_files(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.cache_dir) else {
            return Vec::new();
        };
        rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

pub fn pod(netns: Option<&Netns>) -> PodNetwork {
    let u = unique();
    let mut p = PodNetwork::new(
        format!("pod{u}"),
        format!("name-{u}"),
        "testns",
        format!("uid-{u}"),
    );
    p.netns_path = netns.map(|n| n.path.clone());
    p
}

/// Poll `f` every 50 ms for up to `limit`.
pub async fn wait_for(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A result a fake plugin prints.
pub const FAKE_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.99.0.5/24","gateway":"10.99.0.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.99.0.53"]}}"#;
