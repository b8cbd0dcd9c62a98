//! Evaluation: which policies select a pod, the compiled form (pod sets, peer IP sets, port
//! sets per policy) and `explain`, which decides one flow on that compiled form — the same
//! data the nftables compiler turns into sets, so the two cannot disagree on selection.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::model::{
    Direction, IpBlock, Labels, NAMESPACE_NAME_LABEL, NetworkPolicy, Peer, Pod, PolicyPort,
    PolicyRef, Protocol,
};
use crate::parse::Loaded;

/// Everything a decision depends on: policies, namespace labels, the node's pods and the
/// node's own addresses.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub policies: Vec<NetworkPolicy>,
    /// Labels from Namespace manifests, by namespace name (the name label is implied).
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<Pod>,
    /// Addresses of the node itself: traffic from them to pods is always allowed.
    pub node_ips: Vec<IpAddr>,
}

impl World {
    /// A world from a loaded policy directory plus the live pods.
    pub fn new(loaded: &Loaded, pods: Vec<Pod>, node_ips: Vec<IpAddr>) -> Self {
        Self {
            policies: loaded.policies.clone(),
            namespaces: loaded
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.labels.clone()))
                .collect(),
            pods,
            node_ips,
        }
    }

    /// A namespace's labels: its manifest's (if any) plus `kubernetes.io/metadata.name`,
    /// which Kubernetes always sets to the name (overriding any manifest value).
    pub fn namespace_labels(&self, namespace: &str) -> Labels {
        let mut labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
        labels
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Whether `peer` (written in a policy of `policy_namespace`) designates `pod`.
    /// Host-network pods are never matched by selectors: their traffic carries the node's
    /// address, which is node traffic.
    pub fn peer_matches_pod(&self, policy_namespace: &str, peer: &Peer, pod: &Pod) -> bool {
        peer_matches_pod(
            policy_namespace,
            peer,
            pod,
            &self.namespace_labels(&pod.namespace),
        )
    }
}

/// [`World::peer_matches_pod`] with the pod's namespace labels (from
/// [`World::namespace_labels`]) computed once by the caller, for checking one pod against
/// many policies.
pub fn peer_matches_pod(
    policy_namespace: &str,
    peer: &Peer,
    pod: &Pod,
    namespace_labels: &Labels,
) -> bool {
    if pod.host_network {
        return false;
    }
    match peer {
        Peer::Pods { namespaces, pods } => {
            let namespace_ok = match namespaces {
                None => pod.namespace == policy_namespace,
                Some(sel) => sel.matches(namespace_labels),
            };
            namespace_ok && pods.matches(&pod.labels)
        }
        Peer::IpBlock(_) => false,
    }
}

/// Whether `policy` selects `pod` (same namespace, `podSelector` matches). Host-network pods
/// are not subject to policy.
pub fn policy_selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    !pod.host_network
        && policy.namespace == pod.namespace
        && policy.pod_selector.matches(&pod.labels)
}

/// The policies selecting `pod`, sorted by namespace/name (for `sluice policy list`).
pub fn selects(world: &World, pod: &Pod) -> Vec<PolicyRef> {
    let mut out: Vec<PolicyRef> = world
        .policies
        .iter()
        .filter(|p| policy_selects(p, pod))
        .map(NetworkPolicy::reference)
        .collect();
    out.sort();
    out
}

/// The compiled form of a world: per policy, the selected pods and each rule's peer IP sets
/// and ports. A pod starting or stopping changes set members only; a policy change changes
/// the rule structure.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// Sorted by namespace/name.
    pub policies: Vec<CompiledPolicy>,
}

/// One policy, compiled against the current pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub policy: PolicyRef,
    /// `namespace/name` of the selected pods.
    pub selected: BTreeSet<String>,
    /// Addresses of the selected pods.
    pub selected_ips: BTreeSet<IpAddr>,
    /// `None` when the policy does not affect ingress (not in `policyTypes`).
    pub ingress: Option<Vec<CompiledRule>>,
    /// `None` when the policy does not affect egress.
    pub egress: Option<Vec<CompiledRule>>,
}

impl CompiledPolicy {
    /// Compiles one policy against the pods of `world` (what [`Compiled::new`] does for
    /// each policy; the enforcer uses it to recompile only the policies a change touches).
    pub fn new(world: &World, policy: &NetworkPolicy) -> Self {
        compile_policy(world, policy)
    }

