//! Running runc (and other short-lived tools): bounded time, stdin written then closed, stdout
//! and stderr captured, and every failure keeping the command line and its stderr.
//!
//! [`run_output`] is the one implementation: it returns the exit status, stdout and stderr
//! whatever the exit status. [`run`] is the common case on top of it, where a non-zero exit is
//! [`CmdError::Failed`].

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a killed child may take to be reaped after a timeout.
const REAP_GRACE: Duration = Duration::from_secs(5);

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

/// What a command that ran to completion left behind, whatever its exit status.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    /// Everything it wrote to stdout, untouched.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr, untouched.
    pub stderr: Vec<u8>,
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
    let out = run_output(program, args, stdin, timeout).await?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(CmdError::Failed {
            command: display(program, args),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `program args` with `stdin` (or /dev/null), waiting at most `timeout`, and returns its
/// exit status, stdout and stderr whatever the status: only a failure to start
/// ([`CmdError::Spawn`]), an i/o error on the pipes ([`CmdError::Io`]) and the timeout
/// ([`CmdError::Timeout`], with the stderr read so far) are errors. Never returns
/// [`CmdError::Failed`].
///
/// `stdin` is written while stdout and stderr are drained, so a chatty child cannot deadlock
/// us, and the pipe is closed afterwards. A child that exits without reading all of its stdin
/// makes the write fail (EPIPE): that is only reported when the child exited successfully,
/// since otherwise its status and stderr are the better evidence. On timeout the process is
/// killed and reaped.
pub async fn run_output(
    program: &Path,
    args: &[OsString],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, CmdError> {
    let command = || display(program, args);
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
            command: command(),
            source,
        })?;
    let stdin_pipe = child.stdin.take();
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    // Outside the timed future, so that what was read before a timeout is still here.
    let mut out = Vec::new();
    let mut err = Vec::new();
    let work = async {
        let write = async {
            if let (Some(mut pipe), Some(data)) = (stdin_pipe, stdin) {
                pipe.write_all(data).await?;
                // Dropping the pipe (here or on the error return) closes it: EOF for the child.
                drop(pipe);
            }
            Ok::<_, std::io::Error>(())
        };
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
        let (w, o, e, status) = tokio::join!(write, read_out, read_err, child.wait());
        let status = status?;
        o?;
        e?;
        if status.success() {
            w?;
        }
        Ok::<_, std::io::Error>(status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(status)) => Ok(Output {
            status,
            stdout: out,
            stderr: err,
        }),
        Ok(Err(source)) => Err(CmdError::Io {
            command: command(),
            source,
        }),
        Err(_) => {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
            Err(CmdError::Timeout {
                command: command(),
                after: timeout,
                stderr: String::from_utf8_lossy(&err).trim().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[tokio::test]
    async fn stdin_is_written_and_closed_and_stdout_returned() {
        let input = b"hello\nworld\n".repeat(50_000); // larger than a pipe buffer
        let out = run(Path::new("cat"), &[], Some(&input), LIMIT)
            .await
            .expect("cat succeeds");
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn non_zero_exit_keeps_status_stdout_and_stderr() {
        let a = args(&["-c", "echo out; echo oops >&2; exit 3"]);
        let err = run(Path::new("sh"), &a, None, LIMIT)
            .await
            .expect_err("exit 3 is a failure");
        match &err {
            CmdError::Failed {
                command,
                status,
                stdout,
                stderr,
            } => {
                assert_eq!(command, "sh -c echo out; echo oops >&2; exit 3");
                assert_eq!(status.code(), Some(3));
                assert_eq!(stdout, "out");
                assert_eq!(stderr, "oops");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(err.stderr(), "oops");
        assert!(err.to_string().contains("oops"), "{err}");

        // run_output: the same run is not an error and keeps the raw bytes.
        let out = run_output(Path::new("sh"), &a, None, LIMIT)
            .await
            .expect("run_output does not judge the status");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"oops\n");
    }

    #[tokio::test]
    async fn unread_stdin_on_failure_reports_the_status_not_epipe() {
        // The child exits at once without reading: writing more than a pipe buffer gets EPIPE.
        let input = vec![b'x'; 1 << 20];
        let a = args(&["-c", "echo refused >&2; exit 1"]);
        let err = run(Path::new("sh"), &a, Some(&input), LIMIT)
            .await
            .expect_err("exit 1 is a failure");
        match err {
            CmdError::Failed { status, stderr, .. } => {
                assert_eq!(status.code(), Some(1));
                assert_eq!(stderr, "refused");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn timeout_kills_reaps_and_names_the_command() {
        // The shell prints its pid (which `exec` hands to sleep) before sleeping.
        let a = args(&["-c", "echo $$ >&2; exec sleep 10"]);
        let limit = Duration::from_secs(2);
        let err = run(Path::new("sh"), &a, None, limit)
            .await
            .expect_err("sleep 10 outlives the limit");
        let pid = match &err {
            CmdError::Timeout {
                command,
                after,
                stderr,
            } => {
                assert_eq!(command, "sh -c echo $$ >&2; exec sleep 10");
                assert_eq!(*after, limit);
                stderr
                    .parse::<u32>()
                    .expect("the pid printed before the timeout")
            }
            other => panic!("expected Timeout, got {other:?}"),
        };
        assert!(err.to_string().contains("exec sleep 10"), "{err}");
        // Killed and reaped: not even a zombie is left.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still there"
        );
    }

    #[tokio::test]
    async fn missing_program_is_spawn_naming_it() {
        let program = Path::new("/nonexistent/runcmd-no-such-tool");
        let err = run(program, &args(&["--flag"]), None, LIMIT)
            .await
            .expect_err("cannot start");
        match &err {
            CmdError::Spawn { command, source } => {
                assert_eq!(command, "/nonexistent/runcmd-no-such-tool --flag");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Spawn, got {other:?}"),
        }
        assert!(err.to_string().contains("runcmd-no-such-tool"), "{err}");
    }
}
