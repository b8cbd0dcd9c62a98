//! Reaping orphans the daemon adopts as a child subreaper.
//!
//! conmon detaches (its first process exits, the monitor calls `setsid`), so every monitor is
//! an orphan. With `PR_SET_CHILD_SUBREAPER` the kernel reparents such orphans to the daemon
//! instead of PID 1 (which, on sluice's nodes, reaps ~1.6 s late), so a monitor that exits
//! must be reaped by the daemon or it stays a zombie.
//!
//! The daemon must not steal tokio's children: `tokio::process` reaps its own children with
//! `waitpid(<pid>)` and fails with `ECHILD` if someone else got there first, so a blanket
//! `waitpid(-1)` loop is out. The rule that separates them: **every orphan sluice adopts was
//! started in a session of its own** (conmon calls `setsid`; so does any daemonizing tool),
//! while the daemon's direct children stay in the daemon's session (sluice never spawns with
//! `setsid`; `process_group(0)` changes only the process group). [`reap_adopted`] therefore
//! reaps, with `waitpid(<pid>, WNOHANG)` on each one, exactly the zombie children whose
//! session differs from the daemon's, as read from `/proc/<pid>/stat`. A zombie is ours alone
//! until we reap it, so its pid cannot be reused between the read and the wait.
//!
//! [`spawn_reaper`] runs that sweep on every SIGCHLD (tokio lets several listeners share the
//! signal) and every few seconds as a backstop for coalesced signals.
//!
//! This mirrors what conmon-rs does for its own children (it is the subreaper of the
//! containers it spawns and waits for specific pids), adapted to a daemon whose process
//! handles belong to several crates.

use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// A reaping failure.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("prctl(PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(#[source] nix::Error),
    #[error("listening for SIGCHLD: {0}")]
    Signal(#[source] std::io::Error),
}

/// Makes the calling process a child subreaper (`prctl(2)` `PR_SET_CHILD_SUBREAPER`): orphans
/// among its descendants are reparented to it. Call once at daemon start, before spawning.
pub fn become_subreaper() -> Result<(), ReaperError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(ReaperError::Subreaper)
}

/// Fields of `/proc/<pid>/stat` that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub session: i32,
}

/// Parses `/proc/<pid>/stat` (`pid (comm) state ppid pgrp session ...`; `comm` may contain
/// spaces and parentheses, so split after the last `)`).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let _pgrp = f.next()?;
    let session = f.next()?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        session,
    })
}

/// A child reaped by [`reap_adopted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: i32,
    /// Exit code, or 128+signal.
    pub code: i32,
}

/// Reaps every zombie child of this process that runs in another session (an adopted orphan,
/// see the module docs). Never blocks.
pub fn reap_adopted() -> Vec<Reaped> {
    let me = std::process::id() as i32;
    let my_session = nix::unistd::getsid(None).map(Pid::as_raw).unwrap_or(-1);
    let mut reaped = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return reaped;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(st) = parse_stat(&text) else {
            continue;
        };
        if st.state != 'Z' || st.ppid != me || st.session == my_session {
            continue;
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => reaped.push(Reaped { pid, code }),
            Ok(WaitStatus::Signaled(_, sig, _)) => reaped.push(Reaped {
                pid,
                code: 128 + sig as i32,
            }),
            Ok(_) | Err(_) => {}
        }
    }
    for r in &reaped {
        tracing::debug!(pid = r.pid, code = r.code, "reaped adopted orphan");
    }
    reaped
}

/// Runs [`reap_adopted`] on every SIGCHLD and every `backstop` (on the blocking pool: it
/// reads /proc). Needs a tokio runtime with signals enabled; returns the task handle.
pub fn spawn_reaper(backstop: Duration) -> Result<tokio::task::JoinHandle<()>, ReaperError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(backstop);
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tick.tick() => {}
            }
            let _ = tokio::task::spawn_blocking(reap_adopted).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = "1234 (a) b (c)) Z 1 1234 1234 0 -1 4194560 0 0";
        assert_eq!(
            parse_stat(s),
            Some(ProcStat {
                state: 'Z',
                ppid: 1,
                session: 1234
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }
}
