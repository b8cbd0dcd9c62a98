//! An in-memory [`ContainerRuntime`] for unit tests of the crates above (`pods`): containers
//! move through created → running → exited as the calls say, tests decide exits and exec
//! results, and any operation can be made to fail once. The only files it touches are the
//! bundle's `config.json` (written at create, as runc's bundle has it). Interactive exec
//! writes the exec result and echoes stdin; attach echoes stdin; both record resizes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::runtime::{
    BoxFuture, ContainerRuntime, ContainerStatus, CreateRequest, Created, ExecOutcome,
    RuntimeError, StopOutcome,
};
use crate::spec::oci;
use crate::stream::{ProcessIo, WindowSize};

#[derive(Debug, Clone)]
struct FakeContainer {
    status: ContainerStatus,
    spec: oci::Spec,
    resources: Option<oci::LinuxResources>,
}

#[derive(Debug, Default)]
struct Inner {
    containers: HashMap<String, FakeContainer>,
    next_pid: i32,
    fail_next: HashMap<&'static str, String>,
    exec_result: Option<ExecOutcome>,
    calls: Vec<String>,
    resizes: Vec<WindowSize>,
}

/// The fake runtime.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next call of `op` (`create`, `start`, `stop`, `delete`, `exec_sync`, ...)
    /// fail with `message`.
    pub fn fail_next(&self, op: &'static str, message: &str) {
        self.lock().fail_next.insert(op, message.to_string());
    }

    /// The container's process exits with `code` (as if it ended on its own).
    pub fn exit(&self, id: &str, code: i32) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.status = ContainerStatus::Exited {
                code,
                finished_at: SystemTime::now(),
                oom_killed: false,
            };
        }
    }

    /// The result every later exec-sync returns (default: exit 0, stdout = args joined).
    pub fn set_exec_result(&self, result: ExecOutcome) {
        self.lock().exec_result = Some(result);
    }

    /// The terminal sizes interactive execs and attaches received, in order.
    pub fn resizes(&self) -> Vec<WindowSize> {
        self.lock().resizes.clone()
    }

    /// `op id` for every call so far.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The spec a container was created with.
    pub fn spec(&self, id: &str) -> Option<oci::Spec> {
        self.lock().containers.get(id).map(|c| c.spec.clone())
    }

    /// Resources of the last update.
    pub fn resources(&self, id: &str) -> Option<oci::LinuxResources> {
        self.lock()
            .containers
            .get(id)
            .and_then(|c| c.resources.clone())
    }

    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().containers.keys().cloned().collect();
        v.sort();
        v
    }

    fn enter(
        &self,
        op: &'static str,
        id: &str,
    ) -> Result<std::sync::MutexGuard<'_, Inner>, RuntimeError> {
        let mut g = self.lock();
        g.calls.push(format!("{op} {id}"));
        if let Some(message) = g.fail_next.remove(op) {
            return Err(RuntimeError::Create {
                id: id.to_string(),
                message,
            });
        }
        Ok(g)
    }
}

fn must_run(g: &Inner, id: &str) -> Result<(), RuntimeError> {
    match g.containers.get(id).map(|c| &c.status) {
        Some(ContainerStatus::Running { .. }) => Ok(()),
        Some(_) => Err(RuntimeError::NotRunning(id.to_string())),
        None => Err(RuntimeError::NotFound(id.to_string())),
    }
}

