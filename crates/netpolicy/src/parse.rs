//! Reading manifests: a directory of YAML (multi-document) or JSON files holding
//! `networking.k8s.io/v1 NetworkPolicy` and `v1 Namespace` objects.
//!
//! Each document is validated on its own, like the API server would (required fields, the
//! `ipBlock.except` strict-subset rule, `endPort >= port`, selector operators, unknown fields
//! rejected as with kubectl's strict field validation); an invalid document becomes a
//! [`Problem`] naming the file, the document index and the field path, and is skipped while
//! the others apply.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::{
    Cidr, IpBlock, LabelSelector, Labels, Namespace, NetworkPolicy, Operator, Peer, PolicyPort,
    PortMatch, Protocol, Requirement, Rule, Source,
};

/// Failure to read the policy directory itself (individual files only produce problems).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("read policy directory {dir}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The document was skipped.
    Error,
    /// The document applies, but part of it cannot be enforced (named ports) or was ignored.
    Warning,
}

/// A manifest problem: file, zero-based document index, field path and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// Zero-based document index; `None` when the whole file failed (unreadable).
    pub document: Option<usize>,
    /// Dotted field path such as `spec.ingress[0].from[1].ipBlock.except[0]`; empty for
    /// problems about the whole document.
    pub field: String,
    pub message: String,
    pub severity: Severity,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.file.display())?;
        if let Some(doc) = self.document {
            write!(f, " document {doc}")?;
        }
        if !self.field.is_empty() {
            write!(f, " field {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Everything found in a policy directory.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub policies: Vec<NetworkPolicy>,
    pub namespaces: Vec<Namespace>,
    pub problems: Vec<Problem>,
}

impl Loaded {
    /// Whether any document was rejected.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

/// File formats we read, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// `.yaml`/`.yml` and `.json`; anything else (and hidden files, such as editor swap
    /// files or the `..data` links of a mounted ConfigMap) is not a manifest.
    pub fn of(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        if name.starts_with('.') {
            return None;
        }
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Loads every manifest file directly inside `dir` (not recursive), in file name order.
pub fn load_dir(dir: &Path) -> Result<Loaded, LoadError> {
    let read_err = |source| LoadError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if let Some(format) = Format::of(&path)
            && path.is_file()
        {
            files.push((path, format));
        }
    }
    files.sort();
    let mut loaded = Loaded::default();
    for (path, format) in files {
        match std::fs::read_to_string(&path) {
            Ok(text) => load_str(&mut loaded, &path, format, &text),
            Err(e) => loaded.problems.push(Problem {
                file: path,
                document: None,
                field: String::new(),
                message: format!("read file: {e}"),
                severity: Severity::Error,
            }),
        }
    }
    for problem in &loaded.problems {
        match problem.severity {
            Severity::Error => tracing::warn!(%problem, "network policy manifest rejected"),
            Severity::Warning => tracing::warn!(%problem, "network policy manifest"),
        }
    }
    Ok(loaded)
}

/// Parses one file's text into `loaded`; `file` is only used to name problems. Duplicate
/// objects (same kind, namespace and name as one already loaded) are rejected.
pub fn load_str(loaded: &mut Loaded, file: &Path, format: Format, text: &str) {
    let problem = |document: Option<usize>, field: String, message: String| Problem {
        file: file.to_path_buf(),
        document,
        field,
        message,
        severity: Severity::Error,
    };
    // Lazy: after a syntax error the streams may keep yielding errors, so we stop there.
    let documents: Box<dyn Iterator<Item = Result<Value, String>> + '_> = match format {
        Format::Json => Box::new(
            serde_json::Deserializer::from_str(text)
                .into_iter::<Value>()
                .map(|r| r.map_err(|e| format!("invalid JSON: {e}"))),
        ),
        Format::Yaml => Box::new(
            serde_yaml_ng::Deserializer::from_str(text)
                .map(|doc| Value::deserialize(doc).map_err(|e| format!("invalid YAML: {e}"))),
        ),
    };
    for (index, document) in documents.enumerate() {
        let value = match document {
            Ok(Value::Null) => continue, // an empty document (`---` at the end)
            Ok(value) => value,
            Err(message) => {
                loaded
                    .problems
                    .push(problem(Some(index), String::new(), message));
                // A syntax error leaves the rest of the stream unreadable.
                break;
            }
        };
        let source = Source {
            file: file.to_path_buf(),
            document: index,
        };
        match parse_object(&value, source) {
            Ok(Object::Policy(policy)) => {
                if loaded
                    .policies
                    .iter()
                    .any(|p| p.namespace == policy.namespace && p.name == policy.name)
                {
                    loaded.problems.push(problem(
                        Some(index),
                        "metadata.name".into(),
                        format!("duplicate NetworkPolicy {}", policy.reference()),
                    ));
                    continue;
                }
                for field in policy.named_ports() {
                    loaded.problems.push(Problem {
                        severity: Severity::Warning,
                        ..problem(
                            Some(index),
                            field,
                            format!(
                                "NetworkPolicy {}: named ports are not supported (CRI does not \
                                 report container port names); this ports entry matches nothing",
                                policy.reference()
                            ),
                        )
                    });
                }
                loaded.policies.push(policy);
            }
            Ok(Object::Namespace(ns)) => {
                if loaded.namespaces.iter().any(|n| n.name == ns.name) {
                    loaded.problems.push(problem(
                        Some(index),
                        "metadata.name".into(),
                        format!("duplicate Namespace {}", ns.name),
                    ));
                    continue;
                }
                loaded.namespaces.push(ns);
            }
            Err(e) => loaded
                .problems
                .push(problem(Some(index), e.field, e.message)),
        }
    }
}

enum Object {
    Policy(NetworkPolicy),
    Namespace(Namespace),
}

/// A validation failure at a field path.
#[derive(Debug)]
struct FieldError {
    field: String,
    message: String,
}

type Result<T, E = FieldError> = std::result::Result<T, E>;

fn err<T>(field: &str, message: impl Into<String>) -> Result<T> {
    Err(FieldError {
        field: field.to_string(),
        message: message.into(),
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn object<'a>(value: &'a Value, path: &str, allowed: &[&str]) -> Result<&'a Map<String, Value>> {
    let Value::Object(map) = value else {
        return err(path, "must be an object");
    };
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return err(&join(path, key), "unknown field");
        }
    }
    Ok(map)
}

