//! The edge between the streaming server and the container runtime.
//!
//! The server turns a client session (SPDY or WebSocket) into plain byte pipes and asks a
//! [`StreamRuntime`] to run the operation on them. `pods` implements it for the real daemon
//! (runc exec, conmon's attach socket, a socket dialled inside the pod's network namespace);
//! tests use small in-process implementations.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// A boxed future, so the trait works as `Arc<dyn StreamRuntime>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte source from the client (stdin). EOF means the client closed stdin.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A byte sink to the client (stdout, stderr). `shutdown` closes that stream for the client.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A terminal size, as the client's resize stream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// The client's side of an exec or attach session.
///
/// Exactly the streams the client asked for are present: with `tty` there is never `stderr`
/// (the terminal merges it into `stdout`) and `resize` is present; without `tty`, `resize` is
/// `None`.
pub struct StreamIo {
    pub tty: bool,
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    /// Terminal sizes in the order the client sent them; the first one, if any, arrives
    /// before or soon after the process starts and must be applied as soon as possible.
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

impl fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamIo")
            .field("tty", &self.tty)
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// An `Exec` the CRI server accepted (validated, container known at that time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An `Attach` the CRI server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A `PortForward` the CRI server accepted. `ports` is empty when the client may name any
/// port in its stream headers (crictl and the kubelet send them per stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
    pub ports: Vec<u16>,
}

/// Why the runtime could not run a streaming operation. The message goes to the client (in
/// the error stream's `Status`), so it names the container or pod and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The container or pod sandbox is gone.
    #[error("{0}")]
    NotFound(String),
    /// It exists but cannot do this now (container not running, no stdin, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Anything else (runc failed, the dial failed, ...).
    #[error("{0}")]
    Internal(String),
}

/// What the streaming server needs from the container runtime.
///
/// Cancellation: the server drops a returned future when the client goes away (or the
/// session times out idle). Dropping an `exec` future must kill the exec'd process (and only
/// it); dropping an `attach` future must leave the container running.
pub trait StreamRuntime: Send + Sync + 'static {
    /// Runs `req.cmd` in the container with `io` as its stdio and returns its exit code
    /// (128+signal when killed) once it has exited and all its output was written to `io`.
    /// Stdin EOF closes the process's stdin. With a tty, each `resize` is applied.
    fn exec<'a>(
        &'a self,
        req: &'a ExecRequest,
        io: StreamIo,
    ) -> BoxFuture<'a, Result<i32, StreamError>>;

    /// Connects `io` to the container's main process stdio (through the monitor) until the
    /// process exits (then its remaining output is written and the future resolves). Stdin
    /// EOF is passed on only when the container was created with `stdin_once`.
    fn attach<'a>(
        &'a self,
        req: &'a AttachRequest,
        io: StreamIo,
    ) -> BoxFuture<'a, Result<(), StreamError>>;

    /// A TCP connection to `port` on the pod's loopback, made from a socket opened inside the
    /// pod's network namespace (127.0.0.1, then ::1).
    fn port_forward<'a>(
        &'a self,
        pod_sandbox_id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream, StreamError>>;
}
