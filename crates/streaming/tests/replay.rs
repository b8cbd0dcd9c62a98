//! Replays the client side of the real crictl -> CRI-O exec captures in `shared/spdy-vectors`
//! against our [`StreamServer`] and checks what it answers.
//!
//! For each exec capture a fresh server runs with a fake [`StreamRuntime`] that behaves like
//! the captured command (from `session.json`). The capture's `client-to-server.bin` is sent
//! as it is, header compression context and all: only the token in the request line is
//! replaced by the fresh URL's. The SPDY bytes go out in the captured TCP segment sizes, and
//! like client-go the replay waits for the 101 before the first frame and for the SYN_REPLY
//! of every stream before it opens the next one. Everything the server sends until it closes
//! is decoded with [`FrameDecoder`] and checked: the negotiated protocol, a SYN_REPLY per
//! stream, the output, the error stream byte for byte against what CRI-O sent, PING echoes,
//! and a CRI-O style teardown (RST_STREAM CANCEL or FIN for every stream, GOAWAY OK, close).
//!
//! The attach and port-forward captures are not replayed here: attach-counter and
//! attach-tty-detach end with the client killing the connection (no status to compare), and
//! portforward-http needs the real pod's httpd behind it; they are covered by the codec
//! tests (`captures.rs`) and the server tests (`server.rs`).
//!
//! The vectors live outside the repository: set `SLUICE_SPDY_VECTORS` or keep them at
//! `../shared/spdy-vectors` next to the checkout. The tests fail loudly when they are absent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use streaming::runtime::BoxFuture;
use streaming::spdy::{Frame, FrameDecoder, GoAwayStatus, RstStatus};
use streaming::{
    AttachRequest, ExecRequest, ServerConfig, StreamError, StreamIo, StreamRuntime, StreamServer,
    TermSize,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Notify, watch};

/// Upper bound for any single wait, so a hung server fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

/// Every exec capture; the test below checks that the list stays complete.
const EXEC_CAPTURES: &[&str] = &[
    "exec-bulk-cat",
    "exec-exit7-stderr",
    "exec-sleep-ping",
    "exec-stdin-cat",
    "exec-tty-resize",
];

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
struct Log {
    requests: Vec<ExecRequest>,
    /// `(tty, stdin, stdout, stderr, resize)` presence of each exec's `StreamIo`.
    io: Vec<(bool, bool, bool, bool, bool)>,
    sizes: Vec<TermSize>,
}

/// Runs the commands of the captures: `cat`, the exit-7 `sh -c`, the sleeping `sh -c` (which
/// waits for `wake` instead of sleeping 11 s) and the interactive tty `sh`.
struct CaptureRuntime {
    wake: Arc<Notify>,
    /// Resize messages the tty shell waits for before it exits (those of the capture).
    resizes: usize,
    log: Mutex<Log>,
}

fn internal(e: std::io::Error) -> StreamError {
    StreamError::Internal(e.to_string())
}

fn missing(what: &str) -> StreamError {
    StreamError::Internal(format!("the exec has no {what} stream"))
}

impl CaptureRuntime {
    async fn run(&self, req: &ExecRequest, mut io: StreamIo) -> Result<i32, StreamError> {
        let cmd: Vec<&str> = req.cmd.iter().map(String::as_str).collect();
        match cmd.as_slice() {
            ["cat"] => {
                let mut stdin = io.stdin.take().ok_or_else(|| missing("stdin"))?;
                let mut stdout = io.stdout.take().ok_or_else(|| missing("stdout"))?;
                tokio::io::copy(&mut stdin, &mut stdout)
                    .await
                    .map_err(internal)?;
                Ok(0)
            }
            ["sh", "-c", "echo out; echo err >&2; exit 7"] => {
                let mut stdout = io.stdout.take().ok_or_else(|| missing("stdout"))?;
                let mut stderr = io.stderr.take().ok_or_else(|| missing("stderr"))?;
                stdout.write_all(b"out\n").await.map_err(internal)?;
                stderr.write_all(b"err\n").await.map_err(internal)?;
                Ok(7)
            }
            ["sh", "-c", "sleep 11; echo done"] => {
                self.wake.notified().await;
                let mut stdout = io.stdout.take().ok_or_else(|| missing("stdout"))?;
                stdout.write_all(b"done\n").await.map_err(internal)?;
                Ok(0)
            }
            ["sh"] if req.tty => self.tty_shell(io).await,
            _ => Err(StreamError::Internal(format!(
                "the replay runtime cannot run {cmd:?}"
            ))),
        }
    }