/// A field that is absent or `null` is `None`.
fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn string(value: &Value, path: &str) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        _ => err(path, "must be a string"),
    }
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        _ => err(path, "must be a list"),
    }
}

fn labels(value: Option<&Value>, path: &str) -> Result<Labels> {
    let mut out = BTreeMap::new();
    let Some(value) = value else {
        return Ok(out);
    };
    let Value::Object(map) = value else {
        return err(path, "must be a map of strings");
    };
    for (k, v) in map {
        if k.is_empty() {
            return err(path, "label keys must not be empty");
        }
        out.insert(k.clone(), string(v, &join(path, k))?);
    }
    Ok(out)
}

fn parse_object(value: &Value, source: Source) -> Result<Object> {
    let map = object(
        value,
        "",
        &["apiVersion", "kind", "metadata", "spec", "status"],
    )?;
    let api_version = match field(map, "apiVersion") {
        Some(v) => string(v, "apiVersion")?,
        None => return err("apiVersion", "required"),
    };
    let kind = match field(map, "kind") {
        Some(v) => string(v, "kind")?,
        None => return err("kind", "required"),
    };
    let Some(meta) = field(map, "metadata") else {
        return err("metadata", "required");
    };
    let Value::Object(meta) = meta else {
        return err("metadata", "must be an object");
    };
    let name = match field(meta, "name") {
        Some(v) => string(v, "metadata.name")?,
        None => return err("metadata.name", "required"),
    };
    if name.is_empty() {
        return err("metadata.name", "must not be empty");
    }
    match (api_version.as_str(), kind.as_str()) {
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            // kubectl's default namespace when absent or empty.
            let namespace = match field(meta, "namespace") {
                Some(v) => string(v, "metadata.namespace")?,
                None => String::new(),
            };
            let namespace = if namespace.is_empty() {
                "default".to_string()
            } else {
                namespace
            };
            let spec = field(map, "spec").unwrap_or(&Value::Null);
            let spec = if spec.is_null() {
                &Map::new()
            } else {
                object(
                    spec,
                    "spec",
                    &["podSelector", "policyTypes", "ingress", "egress"],
                )?
            };
            parse_policy(spec, namespace, name, source).map(Object::Policy)
        }
        ("v1", "Namespace") => Ok(Object::Namespace(Namespace {
            name,
            labels: labels(field(meta, "labels"), "metadata.labels")?,
            source: Some(source),
        })),
        (_, "NetworkPolicy") => err(
            "apiVersion",
            format!("NetworkPolicy must be networking.k8s.io/v1, not {api_version:?}"),
        ),
        (_, "Namespace") => err(
            "apiVersion",
            format!("Namespace must be v1, not {api_version:?}"),
        ),
        _ => err(
            "kind",
            format!(
                "unsupported object {api_version} {kind}: only networking.k8s.io/v1 \
                 NetworkPolicy and v1 Namespace"
            ),
        ),
    }
}

