//! The streaming server's edge: exec, attach and port-forward on the client's byte streams.
//!
//! Exec and attach resolve the container (full id or unique prefix), require it to be running
//! and hand the streams to the OCI runtime: exec runs the command with the container's process
//! settings (user, env, cwd, capabilities from its `config.json`) and `tty` as asked; attach
//! goes through the monitor and passes stdin EOF on only for `stdin_once` containers.
//! Port-forward dials the port on the pod's loopback from a socket opened in the pod's network
//! namespace (for a host-network pod, on the host's loopback, as CRI-O does).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use streaming::runtime::BoxFuture;
use streaming::{AttachRequest, ExecRequest, StreamError, StreamIo, StreamRuntime, TermSize};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{ErrorKind, PodError, PodManager, PodState};

/// Bound on one connection attempt of a port-forward.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

fn stream_err(e: PodError) -> StreamError {
    let msg = crate::error_chain(&e);
    match e.kind() {
        ErrorKind::NotFound => StreamError::NotFound(msg),
        ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition | ErrorKind::AlreadyExists => {
            StreamError::FailedPrecondition(msg)
        }
        ErrorKind::Internal => StreamError::Internal(msg),
    }
}

fn runtime_stream_err(id: &str, e: oci::RuntimeError) -> StreamError {
    match e {
        oci::RuntimeError::NotRunning(_) => {
            StreamError::FailedPrecondition(format!("container {id} is not running"))
        }
        oci::RuntimeError::NotFound(_) => {
            StreamError::NotFound(format!("container {id} does not exist in the runtime"))
        }
        e => StreamError::Internal(crate::error_chain(&e)),
    }
}

/// The streaming server's streams as the OCI runtime takes them, plus the task that forwards
/// the client's terminal sizes (it ends when either side closes).
fn process_io(io: StreamIo) -> (oci::ProcessIo, impl Future<Output = ()> + Send) {
    let StreamIo {
        tty,
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    let (resize, forward) = match resize {
        Some(mut from) => {
            let (tx, rx) = mpsc::channel(8);
            // A size the client sent already goes over at once (the latest is what counts), so
            // the process starts with it.
            let mut latest = None;
            while let Ok(size) = from.try_recv() {
                latest = Some(size);
            }
            if let Some(TermSize { width, height }) = latest {
                let _ = tx.try_send(oci::WindowSize { width, height });
            }
            let forward = async move {
                while let Some(TermSize { width, height }) = from.recv().await {
                    if tx.send(oci::WindowSize { width, height }).await.is_err() {
                        break;
                    }
                }
            };
            (Some(rx), Some(forward))
        }
        None => (None, None),
    };
    let io = oci::ProcessIo {
        tty,
        stdin,
        stdout,
        stderr,
        resize,
    };
    (io, async move {
        if let Some(f) = forward {
            f.await;
        }
    })
}

/// Runs `main` to completion while also driving `side` (which may finish earlier).
async fn beside<T>(main: impl Future<Output = T>, side: impl Future<Output = ()>) -> T {
    tokio::pin!(main, side);
    let mut side_done = false;
    loop {
        tokio::select! {
            v = &mut main => return v,
            () = &mut side, if !side_done => side_done = true,
        }
    }
}

impl PodManager {
    async fn stream_exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, StreamError> {
        let (rec, spec) = self
            .running_container(&req.container_id, "exec in the container")
            .await
            .map_err(stream_err)?;
        let mut process = spec.process;
        process.args = req.cmd.clone();
        process.terminal = req.tty;
        let (io, forward) = process_io(io);
        let exec = self.deps.runtime.exec(&rec.id, &rec.bundle, &process, io);
        let code = beside(exec, forward)
            .await
            .map_err(|e| runtime_stream_err(&rec.id, e))?;
        tracing::info!(container_id = %rec.id, exit_code = code, "exec finished");
        Ok(code)
    }

    async fn stream_attach(&self, req: &AttachRequest, io: StreamIo) -> Result<(), StreamError> {
        let (rec, _) = self
            .running_container(&req.container_id, "attaching to the container")
            .await
            .map_err(stream_err)?;
        if req.stdin && !rec.config.stdin {
            return Err(StreamError::FailedPrecondition(format!(
                "container {} was not created with stdin; attach without stdin",
                rec.id
            )));
        }
        let (io, forward) = process_io(io);
        let attach = self
            .deps
            .runtime
            .attach(&rec.id, &rec.bundle, io, rec.config.stdin_once);
        beside(attach, forward)
            .await
            .map_err(|e| runtime_stream_err(&rec.id, e))
    }

    async fn stream_port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, StreamError> {
        let pod = self.status(pod_sandbox_id).map_err(stream_err)?;
        if pod.state != PodState::Ready {
            return Err(StreamError::FailedPrecondition(format!(
                "pod sandbox {} is not ready; cannot forward port {port}",
                pod.id
            )));
        }
        if pod.config.host_network() {
            return dial_host_loopback(&pod.id, port).await;
        }
        let Some(netns) = pod.netns.clone() else {
            return Err(StreamError::FailedPrecondition(format!(
                "pod sandbox {} has no network namespace; cannot forward port {port}",
                pod.id
            )));
        };
        let dialled =
            tokio::task::spawn_blocking(move || nsmgr::dial_tcp_in(&netns, port, DIAL_TIMEOUT))
                .await
                .map_err(|e| {
                    StreamError::Internal(format!("port-forward to pod sandbox {}: {e}", pod.id))
                })?;
        let std = dialled.map_err(|e| {
            StreamError::Internal(format!(
                "port-forward to pod sandbox {}: {}",
                pod.id,
                crate::error_chain(&e)
            ))
        })?;
        to_tokio(&pod.id, std)
    }
}

fn to_tokio(pod_id: &str, s: std::net::TcpStream) -> Result<tokio::net::TcpStream, StreamError> {
    s.set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(s))
        .map_err(|e| StreamError::Internal(format!("port-forward to pod sandbox {pod_id}: {e}")))
}

