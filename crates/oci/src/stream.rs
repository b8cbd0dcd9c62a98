//! Interactive exec and attach: a client's byte streams connected to a process in a container.
//!
//! **Exec** runs `runc exec --process <file> --pid-file <file> <id>` in the foreground, as
//! exec-sync does, so runc is the exec'd process's parent and reaps it:
//! - without a terminal, the process inherits runc's stdio: pipes we copy from and to (stdin is
//!   `/dev/null` when the client sends none, and closing the client's stdin closes the pipe);
//! - with a terminal (`process.terminal`), runc allocates the container's pty and copies between
//!   it and its own stdio, which must then be a terminal: we give runc the slave of a pty pair
//!   we open (already in raw mode, so nothing is echoed or line-edited before runc takes over)
//!   and copy between its master and the client. runc sizes the container's pty from its own
//!   terminal when it starts and on every `SIGWINCH`; a resize therefore sets the master's
//!   window size and then signals runc (it shares our session, so the kernel never does).
//!
//! The exit code (runc's, which is the process's, 128+signal when killed) is returned once
//! runc has exited and all output was written to the client. Dropping the future kills the
//! exec'd process (SIGKILL to its process group: runc made it a session leader) and leaves runc
//! to a task that reaps it; nothing else in the container is touched.
//!
//! **Attach** connects to conmon's attach socket (`<attach_dir>/<id>/attach`, a
//! `SOCK_SEQPACKET` socket under the short symlink conmon makes for `--socket-dir-path`).
//! Every message from conmon is one buffer of container output whose first byte names the
//! pipe (conmon's `stdpipe_t`: 2 stdout, 3 stderr; with a terminal everything is stdout); what we send is raw stdin. conmon closes the socket when the
//! container exits (after the output is drained). A resize is message type 1 on the bundle's
//! `ctl` FIFO: `1 <height> <width>\n`.

use std::fmt;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, SockFlag, SockType, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::cmd::{self, CmdError};
use crate::runtime::{BundleFiles, RemoveOnDrop, Runc, RuntimeError, exit_code, io_err, read_pid};
use crate::spec::oci;

/// A byte source from the client (stdin); EOF means the client closed it.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A byte sink to the client (stdout, stderr).
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub width: u16,
    pub height: u16,
}

/// The client's streams for an exec or attach. Absent streams are not connected: no stdin
/// reads as EOF (`/dev/null`), absent output is discarded. With `tty`, the terminal merges
/// stderr into stdout and `resize` carries the client's terminal sizes in order.
pub struct ProcessIo {
    pub tty: bool,
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    pub resize: Option<mpsc::Receiver<WindowSize>>,
}

impl fmt::Debug for ProcessIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessIo")
            .field("tty", &self.tty)
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// Size of one read from a process pipe, the pty or the client.
const CHUNK: usize = 32 * 1024;
/// Largest stdin message to conmon: it reads at most `CONN_SOCK_BUF_SIZE - 1` (32767) bytes
/// per SEQPACKET message and a longer one would be truncated.
const ATTACH_STDIN_CHUNK: usize = 8 * 1024;
/// Largest output message from conmon (its stdio buffer plus the pipe byte), with room.
const ATTACH_RECV_BUF: usize = 64 * 1024;
/// conmon's pipe bytes: its `stdpipe_t` (`NO_PIPE`, `STDIN_PIPE`, `STDOUT_PIPE`,
/// `STDERR_PIPE`), so stdout is 2 and stderr 3.
const ATTACH_STDOUT: u8 = 2;
const ATTACH_STDERR: u8 = 3;
/// `sizeof(sockaddr_un.sun_path)` minus the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// How long a cancelled exec waits for runc to write the pid file before giving up on it.
const PID_FILE_GRACE: Duration = Duration::from_secs(2);

static STREAM_EXEC_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Registers `fd` with tokio's reactor.
///
/// tokio 1.54 deprecates `AsyncFd::new` because a `T: AsRawFd` need not own its descriptor
/// (it could be closed and reused under the reactor); its replacement is `unsafe`, which this
/// crate forbids. Here `T` is an `OwnedFd` moved into the `AsyncFd`, which therefore owns the
/// descriptor for its whole registration: the case the deprecation is not about.
#[allow(deprecated)]
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
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

