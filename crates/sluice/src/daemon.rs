//! Privileged setup and serving: state directories, the single-instance lock, the CRI socket,
//! the tokio runtime, and a bounded graceful drain on SIGTERM/SIGINT.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{Mode, umask};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;

/// Socket mode: root and the socket's group may talk CRI; nobody else (CRI is node-root power).
const SOCKET_MODE: u32 = 0o660;

/// The claimed CRI endpoint: the lock that makes this process the socket's only owner, and the
/// bound listener. Dropping it (after serving) removes the socket and the lock file.
struct Endpoint {
    socket: PathBuf,
    lock_path: PathBuf,
    _lock: Flock<File>,
    listener: Option<StdUnixListener>,
}

impl Endpoint {
    /// Takes `<socket>.lock` (non-blocking flock: a live sluice holds it for its whole life and
    /// the kernel drops it when that process dies, even by `kill -9`), then replaces a stale
    /// socket file and binds.
    fn claim(socket: &Path) -> anyhow::Result<Self> {
        let dir = socket
            .parent()
            .context("server.listen has no parent directory")?;
        create_dir(dir, 0o711)?;

        let lock_path = PathBuf::from(format!("{}.lock", socket.display()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&lock_path)
            .with_context(|| format!("opening lock file {}", lock_path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = fs::read_to_string(&lock_path).unwrap_or_default();
                bail!(
                    "another sluice (pid {}) is already serving {}; refusing to start a second instance",
                    holder.trim(),
                    socket.display()
                );
            }
            Err((_, e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        };
        lock.set_len(0)
            .and_then(|()| write!(*lock, "{}", std::process::id()))
            .with_context(|| format!("writing pid to {}", lock_path.display()))?;

        // We hold the lock, so whatever socket file exists is left over from a crash.
        match fs::symlink_metadata(socket) {
            Ok(m) if m.file_type().is_socket() => {
                tracing::warn!(socket = %socket.display(), "replacing stale socket left by a previous sluice");
                fs::remove_file(socket)
                    .with_context(|| format!("removing stale socket {}", socket.display()))?;
            }
            Ok(_) => bail!(
                "{} exists and is not a socket; refusing to replace it (check server.listen)",
                socket.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", socket.display())),
        }

        // Bind with a umask that already yields 0660, so the socket is never briefly
        // world-connectable; we are still single-threaded here, so the process-wide umask is
        // safe to flip. chmod afterwards makes the mode exact whatever the inherited umask.
        let old = umask(Mode::from_bits_truncate(0o117));
        let bound = StdUnixListener::bind(socket);
        umask(old);
        let listener = bound.with_context(|| format!("binding {}", socket.display()))?;
        fs::set_permissions(socket, fs::Permissions::from_mode(SOCKET_MODE))
            .with_context(|| format!("chmod {}", socket.display()))?;
        listener
            .set_nonblocking(true)
            .context("making the CRI socket non-blocking")?;

        Ok(Self {
            socket: socket.to_path_buf(),
            lock_path,
            _lock: lock,
            listener: Some(listener),
        })
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Socket first: once it is gone no client can reach a dying daemon. The lock file goes
        // while we still hold the lock, so no new instance can be racing on this path.
        for path in [&self.socket, &self.lock_path] {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cleanup failed");
            }
        }
    }
}

/// Creates `dir` (and parents) with `mode` if missing; an existing directory keeps its mode.
fn create_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

/// Runs the daemon on `runtime` until a shutdown signal, then drains and cleans up.
pub fn run(config: Config, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    create_dir(&config.storage.root, 0o700)?;
    create_dir(&config.storage.runroot, 0o711)?;
    // The tokio workers exist but are idle here: nothing else creates files while the
    // process-wide umask is flipped for the bind.
    let mut endpoint = Endpoint::claim(&config.server.listen)?;
    let listener = endpoint.listener.take().context("listener already taken")?;
    let result = runtime.block_on(serve(config, listener));
    // Remove the socket and lock (Endpoint drop) before reporting the result.
    drop(endpoint);
    result
}

async fn serve(config: Config, listener: StdUnixListener) -> anyhow::Result<()> {
    // Signals first: a SIGTERM during recovery must mean a clean shutdown, not death.
    let signals = Signals::install().context("installing SIGTERM/SIGINT handlers")?;
    // Monitors (conmon) daemonize and exec'd processes can be orphaned: they are reparented
    // to sluice, which reaps them at once (PID 1 here reaps late).
    oci::reaper::become_subreaper().context("becoming a child subreaper")?;
    let _reaper = oci::reaper::spawn_reaper(std::time::Duration::from_secs(5))
        .context("starting the reaper")?;
    let listener =
        tokio::net::UnixListener::from_std(listener).context("registering the CRI socket")?;
    let info = server::RuntimeInfo {
        name: "sluice".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_json: serde_json::to_string(&config).context("encoding the effective config")?,
    };
    // One registry for the whole daemon; each subsystem registers its own families.
    let mut registry = telemetry::metrics::registry();
    registry.register_collector(Box::new(telemetry::metrics::ProcessCollector));
    let cri_metrics = server::CriMetrics::register(&mut registry);
    let cni_metrics = cnimgr::CniMetrics::register(&mut registry);
    let pod_metrics = pods::PodMetrics::register(&mut registry);
    let image_metrics = images::ImageMetrics::register(&mut registry);
    let policy_metrics = crate::policy::PolicyMetrics::register(&mut registry);
    let stream_metrics = streaming::StreamMetrics::register(&mut registry);

    let cni = Arc::new(cnimgr::CniManager::with_metrics(
        cni_config(&config),
        cni_metrics,
    ));
    cni.start_watching()
        .context("watching the CNI config directory")?;
    let images_config = images::Config {
        root: config.storage.root.join("images"),
        registries: images::RegistryConfig {
            insecure_registries: config.images.insecure_registries.clone(),
            mirrors: config
                .images
                .mirrors
                .iter()
                .map(|m| images::Mirror {
                    registry: m.registry.clone(),
                    endpoints: m.endpoints.clone(),
                })
                .collect(),
        },
    };
    // Opening cleans interrupted pulls and unreferenced layers: blocking file work. Which
    // images are in use is answered by the pod manager once it exists.
    let usage = Arc::new(pods::ImageUsageProxy::default());
    let usage_for_images: Arc<dyn images::ImageUsage> = usage.clone();
    let images = tokio::task::spawn_blocking(move || {
        images::ImageService::open_with_metrics(images_config, usage_for_images, image_metrics)
    })
    .await
    .context("opening the image store")?
    .context("opening the image store")?;

    let pods = Arc::new(pod_manager(
        &config,
        Arc::clone(&cni),
        pod_metrics,
        images.clone(),
    )?);
    usage.set(&pods);
    // Reconcile persisted pods and containers with the kernel before the first CRI call.
    let report = pods.recover().await.context("recovering pod state")?;
    for w in &report.warnings {
        tracing::warn!(warning = %w, "pod state recovery");
    }
    // Network policy: rebuilt from the live pods before the first CRI call, so a restart
    // (even after the table was flushed) never leaves pods unprotected while serving.
    let _policy = if config.policy.enable {
        let svc = crate::policy::PolicyService::start(
            &config.policy,
            &config.storage.root,
            pods.policy_pods(),
            policy_metrics,
        )
        .await
        .context("starting network policy enforcement")?;
        pods.set_policy(svc.clone());
        svc.watch().context("watching the policy directory")?;
        svc.spawn_counter_refresh(std::time::Duration::from_secs(2));
        if config.policy.log_denied {
            svc.spawn_denied_logger();
        }
        Some(svc)
    } else {
        None
    };
    let streams = Arc::new(
        streaming::StreamServer::start(
            streaming::ServerConfig {
                metrics: stream_metrics,
                ..stream_config(&config)?
            },
            pods.clone(),
        )
        .await
        .context("starting the streaming server")?,
    );
    let runtime = server::RuntimeSvc::new(info, Arc::new(CniNetwork(Arc::clone(&cni))), pods)
        .with_streaming(Arc::clone(&streams));
    let images = server::ImageSvc::new(images);

    let (fired_tx, mut fired_rx) = watch::channel(false);
    let metrics_task = if config.metrics.enable {
        let addr = if config.metrics.socket.is_empty() {
            telemetry::metrics::MetricsAddr::Tcp(
                config
                    .metrics
                    .address
                    .parse()
                    .context("metrics.address was validated at load")?,
            )
        } else {
            telemetry::metrics::MetricsAddr::Unix(config.metrics.socket.clone().into())
        };
        let listener = match (&addr, config.metrics.tls_cert.is_empty()) {
            (telemetry::metrics::MetricsAddr::Tcp(a), false) => {
                telemetry::metrics::MetricsListener::Tls(
                    telemetry::metrics::TlsListener::bind(
                        *a,
                        config.metrics.tls_cert.as_ref(),
                        config.metrics.tls_key.as_ref(),
                    )
                    .await
                    .context("setting up HTTPS for the metrics endpoint")?,
                )
            }
            _ => telemetry::metrics::MetricsListener::bind(&addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr:?}"))?,
        };
        tracing::info!(address = %listener.describe(), "serving Prometheus metrics at /metrics");
        let mut stop = fired_rx.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|fired| *fired).await;
        };
        Some(tokio::spawn(telemetry::metrics::serve(
            listener,
            Arc::new(registry),
            shutdown,
        )))
    } else {
        None
    };
    let shutdown = async move {
        let signal = signals.wait().await;
        tracing::info!(
            signal,
            "shutting down: refusing new connections, draining in-flight calls"
        );
        let _ = fired_tx.send(true);
    };

    tracing::info!(socket = %config.server.listen.display(), "serving CRI v1");
    let server = tonic::transport::Server::builder()
        .layer(server::CriLayer::new(cri_metrics))
        .add_service(server::runtime_service(runtime))
        .add_service(server::image_service(images))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    tokio::pin!(server);

    let timeout = config.server.shutdown_timeout;
    let drain_deadline = async move {
        if fired_rx.wait_for(|fired| *fired).await.is_ok() {
            tokio::time::sleep(timeout.0).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        res = &mut server => res.context("serving the CRI socket")?,
        () = drain_deadline => {
            tracing::warn!(%timeout, "in-flight calls did not finish in time; exiting anyway");
        }
    }
    streams.shutdown();
    if let Some(task) = metrics_task {
        match tokio::time::timeout(std::time::Duration::from_secs(2), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "metrics endpoint failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics endpoint task failed"),
            Err(_) => tracing::warn!("metrics endpoint did not stop in time"),
        }
    }
    Ok(())
}

/// The streaming settings of `[server]`.
fn stream_config(config: &Config) -> anyhow::Result<streaming::ServerConfig> {
    let s = &config.server;
    Ok(streaming::ServerConfig {
        address: s
            .stream_address
            .parse()
            .context("server.stream_address was validated at load")?,
        port: s.stream_port,
        tls: (!s.stream_tls_cert.is_empty()).then(|| {
            (
                s.stream_tls_cert.clone().into(),
                s.stream_tls_key.clone().into(),
            )
        }),
        idle_timeout: s.stream_idle_timeout.0,
        ..streaming::ServerConfig::default()
    })
}

/// The `[network]` section as the CNI manager's settings; results are cached under the
/// persistent root so DEL works after a restart.
fn cni_config(config: &Config) -> cnimgr::CniConfig {
    let n = &config.network;
    cnimgr::CniConfig {
        network_dir: n.network_dir.clone(),
        plugin_dirs: n.plugin_dirs.clone(),
        default_network: Some(n.default_network.clone()).filter(|s| !s.is_empty()),
        cache_dir: config.storage.root.join("cni").join("results"),
        add_timeout: n.cni_add_timeout.0,
        del_timeout: n.cni_del_timeout.0,
    }
}

/// The pod manager and its subsystems, as configured.
fn pod_manager(
    config: &Config,
    cni: Arc<cnimgr::CniManager>,
    metrics: pods::PodMetrics,
    images: images::ImageService,
) -> anyhow::Result<pods::PodManager> {
    let program = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        if name.starts_with('/') {
            Ok(name.into())
        } else {
            oci::runtime::find_in_path(name).with_context(|| format!("finding {name}"))
        }
    };
    let mut runtime_config =
        oci::RuntimeConfig::new(&config.storage.runroot).context("configuring the OCI runtime")?;
    runtime_config.runc = program(&config.runtime.runtime_path)?;
    runtime_config.conmon = program(&config.runtime.monitor_path)?;
    let runtime = oci::Runc::new(runtime_config).context("setting up runc and conmon")?;
    let host = oci::spec::Host::detect(config.runtime.default_capabilities.clone())
        .context("reading the capability bounding set and cgroup layout")?;
    let hierarchies = oci::stats::Hierarchies::discover().context("finding cgroup hierarchies")?;
    let namespaces = nsmgr::PinnedNamespaces::new(nsmgr::PinDirs {
        netns_dir: config.network.netns_dir.clone(),
        ns_dir: config.storage.runroot.join("ns"),
    });
    let hostports: Arc<dyn hostport::HostPortManager> = if config.network.hostport_mapping {
        Arc::new(
            hostport::NftHostPortManager::new(hostport::NftConfig {
                table: config.network.hostport_table.clone(),
                ..hostport::NftConfig::default()
            })
            .context("setting up the host port manager")?,
        )
    } else {
        Arc::new(hostport::NoopHostPortManager)
    };
    let cgroups = pods::CgroupFs::discover().context("finding the cgroup hierarchies")?;
    let mut pods_config = pods::PodsConfig::new(&config.storage.root, &config.storage.runroot);
    pods_config.default_cgroup_parent = config.runtime.cgroup_parent.clone();
    pods_config.network_ready_timeout = config.network.network_ready_timeout.0;
    pods_config.pause_command =
        Some(std::env::current_exe().context("finding the sluice executable for `sluice pause`")?);
    pods::PodManager::new(
        pods_config,
        pods::Deps {
            namespaces: Arc::new(namespaces),
            network: Arc::new(pods::CniNetworking::new(cni)),
            hostports,
            cgroups: Arc::new(cgroups),
            namespace_alive: pods::is_live_namespace,
            metrics,
            runtime: Arc::new(runtime),
            images: Arc::new(images),
            host: Arc::new(host),
            hierarchies: Arc::new(hierarchies),
        },
    )
    .context("opening the pod state store")
}

/// CRI `NetworkReady` from the CNI manager.
struct CniNetwork(Arc<cnimgr::CniManager>);

#[tonic::async_trait]
impl server::NetworkStatus for CniNetwork {
    async fn readiness(&self) -> server::NetworkReadiness {
        let r = self.0.readiness().await;
        server::NetworkReadiness {
            ready: r.ready,
            reason: r.reason,
            message: r.message,
        }
    }
}

/// SIGTERM and SIGINT, registered with tokio.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal and returns its name.
    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
