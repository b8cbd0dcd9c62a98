//! The pod side of an attachment: identity, netns, and the inputs to CNI capability arguments
//! (`runtimeConfig`, CNI spec section "Deriving runtimeConfig" and the conventions document).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::error::{CniError, Result};

/// Pod annotation for the ingress rate limit (a Kubernetes quantity, bits per second).
pub const INGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
/// Pod annotation for the egress rate limit (a Kubernetes quantity, bits per second).
pub const EGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

/// Burst sent with a rate limit: "no limit", as the kubelet's own CNI driver did.
const UNLIMITED_BURST: u64 = i32::MAX as u64;
/// The kubelet rejects rates outside 1 kbit/s ..= 1 Pbit/s; so do we.
const MIN_RATE: u64 = 1_000;
const MAX_RATE: u64 = 1_000_000_000_000_000;

/// Default interface name inside the pod.
pub const DEFAULT_IFNAME: &str = "eth0";

/// One pod's attachment request. Domain type: the CRI server translates into this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// Pod sandbox id: `CNI_CONTAINERID` and `K8S_POD_INFRA_CONTAINER_ID`.
    pub pod_id: String,
    /// Pod name: `K8S_POD_NAME`.
    pub name: String,
    /// Pod namespace: `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// Pod uid: `K8S_POD_UID`.
    pub uid: String,
    /// Path of the pinned network namespace. Required for ADD and CHECK; DEL runs without it.
    pub netns_path: Option<PathBuf>,
    /// Interface name inside the pod (`CNI_IFNAME`), normally `eth0`.
    pub ifname: String,
    /// Pod annotations (bandwidth limits are read from here).
    pub annotations: BTreeMap<String, String>,
    /// Pod cgroup parent (`cgroupPath` capability).
    pub cgroup_parent: Option<String>,
    /// Address ranges for IPAM (`ipRanges` capability), e.g. the node's pod CIDR.
    pub ip_ranges: Vec<IpRange>,
    /// Port mappings (`portMappings` capability) for plugins that declare it.
    pub port_mappings: Vec<PortMapping>,
}

/// One entry of the `ipRanges` capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRange {
    /// CIDR, e.g. `10.85.0.0/16`.
    pub subnet: String,
    /// First address to hand out.
    pub range_start: Option<String>,
    /// Last address to hand out.
    pub range_end: Option<String>,
    /// Gateway address.
    pub gateway: Option<String>,
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Host address to bind, empty for all.
    pub host_ip: String,
}

impl PodNetwork {
    /// A request with the given identity, interface `eth0` and nothing else set.
    #[must_use]
    pub fn new(
        pod_id: impl Into<String>,
        name: impl Into<String>,
        namespace: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        Self {
            pod_id: pod_id.into(),
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            netns_path: None,
            ifname: DEFAULT_IFNAME.to_owned(),
            annotations: BTreeMap::new(),
            cgroup_parent: None,
            ip_ranges: Vec::new(),
            port_mappings: Vec::new(),
        }
    }

    /// Reject what cannot be passed to a plugin safely (ids end up in file names and `CNI_ARGS`).
    pub(crate) fn validate(&self) -> Result<()> {
        if !crate::config::is_valid_identifier(&self.pod_id) {
            return Err(CniError::InvalidRequest(format!(
                "pod id {:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
                self.pod_id
            )));
        }
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || self.ifname == "."
            || self.ifname == ".."
            || self
                .ifname
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(CniError::InvalidRequest(format!(
                "invalid interface name {:?}",
                self.ifname
            )));
        }
        for (what, v) in [
            ("name", &self.name),
            ("namespace", &self.namespace),
            ("uid", &self.uid),
        ] {
            if v.contains([';', '=']) {
                return Err(CniError::InvalidRequest(format!(
                    "pod {what} {v:?} contains ';' or '=' and cannot be passed in CNI_ARGS"
                )));
            }
        }
        Ok(())
    }

    /// `CNI_ARGS`: the pod identity, as the kubelet's CNI conventions define it.
    #[must_use]
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.pod_id, self.uid
        )
    }

    /// Values for every capability we can fill; each plugin receives only those it declares.
    pub(crate) fn capability_args(&self) -> Result<Map<String, Value>> {
        let mut caps = Map::new();
        let ingress = self.bandwidth_annotation(INGRESS_BANDWIDTH_ANNOTATION)?;
        let egress = self.bandwidth_annotation(EGRESS_BANDWIDTH_ANNOTATION)?;
        if ingress.is_some() || egress.is_some() {
            let mut bw = Map::new();
            if let Some(rate) = ingress {
                bw.insert("ingressRate".into(), rate.into());
                bw.insert("ingressBurst".into(), UNLIMITED_BURST.into());
            }
            if let Some(rate) = egress {
                bw.insert("egressRate".into(), rate.into());
                bw.insert("egressBurst".into(), UNLIMITED_BURST.into());
            }
            caps.insert("bandwidth".into(), Value::Object(bw));
        }
        if !self.ip_ranges.is_empty() {
            // One range set; each set is a list of ranges (spec conventions: ipRanges).
            let set: Vec<Value> = self
                .ip_ranges
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    o.insert("subnet".into(), r.subnet.clone().into());
                    if let Some(v) = &r.range_start {
                        o.insert("rangeStart".into(), v.clone().into());
                    }
                    if let Some(v) = &r.range_end {
                        o.insert("rangeEnd".into(), v.clone().into());
                    }
                    if let Some(v) = &r.gateway {
                        o.insert("gateway".into(), v.clone().into());
                    }
                    Value::Object(o)
                })
                .collect();
            caps.insert("ipRanges".into(), json!([set]));
        }
        if let Some(cg) = self.cgroup_parent.as_deref().filter(|c| !c.is_empty()) {
            caps.insert("cgroupPath".into(), cg.into());
        }
        if !self.port_mappings.is_empty() {
            let pm: Vec<Value> = self
                .port_mappings
                .iter()
                .map(|p| {
                    json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol,
                        "hostIP": p.host_ip,
                    })
                })
                .collect();
            caps.insert("portMappings".into(), Value::Array(pm));
        }
        // CRI-O passes the pod annotations to plugins that ask for them.
        caps.insert(
            "io.kubernetes.cri.pod-annotations".into(),
            serde_json::to_value(&self.annotations).unwrap_or(Value::Null),
        );
        Ok(caps)
    }

    fn bandwidth_annotation(&self, key: &str) -> Result<Option<u64>> {
        let Some(value) = self.annotations.get(key) else {
            return Ok(None);
        };
        let invalid = |reason: String| CniError::InvalidAnnotation {
            key: key.to_owned(),
            value: value.clone(),
            reason,
        };
        let rate = parse_quantity(value).map_err(invalid)?;
        if rate < MIN_RATE {
            return Err(invalid("rate below 1k (1 kbit/s)".to_owned()));
        }
        if rate > MAX_RATE {
            return Err(invalid("rate above 1P (1 Pbit/s)".to_owned()));
        }
        Ok(Some(rate))
    }
}

