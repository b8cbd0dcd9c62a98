//! Network configuration files (CNI spec section 1, "Network configuration format").
//!
//! A `.conflist` holds `{cniVersion, name, plugins: [...]}`; a `.conf` / `.json` holds a single
//! plugin object with `name` and `cniVersion` at its top level and is turned into a one-plugin
//! list, as libcni's `ConfListFromConf` does. Files load in lexical order of their names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Spec versions whose configs and results we understand.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// File extensions that hold network configs.
pub const CONFIG_EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// One plugin of a network config list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// The plugin `type`: the binary name looked up in the plugin dirs.
    pub plugin_type: String,
    /// Capabilities the plugin declares; only these get `runtimeConfig` entries.
    pub capabilities: BTreeMap<String, bool>,
    /// The plugin object as written in the file (plugin-specific keys included).
    pub raw: Map<String, Value>,
}

/// A parsed network config list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// Network name (unique per node).
    pub name: String,
    /// The spec version plugins are invoked with.
    pub cni_version: String,
    /// `disableCheck`: CHECK is a no-op.
    pub disable_check: bool,
    /// `disableGC`: GC is not sent to the plugins.
    pub disable_gc: bool,
    /// The plugins, in ADD order.
    pub plugins: Vec<PluginConf>,
    /// Where it was loaded from (empty for configs restored from the result cache).
    pub source: PathBuf,
}

/// A file that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    /// The file.
    pub path: PathBuf,
    /// Why it was rejected.
    pub reason: String,
}

/// Everything found in a config directory.
#[derive(Debug, Clone, Default)]
pub struct LoadedConfigs {
    /// Valid networks, in lexical file order.
    pub networks: Vec<NetworkConfigList>,
    /// Files that were skipped, in lexical file order.
    pub invalid: Vec<InvalidConfig>,
}

/// Compare two dotted spec versions numerically.
pub(crate) fn version_at_least(version: &str, min: &str) -> bool {
    parse_version(version) >= parse_version(min)
}

fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Names the spec allows for networks and container ids: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub(crate) fn is_valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl NetworkConfigList {
    /// Parse a config. `as_list` says whether the bytes are a `.conflist` (else a single plugin
    /// config, unless it has a `plugins` array anyway).
    pub fn from_bytes(bytes: &[u8], as_list: bool, source: &Path) -> Result<Self, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid json: {e}"))?;
        let Value::Object(obj) = value else {
            return Err("not a json object".to_owned());
        };
        Self::from_object(obj, as_list, source)
    }

    /// Parse the JSON object form (also used to restore configs from the result cache).
    pub fn from_object(
        mut obj: Map<String, Value>,
        as_list: bool,
        source: &Path,
    ) -> Result<Self, String> {
        let name = match obj.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            Some(Value::String(_)) | None => return Err("missing network name".to_owned()),
            Some(_) => return Err("\"name\" is not a string".to_owned()),
        };
        if !is_valid_identifier(&name) {
            return Err(format!(
                "invalid network name {name:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
            ));
        }
        let cni_version = pick_version(&obj)?;
        let disable_check = bool_field(&obj, "disableCheck")?;
        let disable_gc = bool_field(&obj, "disableGC")?;

        let raw_plugins: Vec<Value> = if as_list || obj.contains_key("plugins") {
            match obj.remove("plugins") {
                Some(Value::Array(p)) => p,
                Some(_) => return Err("\"plugins\" is not an array".to_owned()),
                None => return Err("missing \"plugins\" list".to_owned()),
            }
        } else {
            // A single-plugin `.conf`: the whole object is the plugin.
            vec![Value::Object(obj)]
        };
        if raw_plugins.is_empty() {
            return Err("\"plugins\" list is empty".to_owned());
        }
        let plugins = raw_plugins
            .into_iter()
            .enumerate()
            .map(|(i, p)| PluginConf::from_value(p).map_err(|e| format!("plugin {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name,
            cni_version,
            disable_check,
            disable_gc,
            plugins,
            source: source.to_path_buf(),
        })
    }

    /// The list as a `.conflist` JSON object (what the result cache stores).
    #[must_use]
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        obj.insert("name".into(), Value::String(self.name.clone()));
        if self.disable_check {
            obj.insert("disableCheck".into(), Value::Bool(true));
        }
        if self.disable_gc {
            obj.insert("disableGC".into(), Value::Bool(true));
        }
        obj.insert(
            "plugins".into(),
            Value::Array(
                self.plugins
                    .iter()
                    .map(|p| Value::Object(p.raw.clone()))
                    .collect(),
            ),
        );
        Value::Object(obj)
    }
}