    /// Echoes stdin to the terminal until it has seen `exit` and the capture's resizes, then
    /// closes the terminal (CRI-O FINs stdout of a tty exec) and exits 0.
    async fn tty_shell(&self, mut io: StreamIo) -> Result<i32, StreamError> {
        let mut stdin = io.stdin.take().ok_or_else(|| missing("stdin"))?;
        let mut stdout = io.stdout.take().ok_or_else(|| missing("stdout"))?;
        let mut resize = io.resize.take().ok_or_else(|| missing("resize"))?;
        let mut typed = Vec::new();
        let mut sizes = 0;
        let (mut stdin_open, mut resize_open) = (true, true);
        let mut buf = [0u8; 4096];
        loop {
            let exited = typed.windows(4).any(|w| w == b"exit");
            if exited && sizes >= self.resizes {
                break;
            }
            tokio::select! {
                n = stdin.read(&mut buf), if stdin_open && !exited => {
                    let n = n.map_err(internal)?;
                    if n == 0 {
                        stdin_open = false;
                        continue;
                    }
                    typed.extend_from_slice(&buf[..n]);
                    stdout.write_all(&buf[..n]).await.map_err(internal)?;
                }
                size = resize.recv(), if resize_open => match size {
                    Some(size) => {
                        sizes += 1;
                        self.log.lock().unwrap().sizes.push(size);
                    }
                    None => resize_open = false,
                },
                else => break,
            }
        }
        stdout.shutdown().await.map_err(internal)?;
        Ok(0)
    }
}

impl StreamRuntime for CaptureRuntime {
    fn exec<'a>(
        &'a self,
        req: &'a ExecRequest,
        io: StreamIo,
    ) -> BoxFuture<'a, Result<i32, StreamError>> {
        {
            let mut log = self.log.lock().unwrap();
            log.requests.push(req.clone());
            log.io.push((
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
        _io: StreamIo,
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        Box::pin(async move {
            Err(StreamError::Internal(format!(
                "unexpected attach to {}",
                req.container_id
            )))
        })
    }

    fn port_forward<'a>(
        &'a self,
        pod_sandbox_id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<TcpStream, StreamError>> {
        Box::pin(async move {
            Err(StreamError::Internal(format!(
                "unexpected port-forward to {pod_sandbox_id}:{port}"
            )))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The capture

/// One direction decoded: frames with their byte offsets, and the length of an incomplete
/// frame left at the end.
struct Decoded {
    frames: Vec<(usize, Frame)>,
    incomplete: usize,
}

fn decode_all(bytes: &[u8]) -> Decoded {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        let offset = bytes.len() - buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frames.push((offset, frame)),
            Ok(None) => break,
            Err(e) => panic!("decoding at byte {offset}: {e}"),
        }
    }
    Decoded {
        frames,
        incomplete: buf.len(),
    }
}

struct Capture {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    /// Where the SPDY frames start in each direction.
    c_spdy: usize,
    s_spdy: usize,
    /// Client segments `(offset, len)` in `c2s`, in order.
    segments: Vec<(usize, usize)>,
    request: ExecRequest,
}

impl Capture {
    fn load(name: &'static str) -> Self {
        let dir = common::vectors_dir().join(name);
        let read = |f: &str| fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{name}/{f}: {e}"));
        let c2s = read("client-to-server.bin");
        let s2c = read("server-to-client.bin");
        let session: serde_json::Value = serde_json::from_slice(&read("session.json")).unwrap();
        let cri = &session["cri_request"];
        let flag = |k: &str| {
            cri[k]
                .as_bool()
                .unwrap_or_else(|| panic!("{name}: cri_request.{k}"))
        };
        let request = ExecRequest {
            container_id: format!("ctr-{name}"),
            cmd: cri["cmd"]
                .as_array()
                .expect("cri_request.cmd")
                .iter()
                .map(|v| v.as_str().expect("a string argument").to_string())
                .collect(),
            tty: flag("tty"),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
        };
        let tsv = String::from_utf8(read("segments.tsv")).unwrap();
        let mut segments: Vec<(usize, usize)> = tsv
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() >= 5 && f[2] == "C->S")
                    .then(|| (f[3].parse().unwrap(), f[4].parse().unwrap()))
            })
            .filter(|&(_, len)| len > 0)
            .collect();
        segments.sort_unstable();
        let mut next = 0;
        for &(off, len) in &segments {
            assert_eq!(off, next, "{name}: the client segments are not contiguous");
            next = off + len;
        }
        assert_eq!(
            next,
            c2s.len(),
            "{name}: the segments do not cover client-to-server.bin"
        );
        Capture {
            c_spdy: common::http_preamble_len(&c2s),
            s_spdy: common::http_preamble_len(&s2c),
            c2s,
            s2c,
            segments,
            request,
        }
    }

    fn request_head(&self) -> &str {
        std::str::from_utf8(&self.c2s[..self.c_spdy]).expect("the HTTP request is text")
    }
}

