//! The WebSocket side of the streaming server.
//!
//! The HTTP server performs the upgrade itself and hands the upgraded connection over as a
//! [`WebSocketStream`] (built with `WebSocketStream::from_raw_socket(io, Role::Server, None)`).
//! This module speaks the Kubernetes channel protocols on it:
//!
//! * [`remote_command`]: exec and attach over `v5.channel.k8s.io`, `v4.channel.k8s.io`,
//!   `v4.base64.channel.k8s.io`, `channel.k8s.io`, `base64.channel.k8s.io` (or no
//!   subprotocol). Each message starts with a channel id: 0 stdin, 1 stdout, 2 stderr,
//!   3 error, 4 resize. The base64 protocols use text messages whose first character is the
//!   channel digit and whose rest is the base64 of the data. `v5` adds channel 255: the
//!   message `[255, n]` means the client closed its channel `n` (stdin EOF).
//! * [`port_forward_channels`]: the legacy WebSocket port-forward, one connection for the
//!   ports in the URL query; port `i` uses channel `2i` for data and `2i+1` for errors.
//! * [`WsByteStream`]: a byte stream over binary messages, for client-go's SPDY-over-WebSocket
//!   tunnel (`SPDY/3.1+portforward.k8s.io`), so the SPDY session runs on it unchanged.
//!
//! The server side of these protocols behaves like the Kubernetes streaming server: right
//! after the upgrade it sends one empty message on the lowest channel it will write (stdout,
//! else stderr, else error); it never sends a close signal of its own; and it ends a session
//! with a close frame with status 1000 (client-go treats any other close as an error).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::runtime::{AttachRequest, BoxFuture, ExecRequest, StreamError, StreamIo, TermSize};
use crate::status::ErrorFormat;

/// Channel of the client's stdin.
pub const STDIN_CHANNEL: u8 = 0;
/// Channel of the process's stdout.
pub const STDOUT_CHANNEL: u8 = 1;
/// Channel of the process's stderr.
pub const STDERR_CHANNEL: u8 = 2;
/// Channel of the final status (or error text).
pub const ERROR_CHANNEL: u8 = 3;
/// Channel of the client's terminal sizes (JSON `{"Width":80,"Height":24}`).
pub const RESIZE_CHANNEL: u8 = 4;
/// `v5.channel.k8s.io` only: `[255, n]` closes the peer's channel `n`.
pub const CLOSE_CHANNEL: u8 = 255;

/// The WebSocket subprotocol of client-go's SPDY-over-WebSocket port-forward tunnel.
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Payload bytes read from a pipe or socket per outgoing message.
const CHUNK: usize = 32 * 1024;
/// Buffer of each in-memory pipe between the session and the runtime.
const PIPE_BUFFER: usize = 64 * 1024;
/// Terminal sizes queued for the runtime before older unread ones are replaced.
const RESIZE_QUEUE: usize = 16;
/// After the runtime finished: how long to wait for stdout and stderr to reach EOF.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// After our close frame: how long to wait for the client's.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Ports in one channel port-forward: channel `2i+1` must stay below 255.
pub const MAX_CHANNEL_PORTS: usize = 127;

/// A WebSocket subprotocol with channel framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsProtocol {
    /// `v5.channel.k8s.io`: binary, Status JSON, client close signal.
    V5Channel,
    /// `v4.channel.k8s.io`: binary, Status JSON.
    V4Channel,
    /// `v4.base64.channel.k8s.io`: base64 text, Status JSON.
    V4Base64Channel,
    /// `channel.k8s.io`: binary, error text.
    Channel,
    /// `base64.channel.k8s.io`: base64 text, error text.
    Base64Channel,
    /// No subprotocol offered: treated as `channel.k8s.io`, and the upgrade response carries
    /// no `Sec-WebSocket-Protocol` header.
    Unnamed,
}

impl WsProtocol {
    /// Exec and attach protocols, most preferred first (used when the client's own order
    /// does not decide).
    pub const REMOTE_COMMAND: [WsProtocol; 5] = [
        Self::V5Channel,
        Self::V4Channel,
        Self::V4Base64Channel,
        Self::Channel,
        Self::Base64Channel,
    ];
    /// Channel port-forward protocols.
    pub const PORT_FORWARD: [WsProtocol; 2] = [Self::V4Channel, Self::V4Base64Channel];

    /// The subprotocol name to echo in `Sec-WebSocket-Protocol` (empty for
    /// [`Unnamed`](Self::Unnamed): send no header then).
    pub const fn name(self) -> &'static str {
        match self {
            Self::V5Channel => "v5.channel.k8s.io",
            Self::V4Channel => "v4.channel.k8s.io",
            Self::V4Base64Channel => "v4.base64.channel.k8s.io",
            Self::Channel => "channel.k8s.io",
            Self::Base64Channel => "base64.channel.k8s.io",
            Self::Unnamed => "",
        }
    }

    /// The protocol with this exact name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::V5Channel,
            Self::V4Channel,
            Self::V4Base64Channel,
            Self::Channel,
            Self::Base64Channel,
            Self::Unnamed,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    /// Whether messages are base64 text rather than binary.
    pub const fn is_base64(self) -> bool {
        matches!(self, Self::V4Base64Channel | Self::Base64Channel)
    }

    /// What the error channel carries at the end of an exec or attach.
    pub const fn error_format(self) -> ErrorFormat {
        match self {
            Self::V5Channel | Self::V4Channel | Self::V4Base64Channel => ErrorFormat::Status,
            Self::Channel | Self::Base64Channel | Self::Unnamed => ErrorFormat::Text,
        }
    }

    const fn codec(self) -> Codec {
        if self.is_base64() {
            Codec::Base64
        } else {
            Codec::Binary
        }
    }

    /// Picks the exec/attach protocol from the client's `Sec-WebSocket-Protocol` header
    /// values (each may hold a comma-separated list): the first offered one that is
    /// supported, as the Kubernetes server does. No offer at all gives
    /// [`Unnamed`](Self::Unnamed); offers of only unknown protocols give `None` (answer 400).
    pub fn negotiate_remote_command<'a>(
        offered: impl IntoIterator<Item = &'a str>,
    ) -> Option<Self> {
        negotiate(offered, &Self::REMOTE_COMMAND)
    }
}

