//! Latency of `add` and `remove` of one pod with 2 mappings (TCP + UDP, dual-stack pod)
//! while the table already holds 10, 100, 1 000 and 10 000 other mappings, in a throwaway
//! node netns (root required). Prints p50/p90 per size and the ratio p50(10 000)/p50(10).
//!
//! Also measured, for honesty:
//! - `cold`: the first operation of a fresh manager (a restarted daemon), which reads the
//!   tables back from the kernel once (`nft -j list table`): this one is O(table size).
//! - `iptables`: the same add/remove done rule-per-mapping with `iptables-restore --noflush`
//!   (the CNI portmap plugin's classic approach), if `iptables-restore` is installed.
//!
//! Run: `cargo bench -p hostport --bench hostport_scale` (env `HOSTPORT_BENCH_ITERS`, default 40).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, rt, tcp, udp};
use hostport::{HostPortManager, LocalhostAccess, NftConfig, NftHostPortManager, PodPorts};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn background(n_mappings: usize) -> Vec<PodPorts> {
    // n/2 pods with a TCP and a UDP mapping each, on ports 10000.. (the measured pod uses
    // 80/53 and never conflicts).
    (0..n_mappings / 2)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i as u32 + 1);
            let port = 10_000 + i as u16;
            PodPorts {
                pod_id: format!("{i:064x}"),
                pod_name: format!("bench/pod-{i}"),
                ips: vec![IpAddr::V4(ip)],
                mappings: vec![tcp(port, 8080), udp(port, 8053)],
            }
        })
        .collect()
}

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Row {
    add: (Duration, Duration),
    remove: (Duration, Duration),
    cold_remove: Duration,
}

