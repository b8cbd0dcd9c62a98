//! sluice's configuration: `/etc/sluice/sluice.toml`, then the drop-ins of
//! `/etc/sluice/sluice.d/*.toml` in lexical order, then command-line flags.
//!
//! Every file is checked on its own before merging, so an error names the file that is wrong,
//! the full key (`server.listen`) and what is allowed. Section and key names are a contract
//! with operators (see DESIGN.md "Config file sections"); [`render_default`] prints every key
//! with a comment, and `config/sluice.toml` in the repository is exactly that text.
//!
//! The configuration is read once at start-up and never from the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use telemetry::{LogFormat, LogLevel};

/// Default location of the main config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sluice/sluice.toml";

/// The whole configuration. Every key has a default, so any file may set any subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub network: NetworkConfig,
    pub images: ImagesConfig,
    pub runtime: RuntimeConfig,
    pub metrics: MetricsConfig,
    pub tracing: TracingConfig,
    pub policy: PolicyConfig,
}

/// `[server]`: the CRI endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: PathBuf,
    pub shutdown_timeout: Dur,
    /// Streaming server (Exec, Attach, PortForward URLs).
    pub stream_address: String,
    pub stream_port: u16,
    pub stream_idle_timeout: Dur,
    pub stream_tls_cert: String,
    pub stream_tls_key: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: PathBuf::from("/run/sluice/sluice.sock"),
            shutdown_timeout: Dur(Duration::from_secs(10)),
            stream_address: "127.0.0.1".to_string(),
            stream_port: 0,
            stream_idle_timeout: Dur(Duration::from_secs(4 * 3600)),
            stream_tls_cert: String::new(),
            stream_tls_key: String::new(),
        }
    }
}

/// `[storage]`: where state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub root: PathBuf,
    pub runroot: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/sluice"),
            runroot: PathBuf::from("/run/sluice"),
        }
    }
}

/// `[network]`: pod networking through CNI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub network_dir: PathBuf,
    pub plugin_dirs: Vec<PathBuf>,
    /// Empty: the first valid config file in lexical order.
    pub default_network: String,
    pub cni_add_timeout: Dur,
    pub cni_del_timeout: Dur,
    pub network_ready_timeout: Dur,
    pub netns_dir: PathBuf,
    pub hostport_mapping: bool,
    pub hostport_table: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            network_dir: PathBuf::from("/etc/cni/net.d"),
            plugin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            default_network: String::new(),
            cni_add_timeout: Dur(Duration::from_secs(120)),
            cni_del_timeout: Dur(Duration::from_secs(60)),
            network_ready_timeout: Dur(Duration::from_secs(10)),
            netns_dir: PathBuf::from("/run/netns"),
            hostport_mapping: true,
            hostport_table: "sluice-hostports".to_string(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enable: bool,
    /// TCP address of `/metrics`; loopback by default so nothing is exposed unasked.
    pub address: String,
    /// Unix socket for `/metrics` instead of TCP when non-empty.
    pub socket: String,
    /// PEM certificate chain and private key: serve HTTPS when both are set.
    pub tls_cert: String,
    pub tls_key: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enable: false,
            address: "127.0.0.1:9537".to_string(),
            socket: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

/// `[tracing]`: OpenTelemetry trace export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    pub enable: bool,
    pub endpoint: String,
    pub sampling_rate_per_million: u32,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            enable: false,
            endpoint: "http://127.0.0.1:4317".to_string(),
            sampling_rate_per_million: 1_000_000,
        }
    }
}

/// `[policy]`: Kubernetes NetworkPolicy enforced by sluice in nftables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub enable: bool,
    pub dir: PathBuf,
    pub table: String,
    pub log_denied: bool,
    pub log_rate_per_sec: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            enable: false,
            dir: PathBuf::from("/etc/sluice/policies"),
            table: "sluice-policy".to_string(),
            log_denied: false,
            log_rate_per_sec: 10,
        }
    }
}

/// `[runtime]`: how pods and containers are run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The OCI runtime: a name looked up in PATH or an absolute path.
    pub runtime_path: String,
    /// The container monitor (conmon): a name looked up in PATH or an absolute path.
    pub monitor_path: String,
    /// cgroupfs parent for pods whose config names none (crictl); kubelet pods bring theirs.
    pub cgroup_parent: String,
    /// Capabilities of containers that ask for no change (CRI-O's default set).
    pub default_capabilities: Vec<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            runtime_path: "runc".to_string(),
            monitor_path: "conmon".to_string(),
            cgroup_parent: "/sluice".to_string(),
            default_capabilities: oci::spec::Host::default_capability_names(),
        }
    }
}