/// What a WebSocket port-forward request negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortForwardWs {
    /// Channel framing for the ports in the query: run [`port_forward_channels`].
    Channels(WsProtocol),
    /// [`SPDY_TUNNEL_PROTOCOL`]: run the SPDY port-forward session over a [`WsByteStream`].
    SpdyTunnel,
}

impl PortForwardWs {
    /// The subprotocol name to echo (empty: send no header).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Channels(p) => p.name(),
            Self::SpdyTunnel => SPDY_TUNNEL_PROTOCOL,
        }
    }

    /// Picks the port-forward protocol from the client's `Sec-WebSocket-Protocol` header
    /// values, like [`WsProtocol::negotiate_remote_command`].
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut any = false;
        for name in split_offers(offered) {
            any = true;
            if name == SPDY_TUNNEL_PROTOCOL {
                return Some(Self::SpdyTunnel);
            }
            if let Some(p) = WsProtocol::PORT_FORWARD
                .into_iter()
                .find(|p| p.name() == name)
            {
                return Some(Self::Channels(p));
            }
        }
        (!any).then_some(Self::Channels(WsProtocol::Unnamed))
    }
}

fn split_offers<'a>(offered: impl IntoIterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn negotiate<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    supported: &[WsProtocol],
) -> Option<WsProtocol> {
    let mut any = false;
    for name in split_offers(offered) {
        any = true;
        if let Some(p) = supported.iter().find(|p| p.name() == name) {
            return Some(*p);
        }
    }
    (!any).then_some(WsProtocol::Unnamed)
}