fn iptables_available() -> bool {
    Command::new("iptables-restore")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn iptables_restore(node: &Node, input: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.ns, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "iptables-restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ipt_rule(op: &str, proto: &str, port: u16, ip: &str, to: u16, id: &str) -> String {
    format!(
        "-{op} SLUICE-HP -p {proto} -m {proto} --dport {port} -m comment --comment {id} -j DNAT --to-destination {ip}:{to}\n"
    )
}

/// Rule-per-mapping baseline: p50/p90 of add and remove (two rules each).
fn iptables_row(
    node: &Node,
    n: usize,
    iters: usize,
) -> ((Duration, Duration), (Duration, Duration)) {
    let mut setup = String::from(
        "*nat\n:SLUICE-HP - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j SLUICE-HP\n-A OUTPUT -m addrtype --dst-type LOCAL -j SLUICE-HP\n",
    );
    for (i, pod) in background(n).iter().enumerate() {
        let ip = pod.ips[0].to_string();
        let port = 10_000 + i as u16;
        setup.push_str(&ipt_rule("A", "tcp", port, &ip, 8080, &pod.pod_id[..16]));
        setup.push_str(&ipt_rule("A", "udp", port, &ip, 8053, &pod.pod_id[..16]));
    }
    setup.push_str("COMMIT\n");
    iptables_restore(node, &setup);
    let pod_ip = node.pods[0].v4.to_string();
    let body = |op| {
        format!(
            "*nat\n{}{}COMMIT\n",
            ipt_rule(op, "tcp", 80, &pod_ip, 80, "benchpod"),
            ipt_rule(op, "udp", 53, &pod_ip, 53, "benchpod")
        )
    };
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for _ in 0..iters {
        let t = Instant::now();
        iptables_restore(node, &body("A"));
        adds.push(t.elapsed());
        let t = Instant::now();
        iptables_restore(node, &body("D"));
        removes.push(t.elapsed());
    }
    // Tear the chain down for the next size.
    iptables_restore(
        node,
        "*nat\n-D PREROUTING -m addrtype --dst-type LOCAL -j SLUICE-HP\n-D OUTPUT -m addrtype --dst-type LOCAL -j SLUICE-HP\n-F SLUICE-HP\n-X SLUICE-HP\nCOMMIT\n",
    );
    (
        (pct(&mut adds, 0.5), pct(&mut adds, 0.9)),
        (pct(&mut removes, 0.5), pct(&mut removes, 0.9)),
    )
}

/// Measures add/remove p50/p90 and cold remove for every size with managers from `make`.
fn measure(node: &Node, iters: usize, make: &dyn Fn() -> NftHostPortManager) -> Vec<Row> {
    let pod = node.pods[0].clone();
    let rt = rt();
    let mappings = [tcp(80, 80), udp(53, 53)];
    let mut rows = Vec::new();
    println!(
        "{:>8} | {:>17} | {:>17} | {:>12}",
        "others", "add p50/p90 ms", "remove p50/p90 ms", "cold rm ms"
    );
    for n in SIZES {
        let live = background(n);
        let m = make();
        rt.block_on(m.sync(&live)).unwrap();
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let t = Instant::now();
            rt.block_on(m.add("benchpod", "bench/measured", &pod.ips(), &mappings))
                .unwrap();
            adds.push(t.elapsed());
            let t = Instant::now();
            rt.block_on(m.remove("benchpod")).unwrap();
            removes.push(t.elapsed());
        }
        // Cold: a restarted daemon's first remove reads the tables back once.
        let mut colds = Vec::new();
        for _ in 0..5 {
            rt.block_on(m.add("benchpod", "bench/measured", &pod.ips(), &mappings))
                .unwrap();
            let fresh = make();
            let t = Instant::now();
            rt.block_on(fresh.remove("benchpod")).unwrap();
            colds.push(t.elapsed());
        }
        let row = Row {
            add: (pct(&mut adds, 0.5), pct(&mut adds, 0.9)),
            remove: (pct(&mut removes, 0.5), pct(&mut removes, 0.9)),
            cold_remove: pct(&mut colds, 0.5),
        };
        println!(
            "{:>8} | {:>7.2} / {:>7.2} | {:>7.2} / {:>7.2} | {:>12.2}",
            n,
            ms(row.add.0),
            ms(row.add.1),
            ms(row.remove.0),
            ms(row.remove.1),
            ms(row.cold_remove)
        );
        rows.push(row);
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    println!(
        "ratio p50(10000)/p50(10): add {:.2}, remove {:.2} (target <= 1.5); cold remove {:.2}\n",
        last.add.0.as_secs_f64() / first.add.0.as_secs_f64(),
        last.remove.0.as_secs_f64() / first.remove.0.as_secs_f64(),
        last.cold_remove.as_secs_f64() / first.cold_remove.as_secs_f64(),
    );
    rt.block_on(make().sync(&[])).unwrap();
    rows
}

fn main() {
    let iters: usize = std::env::var("HOSTPORT_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let node = Node::new(1);

    println!(
        "hostport_scale: add/remove of one dual-stack pod with 2 mappings (tcp+udp), {iters} iterations\n"
    );
    println!(
        "A. full operation (default config): nft -f - transaction, plus per add: `ip route get`"
    );
    println!(
        "   per family, route_localnet sysctl, `ip -6 route replace`, `conntrack -D` per family"
    );
    measure(&node, iters, &|| node.manager());

    println!("B. nft transaction only (localhost access disabled, no conntrack flush)");
    measure(&node, iters, &|| {
        NftHostPortManager::new(NftConfig {
            localhost: LocalhostAccess::Disabled,
            flush_udp_conntrack: false,
            ..node.config()
        })
        .unwrap()
    });

    if !iptables_available() {
        println!("iptables-restore not installed: rule-per-mapping comparison skipped");
        return;
    }
    let version = Command::new("iptables-restore")
        .arg("--version")
        .output()
        .unwrap();
    println!(
        "C. rule-per-mapping baseline: {} --noflush, 2 DNAT rules per op (v4 only)",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    println!(
        "{:>8} | {:>17} | {:>17}",
        "others", "add p50/p90 ms", "remove p50/p90 ms"
    );
    let mut ipt = Vec::new();
    for n in SIZES {
        let (add, remove) = iptables_row(&node, n, iters.min(20));
        println!(
            "{:>8} | {:>7.2} / {:>7.2} | {:>7.2} / {:>7.2}",
            n,
            ms(add.0),
            ms(add.1),
            ms(remove.0),
            ms(remove.1)
        );
        ipt.push((add, remove));
    }
    let (f, l) = (&ipt[0], &ipt[ipt.len() - 1]);
    println!(
        "ratio p50(10000)/p50(10): add {:.2}, remove {:.2}",
        l.0.0.as_secs_f64() / f.0.0.as_secs_f64(),
        l.1.0.as_secs_f64() / f.1.0.as_secs_f64()
    );
}
