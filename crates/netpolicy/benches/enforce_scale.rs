//! Enforcement at scale (root): with 1, 100, 1 000 and 10 000 policies loaded (all but one
//! selecting no pod), the time to recompile and replace the table (`set_policies`), to add
//! and remove one pod's elements, and the TCP connect latency between two pod network
//! namespaces on a bridge; then the same traffic through an equivalent rule-per-peer
//! iptables chain for contrast. Prints the numbers. Cleans up everything it creates.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netpolicy::{Enforcer, EnforcerConfig, Format, Loaded, Pod, load_str, netlink, nft};

const CONNECTS: usize = 400;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Bridge + two netns (client .10, server .11) + an iptables chain name; removed on drop.
struct Bench {
    tag: String,
    stop: Arc<AtomicBool>,
    octet: u8,
    table: String,
    chain: String,
}

impl Bench {
    fn new() -> Self {
        let tag = format!("{:05x}", std::process::id() & 0xfffff);
        let octet = 100 + (std::process::id() % 100) as u8;
        let b = Bench {
            tag: tag.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            octet,
            table: format!("sluice-policy-b{tag}"),
            chain: format!("SPTB{tag}"),
        };
        let bridge = format!("sptb{tag}");
        sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.232.{octet}.1/24"),
            "dev",
            &bridge,
        ]);
        sh(&["ip", "link", "set", &bridge, "up"]);
        for (i, name) in ["client", "server"].iter().enumerate() {
            let ns = b.netns(name);
            let host = format!("spt{tag}{i}");
            let peer = format!("spt{tag}{i}p");
            sh(&["ip", "netns", "add", &ns]);
            sh(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ]);
            sh(&["ip", "link", "set", &peer, "netns", &ns]);
            sh(&["ip", "link", "set", &host, "master", &bridge, "up"]);
            sh(&["ip", "-n", &ns, "link", "set", &peer, "name", "eth0"]);
            let addr = format!("{}/24", b.ip(10 + i as u8));
            sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let listener = in_netns(&b.netns("server"), || {
            TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 80))).unwrap()
        });
        listener.set_nonblocking(true).unwrap();
        let stop = b.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if listener.accept().is_err() {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        b
    }

    fn netns(&self, name: &str) -> String {
        format!("sluice-npt-{}-{name}", self.tag)
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 232, self.octet, host)
    }

    /// Connect latencies client → server:80 (p50, p99), all of which must succeed.
    fn connect_latency(&self) -> (Duration, Duration) {
        let target = SocketAddr::from((self.ip(11), 80));
        let mut samples = in_netns(&self.netns("client"), move || {
            (0..CONNECTS)
                .map(|_| {
                    let t = Instant::now();
                    let s = TcpStream::connect_timeout(&target, Duration::from_secs(1))
                        .expect("allowed connect");
                    let d = t.elapsed();
                    drop(s);
                    d
                })
                .collect::<Vec<_>>()
        });
        samples.sort();
        (
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100],
        )
    }

    fn pod(&self, name: &str, app: &str, ip: Ipv4Addr) -> Pod {
        Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            ips: vec![IpAddr::V4(ip)],
            host_network: false,
        }
    }

    /// An iptables chain with one rule per peer (`n` peers, the client last), jumped to
    /// for new connections to the server.
    fn iptables(&self, n: usize) {
        self.iptables_clear();
        let mut rules = String::from("*filter\n");
        let _ = writeln!(rules, ":{} - [0:0]", self.chain);
        for i in 0..n.saturating_sub(1) {
            let _ = writeln!(
                rules,
                "-A {} -s 10.233.{}.{}/32 -p tcp --dport 80 -j ACCEPT",
                self.chain,
                i / 250,
                i % 250 + 1
            );
        }
        let _ = writeln!(
            rules,
            "-A {} -s {}/32 -p tcp --dport 80 -j ACCEPT",
            self.chain,
            self.ip(10)
        );
        let _ = writeln!(rules, "-A {} -j DROP", self.chain);
        let _ = writeln!(
            rules,
            "-I FORWARD -d {}/32 -m conntrack --ctstate NEW -j {}",
            self.ip(11),
            self.chain
        );
        rules.push_str("COMMIT\n");
        let mut child = Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    fn iptables_clear(&self) {
        let dst = format!("{}/32", self.ip(11));
        sh_quiet(&[
            "iptables",
            "-D",
            "FORWARD",
            "-d",
            &dst,
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            &self.chain,
        ]);
        sh_quiet(&["iptables", "-F", &self.chain]);
        sh_quiet(&["iptables", "-X", &self.chain]);
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.iptables_clear();
        sh_quiet(&["nft", "delete", "table", "inet", &self.table]);
        for (i, name) in ["client", "server"].iter().enumerate() {
            sh_quiet(&["ip", "link", "del", &format!("spt{}{i}", self.tag)]);
            sh_quiet(&["ip", "netns", "del", &self.netns(name)]);
        }
        sh_quiet(&["ip", "link", "del", &format!("sptb{}", self.tag)]);
    }
}

