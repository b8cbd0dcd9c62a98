//! The streaming server end to end, on 127.0.0.1, with a fake runtime: exec, attach and
//! port-forward over SPDY (the test client in `streaming::client`), over WebSocket (v4 and
//! v5 channels, channel port-forward, SPDY tunnelled in WebSocket), and the requests the
//! server must refuse.
//!
//! No test asserts on timing: waits have a generous upper bound only so that a hung server
//! fails the test instead of hanging it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use streaming::client::{self, SessionOptions};
use streaming::runtime::BoxFuture;
use streaming::spdy::{
    self, Frame, FrameDecoder, GoAwayStatus, Role, SessionConfig, SessionHandle,
};
use streaming::ws::WsByteStream;
use streaming::{
    AttachRequest, ExecRequest, PortForwardRequest, ServerConfig, StreamError, StreamIo,
    StreamRuntime, StreamServer, TermSize,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Notify, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The fake runtime

/// What the fake runtime saw.
#[derive(Debug, Default)]
struct Record {
    execs: Vec<ExecRequest>,
    attaches: Vec<AttachRequest>,
    /// `(tty, stdin, stdout, stderr, resize)` presence of each exec's `StreamIo`.
    io: Vec<(bool, bool, bool, bool, bool)>,
    sizes: Vec<TermSize>,
    /// Execs whose stdin reached EOF.
    stdin_eofs: usize,
    dials: Vec<(String, u16)>,
}

/// Commands: `echo ARGS...`, `exit N` (writes `out\n`/`err\n`), `cat` (stdin to stdout until
/// EOF), `sizes N` (reports N terminal sizes on stdout), `block` (runs until dropped).
/// Attach writes `attached\n` and copies stdin to stdout until EOF. Port-forward dials
/// 127.0.0.1:port.
#[derive(Default)]
struct Fake {
    rec: Mutex<Record>,
    /// `block` has started.
    started: Notify,
    /// Told when a `block` exec future is dropped.
    dropped: Mutex<Option<oneshot::Sender<()>>>,
}

/// Sends on its channel when dropped: proves the server dropped the exec future.
struct DropGuard(Option<oneshot::Sender<()>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn internal(e: std::io::Error) -> StreamError {
    StreamError::Internal(e.to_string())
}

fn missing(what: &str) -> StreamError {
    StreamError::Internal(format!("no {what} stream"))
}

impl Fake {
    async fn run(&self, req: &ExecRequest, mut io: StreamIo) -> Result<i32, StreamError> {
        let cmd: Vec<&str> = req.cmd.iter().map(String::as_str).collect();
        match cmd.as_slice() {
            ["echo", args @ ..] => {
                let mut out = io.stdout.take().ok_or_else(|| missing("stdout"))?;
                let line = format!("{}\n", args.join(" "));
                out.write_all(line.as_bytes()).await.map_err(internal)?;
                Ok(0)
            }
            ["exit", code] => {
                let mut out = io.stdout.take().ok_or_else(|| missing("stdout"))?;
                let mut err = io.stderr.take().ok_or_else(|| missing("stderr"))?;
                out.write_all(b"out\n").await.map_err(internal)?;
                err.write_all(b"err\n").await.map_err(internal)?;
                Ok(code.parse().unwrap())
            }
            ["cat"] => {
                let mut stdin = io.stdin.take().ok_or_else(|| missing("stdin"))?;
                let mut out = io.stdout.take().ok_or_else(|| missing("stdout"))?;
                tokio::io::copy(&mut stdin, &mut out)
                    .await
                    .map_err(internal)?;
                self.rec.lock().unwrap().stdin_eofs += 1;
                Ok(0)
            }
            ["sizes", n] => {
                let n: usize = n.parse().unwrap();
                let mut resize = io.resize.take().ok_or_else(|| missing("resize"))?;
                let mut out = io.stdout.take().ok_or_else(|| missing("stdout"))?;
                for _ in 0..n {
                    let size = resize
                        .recv()
                        .await
                        .ok_or_else(|| StreamError::Internal("resize closed".into()))?;
                    self.rec.lock().unwrap().sizes.push(size);
                    let line = format!("{}x{}\n", size.width, size.height);
                    out.write_all(line.as_bytes()).await.map_err(internal)?;
                }
                Ok(0)
            }
            ["block"] => {
                let _guard = DropGuard(self.dropped.lock().unwrap().take());
                let _io = io;
                self.started.notify_one();
                std::future::pending().await
            }
            _ => Err(StreamError::Internal(format!("unknown command {cmd:?}"))),
        }
    }
}

impl StreamRuntime for Fake {
    fn exec<'a>(
        &'a self,
        req: &'a ExecRequest,
        io: StreamIo,
    ) -> BoxFuture<'a, Result<i32, StreamError>> {
        {
            let mut rec = self.rec.lock().unwrap();
            rec.execs.push(req.clone());
            rec.io.push((
                io.tty,
                io.stdin.is_some(),
                io.stdout.is_some(),
                io.stderr.is_some(),
                io.resize.is_some(),
            ));
        }
        Box::pin(self.run(req, io))
    }

    fn attach<'a>(
        &'a self,
        req: &'a AttachRequest,
        mut io: StreamIo,
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        self.rec.lock().unwrap().attaches.push(req.clone());
        Box::pin(async move {
            let mut out = io.stdout.take().ok_or_else(|| missing("stdout"))?;
            out.write_all(b"attached\n").await.map_err(internal)?;
            if let Some(mut stdin) = io.stdin.take() {
                tokio::io::copy(&mut stdin, &mut out)
                    .await
                    .map_err(internal)?;
            }
            Ok(())
        })
    }

    fn port_forward<'a>(
        &'a self,
        pod_sandbox_id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<TcpStream, StreamError>> {
        self.rec
            .lock()
            .unwrap()
            .dials
            .push((pod_sandbox_id.to_string(), port));
        Box::pin(async move {
            TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| StreamError::Internal(format!("dial {port}: {e}")))
        })
    }
}