/// The fake's process: echoes stdin to stdout until EOF while recording resizes, then closes
/// the outputs.
async fn echo(fake: &FakeRuntime, io: ProcessIo) {
    use tokio::io::AsyncWriteExt;
    let ProcessIo {
        stdin,
        mut stdout,
        stderr,
        resize,
        ..
    } = io;
    let copy = async {
        if let (Some(mut from), Some(to)) = (stdin, stdout.as_mut()) {
            let _ = tokio::io::copy(&mut from, to).await;
        }
    };
    let resizes = async {
        if let Some(mut rx) = resize {
            while let Some(size) = rx.recv().await {
                fake.lock().resizes.push(size);
            }
        }
    };
    // Resizes first: those already sent are recorded before a short copy ends the call.
    tokio::select! {
        biased;
        () = async { resizes.await; std::future::pending::<()>().await } => {}
        () = copy => {}
    }
    for w in [stdout, stderr].into_iter().flatten() {
        let mut w = w;
        let _ = w.shutdown().await;
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl ContainerRuntime for FakeRuntime {
    fn create<'a>(
        &'a self,
        req: &'a CreateRequest<'a>,
    ) -> BoxFuture<'a, Result<Created, RuntimeError>> {
        let r = (|| {
            let mut g = self.enter("create", req.id)?;
            if g.containers.contains_key(req.id) {
                return Err(RuntimeError::Create {
                    id: req.id.to_string(),
                    message: "container with given ID already exists".into(),
                });
            }
            // Like runc's bundle: pods reads the spec back for exec.
            std::fs::create_dir_all(req.bundle)
                .and_then(|()| {
                    std::fs::write(
                        req.bundle.join("config.json"),
                        serde_json::to_vec(req.spec).unwrap_or_default(),
                    )
                })
                .map_err(|source| RuntimeError::Io {
                    op: "writing the spec into",
                    path: req.bundle.to_path_buf(),
                    source,
                })?;
            g.next_pid += 1;
            let pid = 1000 + g.next_pid;
            g.containers.insert(
                req.id.to_string(),
                FakeContainer {
                    status: ContainerStatus::Created { pid },
                    spec: req.spec.clone(),
                    resources: None,
                },
            );
            Ok(Created {
                pid,
                conmon_pid: pid - 1,
            })
        })();
        ready(r)
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let r = (|| {
            let mut g = self.enter("start", id)?;
            let c = g
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            match c.status {
                ContainerStatus::Created { pid } => {
                    c.status = ContainerStatus::Running { pid };
                    Ok(())
                }
                _ => Err(RuntimeError::NotRunning(id.to_string())),
            }
        })();
        ready(r)
    }

    fn kill<'a>(
        &'a self,
        id: &'a str,
        signal: i32,
        _all: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let r = (|| {
            let mut g = self.enter("kill", id)?;
            let c = g
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            match c.status {
                ContainerStatus::Running { .. } | ContainerStatus::Created { .. } => {
                    c.status = ContainerStatus::Exited {
                        code: 128 + signal,
                        finished_at: SystemTime::now(),
                        oom_killed: false,
                    };
                    Ok(())
                }
                _ => Err(RuntimeError::NotRunning(id.to_string())),
            }
        })();
        ready(r)
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        _bundle: &'a Path,
        signal: i32,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<StopOutcome, RuntimeError>> {
        let r = (|| {
            let mut g = self.enter("stop", id)?;
            let c = g
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            if let ContainerStatus::Exited { code, .. } = c.status {
                return Ok(StopOutcome {
                    exit_code: code,
                    killed: false,
                });
            }
            let killed = timeout.is_zero();
            let code = if killed { 137 } else { 128 + signal };
            c.status = ContainerStatus::Exited {
                code,
                finished_at: SystemTime::now(),
                oom_killed: false,
            };
            Ok(StopOutcome {
                exit_code: code,
                killed,
            })
        })();
        ready(r)
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let r = self.enter("delete", id).map(|mut g| {
            g.containers.remove(id);
        });
        ready(r)
    }

    fn status<'a>(
        &'a self,
        id: &'a str,
        _bundle: &'a Path,
    ) -> BoxFuture<'a, Result<ContainerStatus, RuntimeError>> {
        let r = self.enter("status", id).map(|g| {
            g.containers
                .get(id)
                .map(|c| c.status.clone())
                .unwrap_or(ContainerStatus::Unknown {
                    reason: "not created in the fake".into(),
                })
        });
        ready(r)
    }

    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        _bundle: &'a Path,
        process: &'a oci::Process,
        _timeout: Option<Duration>,
    ) -> BoxFuture<'a, Result<ExecOutcome, RuntimeError>> {
        let r = (|| {
            let g = self.enter("exec_sync", id)?;
            match g.containers.get(id).map(|c| &c.status) {
                Some(ContainerStatus::Running { .. }) => {}
                Some(_) => return Err(RuntimeError::NotRunning(id.to_string())),
                None => return Err(RuntimeError::NotFound(id.to_string())),
            }
            Ok(g.exec_result.clone().unwrap_or_else(|| ExecOutcome {
                stdout: format!("{}\n", process.args.join(" ")).into_bytes(),
                stderr: Vec::new(),
                exit_code: 0,
                timed_out: false,
            }))
        })();
        ready(r)
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        resources: &'a oci::LinuxResources,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let r = (|| {
            let mut g = self.enter("update", id)?;
            let c = g
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            c.resources = Some(resources.clone());
            Ok(())
        })();
        ready(r)
    }

    /// Writes the exec result's output (default: the args joined and a newline on stdout),
    /// echoes stdin to stdout until EOF and returns the result's exit code.
    fn exec<'a>(
        &'a self,
        id: &'a str,
        _bundle: &'a Path,
        process: &'a oci::Process,
        mut io: ProcessIo,
    ) -> BoxFuture<'a, Result<i32, RuntimeError>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let result = {
                let g = self.enter("exec", id)?;
                must_run(&g, id)?;
                g.exec_result.clone().unwrap_or_else(|| ExecOutcome {
                    stdout: format!("{}\n", process.args.join(" ")).into_bytes(),
                    stderr: Vec::new(),
                    exit_code: 0,
                    timed_out: false,
                })
            };
            if let Some(w) = io.stdout.as_mut() {
                let _ = w.write_all(&result.stdout).await;
            }
            if let Some(w) = io.stderr.as_mut() {
                let _ = w.write_all(&result.stderr).await;
            }
            echo(self, io).await;
            Ok(result.exit_code)
        })
    }

    /// Echoes stdin to stdout until EOF (the "container" exits when the client closes stdin).
    fn attach<'a>(
        &'a self,
        id: &'a str,
        _bundle: &'a Path,
        io: ProcessIo,
        _stdin_once: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            {
                let g = self.enter("attach", id)?;
                must_run(&g, id)?;
            }
            echo(self, io).await;
            Ok(())
        })
    }

    fn reopen_log<'a>(
        &'a self,
        id: &'a str,
        _bundle: &'a Path,
        _log_path: &'a Path,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let r = (|| {
            let g = self.enter("reopen_log", id)?;
            match g.containers.get(id).map(|c| &c.status) {
                Some(ContainerStatus::Running { .. }) => Ok(()),
                _ => Err(RuntimeError::NotRunning(id.to_string())),
            }
        })();
        ready(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lifecycle_through_the_trait_object() {
        let rt: std::sync::Arc<dyn ContainerRuntime> = std::sync::Arc::new(FakeRuntime::new());
        let spec = oci::Spec::default();
        let dir = tempfile::tempdir().unwrap();
        let req = CreateRequest {
            id: "c1",
            bundle: &dir.path().join("c1"),
            spec: &spec,
            log_path: Path::new("/l"),
            stdin: false,
            stdin_once: false,
        };
        let created = rt.create(&req).await.unwrap();
        assert!(rt.create(&req).await.is_err());
        rt.start("c1").await.unwrap();
        assert_eq!(
            rt.status("c1", Path::new("/b")).await.unwrap(),
            ContainerStatus::Running { pid: created.pid }
        );
        let p = oci::Process {
            args: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        assert_eq!(
            rt.exec_sync("c1", Path::new("/b"), &p, None)
                .await
                .unwrap()
                .stdout,
            b"echo hi\n"
        );
        let out = rt
            .stop("c1", Path::new("/b"), 15, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            out,
            StopOutcome {
                exit_code: 143,
                killed: false
            }
        );
        rt.delete("c1").await.unwrap();
        assert!(matches!(
            rt.status("c1", Path::new("/b")).await.unwrap(),
            ContainerStatus::Unknown { .. }
        ));
    }

    #[tokio::test]
    async fn exec_and_attach_echo_stdin_and_record_resizes() {
        use tokio::io::AsyncReadExt;
        let f = FakeRuntime::new();
        let spec = oci::Spec::default();
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("c");
        let req = CreateRequest {
            id: "c",
            bundle: &bundle,
            spec: &spec,
            log_path: Path::new("/l"),
            stdin: false,
            stdin_once: false,
        };
        f.create(&req).await.unwrap();
        assert!(bundle.join("config.json").exists());
        let p = oci::Process {
            args: vec!["sh".into()],
            ..Default::default()
        };
        let io = || {
            let (out_w, out_r) = tokio::io::duplex(1024);
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let io = ProcessIo {
                tty: true,
                stdin: Some(Box::new(&b"typed"[..]) as crate::stream::BoxRead),
                stdout: Some(Box::new(out_w)),
                stderr: None,
                resize: Some(rx),
            };
            (io, out_r, tx)
        };
        let (i, _, _) = io();
        assert!(matches!(
            f.exec("c", &bundle, &p, i).await,
            Err(RuntimeError::NotRunning(_))
        ));
        f.start("c").await.unwrap();
        let (i, mut out, tx) = io();
        tx.send(WindowSize {
            width: 80,
            height: 24,
        })
        .await
        .unwrap();
        drop(tx);
        assert_eq!(f.exec("c", &bundle, &p, i).await.unwrap(), 0);
        let mut got = String::new();
        out.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "sh\ntyped");
        let (i, mut out, _tx) = io();
        f.attach("c", &bundle, i, true).await.unwrap();
        let mut got = String::new();
        out.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "typed");
        assert_eq!(
            f.resizes(),
            vec![WindowSize {
                width: 80,
                height: 24
            }]
        );
    }

    #[tokio::test]
    async fn injected_failure_and_exit() {
        let f = FakeRuntime::new();
        f.fail_next("start", "boom");
        let spec = oci::Spec::default();
        let dir = tempfile::tempdir().unwrap();
        let req = CreateRequest {
            id: "c",
            bundle: &dir.path().join("c"),
            spec: &spec,
            log_path: Path::new("/l"),
            stdin: false,
            stdin_once: false,
        };
        f.create(&req).await.unwrap();
        assert!(f.start("c").await.unwrap_err().to_string().contains("boom"));
        f.start("c").await.unwrap();
        f.exit("c", 3);
        assert!(matches!(
            f.status("c", Path::new("/b")).await.unwrap(),
            ContainerStatus::Exited { code: 3, .. }
        ));
        assert_eq!(f.calls().first().map(String::as_str), Some("create c"));
    }
}
