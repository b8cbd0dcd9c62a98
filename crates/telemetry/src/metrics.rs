//! Prometheus metrics: the registry conventions, process metrics, and the `/metrics` server.
//!
//! `main` creates one [`Registry`] (prefix `sluice_`) and passes sub-registries into each
//! subsystem, which registers its own families; there are no global statics. Label values are
//! bounded sets (operation names, gRPC codes, steps, plugin types); pod ids and names never
//! become labels.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;

/// The OpenMetrics text content type Prometheus negotiates.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A new registry whose metrics are all named `sluice_*`.
pub fn registry() -> Registry {
    Registry::with_prefix("sluice")
}

/// Histogram buckets for operation latencies: 0.5 ms to ~33 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17)
}

/// Process metrics read from `/proc/self` at each scrape: resident memory, open file
/// descriptors, threads, start time and CPU seconds.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// `/proc` reports CPU times in USER_HZ, which is 100 on every Linux architecture.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    resident_bytes: u64,
    open_fds: u64,
    threads: u64,
    start_time_seconds: f64,
    cpu_seconds: f64,
}

fn read_process_stats() -> std::io::Result<ProcessStats> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_default()
    };
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let (utime, stime, start_ticks) = parse_stat(&stat).unwrap_or_default();
    let btime = std::fs::read_to_string("/proc/stat")?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_default();
    Ok(ProcessStats {
        resident_bytes: field("VmRSS:") * 1024,
        open_fds: std::fs::read_dir("/proc/self/fd")?.count() as u64,
        threads: field("Threads:"),
        start_time_seconds: btime + start_ticks as f64 / USER_HZ,
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
    })
}

/// utime, stime and starttime from `/proc/<pid>/stat` (fields 14, 15 and 22; the command name
/// in field 2 may contain spaces, so count from the closing parenthesis).
fn parse_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some((
        f.get(11)?.parse().ok()?,
        f.get(12)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Ok(s) = read_process_stats() else {
            return Ok(());
        };
        let gauges: [(&str, &str, f64); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory of the sluice daemon",
                s.resident_bytes as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors of the sluice daemon",
                s.open_fds as f64,
            ),
            (
                "process_threads",
                "Threads of the sluice daemon",
                s.threads as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the sluice daemon since the epoch",
                s.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let c = ConstCounter::new(s.cpu_seconds);
        c.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of the sluice daemon",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// A bound metrics listener (bound early so start-up fails on a busy port).
#[derive(Debug)]
pub enum MetricsListener {
    Tcp(tokio::net::TcpListener),
    Tls(TlsListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Why TLS for `/metrics` could not be set up; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// HTTPS for `/metrics`: TCP accept plus a rustls handshake (bounded to 5 s, so a stalled
/// client cannot hold the endpoint; failed handshakes are logged at debug and skipped).
pub struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("addr", &self.tcp.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Binds `addr` and loads the PEM certificate chain and private key.
    pub async fn bind(
        addr: std::net::SocketAddr,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, TlsError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let pem = |path: &std::path::Path, e: &dyn std::fmt::Display| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(cert, &e))?;
        if certs.is_empty() {
            return Err(pem(cert, &"no certificate in the file"));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, &e))?;
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| TlsError::Bind { addr, source })?;
        Ok(Self {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "metrics TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl MetricsListener {
    /// Binds `addr`; a stale unix socket file is replaced.
    pub async fn bind(addr: &MetricsAddr) -> std::io::Result<Self> {
        match addr {
            MetricsAddr::Tcp(a) => Ok(Self::Tcp(tokio::net::TcpListener::bind(a).await?)),
            MetricsAddr::Unix(p) => {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                Ok(Self::Unix(tokio::net::UnixListener::bind(p)?, p.clone()))
            }
        }
    }

    /// The bound address as text (the real port when the config asked for port 0).
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| format!("<{e}>")),
            Self::Tls(l) => axum::serve::Listener::local_addr(l)
                .map(|a| format!("https://{a}"))
                .unwrap_or_else(|e| format!("<{e}>")),
            Self::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

/// Serves `GET /metrics` from `registry` until `shutdown` completes.
pub async fn serve(
    listener: MetricsListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry);
    match listener {
        MetricsListener::Tcp(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
        MetricsListener::Tls(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
        MetricsListener::Unix(l, path) => {
            let r = axum::serve(l, app).with_graceful_shutdown(shutdown).await;
            let _ = std::fs::remove_file(path);
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_spaces_in_the_command_name() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 123456 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((250, 50, 123456)));
    }

    #[test]
    fn process_metrics_are_encoded() {
        let mut r = registry();
        r.register_collector(Box::new(ProcessCollector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        for name in [
            "sluice_process_resident_memory_bytes",
            "sluice_process_open_fds",
            "sluice_process_threads",
            "sluice_process_start_time_seconds",
            "sluice_process_cpu_seconds_total",
        ] {
            assert!(out.contains(name), "{name} missing in:\n{out}");
        }
        let s = read_process_stats().unwrap();
        assert!(s.resident_bytes > 0 && s.threads >= 1 && s.open_fds >= 3);
    }
}