async fn start_with(cfg: ServerConfig) -> (StreamServer, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let server = StreamServer::start(cfg, fake.clone())
        .await
        .expect("start the streaming server");
    (server, fake)
}

async fn start() -> (StreamServer, Arc<Fake>) {
    start_with(ServerConfig::default()).await
}

fn exec(cmd: &[&str], stdin: bool, stderr: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "ctr-1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr,
    }
}

/// A TCP server on 127.0.0.1 that answers each connection with `<tag>:` followed by an echo
/// of everything it reads, and closes after the client's EOF.
async fn echo_server(tag: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tcp.split();
                if wr.write_all(format!("{tag}:").as_bytes()).await.is_ok()
                    && tokio::io::copy(&mut rd, &mut wr).await.is_ok()
                {
                    let _ = wr.shutdown().await;
                }
            });
        }
    });
    port
}

/// The path (and query) of a URL the server handed out.
fn path_of<'a>(server: &StreamServer, url: &'a str) -> &'a str {
    url.strip_prefix(server.base_url())
        .expect("the URL starts with the base URL")
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP

/// A response to a raw request: status, lower-cased headers, body (by Content-Length).
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` on `tcp` and reads one response; for a 101 nothing after the head is
/// consumed.
async fn exchange(tcp: &mut TcpStream, request: &str) -> Raw {
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within("the response head", tcp.read(&mut byte))
            .await
            .unwrap();
        assert!(
            n > 0,
            "closed in the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut raw = Raw {
        status,
        headers,
        body: String::new(),
    };
    if status != 101 {
        let len: usize = raw
            .header("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        within("the response body", tcp.read_exact(&mut body))
            .await
            .unwrap();
        raw.body = String::from_utf8_lossy(&body).into_owned();
    }
    raw
}

async fn raw(addr: SocketAddr, request: &str) -> Raw {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    exchange(&mut tcp, request).await
}

fn spdy_request(path: &str, protocols: &[&str]) -> String {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    req
}

fn ws_request(path: &str, protocol: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// WebSocket client

type Ws = WebSocketStream<TcpStream>;

/// Connects to a streaming URL with WebSocket, offering `protocol`; returns the socket and
/// the protocol the server picked.
async fn ws_connect(url: &str, protocol: &str) -> (Ws, String) {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(protocol).unwrap(),
    );
    let host = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap();
    let tcp = TcpStream::connect(host).await.unwrap();
    let (ws, resp) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .expect("WebSocket upgrade");
    let picked = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (ws, picked)
}

/// Everything a channel session sent: the first message, payload per channel, the close code.
#[derive(Debug, Default)]
struct Channels {
    first: Option<Vec<u8>>,
    data: BTreeMap<u8, Vec<u8>>,
    close: Option<CloseCode>,
}

/// Reads binary channel messages until the server's close frame (or the end).
async fn ws_collect(ws: &mut Ws) -> Channels {
    let mut got = Channels::default();
    while let Some(msg) = within("a WebSocket message", ws.next()).await {
        match msg.expect("a WebSocket message") {
            Message::Binary(b) => {
                got.first.get_or_insert_with(|| b.to_vec());
                let (&channel, payload) = b.split_first().expect("a channel byte");
                got.data
                    .entry(channel)
                    .or_default()
                    .extend_from_slice(payload);
            }
            Message::Close(frame) => {
                got.close = Some(frame.map_or(CloseCode::Status, |f| f.code));
                break;
            }
            Message::Text(t) => panic!("unexpected text message {t:?}"),
            _ => {}
        }
    }
    got
}

fn status_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("status {:?}: {e}", String::from_utf8_lossy(bytes)))
}

fn assert_exit7_status(bytes: &[u8]) {
    let status = status_json(bytes);
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(
        status["details"]["causes"],
        serde_json::json!([{"reason": "ExitCode", "message": "7"}]),
        "{status}"
    );
}

// ---------------------------------------------------------------------------------------------
// Exec and attach over SPDY

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_stdout_exit_zero() {
    let (server, fake) = start().await;
    let req = exec(&["echo", "hello", "world"], false, true, false);
    let url = server.exec_url(req.clone()).unwrap();
    let out = within(
        "the exec",
        client::exec_spdy(&url, SessionOptions::output()),
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert_eq!(out.error, br#"{"status":"Success"}"#, "{out:?}");
    assert_eq!(out.exit_code(), Some(0));
    let rec = fake.rec.lock().unwrap();
    assert_eq!(rec.execs, vec![req]);
    assert_eq!(rec.io, vec![(false, false, true, true, false)]);
}

/// Many sessions at once, over both transports, each getting its own output and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sessions() {
    let (server, _fake) = start().await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let url = server
            .exec_url(exec(&["echo", &format!("session-{i}")], false, true, false))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            if i % 4 == 0 {
                let (mut ws, _) = ws_connect(&url, "v4.channel.k8s.io").await;
                let got = ws_collect(&mut ws).await;
                let stdout = got.data.get(&1).cloned().unwrap_or_default();
                (
                    i,
                    String::from_utf8_lossy(&stdout).into_owned(),
                    got.data.get(&3).cloned(),
                )
            } else {
                let out = client::exec_spdy(&url, SessionOptions::output())
                    .await
                    .unwrap();
                (
                    i,
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    Some(out.error),
                )
            }
        }));
    }
    for t in tasks {
        let (i, stdout, status) = within("a session", t).await.unwrap();
        assert_eq!(stdout, format!("session-{i}\n"));
        assert_eq!(
            status.as_deref(),
            Some(&br#"{"status":"Success"}"#[..]),
            "session {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_exit7_is_non_zero_exit_code() {
    let (server, _fake) = start().await;
    let url = server
        .exec_url(exec(&["exit", "7"], false, true, false))
        .unwrap();
    let out = within(
        "the exec",
        client::exec_spdy(&url, SessionOptions::output()),
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_exit7_status(&out.error);
    assert_eq!(out.exit_code(), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_stdin_echo_and_fin() {
    let (server, fake) = start().await;
    let url = server.exec_url(exec(&["cat"], true, true, false)).unwrap();
    let input = b"hello\nworld\n".repeat(5000);
    // `cat` only exits at stdin EOF: the session ends only if the client's FIN got through.
    let out = within(
        "the exec",
        client::exec_spdy(
            &url,
            SessionOptions {
                stdin: Some(input.clone()),
                close_stdin: true,
                stdout: true,
                stderr: true,
                ..SessionOptions::default()
            },
        ),
    )
    .await
    .unwrap();
    assert!(out.stdout == input, "stdout: {} bytes", out.stdout.len());
    assert_eq!(out.exit_code(), Some(0), "{:?}", out.status());
    assert_eq!(fake.rec.lock().unwrap().stdin_eofs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_tty_resizes_reach_the_runtime() {
    let (server, fake) = start().await;
    let url = server
        .exec_url(exec(&["sizes", "2"], true, true, true))
        .unwrap();
    let out = within(
        "the exec",
        client::exec_spdy(
            &url,
            SessionOptions {
                stdin: Some(Vec::new()),
                stdout: true,
                stderr: true,
                tty: true,
                resizes: vec![(80, 24), (100, 30)],
                ..SessionOptions::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "80x24\n100x30\n");
    assert_eq!(out.exit_code(), Some(0), "{:?}", out.status());
    let rec = fake.rec.lock().unwrap();
    assert_eq!(
        rec.sizes,
        vec![
            TermSize {
                width: 80,
                height: 24
            },
            TermSize {
                width: 100,
                height: 30
            }
        ]
    );
    // With a tty there is no stderr and there is a resize stream.
    assert_eq!(rec.io, vec![(true, true, true, false, true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_attach() {
    let (server, fake) = start().await;
    let req = AttachRequest {
        container_id: "ctr-2".into(),
        tty: false,
        stdin: true,
        stdout: true,
        stderr: true,
    };
    let url = server.attach_url(req.clone()).unwrap();
    assert!(url.contains("/attach/"), "{url}");
    let out = within(
        "the attach",
        client::exec_spdy(
            &url,
            SessionOptions {
                stdin: Some(b"typed\n".to_vec()),
                close_stdin: true,
                stdout: true,
                stderr: true,
                ..SessionOptions::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "attached\ntyped\n");
    assert_eq!(out.error, br#"{"status":"Success"}"#, "{out:?}");
    let rec = fake.rec.lock().unwrap();
    assert_eq!(rec.attaches, vec![req]);
    assert!(rec.execs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_client_disconnect_drops_the_exec() {
    let (server, fake) = start().await;
    let (dropped_tx, dropped_rx) = oneshot::channel();
    *fake.dropped.lock().unwrap() = Some(dropped_tx);
    let url = server
        .exec_url(exec(&["block"], false, true, false))
        .unwrap();
    let (handle, _incoming, _) = client::connect_spdy(&url, client::CRICTL_PROTOCOLS)
        .await
        .unwrap();
    let session = handle.clone();
    let run = tokio::spawn(async move {
        client::run_remote_command(&session, SessionOptions::output()).await
    });
    within("the exec to start", fake.started.notified()).await;
    handle.close().await;
    within("the exec future to be dropped", dropped_rx)
        .await
        .expect("the drop guard reports");
    let _ = within("the client", run).await;
}

// ---------------------------------------------------------------------------------------------
// Port-forward over SPDY

/// One forwarded connection: waits until `barrier` says every connection is open, then sends
/// `msg`, FIN, and returns what came back on the data and error streams.
async fn forward_one(
    handle: SessionHandle,
    port: u16,
    request_id: u32,
    msg: &'static str,
    tag_len: usize,
    barrier: Arc<Barrier>,
) -> (String, Vec<u8>) {
    let (data, error) = client::port_forward_spdy(&handle, port, request_id)
        .await
        .unwrap();
    let (mut rd, mut wr) = data.into_split();
    let mut reply = vec![0u8; tag_len];
    rd.read_exact(&mut reply).await.unwrap();
    // Every connection is open at once before any finishes.
    barrier.wait().await;
    wr.write_all(msg.as_bytes()).await.unwrap();
    wr.shutdown().await.unwrap();
    rd.read_to_end(&mut reply).await.unwrap();
    let (mut err_rd, _err_wr) = error.into_split();
    let mut err = Vec::new();
    err_rd.read_to_end(&mut err).await.unwrap();
    (String::from_utf8(reply).unwrap(), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_two_ports_in_parallel() {
    let (server, fake) = start().await;
    let (a, b) = (echo_server("A").await, echo_server("B").await);
    let url = server
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "pod-1".into(),
            ports: Vec::new(),
        })
        .unwrap();
    let (handle, _incoming, protocol) = client::connect_spdy(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    assert_eq!(protocol, "portforward.k8s.io");
    let barrier = Arc::new(Barrier::new(3));
    let (r0, r1, r2) = within(
        "three forwarded connections",
        futures_util::future::join3(
            forward_one(handle.clone(), a, 0, "first", 2, barrier.clone()),
            forward_one(handle.clone(), b, 1, "second", 2, barrier.clone()),
            forward_one(handle.clone(), a, 2, "third", 2, barrier.clone()),
        ),
    )
    .await;
    assert_eq!(r0, ("A:first".to_string(), Vec::new()));
    assert_eq!(r1, ("B:second".to_string(), Vec::new()));
    assert_eq!(r2, ("A:third".to_string(), Vec::new()));
    let mut dials = fake.rec.lock().unwrap().dials.clone();
    dials.sort();
    let mut want = vec![
        ("pod-1".to_string(), a),
        ("pod-1".to_string(), a),
        ("pod-1".to_string(), b),
    ];
    want.sort();
    assert_eq!(dials, want);
    // crictl ends with GOAWAY; the server then closes the connection.
    handle.goaway(GoAwayStatus::Ok).await.unwrap();
    within("the server to close the session", handle.closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_refuses_an_unrequested_port() {
    let (server, fake) = start().await;
    let a = echo_server("A").await;
    let url = server
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "pod-1".into(),
            ports: vec![a],
        })
        .unwrap();
    let (handle, _incoming, _) = client::connect_spdy(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    let other = if a == u16::MAX { a - 1 } else { a + 1 };
    let (data, error) = within(
        "the stream pair",
        client::port_forward_spdy(&handle, other, 0),
    )
    .await
    .unwrap();
    let (mut err_rd, _w) = error.into_split();
    let mut err = Vec::new();
    within("the error stream", err_rd.read_to_end(&mut err))
        .await
        .unwrap();
    let err = String::from_utf8(err).unwrap();
    assert!(err.contains(&format!("port {other}")), "{err}");
    let (mut rd, _w) = data.into_split();
    let mut rest = Vec::new();
    within("the data stream", rd.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
    assert!(fake.rec.lock().unwrap().dials.is_empty());
    handle.close().await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v4_exec_exit7() {
    let (server, _fake) = start().await;
    let url = server
        .exec_url(exec(&["exit", "7"], false, true, false))
        .unwrap();
    let (mut ws, protocol) = ws_connect(&url, "v4.channel.k8s.io").await;
    assert_eq!(protocol, "v4.channel.k8s.io");
    let got = ws_collect(&mut ws).await;
    // The server announces the session with an empty message on stdout.
    assert_eq!(got.first.as_deref(), Some(&[1u8][..]), "{got:?}");
    assert_eq!(got.data.get(&1).map(Vec::as_slice), Some(&b"out\n"[..]));
    assert_eq!(got.data.get(&2).map(Vec::as_slice), Some(&b"err\n"[..]));
    assert_exit7_status(got.data.get(&3).expect("a status on the error channel"));
    assert_eq!(got.close, Some(CloseCode::Normal));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v5_stdin_close_is_eof() {
    let (server, fake) = start().await;
    let url = server.exec_url(exec(&["cat"], true, false, false)).unwrap();
    let (mut ws, protocol) = ws_connect(&url, "v5.channel.k8s.io").await;
    assert_eq!(protocol, "v5.channel.k8s.io");
    ws.send(Message::Binary(b"\x00hello ".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(b"\x00v5".to_vec().into()))
        .await
        .unwrap();
    // The v5 close signal for stdin: `cat` sees EOF and exits; the connection stays open.
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let got = ws_collect(&mut ws).await;
    assert_eq!(
        String::from_utf8_lossy(got.data.get(&1).map_or(&[][..], Vec::as_slice)),
        "hello v5"
    );
    assert_eq!(
        got.data.get(&3).map(Vec::as_slice),
        Some(&br#"{"status":"Success"}"#[..]),
        "{got:?}"
    );
    assert_eq!(got.close, Some(CloseCode::Normal));
    assert_eq!(fake.rec.lock().unwrap().stdin_eofs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_disconnect_drops_the_exec() {
    let (server, fake) = start().await;
    let (dropped_tx, dropped_rx) = oneshot::channel();
    *fake.dropped.lock().unwrap() = Some(dropped_tx);
    let url = server
        .exec_url(exec(&["block"], false, true, false))
        .unwrap();
    let (ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
    within("the exec to start", fake.started.notified()).await;
    drop(ws);
    within("the exec future to be dropped", dropped_rx)
        .await
        .expect("the drop guard reports");
}

/// A session where nothing moves for the idle timeout is closed and its exec killed, over
/// both transports (SPDY pings do not count as activity; WebSocket has no timer of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_and_their_exec_dropped() {
    let cfg = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let (server, fake) = start_with(cfg).await;
    for transport in ["spdy", "websocket"] {
        let (dropped_tx, dropped_rx) = oneshot::channel();
        *fake.dropped.lock().unwrap() = Some(dropped_tx);
        let url = server
            .exec_url(exec(&["block"], false, true, false))
            .unwrap();
        let keep = if transport == "spdy" {
            let (handle, _incoming, _) = client::connect_spdy(&url, client::CRICTL_PROTOCOLS)
                .await
                .unwrap();
            let session = handle.clone();
            let run = tokio::spawn(async move {
                client::run_remote_command(&session, SessionOptions::output()).await
            });
            Box::new((handle, run)) as Box<dyn std::any::Any + Send>
        } else {
            let (ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
            Box::new(ws) as Box<dyn std::any::Any + Send>
        };
        within("the exec to start", fake.started.notified()).await;
        within("the idle session to be closed", dropped_rx)
            .await
            .unwrap_or_else(|_| panic!("{transport}: the drop guard reports"));
        drop(keep);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_channel_port_forward_with_port_query() {
    let (server, fake) = start().await;
    let (a, b) = (echo_server("A").await, echo_server("B").await);
    let url = server
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "pod-ws".into(),
            ports: Vec::new(),
        })
        .unwrap();
    let (mut ws, protocol) =
        ws_connect(&format!("{url}?port={a}&port={b}"), "v4.channel.k8s.io").await;
    assert_eq!(protocol, "v4.channel.k8s.io");
    // Each port is announced on its data and error channel (little-endian).
    let mut announced = Vec::new();
    for _ in 0..4 {
        let msg = within("an announcement", ws.next()).await.unwrap().unwrap();
        announced.push(msg.into_data().to_vec());
    }
    let le = |c: u8, p: u16| vec![c, p.to_le_bytes()[0], p.to_le_bytes()[1]];
    assert_eq!(announced, vec![le(0, a), le(1, a), le(2, b), le(3, b)]);
    ws.send(Message::Binary(b"\x00to a".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(b"\x02to b".to_vec().into()))
        .await
        .unwrap();
    let mut got = BTreeMap::new();
    while got.get(&0).map_or(0, Vec::len) < 6 || got.get(&2).map_or(0, Vec::len) < 6 {
        let msg = within("forwarded data", ws.next()).await.unwrap().unwrap();
        let data = msg.into_data();
        let (&channel, payload) = data.split_first().expect("a channel byte");
        assert!(
            channel == 0 || channel == 2,
            "data on channel {channel}: {payload:?}"
        );
        got.entry(channel)
            .or_insert_with(Vec::new)
            .extend_from_slice(payload);
    }
    assert_eq!(got.get(&0).map(Vec::as_slice), Some(&b"A:to a"[..]));
    assert_eq!(got.get(&2).map(Vec::as_slice), Some(&b"B:to b"[..]));
    let mut dials = fake.rec.lock().unwrap().dials.clone();
    dials.sort();
    let mut want = vec![("pod-ws".to_string(), a), ("pod-ws".to_string(), b)];
    want.sort();
    assert_eq!(dials, want);
    let _ = ws.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_spdy_tunnel_port_forward() {
    let (server, fake) = start().await;
    let a = echo_server("A").await;
    let url = server
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "pod-tunnel".into(),
            ports: Vec::new(),
        })
        .unwrap();
    let (ws, protocol) = ws_connect(&url, "SPDY/3.1+portforward.k8s.io").await;
    assert_eq!(protocol, "SPDY/3.1+portforward.k8s.io");
    let (handle, _incoming) = spdy::session::spawn(
        WsByteStream::new(ws),
        Role::Client,
        SessionConfig::default(),
    );
    let barrier = Arc::new(Barrier::new(2));
    let (r0, r1) = within(
        "two tunnelled connections",
        futures_util::future::join(
            forward_one(handle.clone(), a, 0, "one", 2, barrier.clone()),
            forward_one(handle.clone(), a, 1, "two", 2, barrier.clone()),
        ),
    )
    .await;
    assert_eq!(r0, ("A:one".to_string(), Vec::new()));
    assert_eq!(r1, ("A:two".to_string(), Vec::new()));
    assert_eq!(
        fake.rec.lock().unwrap().dials,
        vec![("pod-tunnel".to_string(), a), ("pod-tunnel".to_string(), a)]
    );
    handle.goaway(GoAwayStatus::Ok).await.unwrap();
    within("the server to close the tunnel", handle.closed()).await;
}

// ---------------------------------------------------------------------------------------------
// Refused requests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_token_is_404() {
    let (server, fake) = start().await;
    let resp = raw(
        server.local_addr(),
        &spdy_request("/exec/no-such-token", &["v4.channel.k8s.io"]),
    )
    .await;
    assert_eq!(resp.status, 404, "{resp:?}");
    // A real token on the wrong route is not found either (and is spent).
    let url = server
        .exec_url(exec(&["echo"], false, false, false))
        .unwrap();
    let path = path_of(&server, &url).replacen("/exec/", "/attach/", 1);
    let resp = raw(
        server.local_addr(),
        &spdy_request(&path, &["v4.channel.k8s.io"]),
    )
    .await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert!(fake.rec.lock().unwrap().execs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_token_is_404() {
    let (server, fake) = start().await;
    let url = server
        .exec_url(exec(&["echo", "once"], false, false, false))
        .unwrap();
    let out = within(
        "the exec",
        client::exec_spdy(
            &url,
            SessionOptions {
                stdout: true,
                ..SessionOptions::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"once\n");
    let resp = raw(
        server.local_addr(),
        &spdy_request(path_of(&server, &url), client::CRICTL_PROTOCOLS),
    )
    .await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert_eq!(fake.rec.lock().unwrap().execs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_404() {
    let (server, fake) = start_with(ServerConfig {
        token_ttl: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await;
    let url = server
        .exec_url(exec(&["echo", "late"], false, false, false))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resp = raw(
        server.local_addr(),
        &spdy_request(path_of(&server, &url), client::CRICTL_PROTOCOLS),
    )
    .await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert!(fake.rec.lock().unwrap().execs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upgrade_is_400_and_keeps_the_token() {
    let (server, _fake) = start().await;
    let url = server
        .exec_url(exec(&["echo", "retry"], false, false, false))
        .unwrap();
    let path = path_of(&server, &url);
    let resp = raw(
        server.local_addr(),
        &format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(resp.body.contains("upgrade"), "{resp:?}");
    // The token was not spent: the client can retry with an upgrade.
    let out = within(
        "the exec",
        client::exec_spdy(
            &url,
            SessionOptions {
                stdout: true,
                ..SessionOptions::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"retry\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_subprotocol_is_403() {
    let (server, fake) = start().await;
    let url = server
        .exec_url(exec(&["echo"], false, false, false))
        .unwrap();
    let resp = raw(
        server.local_addr(),
        &spdy_request(path_of(&server, &url), &["v99.channel.k8s.io"]),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains("unable to negotiate protocol"),
        "{resp:?}"
    );
    assert!(resp.body.contains("v4.channel.k8s.io"), "{resp:?}");

    let url = server
        .exec_url(exec(&["echo"], false, false, false))
        .unwrap();
    let resp = raw(
        server.local_addr(),
        &ws_request(path_of(&server, &url), "v99.channel.k8s.io"),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains("unable to negotiate protocol"),
        "{resp:?}"
    );
    assert!(resp.body.contains("v5.channel.k8s.io"), "{resp:?}");
    assert!(fake.rec.lock().unwrap().execs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_spdy_frame_closes_the_connection() {
    let (server, fake) = start().await;
    let url = server
        .exec_url(exec(&["echo"], false, true, false))
        .unwrap();
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let resp = exchange(
        &mut tcp,
        &spdy_request(path_of(&server, &url), client::CRICTL_PROTOCOLS),
    )
    .await;
    assert_eq!(resp.status, 101, "{resp:?}");
    // A SYN_STREAM whose header block is not zlib data.
    let garbage = [
        0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0e, // control, SYN_STREAM, len 14
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id 1, assoc 0, pri
        0xde, 0xad, 0xbe, 0xef, // "header block"
    ];
    tcp.write_all(&garbage).await.unwrap();
    let mut answer = Vec::new();
    let end = within("the server to close", tcp.read_to_end(&mut answer)).await;
    if let Err(e) = &end {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    // The server says why before it closes: GOAWAY (PROTOCOL_ERROR), nothing else.
    let mut decoder = FrameDecoder::new();
    let mut buf = bytes::BytesMut::from(&answer[..]);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).unwrap() {
        frames.push(frame);
    }
    assert!(buf.is_empty(), "a partial frame at the end: {answer:x?}");
    assert_eq!(
        frames,
        vec![Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::ProtocolError,
        }]
    );
    assert!(fake.rec.lock().unwrap().execs.is_empty());

    // The server still serves.
    let url = server
        .exec_url(exec(&["echo", "still", "here"], false, true, false))
        .unwrap();
    let out = within(
        "the next exec",
        client::exec_spdy(&url, SessionOptions::output()),
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"still here\n");
}
