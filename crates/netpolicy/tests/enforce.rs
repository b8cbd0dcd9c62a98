//! The nftables enforcer against the real kernel (root): a bridge with pod network
//! namespaces of the test's own, TCP listeners inside them, and connects between them. A
//! connect that does not complete within 300 ms is a denial (deny = drop).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use netpolicy::{
    CounterVerdict, EnforceError, Enforcer, EnforcerConfig, Format, Loaded, Pod, PolicyRef,
    load_str,
};

const SUBNET_LOCKS: &str = "/tmp/sluice-npt-subnets";
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
    };
}

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:05x}", ((std::process::id() << 6) ^ n) & 0xfffff)
}

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

/// A /24 under 10.231.0.0/16 held (flock) for the life of the value.
struct Subnet {
    octet: u8,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl Subnet {
    fn reserve() -> Self {
        fs::create_dir_all(SUBNET_LOCKS).unwrap();
        let start = (std::process::id() % 250) as u8;
        for i in 0..=255u16 {
            let octet = start.wrapping_add(i as u8);
            let f = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(Path::new(SUBNET_LOCKS).join(format!("{octet}.lock")))
                .unwrap();
            if let Ok(lock) =
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                return Self { octet, _lock: lock };
            }
        }
        panic!("no free test subnet under 10.231.0.0/16");
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.octet, host)
    }
}

/// A bridge in the host netns and one netns per pod, each with listeners on TCP 80 and 81.
/// Everything is removed on drop.
struct Topo {
    tag: String,
    subnet: Subnet,
    bridge: String,
    pods: Vec<(String, String, Ipv4Addr)>, // (name, netns, ip)
    stop: Arc<AtomicBool>,
}

