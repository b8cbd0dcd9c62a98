//! The nftables form of a [`Compiled`] world — pure: ruleset text, set elements and element
//! diffs, no I/O (`enforce.rs` runs `nft`).
//!
//! One `table inet` in the host network namespace, hooked at `forward`. With `br_netfilter`
//! (`bridge-nf-call-iptables`/`ip6tables` = 1) bridged pod-to-pod packets traverse the inet
//! forward hook with conntrack, as does routed traffic between pods and the outside. Traffic
//! of the node itself (output and input hooks) is never filtered: the node always reaches its
//! pods and pods always reach the node. Pods cannot touch this table: it lives outside their
//! network namespaces.
//!
//! Matching cost does not depend on the number of policies: every decision is a handful of
//! set lookups, made for new connections only (`ct state established,related accept` first).
//! Per family (`4`/`6`) and direction (`in`/`eg`) there are three sets:
//! - `in_iso4`: addresses of pods isolated for ingress (selected by a policy with `Ingress`
//!   in its `policyTypes`), with a per-element counter of denied packets;
//! - `in_all4`: `pod . peer-range` for rules without `ports` (every protocol and port);
//! - `in_ports4`: `pod . peer-range . l4proto . port-range` for rules with `ports`.
//!
//! (`eg_*` likewise keyed by the source pod.) The chain checks the source's egress, then the
//! destination's ingress: an allow-set match passes the check; otherwise a pod in the
//! isolation set is denied (rate-limited log, then drop); a pod in no isolation set is not
//! isolated in that direction.
//!
//! Interval sets of concatenations reject overlapping elements, so the elements of one pod
//! (one "group") are normalised: per direction the union of every allowing rule of every
//! policy selecting the pod is cut into disjoint boxes (peer range × port range per
//! protocol). Each element is attributed to one policy for the per-policy counters: where
//! rules of several policies overlap, the region goes to the first policy by namespace/name
//! (the one `explain` names), so elements are split along those borders. An isolated pod's
//! denials go to the first policy by namespace/name that isolates it in that direction.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::eval::{Compiled, CompiledPeer};
use crate::model::{Cidr, Direction, IpBlock, PortMatch, Protocol};

/// The table name sluice uses unless configured otherwise.
pub const DEFAULT_TABLE: &str = "sluice-policy";
/// Start of the kernel log line of a denied new connection; [`deny_log_prefix`] adds the
/// table, so several sluice instances on one host can tell their lines apart.
pub const LOG_PREFIX: &str = "sluice-deny ";

/// The kernel log prefix of the deny rule of `table` (nft allows 127 bytes; table names are
/// at most 64).
pub fn deny_log_prefix(table: &str) -> String {
    format!("{LOG_PREFIX}{table}: ")
}

const CHAIN_FORWARD: &str = "forward";
const CHAIN_EGRESS: &str = "egress_check";
const CHAIN_INGRESS: &str = "ingress_check";
const CHAIN_DENY: &str = "denied";
/// Elements per `add element`/`delete element` command (keeps lines a sane length).
const ELEMENTS_PER_COMMAND: usize = 500;

/// IP family of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Highest address as an integer.
    pub fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The nft address type.
    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// The nft payload keyword (`ip saddr`, `ip6 saddr`).
    fn payload(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
        }
    }

    /// The address with integer value `n` (truncated to the family's width).
    pub fn ip(self, n: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from((n & u128::from(u32::MAX)) as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }
}

fn ip_value(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Which kind of set an element lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// Pod addresses isolated in a direction (denied-packet counters).
    Isolated,
    /// `pod . peer` for rules without ports.
    All,
    /// `pod . peer . l4proto . port` for rules with ports.
    Ports,
}

/// One of the twelve sets of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetId {
    pub direction: Direction,
    pub kind: SetKind,
    pub family: Family,
}

impl SetId {
    /// Every set of the table, in definition order.
    pub fn all() -> impl Iterator<Item = SetId> {
        [Family::V4, Family::V6].into_iter().flat_map(|family| {
            [Direction::Ingress, Direction::Egress]
                .into_iter()
                .flat_map(move |direction| {
                    [SetKind::Isolated, SetKind::All, SetKind::Ports]
                        .into_iter()
                        .map(move |kind| SetId {
                            direction,
                            kind,
                            family,
                        })
                })
        })
    }

    /// `in_iso4`, `eg_ports6`, ...
    pub fn name(&self) -> String {
        let direction = match self.direction {
            Direction::Ingress => "in",
            Direction::Egress => "eg",
        };
        let kind = match self.kind {
            SetKind::Isolated => "iso",
            SetKind::All => "all",
            SetKind::Ports => "ports",
        };
        format!("{direction}_{kind}{}", self.family.suffix())
    }