/// Copies `from` to `to` until EOF, then flushes and shuts `to` down. A client that stops
/// accepting output does not stop the copy: the rest is discarded, so the process never
/// blocks on a full pipe.
async fn copy_out<R: AsyncRead + Unpin>(mut from: R, mut to: Option<BoxWrite>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => write_or_drop(&mut to, &buf[..n]).await,
        }
    }
    finish(to).await;
}

async fn write_or_drop(to: &mut Option<BoxWrite>, data: &[u8]) {
    if let Some(w) = to.as_mut()
        && let Err(e) = w.write_all(data).await
    {
        tracing::debug!(error = %e, "client output stream failed; discarding the rest");
        *to = None;
    }
}

async fn finish(to: Option<BoxWrite>) {
    if let Some(mut w) = to {
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    }
}

/// SIGKILLs `pid` and its process group (runc makes the exec'd process a session leader).
fn kill_exec_process(pid: i32) {
    use nix::sys::signal::{Signal, kill, killpg};
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
}

/// Owns a foreground `runc exec` until it finished normally. Dropped early (the client went
/// away), it kills the exec'd process and hands runc to a task that reaps it.
struct ExecGuard {
    child: Option<tokio::process::Child>,
    pid_path: PathBuf,
    files: Vec<PathBuf>,
    grace: Duration,
    id: String,
}

impl ExecGuard {
    /// Takes over `files` (removed once runc is done, also after a cancellation).
    fn new(
        child: tokio::process::Child,
        runc: &Runc,
        id: &str,
        mut files: RemoveOnDrop,
        pid_path: &Path,
    ) -> Self {
        Self {
            child: Some(child),
            pid_path: pid_path.to_path_buf(),
            files: std::mem::take(&mut files.0),
            grace: runc.config().command_timeout,
            id: id.to_string(),
        }
    }

    fn child(&mut self) -> &mut tokio::process::Child {
        self.child
            .as_mut()
            .expect("the child is only taken on drop")
    }

    /// runc returned: nothing to kill; the caller removes the files (dropping the result)
    /// once it has looked at them.
    fn finished(mut self) -> RemoveOnDrop {
        self.child = None;
        RemoveOnDrop(std::mem::take(&mut self.files))
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        let files = RemoveOnDrop(std::mem::take(&mut self.files));
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid_path = self.pid_path.clone();
        if let Some(pid) = read_pid(&pid_path).filter(|p| *p > 0) {
            kill_exec_process(pid);
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime to reap runc on: kill_on_drop kills it and tokio's orphan queue
            // reaps it later.
            return;
        };
        let grace = self.grace;
        let id = std::mem::take(&mut self.id);
        tracing::info!(container_id = %id, "exec cancelled: killing the exec'd process");
        handle.spawn(async move {
            let _files = files;
            // runc may not have started the process yet: kill it once its pid is known.
            let deadline = Instant::now() + PID_FILE_GRACE;
            loop {
                if let Some(pid) = read_pid(&pid_path).filter(|p| *p > 0) {
                    kill_exec_process(pid);
                    break;
                }
                if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                tracing::warn!(container_id = %id, "runc exec did not exit after its process was killed; killing it");
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        });
    }
}

/// The error messages runc wrote to its JSON `--log`.
fn runc_log_errors(path: &Path) -> String {
    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(default)]
        level: String,
        #[serde(default)]
        msg: String,
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .filter(|l| matches!(l.level.as_str(), "error" | "fatal" | "panic"))
        .map(|l| l.msg.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    msgs.join("; ")
}

impl Runc {
    /// Runs `process` in container `id` with the client's streams as its stdio (a terminal
    /// when `io.tty`) and returns its exit code (128+signal when killed) after all its output
    /// was written. See the module docs for how the streams, resizes and cancellation work.
    pub async fn exec_interactive(
        &self,
        id: &str,
        bundle: &Path,
        process: &oci::Process,
        io: ProcessIo,
    ) -> Result<i32, RuntimeError> {
        let span = tracing::info_span!("runc_exec", container_id = %id, tty = io.tty);
        self.exec_inner(id, bundle, process, io)
            .instrument(span)
            .await
    }

