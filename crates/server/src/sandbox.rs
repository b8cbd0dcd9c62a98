//! Pod sandbox RPCs: CRI messages in, `pods` domain calls, CRI messages out.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use cri_api::runtime::v1 as cri;
use pods::{NsMode, PodFilter, PodRecord, PodState, Protocol, SandboxConfig};
use tonic::Status;

use crate::error::pod_status;

/// Builds the domain config from a RunPodSandbox request, naming the field of every problem.
pub fn sandbox_config(req: cri::RunPodSandboxRequest) -> Result<SandboxConfig, Status> {
    let invalid = |field: &str, msg: &str| Status::invalid_argument(format!("{field}: {msg}"));
    let config = req.config.ok_or_else(|| invalid("config", "required"))?;
    let meta = config
        .metadata
        .ok_or_else(|| invalid("config.metadata", "required"))?;
    for (field, value) in [
        ("config.metadata.name", &meta.name),
        ("config.metadata.namespace", &meta.namespace),
        ("config.metadata.uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(invalid(field, "required"));
        }
        if value.contains('_') && field != "config.metadata.uid" {
            // The reserved name joins the parts with '_' (as CRI-O and containerd do);
            // Kubernetes names never contain it, so a name that does is a client bug.
            return Err(invalid(field, "must not contain '_'"));
        }
    }

    let mut port_mappings = Vec::with_capacity(config.port_mappings.len());
    for (i, m) in config.port_mappings.iter().enumerate() {
        let field = |f: &str| format!("config.port_mappings[{i}].{f}");
        let protocol = match cri::Protocol::try_from(m.protocol) {
            Ok(cri::Protocol::Tcp) => Protocol::Tcp,
            Ok(cri::Protocol::Udp) => Protocol::Udp,
            Ok(cri::Protocol::Sctp) => Protocol::Sctp,
            Err(_) => {
                return Err(invalid(
                    &field("protocol"),
                    &format!("unknown protocol {}", m.protocol),
                ));
            }
        };
        let port = |f: &str, v: i32, min: i32| {
            u16::try_from(v)
                .ok()
                .filter(|p| i32::from(*p) >= min)
                .ok_or_else(|| {
                    invalid(
                        &field(f),
                        &format!("{v} is not a port number ({min}-65535)"),
                    )
                })
        };
        let container_port = port("container_port", m.container_port, 1)?;
        let host_port = port("host_port", m.host_port, 0)?;
        let host_ip =
            match m.host_ip.as_str() {
                // Unset and the wildcard addresses mean every node address.
                "" | "0.0.0.0" | "::" => None,
                s => Some(s.parse::<IpAddr>().map_err(|_| {
                    invalid(&field("host_ip"), &format!("{s:?} is not an IP address"))
                })?),
            };
        port_mappings.push(pods::PortMapping {
            protocol,
            container_port,
            host_port,
            host_ip,
        });
    }

    let log_directory = match config.log_directory.as_str() {
        "" => None,
        d if d.starts_with('/') => Some(PathBuf::from(d)),
        d => {
            return Err(invalid(
                "config.log_directory",
                &format!("{d:?} must be an absolute path"),
            ));
        }
    };

    let linux = config.linux.unwrap_or_default();
    let ns = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let mode = |field: &str, v: i32| match cri::NamespaceMode::try_from(v) {
        Ok(cri::NamespaceMode::Pod) => Ok(NsMode::Pod),
        Ok(cri::NamespaceMode::Container) => Ok(NsMode::Container),
        Ok(cri::NamespaceMode::Node) => Ok(NsMode::Node),
        Ok(cri::NamespaceMode::Target) => Ok(NsMode::Target),
        Err(_) => Err(invalid(
            &format!("config.linux.security_context.namespace_options.{field}"),
            &format!("unknown namespace mode {v}"),
        )),
    };

    Ok(SandboxConfig {
        metadata: pods::PodMetadata {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            attempt: meta.attempt,
        },
        hostname: config.hostname,
        log_directory,
        dns: config.dns_config.map(|d| pods::DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings,
        labels: sorted(config.labels),
        annotations: sorted(config.annotations),
        cgroup_parent: linux.cgroup_parent,
        sysctls: sorted(linux.sysctls),
        network: mode("network", ns.network)?,
        ipc: mode("ipc", ns.ipc)?,
        pid: mode("pid", ns.pid)?,
        pid_target: ns.target_id,
        runtime_handler: req.runtime_handler,
    })
}

fn sorted(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn unsorted(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn cri_mode(m: NsMode) -> i32 {
    match m {
        NsMode::Pod => cri::NamespaceMode::Pod as i32,
        NsMode::Container => cri::NamespaceMode::Container as i32,
        NsMode::Node => cri::NamespaceMode::Node as i32,
        NsMode::Target => cri::NamespaceMode::Target as i32,
    }
}

fn cri_state(s: PodState) -> i32 {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        PodState::NotReady | PodState::Creating => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn metadata(p: &PodRecord) -> cri::PodSandboxMetadata {
    let m = &p.config.metadata;
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

/// The CRI status of a pod record.
pub fn sandbox_status(p: &PodRecord) -> cri::PodSandboxStatus {
    let ips = p.ips();
    cri::PodSandboxStatus {
        id: p.id.clone(),
        metadata: Some(metadata(p)),
        state: cri_state(p.state),
        created_at: p.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ips.first().map(ToString::to_string).unwrap_or_default(),
            additional_ips: ips
                .iter()
                .skip(1)
                .map(|ip| cri::PodIp { ip: ip.to_string() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: cri_mode(p.config.network),
                    pid: cri_mode(p.config.pid),
                    ipc: cri_mode(p.config.ipc),
                    target_id: p.config.pid_target.clone(),
                    userns_options: None,
                }),
            }),
        }),
        labels: unsorted(&p.config.labels),
        annotations: unsorted(&p.config.annotations),
        runtime_handler: p.config.runtime_handler.clone(),
    }
}

/// Verbose `info`: what an operator needs to debug the pod's plumbing, as JSON under `info`.
pub fn verbose_info(p: &PodRecord) -> Result<HashMap<String, String>, Status> {
    let info = serde_json::json!({
        "id": p.id,
        "state": p.state,
        "reason": p.reason,
        "bootId": p.boot_id,
        "netnsPath": p.netns,
        "pinnedNamespaces": { "net": p.netns, "ipc": p.ipc_ns, "uts": p.uts_ns },
        "cni": p.network.as_ref().map(|n| serde_json::json!({
            "network": n.network,
            "ips": n.ips,
            "result": n.result,
        })),
        "portMappings": p.config.port_mappings,
        "hostPortsPublished": p.hostports,
        "cgroup": p.cgroup,
        "podFilesDir": p.files_dir,
        "config": p.config,
    });
    let text = serde_json::to_string(&info)
        .map_err(|e| Status::internal(format!("encoding verbose pod info: {e}")))?;
    Ok(HashMap::from([("info".to_string(), text)]))
}

/// The CRI list item of a pod record.
pub fn sandbox_item(p: &PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: p.id.clone(),
        metadata: Some(metadata(p)),
        state: cri_state(p.state),
        created_at: p.created_at,
        labels: unsorted(&p.config.labels),
        annotations: unsorted(&p.config.annotations),
        runtime_handler: p.config.runtime_handler.clone(),
    }
}

