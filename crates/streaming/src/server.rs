//! The streaming HTTP server: one-time URLs for Exec, Attach and PortForward, upgraded to
//! SPDY/3.1 or WebSocket.
//!
//! The CRI server registers a request with [`StreamServer::exec_url`] (and friends) and hands
//! the URL to the client; the client connects within the token's lifetime (30 s) and
//! upgrades. Routes: `/exec/{token}`, `/attach/{token}`, `/portforward/{token}`; a token is
//! good for one connection to its own route. An unknown, used or expired token gets a bare
//! 404.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::portforward::{self, PORT_FORWARD_PROTOCOL};
use crate::remotecommand::{self, Operation, SPDY_REMOTE_COMMAND_PROTOCOLS};
use crate::runtime::{AttachRequest, ExecRequest, PortForwardRequest, StreamRuntime};
use crate::spdy::{self, Role, SessionConfig};
use crate::token::{Request as Pending, TokenCache, TokenError};
use crate::ws;

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind; also the host of the returned URLs unless it is unspecified
    /// (`0.0.0.0`/`::`), in which case URLs name the loopback address of that family.
    pub address: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// PEM certificate chain and key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A session with no stream opened and no data moved for this long is closed.
    pub idle_timeout: Duration,
    /// How long a URL stays valid if unused.
    pub token_ttl: Duration,
    /// Most URLs pending at once.
    pub max_pending: usize,
    /// Where sessions and refusals are counted.
    pub metrics: crate::metrics::StreamMetrics,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            tls: None,
            idle_timeout: Duration::from_secs(4 * 3600),
            token_ttl: crate::token::DEFAULT_TTL,
            max_pending: crate::token::DEFAULT_CAPACITY,
            metrics: crate::metrics::StreamMetrics::default(),
        }
    }
}

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the streaming server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("streaming server TLS: {path}: {message}")]
    Tls { path: PathBuf, message: String },
}

/// A running streaming server. Dropping it does not stop it; call [`StreamServer::shutdown`].
#[derive(Debug)]
pub struct StreamServer {
    tokens: Arc<TokenCache>,
    base_url: String,
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    tokens: Arc<TokenCache>,
    runtime: Arc<dyn StreamRuntime>,
    session: SessionConfig,
    stop: CancellationToken,
    metrics: crate::metrics::StreamMetrics,
}