impl Topo {
    fn new(names: &[&str]) -> Self {
        let tag = unique();
        let subnet = Subnet::reserve();
        let bridge = format!("sptb{tag}");
        let mut topo = Topo {
            tag: tag.clone(),
            subnet,
            bridge: bridge.clone(),
            pods: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
        let gw = format!("{}/24", topo.subnet.ip(1));
        sh(&["ip", "addr", "add", &gw, "dev", &bridge]);
        sh(&["ip", "link", "set", &bridge, "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("sluice-npt-{tag}-{name}");
            let host = format!("spt{tag}{i}");
            let peer = format!("spt{tag}{i}p");
            let ip = topo.subnet.ip(10 + i as u8);
            topo.pods.push((name.to_string(), ns.clone(), ip));
            sh(&["ip", "netns", "add", &ns]);
            sh(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ]);
            sh(&["ip", "link", "set", &peer, "netns", &ns]);
            sh(&["ip", "link", "set", &host, "master", &bridge, "up"]);
            sh(&["ip", "-n", &ns, "link", "set", &peer, "name", "eth0"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            let gw = topo.subnet.ip(1).to_string();
            sh(&["ip", "-n", &ns, "route", "add", "default", "via", &gw]);
            for port in [80, 81] {
                topo.listen(&ns, port);
            }
        }
        topo
    }

    /// A listener inside `ns`, accepting (and closing) until the topology is dropped.
    fn listen(&self, ns: &str, port: u16) {
        let path = PathBuf::from(format!("/run/netns/{ns}"));
        let listener = in_netns(&path, move || {
            TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        })
        .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }

    fn pod(&self, name: &str) -> (String, Pod) {
        let (_, _, ip) = self.pods.iter().find(|p| p.0 == name).unwrap();
        let app = match name {
            "a" | "b" => "frontend",
            other => other,
        };
        let pod = Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: BTreeMap::from([
                ("app".to_string(), app.to_string()),
                ("pod".to_string(), name.to_string()),
            ]),
            ips: vec![IpAddr::V4(*ip)],
            host_network: false,
        };
        (format!("sandbox-{}-{name}", self.tag), pod)
    }

    fn all_pods(&self) -> Vec<(String, Pod)> {
        self.pods.iter().map(|p| self.pod(&p.0)).collect()
    }

    fn ip(&self, name: &str) -> Ipv4Addr {
        self.pods.iter().find(|p| p.0 == name).unwrap().2
    }

    fn netns(&self, name: &str) -> String {
        self.pods.iter().find(|p| p.0 == name).unwrap().1.clone()
    }

    /// Whether a TCP connect from pod `from` to pod `to` on `port` completes.
    fn connects(&self, from: &str, to: &str, port: u16) -> bool {
        let path = PathBuf::from(format!("/run/netns/{}", self.netns(from)));
        let target = SocketAddr::from((self.ip(to), port));
        in_netns(&path, move || {
            Ok::<_, std::io::Error>(TcpStream::connect_timeout(&target, PROBE_TIMEOUT).is_ok())
        })
        .unwrap()
    }

    /// Whether the node (host netns) connects to pod `to`.
    fn node_connects(&self, to: &str, port: u16) -> bool {
        TcpStream::connect_timeout(&SocketAddr::from((self.ip(to), port)), PROBE_TIMEOUT).is_ok()
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (i, (_, ns, _)) in self.pods.iter().enumerate() {
            sh_quiet(&["ip", "link", "del", &format!("spt{}{i}", self.tag)]);
            sh_quiet(&["ip", "netns", "del", ns]);
        }
        sh_quiet(&["ip", "link", "del", &self.bridge]);
    }
}

/// Runs `f` on a fresh thread that entered the network namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = fs::File::open(path)?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// An enforcer with a table of the test's own, deleted on drop.
struct Table {
    enforcer: Enforcer,
    name: String,
}

impl Table {
    fn new(nft: &Path) -> Self {
        let name = format!("sluice-policy-t{}", unique());
        Table {
            enforcer: Enforcer::new(EnforcerConfig {
                table: name.clone(),
                nft: nft.to_path_buf(),
                log_denied: true,
                log_rate_per_sec: 5,
            }),
            name,
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        sh_quiet(&["nft", "delete", "table", "inet", &self.name]);
    }
}

fn policies(yaml: &str) -> Loaded {
    let mut loaded = Loaded::default();
    load_str(&mut loaded, Path::new("test.yaml"), Format::Yaml, yaml);
    assert!(!loaded.has_errors(), "{:?}", loaded.problems);
    loaded
}

fn policy_ref(name: &str) -> PolicyRef {
    PolicyRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const DENY_C: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-c, namespace: default}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
"#;

const ALLOW_FRONTEND_80: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend, namespace: default}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{protocol: TCP, port: 80}]
"#;

#[test]
fn isolation_allow_rules_and_counters() {
    require_root!();
    let topo = Topo::new(&["a", "c", "d"]);
    let table = Table::new(Path::new("nft"));
    let rt = rt();
    let e = &table.enforcer;

    rt.block_on(e.replace_all(&Loaded::default(), topo.all_pods(), vec![]))
        .unwrap();
    assert!(topo.connects("a", "c", 80), "no policy: a reaches c");
    assert!(topo.connects("d", "c", 81), "no policy: d reaches c");

    // Default-deny ingress for c.
    rt.block_on(e.set_policies(&policies(DENY_C))).unwrap();
    assert!(!topo.connects("a", "c", 80), "c is isolated");
    assert!(!topo.connects("d", "c", 80), "c is isolated");
    assert!(topo.connects("c", "a", 80), "c's egress is not isolated");
    assert!(
        topo.node_connects("c", 80),
        "the node always reaches its pods"
    );
    let counters = rt.block_on(e.counters()).unwrap();
    let get = |counters: &[netpolicy::PolicyCounter], name: &str, v: CounterVerdict| {
        counters
            .iter()
            .find(|c| c.policy == policy_ref(name) && c.verdict == v)
            .map(|c| c.packets)
            .unwrap()
    };
    let denied = get(&counters, "deny-c", CounterVerdict::Deny);
    assert!(denied >= 2, "denied SYNs counted for deny-c: {counters:?}");

    // Plus an allow from app=frontend on TCP 80.
    let both = format!("{DENY_C}---{ALLOW_FRONTEND_80}");
    rt.block_on(e.set_policies(&policies(&both))).unwrap();
    assert!(topo.connects("a", "c", 80), "frontend reaches c:80");
    assert!(!topo.connects("a", "c", 81), "but not c:81");
    assert!(!topo.connects("d", "c", 80), "d is no frontend");
    let counters = rt.block_on(e.counters()).unwrap();
    assert!(
        get(&counters, "allow-frontend", CounterVerdict::Allow) >= 1,
        "{counters:?}"
    );
    assert_eq!(get(&counters, "deny-c", CounterVerdict::Allow), 0);
    // Denials go to the first isolating policy by name: allow-frontend < deny-c.
    assert!(
        get(&counters, "allow-frontend", CounterVerdict::Deny) >= 2,
        "{counters:?}"
    );
    // Counters survive the table replacement.
    assert!(get(&counters, "deny-c", CounterVerdict::Deny) >= denied);
    let stats = rt.block_on(e.stats());
    assert_eq!(stats.rules, 1);
    assert!(stats.elements >= 2, "{stats:?}");
    rt.block_on(e.remove_table()).unwrap();
    assert!(topo.connects("d", "c", 80), "no table, no policy");
}

#[test]
fn egress_policy_with_ip_block_except() {
    require_root!();
    let topo = Topo::new(&["a", "c", "d"]);
    let table = Table::new(Path::new("nft"));
    let rt = rt();
    let e = &table.enforcer;
    let yaml = format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: a-egress, namespace: default}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: 10.231.{}.0/24, except: [{}/32]}}}}]
    ports: [{{port: 80}}]
"#,
        topo.subnet.octet,
        topo.ip("c")
    );
    rt.block_on(e.replace_all(&policies(&yaml), topo.all_pods(), vec![]))
        .unwrap();
    assert!(topo.connects("a", "d", 80), "d is in the block");
    assert!(!topo.connects("a", "d", 81), "only port 80");
    assert!(!topo.connects("a", "c", 80), "c is excepted");
    assert!(topo.connects("c", "a", 80), "a's ingress is not isolated");
    assert!(topo.connects("d", "c", 80), "other pods are not affected");
}