/// `[images]`: registry access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Registry hosts (`host` or `host:port`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Mirrors tried in order before the registry itself.
    pub mirrors: Vec<MirrorConfig>,
}

/// One `[[images.mirrors]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The registry host images are named by, e.g. `registry.k8s.io` or `docker.io`.
    pub registry: String,
    /// Mirror endpoints as URLs (`https://mirror.example:5000`, `http://127.0.0.1:5000`).
    pub endpoints: Vec<String>,
}

/// `[log]`: daemon log verbosity and format (stderr).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    #[serde(with = "via_str")]
    pub level: LogLevel,
    #[serde(with = "via_str")]
    pub format: LogFormat,
}

/// Serde through `FromStr`/`Display`, so enums keep their one spelling and error text.
mod via_str {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err = String>,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A duration written the way operators write them: `500ms`, `30s`, `2m`, `4h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid duration {s:?}, expected a number with a unit: ms, s, m or h (e.g. \"30s\")"
            )
        };
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            let s = self.0.as_secs();
            if s != 0 && s.is_multiple_of(3600) {
                write!(f, "{}h", s / 3600)
            } else if s != 0 && s.is_multiple_of(60) {
                write!(f, "{}m", s / 60)
            } else {
                write!(f, "{s}s")
            }
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A configuration problem; the daemon exits with status 64 (EX_USAGE) on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot list drop-in directory: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: unknown key `{key}`; allowed keys {allowed}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        allowed: String,
    },
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// Values given on the command line; they win over every file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub runroot: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

/// Where to read configuration from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The main file.
    pub file: PathBuf,
    /// Whether a missing main file is an error (it is when the operator named it).
    pub file_required: bool,
    /// The drop-in directory (`*.toml`, lexical order); missing is fine.
    pub dropin_dir: PathBuf,
}

impl Sources {
    /// The main file given (or the default), with drop-ins in `<dir of file>/sluice.d`
    /// unless `dropin_dir` is given.
    pub fn new(file: Option<PathBuf>, dropin_dir: Option<PathBuf>) -> Self {
        let file_required = file.is_some();
        let file = file.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let dropin_dir = dropin_dir.unwrap_or_else(|| {
            file.parent()
                .unwrap_or_else(|| Path::new("/"))
                .join("sluice.d")
        });
        Self {
            file,
            file_required,
            dropin_dir,
        }
    }
}

/// The loaded configuration and the files it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
}

/// Reads, checks and merges every source, applies `overrides`, and validates the result.
pub fn load(sources: &Sources, overrides: &Overrides) -> Result<Loaded, ConfigError> {
    let mut files = Vec::new();
    match std::fs::metadata(&sources.file) {
        Ok(_) => files.push(sources.file.clone()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !sources.file_required => {}
        Err(source) => {
            return Err(ConfigError::Read {
                path: sources.file.clone(),
                source,
            });
        }
    }
    match std::fs::read_dir(&sources.dropin_dir) {
        Ok(entries) => {
            let mut dropins: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            dropins.sort();
            files.extend(dropins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ConfigError::ReadDir {
                path: sources.dropin_dir.clone(),
                source,
            });
        }
    }

    let schema = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
        path: PathBuf::from("<built-in defaults>"),
        message: e.to_string(),
    })?;
    let mut merged = schema.clone();
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: one_line(&e.to_string()),
        })?;
        check_keys(path, &table, &schema, "")?;
        // Type and value errors, with the line and column of the offending value.
        toml::from_str::<Config>(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: one_line(&e.to_string()),
        })?;
        merge(&mut merged, table, "", path, &mut origin);
    }
    let mut config: Config =
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: PathBuf::from("<merged config>"),
                message: one_line(&e.to_string()),
            })?;

    let flag = |key: &str, origin: &mut BTreeMap<String, PathBuf>| {
        origin.insert(
            key.to_string(),
            PathBuf::from(format!("command-line flag for {key}")),
        );
    };
    if let Some(v) = &overrides.listen {
        config.server.listen = v.clone();
        flag("server.listen", &mut origin);
    }
    if let Some(v) = &overrides.root {
        config.storage.root = v.clone();
        flag("storage.root", &mut origin);
    }
    if let Some(v) = &overrides.runroot {
        config.storage.runroot = v.clone();
        flag("storage.runroot", &mut origin);
    }
    if let Some(v) = &overrides.log_level {
        config.log.level = v.parse().map_err(|message| ConfigError::Invalid {
            origin: "--log-level".into(),
            key: "log.level".into(),
            message,
        })?;
    }
    if let Some(v) = &overrides.log_format {
        config.log.format = v.parse().map_err(|message| ConfigError::Invalid {
            origin: "--log-format".into(),
            key: "log.format".into(),
            message,
        })?;
    }
    validate(&config, &origin)?;
    Ok(Loaded { config, files })
}

/// TOML errors span several lines (a snippet with a caret); keep them readable in one log line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect::<Vec<_>>()
        .join("; ")
}

/// Rejects keys that the built-in schema does not have, naming the full dotted key and the keys
/// allowed at that level.
fn check_keys(
    path: &Path,
    table: &toml::Table,
    schema: &toml::Table,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(s) = schema.get(k) else {
            let allowed = schema
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let place = if prefix.is_empty() {
                "(sections)".to_string()
            } else {
                format!("in [{prefix}]")
            };
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key,
                allowed: format!("{place}: {allowed}"),
            });
        };
        match (v, s) {
            (toml::Value::Table(t), toml::Value::Table(st)) => check_keys(path, t, st, &key)?,
            (value, _) => check_value(path, &key, value)?,
        }
    }
    Ok(())
}

/// Checks one leaf value by deserializing a config that holds only it, so the error names the
/// exact dotted key (`log.level`) along with what the type allows.
fn check_value(path: &Path, key: &str, value: &toml::Value) -> Result<(), ConfigError> {
    let mut node = value.clone();
    for part in key.rsplit('.') {
        let mut t = toml::Table::new();
        t.insert(part.to_string(), node);
        node = toml::Value::Table(t);
    }
    match node.try_into::<Config>() {
        Ok(_) => Ok(()),
        Err(e) => Err(ConfigError::Invalid {
            origin: path.display().to_string(),
            key: key.to_string(),
            message: one_line(e.message()),
        }),
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, everything else (arrays included)
/// is replaced. Records which file set each leaf key.
fn merge(
    base: &mut toml::Table,
    over: toml::Table,
    prefix: &str,
    path: &Path,
    origin: &mut BTreeMap<String, PathBuf>,
) {
    for (k, v) in over {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o, &key, path, origin),
            (_, v) => {
                origin.insert(key, path.to_path_buf());
                base.insert(k, v);
            }
        }
    }
}

/// Semantic checks that the types alone cannot express.
fn validate(config: &Config, origin: &BTreeMap<String, PathBuf>) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        origin: origin
            .get(key)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in default".to_string()),
        key: key.to_string(),
        message,
    };
    let absolute = |key: &str, p: &Path| {
        if p.is_absolute() && p.file_name().is_some() {
            Ok(())
        } else {
            Err(invalid(
                key,
                format!(
                    "must be an absolute path, got {:?}",
                    p.display().to_string()
                ),
            ))
        }
    };
    absolute("server.listen", &config.server.listen)?;
    absolute("storage.root", &config.storage.root)?;
    absolute("storage.runroot", &config.storage.runroot)?;
    absolute("network.network_dir", &config.network.network_dir)?;
    absolute("network.netns_dir", &config.network.netns_dir)?;
    absolute("policy.dir", &config.policy.dir)?;
    for (key, table) in [
        ("network.hostport_table", &config.network.hostport_table),
        ("policy.table", &config.policy.table),
    ] {
        if table.is_empty()
            || table.len() > 64
            || !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                key,
                format!("{table:?} must be 1-64 characters of a-z, A-Z, 0-9, '-' and '_'"),
            ));
        }
    }
    if config.policy.table == config.network.hostport_table {
        return Err(invalid(
            "policy.table",
            "must differ from network.hostport_table".to_string(),
        ));
    }
    if config.policy.log_rate_per_sec == 0 || config.policy.log_rate_per_sec > 10_000 {
        return Err(invalid(
            "policy.log_rate_per_sec",
            format!("must be 1-10000, got {}", config.policy.log_rate_per_sec),
        ));
    }
    for cap in &config.runtime.default_capabilities {
        let name = cap.trim_start_matches("CAP_");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(invalid(
                "runtime.default_capabilities",
                format!("{cap:?} is not a capability name (like \"CHOWN\" or \"CAP_CHOWN\")"),
            ));
        }
    }
    for (key, v) in [
        ("runtime.runtime_path", &config.runtime.runtime_path),
        ("runtime.monitor_path", &config.runtime.monitor_path),
    ] {
        if v.is_empty() || (v.contains('/') && !v.starts_with('/')) {
            return Err(invalid(
                key,
                format!("{v:?} must be a program name found in PATH or an absolute path"),
            ));
        }
    }
    if let Err(message) =
        pods::cgroup::validate_parent(&config.runtime.cgroup_parent).and_then(|()| {
            if config.runtime.cgroup_parent.is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(())
            }
        })
    {
        return Err(invalid("runtime.cgroup_parent", message));
    }
    if config.network.plugin_dirs.is_empty() {
        return Err(invalid(
            "network.plugin_dirs",
            "must list at least one directory".to_string(),
        ));
    }
    for dir in &config.network.plugin_dirs {
        absolute("network.plugin_dirs", dir)?;
    }
    if config
        .metrics
        .address
        .parse::<std::net::SocketAddr>()
        .is_err()
    {
        return Err(invalid(
            "metrics.address",
            format!("{:?} is not an IP:port address", config.metrics.address),
        ));
    }
    if !config.metrics.socket.is_empty() && !Path::new(&config.metrics.socket).is_absolute() {
        return Err(invalid(
            "metrics.socket",
            format!(
                "{:?} must be an absolute path (or empty for TCP)",
                config.metrics.socket
            ),
        ));
    }
    let sv = &config.server;
    if sv.stream_address.parse::<std::net::IpAddr>().is_err() {
        return Err(invalid(
            "server.stream_address",
            format!("{:?} is not an IP address", sv.stream_address),
        ));
    }
    if sv.stream_idle_timeout.0.is_zero() {
        return Err(invalid(
            "server.stream_idle_timeout",
            "must be longer than 0s".to_string(),
        ));
    }
    match (sv.stream_tls_cert.is_empty(), sv.stream_tls_key.is_empty()) {
        (true, true) => {}
        (false, false) => {
            for (key, path) in [
                ("server.stream_tls_cert", &sv.stream_tls_cert),
                ("server.stream_tls_key", &sv.stream_tls_key),
            ] {
                absolute(key, Path::new(path))?;
            }
        }
        _ => {
            return Err(invalid(
                "server.stream_tls_cert",
                "set both server.stream_tls_cert and server.stream_tls_key, or neither".to_string(),
            ));
        }
    }
    let m = &config.metrics;
    match (m.tls_cert.is_empty(), m.tls_key.is_empty()) {
        (true, true) => {}
        (false, false) => {
            for (key, path) in [
                ("metrics.tls_cert", &m.tls_cert),
                ("metrics.tls_key", &m.tls_key),
            ] {
                absolute(key, Path::new(path))?;
            }
            if !m.socket.is_empty() {
                return Err(invalid(
                    "metrics.tls_cert",
                    "TLS applies to the TCP address; unset metrics.socket to use it".to_string(),
                ));
            }
        }
        _ => {
            return Err(invalid(
                "metrics.tls_cert",
                "set both metrics.tls_cert and metrics.tls_key, or neither".to_string(),
            ));
        }
    }
    let ep = &config.tracing.endpoint;
    if !(ep.starts_with("http://") || ep.starts_with("https://")) || ep.len() < 9 {
        return Err(invalid(
            "tracing.endpoint",
            format!("{ep:?} must be an http:// or https:// URL of an OTLP gRPC receiver"),
        ));
    }
    if config.tracing.sampling_rate_per_million > 1_000_000 {
        return Err(invalid(
            "tracing.sampling_rate_per_million",
            format!(
                "{} is above 1000000 (100%)",
                config.tracing.sampling_rate_per_million
            ),
        ));
    }
    for (i, m) in config.images.mirrors.iter().enumerate() {
        let key = format!("images.mirrors[{i}]");
        if !valid_registry_host(&m.registry) {
            return Err(invalid(
                "images.mirrors",
                format!(
                    "{key}.registry: {:?} is not a registry host (host or host:port)",
                    m.registry
                ),
            ));
        }
        if m.endpoints.is_empty() {
            return Err(invalid(
                "images.mirrors",
                format!("{key}.endpoints: list at least one mirror URL"),
            ));
        }
        for e in &m.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or_default();
            if !valid_registry_host(rest.trim_end_matches('/')) {
                return Err(invalid(
                    "images.mirrors",
                    format!(
                        "{key}.endpoints: {e:?} must be http://host[:port] or https://host[:port]"
                    ),
                ));
            }
        }
    }
    for r in &config.images.insecure_registries {
        if !valid_registry_host(r) {
            return Err(invalid(
                "images.insecure_registries",
                format!("{r:?} is not a registry host (host or host:port, no scheme)"),
            ));
        }
    }
    for (key, t) in [
        ("network.cni_add_timeout", config.network.cni_add_timeout),
        ("network.cni_del_timeout", config.network.cni_del_timeout),
        (
            "network.network_ready_timeout",
            config.network.network_ready_timeout,
        ),
    ] {
        if t.0.is_zero() {
            return Err(invalid(key, "must be longer than 0s".to_string()));
        }
    }
    // sockaddr_un.sun_path is 108 bytes including the terminating NUL (unix(7)).
    let len = config.server.listen.as_os_str().len();
    if len > 107 {
        return Err(invalid(
            "server.listen",
            format!("unix socket paths are limited to 107 bytes, this one has {len}"),
        ));
    }
    let t = config.server.shutdown_timeout.0;
    if t.is_zero() || t > Duration::from_secs(600) {
        return Err(invalid(
            "server.shutdown_timeout",
            format!(
                "must be between 1ms and 10m, got {}",
                config.server.shutdown_timeout
            ),
        ));
    }
    Ok(())
}

/// `host` or `host:port` with a DNS name or IP (IPv6 in brackets) and no path or scheme.
fn valid_registry_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !s.starts_with('[') || s.contains("]:") => {
            (h, Some(p))
        }
        _ => (s, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    let host_ok = if let Some(ip6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        ip6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    port_ok && host_ok
}

/// The complete default configuration as commented TOML: what `sluice config` prints and what
/// `config/sluice.toml` holds.
pub fn render_default() -> String {
    let d = Config::default();
    let q = |p: &Path| toml_str(&p.display().to_string());
    format!(
        r#"# sluice configuration: the complete default, printed by `sluice config`.
#
# The daemon reads /etc/sluice/sluice.toml, then every *.toml in /etc/sluice/sluice.d/ in
# lexical order (later files override earlier ones key by key), then command-line flags.
# Unknown keys and bad values stop the daemon with exit status 64 and a message naming the
# file and the key. Durations are written with a unit: "500ms", "30s", "2m", "4h".

[server]
# Unix socket serving the CRI v1 API (RuntimeService and ImageService), created with mode
# 0660 owned by root. Point the kubelet's --container-runtime-endpoint and crictl's
# runtime-endpoint at unix://<this path>. Flag: --listen.
listen = {listen}
# How long a SIGTERM/SIGINT shutdown waits for in-flight CRI calls before exiting anyway.
shutdown_timeout = "{shutdown}"
# Streaming server for Exec, Attach and PortForward: the CRI calls return one-time URLs
# (valid 30 s, single use) on this address, which clients (kubelet, crictl exec/attach/
# port-forward) upgrade to SPDY/3.1 or WebSocket. Keep it on loopback unless something off
# the node must connect; "0.0.0.0" listens everywhere but URLs then name 127.0.0.1.
stream_address = "{stream_address}"
# TCP port; 0 picks a free port at every start.
stream_port = {stream_port}
# A session with no new stream and no data either way for this long is closed (its exec'd
# process is killed; an attached container keeps running).
stream_idle_timeout = "{stream_idle}"
# PEM certificate chain: serve the streaming URLs over HTTPS. Needs stream_tls_key too.
stream_tls_cert = "{stream_tls_cert}"
# PEM private key matching stream_tls_cert.
stream_tls_key = "{stream_tls_key}"

[storage]
# Persistent state: image store and pod/container metadata. Flag: --root.
root = {root}
# Volatile state that must not survive a reboot: runtime state, exit files, attach sockets.
# Flag: --runroot.
runroot = {runroot}

[log]
# Daemon log verbosity for sluice's own crates: trace, debug, info, warn or error.
# Libraries stay at warn unless the level is trace. Flag: --log-level.
level = "{level}"
# Log line format on stderr: "text" for people, "json" for log shippers. Flag: --log-format.
format = "{format}"

[network]
# Directory of CNI network configs (*.conflist, *.conf, *.json), read in lexical order and
# watched: adding, changing or removing a file takes effect without a restart.
network_dir = {network_dir}
# Directories searched for CNI plugin binaries, in order (also passed as CNI_PATH).
plugin_dirs = [{plugin_dirs}]
# Name of the network pods join; empty means the first valid file in network_dir. NetworkReady
# in CRI Status stays false until this network is loaded and all its plugins exist.
default_network = "{default_network}"
# Time limit for each plugin's ADD (and CHECK) call; an overrunning plugin is killed.
cni_add_timeout = "{add_timeout}"
# Time limit for each plugin's DEL (and GC) call.
cni_del_timeout = "{del_timeout}"
# How long RunPodSandbox waits for NetworkReady before failing with FailedPrecondition.
network_ready_timeout = "{ready_timeout}"
# Where pod network namespaces are pinned, as sluice-<pod id>; /run/netns makes them visible
# to `ip netns list` and `ip netns exec`.
netns_dir = {netns_dir}
# Publish pods' host ports (CRI port_mappings) through sluice's own nftables tables. When
# false, host ports are ignored (for a CNI chain that handles them itself).
hostport_mapping = {hostport_mapping}
# Name of the `ip` and `ip6` nftables tables sluice owns for host ports. Change it only to
# run several sluice instances on one host.
hostport_table = "{hostport_table}"

[images]
# Registry hosts ("host" or "host:port") that are reached over plain HTTP instead of HTTPS.
insecure_registries = []
# Registry mirrors, tried in order before the registry itself; images keep the name the client
# asked for. One [[images.mirrors]] table per registry, for example:
#   [[images.mirrors]]
#   registry = "registry.k8s.io"
#   endpoints = ["http://127.0.0.1:5000", "https://mirror.example.net"]
mirrors = []

[runtime]
# The OCI runtime binary: a name looked up in PATH, or an absolute path. runc 1.1+ (crun 1.8
# refuses cgroup v1 hybrid hosts).
runtime_path = "{runtime_path}"
# The container monitor (conmon) that owns each container's stdio, log and exit status and
# keeps containers running across sluice restarts: a name in PATH or an absolute path.
monitor_path = "{monitor_path}"
# cgroupfs parent of pods whose config names none (pods from crictl); the kubelet gives each
# pod its own parent (/kubepods/...). sluice manages cgroups through cgroupfs directly, so the
# kubelet must run with cgroupDriver: cgroupfs.
cgroup_parent = "{cgroup_parent}"
# Capabilities a container gets when it asks for no change. "ALL" in a container's add list
# means every capability in sluice's own bounding set, never more.
default_capabilities = [{default_caps}]

[metrics]
# Serve Prometheus metrics (OpenMetrics text) at /metrics.
enable = {metrics_enable}
# TCP address of the metrics endpoint. The default is loopback only; to let Prometheus scrape
# from another host bind the node IP (see contrib/metrics-exporter).
address = "{metrics_address}"
# Serve /metrics on this unix socket instead of TCP (empty: use address).
socket = "{metrics_socket}"
# PEM certificate chain for HTTPS on address (empty: plain HTTP). Needs tls_key too.
tls_cert = "{metrics_tls_cert}"
# PEM private key (PKCS#8, PKCS#1 or SEC1) matching tls_cert.
tls_key = "{metrics_tls_key}"

[tracing]
# Export OpenTelemetry traces (one span per CRI call, children per step) over OTLP/gRPC.
enable = {tracing_enable}
# OTLP gRPC receiver, e.g. Jaeger all-in-one or an OpenTelemetry Collector.
endpoint = "{tracing_endpoint}"
# Share of calls without a sampled parent that are traced, per million (1000000 = all). A
# sampled W3C traceparent from the kubelet is always honoured. Lower it on busy nodes.
sampling_rate_per_million = {sampling}

[policy]
# Enforce Kubernetes NetworkPolicy (networking.k8s.io/v1) for this node's pods in sluice's own
# nftables table, outside the pods' network namespaces. Pods selected by no policy keep all
# traffic (the Kubernetes default); traffic from the node to its pods is always allowed.
enable = {policy_enable}
# NetworkPolicy and Namespace manifests (YAML, multi-document, or JSON), watched: changes apply
# within a second. An invalid document is reported (file, document, field) and skipped; while
# a file is invalid, its previous policies stay in force.
dir = {policy_dir}
# Name of the `inet` nftables table sluice owns for policy (distinct per sluice instance).
table = "{policy_table}"
# Log denied new connections (source and destination pods) at warn level.
log_denied = {policy_log}
# Most denied connections logged per second (the kernel drops the rest of the log lines).
log_rate_per_sec = {policy_rate}
"#,
        listen = q(&d.server.listen),
        shutdown = d.server.shutdown_timeout,
        stream_address = d.server.stream_address,
        stream_port = d.server.stream_port,
        stream_idle = d.server.stream_idle_timeout,
        stream_tls_cert = d.server.stream_tls_cert,
        stream_tls_key = d.server.stream_tls_key,
        root = q(&d.storage.root),
        runroot = q(&d.storage.runroot),
        level = d.log.level,
        format = d.log.format,
        network_dir = q(&d.network.network_dir),
        plugin_dirs = d
            .network
            .plugin_dirs
            .iter()
            .map(|p| q(p))
            .collect::<Vec<_>>()
            .join(", "),
        default_network = d.network.default_network,
        add_timeout = d.network.cni_add_timeout,
        del_timeout = d.network.cni_del_timeout,
        ready_timeout = d.network.network_ready_timeout,
        netns_dir = q(&d.network.netns_dir),
        hostport_mapping = d.network.hostport_mapping,
        hostport_table = d.network.hostport_table,
        cgroup_parent = d.runtime.cgroup_parent,
        runtime_path = d.runtime.runtime_path,
        monitor_path = d.runtime.monitor_path,
        default_caps = d
            .runtime
            .default_capabilities
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        metrics_enable = d.metrics.enable,
        metrics_address = d.metrics.address,
        metrics_socket = d.metrics.socket,
        metrics_tls_cert = d.metrics.tls_cert,
        metrics_tls_key = d.metrics.tls_key,
        tracing_enable = d.tracing.enable,
        tracing_endpoint = d.tracing.endpoint,
        sampling = d.tracing.sampling_rate_per_million,
        policy_enable = d.policy.enable,
        policy_dir = q(&d.policy.dir),
        policy_table = d.policy.table,
        policy_log = d.policy.log_denied,
        policy_rate = d.policy.log_rate_per_sec,
    )
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn sources(dir: &Path) -> Sources {
        Sources::new(Some(dir.join("sluice.toml")), None)
    }

    #[test]
    fn default_text_parses_to_the_default_config_with_every_key() {
        let text = render_default();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let expected = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(
            parsed, expected,
            "every key of Config must be in the default text"
        );
        let cfg: Config = toml::from_str(&text).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn every_key_in_the_default_text_has_a_comment_above_it() {
        let text = render_default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains(" = ") && !l.starts_with('#') {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "key line {l:?} has no comment above it"
                );
            }
        }
    }

    #[test]
    fn repository_copy_matches_sluice_config_output() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/sluice.toml");
        let text = std::fs::read_to_string(&repo).unwrap();
        assert_eq!(
            text,
            render_default(),
            "config/sluice.toml is stale: regenerate it with `cargo run -p sluice -- config > config/sluice.toml`"
        );
    }

    #[test]
    fn missing_default_file_means_defaults_but_a_named_one_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sources {
            file: dir.path().join("absent.toml"),
            file_required: false,
            dropin_dir: dir.path().join("none.d"),
        };
        let loaded = load(&s, &Overrides::default()).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert!(loaded.files.is_empty());

        let err = load(&sources(dir.path()), &Overrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn dropins_override_in_lexical_order_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "sluice.toml",
            "[log]\nlevel = \"debug\"\nformat = \"json\"\n",
        );
        std::fs::create_dir(dir.path().join("sluice.d")).unwrap();
        write(
            &dir.path().join("sluice.d"),
            "20-b.toml",
            "[log]\nlevel = \"error\"\n",
        );
        write(
            &dir.path().join("sluice.d"),
            "10-a.toml",
            "[log]\nlevel = \"warn\"\n",
        );
        write(&dir.path().join("sluice.d"), "ignored.conf", "garbage");
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        assert_eq!(loaded.config.log.level, LogLevel::Error);
        assert_eq!(
            loaded.config.log.format,
            LogFormat::Json,
            "untouched keys survive a drop-in"
        );
        assert_eq!(loaded.files.len(), 3);

        let o = Overrides {
            log_level: Some("trace".into()),
            listen: Some("/tmp/x.sock".into()),
            ..Default::default()
        };
        let loaded = load(&sources(dir.path()), &o).unwrap();
        assert_eq!(loaded.config.log.level, LogLevel::Trace);
        assert_eq!(loaded.config.server.listen, PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn unknown_key_names_file_full_key_and_allowed_keys() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "sluice.toml",
            "[server]\nlisten = \"/run/x.sock\"\nlisen = 1\n",
        );
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("sluice.toml"), "{err}");
        assert!(err.contains("`server.lisen`"), "{err}");
        assert!(err.contains("listen, shutdown_timeout"), "{err}");

        write(dir.path(), "sluice.toml", "[serverr]\n");
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`serverr`")
                && err.contains(
                    "images, log, metrics, network, policy, runtime, server, storage, tracing"
                ),
            "{err}"
        );
    }

    #[test]
    fn streaming_and_policy_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        for (text, key) in [
            (
                "[server]\nstream_address = \"localhost\"\n",
                "`server.stream_address`",
            ),
            (
                "[server]\nstream_idle_timeout = \"0s\"\n",
                "`server.stream_idle_timeout`",
            ),
            (
                "[server]\nstream_tls_cert = \"/c.pem\"\n",
                "`server.stream_tls_cert`",
            ),
            ("[policy]\ndir = \"policies\"\n", "`policy.dir`"),
            ("[policy]\ntable = \"a b\"\n", "`policy.table`"),
            (
                "[policy]\ntable = \"same\"\n[network]\nhostport_table = \"same\"\n",
                "`policy.table`",
            ),
            (
                "[policy]\nlog_rate_per_sec = 0\n",
                "`policy.log_rate_per_sec`",
            ),
        ] {
            write(dir.path(), "sluice.toml", text);
            let err = load(&sources(dir.path()), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        write(
            dir.path(),
            "sluice.toml",
            "[server]\nstream_address = \"::1\"\nstream_port = 10350\n[policy]\nenable = true\n",
        );
        let cfg = load(&sources(dir.path()), &Overrides::default())
            .unwrap()
            .config;
        assert_eq!(cfg.server.stream_port, 10350);
        assert!(cfg.policy.enable);
    }

    #[test]
    fn bad_values_name_file_key_and_what_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sluice.toml", "[log]\nlevel = \"loud\"\n");
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sluice.toml") && err.contains("`log.level`"),
            "{err}"
        );
        assert!(err.contains("trace, debug, info, warn, error"), "{err}");

        write(
            dir.path(),
            "sluice.toml",
            "[server]\nshutdown_timeout = \"ten\"\n",
        );
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`server.shutdown_timeout`") && err.contains("ms, s, m or h"),
            "{err}"
        );

        write(dir.path(), "sluice.toml", "[server]\nlisten = 5\n");
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`server.listen`") && err.contains("integer"),
            "{err}"
        );

        std::fs::create_dir(dir.path().join("sluice.d")).unwrap();
        write(dir.path(), "sluice.toml", "");
        write(
            &dir.path().join("sluice.d"),
            "50-x.toml",
            "[storage]\nroot = \"relative/dir\"\n",
        );
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("50-x.toml") && err.contains("`storage.root`"),
            "{err}"
        );
        assert!(err.contains("absolute path"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sluice.toml", "[server\n");
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sluice.toml") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn mirrors_and_insecure_registries_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "sluice.toml",
            "[images]\ninsecure_registries = [\"127.0.0.1:5000\", \"[::1]:5000\"]\n\
             [[images.mirrors]]\nregistry = \"registry.k8s.io\"\nendpoints = [\"http://127.0.0.1:5000\"]\n",
        );
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        assert_eq!(loaded.config.images.mirrors[0].registry, "registry.k8s.io");
        assert_eq!(loaded.config.images.insecure_registries.len(), 2);

        for (text, needle) in [
            (
                "[[images.mirrors]]\nregistry = \"docker.io\"\nendpoints = [\"ftp://x\"]\n",
                "ftp://x",
            ),
            (
                "[[images.mirrors]]\nregistry = \"docker.io\"\nendpoints = []\n",
                "at least one",
            ),
            (
                "[[images.mirrors]]\nregistry = \"https://docker.io\"\nendpoints = [\"http://a\"]\n",
                "not a registry host",
            ),
            (
                "[[images.mirrors]]\nregistry = \"docker.io\"\nendpoint = [\"http://a\"]\n",
                "unknown field `endpoint`",
            ),
            (
                "[images]\ninsecure_registries = [\"http://a:5000\"]\n",
                "insecure_registries",
            ),
        ] {
            write(dir.path(), "sluice.toml", text);
            let err = load(&sources(dir.path()), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle) && err.contains("images."),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn durations_round_trip() {
        for s in ["500ms", "30s", "2m", "4h", "90s", "0s"] {
            assert_eq!(s.parse::<Dur>().unwrap().to_string(), s);
        }
        assert_eq!("120s".parse::<Dur>().unwrap().to_string(), "2m");
        for bad in ["", "5", "s", "1d", "-1s", "1.5s"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad}");
        }
    }
}