impl StreamServer {
    /// Binds the listener and starts serving.
    pub async fn start(
        cfg: ServerConfig,
        runtime: Arc<dyn StreamRuntime>,
    ) -> Result<Self, ServerError> {
        let addr = SocketAddr::new(cfg.address, cfg.port);
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(load_tls(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let url_host = match local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = format!(
            "{scheme}://{}",
            SocketAddr::new(url_host, local_addr.port())
        );
        let tokens = Arc::new(TokenCache::new(cfg.token_ttl, cfg.max_pending));
        let stop = CancellationToken::new();
        let state = Arc::new(State {
            tokens: tokens.clone(),
            runtime,
            session: SessionConfig {
                idle_timeout: Some(cfg.idle_timeout),
                ..SessionConfig::default()
            },
            stop: stop.clone(),
            metrics: cfg.metrics.clone(),
        });
        let task = tokio::spawn(accept_loop(listener, tls, state));
        tracing::info!(address = %local_addr, %base_url, "streaming server listening");
        Ok(Self {
            tokens,
            base_url,
            local_addr,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http(s)://host:port`, the prefix of every URL this server hands out.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Registers an exec and returns its one-time URL.
    pub fn exec_url(&self, req: ExecRequest) -> Result<String, TokenError> {
        self.url("exec", Pending::Exec(req))
    }

    /// Registers an attach and returns its one-time URL.
    pub fn attach_url(&self, req: AttachRequest) -> Result<String, TokenError> {
        self.url("attach", Pending::Attach(req))
    }

    /// Registers a port-forward and returns its one-time URL.
    pub fn port_forward_url(&self, req: PortForwardRequest) -> Result<String, TokenError> {
        self.url("portforward", Pending::PortForward(req))
    }

    fn url(&self, route: &str, req: Pending) -> Result<String, TokenError> {
        let token = self.tokens.insert(req)?;
        Ok(format!("{}/{route}/{token}", self.base_url))
    }

    /// Stops accepting connections and ends open sessions (exec'd processes are killed,
    /// attached containers keep running).
    pub fn shutdown(&self) {
        self.stop.cancel();
        self.task.abort();
    }
}

fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let err = |path: &std::path::Path, e: &dyn std::fmt::Display| ServerError::Tls {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(cert, &e))?;
    if certs.is_empty() {
        return Err(err(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| err(key, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "streaming server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = state.stop.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    match handshake {
                        Ok(Ok(stream)) => serve_conn(stream, state).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => serve_conn(tcp, state).await,
            }
        });
    }
}

async fn serve_conn<T>(io: T, state: Arc<State>)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let stop = state.stop.clone();
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move {
            let metrics = state.metrics.clone();
            let resp = route(req, state);
            if resp.status().is_client_error() {
                metrics.refused(resp.status().as_u16());
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "streaming connection ended with an error");
        },
        () = stop.cancelled() => {}
    }
}

fn plain(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Values of a header that may repeat and may hold comma-separated lists.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first protocol the client offered that the server supports (the kubelet's rule).
fn negotiate<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Spdy,
    WebSocket,
}

fn transport(headers: &HeaderMap) -> Option<Transport> {
    let connection_upgrade = header_list(headers, "connection")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    let upgrade = headers.get(header::UPGRADE)?.to_str().ok()?;
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        Some(Transport::Spdy)
    } else if upgrade.eq_ignore_ascii_case("websocket") {
        Some(Transport::WebSocket)
    } else {
        None
    }
}

fn route(req: Request<Body>, state: Arc<State>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if !matches!(kind, "exec" | "attach" | "portforward") || token.contains('/') {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    let Some(transport) = transport(req.headers()) else {
        // Checked before the token is spent, so a client that forgot to upgrade can retry.
        return plain(
            StatusCode::BAD_REQUEST,
            "streaming requests must upgrade the connection: send `Connection: Upgrade` with \
             `Upgrade: SPDY/3.1` or `Upgrade: websocket`",
        );
    };
    let Some(pending) = state.tokens.take(token) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let route_matches = matches!(
        (&pending, kind),
        (Pending::Exec(_), "exec")
            | (Pending::Attach(_), "attach")
            | (Pending::PortForward(_), "portforward")
    );
    if !route_matches {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    match transport {
        Transport::Spdy => upgrade_spdy(req, pending, state),
        Transport::WebSocket => upgrade_websocket(req, pending, state),
    }
}

fn forbidden_protocol(
    offered: &[String],
    supported: &[&str],
    header_name: &str,
) -> Response<Full<Bytes>> {
    let mut resp = plain(
        StatusCode::FORBIDDEN,
        &format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, \
             server accepts {supported:?}"
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&supported.join(", ")) {
        resp.headers_mut()
            .insert(header_name_static(header_name), v);
    }
    resp
}

fn header_name_static(name: &str) -> header::HeaderName {
    header::HeaderName::from_bytes(name.as_bytes())
        .unwrap_or(header::HeaderName::from_static("x-accepted-protocols"))
}

fn upgrade_spdy(
    mut req: Request<Body>,
    pending: Pending,
    state: Arc<State>,
) -> Response<Full<Bytes>> {
    let offered = header_list(req.headers(), "x-stream-protocol-version");
    let supported: &[&str] = match pending {
        Pending::PortForward(_) => &[PORT_FORWARD_PROTOCOL],
        _ => SPDY_REMOTE_COMMAND_PROTOCOLS,
    };
    let Some(protocol) = negotiate(&offered, supported) else {
        return forbidden_protocol(&offered, supported, "x-accepted-stream-protocol-versions");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "SPDY upgrade failed");
                return;
            }
        };
        run_spdy(io, protocol, pending, state).await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(protocol),
    );
    resp
}

/// Runs the SPDY session of one upgraded connection (also used for SPDY tunnelled in
/// WebSocket messages).
async fn run_spdy<T>(io: T, protocol: &'static str, pending: Pending, state: Arc<State>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (handle, incoming) = spdy::session::spawn(io, Role::Server, state.session.clone());
    let _active = state.metrics.session(operation_name(&pending), "spdy");
    let runtime = state.runtime.clone();
    let session = async {
        match pending {
            Pending::Exec(r) => {
                let span = tracing::info_span!("stream_exec", container_id = %r.container_id, transport = "spdy", protocol, tty = r.tty);

                tracing::Instrument::instrument(
                    remotecommand::serve(
                        handle.clone(),
                        incoming,
                        protocol,
                        Operation::Exec(r),
                        runtime,
                    ),
                    span,
                )
                .await;
            }
            Pending::Attach(r) => {
                let span = tracing::info_span!("stream_attach", container_id = %r.container_id, transport = "spdy", protocol, tty = r.tty);
                tracing::Instrument::instrument(
                    remotecommand::serve(
                        handle.clone(),
                        incoming,
                        protocol,
                        Operation::Attach(r),
                        runtime,
                    ),
                    span,
                )
                .await;
            }
            Pending::PortForward(r) => {
                let span = tracing::info_span!("stream_port_forward", pod_sandbox_id = %r.pod_sandbox_id, transport = "spdy");
                tracing::Instrument::instrument(
                    portforward::serve(handle.clone(), incoming, r, runtime),
                    span,
                )
                .await;
            }
        }
    };
    tokio::select! {
        () = session => {}
        () = state.stop.cancelled() => handle.close().await,
    }
}

fn upgrade_websocket(
    mut req: Request<Body>,
    pending: Pending,
    state: Arc<State>,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let version_ok = headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "13");
    let Some(key) = headers.get("sec-websocket-key").cloned() else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key header");
    };
    if !version_ok {
        let mut resp = plain(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket version: this server speaks version 13",
        );
        resp.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return resp;
    }
    let offered = header_list(headers, "sec-websocket-protocol");
    let offered_refs = offered.iter().map(String::as_str);
    let negotiated = match &pending {
        Pending::PortForward(_) => {
            ws::PortForwardWs::negotiate(offered_refs).map(WsKind::PortForward)
        }
        _ => ws::WsProtocol::negotiate_remote_command(offered_refs).map(WsKind::RemoteCommand),
    };
    let Some(negotiated) = negotiated else {
        let supported: Vec<&str> = match &pending {
            Pending::PortForward(_) => std::iter::once(ws::SPDY_TUNNEL_PROTOCOL)
                .chain(ws::WsProtocol::PORT_FORWARD.iter().map(|p| p.name()))
                .collect(),
            _ => ws::WsProtocol::REMOTE_COMMAND
                .iter()
                .map(|p| p.name())
                .collect(),
        };
        return forbidden_protocol(&offered, &supported, "x-accepted-websocket-protocols");
    };
    let query_ports = match (&pending, negotiated) {
        (Pending::PortForward(_), WsKind::PortForward(ws::PortForwardWs::Channels(_))) => {
            match ws::parse_port_query(req.uri().query().unwrap_or_default()) {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "a WebSocket port-forward names its ports in the query: ?port=80",
                    );
                }
                Err(msg) => return plain(StatusCode::BAD_REQUEST, &msg),
            }
        }
        _ => Vec::new(),
    };
    let protocol = negotiated.name();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let stop = state.stop.clone();
        // WebSocket sessions have no idle timer of their own: watch the bytes instead.
        let activity = crate::idle::Activity::new();
        let idle = state.session.idle_timeout;
        let io = crate::idle::IdleIo::new(io, activity.clone());
        tokio::select! {
            () = run_websocket(io, negotiated, pending, query_ports, state) => {}
            () = stop.cancelled() => {}
            () = async {
                match idle {
                    Some(idle) => activity.idle_for(idle).await,
                    None => std::future::pending().await,
                }
            } => tracing::info!("closing an idle WebSocket streaming session"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    if !protocol.is_empty() {
        h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    }
    resp
}

fn operation_name(pending: &Pending) -> &'static str {
    match pending {
        Pending::Exec(_) => "exec",
        Pending::Attach(_) => "attach",
        Pending::PortForward(_) => "port_forward",
    }
}

