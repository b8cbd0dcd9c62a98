//! The daemon as a process: identity, readiness, unimplemented RPCs, config errors, the
//! single-instance lock, socket handling and graceful shutdown. Runs the real binary (root).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use cri_api::runtime::v1::{
    CgroupDriver, CheckpointContainerRequest, ListMetricDescriptorsRequest, NetworkConfig,
    RuntimeConfig, RuntimeConfigRequest, StatusRequest, UpdateRuntimeConfigRequest, VersionRequest,
};
use nix::sys::signal::Signal;
use sluice_e2e::{Daemon, Layout, run_to_exit, sluice_bin, world_executable_copy};

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn version_reports_sluice_and_cri_v1() {
    let d = Daemon::start().await;
    let v = d
        .runtime()
        .await
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "sluice");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
}

#[tokio::test]
async fn status_reports_runtime_ready_and_network_not_ready_with_reason() {
    let d = Daemon::start().await;
    let s = d
        .runtime()
        .await
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conds = s.status.unwrap().conditions;
    let get = |t: &str| conds.iter().find(|c| c.r#type == t).cloned().unwrap();
    assert!(get("RuntimeReady").status);
    let net = get("NetworkReady");
    assert!(!net.status, "the CNI dir is empty: {net:?}");
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains(d.layout.cni_dir.to_str().unwrap()),
        "the message says where no config was found: {net:?}"
    );
    assert!(s.info.is_empty(), "info only when verbose");
}

#[tokio::test]
async fn verbose_status_returns_the_effective_config_as_json() {
    let d = Daemon::start().await;
    let s = d
        .runtime()
        .await
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let cfg: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(
        cfg["server"]["listen"].as_str(),
        Some(d.layout.socket.to_str().unwrap())
    );
    assert_eq!(
        cfg["storage"]["root"].as_str(),
        Some(d.layout.root.to_str().unwrap())
    );
    assert_eq!(cfg["log"]["level"].as_str(), Some("info"));
}

#[tokio::test]
async fn runtime_config_reports_cgroupfs_and_pod_cidr_is_validated() {
    let d = Daemon::start().await;
    let mut c = d.runtime().await;
    let rc = c
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );

    let set = |cidr: &str| UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    c.update_runtime_config(set("10.244.7.0/24,fd00:10:244:7::/64"))
        .await
        .unwrap();
    let err = c
        .update_runtime_config(set("10.244.7.0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"), "{}", err.message());

    let s = c
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.info["podCIDRs"], r#"["10.244.7.0/24","fd00:10:244:7::/64"]"#,
        "the bad update must not replace the recorded CIDRs"
    );
}

#[tokio::test]
async fn unimplemented_rpcs_say_unimplemented() {
    let d = Daemon::start().await;
    let mut c = d.runtime().await;
    let err = c
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    let err = c
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    // The daemon keeps serving after answering Unimplemented.
    c.version(VersionRequest::default()).await.unwrap();
}

#[test]
fn bad_config_exits_64_naming_file_and_key() {
    let layout = Layout::new("[log]\nlevel = \"loud\"\n");
    let (status, out) = run_to_exit(layout.command(&[]), EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(64), "{out}");
    assert!(out.contains("sluice.d/50-test.toml"), "{out}");
    assert!(out.contains("`log.level`"), "{out}");
    assert!(out.contains("trace, debug, info, warn, error"), "{out}");
    assert!(
        !layout.socket.exists(),
        "nothing may be created on a bad config"
    );

    let layout = Layout::new("[network]\nfoo = 1\n");
    let (status, out) = run_to_exit(layout.command(&[]), EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(64), "{out}");
    assert!(out.contains("50-test.toml"), "the drop-in is named: {out}");
    assert!(out.contains("unknown key `network.foo`"), "{out}");
    assert!(
        out.contains("network_dir") && out.contains("plugin_dirs"),
        "{out}"
    );
}

#[test]
fn bad_flag_value_exits_64() {
    let layout = Layout::new("");
    let (status, out) = run_to_exit(layout.command(&["--log-format", "xml"]), EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(64), "{out}");
    assert!(
        out.contains("log.format") && out.contains("text, json"),
        "{out}"
    );
}

#[test]
fn refuses_to_run_as_non_root() {
    let (_dir, bin) = world_executable_copy();
    let layout = Layout::new("");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--config")
        .arg(&layout.config)
        .uid(65534)
        .gid(65534);
    let (status, out) = run_to_exit(cmd, EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(77), "{out}");
    assert!(out.contains("must run as root"), "{out}");
    assert!(!layout.socket.exists());
}

