//! Network policy end to end: the real daemon with `[policy] enable = true`, pods created
//! through the CRI client with namespaces and labels, NetworkPolicy manifests in the policy
//! directory, and real TCP/UDP traffic between the pods' network namespaces (servers and
//! probes are small python programs entered into the pod netns with nsenter). Denied traffic
//! is dropped, so a probe that gets no answer within its timeout counts as blocked. Root only;
//! each test has its own daemon, bridge, subnet, nftables table and policy directory.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cri_api::runtime::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RunPodSandboxRequest,
    StopPodSandboxRequest,
};
use sluice_e2e::net::{BridgeNet, NsServer, reach};
use sluice_e2e::{Daemon, Layout};

/// How long a probe waits for an answer before calling the flow blocked (denied packets are
/// dropped, so they never answer; a short wait keeps the tests quick).
const BLOCKED_MS: u64 = 400;
/// How long a probe that expects an answer waits: generous, so a loaded CI machine cannot
/// turn a slow answer into a false "blocked".
const ANSWER_MS: u64 = 5000;

struct Env {
    daemon: Daemon,
    _net: BridgeNet,
    metrics_port: u16,
}

#[derive(Debug, Clone)]
struct TPod {
    id: String,
    ns: String,
    name: String,
    netns: PathBuf,
    ip: String,
}

impl Env {
    async fn start() -> Self {
        let metrics_port = sluice_e2e::net::free_port();
        let layout = Layout::new(&format!(
            "[policy]\nenable = true\nlog_denied = true\n\n\
             [metrics]\nenable = true\naddress = \"127.0.0.1:{metrics_port}\"\n"
        ));
        let net = BridgeNet::install(&layout, &[]);
        let daemon = Daemon::start_with(layout, &[]).await;
        Self {
            daemon,
            _net: net,
            metrics_port,
        }
    }

    fn dir(&self) -> &Path {
        &self.daemon.layout.policy_dir
    }

    fn write(&self, file: &str, text: &str) {
        // Write then rename, as config management does: the watcher never sees half a file.
        let tmp = self.dir().join(format!(".{file}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.dir().join(file)).unwrap();
    }

    fn remove(&self, file: &str) {
        fs::remove_file(self.dir().join(file)).unwrap();
    }

    async fn pod(&self, ns: &str, name: &str, labels: &[(&str, &str)]) -> TPod {
        let mut c = self.daemon.runtime().await;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{ns}-{name}"),
                namespace: ns.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..NamespaceOption::default()
                    }),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..Default::default()
        };
        let id = c
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox {ns}/{name}: {e:?}"))
            .into_inner()
            .pod_sandbox_id;
        let ip = c
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
            .network
            .unwrap()
            .ip;
        TPod {
            netns: self.daemon.layout.netns_dir.join(format!("sluice-{id}")),
            id,
            ns: ns.into(),
            name: name.into(),
            ip,
        }
    }

    /// `sluice policy <args>` against this daemon; returns stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(sluice_e2e::sluice_bin())
            .arg("--config")
            .arg(&self.daemon.layout.config)
            .arg("policy")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sluice policy {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of `sluice_policy_packets_total` for a policy and verdict.
    fn packets(&self, ns: &str, policy: &str, verdict: &str) -> u64 {
        let out = Command::new("curl")
            .args([
                "-sf",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let want = format!(
            "sluice_policy_packets_total{{namespace=\"{ns}\",policy=\"{policy}\",verdict=\"{verdict}\"}}"
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&want))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }
}

/// Starts a TCP server answering `<name>-<port>` on each port inside the pod.
fn serve(p: &TPod, ports: &[u16]) -> Vec<NsServer> {
    ports
        .iter()
        .map(|port| NsServer::start(&p.netns, *port, &format!("{}-{port}", p.name)))
        .collect()
}

fn tcp(from: Option<&TPod>, to: &TPod, port: u16, timeout_ms: u64) -> bool {
    reach(
        from.map(|p| p.netns.as_path()),
        &to.ip,
        port,
        "tcp",
        timeout_ms,
    )
    .is_some()
}

/// The flow gets an answer (allowed).
fn can(from: Option<&TPod>, to: &TPod, port: u16) -> bool {
    tcp(from, to, port, ANSWER_MS)
}

/// For polling until a change lands: a quick probe (a slow answer only means one more round).
fn can_quick(from: Option<&TPod>, to: &TPod, port: u16) -> bool {
    tcp(from, to, port, 1000)
}

/// The flow gets no answer within [`BLOCKED_MS`] (denied: dropped).
fn blocked(from: Option<&TPod>, to: &TPod, port: u16) -> bool {
    !tcp(from, to, port, BLOCKED_MS)
}

/// For polling until a deny lands: two probes in a row without an answer, so one stall of a
/// loaded machine is not taken for the policy.
fn surely_blocked(from: Option<&TPod>, to: &TPod, port: u16) -> bool {
    blocked(from, to, port) && blocked(from, to, port)
}

fn can_udp(from: &TPod, to: &TPod, port: u16) -> bool {
    reach(Some(&from.netns), &to.ip, port, "udp", ANSWER_MS).is_some()
}

/// Waits (bounded) until `check` holds; returns how long it took.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !check() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{what}: still not true after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.elapsed()
}