    async fn exec_inner(
        &self,
        id: &str,
        bundle: &Path,
        process: &oci::Process,
        io: ProcessIo,
    ) -> Result<i32, RuntimeError> {
        let n = STREAM_EXEC_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("exec-stream-{}-{n}", std::process::id());
        let proc_path = bundle.join(format!("{tag}.json"));
        let pid_path = bundle.join(format!("{tag}.pid"));
        let log_path = bundle.join(format!("{tag}.log"));
        let cleanup = RemoveOnDrop(vec![proc_path.clone(), pid_path.clone(), log_path.clone()]);

        let mut p = process.clone();
        p.terminal = io.tty;
        if io.tty && !p.env.iter().any(|e| e.starts_with("TERM=")) {
            p.env.push("TERM=xterm".into());
        }
        // The latest size the client sent already. runc sizes the container's pty from it
        // (`consoleSize`) before the process runs; its own resize from our terminal comes only
        // after the process started, too late for a short command like `stty size`.
        let mut io = io;
        let initial = io.resize.as_mut().and_then(|rx| {
            let mut latest = None;
            while let Ok(size) = rx.try_recv() {
                latest = Some(size);
            }
            latest
        });
        let json =
            process_json(&p, initial.filter(|_| io.tty)).map_err(|source| RuntimeError::Json {
                what: "the exec process".into(),
                source,
            })?;
        std::fs::write(&proc_path, json).map_err(io_err("writing", &proc_path))?;
        let args = self.runc_args(&[
            "--log",
            &log_path.to_string_lossy(),
            "--log-format",
            "json",
            "exec",
            "--pid-file",
            &pid_path.to_string_lossy(),
            "--process",
            &proc_path.to_string_lossy(),
            id,
        ]);
        let command = cmd::display(&self.config().runc, &args);
        let mut c = tokio::process::Command::new(&self.config().runc);
        c.args(&args).kill_on_drop(true);
        let spawn_err = |source| CmdError::Spawn {
            command: command.clone(),
            source,
        };
        let (code, _cleanup) = if io.tty {
            let pty = Pty::open()?;
            if let Some(size) = initial {
                set_window_size(&pty.master, size)
                    .map_err(io_err("sizing", Path::new("/dev/ptmx")))?;
            }
            let (slave_in, slave_out, slave_err) = pty.slave_stdio()?;
            c.stdin(slave_in).stdout(slave_out).stderr(slave_err);
            let spawned = c.spawn();
            // The Command holds runc's copies of the slave: drop them so the master reads EOF
            // once runc is gone.
            drop(c);
            let guard = ExecGuard::new(spawned.map_err(spawn_err)?, self, id, cleanup, &pid_path);
            drop(pty.slave);
            run_tty(guard, pty.master, io, &command).await?
        } else {
            let piped_or_null = |present: bool| {
                if present {
                    std::process::Stdio::piped()
                } else {
                    std::process::Stdio::null()
                }
            };
            c.stdin(piped_or_null(io.stdin.is_some()))
                .stdout(piped_or_null(io.stdout.is_some()))
                .stderr(piped_or_null(io.stderr.is_some()));
            let child = c.spawn().map_err(spawn_err)?;
            let guard = ExecGuard::new(child, self, id, cleanup, &pid_path);
            run_pipes(guard, io, &command).await?
        };
        if code != 0 && !pid_path.exists() {
            // The process never started: this is runc's own failure.
            let mut stderr = runc_log_errors(&log_path);
            if stderr.is_empty() {
                stderr = format!("runc exited with status {code} before starting the process");
            }
            return Err(RuntimeError::ExecStart {
                id: id.to_string(),
                stderr,
            });
        }
        Ok(code)
    }

    /// Connects the client's streams to container `id`'s main process through conmon's attach
    /// socket until the container exits (and its output was written) or the client's future
    /// is dropped (the container keeps running). With `stdin_once`, the client closing stdin
    /// closes the container's stdin; otherwise it only stops sending. (For a `stdin_once`
    /// container conmon also closes its stdin when an attached client disconnects: CRI's
    /// "close stdin after the first attach".)
    pub async fn attach(
        &self,
        id: &str,
        bundle: &Path,
        io: ProcessIo,
        stdin_once: bool,
    ) -> Result<(), RuntimeError> {
        let span = tracing::info_span!("conmon_attach", container_id = %id, tty = io.tty);
        self.attach_inner(id, bundle, io, stdin_once)
            .instrument(span)
            .await
    }