fn parse_policy(
    spec: &Map<String, Value>,
    namespace: String,
    name: String,
    source: Source,
) -> Result<NetworkPolicy> {
    // podSelector: "If not specified, defaults to an empty selector" (all pods of the
    // policy's namespace).
    let pod_selector = match field(spec, "podSelector") {
        Some(v) => selector(v, "spec.podSelector")?,
        None => LabelSelector::everything(),
    };
    let ingress = rules(field(spec, "ingress"), "spec.ingress", "from")?;
    let egress = rules(field(spec, "egress"), "spec.egress", "to")?;
    // Defaulting applies when policyTypes is absent or empty (`len(PolicyTypes) == 0` in the
    // API's defaulting), so `policyTypes: []` behaves like no policyTypes.
    let types = match field(spec, "policyTypes") {
        Some(v) => Some(array(v, "spec.policyTypes")?).filter(|t| !t.is_empty()),
        None => None,
    };
    let (affects_ingress, affects_egress) = match types {
        Some(types) => {
            let (mut ingress, mut egress) = (false, false);
            for (i, t) in types.iter().enumerate() {
                let path = format!("spec.policyTypes[{i}]");
                match string(t, &path)?.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        return err(
                            &path,
                            format!("unsupported value {other:?}: must be Ingress or Egress"),
                        );
                    }
                }
            }
            (ingress, egress)
        }
        // The spec's defaulting: Ingress always, Egress when the policy has egress rules.
        None => (true, !egress.is_empty()),
    };
    Ok(NetworkPolicy {
        namespace,
        name,
        pod_selector,
        affects_ingress,
        affects_egress,
        ingress,
        egress,
        source: Some(source),
    })
}

fn rules(value: Option<&Value>, path: &str, peer_key: &str) -> Result<Vec<Rule>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, item) in array(value, path)?.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let map = if item.is_null() {
            &Map::new()
        } else {
            object(item, &path, &[peer_key, "ports"])?
        };
        let mut rule = Rule::default();
        if let Some(v) = field(map, peer_key) {
            let path = join(&path, peer_key);
            let peers = array(v, &path)?
                .iter()
                .enumerate()
                .map(|(j, p)| peer(p, &format!("{path}[{j}]")))
                .collect::<Result<Vec<_>>>()?;
            // "If this field is empty or missing, this rule matches all sources/destinations."
            if !peers.is_empty() {
                rule.peers = Some(peers);
            }
        }
        if let Some(v) = field(map, "ports") {
            let path = join(&path, "ports");
            let ports = array(v, &path)?
                .iter()
                .enumerate()
                .map(|(j, p)| port(p, &format!("{path}[{j}]")))
                .collect::<Result<Vec<_>>>()?;
            // "If this field is empty or missing, this rule matches all ports."
            if !ports.is_empty() {
                rule.ports = Some(ports);
            }
        }
        out.push(rule);
    }
    Ok(out)
}

fn peer(value: &Value, path: &str) -> Result<Peer> {
    let map = object(
        value,
        path,
        &["podSelector", "namespaceSelector", "ipBlock"],
    )?;
    let pods = field(map, "podSelector")
        .map(|v| selector(v, &join(path, "podSelector")))
        .transpose()?;
    let namespaces = field(map, "namespaceSelector")
        .map(|v| selector(v, &join(path, "namespaceSelector")))
        .transpose()?;
    match field(map, "ipBlock") {
        Some(block) => {
            if pods.is_some() || namespaces.is_some() {
                return err(
                    &join(path, "ipBlock"),
                    "may not be combined with podSelector or namespaceSelector",
                );
            }
            ip_block(block, &join(path, "ipBlock")).map(Peer::IpBlock)
        }
        None => match (pods, namespaces) {
            (None, None) => err(
                path,
                "must specify at least one of podSelector, namespaceSelector or ipBlock",
            ),
            (pods, namespaces) => Ok(Peer::Pods {
                namespaces,
                pods: pods.unwrap_or_default(),
            }),
        },
    }
}

