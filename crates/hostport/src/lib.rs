//! Host ports for pods: CRI `port_mappings` made reachable on the node's addresses.
//!
//! A pod asks for `host_port -> container_port` mappings (TCP, UDP or SCTP, optionally bound
//! to one host IP). sluice implements them itself in nftables instead of delegating to the CNI
//! `portmap` plugin, following CRI-O's `internal/hostport/hostport_nftables.go` layout:
//! one sluice-owned table per IP family (`ip sluice-hostports`, `ip6 sluice-hostports`) whose
//! rules never change; pods only add and delete *elements* of concatenated maps, so the cost
//! of an `add` or `remove` does not grow with the number of mappings on the node.
//!
//! The crate's edge is the [`HostPortManager`] trait with three implementations:
//! - [`NftHostPortManager`]: the real one (see [`nft`] for the ruleset and its reasoning),
//! - [`NoopHostPortManager`]: for `[network] hostport_mapping = false`,
//! - `fake::FakeHostPortManager` (feature `test-util`): in-memory, for other crates' tests.
//!
//! Every nftables change is one atomic `nft -f -` transaction; state is read back from the
//! kernel with `nft -j list table` into our own tolerant serde types, so a restarted daemon
//! can still remove the elements of pods it added before (each element carries the pod id
//! in its nftables comment).
#![forbid(unsafe_code)]

mod error;
mod exec;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod nft;
mod noop;
mod types;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub use error::{Error, ErrorKind};
pub use nft::{ListedElement, LocalhostAccess, NftConfig, NftHostPortManager};
pub use noop::NoopHostPortManager;
pub use types::{Family, PodPorts, PortMapping, Protocol};

/// A boxed, `Send` future: the return type of [`HostPortManager`] methods, so the trait is
/// object safe (`Arc<dyn HostPortManager>`) without a proc-macro dependency.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Publishes pods' host ports on the node.
///
/// The methods are async and safe to call from any tokio worker: implementations only spawn
/// external processes (`nft`, `conntrack`, `ip`) with bounded time and never change the
/// calling thread's namespaces. Calls on one manager are serialised internally.
pub trait HostPortManager: Send + Sync + std::fmt::Debug {
    /// Publishes `mappings` of pod `pod_id` (named `pod_name`, used in messages only) whose
    /// addresses are `pod_ips`. Each mapping applies to the pod IP of its family; a mapping
    /// whose `host_ip` is of the other family is skipped for that IP, and mappings with
    /// `host_port == 0` are ignored (CRI: no host port).
    ///
    /// Calling it again for the same pod replaces that pod's mappings. A host port that
    /// another pod already holds fails with [`ErrorKind::AlreadyExists`] and changes nothing.
    fn add<'a>(
        &'a self,
        pod_id: &'a str,
        pod_name: &'a str,
        pod_ips: &'a [IpAddr],
        mappings: &'a [PortMapping],
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Withdraws every host port of `pod_id`. Needs nothing but the id (it works after a
    /// daemon restart) and succeeds when the pod has no host ports (idempotent).
    fn remove<'a>(&'a self, pod_id: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Replaces the whole host-port state with exactly `live` in one transaction: used at
    /// daemon start to repair a flushed ruleset and to drop the elements of pods that no
    /// longer exist. Recovery must not be all-or-nothing, so a live pod whose mapping
    /// conflicts with an earlier one (by pod id order) loses that mapping, with a warning,
    /// instead of failing the whole sync. Invalid mappings are still an error.
    fn sync<'a>(&'a self, live: &'a [PodPorts]) -> BoxFuture<'a, Result<(), Error>>;
}