const DENY_C_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-c, namespace: prod}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
"#;

#[tokio::test]
async fn default_deny_ingress_then_allow_frontend_on_port_80() {
    let env = Env::start().await;
    let a = env.pod("prod", "a", &[("app", "frontend")]).await;
    let b = env.pod("prod", "b", &[("app", "other")]).await;
    let c = env.pod("prod", "c", &[("app", "c")]).await;
    let _s = [serve(&a, &[80]), serve(&b, &[80]), serve(&c, &[80, 81])];

    // No policy: everyone talks.
    assert!(can(Some(&a), &c, 80));
    assert!(can(Some(&b), &c, 81));
    assert!(can(Some(&c), &a, 80));

    env.write("deny.yaml", DENY_C_INGRESS);
    eventually("deny-c in force", || surely_blocked(Some(&a), &c, 80)).await;
    assert!(blocked(Some(&b), &c, 80), "b reached isolated c");
    assert!(can(Some(&c), &a, 80), "c's egress is not isolated");
    assert!(can(None, &c, 80), "the node must always reach its pods");

    // Denied attempts count against the policy isolating c (the counters refresh every 2 s;
    // with several isolating policies the first by namespace/name is charged).
    let before = env.packets("prod", "deny-c", "deny");
    for _ in 0..3 {
        assert!(blocked(Some(&b), &c, 80));
    }
    eventually("deny counter of deny-c grows", || {
        env.packets("prod", "deny-c", "deny") > before
    })
    .await;
    // And the deny log names the pods.
    let line = env
        .daemon
        .wait_for_log("network policy denied a connection")
        .await;
    assert!(line.contains("prod/c"), "{line}");

    env.write(
        "allow.yaml",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend, namespace: prod}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 80, protocol: TCP}]
"#,
    );
    eventually("allow-frontend in force", || can_quick(Some(&a), &c, 80)).await;
    assert!(blocked(Some(&a), &c, 81), "only port 80 is allowed");
    assert!(blocked(Some(&b), &c, 80), "b has no frontend label");

    // A frontend pod of another namespace is not admitted by a bare podSelector...
    let d = env.pod("dev", "d", &[("app", "frontend")]).await;
    assert!(
        blocked(Some(&d), &c, 80),
        "dev/d reached c without a namespaceSelector"
    );
    // ...until a namespaceSelector admits its namespace by kubernetes.io/metadata.name...
    env.write(
        "allow-dev.yaml",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dev-frontend, namespace: prod}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}
      podSelector: {matchLabels: {app: frontend}}
    ports: [{port: 80}]
"#,
    );
    eventually("dev frontend admitted", || can_quick(Some(&d), &c, 80)).await;
    env.remove("allow-dev.yaml");
    eventually("dev frontend refused again", || {
        surely_blocked(Some(&d), &c, 80)
    })
    .await;
    // ...or by a label from a Namespace manifest.
    env.write(
        "ns.yaml",
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {team: web}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-team-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: web}}}]
    ports: [{port: 80}]
"#,
    );
    eventually("team=web namespace admitted", || {
        can_quick(Some(&d), &c, 80)
    })
    .await;
    assert!(blocked(Some(&d), &c, 81));

    // explain agrees and names the rule.
    let out = env.cli(&[
        "explain", "--from", "prod/a", "--to", "prod/c", "--port", "80/TCP",
    ]);
    assert!(
        out.contains("/TCP: allow") && out.contains("allow-frontend"),
        "{out}"
    );
    let out = env.cli(&[
        "explain", "--from", "prod/b", "--to", "prod/c", "--port", "80",
    ]);
    assert!(out.contains("/TCP: deny"), "{out}");
    let out = env.cli(&["list"]);
    assert!(
        out.lines()
            .any(|l| l.contains("deny-c") && l.contains("prod/c")),
        "{out}"
    );

    let _ = a.id;
}

