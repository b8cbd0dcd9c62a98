//! Making host ports answer on `127.0.0.1` and `::1` from the node itself.
//!
//! DNAT alone is not enough for loopback-sourced connections, because the kernel refuses
//! loopback addresses on any other interface:
//!
//! - **IPv4**: after DNAT the packet `127.0.0.1 -> podIP` must leave through the pod-facing
//!   interface, and the reply, de-NATed back to `-> 127.0.0.1`, arrives on it. Both are
//!   martians unless `net.ipv4.conf.<iface>.route_localnet = 1` (see `ip_route_output_key`
//!   and `ip_route_input_slow`). We set it on the pod-facing interfaces only (never `all`),
//!   masquerade only DNAT'd loopback traffic towards pods with host ports (postrouting), and
//!   our `input` chain drops what route_localnet would newly admit: new connections to
//!   127.0.0.0/8 arriving on a non-loopback interface (CVE-2020-8558, as kube-proxy does).
//! - **IPv6** has no route_localnet. Outbound works (the masquerade rewrites `::1` before
//!   transmission), but the de-NATed reply `-> ::1` fails the input route lookup: loopback
//!   destinations are looked up strictly by incoming interface (`rt6_need_strict`), and
//!   `::1` is routed on `lo` only. We add `local ::1 dev <iface>` in a dedicated routing
//!   table and one rule `to ::1 lookup <table>` (after the `local` table, so the node's own
//!   `::1` traffic never reaches it). Packets *sent* to `::1` by a neighbour are still dropped
//!   by `ip6_rcv_core` before any routing (RFC 4291 2.5.3), so only de-NATed replies can use
//!   the route. The route disappears with its interface; the rule is left in place (it is
//!   inert without routes in the table).
//!
//! Which interfaces: [`LocalhostAccess`]. The default derives them from the kernel's route
//! to each pod IP (`ip -j route get`), which is right for bridge and point-to-point CNI
//! setups alike, at the cost of one `ip` call per pod IP per `add`.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::Error;
use crate::exec::Runner;

/// How host ports are made reachable through `127.0.0.1` and `::1`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalhostAccess {
    /// Leave loopback alone: host ports answer on the node's other addresses only.
    Disabled,
    /// Configure the interface the kernel routes each pod IP through (looked up per `add`).
    #[default]
    PodRoute,
    /// Configure these interfaces (e.g. the CNI bridge `cni0`), without route lookups.
    Interfaces(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct RouteGet {
    dev: Option<String>,
}

pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && !name.contains(['/', ' ', '\0'])
        && name != "."
        && name != ".."
}

pub(crate) struct Localhost<'a> {
    pub runner: &'a Runner,
    pub ip: &'a str,
    pub sysctl: &'a str,
    pub table: u32,
}

impl Localhost<'_> {
    /// The interfaces to configure for pod IP `ip`.
    pub async fn interfaces(
        &self,
        mode: &LocalhostAccess,
        ip: IpAddr,
    ) -> Result<Vec<String>, Error> {
        match mode {
            LocalhostAccess::Disabled => Ok(Vec::new()),
            LocalhostAccess::Interfaces(names) => Ok(names.clone()),
            LocalhostAccess::PodRoute => {
                let ip_s = ip.to_string();
                let fam = if ip.is_ipv4() { "-4" } else { "-6" };
                let args = ["-j", fam, "route", "get", ip_s.as_str()];
                let o = self.runner.run_ok(self.ip, &args, None).await?;
                let routes: Vec<RouteGet> =
                    serde_json::from_slice(&o.stdout).map_err(|e| Error::NoRoute {
                        ip,
                        detail: format!("{e}: {}", o.stdout_lossy()),
                    })?;
                match routes.into_iter().find_map(|r| r.dev) {
                    // A pod IP routed via loopback is a local address: nothing to do.
                    Some(dev) if dev == "lo" => Ok(Vec::new()),
                    Some(dev) => Ok(vec![dev]),
                    None => Err(Error::NoRoute {
                        ip,
                        detail: o.stdout_lossy(),
                    }),
                }
            }
        }
    }

    /// IPv4: `net.ipv4.conf.<iface>.route_localnet = 1`.
    pub async fn route_localnet(&self, iface: &str) -> Result<(), Error> {
        if !valid_ifname(iface) {
            return Err(Error::NoRoute {
                ip: IpAddr::from([127, 0, 0, 1]),
                detail: format!("invalid interface name {iface:?}"),
            });
        }
        if self.runner.netns.is_none() {
            // Our own netns: /proc/sys/net shows the namespace of the writing process.
            let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet"));
            tokio::fs::write(&path, b"1")
                .await
                .map_err(|source| Error::Sysctl { path, source })
        } else {
            // sysctl's slash syntax keeps dots in interface names (VLANs) intact.
            let setting = format!("net/ipv4/conf/{iface}/route_localnet=1");
            self.runner
                .run_ok(self.sysctl, &["-q", "-w", setting.as_str()], None)
                .await
                .map(drop)
        }
    }

    /// IPv6: `ip -6 route replace local ::1 dev <iface> table <table>`.
    pub async fn loopback6_route(&self, iface: &str) -> Result<(), Error> {
        let table = self.table.to_string();
        let args = [
            "-6",
            "route",
            "replace",
            "local",
            "::1",
            "dev",
            iface,
            "table",
            table.as_str(),
        ];
        self.runner.run_ok(self.ip, &args, None).await.map(drop)
    }

    /// IPv6: `ip -6 rule add to ::1 lookup <table> priority <table>` unless present.
    pub async fn loopback6_rule(&self) -> Result<(), Error> {
        let table = self.table.to_string();
        let out = self
            .runner
            .run_ok(
                self.ip,
                &["-6", "rule", "show", "priority", table.as_str()],
                None,
            )
            .await?;
        if out.stdout_lossy().contains("::1") {
            return Ok(());
        }
        let args = [
            "-6",
            "rule",
            "add",
            "to",
            "::1",
            "lookup",
            table.as_str(),
            "priority",
            table.as_str(),
        ];
        self.runner.run_ok(self.ip, &args, None).await.map(drop)
    }
}
