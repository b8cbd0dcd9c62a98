//! Dial a TCP port on the loopback of another network namespace (port-forward).
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole
//! life. So a fresh OS thread (never a tokio worker: `setns` changes the calling thread for
//! good) enters the pod's namespace, creates and connects the socket, and hands it back; the
//! thread then exits and the connected socket keeps working from any thread.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// Why a dial inside a network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The namespace file (a pin under `/run/netns`) cannot be opened.
    #[error("opening network namespace {path}: {source}")]
    Open {
        /// The namespace path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `setns(CLONE_NEWNET)` failed (not a network namespace, or no privilege).
    #[error("entering network namespace {path}: {source}")]
    Enter {
        /// The namespace path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// Neither 127.0.0.1 nor ::1 accepted the connection.
    #[error("connecting to port {port} on the loopback of network namespace {path}: {source}")]
    Connect {
        /// The port dialled.
        port: u16,
        /// The namespace path.
        path: PathBuf,
        /// The IPv4 attempt's error (the IPv6 one is logged).
        #[source]
        source: io::Error,
    },
    /// The dialling thread could not be started.
    #[error("starting the dial thread for network namespace {path}: {source}")]
    Thread {
        /// The namespace path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The dialling thread panicked.
    #[error("the dial thread for network namespace {path} panicked")]
    Panicked {
        /// The namespace path.
        path: PathBuf,
    },
}

/// Connects to `port` on the loopback of the network namespace at `netns` (127.0.0.1, then
/// ::1 when IPv4 refused), each attempt bounded by `timeout`, and returns the connected
/// (blocking) socket.
///
/// Blocks the calling thread until the dial ends; async callers use `spawn_blocking`. The
/// calling thread's namespaces never change.
///
/// # Errors
/// [`DialError`] naming the namespace (and the port for a failed connection).
pub fn dial_tcp_in(netns: &Path, port: u16, timeout: Duration) -> Result<TcpStream, DialError> {
    let ns = File::open(netns).map_err(|source| DialError::Open {
        path: netns.to_path_buf(),
        source,
    })?;
    let path = netns.to_path_buf();
    let worker = thread::Builder::new()
        .name("sluice-dial".into())
        .spawn(move || -> Result<TcpStream, DialError> {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| DialError::Enter {
                path: path.clone(),
                source,
            })?;
            connect_loopback(port, timeout).map_err(|source| DialError::Connect {
                port,
                path,
                source,
            })
        })
        .map_err(|source| DialError::Thread {
            path: netns.to_path_buf(),
            source,
        })?;
    worker.join().map_err(|_| DialError::Panicked {
        path: netns.to_path_buf(),
    })?
}

/// 127.0.0.1, then ::1 when nothing listens on IPv4 (the pod may serve only IPv6).
fn connect_loopback(port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    match TcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
            TcpStream::connect_timeout(&v6, timeout).map_err(|e6| {
                tracing::debug!(port, error = %e6, "dialling [::1] after 127.0.0.1 refused");
                e
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// A named netns (`ip netns add`) with `lo` up, deleted on drop (also after a panic).
    struct TestNetns {
        name: String,
    }

    impl TestNetns {
        fn new() -> Self {
            assert!(
                nix::unistd::geteuid().is_root(),
                "the dial kernel tests need root (ip netns add, setns)"
            );
            let name = format!(
                "sluice-dialtest-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let ns = Self { name };
            ip(&["netns", "add", &ns.name]);
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
            ns
        }

        fn path(&self) -> PathBuf {
            Path::new("/run/netns").join(&self.name)
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn ip(args: &[&str]) {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}: {st}");
    }

    /// A listener bound to 127.0.0.1 inside `netns` (created on a thread that entered it).
    fn listen_in(netns: &Path) -> TcpListener {
        let ns = File::open(netns).unwrap();
        thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn dials_a_listener_inside_the_namespace_only() {
        let ns = TestNetns::new();
        let listener = listen_in(&ns.path());
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .unwrap();
        });
        let mut s = dial_tcp_in(&ns.path(), port, Duration::from_secs(5)).unwrap();
        s.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"PING");
        server.join().unwrap();
        // The calling thread stayed in its own namespace: the port is not open here.
        let here = TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            Duration::from_secs(1),
        );
        assert!(here.is_err(), "port {port} answered outside the namespace");
    }

    #[test]
    fn closed_port_is_a_refused_connection_naming_port_and_namespace() {
        let ns = TestNetns::new();
        // Bound and closed again: nothing listens on it in the namespace.
        let port = listen_in(&ns.path()).local_addr().unwrap().port();
        let err = dial_tcp_in(&ns.path(), port, Duration::from_secs(5)).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, DialError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
        assert!(
            msg.contains(&format!("port {port}")) && msg.contains(&ns.name),
            "{msg}"
        );
    }

    #[test]
    fn missing_namespace_is_an_open_error() {
        let err = dial_tcp_in(
            Path::new("/run/netns/sluice-dialtest-missing"),
            80,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, DialError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("sluice-dialtest-missing"));
    }
}
