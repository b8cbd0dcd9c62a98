//! Test support: a throwaway "node" network namespace with pods behind routed veths, an
//! "outside" machine on a second veth, small python servers/clients, and Drop guards.
//!
//! Topology (all names unique per process and test; interface names live inside the
//! namespaces, so they can be fixed):
//!
//! ```text
//!  ext netns            node netns                                 pod<i> netns
//!  eth0 198.51.100.100  node0 198.51.100.1, .2, fd5e::1/64
//!       fd5e::100       veth<i> 10.88.<i>.1/24, fd88:<i>::1/64  ---  eth0 10.88.<i>.2, fd88:<i>::2
//! ```
//!
//! Every pod is on its own routed link (like the `ptp` CNI plugin), so pod-to-pod traffic
//! through a host port crosses the node's IP stack.
#![allow(clippy::unwrap_used, clippy::print_stderr, dead_code)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use hostport::{LocalhostAccess, NftConfig, NftHostPortManager, PortMapping, Protocol};

pub const NODE_IP: &str = "198.51.100.1";
pub const NODE_IP2: &str = "198.51.100.2";
pub const NODE_IP6: &str = "fd5e::1";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails loudly (never skips) when not root: these tests need the kernel.
pub fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "hostport kernel tests need root (netns, veth, nftables); run them as root"
    );
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ns_sh(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
    /// The node-side interface.
    pub host_if: String,
}

impl Pod {
    pub fn ips(&self) -> Vec<IpAddr> {
        vec![self.v4, self.v6]
    }
}

/// The throwaway node. Dropping it deletes every namespace it created (and with them the
/// veths, routes and nftables tables inside) after killing what still runs there.
#[derive(Debug)]
pub struct Node {
    pub ns: String,
    pub ext: String,
    pub pods: Vec<Pod>,
    created: Vec<String>,
}

impl Node {
    pub fn new(npods: usize) -> Node {
        require_root();
        let id = format!(
            "hpt{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut node = Node {
            ns: format!("{id}-node"),
            ext: format!("{id}-ext"),
            pods: Vec::new(),
            created: Vec::new(),
        };
        for ns in [node.ns.clone(), node.ext.clone()] {
            sh(&["ip", "netns", "add", &ns]);
            node.created.push(ns);
        }
        let n = node.ns.clone();
        let x = node.ext.clone();
        ns_sh(&n, &["ip", "link", "set", "lo", "up"]);
        ns_sh(&x, &["ip", "link", "set", "lo", "up"]);
        ns_sh(
            &n,
            &[
                "ip", "link", "add", "node0", "type", "veth", "peer", "name", "eth0", "netns", &x,
            ],
        );
        ns_sh(&n, &["ip", "link", "set", "node0", "up"]);
        ns_sh(
            &n,
            &["ip", "addr", "add", "198.51.100.1/24", "dev", "node0"],
        );
        ns_sh(
            &n,
            &["ip", "addr", "add", "198.51.100.2/24", "dev", "node0"],
        );
        ns_sh(
            &n,
            &["ip", "addr", "add", "fd5e::1/64", "dev", "node0", "nodad"],
        );
        ns_sh(&x, &["ip", "link", "set", "eth0", "up"]);
        ns_sh(
            &x,
            &["ip", "addr", "add", "198.51.100.100/24", "dev", "eth0"],
        );
        ns_sh(
            &x,
            &["ip", "addr", "add", "fd5e::100/64", "dev", "eth0", "nodad"],
        );
        ns_sh(
            &n,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        for i in 1..=npods {
            let p = format!("{id}-p{i}");
            sh(&["ip", "netns", "add", &p]);
            node.created.push(p.clone());
            let host_if = format!("veth{i}");
            ns_sh(
                &n,
                &[
                    "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
                    &p,
                ],
            );
            ns_sh(&n, &["ip", "link", "set", &host_if, "up"]);
            ns_sh(
                &n,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.88.{i}.1/24"),
                    "dev",
                    &host_if,
                ],
            );
            ns_sh(
                &n,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("fd88:{i}::1/64"),
                    "dev",
                    &host_if,
                    "nodad",
                ],
            );
            ns_sh(&p, &["ip", "link", "set", "lo", "up"]);
            ns_sh(&p, &["ip", "link", "set", "eth0", "up"]);
            ns_sh(
                &p,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.88.{i}.2/24"),
                    "dev",
                    "eth0",
                ],
            );
            ns_sh(
                &p,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("fd88:{i}::2/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            ns_sh(
                &p,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.88.{i}.1"),
                ],
            );
            ns_sh(
                &p,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("fd88:{i}::1"),
                ],
            );
            node.pods.push(Pod {
                ns: p,
                v4: format!("10.88.{i}.2").parse().unwrap(),
                v6: format!("fd88:{i}::2").parse().unwrap(),
                host_if,
            });
        }
        node
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns))
    }

    pub fn config(&self) -> NftConfig {
        NftConfig {
            netns: Some(self.path()),
            localhost: LocalhostAccess::PodRoute,
            ..NftConfig::default()
        }
    }

    pub fn manager(&self) -> NftHostPortManager {
        NftHostPortManager::new(self.config()).unwrap()
    }

    /// Runs a command inside the node namespace and returns stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        ns_sh(&self.ns, args)
    }

    pub fn nft_list(&self, family: &str, table: &str) -> String {
        self.exec(&["nft", "list", "table", family, table])
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let ok = Command::new("ip")
                .args(["netns", "del", ns])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("warning: could not delete netns {ns}");
            }
        }
    }
}

