//! The pod network edge: attach a pod's network namespace to the node's pod network and detach
//! it again. The real implementation is the CNI manager; `fake` has an in-memory one for unit
//! tests of the lifecycle.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed `Send` future, so the trait is object safe without a macro crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A networking failure, with its cause kept.
pub type NetError = Box<dyn std::error::Error + Send + Sync>;

/// What the network needs to know about the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetAttach {
    pub pod_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `None` when the namespace is already gone (DEL must still release IPAM leases).
    pub netns: Option<PathBuf>,
    pub annotations: BTreeMap<String, String>,
    /// The pod cgroup, for plugins that declare the `cgroupPath` capability.
    pub cgroup: Option<String>,
}

/// The outcome of attaching.
#[derive(Debug, Clone, PartialEq)]
pub struct Attached {
    pub network: String,
    /// Pod addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    pub result: serde_json::Value,
}

/// Readiness of the pod network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub message: String,
}

/// Attaches pods to the node's pod network.
pub trait PodNetworking: Send + Sync + Debug {
    fn readiness(&self) -> BoxFuture<'_, Readiness>;
    fn attach<'a>(&'a self, pod: &'a NetAttach) -> BoxFuture<'a, Result<Attached, NetError>>;
    /// Idempotent; succeeds for a pod that was never attached.
    fn detach<'a>(&'a self, pod: &'a NetAttach) -> BoxFuture<'a, Result<(), NetError>>;
    /// Releases every attachment that does not belong to one of `live` pod ids (start-up).
    fn gc<'a>(&'a self, live: &'a [String]) -> BoxFuture<'a, Result<(), NetError>>;
}

/// [`PodNetworking`] through CNI plugins.
#[derive(Debug, Clone)]
pub struct CniNetworking {
    cni: Arc<cnimgr::CniManager>,
}

impl CniNetworking {
    pub fn new(cni: Arc<cnimgr::CniManager>) -> Self {
        Self { cni }
    }

    fn pod_network(pod: &NetAttach) -> cnimgr::PodNetwork {
        let mut p = cnimgr::PodNetwork::new(&pod.pod_id, &pod.name, &pod.namespace, &pod.uid);
        p.netns_path = pod.netns.clone();
        p.annotations = pod.annotations.clone();
        p.cgroup_parent = pod.cgroup.clone();
        // Host ports are sluice's own (crate `hostport`), never handed to a portmap plugin:
        // two owners of the same DNAT would fight.
        p.port_mappings = Vec::new();
        p
    }
}

impl PodNetworking for CniNetworking {
    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async move {
            let r = self.cni.readiness().await;
            Readiness {
                ready: r.ready,
                message: r.message,
            }
        })
    }

    fn attach<'a>(&'a self, pod: &'a NetAttach) -> BoxFuture<'a, Result<Attached, NetError>> {
        Box::pin(async move {
            let network = self
                .cni
                .default_network()
                .map(|n| n.name.clone())
                .unwrap_or_default();
            let result = self.cni.add(&Self::pod_network(pod)).await?;
            let mut ips: Vec<IpAddr> = result.pod_ips().map(|ip| ip.address.addr).collect();
            ips.sort_by_key(|ip| ip.is_ipv6());
            ips.dedup();
            Ok(Attached {
                network,
                ips,
                result: result.raw().clone(),
            })
        })
    }

    fn detach<'a>(&'a self, pod: &'a NetAttach) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async move {
            self.cni.del(&Self::pod_network(pod)).await?;
            Ok(())
        })
    }

    fn gc<'a>(&'a self, live: &'a [String]) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async move {
            let valid: Vec<cnimgr::AttachmentKey> = live
                .iter()
                .map(|id| cnimgr::AttachmentKey {
                    container_id: id.clone(),
                    ifname: cnimgr::DEFAULT_IFNAME.to_string(),
                })
                .collect();
            self.cni.gc(&valid).await?;
            Ok(())
        })
    }
}