#[tokio::test]
async fn egress_ipblock_except_endport_and_sctp() {
    let env = Env::start().await;
    let src = env.pod("prod", "src", &[("role", "client")]).await;
    let dns = env.pod("prod", "dns", &[("app", "dns")]).await;
    let web = env.pod("prod", "web", &[("app", "web")]).await;
    let other = env.pod("prod", "other", &[("app", "other")]).await;
    let _s = [
        serve(&dns, &[53]),
        serve(&web, &[443, 8080, 9000, 9001]),
        serve(&other, &[443]),
    ];
    let _udp = NsServer::start_proto(&dns.netns, 53, "dns-53", "udp");

    // Egress only UDP 53 to the dns pod and TCP 443 to web's address as a CIDR.
    env.write(
        "egress.yaml",
        &format!(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client-egress, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{role: client}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{podSelector: {{matchLabels: {{app: dns}}}}}}]
    ports: [{{port: 53, protocol: UDP}}]
  - to: [{{ipBlock: {{cidr: {}/32}}}}]
    ports: [{{port: 443, protocol: TCP}}]
  - ports: [{{port: 132, protocol: SCTP}}]
"#,
            web.ip
        ),
    );
    eventually("egress policy in force", || {
        surely_blocked(Some(&src), &other, 443)
    })
    .await;
    assert!(can_udp(&src, &dns, 53), "UDP 53 to dns is allowed");
    assert!(blocked(Some(&src), &dns, 53), "TCP 53 is not");
    assert!(can(Some(&src), &web, 443));
    assert!(blocked(Some(&src), &web, 8080));

    // ipBlock with except, and an endPort range, on ingress of web.
    let subnet = format!(
        "{}/24",
        web.ip.rsplit_once('.').unwrap().0.to_string() + ".0"
    );
    env.write(
        "ingress.yaml",
        &format!(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-ingress, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from: [{{ipBlock: {{cidr: {subnet}, except: [{}/32]}}}}]
    ports: [{{port: 9000, endPort: 9001, protocol: TCP}}]
"#,
            other.ip
        ),
    );
    eventually("web ingress in force", || {
        surely_blocked(Some(&dns), &web, 8080)
    })
    .await;
    assert!(can(Some(&dns), &web, 9000));
    assert!(can(Some(&dns), &web, 9001));
    assert!(blocked(Some(&other), &web, 9000), "other is in except");
    // src's egress still needs its own allowance: 9000 is not in client-egress.
    assert!(blocked(Some(&src), &web, 9000));
}

#[tokio::test]
async fn reload_invalid_manifest_netadmin_flush_and_restart() {
    let mut env = Env::start().await;
    let a = env.pod("prod", "a", &[("app", "a")]).await;
    let c = env.pod("prod", "c", &[("app", "c")]).await;
    let _s = [serve(&c, &[80])];
    assert!(can(Some(&a), &c, 80));

    env.write("deny.yaml", DENY_C_INGRESS);
    let took = eventually("deny applied", || surely_blocked(Some(&a), &c, 80)).await;
    eprintln!("hot reload: deny in force after {took:?}");

    // An invalid edit of the same file keeps its previous policy in force and is reported.
    env.write(
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-c, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: c}}\n  policyTypes: [Sideways]\n",
    );
    env.daemon.wait_for_log("rejected").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        blocked(Some(&a), &c, 80),
        "the invalid edit lifted the deny"
    );

    // A pod with CAP_NET_ADMIN in its own netns cannot lift it: the rules are outside.
    let st = Command::new("nsenter")
        .arg(format!("--net={}", c.netns.display()))
        .args(["nft", "flush", "ruleset"])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        blocked(Some(&a), &c, 80),
        "flushing inside the pod netns lifted the policy"
    );

    // kill -9, the table flushed away, start: enforcement is back before the socket serves.
    env.daemon.signal(nix::sys::signal::Signal::SIGKILL);
    let table = env.daemon.layout.policy_table.clone();
    let st = Command::new("nft")
        .args(["delete", "table", "inet", &table])
        .status()
        .unwrap();
    assert!(st.success(), "the policy table existed before the crash");
    assert!(can(Some(&a), &c, 80), "with the table gone, traffic flows");
    env.daemon.restart(&[]).await;
    // The daemon answered a CRI call: it must already enforce.
    assert!(
        blocked(Some(&a), &c, 80),
        "restart did not restore enforcement before serving"
    );

    // Deleting the manifest lifts the policy.
    env.remove("deny.yaml");
    eventually("deny lifted", || can_quick(Some(&a), &c, 80)).await;

    // A stopped pod's address leaves the sets.
    env.write("deny.yaml", DENY_C_INGRESS);
    eventually("deny again", || surely_blocked(Some(&a), &c, 80)).await;
    let mut rt = env.daemon.runtime().await;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: c.id.clone(),
    })
    .await
    .unwrap();
    let out = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains(&c.ip),
        "stopped pod {} still in the table:\n{text}",
        c.ip
    );
}

