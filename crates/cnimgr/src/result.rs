//! Plugin results (CNI spec section 5, "Result types"), versions 0.3.0 to 1.1.0, parsed into one
//! domain type. The raw JSON is kept: it is what the next plugin gets as `prevResult` and what
//! DEL and CHECK get from the cache, unchanged.
//!
//! Differences handled: 0.3.x/0.4.0 IPs carry a `version` field (ignored); 1.1.0 adds interface
//! `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/`table`/`scope`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

/// An address with its prefix length, e.g. `10.85.0.5/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    /// The address (not necessarily the network address).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
}

impl FromStr for IpCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix_len: u8 = p.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(format!("{s:?}: prefix length above {max}"));
        }
        Ok(Self { addr, prefix_len })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An interface created or touched by the plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address.
    pub mac: Option<String>,
    /// Netns path when the interface is inside the pod; `None` for host-side interfaces.
    pub sandbox: Option<String>,
    /// MTU (1.1.0).
    pub mtu: Option<u32>,
    /// vhost-user socket path (1.1.0).
    pub socket_path: Option<String>,
    /// PCI id of a passed-through device (1.1.0).
    pub pci_id: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix.
    pub address: IpCidr,
    /// Default gateway for this address.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// A route the plugins set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: IpCidr,
    /// Next hop; `None` means the gateway of the address.
    pub gw: Option<IpAddr>,
    /// MTU (1.1.0).
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    pub advmss: Option<u32>,
    /// Metric (1.1.0).
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    pub table: Option<u32>,
    /// Scope (1.1.0).
    pub scope: Option<u32>,
}

/// DNS settings the plugins suggest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// Name servers.
    pub nameservers: Vec<String>,
    /// Local domain.
    pub domain: Option<String>,
    /// Search domains.
    pub search: Vec<String>,
    /// resolver options.
    pub options: Vec<String>,
}

/// The outcome of ADD for one network.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// Spec version of the result.
    pub cni_version: String,
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: Dns,
    raw: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResult {
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Vec<WireInterface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<WireRoute>,
    #[serde(default)]
    dns: Option<WireDns>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    socket_path: Option<String>,
    #[serde(default, rename = "pciID")]
    pci_id: Option<String>,
}

#[derive(Deserialize)]
struct WireIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    advmss: Option<u32>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    table: Option<u32>,
    #[serde(default)]
    scope: Option<u32>,
}

#[derive(Deserialize)]
struct WireDns {
    #[serde(default)]
    nameservers: Vec<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    search: Vec<String>,
    #[serde(default)]
    options: Vec<String>,
}

impl CniResult {
    /// Parse a result of any supported version. `expected_version` is the config's version,
    /// used when the result does not state its own.
    pub fn parse(raw: Value, expected_version: &str) -> Result<Self, String> {
        if raw.get("ip4").is_some() || raw.get("ip6").is_some() {
            return Err("result in the pre-0.3.0 format (ip4/ip6) is not supported".to_owned());
        }
        let wire: WireResult =
            serde_json::from_value(raw.clone()).map_err(|e| format!("invalid result: {e}"))?;
        let cni_version = wire
            .cni_version
            .unwrap_or_else(|| expected_version.to_owned());
        if !crate::config::SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(format!("unsupported result cniVersion {cni_version:?}"));
        }
        let interfaces = wire
            .interfaces
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                mac: i.mac.filter(|m| !m.is_empty()),
                sandbox: i.sandbox.filter(|s| !s.is_empty()),
                mtu: i.mtu,
                socket_path: i.socket_path,
                pci_id: i.pci_id,
            })
            .collect::<Vec<_>>();
        let ips = wire
            .ips
            .into_iter()
            .map(|ip| {
                if ip.interface.is_some_and(|i| i >= interfaces.len()) {
                    return Err(format!(
                        "ip {} refers to interface {:?} which is not in the result",
                        ip.address, ip.interface
                    ));
                }
                Ok(IpConfig {
                    address: ip.address.parse()?,
                    gateway: parse_opt_ip(ip.gateway)?,
                    interface: ip.interface,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let routes = wire
            .routes
            .into_iter()
            .map(|r| {
                Ok(Route {
                    dst: r.dst.parse()?,
                    gw: parse_opt_ip(r.gw)?,
                    mtu: r.mtu,
                    advmss: r.advmss,
                    priority: r.priority,
                    table: r.table,
                    scope: r.scope,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let dns = wire
            .dns
            .map(|d| Dns {
                nameservers: d.nameservers,
                domain: d.domain.filter(|s| !s.is_empty()),
                search: d.search,
                options: d.options,
            })
            .unwrap_or_default();
        Ok(Self {
            cni_version,
            interfaces,
            ips,
            routes,
            dns,
            raw,
        })
    }

    /// The result exactly as the last plugin printed it.
    #[must_use]
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// Addresses on interfaces inside the pod (those with a sandbox, or without an interface
    /// index at all).
    pub fn pod_ips(&self) -> impl Iterator<Item = &IpConfig> {
        self.ips.iter().filter(|ip| match ip.interface {
            None => true,
            Some(i) => self.interfaces.get(i).is_some_and(|f| f.sandbox.is_some()),
        })
    }
}

fn parse_opt_ip(s: Option<String>) -> Result<Option<IpAddr>, String> {
    match s.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e| format!("{s:?}: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_0_3_1() {
        let r = json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                           {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/run/netns/x"}],
            "ips": [{"version": "4", "address": "10.85.0.5/16", "gateway": "10.85.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let p = CniResult::parse(r, "0.3.1").unwrap();
        assert_eq!(p.ips[0].address.to_string(), "10.85.0.5/16");
        assert_eq!(p.ips[0].gateway, Some("10.85.0.1".parse().unwrap()));
        assert_eq!(p.routes[0].gw, None);
        assert_eq!(p.pod_ips().count(), 1);
    }

    #[test]
    fn parses_1_1_0_fields() {
        let r = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x", "mtu": 1400, "pciID": "0000:00:01.0"}],
            "ips": [{"address": "fd00::5/64", "interface": 0}],
            "routes": [{"dst": "::/0", "gw": "fd00::1", "mtu": 1300, "table": 100, "scope": 0}],
            "dns": {"nameservers": ["10.0.0.10"], "search": ["svc"]}
        });
        let p = CniResult::parse(r, "1.1.0").unwrap();
        assert_eq!(p.interfaces[0].mtu, Some(1400));
        assert_eq!(p.interfaces[0].pci_id.as_deref(), Some("0000:00:01.0"));
        assert_eq!(p.routes[0].table, Some(100));
        assert_eq!(p.dns.nameservers, vec!["10.0.0.10".to_owned()]);
    }

    #[test]
    fn rejects_bad_results() {
        assert!(CniResult::parse(json!({"ip4": {}}), "0.2.0").is_err());
        assert!(
            CniResult::parse(
                json!({"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}),
                "1.0.0"
            )
            .is_err()
        );
        assert!(
            CniResult::parse(
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "interface": 3}]}),
                "1.0.0"
            )
            .is_err()
        );
    }
}