    /// The set's definition inside the table block.
    fn definition(&self) -> String {
        let addr = self.family.addr_type();
        // set in_iso4 { type ipv4_addr; counter; }
        // set in_all4 { type ipv4_addr . ipv4_addr; flags interval; counter; }
        // set in_ports4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval; counter; }
        match self.kind {
            SetKind::Isolated => format!("set {} {{ type {addr}; counter; }}", self.name()),
            SetKind::All => format!(
                "set {} {{ type {addr} . {addr}; flags interval; counter; }}",
                self.name()
            ),
            SetKind::Ports => format!(
                "set {} {{ type {addr} . {addr} . inet_proto . inet_service; flags interval; counter; }}",
                self.name()
            ),
        }
    }
}

/// An inclusive range of addresses of one family, as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub family: Family,
    pub start: u128,
    pub end: u128,
}

impl AddrRange {
    pub fn single(ip: IpAddr) -> Self {
        let n = ip_value(ip);
        Self {
            family: Family::of(ip),
            start: n,
            end: n,
        }
    }

    /// Every address of the family (`0.0.0.0/0`, `::/0`).
    pub fn everything(family: Family) -> Self {
        Self {
            family,
            start: 0,
            end: family.max(),
        }
    }

    pub fn from_cidr(cidr: &Cidr) -> Self {
        let family = Family::of(cidr.addr());
        let host_bits = family.bits() - u32::from(cidr.prefix());
        let start = ip_value(cidr.addr());
        let size_minus_one = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        Self {
            family,
            start,
            end: start | size_minus_one,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.start..=self.end).contains(&ip_value(ip))
    }

    /// The prefix length when the range is exactly one CIDR block.
    fn prefix_len(&self) -> Option<u32> {
        let size_minus_one = self.end - self.start;
        // size is a power of two and start is aligned to it
        let is_block = size_minus_one
            .checked_add(1)
            .is_none_or(|s| s.is_power_of_two())
            && self.start & size_minus_one == 0;
        is_block.then(|| self.family.bits() - (128 - size_minus_one.leading_zeros()))
    }

    /// nft syntax: an address, a prefix or `first-last`.
    pub fn text(&self) -> String {
        let start = self.family.ip(self.start);
        if self.start == self.end {
            return start.to_string();
        }
        match self.prefix_len() {
            Some(len) => format!("{start}/{len}"),
            None => format!("{start}-{}", self.family.ip(self.end)),
        }
    }
}

/// An `ipBlock` as disjoint sorted ranges: the CIDR minus every `except` block.
pub fn block_ranges(block: &IpBlock) -> Vec<AddrRange> {
    let whole = AddrRange::from_cidr(&block.cidr);
    let mut excepts: Vec<AddrRange> = block
        .except
        .iter()
        .map(AddrRange::from_cidr)
        .filter(|e| e.family == whole.family)
        .collect();
    excepts.sort();
    let mut out = Vec::new();
    let mut from = whole.start; // first address not yet handled
    for e in excepts {
        if e.end < from || e.start > whole.end {
            continue;
        }
        if e.start > from {
            out.push(AddrRange {
                family: whole.family,
                start: from,
                end: e.start - 1,
            });
        }
        match e.end.checked_add(1) {
            Some(next) if next <= whole.end => from = next,
            _ => return out,
        }
    }
    out.push(AddrRange {
        family: whole.family,
        start: from,
        end: whole.end,
    });
    out
}

/// One set element.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// The pod is isolated in `direction`.
    Isolated { direction: Direction, pod: IpAddr },
    /// The pod may talk to (egress) / hear from (ingress) `peer` on every protocol and port.
    All {
        direction: Direction,
        pod: IpAddr,
        peer: AddrRange,
    },
    /// Likewise for one protocol and a port range (destination port).
    Ports {
        direction: Direction,
        pod: IpAddr,
        peer: AddrRange,
        protocol: Protocol,
        start: u16,
        end: u16,
    },
}

/// An element as integer ranges, one per concatenated field: what `nft -j` prints, parsed.
pub type ElementKey = Vec<(u128, u128)>;

