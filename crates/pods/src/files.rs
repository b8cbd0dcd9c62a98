//! The files a pod's containers will bind-mount: `resolv.conf`, `hostname` and `hosts`, kept in
//! `<runroot>/pods/<id>/` (volatile: they are regenerated for a new pod after a reboot).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::types::DnsConfig;

/// Writes the pod files into `dir` (created) and returns nothing but errors naming the file.
pub fn write_pod_files(
    dir: &Path,
    hostname: &str,
    dns: Option<&DnsConfig>,
    host_resolv_conf: &Path,
    ips: &[IpAddr],
) -> Result<(), (PathBuf, std::io::Error)> {
    std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
    let resolv = dir.join("resolv.conf");
    let text = match dns {
        Some(dns) => resolv_conf(dns),
        // No DNS config (crictl, host-network pods): the node's resolver settings.
        None => match std::fs::read_to_string(host_resolv_conf) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err((host_resolv_conf.to_path_buf(), e)),
        },
    };
    write(&resolv, &text)?;
    write(&dir.join("hostname"), &format!("{hostname}\n"))?;
    write(&dir.join("hosts"), &hosts(hostname, ips))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), (PathBuf, std::io::Error)> {
    std::fs::write(path, text).map_err(|e| (path.to_path_buf(), e))
}

/// resolv.conf(5) from the kubelet's DNS config.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut s = String::new();
    if !dns.searches.is_empty() {
        let _ = writeln!(s, "search {}", dns.searches.join(" "));
    }
    for server in &dns.servers {
        let _ = writeln!(s, "nameserver {server}");
    }
    if !dns.options.is_empty() {
        let _ = writeln!(s, "options {}", dns.options.join(" "));
    }
    s
}

/// hosts(5): loopback names plus the pod's own addresses under its hostname, as the kubelet
/// writes for pods.
pub fn hosts(hostname: &str, ips: &[IpAddr]) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file (written by sluice).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        let _ = writeln!(s, "{ip}\t{hostname}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_has_search_servers_options() {
        let text = resolv_conf(&DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        });
        assert_eq!(
            text,
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn files_are_written_and_host_resolv_conf_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host-resolv.conf");
        std::fs::write(&host, "nameserver 127.0.0.53\n").unwrap();
        let pod = dir.path().join("pod");
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        write_pod_files(&pod, "web-0", None, &host, &[ip]).unwrap();
        assert_eq!(
            std::fs::read_to_string(pod.join("resolv.conf")).unwrap(),
            "nameserver 127.0.0.53\n"
        );
        assert_eq!(
            std::fs::read_to_string(pod.join("hostname")).unwrap(),
            "web-0\n"
        );
        assert!(
            std::fs::read_to_string(pod.join("hosts"))
                .unwrap()
                .contains("10.1.2.3\tweb-0\n")
        );
    }
}
