//! The nftables [`HostPortManager`]: sluice-owned tables `ip <table>` and `ip6 <table>`
//! (default `sluice-hostports`), DNAT through concatenated maps whose elements are the pods'
//! mappings. The ruleset and the reasoning behind each rule are in [`ruleset`]; loopback
//! handling in [`localhost`].
//!
//! ## Where the truth lives
//! The kernel. Each element's comment names its pod, so the set of a pod's elements is
//! derived from `nft -j list table` (our own tolerant parser in `readback.rs`). To keep `add` and
//! `remove` independent of the table size, the manager reads the tables once (on first use,
//! so after a restart) into an in-memory index and then keeps the index in step with the
//! transactions it applies. Every transaction uses `create element` (fails if the key is
//! already present) and `delete element` (fails if absent), so a stale index can never
//! overwrite or hide anything: the transaction fails atomically, the index is dropped and
//! re-read from the kernel, and the operation is retried once. One manager per table is
//! assumed (a second sluice instance uses its own `table` name).
//!
//! ## Operations
//! - `add`: one `nft -f -` transaction over both families: delete the pod's previous
//!   elements (re-add replaces), take over IP-keyed elements (hairpin, pod IP) left by a dead
//!   pod with the same IP, create the new ones. A family whose table is missing or damaged is
//!   rebuilt in the same transaction. Conflicts are detected on the index first (including
//!   "every address" vs "one address" on the same protocol/port) and fail with
//!   `AlreadyExists`, applying nothing. Afterwards UDP conntrack entries for the new host
//!   ports are deleted, so an earlier unreplied flow cannot black-hole the new mapping.
//! - `remove`: deletes exactly the pod's elements; no-op if it has none.
//! - `sync`: replaces both tables, with elements for exactly the given pods, in one
//!   transaction (`add table; delete table; table {..}`). It does not redo the loopback
//!   plumbing of [`localhost`] (route_localnet and the `::1` routes live on the pods'
//!   interfaces and survive a daemon restart; after a reboot the pods are gone anyway);
//!   the next IPv6 `add` re-checks the `::1` rule.
//!
//! ## Namespaces and processes
//! With [`NftConfig::netns`] set, every tool runs as `nsenter --net=<path> -- <tool>`: an
//! external process enters the namespace, never a tokio thread. Tools run with a timeout
//! and are killed when it expires.

pub mod localhost;
mod readback;
pub mod ruleset;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::Mutex;

use localhost::Localhost;
pub use localhost::LocalhostAccess;
use readback::TableState;
use ruleset::{Element, Owner, PortKey, Verb};

use crate::exec::Runner;
use crate::types::{Family, PodPorts, PortMapping, Protocol};
use crate::{BoxFuture, Error, HostPortManager};

/// Default name of our tables (one per family).
pub const DEFAULT_TABLE: &str = "sluice-hostports";
/// Default routing table (and rule priority) for IPv6 `::1` replies; see [`localhost`].
pub const DEFAULT_LOOPBACK6_TABLE: u32 = 29548;

/// Configuration of [`NftHostPortManager`].
#[derive(Debug, Clone)]
pub struct NftConfig {
    /// Name of the `ip` and `ip6` tables we own.
    pub table: String,
    /// Operate inside this network namespace (a path like `/run/netns/<name>`); `None`
    /// means the daemon's own namespace.
    pub netns: Option<PathBuf>,
    pub localhost: LocalhostAccess,
    pub loopback6_table: u32,
    /// Delete UDP conntrack entries of new UDP host ports.
    pub flush_udp_conntrack: bool,
    /// Upper bound for each external command.
    pub timeout: Duration,
    pub nft: String,
    pub conntrack: String,
    pub ip: String,
    pub sysctl: String,
    pub nsenter: PathBuf,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            table: DEFAULT_TABLE.to_owned(),
            netns: None,
            localhost: LocalhostAccess::default(),
            loopback6_table: DEFAULT_LOOPBACK6_TABLE,
            flush_udp_conntrack: true,
            timeout: Duration::from_secs(30),
            nft: "nft".to_owned(),
            conntrack: "conntrack".to_owned(),
            ip: "ip".to_owned(),
            sysctl: "sysctl".to_owned(),
            nsenter: PathBuf::from("nsenter"),
        }
    }
}

