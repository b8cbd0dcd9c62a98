//! Driving runc through conmon.
//!
//! **Create** starts `conmon` (Debian's 2.1.6), which forks, detaches (`setsid`, stdio on
//! /dev/null; its first process exits at once, so it is reparented away from the daemon and
//! survives a daemon restart), becomes a subreaper and runs `runc create`. It owns the
//! container's stdio, writes the CRI log (`<RFC3339Nano> <stdout|stderr> <P|F> <msg>`) to
//! `--log-path`, the exit code to `<exits_dir>/<id>` and `<bundle>/exit` (`--persist-dir`), an
//! `oom` marker to `<bundle>/oom`, its own pid to `<bundle>/conmon.pid` and the container's to
//! `<bundle>/pidfile`, and serves the attach socket and the `ctl` FIFO in the bundle. It tells
//! us the container pid (or runc's error) as one JSON line on the sync pipe (fd 3,
//! `_OCI_SYNCPIPE`): `{"pid": N}` or `{"pid": -1, "message": "..."}`.
//!
//! **Start, kill, delete, state, update** are plain `runc` calls with a timeout. **Stop**
//! signals, waits for conmon's exit file, and SIGKILLs (all processes) after the timeout.
//! **Exec-sync** runs `runc exec` in the foreground rather than through `conmon --exec`: runc is
//! then the exec'd process's parent and reaps it, stdout and stderr arrive on separate pipes,
//! and a timeout kills the process's whole process group (runc makes it a session leader)
//! before runc returns, so nothing is left behind and nothing is reparented to the daemon.
//! **Exec** and **attach** with the client's streams are in [`crate::stream`].
//! **Reopen log** writes message type 2 to conmon's `ctl` FIFO; conmon closes and reopens the
//! log path (what the kubelet's log rotation needs).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::cmd::{self, CmdError};
use crate::spec::oci;
use crate::stream::ProcessIo;

/// Where the tools are and where their state goes.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Absolute path of runc (conmon requires one).
    pub runc: PathBuf,
    /// Absolute path of conmon.
    pub conmon: PathBuf,
    /// runc's `--root` (its state directory), e.g. `/run/sluice/runc`.
    pub runc_root: PathBuf,
    /// conmon's `--exit-dir`: one file per container id holding the exit code.
    pub exits_dir: PathBuf,
    /// conmon's `--socket-dir-path`: short symlinks to bundles, so attach socket paths fit in
    /// `sun_path` (108 bytes).
    pub attach_dir: PathBuf,
    /// Limit for runc start/kill/delete/state/update.
    pub command_timeout: Duration,
    /// Limit for conmon + `runc create` to report the container pid.
    pub create_timeout: Duration,
    /// conmon `--log-size-max` (bytes), if any.
    pub log_size_max: Option<u64>,
    /// conmon `--log-level` (`error`, `warn`, `info`, `debug`).
    pub conmon_log_level: String,
}

impl RuntimeConfig {
    /// Defaults under `runroot` (`/run/sluice`), with `runc` and `conmon` looked up in `PATH`.
    pub fn new(runroot: &Path) -> Result<Self, RuntimeError> {
        Ok(Self {
            runc: find_in_path("runc")?,
            conmon: find_in_path("conmon")?,
            runc_root: runroot.join("runc"),
            exits_dir: runroot.join("exits"),
            attach_dir: runroot.join("attach"),
            command_timeout: Duration::from_secs(30),
            create_timeout: Duration::from_secs(120),
            log_size_max: None,
            conmon_log_level: "error".into(),
        })
    }
}

/// Resolves `name` against `PATH` (plus the sbin directories, which root's `PATH` may lack).
pub fn find_in_path(name: &str) -> Result<PathBuf, RuntimeError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| RuntimeError::BinaryNotFound(name.to_string()))
}