/// A tiny deterministic generator (xorshift), so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[tokio::test]
async fn explain_agrees_with_the_kernel_on_random_worlds() {
    let seed = std::env::var("SLUICE_POLICY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("SLUICE_POLICY_SEED={seed}");
    let mut rng = Rng(seed);
    let env = Env::start().await;
    let namespaces = ["alpha", "beta"];
    let apps = ["web", "db", "cache"];
    let tiers = ["front", "back"];
    let ports = [80u16, 81];
    let mut pods = Vec::new();
    for i in 0..5 {
        let ns = *rng.pick(&namespaces);
        let app = *rng.pick(&apps);
        let tier = *rng.pick(&tiers);
        pods.push(
            env.pod(ns, &format!("p{i}"), &[("app", app), ("tier", tier)])
                .await,
        );
    }
    let _servers: Vec<_> = pods.iter().map(|p| serve(p, &ports)).collect();
    // Random policies: selectors, peers of every kind, ports or none, both directions.
    let mut docs = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: beta, labels: {env: test}}\n"
            .to_string(),
    ];
    for i in 0..4 {
        let ns = *rng.pick(&namespaces);
        let sel = if rng.chance(25) {
            "{}".to_string()
        } else {
            format!("{{matchLabels: {{app: {}}}}}", rng.pick(&apps))
        };
        let peer = match rng.next() % 5 {
            0 => format!(
                "[{{podSelector: {{matchLabels: {{tier: {}}}}}}}]",
                rng.pick(&tiers)
            ),
            1 => "[{namespaceSelector: {matchLabels: {env: test}}}]".to_string(),
            2 => format!(
                "[{{namespaceSelector: {{}}, podSelector: {{matchExpressions: [{{key: app, operator: NotIn, values: [{}]}}]}}}}]",
                rng.pick(&apps)
            ),
            3 => format!("[{{ipBlock: {{cidr: {}/32}}}}]", rng.pick(&pods).ip),
            _ => "[]".to_string(),
        };
        let ports_yaml = if rng.chance(50) {
            format!("\n    ports: [{{port: {}}}]", rng.pick(&ports))
        } else {
            String::new()
        };
        let (types, rules) = if rng.chance(60) {
            (
                "[Ingress]",
                format!("ingress:\n  - from: {peer}{ports_yaml}"),
            )
        } else {
            ("[Egress]", format!("egress:\n  - to: {peer}{ports_yaml}"))
        };
        let rules = if peer == "[]" && rng.chance(50) {
            String::new() // no rules: default deny for that direction
        } else {
            rules
        };
        docs.push(format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: r{i}, namespace: {ns}}}\nspec:\n  podSelector: {sel}\n  policyTypes: {types}\n  {rules}\n"
        ));
    }
    let text = docs.join("---\n");
    eprintln!("policies:\n{text}");
    env.write("random.yaml", &text);
    // Wait for the reload: `list` shows r0 once the daemon's directory has it, and the table
    // is replaced before the reload is logged.
    env.daemon.wait_for_log("network policies reloaded").await;

    let mut checked = 0;
    let mut mismatches = Vec::new();
    for from in &pods {
        for to in &pods {
            if from.id == to.id {
                continue;
            }
            let port = *rng.pick(&ports);
            let out = env.cli(&[
                "explain",
                "--from",
                &format!("{}/{}", from.ns, from.name),
                "--to",
                &format!("{}/{}", to.ns, to.name),
                "--port",
                &format!("{port}/TCP"),
            ]);
            // "<from> -> <to> <port>/TCP: allow: ..." or "...: deny: ...".
            let explained = out
                .split_once("/TCP: ")
                .is_some_and(|(_, verdict)| verdict.starts_with("allow"));
            // A denied flow never answers; an allowed one may be slow under load.
            let kernel = if explained {
                can(Some(from), to, port)
            } else {
                !blocked(Some(from), to, port)
            };
            checked += 1;
            if explained != kernel {
                mismatches.push(format!("kernel {kernel} but explain said: {out}"));
            }
        }
    }
    assert!(checked >= 20);
    assert!(
        mismatches.is_empty(),
        "seed {seed}: {} of {checked} flows disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