#[test]
fn pods_coming_and_going_change_enforcement() {
    require_root!();
    let topo = Topo::new(&["a", "b", "c", "d"]);
    let table = Table::new(Path::new("nft"));
    let rt = rt();
    let e = &table.enforcer;
    let both = format!("{DENY_C}---{ALLOW_FRONTEND_80}");
    // b (a frontend) is not known yet.
    let pods = vec![topo.pod("a"), topo.pod("c"), topo.pod("d")];
    rt.block_on(e.replace_all(&policies(&both), pods, vec![]))
        .unwrap();
    assert!(topo.connects("a", "c", 80));
    assert!(
        !topo.connects("b", "c", 80),
        "b is not a known frontend yet"
    );

    let (id, pod) = topo.pod("b");
    let stats = rt.block_on(e.pod_added(&id, pod.clone())).unwrap();
    assert!(stats.elements >= 1, "{stats:?}");
    assert!(topo.connects("b", "c", 80), "b is a frontend now");
    // Idempotent.
    let again = rt.block_on(e.pod_added(&id, pod)).unwrap();
    assert_eq!(again.elements, 0);
    assert!(topo.connects("b", "c", 80));

    rt.block_on(e.pod_removed(&id)).unwrap();
    assert!(!topo.connects("b", "c", 80), "b is gone from the peer set");
    rt.block_on(e.pod_removed("no-such-sandbox")).unwrap();

    let (c_id, _) = topo.pod("c");
    rt.block_on(e.pod_removed(&c_id)).unwrap();
    assert!(
        topo.connects("d", "c", 80),
        "c is no longer a known, isolated pod"
    );
    let (c_id, c) = topo.pod("c");
    rt.block_on(e.pod_added(&c_id, c)).unwrap();
    assert!(!topo.connects("d", "c", 80), "c is isolated again");
    assert!(topo.connects("a", "c", 80));
    assert_eq!(rt.block_on(e.world()).pods.len(), 3);
}

#[test]
fn failed_transaction_leaves_the_old_rules_in_force() {
    require_root!();
    let topo = Topo::new(&["a", "c"]);
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("fail");
    let script = dir.path().join("nft");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e {} ]; then echo 'simulated failure' >&2; exit 1; fi\nexec nft \"$@\"\n",
            flag.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let table = Table::new(&script);
    let rt = rt();
    let e = &table.enforcer;
    rt.block_on(e.replace_all(&policies(DENY_C), topo.all_pods(), vec![]))
        .unwrap();
    assert!(!topo.connects("a", "c", 80));

    fs::write(&flag, "").unwrap();
    let err = rt.block_on(e.set_policies(&Loaded::default())).unwrap_err();
    assert!(matches!(err, EnforceError::Transaction { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("still in force") && text.contains("simulated failure"),
        "{text}"
    );
    assert!(!topo.connects("a", "c", 80), "the old rules stay");
    assert_eq!(
        rt.block_on(e.world()).policies.len(),
        1,
        "the old state stays"
    );

    fs::remove_file(&flag).unwrap();
    rt.block_on(e.set_policies(&Loaded::default())).unwrap();
    assert!(topo.connects("a", "c", 80));
}

#[test]
fn rules_live_outside_the_pod_and_are_rebuilt() {
    require_root!();
    let topo = Topo::new(&["a", "c"]);
    let table = Table::new(Path::new("nft"));
    let rt = rt();
    let e = &table.enforcer;
    rt.block_on(e.replace_all(&policies(DENY_C), topo.all_pods(), vec![]))
        .unwrap();
    assert!(!topo.connects("a", "c", 80));

    // A pod with CAP_NET_ADMIN flushing its own ruleset changes nothing.
    sh(&[
        "ip",
        "netns",
        "exec",
        &topo.netns("c"),
        "nft",
        "flush",
        "ruleset",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &topo.netns("a"),
        "nft",
        "flush",
        "ruleset",
    ]);
    assert!(!topo.connects("a", "c", 80));

    // Someone deletes the table: the next replace_all restores enforcement.
    sh(&["nft", "delete", "table", "inet", &table.name]);
    assert!(topo.connects("a", "c", 80));
    rt.block_on(e.replace_all(&policies(DENY_C), topo.all_pods(), vec![]))
        .unwrap();
    assert!(!topo.connects("a", "c", 80));

    // Deleted again: an incremental update notices and rebuilds the whole table.
    sh(&["nft", "delete", "table", "inet", &table.name]);
    let (id, c) = topo.pod("c");
    rt.block_on(e.pod_removed(&id)).unwrap();
    assert!(topo.connects("a", "c", 80), "c is not a known pod");
    rt.block_on(e.pod_added(&id, c)).unwrap();
    assert!(!topo.connects("a", "c", 80));
    sh(&["nft", "delete", "table", "inet", &table.name]);
    let (d_id, d) = topo.pod("c");
    let mut d = d;
    d.name = "c2".into();
    d.ips = vec![IpAddr::V4(topo.subnet.ip(200))];
    rt.block_on(e.pod_added(&format!("{d_id}-2"), d)).unwrap();
    assert!(
        !topo.connects("a", "c", 80),
        "rebuilt on the failed element update"
    );
}