/// One element of our tables, as read back by [`NftHostPortManager::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedElement {
    /// The pod id (or `h-<hash>` for ids not stored verbatim); empty for foreign elements.
    pub owner_id: String,
    pub owner_name: String,
    pub family: Family,
    /// `<family> <map or set> <element as nft writes it>`, e.g.
    /// `ip hostports tcp . 8080 comment "<id> <name>" : 10.88.0.2 . 80`.
    pub text: String,
}

/// Host ports through sluice-owned nftables tables. See the module docs.
#[derive(Debug)]
pub struct NftHostPortManager {
    config: NftConfig,
    runner: Runner,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `None` until read from the kernel, and again after any failed transaction.
    index: Option<Index>,
    loopback6_rule: bool,
}

#[derive(Debug, Default, Clone)]
struct Index {
    /// Elements per owner id.
    pods: BTreeMap<String, PodEntry>,
    /// Per family (`[v4, v6]`): the table is complete, so elements can be edited in place.
    intact: [bool; 2],
}

#[derive(Debug, Clone)]
struct PodEntry {
    owner: Owner,
    elems: Vec<Element>,
}

fn fam_idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

impl Index {
    fn from_tables(v4: TableState, v6: TableState) -> Self {
        let mut idx = Index {
            intact: [v4.intact, v6.intact],
            ..Index::default()
        };
        for t in v4.elements.into_iter().chain(v6.elements) {
            idx.pods
                .entry(t.owner.id.clone())
                .or_insert_with(|| PodEntry {
                    owner: t.owner.clone(),
                    elems: Vec::new(),
                })
                .elems
                .push(t.elem);
        }
        idx
    }

    /// All elements of `family` except those owned by `skip_owner` or listed in `skip`.
    fn family_elements<'a>(
        &'a self,
        family: Family,
        skip_owner: &'a str,
        skip: &'a [(String, Element)],
    ) -> impl Iterator<Item = (&'a Owner, &'a Element)> + 'a {
        self.pods
            .iter()
            .filter(move |(id, _)| id.as_str() != skip_owner)
            .flat_map(|(_, p)| p.elems.iter().map(move |e| (&p.owner, e)))
            .filter(move |(o, e)| {
                e.family() == family && !skip.iter().any(|(id, s)| id == &o.id && s == *e)
            })
    }
}

