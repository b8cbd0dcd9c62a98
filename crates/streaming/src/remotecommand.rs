//! Exec and attach over SPDY (`v4.channel.k8s.io` and older), the kubelet's remote-command
//! protocol as crictl and the kubelet speak it.
//!
//! The client opens every stream (one SYN_STREAM per stream, `streamtype` header: `error`,
//! `stdin`, `stdout`, `stderr`, `resize`) and waits for each SYN_REPLY. Once the streams the
//! request asked for are there, the runtime runs the operation on them; its outcome goes on
//! the error stream (a `Status` for v4, text for older versions), then the session ends as
//! CRI-O ends it (RST_STREAM CANCEL for the streams still open, GOAWAY, close).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::runtime::{AttachRequest, ExecRequest, StreamIo, StreamRuntime, TermSize};
use crate::spdy::{Incoming, SessionHandle, StreamReader, StreamWriter};
use crate::status::{self, ErrorFormat};

/// The protocols this server speaks for exec and attach over SPDY, most preferred first.
/// v5 is WebSocket-only in Kubernetes, so SPDY clients offering it get v4.
pub const SPDY_REMOTE_COMMAND_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How long the client has to open the streams it announced.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run once the streams are open.
#[derive(Debug, Clone)]
pub enum Operation {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Operation {
    fn wants(&self) -> (bool, bool, bool, bool) {
        match self {
            Operation::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Operation::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        }
    }
}

/// The streams of one session, as the client opened them.
#[derive(Debug, Default)]
struct Opened {
    error: Option<StreamWriter>,
    stdin: Option<StreamReader>,
    stdout: Option<StreamWriter>,
    stderr: Option<StreamWriter>,
    resize: Option<StreamReader>,
}

impl Opened {
    fn complete(&self, stdin: bool, stdout: bool, stderr: bool, resize: bool) -> bool {
        self.error.is_some()
            && (!stdin || self.stdin.is_some())
            && (!stdout || self.stdout.is_some())
            && (!stderr || self.stderr.is_some())
            && (!resize || self.resize.is_some())
    }
}

/// Runs an exec or attach session on an upgraded SPDY connection until it ends.
pub async fn serve(
    handle: SessionHandle,
    mut incoming: Incoming,
    protocol: &str,
    op: Operation,
    runtime: Arc<dyn StreamRuntime>,
) {
    let format = ErrorFormat::for_protocol(protocol);
    let (want_stdin, want_stdout, want_stderr, tty) = op.wants();
    // v1 and v2 have no resize stream; with a tty there is no separate stderr.
    let want_resize = tty && !matches!(protocol, "channel.k8s.io" | "v2.channel.k8s.io");
    let want_stderr = want_stderr && !tty;

    let mut opened = Opened::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !opened.complete(want_stdin, want_stdout, want_stderr, want_resize) {
        let next = tokio::time::timeout_at(deadline, incoming.accept()).await;
        let Ok(Some(inc)) = next else {
            if next.is_err() {
                tracing::warn!(
                    timeout = ?STREAM_CREATION_TIMEOUT,
                    "streaming client did not open its streams in time"
                );
            }
            handle.close().await;
            return;
        };
        let kind = inc.header("streamtype").unwrap_or_default().to_string();
        let Ok(stream) = inc.accept().await else {
            return;
        };
        let (reader, writer) = stream.into_split();
        match kind.as_str() {
            "error" => opened.error = Some(writer),
            "stdin" => opened.stdin = Some(reader),
            "stdout" => opened.stdout = Some(writer),
            "stderr" => opened.stderr = Some(writer),
            "resize" => opened.resize = Some(reader),
            other => tracing::debug!(streamtype = other, "ignoring unknown stream type"),
        }
    }

    let resize = opened.resize.take().map(spawn_resize_reader);
    let io = StreamIo {
        tty,
        stdin: opened.stdin.take().map(|r| Box::new(r) as _),
        stdout: opened.stdout.take().map(|w| Box::new(w) as _),
        stderr: opened.stderr.take().map(|w| Box::new(w) as _),
        resize,
    };
    let outcome = tokio::select! {
        r = run(&op, io, runtime.as_ref(), format) => Some(r),
        () = handle.closed() => None,
    };
    let Some(bytes) = outcome else {
        // The client went away (or the session idled out): the runtime future was dropped,
        // which kills an exec'd process and leaves an attached container running.
        tracing::debug!("streaming client disconnected before the operation ended");
        return;
    };
    if let (Some(bytes), Some(mut error)) = (bytes, opened.error.take()) {
        let _ = error.write_all(&bytes).await;
    }
    handle.shutdown().await;
}

async fn run(
    op: &Operation,
    io: StreamIo,
    runtime: &dyn StreamRuntime,
    format: ErrorFormat,
) -> Option<Vec<u8>> {
    match op {
        Operation::Exec(req) => {
            let r = runtime.exec(req, io).await;
            match &r {
                Ok(code) => {
                    tracing::debug!(container_id = %req.container_id, code, "exec finished");
                }
                Err(e) => {
                    tracing::warn!(container_id = %req.container_id, error = %e, "exec failed");
                }
            }
            status::exec_result(format, &r)
        }
        Operation::Attach(req) => {
            let r = runtime.attach(req, io).await;
            if let Err(e) = &r {
                tracing::warn!(container_id = %req.container_id, error = %e, "attach failed");
            }
            status::attach_result(format, &r)
        }
    }
}

/// Turns the resize stream's JSON lines (`{"Width":80,"Height":24}`) into sizes.
pub(crate) fn spawn_resize_reader(reader: StreamReader) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match parse_size(&line) {
                Some(size) => {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
                None if line.trim().is_empty() => {}
                None => tracing::debug!(line, "ignoring malformed resize message"),
            }
        }
    });
    rx
}

/// Parses one resize message; zero sizes are ignored as the kubelet ignores them.
pub(crate) fn parse_size(text: &str) -> Option<TermSize> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let s: Size = serde_json::from_str(text.trim()).ok()?;
    (s.width > 0 && s.height > 0).then_some(TermSize {
        width: s.width,
        height: s.height,
    })
}
