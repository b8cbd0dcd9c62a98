//! Running one plugin (CNI spec section 2, "Execution protocol").
//!
//! The plugin gets its parameters in `CNI_*` environment variables and its config on stdin,
//! which is written and then closed. It runs in its own process group so that a timeout kills it
//! together with anything it forked (a shell-script plugin's `sleep`, say), and the wait is
//! bounded. Non-zero exit means failure; stdout then holds `{"code","msg","details"}`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{CniError, PluginError, Result};

/// A CNI operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready to ADD (1.1.0).
    Status,
    /// Release resources of attachments not in the valid list (1.1.0).
    Gc,
    /// Report supported versions.
    Version,
}

impl Command {
    /// The `CNI_COMMAND` value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names of the well-known error codes (CNI spec section "Error").
pub(crate) fn error_code_name(code: u32) -> Option<&'static str> {
    Some(match code {
        1 => "incompatible cni version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "i/o failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        50 => "plugin not available",
        51 => "plugin not available, existing containers may be limited",
        _ => return None,
    })
}

/// The per-attachment parameters; absent for STATUS and GC.
#[derive(Debug, Clone)]
pub(crate) struct Attachment<'a> {
    pub container_id: &'a str,
    /// Empty string is allowed for DEL when the netns is gone.
    pub netns: &'a str,
    pub ifname: &'a str,
    pub cni_args: &'a str,
}

/// One plugin process to run.
#[derive(Debug)]
pub(crate) struct Invocation<'a> {
    pub command: Command,
    pub plugin: &'a str,
    pub path: &'a Path,
    pub cni_path: &'a str,
    pub attachment: Option<Attachment<'a>>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

/// What a successful run produced.
#[derive(Debug)]
pub(crate) struct Output {
    pub stdout: Vec<u8>,
    /// From spawn to exit: the time spent inside the plugin process.
    pub elapsed: Duration,
}

#[derive(Deserialize)]
struct WireError {
    code: u32,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    details: Option<String>,
}

const CNI_VARS: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// Grace period for collecting a killed plugin's exit status.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// Find `plugin` in `dirs`, first match wins.
pub(crate) fn find_plugin(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf> {
    for dir in dirs {
        let candidate = dir.join(plugin);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(CniError::PluginNotFound {
        plugin: plugin.to_owned(),
        dirs: dirs.to_vec(),
    })
}

/// Run one plugin to completion or until its timeout.
pub(crate) async fn run(inv: Invocation<'_>) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(inv.path);
    for var in CNI_VARS {
        cmd.env_remove(var);
    }
    cmd.env("CNI_COMMAND", inv.command.as_str())
        .env("CNI_PATH", inv.cni_path);
    if let Some(a) = &inv.attachment {
        cmd.env("CNI_CONTAINERID", a.container_id)
            .env("CNI_NETNS", a.netns)
            .env("CNI_IFNAME", a.ifname)
            .env("CNI_ARGS", a.cni_args);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| CniError::Spawn {
        plugin: inv.plugin.to_owned(),
        path: inv.path.to_path_buf(),
        command: inv.command,
        source,
    })?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let input = inv.stdin;

    let io_err = |source: std::io::Error| CniError::PluginIo {
        plugin: inv.plugin.to_owned(),
        command: inv.command,
        source,
    };

    let mut err_buf = Vec::new();
    let outcome = {
        let write = async move {
            if let Some(mut s) = stdin {
                match s.write_all(&input).await {
                    // A plugin may exit without reading its config; that is its business.
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                    _ => {}
                }
                // Dropping `s` closes the pipe: the plugin sees EOF.
            }
            Ok(())
        };
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                s.read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                s.read_to_end(&mut err_buf).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let all = async { tokio::join!(write, read_out, read_err, child.wait()) };
        tokio::time::timeout(inv.timeout, all).await
    };

    let (w, out, errr, status) = match outcome {
        Ok(v) => v,
        Err(_elapsed) => {
            // Kill the whole process group, then reap the leader (bounded).
            if let Some(pgid) = pgid
                && let Err(e) = killpg(pgid, Signal::SIGKILL)
            {
                tracing::warn!(plugin = inv.plugin, error = %e, "killpg after timeout failed");
            }
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
            return Err(CniError::Timeout {
                plugin: inv.plugin.to_owned(),
                command: inv.command,
                timeout: inv.timeout,
                stderr: String::from_utf8_lossy(&err_buf).into_owned(),
            });
        }
    };
    let elapsed = started.elapsed();
    let status = status.map_err(io_err)?;
    w.map_err(io_err)?;
    let stdout = out.map_err(io_err)?;
    errr.map_err(io_err)?;
    let stderr = String::from_utf8_lossy(&err_buf).into_owned();

    tracing::debug!(
        plugin = inv.plugin,
        command = %inv.command,
        elapsed_us = elapsed.as_micros() as u64,
        %status,
        "cni plugin finished"
    );

    if status.success() {
        if !stderr.trim().is_empty() {
            tracing::debug!(plugin = inv.plugin, command = %inv.command, %stderr, "cni plugin stderr");
        }
        return Ok(Output { stdout, elapsed });
    }
    let (code, msg, details) = match serde_json::from_slice::<WireError>(&stdout) {
        Ok(e) => (Some(e.code), e.msg, e.details),
        Err(_) => (None, None, None),
    };
    Err(CniError::Plugin(Box::new(PluginError {
        plugin: inv.plugin.to_owned(),
        command: inv.command,
        exit_status: status,
        code,
        msg,
        details,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
    })))
}