    pub fn rules(&self, direction: Direction) -> Option<&[CompiledRule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// One rule: peers (`None` = any peer) and ports (`None` = any port and protocol), index-
/// aligned with the manifest so a match can name `from[j]` and `ports[k]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    pub peers: Option<Vec<CompiledPeer>>,
    pub ports: Option<Vec<PolicyPort>>,
}

/// A peer as addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompiledPeer {
    /// The addresses of the pods a `podSelector`/`namespaceSelector` peer designates now.
    Pods(BTreeSet<IpAddr>),
    IpBlock(IpBlock),
}

impl CompiledPeer {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            CompiledPeer::Pods(ips) => ips.contains(&ip),
            CompiledPeer::IpBlock(block) => block.contains(ip),
        }
    }
}

impl CompiledRule {
    /// The first matching peer and port index (`None` inside = "any").
    pub fn matches(
        &self,
        peer_ip: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<(Option<usize>, Option<usize>)> {
        let peer = match &self.peers {
            None => None,
            Some(peers) => Some(peers.iter().position(|p| p.contains(peer_ip))?),
        };
        let port = match &self.ports {
            None => None,
            Some(ports) => Some(ports.iter().position(|p| p.matches(protocol, port))?),
        };
        Some((peer, port))
    }
}

impl Compiled {
    pub fn new(world: &World) -> Self {
        let mut policies: Vec<CompiledPolicy> = world
            .policies
            .iter()
            .map(|p| compile_policy(world, p))
            .collect();
        policies.sort_by(|a, b| a.policy.cmp(&b.policy));
        tracing::debug!(
            policies = policies.len(),
            pods = world.pods.len(),
            selected = policies.iter().map(|p| p.selected.len()).sum::<usize>(),
            "compiled network policies"
        );
        Self { policies }
    }

    /// Policies selecting the pod `key` (`namespace/name`) that affect `direction`.
    pub fn isolating(
        &self,
        key: &str,
        direction: Direction,
    ) -> impl Iterator<Item = &CompiledPolicy> {
        self.policies
            .iter()
            .filter(move |p| p.selected.contains(key) && p.rules(direction).is_some())
    }

    /// Decides `direction` for `pod`, whose peer is at `peer_ip`.
    pub fn decide(
        &self,
        pod: &Pod,
        direction: Direction,
        peer_ip: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Decision {
        let key = pod.key();
        let mut isolated_by = Vec::new();
        for policy in self.isolating(&key, direction) {
            for (index, rule) in policy
                .rules(direction)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if let Some((peer, port)) = rule.matches(peer_ip, protocol, port) {
                    return Decision::Allowed(RuleRef {
                        policy: policy.policy.clone(),
                        direction,
                        rule: index,
                        peer,
                        port,
                    });
                }
            }
            isolated_by.push(policy.policy.clone());
        }
        if isolated_by.is_empty() {
            Decision::NotIsolated
        } else {
            Decision::Isolated { by: isolated_by }
        }
    }