/// A runtime operation failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0} not found in PATH or the sbin directories")]
    BinaryNotFound(String),
    #[error(transparent)]
    Command(#[from] CmdError),
    #[error("container {0} does not exist in runc")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("creating container {id}: {message}")]
    Create { id: String, message: String },
    #[error("creating container {id}: conmon did not report within {after:?}")]
    CreateTimeout { id: String, after: Duration },
    #[error("stopping container {id}: still running {after:?} after SIGKILL")]
    StopTimeout { id: String, after: Duration },
    #[error("exec in container {id} failed to start: {stderr}")]
    ExecStart { id: String, stderr: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What CreateContainer hands the runtime.
#[derive(Debug, Clone)]
pub struct CreateRequest<'a> {
    pub id: &'a str,
    /// The container's runtime directory (the OCI bundle); created if missing.
    pub bundle: &'a Path,
    pub spec: &'a oci::Spec,
    /// The CRI log file (`log_directory/log_path`); its directory is created if missing.
    pub log_path: &'a Path,
    /// Keep stdin open for attach (`-i`).
    pub stdin: bool,
    /// Close stdin after the first attach disconnects.
    pub stdin_once: bool,
}

/// A created container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// The container's init process (host pid).
    pub pid: i32,
    /// The conmon monitoring it.
    pub conmon_pid: i32,
}

/// `runc state` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuncState {
    pub id: String,
    pub pid: i32,
    /// `created`, `running`, `paused`, `stopped`.
    pub status: String,
    pub bundle: String,
    #[serde(default)]
    pub created: String,
}

/// What is known about a container from its runtime directory and runc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created, not started.
    Created {
        pid: i32,
    },
    Running {
        pid: i32,
    },
    Paused {
        pid: i32,
    },
    /// conmon recorded its exit. `code` is 128+signal for a killed process.
    Exited {
        code: i32,
        finished_at: SystemTime,
        oom_killed: bool,
    },
    /// Neither runc nor conmon knows it (for example after a reboot), or their answers
    /// disagree; `reason` says which.
    Unknown {
        reason: String,
    },
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopOutcome {
    pub exit_code: i32,
    /// SIGKILL was needed (the stop signal was ignored past the timeout, or timeout 0).
    pub killed: bool,
}

/// Result of an exec-sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The process's exit code (128+signal when killed); -1 when it timed out.
    pub exit_code: i32,
    pub timed_out: bool,
}

/// The fd conmon finds its sync pipe at (`_OCI_SYNCPIPE`), as CRI-O passes it.
const SYNC_FD: i32 = 3;

/// Cap on exec-sync output per stream (CRI-O's `maxExecSyncSize`).
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// The message CRI-O returns as stderr of a timed-out exec (the kubelet's probes expect a
/// non-zero exit code, not an error).
pub const EXEC_TIMED_OUT: &str = "command timed out";

/// Files in a container's runtime directory.
#[derive(Debug, Clone)]
pub struct BundleFiles {
    pub config: PathBuf,
    pub conmon_pid: PathBuf,
    pub pidfile: PathBuf,
    pub exit: PathBuf,
    pub oom: PathBuf,
    pub ctl: PathBuf,
}

impl BundleFiles {
    pub fn new(bundle: &Path) -> Self {
        Self {
            config: bundle.join("config.json"),
            conmon_pid: bundle.join("conmon.pid"),
            pidfile: bundle.join("pidfile"),
            exit: bundle.join("exit"),
            oom: bundle.join("oom"),
            ctl: bundle.join("ctl"),
        }
    }
}

/// The exit conmon recorded in `bundle`, if any: (code, finished_at from the file's mtime,
/// OOM marker present).
pub fn read_exit(bundle: &Path) -> Result<Option<(i32, SystemTime, bool)>, RuntimeError> {
    let f = BundleFiles::new(bundle);
    let text = match std::fs::read_to_string(&f.exit) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", &f.exit)(e)),
    };
    // conmon writes the file with g_file_set_contents (write + rename), so a present file is
    // complete.
    let code = text.trim().parse::<i32>().map_err(|e| RuntimeError::Io {
        op: "parsing exit code in",
        path: f.exit.clone(),
        source: std::io::Error::other(format!("{text:?}: {e}")),
    })?;
    let finished = std::fs::metadata(&f.exit)
        .and_then(|m| m.modified())
        .map_err(io_err("reading", &f.exit))?;
    Ok(Some((code, finished, f.oom.exists())))
}

