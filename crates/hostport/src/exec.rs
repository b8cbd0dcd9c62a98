//! The one way this crate runs external tools: optional `nsenter --net=PATH` prefix, then
//! [`runcmd::run_output`] (stdin written then closed (or null), stdout and stderr collected,
//! bounded wait, child killed and reaped on timeout), its errors mapped into [`Error`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runcmd::CmdError;

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
        let (exe, argv) = match &self.netns {
            Some(ns) => {
                let mut net = OsString::from("--net=");
                net.push(ns.as_os_str());
                let mut argv = vec![net, OsString::from("--"), OsString::from(program)];
                argv.extend(args.iter().map(OsString::from));
                (self.nsenter.as_path(), argv)
            }
            None => (
                Path::new(program),
                args.iter().map(OsString::from).collect(),
            ),
        };
        let out = runcmd::run_output(exe, &argv, stdin.map(str::as_bytes), self.timeout)
            .await
            .map_err(|e| {
                let command = self.describe(program, args);
                match e {
                    CmdError::Spawn { source, .. } => Error::Spawn { command, source },
                    CmdError::Io { source, .. } => Error::Io { command, source },
                    CmdError::Timeout { .. } => Error::Timeout {
                        command,
                        timeout: self.timeout,
                    },
                    // `run_output` never judges the exit status.
                    e @ CmdError::Failed { .. } => Error::Io {
                        command,
                        source: std::io::Error::other(e.to_string()),
                    },
                }
            })?;
        Ok(Output {
            status: out.status,
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
        })
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