    async fn attach_inner(
        &self,
        id: &str,
        bundle: &Path,
        io: ProcessIo,
        stdin_once: bool,
    ) -> Result<(), RuntimeError> {
        let path = self.config().attach_dir.join(id).join("attach");
        let sock = connect_attach(id, &path).await?;
        let sock = register(sock).map_err(io_err("registering the attach socket", &path))?;
        let ctl = BundleFiles::new(bundle).ctl;
        let ProcessIo {
            tty: _,
            stdin,
            stdout,
            stderr,
            resize,
        } = io;

        let output = async {
            let (mut stdout, mut stderr) = (stdout, stderr);
            let mut buf = vec![0u8; ATTACH_RECV_BUF];
            let result = loop {
                let n = match sock
                    .async_io(tokio::io::Interest::READABLE, |fd| {
                        socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                            .map_err(std::io::Error::from)
                    })
                    .await
                {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => break Ok(()),
                    Err(e) => break Err(io_err("reading the attach socket", &path)(e)),
                };
                match buf[0] {
                    ATTACH_STDOUT => write_or_drop(&mut stdout, &buf[1..n]).await,
                    ATTACH_STDERR => write_or_drop(&mut stderr, &buf[1..n]).await,
                    other => tracing::debug!(pipe = other, "unknown pipe byte from conmon"),
                }
            };
            finish(stdout).await;
            finish(stderr).await;
            result
        };
        let input = async {
            let Some(mut stdin) = stdin else { return };
            let mut buf = vec![0u8; ATTACH_STDIN_CHUNK];
            loop {
                let n = match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut data = &buf[..n];
                while !data.is_empty() {
                    let sent = sock
                        .async_io(tokio::io::Interest::WRITABLE, |fd| {
                            socket::send(fd.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL)
                                .map_err(std::io::Error::from)
                        })
                        .await;
                    match sent {
                        Ok(k) => data = &data[k..],
                        Err(e) => {
                            tracing::debug!(error = %e, "attach socket closed for stdin");
                            return;
                        }
                    }
                }
            }
            if stdin_once {
                // conmon closes the container's stdin when it reads our EOF.
                let _ = socket::shutdown(sock.get_ref().as_raw_fd(), socket::Shutdown::Write);
            }
        };
        let resizes = async {
            let Some(mut resize) = resize else { return };
            while let Some(size) = resize.recv().await {
                if let Err(e) = write_ctl(&ctl, size) {
                    tracing::debug!(error = %e, "resizing the container terminal");
                }
            }
        };
        beside(output, async {
            tokio::join!(input, resizes);
        })
        .await
    }
}

/// The process file for `runc exec --process`: `process` plus, when known, the terminal's
/// initial `consoleSize` (a runtime-spec field the generated [`oci::Process`] does not carry).
fn process_json(
    process: &oci::Process,
    size: Option<WindowSize>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut value = serde_json::to_value(process)?;
    if let (Some(size), Some(obj)) = (size, value.as_object_mut()) {
        obj.insert(
            "consoleSize".into(),
            serde_json::json!({ "height": size.height, "width": size.width }),
        );
    }
    serde_json::to_vec(&value)
}

/// Writes a resize (message type 1) to conmon's control FIFO.
fn write_ctl(ctl: &Path, size: WindowSize) -> Result<(), RuntimeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: with no reader (conmon gone) open fails with ENXIO instead of hanging.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(ctl)
        .map_err(io_err("opening", ctl))?;
    f.write_all(format!("1 {} {}\n", size.height, size.width).as_bytes())
        .map_err(io_err("writing", ctl))
}