/// The frames a side sent, grouped the way the checks need them.
#[derive(Debug, Default)]
struct Streams {
    /// streamtype of every stream the client opened.
    types: BTreeMap<u32, String>,
    /// DATA payload per stream.
    data: BTreeMap<u32, Vec<u8>>,
}

impl Streams {
    fn of_client(frames: &[(usize, Frame)]) -> Self {
        let mut s = Streams::default();
        for (_, f) in frames {
            match f {
                Frame::SynStream(syn) => {
                    let kind = syn
                        .headers
                        .get_str("streamtype")
                        .expect("streamtype header");
                    s.types.insert(syn.stream_id, kind.to_string());
                }
                Frame::Data(d) => s
                    .data
                    .entry(d.stream_id)
                    .or_default()
                    .extend_from_slice(&d.data),
                _ => {}
            }
        }
        s
    }

    fn id_of(&self, kind: &str) -> Option<u32> {
        self.types
            .iter()
            .find(|(_, k)| *k == kind)
            .map(|(id, _)| *id)
    }

    /// Everything `frames` carry on the stream of `kind` (DATA payloads, concatenated).
    fn payload(&self, frames: &[Frame], kind: &str) -> Vec<u8> {
        let Some(id) = self.id_of(kind) else {
            return Vec::new();
        };
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Data(d) if d.stream_id == id => Some(d.data.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The replay

/// What the server sent after the 101, as far as it has arrived.
#[derive(Debug, Default)]
struct Seen {
    frames: Vec<Frame>,
    /// Set when the connection ended: `Ok` at a clean EOF.
    end: Option<Result<(), String>>,
}

impl Seen {
    fn replied(&self, id: u32) -> bool {
        self.frames
            .iter()
            .any(|f| matches!(f, Frame::SynReply(r) if r.stream_id == id))
    }

    fn pings(&self) -> Vec<u32> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                Frame::Ping { id } => Some(*id),
                _ => None,
            })
            .collect()
    }
}

async fn read_server(mut rd: OwnedReadHalf, mut buf: BytesMut, seen: watch::Sender<Seen>) {
    let mut decoder = FrameDecoder::new();
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => seen.send_modify(|s| s.frames.push(frame)),
                Ok(None) => break,
                Err(e) => {
                    seen.send_modify(|s| s.end = Some(Err(format!("undecodable frame: {e}"))));
                    return;
                }
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => {
                seen.send_modify(|s| s.end = Some(Ok(())));
                return;
            }
            Ok(0) => {
                let n = buf.len();
                seen.send_modify(|s| {
                    s.end = Some(Err(format!(
                        "connection closed in a frame ({n} bytes left)"
                    )));
                });
                return;
            }
            Ok(_) => {}
            Err(e) => {
                seen.send_modify(|s| s.end = Some(Err(format!("read failed: {e}"))));
                return;
            }
        }
    }
}

/// Reads the response head; returns the status line, the headers and the bytes after them.
async fn read_response_head(tcp: &mut TcpStream) -> (String, Vec<(String, String)>, BytesMut) {
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = within("the upgrade response", tcp.read_buf(&mut buf))
            .await
            .expect("read the upgrade response");
        assert!(n > 0, "the server closed before answering: {buf:?}");
    };
    let head = String::from_utf8(buf.split_to(end).to_vec()).expect("a text response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, buf)
}