/// Parses the ports of a WebSocket port-forward from the URL query string (without `?`):
/// every `port` parameter, each possibly a comma-separated list (`port=80&port=81,82`).
/// The error text is meant for a 400 response.
pub fn parse_port_query(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    let mut any = false;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "port" {
            continue;
        }
        any = true;
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in value.split(',') {
            let port: u16 = p
                .parse()
                .map_err(|e| format!("unable to parse {value:?} as a port: {e}"))?;
            if port == 0 {
                return Err(format!("port {value:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if !any {
        return Err("query parameter \"port\" is required".into());
    }
    if ports.len() > MAX_CHANNEL_PORTS {
        return Err(format!(
            "at most {MAX_CHANNEL_PORTS} ports can be forwarded over one connection"
        ));
    }
    Ok(ports)
}

/// Message framing of the channel protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Binary,
    Base64,
}

impl Codec {
    fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Self::Binary => {
                let mut frame = Vec::with_capacity(1 + data.len());
                frame.push(channel);
                frame.extend_from_slice(data);
                Message::Binary(frame.into())
            }
            Self::Base64 => {
                let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
                text.push(char::from(b'0'.wrapping_add(channel)));
                BASE64.encode_string(data, &mut text);
                Message::Text(text.into())
            }
        }
    }

    /// The channel and payload of a data message; `None` for an empty or undecodable one
    /// (which the Kubernetes server skips too).
    fn decode(self, data: Bytes) -> Option<(u8, Bytes)> {
        let first = *data.first()?;
        match self {
            Self::Binary => Some((first, data.slice(1..))),
            Self::Base64 => match BASE64.decode(&data[1..]) {
                Ok(payload) => Some((first.wrapping_sub(b'0'), payload.into())),
                Err(err) => {
                    tracing::debug!(%err, "websocket: dropping a message with invalid base64");
                    None
                }
            },
        }
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// The data payload of a message, or `None` for control messages.
fn data_of(msg: Message) -> Option<Bytes> {
    match msg {
        Message::Binary(b) => Some(b),
        Message::Text(t) => Some(Bytes::from(t)),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Exec and attach

/// The streams a client asked for (the `stdin`, `stdout`, `stderr`, `tty` of the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Want {
    /// With a tty there is no separate stderr (the terminal merges it into stdout).
    fn normalized(self) -> Self {
        Self {
            stderr: self.stderr && !self.tty,
            ..self
        }
    }
}

impl From<&ExecRequest> for Want {
    fn from(r: &ExecRequest) -> Self {
        Self {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            tty: r.tty,
        }
    }
}

impl From<&AttachRequest> for Want {
    fn from(r: &AttachRequest) -> Self {
        Self {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            tty: r.tty,
        }
    }
}

/// How a [`remote_command`] session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// [`Finisher::finish`] was called (or the finisher dropped), the output was drained, the
    /// status written and the connection closed.
    Finished,
    /// The client closed the connection or it broke before the session finished. Stdin has
    /// seen EOF and the output pipes are closed; drop the runtime future.
    ClientGone,
}

/// The future that runs a WebSocket session; poll it (or spawn it) alongside the runtime.
pub type Pump = BoxFuture<'static, PumpEnd>;

/// Ends a [`remote_command`] session.
#[derive(Debug)]
pub struct Finisher {
    tx: oneshot::Sender<Option<Vec<u8>>>,
}

impl Finisher {
    /// Ends the session: once stdout and stderr have reached EOF (the runtime dropped or shut
    /// down its writers; at most a few seconds are waited), `status` (from
    /// [`crate::status`]) is sent on the error channel, then the connection is closed with
    /// status 1000. `None` (or an empty status) sends nothing on the error channel.
    ///
    /// Dropping the finisher without calling this ends the session the same way with no
    /// status.
    pub fn finish(self, status: Option<Vec<u8>>) {
        // The pump may be gone already (client disconnected): nothing to tell it then.
        let _ = self.tx.send(status);
    }
}

/// An exec or attach session over a WebSocket.
pub struct RemoteCommand {
    /// The pipes for [`StreamRuntime::exec`] or [`StreamRuntime::attach`]: exactly the streams
    /// the client asked for (no stderr with a tty; resize only with a tty).
    ///
    /// [`StreamRuntime::exec`]: crate::runtime::StreamRuntime::exec
    /// [`StreamRuntime::attach`]: crate::runtime::StreamRuntime::attach
    pub io: StreamIo,
    /// Call when the runtime returns, with the status to send.
    pub finisher: Finisher,
    /// Runs the session; resolves once the session is over.
    pub pump: Pump,
}

impl std::fmt::Debug for RemoteCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCommand")
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

/// Sets up an exec or attach session on an upgraded WebSocket.
///
/// The server then runs the runtime and the pump together, for example:
///
/// ```ignore
/// let RemoteCommand { io, finisher, pump } = ws::remote_command(ws, protocol, Want::from(&req));
/// let mut pump = tokio::spawn(pump);
/// tokio::select! {
///     result = runtime.exec(&req, io) => {
///         finisher.finish(status::exec_result(protocol.error_format(), &result));
///         let _ = pump.await;
///     }
///     _ = &mut pump => {} // client gone: dropping the exec future kills the process
/// }
/// ```
///
/// The pump answers pings, sends the initial empty message, copies stdin (EOF on a `v5`
/// close signal or when the client disconnects), parses resize JSON into
/// [`TermSize`]s, and frames stdout and stderr.
pub fn remote_command<S>(ws: WebSocketStream<S>, protocol: WsProtocol, want: Want) -> RemoteCommand
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let want = want.normalized();
    let (stdin_tx, stdin_rx) = pipe_if(want.stdin);
    let (stdout_tx, stdout_rx) = pipe_if(want.stdout);
    let (stderr_tx, stderr_rx) = pipe_if(want.stderr);
    let (resize_tx, resize_rx) = if want.tty {
        let (tx, rx) = mpsc::channel(RESIZE_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (finish_tx, finish_rx) = oneshot::channel();

    let io = StreamIo {
        tty: want.tty,
        stdin: stdin_rx.map(|r| Box::new(r) as _),
        stdout: stdout_tx.map(|w| Box::new(w) as _),
        stderr: stderr_tx.map(|w| Box::new(w) as _),
        resize: resize_rx,
    };
    let pump = Box::pin(run_remote_command(
        ws,
        protocol,
        want,
        Inputs {
            stdin: stdin_tx,
            resize: resize_tx.map(Resize::new),
        },
        Outputs {
            stdout: stdout_rx,
            stderr: stderr_rx,
            finish: finish_rx,
        },
    ));
    RemoteCommand {
        io,
        finisher: Finisher { tx: finish_tx },
        pump,
    }
}

/// One in-memory pipe: `(server end, runtime end)`; dropping either end gives the other EOF
/// (reads) or `BrokenPipe` (writes).
fn pipe_if(wanted: bool) -> (Option<DuplexStream>, Option<DuplexStream>) {
    if wanted {
        let (a, b) = tokio::io::duplex(PIPE_BUFFER);
        (Some(a), Some(b))
    } else {
        (None, None)
    }
}

struct Inputs {
    stdin: Option<DuplexStream>,
    resize: Option<Resize>,
}

struct Outputs {
    stdout: Option<DuplexStream>,
    stderr: Option<DuplexStream>,
    finish: oneshot::Receiver<Option<Vec<u8>>>,
}

async fn run_remote_command<S>(
    ws: WebSocketStream<S>,
    protocol: WsProtocol,
    want: Want,
    inputs: Inputs,
    outputs: Outputs,
) -> PumpEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let finishing = AtomicBool::new(false);
    let reader = read_remote_command(stream, protocol, inputs);
    let writer = write_remote_command(sink, protocol.codec(), want, outputs, &finishing);
    tokio::pin!(reader, writer);
    tokio::select! {
        () = &mut reader => {
            if finishing.load(Ordering::Relaxed) {
                PumpEnd::Finished
            } else {
                PumpEnd::ClientGone
            }
        }
        closed = &mut writer => {
            if !closed {
                return PumpEnd::ClientGone;
            }
            // Our close frame is out: read on until the client's answer (or EOF).
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, reader).await;
            PumpEnd::Finished
        }
    }
}

/// Reads client messages until the connection ends.
async fn read_remote_command<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    protocol: WsProtocol,
    inputs: Inputs,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let codec = protocol.codec();
    let Inputs {
        mut stdin,
        mut resize,
    } = inputs;
    loop {
        // A size the runtime has no room for yet is delivered as soon as it has.
        let next = match resize.as_ref().filter(|r| r.pending.is_some()) {
            Some(r) => {
                let tx = r.tx.clone();
                tokio::select! {
                    msg = stream.next() => Some(msg),
                    permit = tx.reserve_owned() => {
                        match (permit, resize.as_mut().and_then(|r| r.pending.take())) {
                            (Ok(permit), Some(size)) => { permit.send(size); }
                            (Ok(_), None) => {}
                            (Err(_), _) => resize = None,
                        }
                        None
                    }
                }
            }
            None => Some(stream.next().await),
        };
        let Some(msg) = next else { continue };
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(err)) => {
                tracing::debug!(%err, "websocket: read failed");
                return;
            }
            None => return,
        };
        // Pings are answered and close frames acknowledged inside the stream; after a close
        // frame the next read ends the stream.
        let Some(data) = data_of(msg) else { continue };
        if protocol == WsProtocol::V5Channel && data.first() == Some(&CLOSE_CHANNEL) {
            if let [_, channel] = data[..] {
                match channel {
                    STDIN_CHANNEL => stdin = None,
                    RESIZE_CHANNEL => resize = None,
                    _ => {}
                }
            }
            continue;
        }
        let Some((channel, payload)) = codec.decode(data) else {
            continue;
        };
        match channel {
            STDIN_CHANNEL => {
                if let Some(pipe) = stdin.as_mut()
                    && pipe.write_all(&payload).await.is_err()
                {
                    // The runtime stopped reading stdin: drop what follows.
                    stdin = None;
                }
            }
            RESIZE_CHANNEL => {
                if let Some(r) = resize.as_mut()
                    && !r.feed(&payload)
                {
                    resize = None;
                }
            }
            _ => {}
        }
    }
}

