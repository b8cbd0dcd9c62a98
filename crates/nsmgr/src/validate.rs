//! Request validation, done before anything is created.
//!
//! Sysctls: only keys that the kernel scopes to a namespace the pod owns may
//! be set, otherwise a pod could change the whole node. The accepted set is
//! the one Kubernetes and runc treat as namespaced:
//! - `net.*` when the pod has its own network namespace. Global `net.*`
//!   keys (e.g. `net.core.rmem_max`) are registered in the initial netns
//!   only, so they do not exist under `/proc/sys` inside a new netns and
//!   writing them fails with `ENOENT` instead of touching the host;
//! - `kernel.shm*`, `kernel.msg*`, `kernel.sem` and `fs.mqueue.*` when the pod
//!   has its own IPC namespace (see `ipc_namespaces(7)`).

use std::path::PathBuf;

use crate::error::RequestError;
use crate::types::{NamespaceKind, NamespaceRequest};

/// `HOST_NAME_MAX` on Linux (`sethostname(2)`).
const HOST_NAME_MAX: usize = 64;

/// A sysctl accepted for a pod: where to write it and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sysctl {
    /// The key as the caller spelled it, for error messages.
    pub(crate) key: String,
    /// `/proc/sys/...` path of the key.
    pub(crate) path: PathBuf,
    pub(crate) value: String,
}

/// Checks everything about `request` that can be checked without touching
/// the kernel, and returns the sysctls to write in order.
pub(crate) fn validate_request(request: &NamespaceRequest) -> Result<Vec<Sysctl>, RequestError> {
    if let Some(hostname) = &request.hostname {
        validate_hostname(hostname)?;
        if !request.uts.is_private() {
            return Err(RequestError::HostnameNeedsPrivateUts {
                hostname: hostname.clone(),
            });
        }
    }
    request
        .sysctls
        .iter()
        .map(|(key, value)| validate_sysctl(request, key, value))
        .collect()
}