async fn replay(name: &'static str) {
    let cap = Capture::load(name);
    let client = decode_all(&cap.c2s[cap.c_spdy..]);
    // exec-bulk-cat's client had written 2 bytes of a new frame when the server closed.
    let expected_cut = if name == "exec-bulk-cat" { 2 } else { 0 };
    assert_eq!(
        client.incomplete, expected_cut,
        "{name}: unexpected incomplete frame at the end of the client bytes"
    );
    let spdy_end = cap.c2s.len() - client.incomplete;
    let captured = decode_all(&cap.s2c[cap.s_spdy..]);
    assert_eq!(
        captured.incomplete, 0,
        "{name}: incomplete server frame in the capture"
    );
    let captured: Vec<Frame> = captured.frames.into_iter().map(|(_, f)| f).collect();
    let client_streams = Streams::of_client(&client.frames);
    let client_frames: Vec<Frame> = client.frames.iter().map(|(_, f)| f.clone()).collect();

    // The capture itself must look like what the fake runtime is set up for.
    let want_kinds: Vec<&str> = std::iter::once("error")
        .chain(cap.request.stdin.then_some("stdin"))
        .chain(cap.request.stdout.then_some("stdout"))
        .chain((cap.request.stderr && !cap.request.tty).then_some("stderr"))
        .chain(cap.request.tty.then_some("resize"))
        .collect();
    let got_kinds: Vec<&str> = client_streams.types.values().map(String::as_str).collect();
    assert_eq!(
        got_kinds, want_kinds,
        "{name}: the client's streams do not match cri_request"
    );
    let resize_msgs = client_streams.payload(&client_frames, "resize");
    let captured_sizes: Vec<TermSize> = String::from_utf8(resize_msgs)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            TermSize {
                width: v["Width"].as_u64().unwrap().try_into().unwrap(),
                height: v["Height"].as_u64().unwrap().try_into().unwrap(),
            }
        })
        .collect();

    let runtime = Arc::new(CaptureRuntime {
        wake: Arc::new(Notify::new()),
        resizes: captured_sizes.len(),
        log: Mutex::default(),
    });
    let server = StreamServer::start(ServerConfig::default(), runtime.clone())
        .await
        .expect("start the streaming server");
    let url = server
        .exec_url(cap.request.clone())
        .expect("register the exec");
    let path = url
        .strip_prefix(server.base_url())
        .expect("the URL starts with the base URL");

    // The request, with the captured token replaced by the fresh one.
    let head = cap.request_head();
    let (request_line, rest) = head.split_once("\r\n").expect("a request line");
    let mut parts: Vec<&str> = request_line.split(' ').collect();
    assert_eq!(parts.len(), 3, "{name}: request line {request_line:?}");
    assert!(
        parts[1].starts_with("/exec/"),
        "{name}: request line {request_line:?}"
    );
    parts[1] = path;
    let request = format!("{}\r\n{rest}", parts.join(" "));

    let mut tcp = within("connect", TcpStream::connect(server.local_addr()))
        .await
        .expect("connect to the streaming server");
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (status, headers, rest) = read_response_head(&mut tcp).await;
    assert!(
        status.starts_with("HTTP/1.1 101"),
        "{name}: expected 101 Switching Protocols, got {status:?} {headers:?}"
    );
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("x-stream-protocol-version"),
        Some("v4.channel.k8s.io")
    );
    assert!(header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1")));
    let captured_head = std::str::from_utf8(&cap.s2c[..cap.s_spdy]).unwrap();
    assert!(
        captured_head.contains("X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"),
        "{name}: CRI-O negotiated something else"
    );

    let (rd, mut wr) = tcp.into_split();
    let (seen_tx, mut seen) = watch::channel(Seen::default());
    let reader = tokio::spawn(read_server(rd, rest, seen_tx));

    // The client bytes in the captured segments, cut where a SYN_STREAM starts so the replay
    // can wait for the previous SYN_REPLY there.
    let syn_at: BTreeMap<usize, u32> = client
        .frames
        .iter()
        .filter_map(|(off, f)| match f {
            Frame::SynStream(s) => Some((cap.c_spdy + off, s.stream_id)),
            _ => None,
        })
        .collect();
    let mut chunks = Vec::new();
    for &(off, len) in &cap.segments {
        let (mut start, end) = (off.max(cap.c_spdy), (off + len).min(spdy_end));
        if start >= end {
            continue;
        }
        for (&cut, _) in syn_at.range(start + 1..end) {
            chunks.push((start, cut));
            start = cut;
        }
        chunks.push((start, end));
    }
    let mut opened: Vec<u32> = Vec::new();
    for (start, end) in chunks {
        if let Some(&id) = syn_at.get(&start) {
            let waiting = opened.clone();
            within(
                &format!("{name}: the SYN_REPLYs before opening stream {id}"),
                seen.wait_for(|s| s.end.is_some() || waiting.iter().all(|&i| s.replied(i))),
            )
            .await
            .unwrap();
            opened.push(id);
        }
        if let Err(e) = wr.write_all(&cap.c2s[start..end]).await {
            let frames = seen.borrow().frames.clone();
            panic!(
                "{name}: sending client bytes {start}..{end} failed: {e}; server sent {frames:?}"
            );
        }
    }

    let pings: Vec<u32> = client_frames
        .iter()
        .filter_map(|f| match f {
            Frame::Ping { id } => Some(*id),
            _ => None,
        })
        .collect();
    if !pings.is_empty() {
        // The sleeping command runs until the client's keep-alive PINGs were answered.
        within(
            &format!("{name}: PING echoes {pings:?}"),
            seen.wait_for(|s| s.end.is_some() || pings.iter().all(|id| s.pings().contains(id))),
        )
        .await
        .unwrap();
        runtime.wake.notify_one();
    }
    within(
        &format!("{name}: the server to close"),
        seen.wait_for(|s| s.end.is_some()),
    )
    .await
    .unwrap();
    within("the reader task", reader).await.unwrap();
    drop(wr);
    server.shutdown();

    let seen = seen.borrow();
    let frames = &seen.frames;
    let dump = || format!("{name}: the server sent {frames:#?}");
    assert_eq!(seen.end, Some(Ok(())), "{}", dump());

    // The runtime ran the captured command on the captured streams.
    {
        let log = runtime.log.lock().unwrap();
        assert_eq!(
            log.requests,
            vec![cap.request.clone()],
            "{name}: exec requests"
        );
        let r = &cap.request;
        assert_eq!(
            log.io,
            vec![(r.tty, r.stdin, r.stdout, r.stderr && !r.tty, r.tty)],
            "{name}: the StreamIo the runtime got (tty, stdin, stdout, stderr, resize)"
        );
        assert_eq!(
            log.sizes, captured_sizes,
            "{name}: terminal sizes seen by the runtime"
        );
    }

    // Every client stream got exactly one SYN_REPLY, and the server opened none.
    let replies: Vec<u32> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::SynReply(r) => Some(r.stream_id),
            _ => None,
        })
        .collect();
    let client_ids: Vec<u32> = client_streams.types.keys().copied().collect();
    assert_eq!(replies, client_ids, "{}", dump());
    assert!(
        !frames.iter().any(|f| matches!(f, Frame::SynStream(_))),
        "{}",
        dump()
    );

    // Output and status.
    let stdin = client_streams.payload(&client_frames, "stdin");
    let (want_stdout, want_stderr): (Vec<u8>, Vec<u8>) = match cap.request.cmd[0].as_str() {
        "cat" => (stdin.clone(), Vec::new()),
        _ if cap.request.tty => (stdin.clone(), Vec::new()),
        _ if cap.request.cmd[2].contains("exit 7") => (b"out\n".to_vec(), b"err\n".to_vec()),
        _ => (b"done\n".to_vec(), Vec::new()),
    };
    if !cap.request.tty {
        // Without a tty the fake's output is the real command's: compare with CRI-O's too.
        assert_eq!(
            client_streams.payload(&captured, "stdout"),
            want_stdout,
            "{name}: the fake runtime's stdout differs from the capture"
        );
        assert_eq!(
            client_streams.payload(&captured, "stderr"),
            want_stderr,
            "{name}: the fake runtime's stderr differs from the capture"
        );
    }
    let got_stdout = client_streams.payload(frames, "stdout");
    assert!(
        got_stdout == want_stdout,
        "{name}: stdout: got {} bytes {:?}, want {} bytes {:?}",
        got_stdout.len(),
        String::from_utf8_lossy(&got_stdout[..got_stdout.len().min(200)]),
        want_stdout.len(),
        String::from_utf8_lossy(&want_stdout[..want_stdout.len().min(200)]),
    );
    assert_eq!(
        String::from_utf8_lossy(&client_streams.payload(frames, "stderr")),
        String::from_utf8_lossy(&want_stderr),
        "{name}: stderr"
    );
    let captured_status = client_streams.payload(&captured, "error");
    assert!(
        !captured_status.is_empty(),
        "{name}: no status in the capture"
    );
    assert_eq!(
        String::from_utf8_lossy(&client_streams.payload(frames, "error")),
        String::from_utf8_lossy(&captured_status),
        "{name}: the error stream differs from what CRI-O sent"
    );
    // Every DATA frame of the server fits the 32 KiB client-go and CRI-O use.
    for f in frames {
        if let Frame::Data(d) = f {
            assert!(
                d.data.len() <= 32768,
                "{name}: DATA frame of {} bytes",
                d.data.len()
            );
            assert!(
                client_streams.types.contains_key(&d.stream_id),
                "{name}: DATA on unknown stream {}",
                d.stream_id
            );
        }
    }

    // PINGs: each client PING echoed once, and none of the server's own (CRI-O sends none).
    let mut echoed = seen.pings();
    echoed.sort_unstable();
    let mut sent = pings.clone();
    sent.sort_unstable();
    assert_eq!(echoed, sent, "{name}: PING echoes");
    let captured_pings: Vec<u32> = captured
        .iter()
        .filter_map(|f| match f {
            Frame::Ping { id } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(captured_pings, pings, "{name}: CRI-O's PING echoes");

    // Teardown: after the status, every stream is FIN'd or reset with CANCEL, no frame on a
    // stream after its FIN or RST, then GOAWAY (OK, last = highest client stream), then close.
    let Some(Frame::GoAway {
        last_good_stream_id,
        status,
    }) = frames.last()
    else {
        panic!("{name}: the last frame is not GOAWAY; {}", dump());
    };
    assert_eq!(*status, GoAwayStatus::Ok, "{}", dump());
    assert_eq!(
        Some(last_good_stream_id),
        client_ids.iter().max(),
        "{}",
        dump()
    );
    assert_eq!(
        frames
            .iter()
            .filter(|f| matches!(f, Frame::GoAway { .. }))
            .count(),
        1,
        "{}",
        dump()
    );
    let mut closed: BTreeSet<u32> = BTreeSet::new();
    let mut status_seen = false;
    let error_id = client_streams.id_of("error").unwrap();
    for f in frames {
        if let Some(id) = f.stream_id()
            && closed.contains(&id)
        {
            panic!(
                "{name}: {} on stream {id} after its FIN or RST; {}",
                f.type_name(),
                dump()
            );
        }
        match f {
            Frame::Data(d) => {
                if d.stream_id == error_id && !d.data.is_empty() {
                    status_seen = true;
                }
                if d.flags.fin() {
                    closed.insert(d.stream_id);
                }
            }
            Frame::RstStream { stream_id, status } => {
                assert_eq!(*status, RstStatus::Cancel, "{}", dump());
                assert!(
                    status_seen,
                    "{name}: RST_STREAM before the status; {}",
                    dump()
                );
                closed.insert(*stream_id);
            }
            _ => {}
        }
    }
    let all: BTreeSet<u32> = client_ids.iter().copied().collect();
    assert_eq!(
        closed,
        all,
        "{name}: streams neither FIN'd nor reset; {}",
        dump()
    );
}

#[test]
fn every_exec_capture_is_replayed() {
    let names: Vec<String> = common::sessions()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec-"))
        .collect();
    assert_eq!(names, EXEC_CAPTURES, "exec captures without a replay test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_exec_stdin_cat() {
    replay("exec-stdin-cat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_exec_exit7_stderr() {
    replay("exec-exit7-stderr").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_exec_tty_resize() {
    replay("exec-tty-resize").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_exec_sleep_ping() {
    replay("exec-sleep-ping").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_exec_bulk_cat() {
    replay("exec-bulk-cat").await;
}