/// Writes the initial message, the output, then the status and the close frame. Returns
/// `false` when a write failed (the client is gone).
async fn write_remote_command<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    codec: Codec,
    want: Want,
    outputs: Outputs,
    finishing: &AtomicBool,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Outputs {
        mut stdout,
        mut stderr,
        mut finish,
    } = outputs;
    // Tells the client the session is set up (what the Kubernetes server does).
    let first = if want.stdout {
        STDOUT_CHANNEL
    } else if want.stderr {
        STDERR_CHANNEL
    } else {
        ERROR_CHANNEL
    };
    if sink.send(codec.encode(first, &[])).await.is_err() {
        return false;
    }

    let mut out_buf = vec![0u8; CHUNK];
    let mut err_buf = vec![0u8; CHUNK];
    let mut status: Option<Option<Vec<u8>>> = None;
    let drain_deadline = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(drain_deadline);
    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        let (channel, n) = tokio::select! {
            n = read_some(&mut stdout, &mut out_buf) => (STDOUT_CHANNEL, n),
            n = read_some(&mut stderr, &mut err_buf) => (STDERR_CHANNEL, n),
            s = &mut finish, if status.is_none() => {
                status = Some(s.unwrap_or(None));
                finishing.store(true, Ordering::Relaxed);
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                continue;
            }
            () = &mut drain_deadline, if status.is_some() => {
                tracing::debug!("websocket: output not closed after the session finished");
                break;
            }
        };
        let (pipe, buf) = if channel == STDOUT_CHANNEL {
            (&mut stdout, &out_buf)
        } else {
            (&mut stderr, &err_buf)
        };
        match n {
            Some(n) if n > 0 => {
                if sink.send(codec.encode(channel, &buf[..n])).await.is_err() {
                    return false;
                }
            }
            _ => *pipe = None,
        }
    }
    if let Some(bytes) = status.flatten().filter(|b| !b.is_empty())
        && sink
            .send(codec.encode(ERROR_CHANNEL, &bytes))
            .await
            .is_err()
    {
        return false;
    }
    sink.send(normal_close()).await.is_ok()
}

/// Reads from an optional pipe; `None` when the pipe failed. Never resolves without a pipe.
async fn read_some(pipe: &mut Option<DuplexStream>, buf: &mut [u8]) -> Option<usize> {
    match pipe {
        Some(p) => p.read(buf).await.ok(),
        None => std::future::pending().await,
    }
}

/// The resize channel: a stream of JSON objects, possibly split across messages.
struct Resize {
    tx: mpsc::Sender<TermSize>,
    buf: Vec<u8>,
    /// The newest size the runtime had no room for yet.
    pending: Option<TermSize>,
}

/// A terminal size as client-go encodes it (`remotecommand.TerminalSize`).
#[derive(Deserialize)]
struct WireSize {
    #[serde(rename = "Width", alias = "width", default)]
    width: u16,
    #[serde(rename = "Height", alias = "height", default)]
    height: u16,
}

impl Resize {
    fn new(tx: mpsc::Sender<TermSize>) -> Self {
        Self {
            tx,
            buf: Vec::new(),
            pending: None,
        }
    }

    /// Adds resize-channel bytes and queues every complete size. `false` when the stream is
    /// not valid JSON or the runtime dropped the receiver: stop resizing then (the
    /// Kubernetes server stops at the first decode error too).
    fn feed(&mut self, data: &[u8]) -> bool {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut iter = serde_json::Deserializer::from_slice(&self.buf).into_iter::<WireSize>();
        let consumed = loop {
            match iter.next() {
                Some(Ok(size)) => sizes.push(TermSize {
                    width: size.width,
                    height: size.height,
                }),
                Some(Err(err)) if err.is_eof() => break iter.byte_offset(),
                Some(Err(err)) => {
                    tracing::debug!(%err, "websocket: invalid resize message, ignoring resizes");
                    return false;
                }
                None => break self.buf.len(),
            }
        };
        self.buf.drain(..consumed);
        sizes.into_iter().all(|size| self.queue(size))
    }

    fn queue(&mut self, size: TermSize) -> bool {
        if self.pending.is_some() {
            self.pending = Some(size);
            return true;
        }
        match self.tx.try_send(size) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(size)) => {
                self.pending = Some(size);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Port forward with channels

/// Runs a channel port-forward session (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io` or
/// no subprotocol) to completion.
///
/// It first announces each port (its number as 2 bytes little-endian) on its data channel
/// `2i` and its error channel `2i+1`, then dials every port once with `dial`. Data on
/// channel `2i` goes to connection `i` and the connection's output comes back on `2i`. A
/// failed dial (or a read error) is reported as text on channel `2i+1`:
/// `error forwarding port <port> to pod <pod>, uid : <error>`. The session ends with a normal
/// close once every connection has been closed by the pod side, or when the client goes
/// away ([`PumpEnd::ClientGone`]; the connections are dropped).
///
/// `ports` should come from [`parse_port_query`] (at most [`MAX_CHANNEL_PORTS`]); extra
/// ports are ignored.
pub async fn port_forward_channels<S, D, F, C>(
    ws: WebSocketStream<S>,
    protocol: WsProtocol,
    pod: &str,
    ports: &[u16],
    dial: D,
) -> PumpEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Fn(u16) -> F,
    F: Future<Output = Result<C, StreamError>>,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let codec = protocol.codec();
    let ports = &ports[..ports.len().min(MAX_CHANNEL_PORTS)];
    let (mut sink, stream) = ws.split();
    for (i, port) in ports.iter().enumerate() {
        let data = data_channel(i);
        for channel in [data, data + 1] {
            if sink
                .feed(codec.encode(channel, &port.to_le_bytes()))
                .await
                .is_err()
            {
                return PumpEnd::ClientGone;
            }
        }
    }
    if sink.flush().await.is_err() {
        return PumpEnd::ClientGone;
    }

    let (out_tx, out_rx) = mpsc::channel::<Message>(ports.len().max(1) * 4);
    let mut inputs = Vec::with_capacity(ports.len());
    let mut forwards = Vec::with_capacity(ports.len());
    for (i, &port) in ports.iter().enumerate() {
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
        inputs.push(in_tx);
        forwards.push(forward_port(
            codec,
            data_channel(i),
            port,
            pod,
            dial(port),
            in_rx,
            out_tx.clone(),
        ));
    }
    // The writer ends once every forward has dropped its sender.
    drop(out_tx);

    let reader = read_port_forward(stream, codec, inputs);
    let work = async {
        let (_, closed) = tokio::join!(join_all(forwards), write_port_forward(sink, out_rx));
        closed
    };
    tokio::pin!(reader, work);
    tokio::select! {
        () = &mut reader => PumpEnd::ClientGone,
        closed = &mut work => {
            if !closed {
                return PumpEnd::ClientGone;
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, reader).await;
            PumpEnd::Finished
        }
    }
}

fn data_channel(index: usize) -> u8 {
    u8::try_from(index * 2).unwrap_or(u8::MAX - 1)
}

async fn read_port_forward<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    codec: Codec,
    mut inputs: Vec<mpsc::Sender<Bytes>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = stream.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(err) => {
                tracing::debug!(%err, "websocket port-forward: read failed");
                return;
            }
        };
        let Some((channel, payload)) = data_of(msg).and_then(|d| codec.decode(d)) else {
            continue;
        };
        // Odd channels are error channels: the client has nothing to say on them.
        if channel % 2 != 0 || payload.is_empty() {
            continue;
        }
        if let Some(tx) = inputs.get_mut(usize::from(channel / 2)) {
            // A forward that has ended drops its receiver: discard its data then.
            let _ = tx.send(payload).await;
        }
    }
}

