//! Linux capabilities: names, the daemon's bounding set, and the container's set from the
//! CRI-O-like default plus `add`/`drop`.
//!
//! `privileged` and `add: [ALL]` mean every capability in the daemon's own bounding set (as
//! containerd does), not every capability the kernel knows: a daemon whose bounding set lacks
//! one (a nested or sandboxed node) can only hand out what it has, and asking runc for more
//! fails the container with "unable to apply caps". A capability named explicitly that the
//! daemon does not hold is an error naming it.

/// Capability names by number (linux/capability.h), `CAP_LAST_CAP` = 40 on 5.9+ kernels.
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// CRI-O's default capabilities (its `default_capabilities`).
pub const DEFAULT_CAPABILITIES: [&str; 9] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
];

/// A capability set as a bit mask (bit n = capability number n).
pub type CapMask = u64;

/// Normalizes `net_admin` / `NET_ADMIN` / `CAP_NET_ADMIN` to `CAP_NET_ADMIN`.
pub fn normalize(name: &str) -> String {
    let up = name.trim().to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The number of a normalized capability name.
pub fn number(name: &str) -> Option<u32> {
    CAP_NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// Names of the capabilities in `mask`, in number order (only those this table knows).
pub fn names(mask: CapMask) -> Vec<String> {
    CAP_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1u64 << i) != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// `CapBnd` from a `/proc/<pid>/status` text.
pub fn parse_cap_bnd(status: &str) -> Option<CapMask> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// What the kubelet asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CapabilityRequest {
    pub add: Vec<String>,
    pub drop: Vec<String>,
}

/// A capability outside what the daemon holds, or one nobody knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
    #[error(
        "capability {0} is not in sluice's bounding set (this node cannot grant it); remove it from capabilities.add"
    )]
    NotInBoundingSet(String),
}

/// The container's capability set.
///
/// Privileged: the whole bounding set. Otherwise `defaults`, then `add: [ALL]` makes it the
/// bounding set, `drop: [ALL]` empties it, then named adds are added and named drops removed
/// (so `drop: [ALL], add: [NET_BIND_SERVICE]` leaves exactly that one, as in Kubernetes).
/// Default capabilities the daemon lacks are silently left out; named ones are an error.
pub fn container_caps(
    req: &CapabilityRequest,
    privileged: bool,
    defaults: &[String],
    bounding: CapMask,
) -> Result<CapMask, CapError> {
    if privileged {
        return Ok(bounding);
    }
    let is_all = |s: &String| s.trim().eq_ignore_ascii_case("ALL");
    let mut caps: CapMask = 0;
    for d in defaults {
        let n = normalize(d);
        let bit = number(&n).ok_or(CapError::Unknown(n))?;
        caps |= 1 << bit;
    }
    caps &= bounding;
    if req.add.iter().any(is_all) {
        caps = bounding;
    }
    if req.drop.iter().any(is_all) {
        caps = 0;
    }
    for a in req.add.iter().filter(|a| !is_all(a)) {
        let n = normalize(a);
        let bit = number(&n).ok_or_else(|| CapError::Unknown(a.clone()))?;
        if bounding & (1 << bit) == 0 {
            return Err(CapError::NotInBoundingSet(n));
        }
        caps |= 1 << bit;
    }
    for d in req.drop.iter().filter(|d| !is_all(d)) {
        let n = normalize(d);
        let bit = number(&n).ok_or_else(|| CapError::Unknown(d.clone()))?;
        caps &= !(1 << bit);
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This project's test machines: every capability but CAP_SYS_RESOURCE (24).
    const BND: CapMask = 0x0000_01ff_feff_ffff;

    fn defaults() -> Vec<String> {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    }

    fn req(add: &[&str], drop: &[&str]) -> CapabilityRequest {
        CapabilityRequest {
            add: add.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn parses_cap_bnd() {
        let status = "Name:\tx\nCapPrm:\t0\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n";
        assert_eq!(parse_cap_bnd(status), Some(BND));
        assert!(!names(BND).contains(&"CAP_SYS_RESOURCE".to_string()));
        assert_eq!(names(BND).len(), 40);
    }

    #[test]
    fn default_set() {
        let caps = container_caps(&req(&[], &[]), false, &defaults(), BND).unwrap();
        assert_eq!(names(caps).len(), 9);
        assert!(names(caps).contains(&"CAP_KILL".to_string()));
    }

    #[test]
    fn privileged_and_add_all_are_exactly_the_bounding_set() {
        assert_eq!(
            container_caps(&req(&[], &[]), true, &defaults(), BND),
            Ok(BND)
        );
        assert_eq!(
            container_caps(&req(&["ALL"], &[]), false, &defaults(), BND),
            Ok(BND)
        );
        let caps = container_caps(&req(&["all"], &["net_raw"]), false, &defaults(), BND).unwrap();
        assert_eq!(caps, BND & !(1 << 13));
    }

    #[test]
    fn drop_all_then_add_named() {
        assert_eq!(
            container_caps(&req(&[], &["ALL"]), false, &defaults(), BND),
            Ok(0)
        );
        let caps = container_caps(
            &req(&["NET_BIND_SERVICE"], &["ALL"]),
            false,
            &defaults(),
            BND,
        )
        .unwrap();
        assert_eq!(names(caps), vec!["CAP_NET_BIND_SERVICE".to_string()]);
        let caps =
            container_caps(&req(&["CAP_NET_ADMIN"], &["KILL"]), false, &defaults(), BND).unwrap();
        let n = names(caps);
        assert!(n.contains(&"CAP_NET_ADMIN".to_string()) && !n.contains(&"CAP_KILL".to_string()));
    }

    #[test]
    fn named_capability_outside_bounding_set_is_an_error_naming_it() {
        let e = container_caps(&req(&["SYS_RESOURCE"], &[]), false, &defaults(), BND).unwrap_err();
        assert_eq!(e, CapError::NotInBoundingSet("CAP_SYS_RESOURCE".into()));
        assert!(e.to_string().contains("CAP_SYS_RESOURCE"));
        assert_eq!(
            container_caps(&req(&["FLY"], &[]), false, &defaults(), BND),
            Err(CapError::Unknown("FLY".into()))
        );
        // Dropping one we do not have is fine.
        assert!(container_caps(&req(&[], &["SYS_RESOURCE"]), false, &defaults(), BND).is_ok());
    }
}