/// The elements a pod's mappings turn into, validated, in a stable order.
fn pod_elements(pod_ips: &[IpAddr], mappings: &[PortMapping]) -> Result<Vec<Element>, Error> {
    let mut out: Vec<Element> = Vec::new();
    let mut seen: HashMap<PortKey, PortMapping> = HashMap::new();
    // One pod IP per family (the first): a mapping is published once per family.
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in pod_ips {
        if !ips.iter().any(|i| Family::of(i) == Family::of(ip)) {
            ips.push(*ip);
        }
    }
    for m in mappings {
        if m.host_port == 0 {
            continue;
        }
        if m.container_port == 0 {
            return Err(Error::InvalidMapping {
                mapping: *m,
                reason: "container port is 0",
            });
        }
        let host_ip = m.specific_host_ip();
        for pod_ip in &ips {
            let family = Family::of(pod_ip);
            if host_ip.is_some_and(|h| Family::of(&h) != family) {
                continue;
            }
            let elem = match host_ip {
                Some(host_ip) => Element::HostIpPort {
                    host_ip,
                    protocol: m.protocol,
                    host_port: m.host_port,
                    pod_ip: *pod_ip,
                    pod_port: m.container_port,
                },
                None => Element::HostPort {
                    protocol: m.protocol,
                    host_port: m.host_port,
                    pod_ip: *pod_ip,
                    pod_port: m.container_port,
                },
            };
            if let Some(key) = elem.port_key() {
                if let Some(prev) = seen.get(&key) {
                    if prev != m {
                        return Err(Error::InvalidMapping {
                            mapping: *m,
                            reason: "host port mapped twice in one pod",
                        });
                    }
                    continue;
                }
                seen.insert(key, *m);
            }
            out.push(elem);
        }
    }
    for pod_ip in &ips {
        if out.iter().any(|e| e.family() == Family::of(pod_ip)) {
            out.push(Element::Hairpin { pod_ip: *pod_ip });
            out.push(Element::PodIp { pod_ip: *pod_ip });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Two host-port keys collide when family, protocol and port match and either side binds
/// every address or both bind the same one (how the scheduler treats hostIP/hostPort).
fn collides(a: &PortKey, b: &PortKey) -> bool {
    a.0 == b.0 && a.2 == b.2 && a.3 == b.3 && (a.1.is_none() || b.1.is_none() || a.1 == b.1)
}

fn conflict(index: &Index, owner_id: &str, elems: &[Element]) -> Result<(), Error> {
    let wanted: Vec<PortKey> = elems.iter().filter_map(Element::port_key).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    for (id, pod) in &index.pods {
        if id == owner_id {
            continue;
        }
        for e in &pod.elems {
            let Some(theirs) = e.port_key() else { continue };
            if let Some(mine) = wanted.iter().find(|w| collides(w, &theirs)) {
                return Err(Error::AlreadyExists {
                    protocol: mine.2,
                    host_port: mine.3,
                    host_ip: mine.1.or(theirs.1),
                    owner_id: pod.owner.id.clone(),
                    owner_name: pod.owner.name.clone(),
                });
            }
        }
    }
    Ok(())
}

impl NftConfig {
    /// Checks what would otherwise only fail later inside an nft script or a sysctl path.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key, reason: &str| {
            Err(Error::InvalidConfig {
                key,
                reason: reason.to_owned(),
            })
        };
        // nft identifiers: a letter, then letters, digits, `-`, `_`, `.`.
        let mut chars = self.table.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || self.table.len() > 64
        {
            return bad(
                "table",
                "must be a letter followed by letters, digits, '-', '_' or '.' (at most 64)",
            );
        }
        // 0 and 253..=255 are the kernel's unspec/default/main/local tables; rule
        // priorities must sort after `local` (0) and before `main` (32766).
        if !(1..=32765).contains(&self.loopback6_table)
            || (253..=255).contains(&self.loopback6_table)
        {
            return bad(
                "loopback6_table",
                "must be in 1..=32765 and not 253, 254 or 255",
            );
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be positive");
        }
        if let LocalhostAccess::Interfaces(names) = &self.localhost
            && let Some(n) = names.iter().find(|n| !localhost::valid_ifname(n))
        {
            return bad("localhost", &format!("invalid interface name {n:?}"));
        }
        Ok(())
    }
}

impl NftHostPortManager {
    /// A manager for `config` (validated). Touches nothing until the first call.
    pub fn new(config: NftConfig) -> Result<Self, Error> {
        config.validate()?;
        let runner = Runner {
            netns: config.netns.clone(),
            nsenter: config.nsenter.clone(),
            timeout: config.timeout,
        };
        Ok(NftHostPortManager {
            config,
            runner,
            state: Mutex::new(State::default()),
        })
    }

    pub fn config(&self) -> &NftConfig {
        &self.config
    }

    fn table(&self) -> &str {
        &self.config.table
    }

    /// Reads one family's table from the kernel (`nft -j list table`).
    async fn read_table(&self, family: Family) -> Result<TableState, Error> {
        let args = ["-j", "list", "table", family.nft(), self.table()];
        let out = self.runner.run(&self.config.nft, &args, None).await?;
        if !out.status.success() {
            if out.stderr.contains("No such file or directory") {
                return Ok(TableState::default());
            }
            return Err(Error::Command {
                command: self.runner.describe(&self.config.nft, &args),
                status: out.status.to_string(),
                stderr: out.stderr,
            });
        }
        let state = readback::parse_table(&out.stdout_lossy(), family).map_err(|detail| {
            Error::ReadBack {
                command: self.runner.describe(&self.config.nft, &args),
                detail,
            }
        })?;
        if !state.unknown.is_empty() {
            tracing::warn!(
                table = self.table(),
                family = family.nft(),
                elements = ?state.unknown,
                "host-port table holds elements we did not write; sync drops them"
            );
        }
        Ok(state)
    }

    async fn load_index(&self) -> Result<Index, Error> {
        let v4 = self.read_table(Family::V4).await?;
        let v6 = self.read_table(Family::V6).await?;
        Ok(Index::from_tables(v4, v6))
    }

    /// Applies `script` as one transaction: `nft -f -`.
    async fn apply(&self, script: &str) -> Result<(), Error> {
        let out = self
            .runner
            .run(&self.config.nft, &["-f", "-"], Some(script))
            .await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::NftApply {
                status: out.status.to_string(),
                stderr: out.stderr,
                script: script.to_owned(),
            })
        }
    }

    /// The elements as the kernel holds them now (read back, not from memory), sorted; for
    /// tests and diagnostics.
    pub async fn list(&self) -> Result<Vec<ListedElement>, Error> {
        let idx = self.load_index().await?;
        let mut v: Vec<_> = idx
            .pods
            .values()
            .flat_map(|p| {
                p.elems.iter().map(|e| ListedElement {
                    owner_id: p.owner.id.clone(),
                    owner_name: p.owner.name.clone(),
                    family: e.family(),
                    text: format!(
                        "{} {} {}",
                        e.family().nft(),
                        e.container(),
                        e.with_comment(&p.owner)
                    ),
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.owner_id, &a.text).cmp(&(&b.owner_id, &b.text)));
        Ok(v)
    }

    /// The script `sync(live)` would apply. Deterministic for a given input (pods and
    /// elements are sorted), which the golden test relies on.
    pub fn render_sync(&self, live: &[PodPorts]) -> Result<String, Error> {
        Ok(self.plan_sync(live)?.0)
    }

    fn plan_sync(&self, live: &[PodPorts]) -> Result<(String, Index), Error> {
        let mut idx = Index::default();
        let mut pods: Vec<&PodPorts> = live.iter().collect();
        pods.sort_by(|a, b| a.pod_id.cmp(&b.pod_id));
        for pod in pods {
            let owner = Owner::new(&pod.pod_id, &pod.pod_name);
            let mut elems = pod_elements(&pod.ips, &pod.mappings)?;
            // A live pod conflicting with an earlier one (which should not happen) loses
            // the conflicting mappings rather than every pod losing its host ports.
            if let Err(e) = conflict(&idx, &owner.id, &elems) {
                tracing::warn!(pod_id = %pod.pod_id, error = %e, "sync: dropping conflicting host ports");
                let others: Vec<PortKey> = idx
                    .pods
                    .values()
                    .flat_map(|p| p.elems.iter().filter_map(Element::port_key))
                    .collect();
                elems.retain(|e| {
                    e.port_key()
                        .is_none_or(|k| !others.iter().any(|o| collides(&k, o)))
                });
            }
            // The IP of a live pod can only belong to one of them; the later id keeps
            // IP-keyed elements when two claim the same (stale input).
            for e in elems.iter().filter(|e| e.ip_key().is_some()) {
                for p in idx.pods.values_mut() {
                    p.elems.retain(|x| x != e);
                }
            }
            if elems.is_empty() {
                continue;
            }
            match idx.pods.get_mut(&owner.id) {
                Some(entry) => entry.elems.extend(elems),
                None => {
                    idx.pods.insert(owner.id.clone(), PodEntry { owner, elems });
                }
            }
        }
        idx.intact = [true, true];
        let mut script = String::new();
        for family in FAMILIES {
            ruleset::push_table_rebuild(&mut script, family, self.table());
            let elems: Vec<_> = idx.family_elements(family, "", &[]).collect();
            if !elems.is_empty() {
                ruleset::push_elements(&mut script, self.table(), Verb::Add, elems);
            }
        }
        Ok((script, idx))
    }

    async fn ensure_index<'s>(&self, st: &'s mut State) -> Result<(&'s mut Index, bool), Error> {
        let fresh = st.index.is_none();
        if fresh {
            st.index = Some(self.load_index().await?);
        }
        match st.index.as_mut() {
            Some(idx) => Ok((idx, fresh)),
            None => unreachable_index(),
        }
    }

    async fn setup_localhost(&self, st: &mut State, elems: &[Element]) -> Result<(), Error> {
        if self.config.localhost == LocalhostAccess::Disabled {
            return Ok(());
        }
        // At most one pod IP per family (see `pod_elements`).
        let ip_of = |f: Family| {
            elems
                .iter()
                .filter_map(Element::ip_key)
                .find(|ip| Family::of(ip) == f)
        };
        let lh = Localhost {
            runner: &self.runner,
            ip: &self.config.ip,
            sysctl: &self.config.sysctl,
            table: self.config.loopback6_table,
        };
        let mode = &self.config.localhost;
        // The two families are independent: run their external commands concurrently
        // (process start-up dominates these calls).
        let need_rule = !st.loopback6_rule;
        let v4 = async {
            let Some(ip) = ip_of(Family::V4) else {
                return Ok(());
            };
            for iface in lh.interfaces(mode, ip).await? {
                lh.route_localnet(&iface).await?;
            }
            Ok::<_, Error>(())
        };
        let v6 = async {
            let Some(ip) = ip_of(Family::V6) else {
                return Ok(false);
            };
            let ifaces = lh.interfaces(mode, ip).await?;
            if ifaces.is_empty() {
                return Ok(false);
            }
            for iface in &ifaces {
                lh.loopback6_route(iface).await?;
            }
            if need_rule {
                lh.loopback6_rule().await?;
            }
            Ok(true)
        };
        let (r4, r6) = tokio::join!(v4, v6);
        r4?;
        if r6? {
            st.loopback6_rule = true;
        }
        Ok(())
    }

    async fn try_add(&self, st: &mut State, owner: &Owner, new: &[Element]) -> Result<bool, Error> {
        let (idx, fresh) = self.ensure_index(st).await?;
        conflict(idx, &owner.id, new)?;
        let old: Vec<Element> = idx
            .pods
            .get(&owner.id)
            .map(|p| p.elems.clone())
            .unwrap_or_default();
        if old == new
            && FAMILIES
                .iter()
                .all(|f| idx.intact[fam_idx(*f)] || !new.iter().any(|e| e.family() == *f))
        {
            return Ok(fresh);
        }
        // IP-keyed elements of other owners with one of our IPs: a dead pod's leftovers.
        let takeover: Vec<(String, Element)> = idx
            .pods
            .iter()
            .filter(|(id, _)| id.as_str() != owner.id)
            .flat_map(|(id, p)| p.elems.iter().map(move |e| (id.clone(), e.clone())))
            .filter(|(_, e)| e.ip_key().is_some() && new.contains(e))
            .collect();

        let table = self.table();
        let mut script = String::new();
        let mut rebuilt = Vec::new();
        for family in FAMILIES {
            let touches = new.iter().chain(&old).any(|e| e.family() == family);
            if !touches {
                continue;
            }
            let new_f = new.iter().filter(|e| e.family() == family);
            if idx.intact[fam_idx(family)] {
                let dels: Vec<(&Owner, &Element)> = old
                    .iter()
                    .filter(|e| e.family() == family)
                    .map(|e| (owner, e))
                    .chain(
                        takeover
                            .iter()
                            .filter(|(_, e)| e.family() == family)
                            .filter_map(|(id, e)| idx.pods.get(id).map(|p| (&p.owner, e))),
                    )
                    .collect();
                if !dels.is_empty() {
                    ruleset::push_elements(&mut script, table, Verb::Delete, dels);
                }
                let adds: Vec<_> = new_f.map(|e| (owner, e)).collect();
                if !adds.is_empty() {
                    ruleset::push_elements(&mut script, table, Verb::Create, adds);
                }
            } else {
                ruleset::push_table_rebuild(&mut script, family, table);
                let keep = idx.family_elements(family, &owner.id, &takeover);
                let all: Vec<_> = keep.chain(new_f.map(|e| (owner, e))).collect();
                if !all.is_empty() {
                    ruleset::push_elements(&mut script, table, Verb::Add, all);
                }
                rebuilt.push(family);
            }
        }
        self.apply(&script).await?;

        for family in rebuilt {
            idx.intact[fam_idx(family)] = true;
        }
        for (id, e) in &takeover {
            if let Some(p) = idx.pods.get_mut(id) {
                p.elems.retain(|x| x != e);
            }
        }
        idx.pods.retain(|_, p| !p.elems.is_empty());
        if new.is_empty() {
            idx.pods.remove(&owner.id);
        } else {
            idx.pods.insert(
                owner.id.clone(),
                PodEntry {
                    owner: owner.clone(),
                    elems: new.to_vec(),
                },
            );
        }
        Ok(fresh)
    }

    async fn flush_udp(&self, new: &[Element]) {
        if !self.config.flush_udp_conntrack {
            return;
        }
        let mut targets: BTreeSet<(Family, Option<IpAddr>, u16)> = BTreeSet::new();
        for e in new {
            if let Some((family, host_ip, Protocol::Udp, port)) = e.port_key() {
                targets.insert((family, host_ip, port));
            }
        }
        // One `conntrack` per family concurrently; ports of a family one after another.
        let per_family = |family: Family| {
            let targets: Vec<_> = targets.iter().filter(|t| t.0 == family).cloned().collect();
            async move {
                for (family, host_ip, port) in targets {
                    self.flush_udp_port(family, host_ip, port).await;
                }
            }
        };
        tokio::join!(per_family(Family::V4), per_family(Family::V6));
    }

    /// `conntrack -D -f <family> -p udp --orig-port-dst <port> [--orig-dst <host ip>]`.
    /// Failures are logged, not returned: the mapping is in place and works for new flows.
    async fn flush_udp_port(&self, family: Family, host_ip: Option<IpAddr>, port: u16) {
        let port = port.to_string();
        let host = host_ip.map(|h| h.to_string());
        let mut args = vec![
            "-D",
            "-f",
            family.conntrack(),
            "-p",
            "udp",
            "--orig-port-dst",
            port.as_str(),
        ];
        if let Some(h) = &host {
            args.extend(["--orig-dst", h.as_str()]);
        }
        match self.runner.run(&self.config.conntrack, &args, None).await {
            Ok(o) if o.status.success() => {}
            // conntrack exits 1 when nothing matched.
            Ok(o) if o.stderr.contains("0 flow entries have been deleted") => {}
            Ok(o) => tracing::warn!(
                command = %self.runner.describe(&self.config.conntrack, &args),
                status = %o.status, stderr = %o.stderr,
                "could not delete stale UDP conntrack entries"
            ),
            Err(error) => tracing::warn!(%error, "could not delete stale UDP conntrack entries"),
        }
    }

    async fn add_impl(
        &self,
        pod_id: &str,
        pod_name: &str,
        pod_ips: &[IpAddr],
        mappings: &[PortMapping],
    ) -> Result<(), Error> {
        let owner = Owner::new(pod_id, pod_name);
        let new = pod_elements(pod_ips, mappings)?;
        let mut st = self.state.lock().await;
        // Loopback plumbing first: idempotent, and if it fails nothing is published.
        self.setup_localhost(&mut st, &new).await?;
        match self.try_add(&mut st, &owner, &new).await {
            Err(e @ Error::NftApply { .. }) => {
                st.index = None;
                tracing::warn!(error = %e, "host-port transaction failed; re-reading the table and retrying");
                if let Err(e) = self.try_add(&mut st, &owner, &new).await {
                    st.index = None;
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        drop(st);
        self.flush_udp(&new).await;
        tracing::debug!(pod_id, elements = new.len(), "host ports added");
        Ok(())
    }

    async fn try_remove(&self, st: &mut State, owner_id: &str) -> Result<(), Error> {
        let (idx, _) = self.ensure_index(st).await?;
        let Some(entry) = idx.pods.get(owner_id) else {
            return Ok(());
        };
        let table = self.table();
        let mut script = String::new();
        let mut rebuilt = Vec::new();
        for family in FAMILIES {
            let mine: Vec<_> = entry
                .elems
                .iter()
                .filter(|e| e.family() == family)
                .map(|e| (&entry.owner, e))
                .collect();
            if mine.is_empty() {
                continue;
            }
            if idx.intact[fam_idx(family)] {
                ruleset::push_elements(&mut script, table, Verb::Delete, mine);
            } else {
                ruleset::push_table_rebuild(&mut script, family, table);
                let keep: Vec<_> = idx.family_elements(family, owner_id, &[]).collect();
                if !keep.is_empty() {
                    ruleset::push_elements(&mut script, table, Verb::Add, keep);
                }
                rebuilt.push(family);
            }
        }
        self.apply(&script).await?;
        for family in rebuilt {
            idx.intact[fam_idx(family)] = true;
        }
        idx.pods.remove(owner_id);
        Ok(())
    }

    async fn remove_impl(&self, pod_id: &str) -> Result<(), Error> {
        let owner_id = ruleset::owner_id(pod_id);
        let mut st = self.state.lock().await;
        let fresh = st.index.is_none();
        match self.try_remove(&mut st, &owner_id).await {
            Err(e @ Error::NftApply { .. }) if !fresh => {
                st.index = None;
                tracing::warn!(error = %e, "host-port transaction failed; re-reading the table and retrying");
                let r = self.try_remove(&mut st, &owner_id).await;
                if r.is_err() {
                    st.index = None;
                }
                r
            }
            Err(e) => {
                st.index = None;
                Err(e)
            }
            Ok(()) => {
                tracing::debug!(pod_id, "host ports removed");
                Ok(())
            }
        }
    }

    async fn sync_impl(&self, live: &[PodPorts]) -> Result<(), Error> {
        let (script, idx) = self.plan_sync(live)?;
        let mut st = self.state.lock().await;
        st.index = None;
        self.apply(&script).await?;
        st.index = Some(idx);
        // Re-check the ::1 rule on the next IPv6 add (a reboot or an operator may have
        // removed it).
        st.loopback6_rule = false;
        tracing::info!(pods = live.len(), "host-port tables rebuilt");
        Ok(())
    }
}

#[cold]
fn unreachable_index<T>() -> Result<T, Error> {
    Err(Error::ReadBack {
        command: String::new(),
        detail: "index missing after load".to_owned(),
    })
}

impl HostPortManager for NftHostPortManager {
    fn add<'a>(
        &'a self,
        pod_id: &'a str,
        pod_name: &'a str,
        pod_ips: &'a [IpAddr],
        mappings: &'a [PortMapping],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.add_impl(pod_id, pod_name, pod_ips, mappings))
    }

    fn remove<'a>(&'a self, pod_id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.remove_impl(pod_id))
    }

    fn sync<'a>(&'a self, live: &'a [PodPorts]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.sync_impl(live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(
        protocol: Protocol,
        host_port: u16,
        container_port: u16,
        host_ip: Option<&str>,
    ) -> PortMapping {
        PortMapping {
            protocol,
            container_port,
            host_port,
            host_ip: host_ip.map(|s| s.parse().expect("ip")),
        }
    }

    #[test]
    fn elements_follow_the_pod_ip_family() {
        let ips: Vec<IpAddr> = vec![
            "10.0.0.2".parse().expect("ip"),
            "fd00::2".parse().expect("ip"),
        ];
        let e = pod_elements(
            &ips,
            &[
                m(Protocol::Tcp, 80, 8080, None),
                m(Protocol::Udp, 53, 53, Some("192.0.2.1")),
                m(Protocol::Tcp, 0, 9, None),
                m(Protocol::Tcp, 443, 443, Some("::")),
            ],
        )
        .expect("valid");
        let v4 = e.iter().filter(|x| x.family() == Family::V4).count();
        let v6 = e.iter().filter(|x| x.family() == Family::V6).count();
        // v4: tcp/80, udp/53@192.0.2.1, tcp/443 + hairpin + podip; v6: tcp/80, tcp/443 + 2
        assert_eq!((v4, v6), (5, 4), "{e:?}");
    }

    #[test]
    fn rejects_zero_container_port_and_double_host_port() {
        let ips: Vec<IpAddr> = vec!["10.0.0.2".parse().expect("ip")];
        assert!(pod_elements(&ips, &[m(Protocol::Tcp, 80, 0, None)]).is_err());
        assert!(
            pod_elements(
                &ips,
                &[m(Protocol::Tcp, 80, 1, None), m(Protocol::Tcp, 80, 2, None)]
            )
            .is_err()
        );
        assert!(
            pod_elements(
                &ips,
                &[m(Protocol::Tcp, 80, 1, None), m(Protocol::Udp, 80, 2, None)]
            )
            .is_ok()
        );
    }

    #[test]
    fn wildcard_and_specific_host_ip_collide() {
        let any: PortKey = (Family::V4, None, Protocol::Tcp, 80);
        let one: PortKey = (
            Family::V4,
            Some("192.0.2.1".parse().expect("ip")),
            Protocol::Tcp,
            80,
        );
        let two: PortKey = (
            Family::V4,
            Some("192.0.2.2".parse().expect("ip")),
            Protocol::Tcp,
            80,
        );
        assert!(collides(&any, &one));
        assert!(!collides(&one, &two));
        assert!(!collides(&any, &(Family::V4, None, Protocol::Udp, 80)));
        assert!(!collides(&any, &(Family::V6, None, Protocol::Tcp, 80)));
    }
}