/// The domain filter of a ListPodSandbox request.
pub fn filter(f: Option<cri::PodSandboxFilter>) -> Result<PodFilter, Status> {
    let Some(f) = f else {
        return Ok(PodFilter::default());
    };
    let state = match f.state {
        None => None,
        Some(s) => Some(match cri::PodSandboxState::try_from(s.state) {
            Ok(cri::PodSandboxState::SandboxReady) => PodState::Ready,
            Ok(cri::PodSandboxState::SandboxNotready) => PodState::NotReady,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "filter.state.state: unknown sandbox state {}",
                    s.state
                )));
            }
        }),
    };
    Ok(PodFilter {
        id: Some(f.id).filter(|s| !s.is_empty()),
        state,
        labels: sorted(f.label_selector),
    })
}

/// Requires a non-empty sandbox id.
pub fn sandbox_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        Err(Status::invalid_argument("pod_sandbox_id: required"))
    } else {
        Ok(id)
    }
}

/// Converts a domain failure; kept here so handlers read as one line.
pub fn fail(e: pods::PodError) -> Status {
    pod_status(&e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> cri::RunPodSandboxRequest {
        cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "u1".into(),
                    namespace: "default".into(),
                    attempt: 2,
                }),
                port_mappings: vec![cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                }],
                ..Default::default()
            }),
            runtime_handler: String::new(),
        }
    }

    #[test]
    fn a_good_request_converts() {
        let c = sandbox_config(request()).unwrap();
        assert_eq!(c.metadata.reserved_name(), "web_default_u1_2");
        assert_eq!(c.port_mappings[0].protocol, Protocol::Udp);
        assert_eq!(
            c.port_mappings[0].host_ip,
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(c.network, NsMode::Pod);
    }

    type Mutation = Box<dyn Fn(&mut cri::RunPodSandboxRequest)>;

    #[test]
    fn bad_requests_name_the_field() {
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.config = None), "config:"),
            (
                Box::new(|r| r.config.as_mut().unwrap().metadata = None),
                "config.metadata:",
            ),
            (
                Box::new(|r| {
                    r.config
                        .as_mut()
                        .unwrap()
                        .metadata
                        .as_mut()
                        .unwrap()
                        .name
                        .clear()
                }),
                "config.metadata.name:",
            ),
            (
                Box::new(|r| {
                    r.config
                        .as_mut()
                        .unwrap()
                        .metadata
                        .as_mut()
                        .unwrap()
                        .uid
                        .clear()
                }),
                "config.metadata.uid:",
            ),
            (
                Box::new(|r| r.config.as_mut().unwrap().port_mappings[0].host_ip = "nope".into()),
                "config.port_mappings[0].host_ip:",
            ),
            (
                Box::new(|r| r.config.as_mut().unwrap().port_mappings[0].container_port = 70000),
                "config.port_mappings[0].container_port:",
            ),
            (
                Box::new(|r| r.config.as_mut().unwrap().port_mappings[0].protocol = 9),
                "config.port_mappings[0].protocol:",
            ),
            (
                Box::new(|r| r.config.as_mut().unwrap().log_directory = "rel/dir".into()),
                "config.log_directory:",
            ),
        ];
        for (mutate, field) in cases {
            let mut r = request();
            mutate(&mut r);
            let err = sandbox_config(r).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.message().starts_with(field),
                "{} vs {field}",
                err.message()
            );
        }
    }
}