/// `n` policies: the first selects the server and admits app=client on TCP 80; the others
/// select labels no pod has (each with a peer of its own).
fn policies(n: usize) -> Loaded {
    let mut yaml = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p0, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 80}]\n",
    );
    for i in 1..n {
        let _ = write!(
            yaml,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{}}}\nspec:\n  podSelector: {{matchLabels: {{app: app{i}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: peer{i}}}}}}}]\n    ports: [{{port: 80}}]\n",
            i % 10
        );
    }
    let mut loaded = Loaded::default();
    load_str(&mut loaded, Path::new("bench.yaml"), Format::Yaml, &yaml);
    assert!(!loaded.has_errors());
    loaded
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The element diff of one pod_add, sent (and reverted) directly over netlink and with
/// `nft -f`: p50 of the forward application on each path.
fn apply_paths(
    rt: &tokio::runtime::Runtime,
    enforcer: &Enforcer,
    bench: &Bench,
) -> (Duration, Duration) {
    let before = nft::all_elements(&rt.block_on(enforcer.compiled()));
    let pod = bench.pod("probe", "client", bench.ip(149));
    rt.block_on(enforcer.pod_added("probe", pod)).unwrap();
    let after = nft::all_elements(&rt.block_on(enforcer.compiled()));
    rt.block_on(enforcer.pod_removed("probe")).unwrap();
    let (forward, back) = (nft::diff(&before, &after), nft::diff(&after, &before));
    assert!(!forward.is_empty());
    let table = &bench.table;
    let (mut netlink_times, mut nft_times) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        netlink::apply_diff(table, &forward).unwrap();
        netlink_times.push(t.elapsed());
        netlink::apply_diff(table, &back).unwrap();
        let t = Instant::now();
        nft_f(&nft::diff_script(table, &forward));
        nft_times.push(t.elapsed());
        nft_f(&nft::diff_script(table, &back));
    }
    (p50(netlink_times), p50(nft_times))
}

fn nft_f(script: &str) {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("enforce_scale: needs root, skipped");
        return;
    }
    // `cargo bench` passes --bench; nothing else to parse.
    let bench = Bench::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let enforcer = Enforcer::new(EnforcerConfig {
        table: bench.table.clone(),
        nft: PathBuf::from("nft"),
        log_denied: false,
        log_rate_per_sec: 10,
    });
    // 100 pods: the two real ones and 98 that exist only for the policy engine.
    let mut pods = vec![
        (
            "client".to_string(),
            bench.pod("client", "client", bench.ip(10)),
        ),
        (
            "server".to_string(),
            bench.pod("server", "server", bench.ip(11)),
        ),
    ];
    for i in 0..98u8 {
        pods.push((
            format!("filler{i}"),
            bench.pod(
                &format!("filler{i}"),
                &format!("filler{}", i % 20),
                bench.ip(20 + i),
            ),
        ));
    }
    println!("netpolicy enforcement, 100 pods, {CONNECTS} connects per row (nft table inet, sets)");
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "policies", "elements", "recompile", "pod_add", "pod_remove", "conn_p50", "conn_p99"
    );
    let sizes = [1usize, 100, 1_000, 10_000];
    for &n in &sizes {
        let loaded = policies(n);
        rt.block_on(enforcer.replace_all(&loaded, pods.clone(), vec![]))
            .unwrap();
        let recompile = p50((0..3)
            .map(|_| {
                let t = Instant::now();
                rt.block_on(enforcer.set_policies(&loaded)).unwrap();
                t.elapsed()
            })
            .collect());
        // A new client pod: a peer of p0, so the server's elements change too.
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        let (mut add_compile, mut add_nft) = (Vec::new(), Vec::new());
        for i in 0..20u8 {
            let pod = bench.pod(&format!("new{i}"), "client", bench.ip(150 + i));
            let t = Instant::now();
            let stats = rt.block_on(enforcer.pod_added("new", pod)).unwrap();
            add.push(t.elapsed());
            add_compile.push(stats.compile);
            add_nft.push(stats.apply);
            let t = Instant::now();
            rt.block_on(enforcer.pod_removed("new")).unwrap();
            remove.push(t.elapsed());
        }
        let elements = rt.block_on(enforcer.stats()).elements;
        let (c50, c99) = bench.connect_latency();
        println!(
            "{n:>8} {elements:>10} {:>12.2?} {:>12.2?} {:>12.2?} {c50:>12.2?} {c99:>12.2?}",
            recompile,
            p50(add),
            p50(remove)
        );
        println!(
            "{:>8} pod_add split: compute {:.2?}, apply {:.2?} (p50)",
            "",
            p50(add_compile),
            p50(add_nft)
        );
        let (netlink, nft) = apply_paths(&rt, &enforcer, &bench);
        println!(
            "{:>8} one pod_add diff applied directly: netlink {netlink:.2?}, nft -f {nft:.2?} (p50)",
            ""
        );
    }
    rt.block_on(enforcer.remove_table()).unwrap();
    println!("rule-per-peer iptables chain (the client's rule last) for contrast");
    println!("{:>8} {:>12} {:>12}", "rules", "conn_p50", "conn_p99");
    for &n in &sizes {
        bench.iptables(n);
        let (c50, c99) = bench.connect_latency();
        println!("{n:>8} {c50:>12.2?} {c99:>12.2?}");
    }
    bench.iptables_clear();
}
