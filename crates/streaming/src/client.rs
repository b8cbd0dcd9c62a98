//! A streaming client, the way crictl and the kubelet use the protocol: for tests, benches
//! and debugging tools (feature `client`).
//!
//! [`connect_spdy`] performs the HTTP/1.1 upgrade and starts a client SPDY session;
//! [`exec_spdy`] then opens the streams in client-go's order (error, stdin, stdout, stderr or
//! resize), waiting for each SYN_REPLY, feeds stdin and resizes, and collects the output and
//! the status. [`port_forward_spdy`] opens one request's error/data pair.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::spdy::{self, HeaderBlock, Incoming, Role, SessionConfig, SessionHandle, Stream};

/// A failed client operation, with enough text to debug a test failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Url(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server answered {status}: {body}")]
    Http { status: u16, body: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("spdy: {0}")]
    Open(#[from] spdy::OpenError),
    #[error("{0}")]
    Protocol(String),
}

/// The parts of a streaming URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port`.
    pub authority: String,
    /// `/exec/<token>` and any query.
    pub path: String,
}

impl Url {
    /// Parses `http://host:port/path` or `https://...` (the caller brings the TLS).
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| ClientError::Url(format!("{url:?}: not an http(s) URL")))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(ClientError::Url(format!("{url:?}: no host")));
        }
        Ok(Url {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// An HTTP response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` (a complete HTTP/1.1 head) and reads the response head byte by byte, so
/// nothing after it is consumed. Returns the head and, for non-101 answers, the body read
/// until the server closes (bounded).
pub async fn http_exchange<S>(
    tcp: &mut S,
    request: &str,
) -> Result<(ResponseHead, String), ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 {
            return Err(ClientError::Protocol(format!(
                "connection closed in the response head: {:?}",
                String::from_utf8_lossy(&head)
            )));
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(ClientError::Protocol("response head too long".into()));
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let head = ResponseHead { status, headers };
    let mut body = String::new();
    if status != 101 {
        // Content-Length when given (the connection stays open), else until close.
        let len = head
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(64 * 1024)
            .min(64 * 1024);
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            (&mut *tcp).take(len).read_to_end(&mut buf),
        )
        .await;
        body = String::from_utf8_lossy(&buf).to_string();
    }
    Ok((head, body))
}

/// Connects to a streaming URL and upgrades to SPDY/3.1 offering `protocols`. Returns the
/// client session and the protocol the server picked.
pub async fn connect_spdy(
    url: &str,
    protocols: &[&str],
) -> Result<(SessionHandle, Incoming, String), ClientError> {
    let url = Url::parse(url)?;
    let mut tcp =
        TcpStream::connect(&url.authority)
            .await
            .map_err(|source| ClientError::Connect {
                addr: url.authority.clone(),
                source,
            })?;
    tcp.set_nodelay(true)?;
    let req = spdy_upgrade_request(&url, protocols);
    let (head, body) = http_exchange(&mut tcp, &req).await?;
    if head.status != 101 {
        return Err(ClientError::Http {
            status: head.status,
            body,
        });
    }
    let protocol = head
        .header("x-stream-protocol-version")
        .unwrap_or_default()
        .to_string();
    let (handle, incoming) = spdy::session::spawn(tcp, Role::Client, SessionConfig::default());
    Ok((handle, incoming, protocol))
}

/// The HTTP/1.1 request crictl sends to upgrade a streaming URL to SPDY/3.1.
pub fn spdy_upgrade_request(url: &Url, protocols: &[&str]) -> String {
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice-test\r\nContent-Length: 0\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
        url.path, url.authority
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// What an exec or attach produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Everything received on the error stream (a `Status` JSON for v4).
    pub error: Vec<u8>,
}

impl Output {
    /// The error stream as a JSON value, if it is one.
    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.error).ok()
    }

    /// The exit code the status reports: 0 for Success, the ExitCode cause otherwise.
    pub fn exit_code(&self) -> Option<i32> {
        let s = self.status()?;
        match s.get("status")?.as_str()? {
            "Success" => Some(0),
            _ => s
                .pointer("/details/causes")?
                .as_array()?
                .iter()
                .find(|c| c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode"))?
                .get("message")?
                .as_str()?
                .parse()
                .ok(),
        }
    }
}

/// Options of a client-side exec or attach session.
#[derive(Debug, Default)]
pub struct SessionOptions {
    /// Bytes to send on stdin (opens the stdin stream); `None`: no stdin stream.
    pub stdin: Option<Vec<u8>>,
    /// Send FIN on stdin after the bytes (a pipe reaching EOF).
    pub close_stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// Terminal sizes to send on the resize stream (tty only), in order, before stdin.
    pub resizes: Vec<(u16, u16)>,
    /// More stdin chunks sent while the session runs (after `stdin`), e.g. typed keys.
    pub stdin_later: Option<mpsc::Receiver<Vec<u8>>>,
}