async fn write_port_forward<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut out_rx: mpsc::Receiver<Message>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = out_rx.recv().await {
        if sink.send(msg).await.is_err() {
            return false;
        }
    }
    sink.send(normal_close()).await.is_ok()
}

async fn forward_port<F, C>(
    codec: Codec,
    data: u8,
    port: u16,
    pod: &str,
    dial: F,
    mut in_rx: mpsc::Receiver<Bytes>,
    out_tx: mpsc::Sender<Message>,
) where
    F: Future<Output = Result<C, StreamError>>,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let report = |err: &dyn std::fmt::Display| {
        let text = format!("error forwarding port {port} to pod {pod}, uid : {err}");
        codec.encode(data + 1, text.as_bytes())
    };
    let conn = match dial.await {
        Ok(conn) => conn,
        Err(err) => {
            tracing::debug!(port, %err, "websocket port-forward: dial failed");
            let _ = out_tx.send(report(&err)).await;
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(conn);
    let upstream = async {
        while let Some(bytes) = in_rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // The client went away (or the pod stopped reading): pass EOF on; the forward ends
        // when the pod side closes.
        let _ = wr.shutdown().await;
        std::future::pending::<()>().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    if out_tx.send(codec.encode(data, &buf[..n])).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    let _ = out_tx.send(report(&err)).await;
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Byte stream over binary messages

/// A byte stream over a WebSocket's binary messages, as client-go's tunneling connection
/// (`SPDY/3.1+portforward.k8s.io`) frames it: each write is one binary message, reads return
/// the payloads of incoming binary messages in order, and a close frame (or the end of the
/// connection) reads as EOF. A text message is an error. Shutdown sends a close frame with
/// status 1000 (which client-go reads as EOF).
///
/// Writes are queued and flushed opportunistically; call `flush` to be sure they left.
pub struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    read_buf: Bytes,
    read_eof: bool,
    close_queued: bool,
}

impl<S> std::fmt::Debug for WsByteStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsByteStream")
            .field("buffered", &self.read_buf.len())
            .field("read_eof", &self.read_eof)
            .field("close_queued", &self.close_queued)
            .finish_non_exhaustive()
    }
}

impl<S> WsByteStream<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            read_buf: Bytes::new(),
            read_eof: false,
            close_queued: false,
        }
    }

    /// The WebSocket underneath.
    pub fn into_inner(self) -> WebSocketStream<S> {
        self.ws
    }
}

fn ws_to_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(err) => err,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            "websocket connection reset without a close frame",
        ),
        other => io::Error::other(other),
    }
}

impl<S> AsyncRead for WsByteStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read_buf.is_empty() {
                let n = this.read_buf.len().min(buf.remaining());
                buf.put_slice(&this.read_buf.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.read_buf = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a binary websocket stream",
                    )));
                }
                // The close frame is answered by the stream; the next read ends it.
                Some(Ok(Message::Close(_))) => this.read_eof = true,
                Some(Ok(_)) => {}
                Some(Err(err)) => return Poll::Ready(Err(ws_to_io(err))),
                None => this.read_eof = true,
            }
        }
    }
}