fn protocol_number(p: Protocol) -> u128 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn protocol_keyword(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

impl Element {
    pub fn pod(&self) -> IpAddr {
        match self {
            Element::Isolated { pod, .. }
            | Element::All { pod, .. }
            | Element::Ports { pod, .. } => *pod,
        }
    }

    pub fn set(&self) -> SetId {
        let (direction, kind) = match self {
            Element::Isolated { direction, .. } => (*direction, SetKind::Isolated),
            Element::All { direction, .. } => (*direction, SetKind::All),
            Element::Ports { direction, .. } => (*direction, SetKind::Ports),
        };
        SetId {
            direction,
            kind,
            family: Family::of(self.pod()),
        }
    }

    /// nft syntax of the element (`10.0.0.2 . 10.0.0.0/24 . tcp . 80-90`).
    pub fn text(&self) -> String {
        match self {
            Element::Isolated { pod, .. } => pod.to_string(),
            Element::All { pod, peer, .. } => format!("{pod} . {}", peer.text()),
            Element::Ports {
                pod,
                peer,
                protocol,
                start,
                end,
                ..
            } => {
                let ports = if start == end {
                    start.to_string()
                } else {
                    format!("{start}-{end}")
                };
                format!(
                    "{pod} . {} . {} . {ports}",
                    peer.text(),
                    protocol_keyword(*protocol)
                )
            }
        }
    }

    pub fn key(&self) -> ElementKey {
        let pod = ip_value(self.pod());
        match self {
            Element::Isolated { .. } => vec![(pod, pod)],
            Element::All { peer, .. } => vec![(pod, pod), (peer.start, peer.end)],
            Element::Ports {
                peer,
                protocol,
                start,
                end,
                ..
            } => {
                let p = protocol_number(*protocol);
                vec![
                    (pod, pod),
                    (peer.start, peer.end),
                    (p, p),
                    (u128::from(*start), u128::from(*end)),
                ]
            }
        }
    }
}

/// Elements, each with the index (into [`Compiled::policies`]) of the policy it is attributed
/// to.
pub type Elements = BTreeMap<Element, usize>;

/// For each pod address, the policies (indices into [`Compiled::policies`]) selecting it.
pub fn selecting_index(compiled: &Compiled) -> BTreeMap<IpAddr, BTreeSet<usize>> {
    let mut out: BTreeMap<IpAddr, BTreeSet<usize>> = BTreeMap::new();
    for (i, policy) in compiled.policies.iter().enumerate() {
        for ip in &policy.selected_ips {
            out.entry(*ip).or_default().insert(i);
        }
    }
    out
}

/// The elements of one pod address (its "group"): isolation and allow elements in both
/// directions from the policies `selecting` it.
pub fn pod_elements(compiled: &Compiled, selecting: &BTreeSet<usize>, pod: IpAddr) -> Elements {
    let family = Family::of(pod);
    let mut out = Elements::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        let mut all: Vec<(AddrRange, usize)> = Vec::new();
        let mut ports: BTreeMap<Protocol, Vec<PortBox>> = BTreeMap::new();
        let mut isolated_by = None;
        for &index in selecting {
            let Some(policy) = compiled.policies.get(index) else {
                continue;
            };
            let Some(rules) = policy.rules(direction) else {
                continue;
            };
            isolated_by.get_or_insert(index);
            for rule in rules {
                let peers: Vec<AddrRange> = match &rule.peers {
                    None => vec![AddrRange::everything(family)],
                    Some(peers) => peers
                        .iter()
                        .flat_map(|peer| match peer {
                            CompiledPeer::Pods(ips) => ips
                                .iter()
                                .filter(|ip| Family::of(**ip) == family)
                                .map(|ip| AddrRange::single(*ip))
                                .collect(),
                            CompiledPeer::IpBlock(block) => block_ranges(block)
                                .into_iter()
                                .filter(|r| r.family == family)
                                .collect::<Vec<_>>(),
                        })
                        .collect(),
                };
                match &rule.ports {
                    None => all.extend(peers.iter().map(|r| (*r, index))),
                    Some(entries) => {
                        for entry in entries {
                            let (start, end) = match &entry.port {
                                PortMatch::Any => (0, u16::MAX),
                                PortMatch::Range { start, end } => (*start, *end),
                                // Cannot be resolved from CRI data: matches nothing.
                                PortMatch::Named(_) => continue,
                            };
                            ports
                                .entry(entry.protocol)
                                .or_default()
                                .extend(peers.iter().map(|peer| PortBox {
                                    peer: *peer,
                                    start,
                                    end,
                                    owner: index,
                                }));
                        }
                    }
                }
            }
        }
        if let Some(owner) = isolated_by {
            out.insert(Element::Isolated { direction, pod }, owner);
        }
        for (peer, owner) in union(all) {
            out.insert(
                Element::All {
                    direction,
                    pod,
                    peer,
                },
                owner,
            );
        }
        for (protocol, boxes) in ports {
            for b in normalise_ports(boxes) {
                out.insert(
                    Element::Ports {
                        direction,
                        pod,
                        peer: b.peer,
                        protocol,
                        start: b.start,
                        end: b.end,
                    },
                    b.owner,
                );
            }
        }
    }
    out
}

/// Every element of a compiled world.
pub fn all_elements(compiled: &Compiled) -> Elements {
    let mut out = Elements::new();
    for (ip, selecting) in selecting_index(compiled) {
        out.extend(pod_elements(compiled, &selecting, ip));
    }
    out
}

/// A peer range × port range allowed by the rule of policy `owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PortBox {
    peer: AddrRange,
    start: u16,
    end: u16,
    owner: usize,
}