fn validate_hostname(hostname: &str) -> Result<(), RequestError> {
    let reason = if hostname.is_empty() {
        Some("it is empty")
    } else if hostname.len() > HOST_NAME_MAX {
        Some("it is longer than 64 bytes")
    } else if !hostname
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    {
        Some("only ASCII letters, digits, '-' and '.' are allowed")
    } else if hostname.starts_with(['-', '.']) {
        Some("it starts with '-' or '.'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RequestError::InvalidHostname {
            hostname: hostname.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_sysctl(
    request: &NamespaceRequest,
    key: &str,
    value: &str,
) -> Result<Sysctl, RequestError> {
    let components = sysctl_components(key).ok_or_else(|| RequestError::InvalidSysctlName {
        key: key.to_owned(),
    })?;
    let namespace = namespace_of(&components).ok_or_else(|| RequestError::SysctlNotNamespaced {
        key: key.to_owned(),
    })?;
    if !request.mode(namespace).is_private() {
        return Err(RequestError::SysctlNeedsPrivateNamespace {
            key: key.to_owned(),
            namespace,
        });
    }
    if value.is_empty() || value.contains('\0') {
        return Err(RequestError::InvalidSysctlValue {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    let mut path = PathBuf::from("/proc/sys");
    path.extend(&components);
    Ok(Sysctl {
        key: key.to_owned(),
        path,
        value: value.to_owned(),
    })
}

/// Splits a sysctl key into its `/proc/sys` path components.
///
/// Like `sysctl(8)` and Kubernetes, a key containing `/` uses `/` as the
/// separator, so components may contain dots (`net/ipv4/conf/eth0.100/...`);
/// otherwise `.` separates. Every component must be a plain file name, so the
/// path cannot leave `/proc/sys`.
fn sysctl_components(key: &str) -> Option<Vec<&str>> {
    let (separator, dots_allowed) = if key.contains('/') {
        ('/', true)
    } else {
        ('.', false)
    };
    let components: Vec<&str> = key.split(separator).collect();
    let plain = |c: &&str| {
        !c.is_empty()
            && *c != "."
            && *c != ".."
            && c.chars().all(|ch| {
                ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-') || (dots_allowed && ch == '.')
            })
    };
    (components.len() >= 2 && components.iter().all(plain)).then_some(components)
}

/// The namespace that scopes the sysctl at `components`, if any.
fn namespace_of(components: &[&str]) -> Option<NamespaceKind> {
    match components {
        ["net", ..] => Some(NamespaceKind::Net),
        ["kernel", name]
            if name.starts_with("shm") || name.starts_with("msg") || *name == "sem" =>
        {
            Some(NamespaceKind::Ipc)
        }
        ["fs", "mqueue", _] => Some(NamespaceKind::Ipc),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::types::NamespaceMode;

    fn request(sysctls: &[(&str, &str)]) -> NamespaceRequest {
        NamespaceRequest {
            sysctls: sysctls
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            ..NamespaceRequest::default()
        }
    }

    #[test]
    fn namespaced_sysctls_map_to_proc_sys_paths() {
        let sysctls = validate_request(&request(&[
            ("net.ipv4.ip_unprivileged_port_start", "80"),
            ("net/ipv4/conf/eth0.100/forwarding", "1"),
            ("kernel.shmmax", "1000"),
            ("kernel.msgmnb", "1000"),
            ("kernel.sem", "250 32000 32 128"),
            ("fs.mqueue.msg_max", "20"),
        ]))
        .expect("all are namespaced");
        let paths: Vec<_> = sysctls
            .iter()
            .map(|s| s.path.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "/proc/sys/fs/mqueue/msg_max",
                "/proc/sys/kernel/msgmnb",
                "/proc/sys/kernel/sem",
                "/proc/sys/kernel/shmmax",
                "/proc/sys/net/ipv4/ip_unprivileged_port_start",
                "/proc/sys/net/ipv4/conf/eth0.100/forwarding",
            ]
        );
    }

    #[test]
    fn host_wide_sysctls_are_rejected_by_name() {
        for key in [
            "kernel.panic",
            "vm.swappiness",
            "kernel.semfoo",
            "fs.file-max",
            "kernel.hostname",
        ] {
            let err = validate_request(&request(&[(key, "1")])).expect_err(key);
            assert!(
                matches!(&err, RequestError::SysctlNotNamespaced { key: k } if k == key),
                "{err}"
            );
            assert!(err.to_string().contains(key));
        }
    }

    #[test]
    fn malformed_sysctl_names_cannot_escape_proc_sys() {
        for key in [
            "net",
            "",
            "net..ipv4",
            "net/../../etc/passwd",
            "net/./x",
            "net.ipv4.a b",
            "/net/x",
        ] {
            let err = validate_request(&request(&[(key, "1")])).expect_err(key);
            assert!(
                matches!(err, RequestError::InvalidSysctlName { .. }),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn sysctls_need_the_namespace_that_scopes_them() {
        let mut req = request(&[("net.ipv4.ip_forward", "1")]);
        req.network = NamespaceMode::Node;
        assert!(matches!(
            validate_request(&req),
            Err(RequestError::SysctlNeedsPrivateNamespace {
                namespace: NamespaceKind::Net,
                ..
            })
        ));
        let mut req = request(&[("kernel.shmmni", "10")]);
        req.ipc = NamespaceMode::Node;
        assert!(matches!(
            validate_request(&req),
            Err(RequestError::SysctlNeedsPrivateNamespace {
                namespace: NamespaceKind::Ipc,
                ..
            })
        ));
    }

    #[test]
    fn sysctl_values_must_be_writable_text() {
        for value in ["", "1\0"] {
            assert!(matches!(
                validate_request(&request(&[("net.ipv4.ip_forward", value)])),
                Err(RequestError::InvalidSysctlValue { .. })
            ));
        }
    }

    #[test]
    fn hostnames_are_checked() {
        let mut req = NamespaceRequest {
            hostname: Some("web-0.example".to_owned()),
            ..NamespaceRequest::default()
        };
        assert!(validate_request(&req).is_ok());
        for bad in ["", "-x", "a_b", "a/b", &"h".repeat(65)] {
            req.hostname = Some(bad.to_owned());
            assert!(
                matches!(
                    validate_request(&req),
                    Err(RequestError::InvalidHostname { .. })
                ),
                "{bad:?}"
            );
        }
        req.hostname = Some("ok".to_owned());
        req.uts = NamespaceMode::Node;
        assert!(matches!(
            validate_request(&req),
            Err(RequestError::HostnameNeedsPrivateUts { .. })
        ));
    }
}
