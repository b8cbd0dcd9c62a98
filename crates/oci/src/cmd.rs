//! Running runc (and other short-lived tools): bounded time, stdin written then closed, stdout
//! and stderr captured, and every failure keeping the command line and its stderr.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A failed external command.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("starting `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {after:?} and was killed; stderr: {stderr}")]
    Timeout {
        command: String,
        after: Duration,
        stderr: String,
    },
    #[error("`{command}` failed ({status}): {stderr}{}", if stdout.is_empty() { String::new() } else { format!(" (stdout: {stdout})") })]
    Failed {
        command: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("`{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

impl CmdError {
    /// The command's stderr, when it ran.
    pub fn stderr(&self) -> &str {
        match self {
            CmdError::Timeout { stderr, .. } | CmdError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

/// `program arg arg` for messages.
pub fn display(program: &Path, args: &[OsString]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `program args` with `stdin` (or /dev/null), waiting at most `timeout`; a non-zero exit
/// is [`CmdError::Failed`]. On timeout the process is killed and reaped.
pub async fn run(
    program: &Path,
    args: &[OsString],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, CmdError> {
    let command = display(program, args);
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CmdError::Spawn {
            command: command.clone(),
            source,
        })?;
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let stdin_pipe = child.stdin.take();
    let io_err = |source| CmdError::Io {
        command: command.clone(),
        source,
    };
    let work = async {
        if let (Some(mut pipe), Some(data)) = (stdin_pipe, stdin) {
            pipe.write_all(data).await?;
            drop(pipe);
        }
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(p) = out_pipe.as_mut() {
                p.read_to_end(&mut out).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let read_err = async {
            if let Some(p) = err_pipe.as_mut() {
                p.read_to_end(&mut err).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let (a, b, status) = tokio::join!(read_out, read_err, child.wait());
        a?;
        b?;
        Ok::<_, std::io::Error>((status?, out, err))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok((status, out, err))) => {
            if status.success() {
                Ok(out)
            } else {
                Err(CmdError::Failed {
                    command,
                    status,
                    stdout: String::from_utf8_lossy(&out).trim().to_string(),
                    stderr: String::from_utf8_lossy(&err).trim().to_string(),
                })
            }
        }
        Ok(Err(e)) => Err(io_err(e)),
        Err(_) => {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            Err(CmdError::Timeout {
                command,
                after: timeout,
                stderr: String::new(),
            })
        }
    }
}