impl PluginConf {
    fn from_value(v: Value) -> Result<Self, String> {
        let Value::Object(raw) = v else {
            return Err("not a json object".to_owned());
        };
        let plugin_type = match raw.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => return Err("missing plugin \"type\"".to_owned()),
        };
        if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
            return Err(format!("invalid plugin type {plugin_type:?}"));
        }
        let capabilities = match raw.get("capabilities") {
            None => BTreeMap::new(),
            Some(c) => serde_json::from_value(c.clone())
                .map_err(|e| format!("invalid \"capabilities\": {e}"))?,
        };
        Ok(Self {
            plugin_type,
            capabilities,
            raw,
        })
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match obj.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        // libcni also accepts the strings "true"/"false" here.
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(format!("{key:?} is not a boolean: {other}")),
    }
}

/// `cniVersion`, or for 1.1.0 configs the highest supported entry of `cniVersions`.
fn pick_version(obj: &Map<String, Value>) -> Result<String, String> {
    if let Some(list) = obj.get("cniVersions") {
        let Value::Array(list) = list else {
            return Err("\"cniVersions\" is not an array".to_owned());
        };
        let best = list
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max_by_key(|v| parse_version(v));
        if let Some(v) = best {
            return Ok(v.to_owned());
        }
    }
    match obj.get("cniVersion") {
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => Ok(v.clone()),
        Some(Value::String(v)) => Err(format!(
            "unsupported cniVersion {v:?} (supported: {})",
            SUPPORTED_VERSIONS.join(", ")
        )),
        Some(_) => Err("\"cniVersion\" is not a string".to_owned()),
        None => Err("missing cniVersion".to_owned()),
    }
}

/// Parse one file, choosing list or single-plugin form by extension.
pub fn load_file(path: &Path) -> Result<NetworkConfigList, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read: {e}"))?;
    let as_list = path.extension().is_some_and(|e| e == "conflist");
    NetworkConfigList::from_bytes(&bytes, as_list, path)
}

/// Load every config file of `dir` in lexical order. A missing directory is empty, not an error.
pub fn load_dir(dir: &Path) -> std::io::Result<LoadedConfigs> {
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for entry in rd {
                let path = entry?.path();
                let ext_ok = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e));
                if ext_ok && path.is_file() {
                    files.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    files.sort();
    let mut loaded = LoadedConfigs::default();
    for path in files {
        match load_file(&path) {
            Ok(net) => {
                if let Some(prev) = loaded.networks.iter().find(|n| n.name == net.name) {
                    loaded.invalid.push(InvalidConfig {
                        reason: format!(
                            "network name {:?} already defined by {}",
                            net.name,
                            prev.source.display()
                        ),
                        path,
                    });
                } else {
                    loaded.networks.push(net);
                }
            }
            Err(reason) => loaded.invalid.push(InvalidConfig { path, reason }),
        }
    }
    Ok(loaded)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn conf_becomes_single_plugin_list() {
        let c = br#"{"cniVersion":"0.4.0","name":"n","type":"bridge","capabilities":{"bandwidth":true}}"#;
        let l = NetworkConfigList::from_bytes(c, false, Path::new("x.conf")).unwrap();
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].plugin_type, "bridge");
        assert_eq!(l.plugins[0].capabilities.get("bandwidth"), Some(&true));
        assert_eq!(l.cni_version, "0.4.0");
    }

    #[test]
    fn rejects_bad_configs() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "invalid json"),
            (
                br#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "missing network name",
            ),
            (
                br#"{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"x"}]}"#,
                "unsupported cniVersion",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "empty",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
                "missing plugin \"type\"",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"a/b","plugins":[{"type":"x"}]}"#,
                "invalid network name",
            ),
        ];
        for (bytes, want) in cases {
            let err = NetworkConfigList::from_bytes(bytes, true, Path::new("x")).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn cni_versions_picks_highest_supported() {
        let c = br#"{"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0","2.0.0"],"name":"n","plugins":[{"type":"x"}],"disableGC":true}"#;
        let l = NetworkConfigList::from_bytes(c, true, Path::new("x")).unwrap();
        assert_eq!(l.cni_version, "1.1.0");
        assert!(l.disable_gc);
        assert!(!l.disable_check);
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.1.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
    }
}