/// The union of ranges as disjoint sorted ranges, each attributed to the first owner (lowest
/// policy index) covering it: owners paint in ascending order, each only where no earlier
/// owner did.
fn union(ranges: Vec<(AddrRange, usize)>) -> Vec<(AddrRange, usize)> {
    let mut by_owner: BTreeMap<usize, Vec<AddrRange>> = BTreeMap::new();
    for (r, owner) in ranges {
        by_owner.entry(owner).or_default().push(r);
    }
    let mut covered: Vec<AddrRange> = Vec::new();
    let mut out = Vec::new();
    for (owner, ranges) in by_owner {
        let own = merge(ranges);
        for r in &own {
            out.extend(subtract(*r, &covered).into_iter().map(|p| (p, owner)));
        }
        covered.extend(own);
        covered = merge(covered);
    }
    out.sort();
    out
}

/// Overlapping or adjacent ranges merged; sorted.
fn merge(mut ranges: Vec<AddrRange>) -> Vec<AddrRange> {
    ranges.sort();
    let mut out: Vec<AddrRange> = Vec::new();
    for r in ranges {
        if let Some(last) = out.last_mut()
            && last.family == r.family
            && last.end.checked_add(1).is_none_or(|next| r.start <= next)
        {
            last.end = last.end.max(r.end);
            continue;
        }
        out.push(r);
    }
    out
}

/// `r` minus the sorted disjoint `covered` ranges.
fn subtract(r: AddrRange, covered: &[AddrRange]) -> Vec<AddrRange> {
    let mut out = Vec::new();
    let mut from = r.start;
    for c in covered {
        if c.family != r.family || c.end < from {
            continue;
        }
        if c.start > r.end {
            break;
        }
        if c.start > from {
            out.push(AddrRange {
                family: r.family,
                start: from,
                end: c.start - 1,
            });
        }
        match c.end.checked_add(1) {
            Some(next) if next <= r.end => from = next,
            _ => return out,
        }
    }
    out.push(AddrRange {
        family: r.family,
        start: from,
        end: r.end,
    });
    out
}

/// Boxes of one protocol cut into disjoint boxes: the port axis is split at every box edge;
/// per port segment the covering peer ranges are unioned (see [`union`] for attribution);
/// consecutive segments with the same peer ranges and owners are joined again.
fn normalise_ports(boxes: Vec<PortBox>) -> Vec<PortBox> {
    let mut edges: BTreeSet<u32> = BTreeSet::new();
    for b in &boxes {
        edges.insert(u32::from(b.start));
        edges.insert(u32::from(b.end) + 1);
    }
    let edges: Vec<u32> = edges.into_iter().collect();
    // (first port, last port, disjoint peer ranges with owners)
    type Segment = (u32, u32, Vec<(AddrRange, usize)>);
    let mut segments: Vec<Segment> = Vec::new();
    for pair in edges.windows(2) {
        let (lo, hi) = (pair[0], pair[1] - 1);
        let covering: Vec<(AddrRange, usize)> = boxes
            .iter()
            .filter(|b| u32::from(b.start) <= lo && u32::from(b.end) >= hi)
            .map(|b| (b.peer, b.owner))
            .collect();
        if covering.is_empty() {
            continue;
        }
        let peers = union(covering);
        if let Some((_, last_hi, last_peers)) = segments.last_mut()
            && *last_hi + 1 == lo
            && *last_peers == peers
        {
            *last_hi = hi;
            continue;
        }
        segments.push((lo, hi, peers));
    }
    segments
        .into_iter()
        .flat_map(|(lo, hi, peers)| {
            peers.into_iter().map(move |(peer, owner)| PortBox {
                peer,
                // Edges come from u16 ports, so both fit.
                start: u16::try_from(lo).unwrap_or(u16::MAX),
                end: u16::try_from(hi).unwrap_or(u16::MAX),
                owner,
            })
        })
        .collect()
}

/// What to send to the kernel to go from one element set to another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub delete: Vec<Element>,
    pub add: Vec<Element>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }

    pub fn len(&self) -> usize {
        self.delete.len() + self.add.len()
    }
}

/// Elements in `old` but not in `new` (delete) and in `new` but not in `old` (add). Owners
/// do not matter: an element whose attribution changes stays in the kernel.
pub fn diff(old: &Elements, new: &Elements) -> Diff {
    Diff {
        delete: old
            .keys()
            .filter(|e| !new.contains_key(*e))
            .cloned()
            .collect(),
        add: new
            .keys()
            .filter(|e| !old.contains_key(*e))
            .cloned()
            .collect(),
    }
}

fn element_commands<'a>(
    out: &mut String,
    verb: &str,
    table: &str,
    elements: impl IntoIterator<Item = &'a Element>,
) {
    let mut by_set: BTreeMap<SetId, Vec<&Element>> = BTreeMap::new();
    for e in elements {
        by_set.entry(e.set()).or_default().push(e);
    }
    for (set, elements) in by_set {
        for chunk in elements.chunks(ELEMENTS_PER_COMMAND) {
            let texts: Vec<String> = chunk.iter().map(|e| e.text()).collect();
            // add element inet sluice-policy in_ports4 { 10.0.0.2 . 10.0.0.3 . tcp . 80 }
            let _ = writeln!(
                out,
                "{verb} element inet {table} {} {{ {} }}",
                set.name(),
                texts.join(", ")
            );
        }
    }
}