/// Connects a non-blocking SEQPACKET socket to conmon's attach socket. A path longer than
/// `sun_path` is reached through `/proc/self/fd/<dir>/attach`, as conmon binds it.
async fn connect_attach(id: &str, path: &Path) -> Result<OwnedFd, RuntimeError> {
    let sock = socket::socket(
        socket::AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io_err("creating a socket for", path)(e.into()))?;
    let mut _dir: Option<std::fs::File> = None;
    let addr = if path.as_os_str().len() <= SUN_PATH_MAX {
        UnixAddr::new(path)
    } else {
        use std::os::unix::fs::OpenOptionsExt;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(parent)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => RuntimeError::NotRunning(id.to_string()),
                _ => io_err("opening", parent)(e),
            })?;
        let short = format!("/proc/self/fd/{}/attach", dir.as_raw_fd());
        _dir = Some(dir);
        UnixAddr::new(short.as_str())
    }
    .map_err(|e| io_err("addressing", path)(e.into()))?;
    // A full backlog (EAGAIN) clears as conmon accepts; retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match socket::connect(sock.as_raw_fd(), &addr) {
            Ok(()) => return Ok(sock),
            Err(Errno::EAGAIN | Errno::EINTR) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // No socket (never created, or conmon removed with the container) or nobody
            // listening (conmon exited with the container).
            Err(Errno::ENOENT | Errno::ECONNREFUSED | Errno::ENOTDIR) => {
                return Err(RuntimeError::NotRunning(id.to_string()));
            }
            Err(e) => return Err(io_err("connecting to", path)(e.into())),
        }
    }
}

/// A pty pair whose slave becomes runc's terminal.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    fn open() -> Result<Self, RuntimeError> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let dev = Path::new("/dev/ptmx");
        let pty = nix::pty::openpty(
            None::<&nix::pty::Winsize>,
            None::<&nix::sys::termios::Termios>,
        )
        .map_err(|e| io_err("opening a pty pair at", dev)(e.into()))?;
        // Raw until runc takes over (it saves and restores the mode, and sets raw itself), so
        // early client input is neither echoed nor line-edited by this terminal.
        let mut t = tcgetattr(&pty.slave).map_err(|e| io_err("configuring", dev)(e.into()))?;
        cfmakeraw(&mut t);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &t)
            .map_err(|e| io_err("configuring", dev)(e.into()))?;
        set_nonblocking(&pty.master).map_err(io_err("configuring", dev))?;
        Ok(Self {
            master: pty.master,
            slave: pty.slave,
        })
    }

    fn slave_stdio(
        &self,
    ) -> Result<
        (
            std::process::Stdio,
            std::process::Stdio,
            std::process::Stdio,
        ),
        RuntimeError,
    > {
        let dup = || {
            self.slave
                .try_clone()
                .map(std::process::Stdio::from)
                .map_err(io_err("duplicating", Path::new("/dev/ptmx")))
        };
        Ok((dup()?, dup()?, dup()?))
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

fn set_window_size(master: &OwnedFd, size: WindowSize) -> std::io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .map_err(std::io::Error::from)
}

fn sigwinch(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGWINCH,
        );
    }
}

/// The pipe flavour: runc's stdio are pipes (or /dev/null) the process inherits.
async fn run_pipes(
    mut guard: ExecGuard,
    io: ProcessIo,
    command: &str,
) -> Result<(i32, RemoveOnDrop), RuntimeError> {
    let child = guard.child();
    let child_stdin = child.stdin.take();
    let child_stdout = child.stdout.take();
    let child_stderr = child.stderr.take();
    let ProcessIo {
        stdin,
        stdout,
        stderr,
        ..
    } = io;
    let input = async move {
        if let (Some(mut from), Some(mut to)) = (stdin, child_stdin) {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            // Dropping `to` closes the pipe: the process reads EOF.
        }
    };
    let output = async {
        let out = async {
            if let Some(r) = child_stdout {
                copy_out(r, stdout).await;
            }
        };
        let err = async {
            if let Some(r) = child_stderr {
                copy_out(r, stderr).await;
            }
        };
        tokio::join!(out, err);
    };
    let status = beside(
        async {
            let (_, status) = tokio::join!(output, guard.child().wait());
            status
        },
        input,
    )
    .await
    .map_err(|source| CmdError::Io {
        command: command.to_string(),
        source,
    })?;
    Ok((exit_code(status), guard.finished()))
}