    /// Decides a flow: the source's egress and the destination's ingress must both allow.
    pub fn explain(
        &self,
        world: &World,
        from: &Endpoint,
        to: &Endpoint,
        port: u16,
        protocol: Protocol,
    ) -> Result<Verdict, ExplainError> {
        let src = resolve(world, from)?;
        let dst = resolve(world, to)?;
        let allowed = |reason| Verdict {
            allowed: true,
            reason,
        };
        // "traffic to and from the node where a Pod is running is always allowed"
        // (Kubernetes network policy concepts); host-network pods are the node's traffic.
        if let Resolved::Node(via) = src {
            return Ok(allowed(Reason::FromNode {
                host_network_pod: via.map(Pod::key),
            }));
        }
        if let Resolved::Node(via) = dst {
            return Ok(allowed(Reason::ToNode {
                host_network_pod: via.map(Pod::key),
            }));
        }
        // "a Pod cannot block access to itself"
        if let (Resolved::Pod(a), Resolved::Pod(b)) = (src, dst)
            && a.namespace == b.namespace
            && a.name == b.name
        {
            return Ok(allowed(Reason::SamePod));
        }
        let (source, destination) = addresses(src, dst)?;
        let egress = match src {
            Resolved::Pod(pod) => self.decide(pod, Direction::Egress, destination, protocol, port),
            _ => Decision::NotAPod,
        };
        let ingress = match dst {
            Resolved::Pod(pod) => self.decide(pod, Direction::Ingress, source, protocol, port),
            _ => Decision::NotAPod,
        };
        Ok(Verdict {
            allowed: egress.allows() && ingress.allows(),
            reason: Reason::Evaluated {
                source,
                destination,
                egress,
                ingress,
            },
        })
    }
}

fn compile_policy(world: &World, policy: &NetworkPolicy) -> CompiledPolicy {
    let selected_pods: Vec<&Pod> = world
        .pods
        .iter()
        .filter(|pod| policy_selects(policy, pod))
        .collect();
    let rules = |direction: Direction| {
        policy.affects(direction).then(|| {
            policy
                .rules(direction)
                .iter()
                .map(|rule| CompiledRule {
                    peers: rule.peers.as_ref().map(|peers| {
                        peers
                            .iter()
                            .map(|peer| match peer {
                                Peer::IpBlock(block) => CompiledPeer::IpBlock(block.clone()),
                                Peer::Pods { .. } => CompiledPeer::Pods(
                                    world
                                        .pods
                                        .iter()
                                        .filter(|pod| {
                                            world.peer_matches_pod(&policy.namespace, peer, pod)
                                        })
                                        .flat_map(|pod| pod.ips.iter().copied())
                                        .collect(),
                                ),
                            })
                            .collect()
                    }),
                    ports: rule.ports.clone(),
                })
                .collect()
        })
    };
    CompiledPolicy {
        policy: policy.reference(),
        selected: selected_pods.iter().map(|p| p.key()).collect(),
        selected_ips: selected_pods
            .iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect(),
        ingress: rules(Direction::Ingress),
        egress: rules(Direction::Egress),
    }
}

/// `explain` on a freshly compiled world.
pub fn explain(
    world: &World,
    from: &Endpoint,
    to: &Endpoint,
    port: u16,
    protocol: Protocol,
) -> Result<Verdict, ExplainError> {
    Compiled::new(world).explain(world, from, to, port, protocol)
}

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod of this node by namespace and name.
    Pod { namespace: String, name: String },
    /// An address: the node's own, a pod's (resolved to that pod) or anything else.
    Ip(IpAddr),
}

impl Endpoint {
    pub fn pod(namespace: &str, name: &str) -> Self {
        Endpoint::Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    /// An IP address, or `namespace/name`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse() {
            return Ok(Endpoint::Ip(ip));
        }
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Endpoint::pod(ns, name))
            }
            _ => Err(format!("{s:?} is neither an IP address nor namespace/pod")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            Endpoint::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why a flow cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("pod {0} is not known on this node")]
    UnknownPod(String),
    #[error("pod {pod} has no address that can reach {peer}")]
    NoAddress { pod: String, peer: String },
}

#[derive(Debug, Clone, Copy)]
enum Resolved<'a> {
    /// The node itself, or a host-network pod (which uses the node's addresses).
    Node(Option<&'a Pod>),
    Pod(&'a Pod),
    External(IpAddr),
}

fn resolve<'a>(world: &'a World, endpoint: &Endpoint) -> Result<Resolved<'a>, ExplainError> {
    match endpoint {
        Endpoint::Pod { namespace, name } => {
            let pod = world
                .pod(namespace, name)
                .ok_or_else(|| ExplainError::UnknownPod(endpoint.to_string()))?;
            Ok(if pod.host_network {
                Resolved::Node(Some(pod))
            } else {
                Resolved::Pod(pod)
            })
        }
        Endpoint::Ip(ip) => {
            if world.node_ips.contains(ip) {
                return Ok(Resolved::Node(None));
            }
            Ok(
                match world
                    .pods
                    .iter()
                    .find(|p| !p.host_network && p.ips.contains(ip))
                {
                    Some(pod) => Resolved::Pod(pod),
                    None => Resolved::External(*ip),
                },
            )
        }
    }
}