/// What a WebSocket upgrade negotiated.
#[derive(Debug, Clone, Copy)]
enum WsKind {
    RemoteCommand(ws::WsProtocol),
    PortForward(ws::PortForwardWs),
}

impl WsKind {
    fn name(self) -> &'static str {
        match self {
            WsKind::RemoteCommand(p) => p.name(),
            WsKind::PortForward(p) => p.name(),
        }
    }
}

async fn run_websocket<T>(
    io: T,
    kind: WsKind,
    pending: Pending,
    query_ports: Vec<u16>,
    state: Arc<State>,
) where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
    let config = WebSocketConfig::default()
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(1 << 20));
    let socket =
        tokio_tungstenite::WebSocketStream::from_raw_socket(io, WsRole::Server, Some(config)).await;
    let runtime = state.runtime.clone();
    // The SPDY tunnel counts itself in run_spdy.
    let _active = (!matches!(kind, WsKind::PortForward(ws::PortForwardWs::SpdyTunnel)))
        .then(|| state.metrics.session(operation_name(&pending), "websocket"));
    match (kind, pending) {
        (WsKind::RemoteCommand(protocol), Pending::Exec(req)) => {
            let span = tracing::info_span!("stream_exec", container_id = %req.container_id, transport = "websocket", protocol = protocol.name(), tty = req.tty);
            let session = async {
                let ws::RemoteCommand { io, finisher, pump } =
                    ws::remote_command(socket, protocol, ws::Want::from(&req));
                let mut pump = tokio::spawn(pump);
                tokio::select! {
                    result = runtime.exec(&req, io) => {
                        finisher.finish(crate::status::exec_result(protocol.error_format(), &result));
                        let _ = pump.await;
                    }
                    _ = &mut pump => {
                        tracing::debug!("WebSocket client went away; the exec'd process is killed");
                    }
                }
            };
            tracing::Instrument::instrument(session, span).await;
        }
        (WsKind::RemoteCommand(protocol), Pending::Attach(req)) => {
            let span = tracing::info_span!("stream_attach", container_id = %req.container_id, transport = "websocket", protocol = protocol.name(), tty = req.tty);
            let session = async {
                let ws::RemoteCommand { io, finisher, pump } =
                    ws::remote_command(socket, protocol, ws::Want::from(&req));
                let mut pump = tokio::spawn(pump);
                tokio::select! {
                    result = runtime.attach(&req, io) => {
                        finisher.finish(crate::status::attach_result(protocol.error_format(), &result));
                        let _ = pump.await;
                    }
                    _ = &mut pump => {}
                }
            };
            tracing::Instrument::instrument(session, span).await;
        }
        (WsKind::PortForward(ws::PortForwardWs::SpdyTunnel), Pending::PortForward(req)) => {
            let bytes = ws::WsByteStream::new(socket);
            run_spdy(
                bytes,
                PORT_FORWARD_PROTOCOL,
                Pending::PortForward(req),
                state,
            )
            .await;
        }
        (WsKind::PortForward(ws::PortForwardWs::Channels(protocol)), Pending::PortForward(req)) => {
            let span = tracing::info_span!("stream_port_forward", pod_sandbox_id = %req.pod_sandbox_id, transport = "websocket", protocol = protocol.name());
            let pod = req.pod_sandbox_id.clone();
            let allowed = req.ports.clone();
            let dial = |port: u16| {
                let runtime = runtime.clone();
                let pod = pod.clone();
                let allowed = allowed.clone();
                async move {
                    if !allowed.is_empty() && !allowed.contains(&port) {
                        return Err(crate::StreamError::FailedPrecondition(format!(
                            "port {port} was not requested for pod sandbox {pod}"
                        )));
                    }
                    runtime.port_forward(&pod, port).await
                }
            };
            let session = ws::port_forward_channels(
                socket,
                protocol,
                &req.pod_sandbox_id,
                &query_ports,
                dial,
            );
            tracing::Instrument::instrument(session, span).await;
        }
        (kind, pending) => {
            // negotiate() picks by the pending kind, so this cannot happen.
            tracing::error!(?kind, ?pending, "mismatched WebSocket session");
        }
    }
}
