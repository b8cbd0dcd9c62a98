//! `sluice policy explain|list`: the operator's view of network policy.
//!
//! Pods come from the running daemon through its CRI socket (ListPodSandbox and
//! PodSandboxStatus: namespace, name, labels, IPs, host network), policies from the policy
//! directory; the decision is `netpolicy::explain` on `netpolicy::Compiled`, the same
//! evaluation the nftables compiler is built from.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use cri_api::runtime::v1 as cri;
use cri_api::runtime::v1::runtime_service_client::RuntimeServiceClient;
use netpolicy::{Compiled, Endpoint, Protocol, World};

/// `sluice policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Decide one flow and name the policy and rule that decide it.
    Explain {
        /// Source: `namespace/pod` or an IP address.
        #[arg(long)]
        from: String,
        /// Destination: `namespace/pod` or an IP address.
        #[arg(long)]
        to: String,
        /// Destination port and protocol: `80`, `80/TCP`, `53/UDP`, `9000/SCTP`.
        #[arg(long)]
        port: String,
    },
    /// Show which policies select which pods.
    List,
}

/// Where to look (flags override the config).
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// CRI socket of the daemon [default: server.listen].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Policy directory [default: policy.dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Parses `80`, `80/TCP`, `53/udp`.
pub fn parse_port(s: &str) -> Result<(u16, Protocol), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("--port {s:?}: the port must be 1-65535"))?;
    let proto = proto
        .to_ascii_uppercase()
        .parse::<Protocol>()
        .map_err(|e| format!("--port {s:?}: {e}"))?;
    Ok((port, proto))
}

async fn connect(socket: &Path) -> anyhow::Result<RuntimeServiceClient<tonic::transport::Channel>> {
    let path = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://sluice.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("connecting to the CRI socket {}", socket.display()))?;
    Ok(RuntimeServiceClient::new(channel))
}

/// The daemon's Ready pods as policy sees them.
async fn pods(socket: &Path) -> anyhow::Result<Vec<netpolicy::Pod>> {
    let mut c = connect(socket).await?;
    let items = c
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items;
    let mut out = Vec::with_capacity(items.len());
    for p in items {
        let status = c
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: false,
            })
            .await
            .with_context(|| format!("PodSandboxStatus {}", p.id))?
            .into_inner()
            .status
            .unwrap_or_default();
        let meta = p.metadata.unwrap_or_default();
        let net = status.network.unwrap_or_default();
        let ips: Vec<IpAddr> = std::iter::once(net.ip)
            .chain(net.additional_ips.into_iter().map(|a| a.ip))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let host_network = status
            .linux
            .and_then(|l| l.namespaces)
            .and_then(|n| n.options)
            .is_some_and(|o| o.network == cri::NamespaceMode::Node as i32);
        out.push(netpolicy::Pod {
            namespace: meta.namespace,
            name: meta.name,
            labels: p.labels.into_iter().collect(),
            ips,
            host_network,
        });
    }
    Ok(out)
}

fn world(dir: &Path, pods: Vec<netpolicy::Pod>) -> anyhow::Result<World> {
    let loaded = netpolicy::load_dir(dir)
        .with_context(|| format!("reading the policy directory {}", dir.display()))?;
    for p in &loaded.problems {
        eprintln_problem(p);
    }
    Ok(World::new(&loaded, pods, crate::policy::node_ips()))
}

#[allow(clippy::print_stderr)]
fn eprintln_problem(p: &netpolicy::Problem) {
    eprintln!("{p}");
}

/// Runs a `sluice policy` command; `socket` and `dir` are already resolved from flags and
/// config.
#[allow(clippy::print_stderr)]
pub fn run(cmd: PolicyCommand, socket: &Path, dir: &Path) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice policy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let pods = pods(socket).await?;
        let world = world(dir, pods)?;
        let mut out = std::io::stdout().lock();
        match cmd {
            PolicyCommand::Explain { from, to, port } => {
                let from: Endpoint = from.parse().map_err(|e| anyhow::anyhow!("--from: {e}"))?;
                let to: Endpoint = to.parse().map_err(|e| anyhow::anyhow!("--to: {e}"))?;
                let (port, proto) = parse_port(&port).map_err(anyhow::Error::msg)?;
                let verdict = netpolicy::explain(&world, &from, &to, port, proto)?;
                writeln!(out, "{from} -> {to} {port}/{}: {verdict}", proto.as_str())?;
            }
            PolicyCommand::List => {
                let compiled = Compiled::new(&world);
                writeln!(out, "POLICY\tTYPES\tSELECTS")?;
                for p in &compiled.policies {
                    let types = match (p.ingress.is_some(), p.egress.is_some()) {
                        (true, true) => "Ingress,Egress",
                        (true, false) => "Ingress",
                        (false, true) => "Egress",
                        (false, false) => "-",
                    };
                    let selects = if p.selected.is_empty() {
                        "(no pods on this node)".to_string()
                    } else {
                        p.selected.iter().cloned().collect::<Vec<_>>().join(",")
                    };
                    writeln!(out, "{}\t{types}\t{selects}", p.policy)?;
                }
            }
        }
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice policy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