pub(crate) fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The real runtime: runc under conmon.
#[derive(Debug, Clone)]
pub struct Runc {
    cfg: RuntimeConfig,
}

static EXEC_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Runc {
    /// Creates the state directories.
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        for d in [&cfg.runc_root, &cfg.exits_dir, &cfg.attach_dir] {
            std::fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        Ok(Self { cfg })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    pub(crate) fn runc_args(&self, args: &[&str]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--root".into(), self.cfg.runc_root.clone().into()];
        v.extend(args.iter().map(OsString::from));
        v
    }

    async fn runc(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, CmdError> {
        cmd::run(
            &self.cfg.runc,
            &self.runc_args(args),
            stdin,
            self.cfg.command_timeout,
        )
        .await
    }

    /// Writes `config.json` and starts conmon, which runs `runc create`.
    #[tracing::instrument(skip_all, fields(id = req.id))]
    pub async fn create(&self, req: &CreateRequest<'_>) -> Result<Created, RuntimeError> {
        let files = BundleFiles::new(req.bundle);
        std::fs::create_dir_all(req.bundle).map_err(io_err("creating", req.bundle))?;
        if let Some(dir) = req.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        let json = serde_json::to_vec_pretty(req.spec).map_err(|source| RuntimeError::Json {
            what: "the generated spec".into(),
            source,
        })?;
        let tmp = req.bundle.join("config.json.tmp");
        std::fs::write(&tmp, json).map_err(io_err("writing", &tmp))?;
        std::fs::rename(&tmp, &files.config).map_err(io_err("renaming", &files.config))?;

        let mut args: Vec<OsString> = Vec::new();
        let mut push = |a: &str, v: &Path| {
            args.push(a.into());
            args.push(v.as_os_str().to_owned());
        };
        push("--bundle", req.bundle);
        push("--exit-dir", &self.cfg.exits_dir);
        push("--persist-dir", req.bundle);
        push("--log-path", req.log_path);
        push("--conmon-pidfile", &files.conmon_pid);
        push("--container-pidfile", &files.pidfile);
        push("--runtime", &self.cfg.runc);
        push("--socket-dir-path", &self.cfg.attach_dir);
        for (k, v) in [
            ("--cid", req.id),
            ("--cuuid", req.id),
            ("--name", req.id),
            ("--log-level", self.cfg.conmon_log_level.as_str()),
        ] {
            args.push(k.into());
            args.push(v.into());
        }
        let mut root_arg = OsString::from("--root=");
        root_arg.push(&self.cfg.runc_root);
        args.push("--runtime-arg".into());
        args.push(root_arg);
        if let Some(max) = self.cfg.log_size_max {
            args.push("--log-size-max".into());
            args.push(max.to_string().into());
        }
        if req.spec.process.terminal {
            args.push("--terminal".into());
        } else if req.stdin {
            args.push("--stdin".into());
            if !req.stdin_once {
                args.push("--leave-stdin-open".into());
            }
        }
        let command = cmd::display(&self.cfg.conmon, &args);
        tracing::debug!(%command, "starting conmon");

        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_err("creating the sync pipe for", req.bundle)(e.into()))?;
        // conmon reads its sync pipe from the fd named by _OCI_SYNCPIPE. std can only place
        // stdin/stdout/stderr, and the workspace forbids the `unsafe` a pre_exec dup2 needs, so
        // a tiny sh moves our stdin (the pipe's write end) to fd 3 and execs conmon. Clearing
        // FD_CLOEXEC in the daemon instead would leak the write end into every child forked
        // meanwhile, and a long-lived one would keep us from ever seeing EOF.
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(format!("exec \"$0\" \"$@\" {SYNC_FD}>&0 0</dev/null"))
            .arg(&self.cfg.conmon)
            .args(&args)
            .current_dir(req.bundle)
            .env_clear()
            .env("PATH", crate::spec::command::DEFAULT_PATH)
            .env("_OCI_SYNCPIPE", SYNC_FD.to_string())
            .stdin(std::process::Stdio::from(write_end))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // conmon must outlive us: never kill it with the handle.
            .kill_on_drop(false);
        let spawned = c.spawn();
        // Drop our copy of the write end (moved into the Command) so EOF means conmon is gone.
        drop(c);
        let child = spawned.map_err(|source| CmdError::Spawn {
            command: command.clone(),
            source,
        })?;
        // conmon's first process forks the monitor and exits at once.
        let first = tokio::time::timeout(self.cfg.command_timeout, child.wait_with_output()).await;
        let output = match first {
            Ok(Ok(o)) => o,
            Ok(Err(source)) => return Err(CmdError::Io { command, source }.into()),
            Err(_) => {
                return Err(CmdError::Timeout {
                    command,
                    after: self.cfg.command_timeout,
                    stderr: String::new(),
                }
                .into());
            }
        };
        if !output.status.success() {
            return Err(CmdError::Failed {
                command,
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).trim().to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            }
            .into());
        }
        let conmon_pid = read_pid(&files.conmon_pid).unwrap_or(-1);

        #[derive(Deserialize)]
        struct SyncMsg {
            pid: i32,
            #[serde(default)]
            message: String,
        }
        let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end)
            .map_err(io_err("reading the sync pipe for", req.bundle))?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(receiver);
        let read = tokio::time::timeout(self.cfg.create_timeout, reader.read_line(&mut line)).await;
        let fail = |message: String| RuntimeError::Create {
            id: req.id.to_string(),
            message,
        };
        match read {
            Err(_) => {
                self.kill_conmon(conmon_pid);
                return Err(RuntimeError::CreateTimeout {
                    id: req.id.to_string(),
                    after: self.cfg.create_timeout,
                });
            }
            Ok(Err(e)) => return Err(io_err("reading the sync pipe for", req.bundle)(e)),
            Ok(Ok(0)) => {
                return Err(fail(format!(
                    "conmon (pid {conmon_pid}) exited without reporting a container pid"
                )));
            }
            Ok(Ok(_)) => {}
        }
        let msg: SyncMsg =
            serde_json::from_str(line.trim()).map_err(|source| RuntimeError::Json {
                what: format!("conmon's sync message {:?}", line.trim()),
                source,
            })?;
        if msg.pid <= 0 {
            return Err(fail(if msg.message.is_empty() {
                "runc create failed without a message".into()
            } else {
                msg.message.trim().to_string()
            }));
        }
        Ok(Created {
            pid: msg.pid,
            conmon_pid,
        })
    }

    fn kill_conmon(&self, pid: i32) {
        if pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// `runc start`.
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.runc(&["start", id], None)
            .await
            .map(drop)
            .map_err(|e| classify(id, e))
    }

    /// `runc kill [--all] <id> <signal>`.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.runc(&args, None)
            .await
            .map(drop)
            .map_err(|e| classify(id, e))
    }

    /// Sends `signal`, waits up to `timeout` for conmon's exit record, then SIGKILLs every
    /// process of the container and waits again (bounded). `timeout` zero kills at once.
    /// An already exited container returns its recorded exit.
    #[tracing::instrument(skip_all, fields(id))]
    pub async fn stop(
        &self,
        id: &str,
        bundle: &Path,
        signal: i32,
        timeout: Duration,
    ) -> Result<StopOutcome, RuntimeError> {
        if let Some((code, _, _)) = read_exit(bundle)? {
            return Ok(StopOutcome {
                exit_code: code,
                killed: false,
            });
        }
        let kill_sig = nix::sys::signal::Signal::SIGKILL as i32;
        if !timeout.is_zero() && signal != kill_sig {
            match self.kill(id, signal, false).await {
                Ok(()) | Err(RuntimeError::NotRunning(_)) => {}
                Err(e) => return Err(e),
            }
            if let Some(code) = wait_exit(bundle, timeout).await? {
                return Ok(StopOutcome {
                    exit_code: code,
                    killed: false,
                });
            }
            tracing::info!(id, ?timeout, "stop signal timed out, killing");
        }
        match self.kill(id, kill_sig, true).await {
            Ok(()) | Err(RuntimeError::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        let grace = self.cfg.command_timeout;
        match wait_exit(bundle, grace).await? {
            Some(code) => Ok(StopOutcome {
                exit_code: code,
                killed: true,
            }),
            None => Err(RuntimeError::StopTimeout {
                id: id.to_string(),
                after: grace,
            }),
        }
    }

    /// `runc delete --force`; a container runc does not know is fine.
    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self
            .runc(&["delete", "--force", id], None)
            .await
            .map_err(|e| classify(id, e))
        {
            Ok(_) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // conmon's records outside the bundle: the exit file and the attach-socket link.
        for path in [self.cfg.exits_dir.join(id), self.cfg.attach_dir.join(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RuntimeError::Io {
                        op: "removing",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// `runc state`; `None` when runc does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<RuncState>, RuntimeError> {
        match self
            .runc(&["state", id], None)
            .await
            .map_err(|e| classify(id, e))
        {
            Ok(out) => {
                serde_json::from_slice(&out)
                    .map(Some)
                    .map_err(|source| RuntimeError::Json {
                        what: format!("`runc state {id}`"),
                        source,
                    })
            }
            Err(RuntimeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `runc update --resources -`.
    pub async fn update(
        &self,
        id: &str,
        resources: &oci::LinuxResources,
    ) -> Result<(), RuntimeError> {
        let json = serde_json::to_vec(resources).map_err(|source| RuntimeError::Json {
            what: "resources".into(),
            source,
        })?;
        self.runc(&["update", "--resources", "-", id], Some(&json))
            .await
            .map(drop)
            .map_err(|e| classify(id, e))
    }

    /// Runs `process` (the container's process with other args) in the container and collects
    /// its output. With `timeout`, a process still running then is killed with its process
    /// group and reported as `timed_out`, exit code -1, stderr [`EXEC_TIMED_OUT`].
    #[tracing::instrument(skip_all, fields(id))]
    pub async fn exec_sync(
        &self,
        id: &str,
        bundle: &Path,
        process: &oci::Process,
        timeout: Option<Duration>,
    ) -> Result<ExecOutcome, RuntimeError> {
        let n = EXEC_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("exec-{}-{n}", std::process::id());
        let proc_path = bundle.join(format!("{tag}.json"));
        let pid_path = bundle.join(format!("{tag}.pid"));
        let _cleanup = RemoveOnDrop(vec![proc_path.clone(), pid_path.clone()]);
        let mut p = process.clone();
        p.terminal = false;
        let json = serde_json::to_vec(&p).map_err(|source| RuntimeError::Json {
            what: "the exec process".into(),
            source,
        })?;
        std::fs::write(&proc_path, json).map_err(io_err("writing", &proc_path))?;

        let args = self.runc_args(&[
            "exec",
            "--pid-file",
            &pid_path.to_string_lossy(),
            "--process",
            &proc_path.to_string_lossy(),
            id,
        ]);
        let command = cmd::display(&self.cfg.runc, &args);
        let mut child = tokio::process::Command::new(&self.cfg.runc)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CmdError::Spawn {
                command: command.clone(),
                source,
            })?;
        let mut out_pipe = child.stdout.take();
        let mut err_pipe = child.stderr.take();
        let deadline = timeout.map(|t| Instant::now() + t);

        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let collect = async {
            let read_out = read_capped(out_pipe.as_mut(), &mut stdout);
            let read_err = read_capped(err_pipe.as_mut(), &mut stderr);
            let (_, _, status) = tokio::join!(read_out, read_err, child.wait());
            status
        };
        let finished = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), collect).await.ok(),
            None => Some(collect.await),
        };
        match finished {
            Some(status) => {
                let status = status.map_err(|source| CmdError::Io {
                    command: command.clone(),
                    source,
                })?;
                let code = exit_code(status);
                if !pid_path.exists() && code != 0 {
                    // The process never started: this is runc's own failure.
                    return Err(RuntimeError::ExecStart {
                        id: id.to_string(),
                        stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
                    });
                }
                Ok(ExecOutcome {
                    stdout,
                    stderr,
                    exit_code: code,
                    timed_out: false,
                })
            }
            None => {
                // Timed out: kill the exec'd process group (runc made it a session leader),
                // then let runc reap it and return.
                let pid = wait_for_pid(&pid_path, Duration::from_secs(2)).await;
                if let Some(pid) = pid {
                    let sig = nix::sys::signal::Signal::SIGKILL;
                    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
                drop(out_pipe);
                drop(err_pipe);
                match tokio::time::timeout(self.cfg.command_timeout, child.wait()).await {
                    Ok(_) => {}
                    Err(_) => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                }
                Ok(ExecOutcome {
                    stdout: Vec::new(),
                    stderr: EXEC_TIMED_OUT.as_bytes().to_vec(),
                    exit_code: -1,
                    timed_out: true,
                })
            }
        }
    }

    /// Asks conmon to reopen the container's log file (after the kubelet rotated it) and waits
    /// until the file exists again.
    pub async fn reopen_log(
        &self,
        id: &str,
        bundle: &Path,
        log_path: &Path,
    ) -> Result<(), RuntimeError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // An exited container's conmon may still hold the FIFO for a moment.
        if read_exit(bundle)?.is_some() {
            return Err(RuntimeError::NotRunning(id.to_string()));
        }
        let ctl = BundleFiles::new(bundle).ctl;
        // Non-blocking: with no reader (conmon gone) open fails with ENXIO instead of hanging.
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&ctl)
        {
            Ok(f) => f,
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO)
                    || e.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(RuntimeError::NotRunning(id.to_string()));
            }
            Err(e) => return Err(io_err("opening", &ctl)(e)),
        };
        f.write_all(b"2 0 0\n").map_err(io_err("writing", &ctl))?;
        drop(f);
        let deadline = Instant::now() + self.cfg.command_timeout;
        while !log_path.exists() {
            if Instant::now() > deadline {
                return Err(RuntimeError::Io {
                    op: "waiting for conmon to reopen",
                    path: log_path.to_path_buf(),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// What the runtime directory and runc say about a container: for start-up recovery, when
    /// the daemon has no memory of it. Exit records win (conmon wrote them after the process
    /// died); without one, runc's state decides; a `stopped` container gets a short grace for
    /// conmon to write its record.
    pub async fn reconcile(
        &self,
        id: &str,
        bundle: &Path,
    ) -> Result<ContainerStatus, RuntimeError> {
        if let Some((code, finished_at, oom_killed)) = read_exit(bundle)? {
            return Ok(ContainerStatus::Exited {
                code,
                finished_at,
                oom_killed,
            });
        }
        let state = self.state(id).await?;
        let Some(state) = state else {
            return Ok(ContainerStatus::Unknown {
                reason: "runc does not know the container and conmon left no exit record".into(),
            });
        };
        match state.status.as_str() {
            "created" => Ok(ContainerStatus::Created { pid: state.pid }),
            "running" => Ok(ContainerStatus::Running { pid: state.pid }),
            "paused" => Ok(ContainerStatus::Paused { pid: state.pid }),
            other => {
                if let Some(code) = wait_exit(bundle, Duration::from_secs(2)).await? {
                    let (_, finished_at, oom_killed) =
                        read_exit(bundle)?.unwrap_or((code, SystemTime::now(), false));
                    return Ok(ContainerStatus::Exited {
                        code,
                        finished_at,
                        oom_killed,
                    });
                }
                Ok(ContainerStatus::Unknown {
                    reason: format!(
                        "runc says {other:?} but conmon left no exit record (conmon killed?)"
                    ),
                })
            }
        }
    }
}

/// Removes the files when dropped (best effort).
pub(crate) struct RemoveOnDrop(pub(crate) Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<&mut R>, buf: &mut Vec<u8>) {
    let Some(pipe) = pipe else { return };
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = MAX_EXEC_OUTPUT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

async fn wait_for_pid(path: &Path, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(pid) = read_pid(path).filter(|p| *p > 0) {
            return Some(pid);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls for conmon's exit record (every 2 ms at first, backing off to 50 ms).
async fn wait_exit(bundle: &Path, within: Duration) -> Result<Option<i32>, RuntimeError> {
    let deadline = Instant::now() + within;
    let mut delay = Duration::from_millis(2);
    loop {
        if let Some((code, _, _)) = read_exit(bundle)? {
            return Ok(Some(code));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Maps runc's "no such container" / "not running" answers to typed errors.
fn classify(id: &str, e: CmdError) -> RuntimeError {
    let s = e.stderr();
    if s.contains("does not exist") || s.contains("container not found") {
        RuntimeError::NotFound(id.to_string())
    } else if s.contains("not running")
        || s.contains("no such process")
        || s.contains("process already finished")
    {
        RuntimeError::NotRunning(id.to_string())
    } else {
        RuntimeError::Command(e)
    }
}

/// A boxed future, so [`ContainerRuntime`] works as `Arc<dyn ContainerRuntime>`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The edge `pods` drives: one container's life in the OCI runtime. [`Runc`] is the real
/// implementation; `fake::FakeRuntime` (feature `test-util`) the test double.
pub trait ContainerRuntime: Send + Sync + std::fmt::Debug {
    /// Writes the bundle's `config.json` and creates the container (not started).
    fn create<'a>(
        &'a self,
        req: &'a CreateRequest<'a>,
    ) -> BoxFuture<'a, Result<Created, RuntimeError>>;
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    fn kill<'a>(
        &'a self,
        id: &'a str,
        signal: i32,
        all: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Stop signal, then SIGKILL after `timeout` (zero: at once).
    fn stop<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        signal: i32,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<StopOutcome, RuntimeError>>;
    /// Forgets the container in runc (force-killing it); idempotent.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// The container's state from its exit record and runc (also after a restart).
    fn status<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
    ) -> BoxFuture<'a, Result<ContainerStatus, RuntimeError>>;
    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        process: &'a oci::Process,
        timeout: Option<Duration>,
    ) -> BoxFuture<'a, Result<ExecOutcome, RuntimeError>>;
    fn update<'a>(
        &'a self,
        id: &'a str,
        resources: &'a oci::LinuxResources,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
    fn reopen_log<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        log_path: &'a Path,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Runs `process` in the container with the client's streams as its stdio (a terminal
    /// when `io.tty`) and returns its exit code (128+signal when killed) once it exited and
    /// its output was written. Dropping the future kills the process (and only it).
    fn exec<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        process: &'a oci::Process,
        io: ProcessIo,
    ) -> BoxFuture<'a, Result<i32, RuntimeError>>;
    /// Connects the client's streams to the container's main process until it exits.
    /// Dropping the future only disconnects. With `stdin_once`, the client's stdin EOF closes
    /// the container's stdin.
    fn attach<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        io: ProcessIo,
        stdin_once: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
}

impl ContainerRuntime for Runc {
    fn create<'a>(
        &'a self,
        req: &'a CreateRequest<'a>,
    ) -> BoxFuture<'a, Result<Created, RuntimeError>> {
        Box::pin(Runc::create(self, req))
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(Runc::start(self, id))
    }
    fn kill<'a>(
        &'a self,
        id: &'a str,
        signal: i32,
        all: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(Runc::kill(self, id, signal, all))
    }
    fn stop<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        signal: i32,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<StopOutcome, RuntimeError>> {
        Box::pin(Runc::stop(self, id, bundle, signal, timeout))
    }
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(Runc::delete(self, id))
    }
    fn status<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
    ) -> BoxFuture<'a, Result<ContainerStatus, RuntimeError>> {
        Box::pin(Runc::reconcile(self, id, bundle))
    }
    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        process: &'a oci::Process,
        timeout: Option<Duration>,
    ) -> BoxFuture<'a, Result<ExecOutcome, RuntimeError>> {
        Box::pin(Runc::exec_sync(self, id, bundle, process, timeout))
    }
    fn update<'a>(
        &'a self,
        id: &'a str,
        resources: &'a oci::LinuxResources,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(Runc::update(self, id, resources))
    }
    fn reopen_log<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        log_path: &'a Path,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(Runc::reopen_log(self, id, bundle, log_path))
    }
    fn exec<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        process: &'a oci::Process,
        io: ProcessIo,
    ) -> BoxFuture<'a, Result<i32, RuntimeError>> {
        Box::pin(Runc::exec_interactive(self, id, bundle, process, io))
    }
    fn attach<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        io: ProcessIo,
        stdin_once: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(Runc::attach(self, id, bundle, io, stdin_once))
    }
}
