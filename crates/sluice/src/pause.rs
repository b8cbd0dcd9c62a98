//! `sluice pause`: the long-lived process that holds a pod's shared PID namespace (CRI PID mode
//! POD), instead of a pulled pause image.
//!
//! A PID namespace cannot be pinned like net/ipc/uts: it lives only while a process lives in
//! it. The holder (`sluice pause`) unshares `CLONE_NEWPID` (which applies to its children
//! only) and spawns `sluice pause --init`, which becomes PID 1 of the new namespace; the
//! containers of the pod join `/proc/<init>/ns/pid`. The holder prints `<holder pid> <init
//! pid>` on stdout, then waits: SIGTERM or SIGINT make it kill the init and exit. The init reaps
//! the orphans of the pod's processes, as a PID 1 must. The daemon starts the holder in its own
//! session, so pods keep their PID namespace across sluice restarts.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, waitpid};

/// The holder: `sluice pause`.
#[allow(clippy::print_stderr)]
pub fn holder() -> ExitCode {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        eprintln!("sluice pause: unshare(CLONE_NEWPID): {e}");
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sluice pause: finding my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut init = match std::process::Command::new(exe)
        .args(["pause", "--init"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice pause: starting the namespace init: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{} {}", std::process::id(), init.id())
        .and_then(|()| out.flush())
        .is_err()
    {
        let _ = init.kill();
        let _ = init.wait();
        return ExitCode::FAILURE;
    }
    drop(out);

    // Wait for SIGTERM/SIGINT (or the init's death) on a small runtime of its own.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice pause: {e}");
            let _ = init.kill();
            let _ = init.wait();
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        let init_pid = nix::unistd::Pid::from_raw(i32::try_from(init.id()).unwrap_or(0));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    // The init died (killed from outside): nothing left to hold.
                    if nix::sys::signal::kill(init_pid, None) == Err(Errno::ESRCH) {
                        break;
                    }
                }
            }
        }
    });
    let _ = init.kill();
    let _ = init.wait();
    ExitCode::SUCCESS
}

/// PID 1 of the pod's PID namespace: reaps orphans forever. Signals without a handler are
/// ignored by a namespace init, so only SIGKILL (from the holder) ends it.
pub fn init() -> ExitCode {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            // Reaped one; look for more at once.
            Ok(status) if status.pid().is_some() => continue,
            // Children alive but none exited, or no children at all: check again shortly.
            Ok(_) | Err(Errno::ECHILD) => std::thread::sleep(Duration::from_millis(500)),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}