/// One `nft -f -` transaction applying `diff`: deletions first, so an element can be
/// replaced by an overlapping one in the same transaction.
pub fn diff_script(table: &str, diff: &Diff) -> String {
    let mut out = String::new();
    element_commands(&mut out, "delete", table, &diff.delete);
    element_commands(&mut out, "add", table, &diff.add);
    out
}

/// Options of the generated ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetOptions {
    pub table: String,
    /// Log denied new connections at most this many times per second (`None`: no log).
    pub log_rate_per_sec: Option<u32>,
}

/// The transaction that deletes the table whether or not it exists.
pub fn delete_script(table: &str) -> String {
    // table inet sluice-policy {}      (creates it if absent, so the delete cannot fail)
    // delete table inet sluice-policy
    format!("table inet {table} {{}}\ndelete table inet {table}\n")
}

/// One `nft -f -` transaction replacing the whole table (existing or not) by the ruleset
/// with `elements`: until it commits, the old table stays in force.
pub fn ruleset(options: &RulesetOptions, elements: &Elements) -> String {
    let table = &options.table;
    let mut out = delete_script(table);
    let _ = writeln!(out, "table inet {table} {{");
    for set in SetId::all() {
        let _ = writeln!(out, "\t{}", set.definition());
    }
    let _ = writeln!(out, "\tchain {CHAIN_FORWARD} {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook forward priority filter; policy accept;"
    );
    // Replies and related packets (ICMP errors) of admitted connections.
    let _ = writeln!(out, "\t\tct state established,related accept");
    // IPv6 neighbour discovery between pods on the bridge is not connection traffic.
    let _ = writeln!(
        out,
        "\t\ticmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }} accept"
    );
    let _ = writeln!(out, "\t\tjump {CHAIN_EGRESS}");
    let _ = writeln!(out, "\t\tjump {CHAIN_INGRESS}");
    let _ = writeln!(out, "\t}}");
    for (direction, chain, pod, peer, verdict) in [
        (Direction::Egress, CHAIN_EGRESS, "saddr", "daddr", "return"),
        (
            Direction::Ingress,
            CHAIN_INGRESS,
            "daddr",
            "saddr",
            "accept",
        ),
    ] {
        let _ = writeln!(out, "\tchain {chain} {{");
        for family in [Family::V4, Family::V6] {
            let set = |kind| {
                SetId {
                    direction,
                    kind,
                    family,
                }
                .name()
            };
            let ip = family.payload();
            // meta l4proto { tcp, udp, sctp } ip saddr . ip daddr . meta l4proto . th dport @eg_ports4 return
            let _ = writeln!(
                out,
                "\t\tmeta l4proto {{ tcp, udp, sctp }} {ip} {pod} . {ip} {peer} . meta l4proto . th dport @{} {verdict}",
                set(SetKind::Ports)
            );
            // ip saddr . ip daddr @eg_all4 return
            let _ = writeln!(
                out,
                "\t\t{ip} {pod} . {ip} {peer} @{} {verdict}",
                set(SetKind::All)
            );
            // ip saddr @eg_iso4 goto denied
            let _ = writeln!(
                out,
                "\t\t{ip} {pod} @{} goto {CHAIN_DENY}",
                set(SetKind::Isolated)
            );
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "\tchain {CHAIN_DENY} {{");
    if let Some(rate) = options.log_rate_per_sec {
        // limit rate 10/second log prefix "sluice-deny sluice-policy: " level info
        let _ = writeln!(
            out,
            "\t\tlimit rate {}/second log prefix \"{}\" level info",
            rate.max(1),
            deny_log_prefix(&options.table)
        );
    }
    let _ = writeln!(out, "\t\tdrop");
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "}}");
    element_commands(&mut out, "add", table, elements.keys());
    out
}