impl SessionOptions {
    /// stdout and stderr, nothing else: what `crictl exec <ctr> <cmd>` asks for.
    pub fn output() -> Self {
        Self {
            stdout: true,
            stderr: true,
            ..Self::default()
        }
    }
}

/// Opens one stream per `kinds` entry (`streamtype` header), in order, each after the
/// previous one's SYN_REPLY, as client-go does.
pub async fn open_streams(
    handle: &SessionHandle,
    kinds: &[&str],
) -> Result<Vec<Stream>, ClientError> {
    let mut out = Vec::with_capacity(kinds.len());
    for kind in kinds {
        out.push(open(handle, kind).await?);
    }
    Ok(out)
}

async fn open(handle: &SessionHandle, kind: &str) -> Result<Stream, ClientError> {
    let mut h = HeaderBlock::new();
    h.push("streamtype", kind.as_bytes().to_vec())
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(handle.open(h).await?)
}

/// Runs an exec or attach session over an upgraded client session, in client-go's stream
/// order, and collects its output until the server ends the session.
pub async fn run_remote_command(
    handle: &SessionHandle,
    mut opts: SessionOptions,
) -> Result<Output, ClientError> {
    let error = open(handle, "error").await?;
    let stdin = match opts.stdin.is_some() {
        true => Some(open(handle, "stdin").await?),
        false => None,
    };
    let stdout = match opts.stdout {
        true => Some(open(handle, "stdout").await?),
        false => None,
    };
    let stderr = match opts.stderr && !opts.tty {
        true => Some(open(handle, "stderr").await?),
        false => None,
    };
    let resize = match opts.tty {
        true => Some(open(handle, "resize").await?),
        false => None,
    };
    if let Some(resize) = resize {
        let (_r, mut w) = resize.into_split();
        for (width, height) in &opts.resizes {
            let line = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
            w.write_all(line.as_bytes()).await?;
        }
        // Keep the stream open until the session ends: the real client never closes it.
        let session = handle.clone();
        tokio::spawn(async move {
            session.closed().await;
            drop(w);
        });
    }
    if let Some(stdin) = stdin {
        let (_r, mut w) = stdin.into_split();
        let data = opts.stdin.take().unwrap_or_default();
        let close = opts.close_stdin;
        let later = opts.stdin_later.take();
        let session = handle.clone();
        tokio::spawn(async move {
            if w.write_all(&data).await.is_err() {
                return;
            }
            if let Some(mut later) = later {
                while let Some(chunk) = later.recv().await {
                    if w.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            }
            if close {
                let _ = w.shutdown().await;
            } else {
                session.closed().await;
            }
        });
    }
    let read_all = |s: Option<Stream>| async move {
        let mut buf = Vec::new();
        if let Some(s) = s {
            let (mut r, _w) = s.into_split();
            // A reset at the end of the session is normal (the server RSTs open streams).
            let _ = r.read_to_end(&mut buf).await;
        }
        buf
    };
    let (out, err, status) =
        tokio::join!(read_all(stdout), read_all(stderr), read_all(Some(error)));
    Ok(Output {
        stdout: out,
        stderr: err,
        error: status,
    })
}

/// Connects, upgrades and runs an exec/attach session with the default protocol offer of
/// crictl (v5 down to v1).
pub async fn exec_spdy(url: &str, opts: SessionOptions) -> Result<Output, ClientError> {
    let (handle, _incoming, _protocol) = connect_spdy(url, CRICTL_PROTOCOLS).await?;
    let out = run_remote_command(&handle, opts).await;
    handle.close().await;
    out
}

/// What crictl v1.36 offers for exec and attach, in its order.
pub const CRICTL_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// One port-forward connection over a client session: the error and data streams of
/// `request_id` for `port`. Returns the data stream and the error stream.
pub async fn port_forward_spdy(
    handle: &SessionHandle,
    port: u16,
    request_id: u32,
) -> Result<(Stream, Stream), ClientError> {
    let headers = |kind: &str| -> Result<HeaderBlock, ClientError> {
        let mut h = HeaderBlock::new();
        for (n, v) in [
            ("streamtype", kind.to_string()),
            ("port", port.to_string()),
            ("requestid", request_id.to_string()),
        ] {
            h.push(n, v.into_bytes())
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        }
        Ok(h)
    };
    let error = handle.open(headers("error")?).await?;
    let data = handle.open(headers("data")?).await?;
    Ok((data, error))
}
