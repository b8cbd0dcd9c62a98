//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) for the pods of one node: reading
//! manifests, the policy semantics, a compiled form and `explain`.
//!
//! sluice enforces NetworkPolicy itself (issue 11) instead of leaving it to a CNI plugin, so
//! a node running only the reference plugins still isolates its pods. This crate holds that
//! whole feature. Everything but [`enforce`] and [`netlink`] is pure (no kernel access, no
//! I/O, no async); [`enforce`] runs `nft` (async, tokio) and sends element diffs through
//! [`netlink`] (blocking socket I/O, on tokio's blocking pool). The crate
//! - loads a directory of NetworkPolicy and Namespace manifests (YAML multi-document or JSON),
//!   reporting each invalid document with file, document index and field path and skipping it
//!   while the others apply ([`load_dir`]);
//! - implements the v1 semantics exactly: `podSelector` (empty = all pods of the policy's
//!   namespace), peers by `podSelector`, `namespaceSelector` (namespaces always carry
//!   `kubernetes.io/metadata.name`), both, or `ipBlock` with `except`; `matchLabels` and
//!   `matchExpressions`; TCP/UDP/SCTP ports with `endPort`; `policyTypes` defaulting (Ingress
//!   always, Egress when there are egress rules); union of all policies selecting a pod;
//!   a flow needs the source's egress and the destination's ingress to allow it;
//! - compiles a [`World`] (policies, namespace labels, pods, node addresses) into per-policy
//!   pod sets, peer address sets and port lists ([`Compiled`]) — the shape the nftables
//!   compiler turns into sets and verdict maps — and answers [`explain`] on that same form,
//!   naming the policy and rule that decided;
//! - turns the compiled form into one nftables `table inet` hooked at `forward`: sets of pod
//!   addresses and concatenated peer/port intervals, so matching cost does not grow with the
//!   number of policies ([`nft`], pure: ruleset text, elements, element diffs);
//! - enforces it ([`Enforcer`]): atomic full replace on policy changes, element-only
//!   transactions when a pod starts or stops, per-policy allowed/denied packet counters.
//!
//! Deliberate limits, all from what CRI tells a runtime: named ports cannot be resolved (such
//! a `ports` entry matches nothing and loading warns naming the policy); only this node's pods
//! are known, so selectors cannot designate pods of other nodes. Traffic to or from the node
//! (kubelet probes, host-network pods) is always allowed, as the Kubernetes documentation
//! states and common implementations do.
#![forbid(unsafe_code)]

pub mod enforce;
mod eval;
mod model;
pub mod netlink;
pub mod nft;
mod parse;

pub use enforce::{
    ApplyStats, CounterVerdict, EnforceError, Enforcer, EnforcerConfig, PolicyCounter,
};

pub use eval::{
    Compiled, CompiledPeer, CompiledPolicy, CompiledRule, Decision, Endpoint, ExplainError, Reason,
    RuleRef, Verdict, World, explain, peer_matches_pod, policy_selects, selects,
};
pub use model::{
    Cidr, Direction, IpBlock, LabelSelector, Labels, NAMESPACE_NAME_LABEL, Namespace,
    NetworkPolicy, Operator, Peer, Pod, PolicyPort, PolicyRef, PortMatch, Protocol, Requirement,
    Rule, Source,
};
pub use parse::{Format, LoadError, Loaded, Problem, Severity, load_dir, load_str};
