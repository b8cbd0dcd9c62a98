//! Pod-network fixtures for end-to-end tests: a CNI bridge network of the test's own (unique
//! bridge name, a /24 reserved with a file lock, host-local leases in the test's temp dir),
//! small TCP servers inside pod network namespaces, and probes from one namespace to another.
//! Everything is removed on drop, also when the test panics.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{Layout, unique};

const SUBNET_LOCKS: &str = "/tmp/sluice-e2e-subnets";

/// A /24 under 10.222.0.0/16 held for the life of the value (flock on a per-subnet file), so
/// parallel tests never share a subnet.
#[derive(Debug)]
pub struct Subnet {
    pub third_octet: u8,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl Subnet {
    pub fn reserve() -> Self {
        fs::create_dir_all(SUBNET_LOCKS).expect("subnet lock dir");
        let start = (std::process::id() % 250) as u8;
        for i in 0..=255u16 {
            let octet = start.wrapping_add(i as u8);
            let f = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(Path::new(SUBNET_LOCKS).join(format!("{octet}.lock")))
                .expect("subnet lock file");
            if let Ok(lock) =
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                return Self {
                    third_octet: octet,
                    _lock: lock,
                };
            }
        }
        panic!("no free test subnet under 10.222.0.0/16");
    }

    pub fn cidr(&self) -> String {
        format!("10.222.{}.0/24", self.third_octet)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 222, self.third_octet, 1)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 222, self.third_octet])
    }
}

/// A bridge + host-local + loopback CNI network written into a layout's CNI dir.
#[derive(Debug)]
pub struct BridgeNet {
    pub bridge: String,
    pub subnet: Subnet,
    /// host-local's lease directory (`dataDir`).
    pub lease_dir: PathBuf,
    pub name: String,
}

impl BridgeNet {
    /// Writes `10-<name>.conflist` into `layout.cni_dir`; `extra_plugins` are appended to the
    /// plugin list (JSON objects), e.g. a failing test plugin.
    pub fn install(layout: &Layout, extra_plugins: &[&str]) -> Self {
        let subnet = Subnet::reserve();
        let bridge = unique("sle");
        assert!(bridge.len() <= 15, "bridge name {bridge} too long");
        let lease_dir = layout.dir.path().join("leases");
        let name = format!("e2e-{bridge}");
        let mut plugins = vec![
            serde_json::json!({
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local", "dataDir": lease_dir,
                    "ranges": [[{"subnet": subnet.cidr()}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            }),
            serde_json::json!({"type": "loopback"}),
        ];
        for p in extra_plugins {
            plugins.push(serde_json::from_str(p).expect("extra plugin JSON"));
        }
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
        fs::write(
            layout.cni_dir.join(format!("10-{name}.conflist")),
            serde_json::to_vec_pretty(&conf).expect("json"),
        )
        .expect("write conflist");
        Self {
            bridge,
            subnet,
            lease_dir,
            name,
        }
    }

    /// host-local lease files (one per allocated address).
    pub fn leases(&self) -> Vec<String> {
        let dir = self.lease_dir.join(&self.name);
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect()
    }

    /// veth ends enslaved to the bridge.
    pub fn ports(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_string())
            })
            .collect()
    }
}

impl Drop for BridgeNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A TCP server inside a network namespace that answers every connection with `reply\n`.
#[derive(Debug)]
pub struct NsServer {
    child: Child,
}

const SERVER_PY: &str = r#"
import socket, sys
port, reply = int(sys.argv[1]), sys.argv[2].encode() + b"\n"
if len(sys.argv) > 3 and sys.argv[3] == "udp":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    print("ready", flush=True)
    while True:
        _, addr = s.recvfrom(2048)
        s.sendto(reply, addr)
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(reply)
    finally:
        c.close()
"#;

impl NsServer {
    /// Starts the server in the namespace pinned at `netns` and waits until it listens.
    pub fn start(netns: &Path, port: u16, reply: &str) -> Self {
        Self::start_proto(netns, port, reply, "tcp")
    }

    /// Like [`NsServer::start`] for `proto` "tcp" or "udp" (UDP answers every datagram).
    pub fn start_proto(netns: &Path, port: u16, reply: &str, proto: &str) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["python3", "-c", SERVER_PY, &port.to_string(), reply, proto])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let mut out = child.stdout.take().expect("stdout");
        // python prints "ready" after listen(); if it dies first, the read sees EOF.
        let mut buf = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut buf).expect("server ready line");
        assert_eq!(&buf, b"ready\n");
        Self { child }
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CLIENT_PY: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.recv(100).decode().strip())
"#;

/// Connects from inside `netns` (or from the host when `None`) to `ip:port` and returns the
/// first line the server sent, or the client's error text.
pub fn probe(netns: Option<&Path>, ip: &str, port: u16) -> Result<String, String> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("python3");
            c
        }
        None => Command::new("python3"),
    };
    let out = cmd
        .args(["-c", CLIENT_PY, ip, &port.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run probe");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

const REACH_PY: &str = r#"
import socket, sys
ip, port, proto, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.sendto(b"ping", (ip, port))
        print(s.recvfrom(100)[0].decode().strip())
    else:
        s = socket.create_connection((ip, port), timeout=timeout)
        s.settimeout(timeout)
        print(s.recv(100).decode().strip())
except Exception as e:
    print("unreachable:", e)
"#;

/// Whether a `proto` ("tcp"/"udp") exchange from `netns` (the host when `None`) to
/// `ip:port` gets an answer within `timeout_ms` (a dropped packet shows as no answer).
/// Returns the answer line, or `None`.
pub fn reach(
    netns: Option<&Path>,
    ip: &str,
    port: u16,
    proto: &str,
    timeout_ms: u64,
) -> Option<String> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("python3");
            c
        }
        None => Command::new("python3"),
    };
    let out = cmd
        .args([
            "-c",
            REACH_PY,
            ip,
            &port.to_string(),
            proto,
            &format!("{}", timeout_ms as f64 / 1000.0),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run reach probe");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!line.starts_with("unreachable") && !line.is_empty()).then_some(line)
}

/// IPv4 addresses configured on `eth0` inside the namespace.
pub fn ns_ipv4(netns: &Path) -> Vec<IpAddr> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-j", "-4", "addr", "show", "dev", "eth0"])
        .output()
        .expect("ip addr");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// A free TCP port on 127.0.0.1 right now (the kernel's choice), for a host port.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
