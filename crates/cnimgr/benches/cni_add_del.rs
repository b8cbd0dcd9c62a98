//! ADD+DEL latency for the bridge + host-local + loopback network (Debian's plugins in
//! /usr/lib/cni), and how much of it is spent inside plugin processes (spawn to exit) versus in
//! sluice itself. Root required: it creates a netns and a bridge, and removes both.
//!
//! `cargo bench -p cnimgr --bench cni_add_del` (iterations: `CNI_BENCH_ITERS`, default 50).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cnimgr::{CniConfig, CniManager, PodNetwork};
use serde_json::json;

struct Cleanup {
    netns: String,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cni_add_del bench needs root (netns, bridge)"
    );
    let iters: usize = std::env::var("CNI_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let pid = std::process::id();
    let root = tempfile::tempdir().unwrap();
    let conf_dir = root.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let bridge = format!("slcbn{:x}", pid);
    let third = pid % 250 + 1;
    let guard = Cleanup {
        netns: format!("slc-cnibench-{pid}"),
        bridge: bridge.clone(),
    };
    let list = json!({
        "cniVersion": "1.0.0",
        "name": format!("slcbench{pid}"),
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "dataDir": root.path().join("ipam"),
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "ranges": [[{"subnet": format!("10.209.{third}.0/24"), "gateway": format!("10.209.{third}.1")}]]}},
            {"type": "loopback"}
        ]
    });
    std::fs::write(conf_dir.join("10-bench.conflist"), list.to_string()).unwrap();
    let out = Command::new("ip")
        .args(["netns", "add", &guard.netns])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip netns add failed");

    let mgr = CniManager::new(CniConfig {
        network_dir: conf_dir,
        plugin_dirs: vec![PathBuf::from("/usr/lib/cni")],
        default_network: None,
        cache_dir: root.path().join("cache"),
        add_timeout: Duration::from_secs(30),
        del_timeout: Duration::from_secs(30),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let (mut add, mut del, mut both, mut plugin, mut overhead) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for i in 0..iters + 5 {
            let mut p = PodNetwork::new(format!("bench{i}"), "bench", "default", format!("uid{i}"));
            p.netns_path = Some(PathBuf::from(format!("/run/netns/{}", guard.netns)));
            let before = mgr.plugin_time();
            let t0 = Instant::now();
            mgr.add(&p).await.expect("add");
            let t1 = Instant::now();
            mgr.del(&p).await.expect("del");
            let t2 = Instant::now();
            let in_plugins = mgr.plugin_time().total - before.total;
            if i < 5 {
                continue; // warm-up
            }
            add.push(t1 - t0);
            del.push(t2 - t1);
            both.push(t2 - t0);
            plugin.push(in_plugins);
            overhead.push((t2 - t0).saturating_sub(in_plugins));
        }
    });
    let total: Duration = both.iter().sum();
    let in_plugins: Duration = plugin.iter().sum();
    println!("cni_add_del: bridge+host-local+loopback, {iters} iterations (after 5 warm-up)");
    for (name, v) in [
        ("ADD", &mut add),
        ("DEL", &mut del),
        ("ADD+DEL", &mut both),
        ("  in plugins", &mut plugin),
        ("  sluice overhead", &mut overhead),
    ] {
        println!(
            "{name:<18} p50 {:>10}  p90 {:>10}",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.9))
        );
    }
    println!(
        "share: plugins {:.1}%, sluice {:.1}% of ADD+DEL time",
        100.0 * in_plugins.as_secs_f64() / total.as_secs_f64(),
        100.0 * (total - in_plugins).as_secs_f64() / total.as_secs_f64()
    );
    drop(guard);
}