impl<S> AsyncWrite for WsByteStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        let mut ws = Pin::new(&mut this.ws);
        ready!(ws.as_mut().poll_ready(cx)).map_err(ws_to_io)?;
        ws.as_mut()
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_to_io)?;
        // Push it out now if the socket takes it; otherwise the next write or flush will.
        if let Poll::Ready(Err(err)) = ws.poll_flush(cx) {
            return Poll::Ready(Err(ws_to_io(err)));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(ws_to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut ws = Pin::new(&mut this.ws);
        if !this.close_queued {
            match ready!(ws.as_mut().poll_ready(cx)) {
                Ok(()) => {}
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Poll::Ready(Ok(()));
                }
                Err(err) => return Poll::Ready(Err(ws_to_io(err))),
            }
            match ws.as_mut().start_send(normal_close()) {
                // The client closed first: flushing sends our reply.
                Ok(()) | Err(WsError::Protocol(ProtocolError::SendAfterClosing)) => {}
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Poll::Ready(Ok(()));
                }
                Err(err) => return Poll::Ready(Err(ws_to_io(err))),
            }
            this.close_queued = true;
        }
        match ready!(ws.poll_flush(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(err) => Poll::Ready(Err(ws_to_io(err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::status;

    type Client = WebSocketStream<DuplexStream>;

    async fn pair() -> (WebSocketStream<DuplexStream>, Client) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (server, client)
    }

    /// Every message the client receives until the server's close frame, which must be a
    /// normal close. Then reads on (as real clients do, which sends the close reply) until
    /// the server drops the connection.
    async fn collect_until_close(client: &mut Client) -> Vec<Message> {
        let mut got = Vec::new();
        while let Some(msg) = client.next().await {
            match msg.unwrap() {
                Message::Close(frame) => {
                    let frame = frame.expect("close frame without a status");
                    assert_eq!(frame.code, CloseCode::Normal);
                    while let Some(after) = client.next().await {
                        if let Ok(after) = after {
                            panic!("message after the close frame: {after:?}");
                        }
                    }
                    return got;
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => got.push(other),
            }
        }
        panic!("connection ended without a close frame; got {got:?}");
    }

    /// Concatenated payload per channel of binary messages.
    fn by_channel(msgs: &[Message], channel: u8) -> Vec<u8> {
        msgs.iter()
            .filter_map(|m| match m {
                Message::Binary(b) if b.first() == Some(&channel) => Some(b[1..].to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn bin(channel: u8, data: &[u8]) -> Message {
        Codec::Binary.encode(channel, data)
    }

    #[tokio::test]
    async fn v4_exec_flow() {
        let (server, mut client) = pair().await;
        let want = Want {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let RemoteCommand { io, finisher, pump } =
            remote_command(server, WsProtocol::V4Channel, want);
        assert!(io.stdin.is_some() && io.stdout.is_some() && io.stderr.is_some());
        assert!(io.resize.is_none() && !io.tty);
        let pump = tokio::spawn(pump);

        // A fake exec: reads "hello\n", answers on stdout and stderr, exits 7.
        let exec = tokio::spawn(async move {
            let mut stdin = io.stdin.unwrap();
            let mut line = [0u8; 6];
            stdin.read_exact(&mut line).await.unwrap();
            let mut stdout = io.stdout.unwrap();
            let mut stderr = io.stderr.unwrap();
            stdout.write_all(&line.to_ascii_uppercase()).await.unwrap();
            stderr.write_all(b"warn\n").await.unwrap();
            7
        });

        // The first message acknowledges the session on stdout.
        let first = client.next().await.unwrap().unwrap();
        assert_eq!(first, Message::Binary(vec![STDOUT_CHANNEL].into()));

        client.send(bin(STDIN_CHANNEL, b"hel")).await.unwrap();
        client.send(bin(STDIN_CHANNEL, b"lo\n")).await.unwrap();
        let code = exec.await.unwrap();
        finisher.finish(status::exit_status(
            WsProtocol::V4Channel.error_format(),
            code,
        ));

        let msgs = collect_until_close(&mut client).await;
        assert_eq!(by_channel(&msgs, STDOUT_CHANNEL), b"HELLO\n");
        assert_eq!(by_channel(&msgs, STDERR_CHANNEL), b"warn\n");
        let status_bytes = by_channel(&msgs, ERROR_CHANNEL);
        assert_eq!(status_bytes.len(), 176);
        assert!(status_bytes.starts_with(br#"{"status":"Failure""#));
        // The status comes after all output.
        let last = msgs.last().unwrap();
        assert!(
            matches!(last, Message::Binary(b) if b[0] == ERROR_CHANNEL),
            "{msgs:?}"
        );
        assert!(client.next().await.is_none());
        assert_eq!(pump.await.unwrap(), PumpEnd::Finished);
    }

    #[tokio::test]
    async fn v5_close_signal_gives_stdin_eof() {
        let (server, mut client) = pair().await;
        let want = Want {
            stdin: true,
            stdout: true,
            ..Want::default()
        };
        let rc = remote_command(server, WsProtocol::V5Channel, want);
        let pump = tokio::spawn(rc.pump);
        let io = rc.io;
        // A fake `cat`: copies stdin to stdout until EOF.
        let exec = tokio::spawn(async move {
            let mut stdin = io.stdin.unwrap();
            let mut stdout = io.stdout.unwrap();
            let mut all = Vec::new();
            stdin.read_to_end(&mut all).await.unwrap();
            stdout.write_all(&all).await.unwrap();
            stdout.shutdown().await.unwrap();
            0
        });
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(vec![STDOUT_CHANNEL].into())
        );
        client.send(bin(STDIN_CHANNEL, b"abc")).await.unwrap();
        client.send(bin(STDIN_CHANNEL, b"def")).await.unwrap();
        client
            .send(Message::Binary(vec![CLOSE_CHANNEL, STDIN_CHANNEL].into()))
            .await
            .unwrap();
        let code = exec.await.unwrap();
        rc.finisher.finish(status::exit_status(
            WsProtocol::V5Channel.error_format(),
            code,
        ));
        let msgs = collect_until_close(&mut client).await;
        assert_eq!(by_channel(&msgs, STDOUT_CHANNEL), b"abcdef");
        assert_eq!(by_channel(&msgs, ERROR_CHANNEL), br#"{"status":"Success"}"#);
        assert_eq!(pump.await.unwrap(), PumpEnd::Finished);
    }

    #[tokio::test]
    async fn v4_ignores_the_close_signal() {
        let (server, mut client) = pair().await;
        let want = Want {
            stdin: true,
            stdout: true,
            ..Want::default()
        };
        let rc = remote_command(server, WsProtocol::V4Channel, want);
        let pump = tokio::spawn(rc.pump);
        let mut stdin = rc.io.stdin.unwrap();
        client.next().await.unwrap().unwrap();
        // In v4, [255, 0] is just data for an unknown channel; stdin stays open.
        client
            .send(Message::Binary(vec![CLOSE_CHANNEL, STDIN_CHANNEL].into()))
            .await
            .unwrap();
        client.send(bin(STDIN_CHANNEL, b"x")).await.unwrap();
        let mut byte = [0u8; 1];
        stdin.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"x");
        drop(client);
        assert_eq!(pump.await.unwrap(), PumpEnd::ClientGone);
    }

    #[tokio::test]
    async fn client_disconnect_ends_pump_and_stdin() {
        let (server, mut client) = pair().await;
        let want = Want {
            stdin: true,
            stdout: true,
            ..Want::default()
        };
        let rc = remote_command(server, WsProtocol::V4Channel, want);
        let pump = tokio::spawn(rc.pump);
        let mut stdin = rc.io.stdin.unwrap();
        let mut stdout = rc.io.stdout.unwrap();
        client.next().await.unwrap().unwrap();
        client.send(bin(STDIN_CHANNEL, b"partial")).await.unwrap();
        client.close(None).await.unwrap();
        let mut got = Vec::new();
        stdin.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"partial");
        assert_eq!(pump.await.unwrap(), PumpEnd::ClientGone);
        // Output has nowhere to go any more.
        assert!(stdout.write_all(b"late").await.is_err());
        drop(rc.finisher);
    }

    #[tokio::test]
    async fn resize_messages_become_term_sizes() {
        let (server, mut client) = pair().await;
        let want = Want {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: true,
        };
        let rc = remote_command(server, WsProtocol::V4Channel, want);
        // With a tty, stderr is merged into stdout.
        assert!(rc.io.tty && rc.io.stderr.is_none());
        let mut resize = rc.io.resize.unwrap();
        let pump = tokio::spawn(rc.pump);
        client.next().await.unwrap().unwrap();
        client
            .send(bin(RESIZE_CHANNEL, b"{\"Width\":80,\"Height\":24}\n"))
            .await
            .unwrap();
        // One JSON object split over two messages, then two in one.
        client
            .send(bin(RESIZE_CHANNEL, b"{\"Width\":100,"))
            .await
            .unwrap();
        client
            .send(bin(RESIZE_CHANNEL, b"\"Height\":30}\n"))
            .await
            .unwrap();
        client
            .send(bin(
                RESIZE_CHANNEL,
                b"{\"width\":1,\"height\":2} {\"Height\":5,\"Width\":6}",
            ))
            .await
            .unwrap();
        for (width, height) in [(80, 24), (100, 30), (1, 2), (6, 5)] {
            assert_eq!(resize.recv().await, Some(TermSize { width, height }));
        }
        drop(client);
        assert_eq!(pump.await.unwrap(), PumpEnd::ClientGone);
        // The sender is gone with the session.
        assert_eq!(resize.recv().await, None);
    }

    #[tokio::test]
    async fn resize_keeps_the_newest_size_when_the_runtime_lags() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut r = Resize::new(tx);
        assert!(r.feed(b"{\"Width\":1,\"Height\":1}{\"Width\":2,\"Height\":2}"));
        assert!(r.feed(b"{\"Width\":3,\"Height\":3}"));
        assert_eq!(
            r.pending,
            Some(TermSize {
                width: 3,
                height: 3
            })
        );
        assert_eq!(
            rx.recv().await,
            Some(TermSize {
                width: 1,
                height: 1
            })
        );
        // Invalid JSON stops resizing.
        assert!(!r.feed(b"not json"));
    }

    #[tokio::test]
    async fn base64_framing() {
        let (server, mut client) = pair().await;
        let want = Want {
            stdin: true,
            stdout: true,
            ..Want::default()
        };
        let protocol = WsProtocol::V4Base64Channel;
        let rc = remote_command(server, protocol, want);
        let pump = tokio::spawn(rc.pump);
        let io = rc.io;
        let exec = tokio::spawn(async move {
            let mut stdin = io.stdin.unwrap();
            let mut buf = [0u8; 2];
            stdin.read_exact(&mut buf).await.unwrap();
            let mut stdout = io.stdout.unwrap();
            stdout.write_all(&buf).await.unwrap();
            3
        });
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Text("1".into())
        );
        // "hi" is "aGk=" in base64.
        client.send(Message::Text("0aGk=".into())).await.unwrap();
        let code = exec.await.unwrap();
        rc.finisher
            .finish(status::exit_status(protocol.error_format(), code));
        let msgs = collect_until_close(&mut client).await;
        assert_eq!(msgs[0], Message::Text("1aGk=".into()));
        let Message::Text(status_text) = &msgs[1] else {
            panic!("{msgs:?}");
        };
        let status_text = status_text.as_str();
        assert_eq!(&status_text[..1], "3");
        let decoded = BASE64.decode(&status_text[1..]).unwrap();
        assert_eq!(
            decoded,
            status::exit_status(ErrorFormat::Status, 3).unwrap()
        );
        assert_eq!(msgs.len(), 2);
        assert_eq!(pump.await.unwrap(), PumpEnd::Finished);
    }

    #[tokio::test]
    async fn old_protocol_sends_text_errors_and_nothing_on_success() {
        for (code, expected) in [
            (0, None),
            (
                7,
                Some(&b"command terminated with non-zero exit code: exit status 7"[..]),
            ),
        ] {
            let (server, mut client) = pair().await;
            // Stdin only: the acknowledgement goes on the error channel.
            let want = Want {
                stdin: true,
                ..Want::default()
            };
            let protocol = WsProtocol::Channel;
            let rc = remote_command(server, protocol, want);
            let pump = tokio::spawn(rc.pump);
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                Message::Binary(vec![ERROR_CHANNEL].into())
            );
            rc.finisher
                .finish(status::exit_status(protocol.error_format(), code));
            let msgs = collect_until_close(&mut client).await;
            match expected {
                None => assert!(msgs.is_empty(), "{msgs:?}"),
                Some(text) => assert_eq!(msgs, vec![bin(ERROR_CHANNEL, text)]),
            }
            assert_eq!(pump.await.unwrap(), PumpEnd::Finished);
        }
    }

    #[tokio::test]
    async fn dropped_finisher_closes_without_status() {
        let (server, mut client) = pair().await;
        let want = Want {
            stdout: true,
            stderr: true,
            ..Want::default()
        };
        let rc = remote_command(server, WsProtocol::V4Channel, want);
        let pump = tokio::spawn(rc.pump);
        let mut stderr = rc.io.stderr.unwrap();
        stderr.write_all(b"bye").await.unwrap();
        drop(stderr);
        drop(rc.io.stdout);
        drop(rc.finisher);
        let msgs = collect_until_close(&mut client).await;
        assert_eq!(msgs[0], Message::Binary(vec![STDOUT_CHANNEL].into()));
        assert_eq!(by_channel(&msgs, STDERR_CHANNEL), b"bye");
        assert!(by_channel(&msgs, ERROR_CHANNEL).is_empty());
        assert_eq!(pump.await.unwrap(), PumpEnd::Finished);
    }

    #[test]
    fn negotiation() {
        use WsProtocol::*;
        assert_eq!(
            WsProtocol::negotiate_remote_command(["v5.channel.k8s.io, v4.channel.k8s.io"]),
            Some(V5Channel)
        );
        assert_eq!(
            WsProtocol::negotiate_remote_command(["foo", "v4.base64.channel.k8s.io"]),
            Some(V4Base64Channel)
        );
        assert_eq!(
            WsProtocol::negotiate_remote_command(["base64.channel.k8s.io", "channel.k8s.io"]),
            Some(Base64Channel)
        );
        assert_eq!(WsProtocol::negotiate_remote_command([]), Some(Unnamed));
        assert_eq!(WsProtocol::negotiate_remote_command([" "]), Some(Unnamed));
        assert_eq!(
            WsProtocol::negotiate_remote_command(["v9.channel.k8s.io"]),
            None
        );
        assert_eq!(WsProtocol::from_name("v4.channel.k8s.io"), Some(V4Channel));
        assert_eq!(Unnamed.name(), "");

        assert_eq!(
            PortForwardWs::negotiate([SPDY_TUNNEL_PROTOCOL]),
            Some(PortForwardWs::SpdyTunnel)
        );
        assert_eq!(
            PortForwardWs::negotiate(["v4.channel.k8s.io"]),
            Some(PortForwardWs::Channels(V4Channel))
        );
        assert_eq!(
            PortForwardWs::negotiate([]),
            Some(PortForwardWs::Channels(Unnamed))
        );
        assert_eq!(PortForwardWs::negotiate(["v5.channel.k8s.io"]), None);
    }

    #[test]
    fn port_query() {
        assert_eq!(parse_port_query("port=80&port=8080"), Ok(vec![80, 8080]));
        assert_eq!(parse_port_query("x=1&port=81,82"), Ok(vec![81, 82]));
        assert!(parse_port_query("").unwrap_err().contains("is required"));
        assert!(
            parse_port_query("port=")
                .unwrap_err()
                .contains("cannot be empty")
        );
        assert!(
            parse_port_query("port=0")
                .unwrap_err()
                .contains("must be > 0")
        );
        assert!(
            parse_port_query("port=http")
                .unwrap_err()
                .contains("unable to parse")
        );
        assert!(parse_port_query("port=70000").is_err());
        let many = vec!["port=1"; MAX_CHANNEL_PORTS + 1].join("&");
        assert!(parse_port_query(&many).is_err());
    }

    #[tokio::test]
    async fn port_forward_over_channels() {
        // The "pod": answers one request with "pong:<request>" and closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pod = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4];
            conn.read_exact(&mut req).await.unwrap();
            conn.write_all(b"pong:").await.unwrap();
            conn.write_all(&req).await.unwrap();
            conn.shutdown().await.unwrap();
        });
        let closed_port = 1u16;

        let (server, mut client) = pair().await;
        let session = tokio::spawn(async move {
            port_forward_channels(
                server,
                WsProtocol::V4Channel,
                "pod1",
                &[port, closed_port],
                |p| async move {
                    if p == closed_port {
                        return Err(StreamError::Internal("connection refused".into()));
                    }
                    TcpStream::connect(("127.0.0.1", p))
                        .await
                        .map_err(|e| StreamError::Internal(e.to_string()))
                },
            )
            .await
        });

        let mut announce = Vec::new();
        for _ in 0..4 {
            announce.push(client.next().await.unwrap().unwrap());
        }
        let p = port.to_le_bytes();
        let c = closed_port.to_le_bytes();
        assert_eq!(
            announce,
            vec![bin(0, &p), bin(1, &p), bin(2, &c), bin(3, &c)]
        );
        client.send(bin(0, b"ping")).await.unwrap();
        let msgs = collect_until_close(&mut client).await;
        assert_eq!(by_channel(&msgs, 0), b"pong:ping");
        assert_eq!(
            by_channel(&msgs, 3),
            b"error forwarding port 1 to pod pod1, uid : connection refused"
        );
        assert!(by_channel(&msgs, 1).is_empty() && by_channel(&msgs, 2).is_empty());
        pod.await.unwrap();
        assert_eq!(session.await.unwrap(), PumpEnd::Finished);
    }

    #[tokio::test]
    async fn port_forward_base64_and_client_gone() {
        // A pod that never closes: the session ends when the client goes away.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pod = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 3];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&buf).await.unwrap();
            // Sees EOF once the session drops the connection.
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let (server, mut client) = pair().await;
        let session = tokio::spawn(async move {
            port_forward_channels(
                server,
                WsProtocol::V4Base64Channel,
                "pod1",
                &[port],
                |p| async move {
                    TcpStream::connect(("127.0.0.1", p))
                        .await
                        .map_err(|e| StreamError::Internal(e.to_string()))
                },
            )
            .await
        });
        let p = BASE64.encode(port.to_le_bytes());
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Text(format!("0{p}").into())
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Text(format!("1{p}").into())
        );
        client
            .send(Message::Text(format!("0{}", BASE64.encode("abc")).into()))
            .await
            .unwrap();
        let echo = client.next().await.unwrap().unwrap();
        assert_eq!(
            echo,
            Message::Text(format!("0{}", BASE64.encode("abc")).into())
        );
        client.close(None).await.unwrap();
        assert_eq!(session.await.unwrap(), PumpEnd::ClientGone);
        assert!(pod.await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn byte_stream_round_trip() {
        let (server, mut client) = pair().await;
        let mut stream = WsByteStream::new(server);
        client
            .send(Message::Binary(b"abc"[..].into()))
            .await
            .unwrap();
        client.send(Message::Ping(b"p"[..].into())).await.unwrap();
        client
            .send(Message::Binary(b"defgh"[..].into()))
            .await
            .unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"abcd");

        stream.write_all(b"xyz").await.unwrap();
        stream.write_all(b"").await.unwrap();
        stream.write_all(b"12").await.unwrap();
        stream.flush().await.unwrap();
        // The ping is answered, and each write is one binary message.
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Pong(b"p"[..].into())
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(b"xyz"[..].into())
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(b"12"[..].into())
        );

        client.close(None).await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"efgh");
        stream.shutdown().await.unwrap();
        drop(stream);
        // The client sees the close handshake complete.
        while let Some(msg) = client.next().await {
            assert!(matches!(msg, Ok(Message::Close(_))), "{msg:?}");
        }
    }

    #[tokio::test]
    async fn byte_stream_shutdown_sends_normal_close() {
        let (server, mut client) = pair().await;
        let mut stream = WsByteStream::new(server);
        let server_side = async move {
            stream.write_all(b"last").await.unwrap();
            stream.shutdown().await.unwrap();
            // The client's close reply reads as EOF.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            assert!(stream.write_all(b"more").await.is_err());
            // Dropping the stream closes the connection.
        };
        let client_side = async move {
            let msgs = collect_until_close(&mut client).await;
            assert_eq!(msgs, vec![Message::Binary(b"last"[..].into())]);
        };
        tokio::join!(server_side, client_side);
    }

    #[tokio::test]
    async fn byte_stream_rejects_text() {
        let (server, mut client) = pair().await;
        let mut stream = WsByteStream::new(server);
        client.send(Message::Text("hi".into())).await.unwrap();
        let mut buf = [0u8; 8];
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
