//! The network-policy step of a pod's life: its identity (namespace, labels, IPs) goes to the
//! policy enforcer before RunPodSandbox returns, and leaves it before the pod's addresses are
//! released, so a pod is never reachable without its policy and a reused address never
//! inherits a stale one.

use std::sync::Arc;

use crate::types::PodRecord;

/// A boxed future, so the hook works as `Arc<dyn PolicyHook>`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the pod manager tells the policy enforcer. Implemented by the daemon over
/// `netpolicy::Enforcer`; tests use a recording fake.
pub trait PolicyHook: Send + Sync + std::fmt::Debug {
    /// The pod's elements must be in force when this returns Ok. An error fails
    /// RunPodSandbox (the pod is torn down): a pod that policy cannot cover is not started.
    fn pod_up<'a>(&'a self, id: &'a str, pod: netpolicy::Pod) -> BoxFuture<'a, Result<(), String>>;
    /// The pod is going away; idempotent, unknown ids are fine.
    fn pod_down<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// The policy identity of a pod: CRI namespace, name and labels, its IPs.
pub fn policy_pod(rec: &PodRecord) -> netpolicy::Pod {
    let m = &rec.config.metadata;
    netpolicy::Pod {
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        labels: rec.config.labels.clone(),
        ips: rec.ips().to_vec(),
        host_network: rec.config.host_network(),
    }
}

/// The hook, set once by the daemon after it built the enforcer.
#[derive(Debug, Default)]
pub(crate) struct PolicySlot(std::sync::OnceLock<Arc<dyn PolicyHook>>);

impl PolicySlot {
    pub(crate) fn get(&self) -> Option<&Arc<dyn PolicyHook>> {
        self.0.get()
    }

    pub(crate) fn set(&self, hook: Arc<dyn PolicyHook>) -> bool {
        self.0.set(hook).is_ok()
    }
}
