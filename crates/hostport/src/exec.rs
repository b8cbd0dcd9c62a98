//! The one way this crate runs external tools: optional `nsenter --net=PATH` prefix, stdin
//! written then closed (or null), stdout and stderr collected, bounded wait, child killed
//! when the wait is abandoned.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::Error;

#[derive(Debug, Clone)]
pub(crate) struct Runner {
    /// Run every command inside this network namespace (through `nsenter`, an external
    /// process, so no tokio thread ever changes namespace).
    pub netns: Option<PathBuf>,
    pub nsenter: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug)]
pub(crate) struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Runner {
    /// Human-readable command line, for errors and logs.
    pub fn describe(&self, program: &str, args: &[&str]) -> String {
        let mut s = String::new();
        if let Some(ns) = &self.netns {
            s.push_str(&format!(
                "{} --net={} -- ",
                self.nsenter.display(),
                ns.display()
            ));
        }
        s.push_str(program);
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// Runs `program args...`, feeding `stdin` if given. Returns the output whatever the exit
    /// status; only spawn failures, i/o errors and timeouts are errors here.
    pub async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, Error> {
        let command_line = || self.describe(program, args);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new(&self.nsenter);
                let mut net = OsString::from("--net=");
                net.push(ns.as_os_str());
                c.arg(net).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            command: command_line(),
            source,
        })?;

        let mut child_stdin = child.stdin.take();
        let mut child_stdout = child.stdout.take();
        let mut child_stderr = child.stderr.take();
        let io = async {
            // Write stdin while draining stdout/stderr, so a chatty child cannot deadlock us.
            let write = async {
                if let (Some(mut w), Some(input)) = (child_stdin.take(), stdin) {
                    w.write_all(input.as_bytes()).await?;
                    w.shutdown().await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let read_out = async {
                let mut buf = Vec::new();
                if let Some(r) = child_stdout.as_mut() {
                    r.read_to_end(&mut buf).await?;
                }
                Ok::<_, std::io::Error>(buf)
            };
            let read_err = async {
                let mut buf = Vec::new();
                if let Some(r) = child_stderr.as_mut() {
                    r.read_to_end(&mut buf).await?;
                }
                Ok::<_, std::io::Error>(buf)
            };
            let (w, out, err) = tokio::join!(write, read_out, read_err);
            let status = child.wait().await?;
            // A child that exits without reading its stdin gives EPIPE; its status and
            // stderr are the better evidence, so only report the write error on success.
            if status.success() {
                w?;
            }
            Ok::<_, std::io::Error>((status, out?, err?))
        };
        match tokio::time::timeout(self.timeout, io).await {
            Err(_) => Err(Error::Timeout {
                command: command_line(),
                timeout: self.timeout,
            }),
            Ok(Err(source)) => Err(Error::Io {
                command: command_line(),
                source,
            }),
            Ok(Ok((status, stdout, stderr))) => Ok(Output {
                status,
                stdout,
                stderr: String::from_utf8_lossy(&stderr).trim_end().to_owned(),
            }),
        }
    }

    /// Like [`Runner::run`] but a non-zero exit is an [`Error::Command`].
    pub async fn run_ok(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, Error> {
        let out = self.run(program, args, stdin).await?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(Error::Command {
                command: self.describe(program, args),
                status: out.status.to_string(),
                stderr: out.stderr,
            })
        }
    }
}