const SERVER: &str = r#"
import socket, sys, threading
port, label = int(sys.argv[1]), sys.argv[2]
def tcp(fam, s):
    while True:
        c, a = s.accept()
        c.sendall(("hello from %s, you are %s\n" % (label, a[0])).encode()); c.close()
def udp(fam, s):
    while True:
        d, a = s.recvfrom(2048); s.sendto(d + (" from %s" % label).encode(), a)
for fam, any_ in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    t = socket.socket(fam, socket.SOCK_STREAM); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    t.bind((any_, port)); t.listen(64); u.bind((any_, port))
    threading.Thread(target=tcp, args=(fam, t), daemon=True).start()
    threading.Thread(target=udp, args=(fam, u), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

const CLIENT: &str = r#"
import socket, sys
host, port, proto, sport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if proto == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3); s.connect((host, port))
        print(s.recv(200).decode().strip())
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2)
        if sport: s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
        s.sendto(b"ping", (host, port)); print(s.recvfrom(200)[0].decode())
except Exception as e:
    print("ERR " + type(e).__name__); sys.exit(1)
"#;

/// A TCP+UDP echo server on `port` (v4 and v6) in a pod; killed on drop.
#[derive(Debug)]
pub struct Server(Child);

impl Server {
    pub fn start(ns: &str, port: u16, label: &str) -> Server {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "python3",
                "-c",
                SERVER,
                &port.to_string(),
                label,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3 server");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "server in {ns} did not start");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects from namespace `ns` to `host:port`; `Ok(reply)` or `Err("ERR <Exception>")`.
pub fn connect(ns: &str, host: &str, port: u16, proto: &str) -> Result<String, String> {
    connect_from(ns, host, port, proto, 0)
}

/// Like [`connect`], from a fixed UDP source port (0: any).
pub fn connect_from(
    ns: &str,
    host: &str,
    port: u16,
    proto: &str,
    sport: u16,
) -> Result<String, String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "python3",
            "-c",
            CLIENT,
            host,
            &port.to_string(),
            proto,
            &sport.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("spawn python3 client");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

pub fn tcp(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp,
        container_port,
        host_port,
        host_ip: None,
    }
}

pub fn udp(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        protocol: Protocol::Udp,
        ..tcp(host_port, container_port)
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