/// Parse a Kubernetes resource quantity (`10M`, `1.5Gi`, `100k`, `2e6`) to an integer, rounding
/// up like `Quantity.Value()`.
pub fn parse_quantity(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return Err("not a quantity".to_owned());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') {
        return Err("not a quantity".to_owned());
    }
    // Multiplier as (numerator, power-of-ten denominator digits).
    let (mul, extra_exp): (u128, u32) = match suffix {
        "" => (1, 0),
        "k" => (1_000, 0),
        "M" => (1_000_000, 0),
        "G" => (1_000_000_000, 0),
        "T" => (1_000_000_000_000, 0),
        "P" => (1_000_000_000_000_000, 0),
        "E" => (1_000_000_000_000_000_000, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "m" => (1, 3),
        e if e.starts_with(['e', 'E']) => {
            let exp: u32 = e[1..]
                .parse()
                .map_err(|_| format!("invalid exponent {e:?}"))?;
            if exp > 30 {
                return Err("exponent too large".to_owned());
            }
            (10u128.pow(exp), 0)
        }
        other => return Err(format!("unknown suffix {other:?}")),
    };
    let digits = format!("{int_part}{frac_part}");
    if digits.len() > 30 {
        return Err("too many digits".to_owned());
    }
    let mantissa: u128 = digits.parse().map_err(|_| "not a quantity".to_owned())?;
    let denom = 10u128.pow(frac_part.len() as u32 + extra_exp);
    let total = mantissa
        .checked_mul(mul)
        .ok_or_else(|| "quantity too large".to_owned())?;
    let value = total.div_ceil(denom);
    u64::try_from(value).map_err(|_| "quantity too large".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10M").unwrap(), 10_000_000);
        assert_eq!(parse_quantity("1Mi").unwrap(), 1 << 20);
        assert_eq!(parse_quantity("1.5k").unwrap(), 1500);
        assert_eq!(parse_quantity("100").unwrap(), 100);
        assert_eq!(parse_quantity("2e6").unwrap(), 2_000_000);
        assert_eq!(parse_quantity("1500m").unwrap(), 2);
        assert!(parse_quantity("ten").is_err());
        assert!(parse_quantity("10X").is_err());
        assert!(parse_quantity("").is_err());
    }

    #[test]
    fn bandwidth_from_annotations() {
        let mut p = PodNetwork::new("abc", "n", "ns", "u");
        p.annotations
            .insert(INGRESS_BANDWIDTH_ANNOTATION.into(), "10M".into());
        let caps = p.capability_args().unwrap();
        assert_eq!(caps["bandwidth"]["ingressRate"], 10_000_000);
        assert!(caps["bandwidth"].get("egressRate").is_none());
        p.annotations
            .insert(EGRESS_BANDWIDTH_ANNOTATION.into(), "10".into());
        assert!(matches!(
            p.capability_args(),
            Err(CniError::InvalidAnnotation { .. })
        ));
    }

    #[test]
    fn validation() {
        assert!(PodNetwork::new("abc", "n", "ns", "u").validate().is_ok());
        assert!(PodNetwork::new("../x", "n", "ns", "u").validate().is_err());
        assert!(PodNetwork::new("abc", "n;x", "ns", "u").validate().is_err());
    }
}