/// The addresses the flow uses: a pod talks to an address of the same family; two pods use
/// the first family both have, in the source pod's address order.
fn addresses(src: Resolved<'_>, dst: Resolved<'_>) -> Result<(IpAddr, IpAddr), ExplainError> {
    let same_family = |a: &IpAddr, b: &IpAddr| a.is_ipv4() == b.is_ipv4();
    let no_address = |pod: &Pod, peer: String| ExplainError::NoAddress {
        pod: pod.key(),
        peer,
    };
    match (src, dst) {
        (Resolved::Pod(a), Resolved::Pod(b)) => a
            .ips
            .iter()
            .find_map(|x| b.ips.iter().find(|y| same_family(x, y)).map(|y| (*x, *y)))
            .ok_or_else(|| no_address(a, b.key())),
        (Resolved::Pod(a), Resolved::External(ip)) => a
            .ips
            .iter()
            .find(|x| same_family(x, &ip))
            .map(|x| (*x, ip))
            .ok_or_else(|| no_address(a, ip.to_string())),
        (Resolved::External(ip), Resolved::Pod(b)) => b
            .ips
            .iter()
            .find(|y| same_family(&ip, y))
            .map(|y| (ip, *y))
            .ok_or_else(|| no_address(b, ip.to_string())),
        (Resolved::External(a), Resolved::External(b)) => Ok((a, b)),
        // The node cases return before addresses are needed.
        (Resolved::Node(_), _) | (_, Resolved::Node(_)) => Err(ExplainError::NoAddress {
            pod: "node".into(),
            peer: "node".into(),
        }),
    }
}

/// The rule that allowed a direction: `policy` `direction[rule]`, with the peer and port
/// entries that matched (`None` = the rule has no `from`/`to` or no `ports`: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: PolicyRef,
    pub direction: Direction,
    pub rule: usize,
    pub peer: Option<usize>,
    pub port: Option<usize>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.rule)?;
        match self.peer {
            Some(j) => write!(f, ".{}[{j}]", self.direction.peer_field())?,
            None => write!(f, " (any {})", self.direction.peer_field())?,
        }
        match self.port {
            Some(k) => write!(f, ".ports[{k}]"),
            None => write!(f, " (any port)"),
        }
    }
}

/// The decision for one direction of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// That end is not a pod of this node: sluice enforces nothing for it.
    NotAPod,
    /// No policy selecting the pod affects this direction: allowed by default.
    NotIsolated,
    /// Allowed by this rule (the first match in namespace/name, rule, peer, port order).
    Allowed(RuleRef),
    /// The pod is isolated by these policies and none of their rules matched.
    Isolated { by: Vec<PolicyRef> },
}

impl Decision {
    pub fn allows(&self) -> bool {
        !matches!(self, Decision::Isolated { .. })
    }
}

/// Why a flow is allowed or denied.
// One value per explain call: its size does not matter, direct matching does.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The source is the node (or a host-network pod): always allowed.
    FromNode { host_network_pod: Option<String> },
    /// The destination is the node (or a host-network pod): always allowed.
    ToNode { host_network_pod: Option<String> },
    /// A pod talking to itself cannot be blocked.
    SamePod,
    /// Both directions evaluated.
    Evaluated {
        source: IpAddr,
        destination: IpAddr,
        egress: Decision,
        ingress: Decision,
    },
}

/// The answer of `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: Reason,
}

fn write_decision(
    f: &mut fmt::Formatter<'_>,
    side: &str,
    direction: Direction,
    d: &Decision,
) -> fmt::Result {
    match d {
        Decision::NotAPod => write!(f, "{direction} of {side}: not a pod of this node"),
        Decision::NotIsolated => write!(
            f,
            "{direction} of {side}: no policy selects it for {direction} (default allow)"
        ),
        Decision::Allowed(rule) => write!(f, "{direction} of {side}: allowed by {rule}"),
        Decision::Isolated { by } => {
            let names: Vec<String> = by.iter().map(ToString::to_string).collect();
            write!(
                f,
                "{direction} of {side}: isolated by {} and no rule matched",
                names.join(", ")
            )
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed { "allow: " } else { "deny: " })?;
        match &self.reason {
            Reason::FromNode { host_network_pod } => match host_network_pod {
                Some(p) => write!(f, "source {p} uses the host network (node traffic)"),
                None => f.write_str("traffic from the node is always allowed"),
            },
            Reason::ToNode { host_network_pod } => match host_network_pod {
                Some(p) => write!(f, "destination {p} uses the host network (node traffic)"),
                None => f.write_str("traffic to the node is always allowed"),
            },
            Reason::SamePod => f.write_str("a pod can always reach itself"),
            Reason::Evaluated {
                source,
                destination,
                egress,
                ingress,
            } => {
                write!(f, "{source} -> {destination}; ")?;
                write_decision(f, "source", Direction::Egress, egress)?;
                f.write_str("; ")?;
                write_decision(f, "destination", Direction::Ingress, ingress)
            }
        }
    }
}