/// Number of compiled rules (ingress and egress rules of the directions each policy affects).
pub fn rule_count(compiled: &Compiled) -> usize {
    compiled
        .policies
        .iter()
        .map(|p| p.ingress.as_ref().map_or(0, Vec::len) + p.egress.as_ref().map_or(0, Vec::len))
        .sum()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::eval::World;
    use crate::model::{LabelSelector, NetworkPolicy, Peer, Pod, PolicyPort, Rule};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(name: &str, app: &str, ips: &[&str]) -> Pod {
        Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: labels(&[("app", app)]),
            ips: ips.iter().map(|s| ip(s)).collect(),
            host_network: false,
        }
    }

    fn policy(
        name: &str,
        app: &str,
        ingress: Vec<Rule>,
        egress: Option<Vec<Rule>>,
    ) -> NetworkPolicy {
        NetworkPolicy {
            namespace: "default".into(),
            name: name.into(),
            pod_selector: LabelSelector {
                match_labels: labels(&[("app", app)]),
                ..Default::default()
            },
            affects_ingress: true,
            affects_egress: egress.is_some(),
            ingress,
            egress: egress.unwrap_or_default(),
            source: None,
        }
    }

    fn from_app(app: &str) -> Peer {
        Peer::Pods {
            namespaces: None,
            pods: LabelSelector {
                match_labels: labels(&[("app", app)]),
                ..Default::default()
            },
        }
    }

    fn tcp(start: u16, end: u16) -> PolicyPort {
        PolicyPort {
            protocol: Protocol::Tcp,
            port: PortMatch::Range { start, end },
        }
    }

    fn block(c: &str, except: &[&str]) -> Peer {
        Peer::IpBlock(IpBlock {
            cidr: cidr(c),
            except: except.iter().map(|e| cidr(e)).collect(),
        })
    }

    fn world(policies: Vec<NetworkPolicy>, pods: Vec<Pod>) -> World {
        World {
            policies,
            namespaces: BTreeMap::new(),
            pods,
            node_ips: vec![],
        }
    }

    fn texts(elements: &Elements, set: &str) -> Vec<String> {
        elements
            .keys()
            .filter(|e| e.set().name() == set)
            .map(Element::text)
            .collect()
    }

    /// No two elements of one set overlap in every field (what nft would reject or, worse,
    /// accept with undefined matching).
    fn assert_disjoint(elements: &Elements) {
        let all: Vec<&Element> = elements.keys().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.set() != b.set() {
                    continue;
                }
                let overlap = a
                    .key()
                    .iter()
                    .zip(b.key())
                    .all(|(x, y)| x.0 <= y.1 && y.0 <= x.1);
                assert!(!overlap, "{} overlaps {}", a.text(), b.text());
            }
        }
    }

    #[test]
    fn address_ranges_print_as_nft_syntax() {
        assert_eq!(AddrRange::single(ip("10.0.0.1")).text(), "10.0.0.1");
        assert_eq!(
            AddrRange::from_cidr(&cidr("10.1.0.0/16")).text(),
            "10.1.0.0/16"
        );
        assert_eq!(AddrRange::everything(Family::V4).text(), "0.0.0.0/0");
        assert_eq!(AddrRange::everything(Family::V6).text(), "::/0");
        let r = AddrRange {
            family: Family::V4,
            start: ip_value(ip("10.0.0.3")),
            end: ip_value(ip("10.0.0.9")),
        };
        assert_eq!(r.text(), "10.0.0.3-10.0.0.9");
        assert_eq!(AddrRange::from_cidr(&cidr("fd00::/64")).text(), "fd00::/64");
    }

    #[test]
    fn ip_block_except_becomes_disjoint_ranges() {
        let b = |c: &str, e: &[&str]| {
            block_ranges(&IpBlock {
                cidr: cidr(c),
                except: e.iter().map(|x| cidr(x)).collect(),
            })
            .iter()
            .map(AddrRange::text)
            .collect::<Vec<_>>()
        };
        assert_eq!(b("10.0.0.0/24", &[]), ["10.0.0.0/24"]);
        assert_eq!(
            b("10.0.0.0/24", &["10.0.0.64/26"]),
            ["10.0.0.0/26", "10.0.0.128/25"]
        );
        // Overlapping and unsorted excepts, one at the very end.
        assert_eq!(
            b(
                "10.0.0.0/24",
                &[
                    "10.0.0.240/28",
                    "10.0.0.16/28",
                    "10.0.0.0/27",
                    "10.0.0.8/29"
                ]
            ),
            ["10.0.0.32-10.0.0.239"]
        );
        assert_eq!(
            b("0.0.0.0/0", &["10.0.0.0/8"]),
            ["0.0.0.0-9.255.255.255", "11.0.0.0-255.255.255.255"]
        );
        assert_eq!(b("::/0", &["::/1"]), ["8000::/1"]);
    }

    #[test]
    fn ruleset_has_the_sets_chains_and_elements() {
        let w = world(
            vec![policy(
                "allow-frontend",
                "db",
                vec![Rule {
                    peers: Some(vec![from_app("frontend")]),
                    ports: Some(vec![tcp(80, 80)]),
                }],
                None,
            )],
            vec![
                pod("db", "db", &["10.0.0.3", "fd00::3"]),
                pod("web", "frontend", &["10.0.0.2", "fd00::2"]),
            ],
        );
        let compiled = Compiled::new(&w);
        let elements = all_elements(&compiled);
        let options = RulesetOptions {
            table: "t".into(),
            log_rate_per_sec: Some(5),
        };
        let text = ruleset(&options, &elements);
        assert!(text.starts_with("table inet t {}\ndelete table inet t\ntable inet t {\n"));
        for line in [
            "set in_iso4 { type ipv4_addr; counter; }",
            "set eg_ports6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval; counter; }",
            "set in_all4 { type ipv4_addr . ipv4_addr; flags interval; counter; }",
            "type filter hook forward priority filter; policy accept;",
            "ct state established,related accept",
            "meta l4proto { tcp, udp, sctp } ip daddr . ip saddr . meta l4proto . th dport @in_ports4 accept",
            "ip6 daddr . ip6 saddr @in_all6 accept",
            "ip daddr @in_iso4 goto denied",
            "meta l4proto { tcp, udp, sctp } ip saddr . ip daddr . meta l4proto . th dport @eg_ports4 return",
            "ip6 saddr @eg_iso6 goto denied",
            "limit rate 5/second log prefix \"sluice-deny t: \" level info",
            "drop",
            "add element inet t in_iso4 { 10.0.0.3 }",
            "add element inet t in_ports4 { 10.0.0.3 . 10.0.0.2 . tcp . 80 }",
            "add element inet t in_iso6 { fd00::3 }",
            "add element inet t in_ports6 { fd00::3 . fd00::2 . tcp . 80 }",
        ] {
            assert!(
                text.lines().any(|l| l.trim() == line),
                "missing {line:?} in\n{text}"
            );
        }
        // The egress check comes first in the forward chain, ingress second.
        let egress = text.find("jump egress_check").unwrap();
        assert!(egress < text.find("jump ingress_check").unwrap());
        // Nothing for egress (not isolated) and no log without the option.
        assert!(!text.contains("add element inet t eg_"));
        let quiet = ruleset(
            &RulesetOptions {
                table: "t".into(),
                log_rate_per_sec: None,
            },
            &elements,
        );
        assert!(!quiet.contains("log prefix"));
        // Owners: the only policy.
        assert!(elements.values().all(|o| *o == 0));
    }

    #[test]
    fn overlapping_rules_are_normalised_into_disjoint_elements() {
        let rules = vec![
            Rule {
                peers: Some(vec![block("10.0.0.0/8", &["10.2.0.0/16"])]),
                ports: Some(vec![tcp(80, 90)]),
            },
            Rule {
                peers: Some(vec![block("10.1.0.0/16", &[]), from_app("web")]),
                ports: Some(vec![tcp(85, 100), tcp(80, 80)]),
            },
            Rule {
                peers: Some(vec![block("10.0.0.0/24", &[])]),
                ports: Some(vec![PolicyPort {
                    protocol: Protocol::Tcp,
                    port: PortMatch::Any,
                }]),
            },
            Rule {
                peers: Some(vec![block("192.168.0.0/16", &[])]),
                ports: Some(vec![PolicyPort {
                    protocol: Protocol::Tcp,
                    port: PortMatch::Named("http".into()),
                }]),
            },
            Rule {
                peers: Some(vec![
                    block("172.16.0.0/12", &[]),
                    block("172.16.5.0/24", &[]),
                ]),
                ports: None,
            },
        ];
        let w = world(
            vec![
                policy("a", "db", rules.clone(), None),
                // A second policy with an overlapping rule: attributed to "a" where they meet.
                policy(
                    "b",
                    "db",
                    vec![Rule {
                        peers: Some(vec![block("10.0.0.0/7", &[])]),
                        ports: Some(vec![tcp(443, 443), tcp(90, 95)]),
                    }],
                    None,
                ),
            ],
            vec![
                pod("db", "db", &["10.3.0.3"]),
                pod("web", "web", &["10.2.0.7"]),
            ],
        );
        let compiled = Compiled::new(&w);
        let elements = all_elements(&compiled);
        assert_disjoint(&elements);
        // The same decisions as the compiled form, on a sample of flows.
        let db = ip("10.3.0.3");
        for src in [
            "10.0.0.1",
            "10.1.2.3",
            "10.2.0.7",
            "10.2.0.8",
            "11.0.0.1",
            "10.255.0.1",
            "172.16.5.5",
            "172.20.0.0",
            "192.168.1.1",
            "9.9.9.9",
        ] {
            for port in [1, 79, 80, 81, 85, 90, 91, 95, 96, 100, 101, 443, 8080] {
                let want =
                    compiled.decide(&w.pods[0], Direction::Ingress, ip(src), Protocol::Tcp, port);
                let got = elements.keys().any(|e| match e {
                    Element::Ports {
                        direction: Direction::Ingress,
                        pod,
                        peer,
                        protocol,
                        start,
                        end,
                    } => {
                        *pod == db
                            && peer.contains(ip(src))
                            && *protocol == Protocol::Tcp
                            && (*start..=*end).contains(&port)
                    }
                    Element::All {
                        direction: Direction::Ingress,
                        pod,
                        peer,
                    } => *pod == db && peer.contains(ip(src)),
                    _ => false,
                });
                assert_eq!(got, want.allows(), "{src} port {port}: {want:?}");
                // Attribution: the first policy (by name) whose rule allows it.
                if let crate::eval::Decision::Allowed(rule) = want
                    && let Some((_, owner)) = elements.iter().find(|(e, _)| match e {
                        Element::Ports {
                            pod,
                            peer,
                            start,
                            end,
                            ..
                        } => {
                            *pod == db && peer.contains(ip(src)) && (*start..=*end).contains(&port)
                        }
                        _ => false,
                    })
                {
                    assert_eq!(
                        compiled.policies[*owner].policy, rule.policy,
                        "{src} port {port}"
                    );
                }
            }
        }
        // Named ports contribute nothing.
        assert!(!elements.keys().any(|e| e.text().contains("192.168.")));
        // Overlapping all-port peers became one range.
        assert_eq!(texts(&elements, "in_all4"), ["10.3.0.3 . 172.16.0.0/12"]);
    }

    #[test]
    fn egress_and_ipv6_elements() {
        let w = world(
            vec![policy(
                "egress",
                "client",
                vec![],
                Some(vec![
                    Rule {
                        peers: Some(vec![from_app("dns")]),
                        ports: Some(vec![PolicyPort {
                            protocol: Protocol::Udp,
                            port: PortMatch::Range { start: 53, end: 53 },
                        }]),
                    },
                    Rule {
                        peers: Some(vec![block("fd00:1::/64", &["fd00:1::/65"])]),
                        ports: Some(vec![tcp(443, 443)]),
                    },
                ]),
            )],
            vec![
                pod("client", "client", &["10.0.0.5", "fd00::5"]),
                pod("dns", "dns", &["10.0.0.53", "fd00::53"]),
            ],
        );
        let elements = all_elements(&Compiled::new(&w));
        assert_eq!(texts(&elements, "in_iso4"), ["10.0.0.5"]);
        assert_eq!(texts(&elements, "eg_iso6"), ["fd00::5"]);
        assert_eq!(
            texts(&elements, "eg_ports4"),
            ["10.0.0.5 . 10.0.0.53 . udp . 53"]
        );
        assert_eq!(
            texts(&elements, "eg_ports6"),
            [
                "fd00::5 . fd00::53 . udp . 53",
                "fd00::5 . fd00:1:0:0:8000::/65 . tcp . 443"
            ]
        );
        // Ingress isolated with no rules: nothing allowed.
        assert!(texts(&elements, "in_ports4").is_empty());
        assert!(texts(&elements, "in_all6").is_empty());
    }

    #[test]
    fn rules_without_peers_or_ports() {
        let w = world(
            vec![policy(
                "open",
                "db",
                vec![
                    Rule {
                        peers: None,
                        ports: Some(vec![tcp(5432, 5432)]),
                    },
                    Rule {
                        peers: Some(vec![from_app("admin")]),
                        ports: None,
                    },
                ],
                None,
            )],
            vec![
                pod("db", "db", &["10.0.0.3"]),
                pod("admin", "admin", &["10.0.0.9"]),
                pod("host", "admin", &["10.0.0.10"]),
            ],
        );
        let mut w = w;
        w.pods[2].host_network = true;
        let elements = all_elements(&Compiled::new(&w));
        assert_eq!(
            texts(&elements, "in_ports4"),
            ["10.0.0.3 . 0.0.0.0/0 . tcp . 5432"]
        );
        assert_eq!(texts(&elements, "in_all4"), ["10.0.0.3 . 10.0.0.9"]);
    }

    #[test]
    fn diffs_and_their_script() {
        let old: Elements = [
            (
                Element::Isolated {
                    direction: Direction::Ingress,
                    pod: ip("10.0.0.3"),
                },
                0,
            ),
            (
                Element::All {
                    direction: Direction::Ingress,
                    pod: ip("10.0.0.3"),
                    peer: AddrRange::single(ip("10.0.0.2")),
                },
                0,
            ),
        ]
        .into_iter()
        .collect();
        let mut new = old.clone();
        new.remove(&Element::All {
            direction: Direction::Ingress,
            pod: ip("10.0.0.3"),
            peer: AddrRange::single(ip("10.0.0.2")),
        });
        new.insert(
            Element::All {
                direction: Direction::Ingress,
                pod: ip("10.0.0.3"),
                peer: AddrRange {
                    family: Family::V4,
                    start: ip_value(ip("10.0.0.2")),
                    end: ip_value(ip("10.0.0.3")),
                },
            },
            1,
        );
        let d = diff(&old, &new);
        assert_eq!(d.len(), 2);
        assert!(diff(&new, &new).is_empty());
        assert_eq!(
            diff_script("t", &d),
            "delete element inet t in_all4 { 10.0.0.3 . 10.0.0.2 }\nadd element inet t in_all4 { 10.0.0.3 . 10.0.0.2/31 }\n"
        );
    }
}