/// A host-network pod's port is the host's: 127.0.0.1, then ::1 when refused.
async fn dial_host_loopback(pod_id: &str, port: u16) -> Result<tokio::net::TcpStream, StreamError> {
    let dial = |ip: IpAddr| async move {
        match tokio::time::timeout(
            DIAL_TIMEOUT,
            tokio::net::TcpStream::connect(SocketAddr::new(ip, port)),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    };
    let v4 = match dial(IpAddr::V4(Ipv4Addr::LOCALHOST)).await {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    if v4.kind() == std::io::ErrorKind::ConnectionRefused
        && let Ok(s) = dial(IpAddr::V6(Ipv6Addr::LOCALHOST)).await
    {
        return Ok(s);
    }
    Err(StreamError::Internal(format!(
        "port-forward to pod sandbox {pod_id} (host network): connecting to port {port} on the host's loopback: {v4}"
    )))
}

impl StreamRuntime for PodManager {
    fn exec<'a>(
        &'a self,
        req: &'a ExecRequest,
        io: StreamIo,
    ) -> BoxFuture<'a, Result<i32, StreamError>> {
        let span = tracing::info_span!("exec", container_id = %req.container_id, tty = req.tty);
        Box::pin(self.stream_exec(req, io).instrument(span))
    }

    fn attach<'a>(
        &'a self,
        req: &'a AttachRequest,
        io: StreamIo,
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        let span = tracing::info_span!("attach", container_id = %req.container_id, tty = req.tty);
        Box::pin(self.stream_attach(req, io).instrument(span))
    }

    fn port_forward<'a>(
        &'a self,
        pod_sandbox_id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream, StreamError>> {
        let span = tracing::info_span!("port_forward", pod_id = %pod_sandbox_id, port);
        Box::pin(
            self.stream_port_forward(pod_sandbox_id, port)
                .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::{Deps, NsMode, PodMetadata, PodsConfig, SandboxConfig};

    /// A pod manager over the fakes (containers get a real overlay rootfs: root, as the
    /// lifecycle tests).
    struct World {
        dir: tempfile::TempDir,
        rt: Arc<oci::fake::FakeRuntime>,
        m: PodManager,
    }

    impl World {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let layer = dir.path().join("layer");
            std::fs::create_dir_all(layer.join("etc")).unwrap();
            let rt = Arc::new(oci::fake::FakeRuntime::new());
            let mut cfg = PodsConfig::new(&dir.path().join("root"), &dir.path().join("run"));
            cfg.network_ready_timeout = Duration::from_millis(300);
            cfg.host_resolv_conf = dir.path().join("no-resolv.conf");
            let m = PodManager::new(
                cfg,
                Deps {
                    namespaces: Arc::new(nsmgr::fake::FakeNamespaceManager::new()),
                    network: Arc::new(crate::fake::FakeNetworking::default()),
                    hostports: Arc::new(hostport::fake::FakeHostPortManager::default()),
                    cgroups: Arc::new(crate::fake::FakeCgroups::default()),
                    namespace_alive: |_| true,
                    metrics: crate::PodMetrics::default(),
                    runtime: rt.clone(),
                    images: Arc::new(crate::fake::FakeImages::new(layer)),
                    host: Arc::new(
                        oci::spec::Host::detect(oci::spec::Host::default_capability_names())
                            .unwrap(),
                    ),
                    hierarchies: Arc::new(oci::stats::Hierarchies::discover().unwrap()),
                },
            )
            .unwrap();
            Self { dir, rt, m }
        }

        async fn pod(&self, name: &str, network: NsMode) -> crate::PodRecord {
            self.m
                .run(SandboxConfig {
                    metadata: PodMetadata {
                        name: name.into(),
                        namespace: "default".into(),
                        uid: format!("uid-{name}"),
                        attempt: 0,
                    },
                    network,
                    pid: NsMode::Container,
                    ..Default::default()
                })
                .await
                .unwrap()
        }

        async fn container(&self, pod: &str, name: &str, stdin: bool) -> crate::ContainerRecord {
            let c = crate::ContainerConfig {
                name: name.into(),
                image: "busybox".into(),
                command: vec!["sh".into()],
                labels: BTreeMap::new(),
                pid: NsMode::Container,
                stdin,
                stdin_once: stdin,
                ..Default::default()
            };
            self.m.create_container(pod, c).await.unwrap()
        }
    }

    impl Drop for World {
        /// Detaches the rootfs overlays under the temp dir.
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

    fn io(
        tty: bool,
        stdin: &'static [u8],
    ) -> (StreamIo, tokio::io::DuplexStream, mpsc::Sender<TermSize>) {
        let (out_w, out_r) = tokio::io::duplex(4096);
        let (tx, rx) = mpsc::channel(4);
        let io = StreamIo {
            tty,
            stdin: Some(Box::new(stdin)),
            stdout: Some(Box::new(out_w)),
            stderr: None,
            resize: tty.then_some(rx),
        };
        (io, out_r, tx)
    }

    fn exec_req(id: &str, cmd: &[&str], tty: bool) -> ExecRequest {
        ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin: true,
            stdout: true,
            stderr: !tty,
        }
    }

    #[tokio::test]
    async fn exec_runs_the_command_with_the_streams_and_forwards_resizes() {
        let w = World::new();
        let pod = w.pod("web", NsMode::Pod).await;
        let c = w.container(&pod.id, "app", false).await;

        // Not running yet: a precondition naming the container.
        let (i, _, _) = io(false, b"");
        let err =
            w.m.exec(&exec_req(&c.id, &["ls"], false), i)
                .await
                .unwrap_err();
        assert!(
            matches!(&err, StreamError::FailedPrecondition(m) if m.contains(&c.id)),
            "{err:?}"
        );

        w.m.start_container(&c.id).await.unwrap();
        let (i, mut out, tx) = io(true, b"typed");
        tx.send(TermSize {
            width: 100,
            height: 30,
        })
        .await
        .unwrap();
        drop(tx);
        // A unique prefix is enough.
        let code =
            w.m.exec(&exec_req(&c.id[..12], &["echo", "hi"], true), i)
                .await
                .unwrap();
        assert_eq!(code, 0);
        let mut got = String::new();
        out.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "echo hi\ntyped");
        assert!(w.rt.calls().contains(&format!("exec {}", c.id)));
        assert_eq!(
            w.rt.resizes(),
            vec![oci::WindowSize {
                width: 100,
                height: 30
            }]
        );

        let (i, _, _) = io(false, b"");
        let err =
            w.m.exec(&exec_req("0000000000", &["ls"], false), i)
                .await
                .unwrap_err();
        assert!(
            matches!(&err, StreamError::NotFound(m) if m.contains("0000000000")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn attach_needs_a_running_container_created_with_stdin_for_stdin() {
        let w = World::new();
        let pod = w.pod("web", NsMode::Pod).await;
        let plain = w.container(&pod.id, "plain", false).await;
        let interactive = w.container(&pod.id, "shell", true).await;
        let req = |id: &str| AttachRequest {
            container_id: id.into(),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: false,
        };
        let (i, _, _) = io(false, b"x");
        let err = w.m.attach(&req(&interactive.id), i).await.unwrap_err();
        assert!(
            matches!(&err, StreamError::FailedPrecondition(m) if m.contains(&interactive.id)),
            "{err:?}"
        );
        w.m.start_container(&plain.id).await.unwrap();
        w.m.start_container(&interactive.id).await.unwrap();
        let (i, _, _) = io(false, b"x");
        let err = w.m.attach(&req(&plain.id), i).await.unwrap_err();
        assert!(
            matches!(&err, StreamError::FailedPrecondition(m) if m.contains("stdin")),
            "{err:?}"
        );
        let (i, mut out, _) = io(false, b"hello");
        w.m.attach(&req(&interactive.id), i).await.unwrap();
        let mut got = String::new();
        out.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
    }

    #[tokio::test]
    async fn port_forward_checks_the_pod_and_dials_host_network_pods_on_the_host() {
        let w = World::new();
        let err = w.m.port_forward("ffffffff", 80).await.unwrap_err();
        assert!(matches!(err, StreamError::NotFound(_)), "{err:?}");

        // A host-network pod's port is the host's loopback.
        let host = w.pod("host", NsMode::Node).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        let s = w.m.port_forward(&host.id, port).await.unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
        accept.await.unwrap().unwrap();

        // The fake's namespace pin is no namespace: the error names the pod and the cause.
        let pod = w.pod("web", NsMode::Pod).await;
        let err = w.m.port_forward(&pod.id, 80).await.unwrap_err();
        assert!(
            matches!(&err, StreamError::Internal(m) if m.contains(&pod.id) && m.contains("network namespace")),
            "{err:?}"
        );

        w.m.stop(&pod.id).await.unwrap();
        let err = w.m.port_forward(&pod.id, 80).await.unwrap_err();
        assert!(
            matches!(&err, StreamError::FailedPrecondition(m) if m.contains(&pod.id)),
            "{err:?}"
        );
    }
}