/// The terminal flavour: runc's stdio is our pty's slave; we serve its master.
async fn run_tty(
    mut guard: ExecGuard,
    master: OwnedFd,
    io: ProcessIo,
    command: &str,
) -> Result<(i32, RemoveOnDrop), RuntimeError> {
    let runc_pid = guard.child().id();
    let master = register(master).map_err(|source| CmdError::Io {
        command: command.to_string(),
        source,
    })?;
    let ProcessIo {
        stdin,
        stdout,
        resize,
        ..
    } = io;
    let pid_path = guard.pid_path.clone();

    let output = async {
        let mut to = stdout;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let read = master
                .async_io(tokio::io::Interest::READABLE, |fd| {
                    nix::unistd::read(fd, &mut buf).map_err(std::io::Error::from)
                })
                .await;
            match read {
                Ok(0) => break,
                Ok(n) => write_or_drop(&mut to, &buf[..n]).await,
                // EIO: every slave is closed (runc exited), the buffer is drained.
                Err(_) => break,
            }
        }
        finish(to).await;
    };
    let input = async {
        let Some(mut stdin) = stdin else { return };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut data = &buf[..n];
            while !data.is_empty() {
                let written = master
                    .async_io(tokio::io::Interest::WRITABLE, |fd| {
                        nix::unistd::write(fd, data).map_err(std::io::Error::from)
                    })
                    .await;
                match written {
                    Ok(k) => data = &data[k..],
                    Err(_) => return,
                }
            }
        }
    };
    let resizes = async {
        let Some(mut rx) = resize else { return };
        // The process may start after a SIGWINCH sent too early was ignored: signal again
        // once runc wrote the pid file (runc has then installed its handler).
        let announced = async {
            let deadline = Instant::now() + PID_FILE_GRACE * 5;
            while read_pid(&pid_path).is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sigwinch(runc_pid);
        };
        let follow = async {
            while let Some(size) = rx.recv().await {
                if let Err(e) = set_window_size(master.get_ref(), size) {
                    tracing::debug!(error = %e, "setting the exec terminal size");
                }
                sigwinch(runc_pid);
            }
        };
        tokio::join!(announced, follow);
    };
    let status = beside(
        async {
            let (_, status) = tokio::join!(output, guard.child().wait());
            status
        },
        async {
            tokio::join!(input, resizes);
        },
    )
    .await
    .map_err(|source| CmdError::Io {
        command: command.to_string(),
        source,
    })?;
    Ok((exit_code(status), guard.finished()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_log_errors_keeps_error_messages() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            "{\"level\":\"info\",\"msg\":\"x\"}\nnot json\n{\"level\":\"error\",\"msg\":\"exec failed: no such file\\n\"}\n",
        )
        .unwrap();
        assert_eq!(runc_log_errors(&p), "exec failed: no such file");
        assert_eq!(runc_log_errors(&dir.path().join("missing")), "");
    }

    #[test]
    fn process_json_adds_the_console_size() {
        let p = oci::Process {
            terminal: true,
            args: vec!["sh".into()],
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(
            &process_json(
                &p,
                Some(WindowSize {
                    width: 100,
                    height: 30,
                }),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["consoleSize"],
            serde_json::json!({"height": 30, "width": 100})
        );
        assert_eq!(v["args"], serde_json::json!(["sh"]));
        let v: serde_json::Value =
            serde_json::from_slice(&process_json(&p, None).unwrap()).unwrap();
        assert!(v.get("consoleSize").is_none());
    }

    #[tokio::test]
    async fn copy_out_keeps_draining_after_the_client_fails() {
        struct Broken;
        impl AsyncWrite for Broken {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let (mut w, r) = tokio::io::duplex(16);
        let writer = tokio::spawn(async move {
            // Far more than the duplex buffer: only completes if the copy keeps reading.
            w.write_all(&[7u8; 4096]).await.unwrap();
        });
        copy_out(r, Some(Box::new(Broken))).await;
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn pty_master_reads_what_the_slave_writes_then_eof() {
        let pty = Pty::open().unwrap();
        set_window_size(
            &pty.master,
            WindowSize {
                width: 100,
                height: 30,
            },
        )
        .unwrap();
        let ws = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (30, 100));
        nix::unistd::write(&pty.slave, b"raw\n").unwrap();
        drop(pty.slave);
        let master = register(pty.master).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match master
                .async_io(tokio::io::Interest::READABLE, |fd| {
                    nix::unistd::read(fd, &mut buf).map_err(std::io::Error::from)
                })
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        // Raw mode: no "\r\n" translation.
        assert_eq!(got, b"raw\n");
    }
}