fn ip_block(value: &Value, path: &str) -> Result<IpBlock> {
    let map = object(value, path, &["cidr", "except"])?;
    let cidr_path = join(path, "cidr");
    let cidr: Cidr = match field(map, "cidr") {
        Some(v) => string(v, &cidr_path)?
            .parse()
            .or_else(|e: String| err(&cidr_path, e))?,
        None => return err(&cidr_path, "required"),
    };
    let mut except = Vec::new();
    if let Some(v) = field(map, "except") {
        let except_path = join(path, "except");
        for (i, e) in array(v, &except_path)?.iter().enumerate() {
            let p = format!("{except_path}[{i}]");
            let block: Cidr = string(e, &p)?.parse().or_else(|m: String| err(&p, m))?;
            if !cidr.strictly_contains(&block) {
                return err(&p, format!("must be a strict subset of cidr {cidr}"));
            }
            except.push(block);
        }
    }
    Ok(IpBlock { cidr, except })
}

fn port(value: &Value, path: &str) -> Result<PolicyPort> {
    let map = object(value, path, &["protocol", "port", "endPort"])?;
    let protocol = match field(map, "protocol") {
        Some(v) => {
            let p = join(path, "protocol");
            string(v, &p)?.parse().or_else(|e: String| err(&p, e))?
        }
        None => Protocol::Tcp,
    };
    let port_path = join(path, "port");
    let end_path = join(path, "endPort");
    let number = |v: &Value, p: &str| -> Result<u16> {
        match v.as_u64() {
            Some(n @ 1..=65535) => Ok(u16::try_from(n).unwrap_or(u16::MAX)),
            _ => err(p, "must be a port number between 1 and 65535"),
        }
    };
    let end = field(map, "endPort")
        .map(|v| number(v, &end_path))
        .transpose()?;
    let port = match field(map, "port") {
        None if end.is_some() => return err(&end_path, "may not be specified without port"),
        None => PortMatch::Any,
        Some(Value::String(name)) => {
            if end.is_some() {
                return err(&end_path, "may not be specified when port is a named port");
            }
            if !is_port_name(name) {
                return err(
                    &port_path,
                    format!(
                        "{name:?} is neither a port number nor a valid port name (IANA_SVC_NAME)"
                    ),
                );
            }
            PortMatch::Named(name.clone())
        }
        Some(v) => {
            let start = number(v, &port_path)?;
            let end = end.unwrap_or(start);
            if end < start {
                return err(&end_path, "must be greater than or equal to port");
            }
            PortMatch::Range { start, end }
        }
    };
    Ok(PolicyPort { protocol, port })
}

/// IANA_SVC_NAME (RFC 6335): 1-15 characters, lowercase letters, digits and `-`, at least
/// one letter, no leading, trailing or doubled `-`.
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn selector(value: &Value, path: &str) -> Result<LabelSelector> {
    let map = object(value, path, &["matchLabels", "matchExpressions"])?;
    let match_labels = labels(field(map, "matchLabels"), &join(path, "matchLabels"))?;
    let mut match_expressions = Vec::new();
    if let Some(v) = field(map, "matchExpressions") {
        let exprs_path = join(path, "matchExpressions");
        for (i, e) in array(v, &exprs_path)?.iter().enumerate() {
            let p = format!("{exprs_path}[{i}]");
            let e = object(e, &p, &["key", "operator", "values"])?;
            let key = match field(e, "key") {
                Some(k) => string(k, &join(&p, "key"))?,
                None => return err(&join(&p, "key"), "required"),
            };
            if key.is_empty() {
                return err(&join(&p, "key"), "must not be empty");
            }
            let op_path = join(&p, "operator");
            let operator = match field(e, "operator") {
                Some(o) => match string(o, &op_path)?.as_str() {
                    "In" => Operator::In,
                    "NotIn" => Operator::NotIn,
                    "Exists" => Operator::Exists,
                    "DoesNotExist" => Operator::DoesNotExist,
                    other => {
                        return err(
                            &op_path,
                            format!(
                                "unsupported operator {other:?}: must be In, NotIn, Exists or \
                                 DoesNotExist"
                            ),
                        );
                    }
                },
                None => return err(&op_path, "required"),
            };
            let values_path = join(&p, "values");
            let mut values = BTreeSet::new();
            if let Some(vs) = field(e, "values") {
                for (j, v) in array(vs, &values_path)?.iter().enumerate() {
                    values.insert(string(v, &format!("{values_path}[{j}]"))?);
                }
            }
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return err(&values_path, "must be non-empty for In and NotIn");
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return err(&values_path, "must be empty for Exists and DoesNotExist");
                }
                _ => {}
            }
            match_expressions.push(Requirement {
                key,
                operator,
                values,
            });
        }
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}