#[tokio::test]
async fn socket_is_a_0660_socket() {
    let d = Daemon::start().await;
    let meta = std::fs::metadata(&d.layout.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
}

#[tokio::test]
async fn second_instance_is_refused_while_the_first_keeps_serving() {
    let first = Daemon::start().await;
    let (status, out) = run_to_exit(first.layout.command(&[]), EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("already serving"), "{out}");
    assert!(
        out.contains(&first.pid().to_string()),
        "the message names the holder's pid: {out}"
    );
    // The refused instance must not have removed the live socket.
    let v = first
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
    assert_eq!(v.into_inner().runtime_name, "sluice");
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_removes_socket_and_lock() {
    let mut d = Daemon::start().await;
    let lock = d.layout.socket.with_extension("sock.lock");
    assert!(lock.exists(), "lock file {} while serving", lock.display());
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(EXIT_TIMEOUT)
        .await
        .expect("daemon exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", d.layout.read_log());
    assert!(!d.layout.socket.exists(), "socket removed");
    assert!(!lock.exists(), "lock file removed");
    assert!(d.layout.read_log().contains("SIGTERM"));
}

#[tokio::test]
async fn sigint_also_stops_cleanly() {
    let mut d = Daemon::start().await;
    d.signal(Signal::SIGINT);
    let status = d
        .wait_exit(EXIT_TIMEOUT)
        .await
        .expect("daemon exits on SIGINT");
    assert_eq!(status.code(), Some(0));
    assert!(!d.layout.socket.exists());
}

#[tokio::test]
async fn stale_socket_from_a_crash_is_replaced() {
    // A killed daemon leaves its socket file behind; so does a dropped std listener.
    let mut first = Daemon::start().await;
    first.signal(Signal::SIGKILL);
    first.wait_exit(EXIT_TIMEOUT).await.expect("killed");
    assert!(
        first.layout.socket.exists(),
        "kill -9 leaves the socket file"
    );
    assert!(
        tokio::net::UnixStream::connect(&first.layout.socket)
            .await
            .is_err(),
        "nobody listens on the stale socket"
    );

    first.restart(&[]).await;
    first
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
    first.wait_for_log("replacing stale socket").await;
}

#[test]
fn refuses_to_replace_a_non_socket_file() {
    let layout = Layout::new("");
    std::fs::write(&layout.socket, "precious").unwrap();
    let (status, out) = run_to_exit(layout.command(&[]), EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("not a socket"), "{out}");
    assert_eq!(std::fs::read_to_string(&layout.socket).unwrap(), "precious");
}

#[tokio::test]
async fn json_log_format_writes_json_lines() {
    let d = Daemon::start_with(Layout::new(""), &["--log-format", "json"]).await;
    let line = d.wait_for_log("serving CRI v1").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "INFO");
}

#[test]
fn config_subcommand_prints_the_repository_default() {
    let out = std::process::Command::new(sluice_bin())
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let repo = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/sluice.toml"),
    )
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), repo);
}

/// NetworkReady as the kubelet polls it, for a given CNI dir content.
async fn network_ready(d: &Daemon) -> cri_api::runtime::v1::RuntimeCondition {
    let s = d
        .runtime()
        .await
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    s.status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap()
}

async fn wait_network_ready(d: &Daemon, want: bool) -> cri_api::runtime::v1::RuntimeCondition {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = network_ready(d).await;
        if c.status == want || std::time::Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const BRIDGE_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "e2e-net",
  "plugins": [
    {"type": "bridge", "bridge": "slce2e0", "isGateway": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.231.0.0/24"}]]}},
    {"type": "loopback"}
  ]
}"#;

#[tokio::test]
async fn network_ready_follows_the_watched_cni_directory() {
    let d = Daemon::start().await;
    assert!(!network_ready(&d).await.status);

    // Debian's reference plugins (containernetworking-plugins) provide bridge and loopback.
    let file = d.layout.cni_dir.join("10-e2e.conflist");
    std::fs::write(&file, BRIDGE_CONFLIST).unwrap();
    let c = wait_network_ready(&d, true).await;
    assert!(
        c.status,
        "a valid config with present plugins makes the network ready: {c:?}"
    );
    assert!(c.reason.is_empty());

    std::fs::remove_file(&file).unwrap();
    let c = wait_network_ready(&d, false).await;
    assert!(
        !c.status,
        "removing the config makes it not ready again: {c:?}"
    );
    assert_eq!(c.reason, "NetworkPluginNotReady");
}

#[tokio::test]
async fn network_not_ready_names_a_missing_plugin() {
    let layout = Layout::new("");
    std::fs::write(
        layout.cni_dir.join("10-e2e.conflist"),
        BRIDGE_CONFLIST.replace("\"loopback\"", "\"no-such-plugin\""),
    )
    .unwrap();
    let d = Daemon::start_with(layout, &[]).await;
    let c = network_ready(&d).await;
    assert!(!c.status);
    assert_eq!(c.reason, "NetworkPluginNotReady");
    assert!(c.message.contains("no-such-plugin"), "{c:?}");
}
