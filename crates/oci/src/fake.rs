//! An in-memory [`ContainerRuntime`] for unit tests of the crates above (`pods`): containers
//! move through created → running → exited as the calls say, tests decide exits and exec
//! results, and any operation can be made to fail once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::runtime::{
    BoxFuture, ContainerRuntime, ContainerStatus, CreateRequest, Created, ExecOutcome,
    RuntimeError, StopOutcome,
};
use crate::spec::oci;

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
        let req = CreateRequest {
            id: "c1",
            bundle: Path::new("/b"),
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
    async fn injected_failure_and_exit() {
        let f = FakeRuntime::new();
        f.fail_next("start", "boom");
        let spec = oci::Spec::default();
        let req = CreateRequest {
            id: "c",
            bundle: Path::new("/b"),
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
