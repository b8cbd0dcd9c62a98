//! The on-disk result cache.
//!
//! One JSON file per attachment, keyed by network name + container id + interface name. It holds
//! the exact config list used for ADD, the capability arguments, `CNI_ARGS` and the result, so a
//! DEL after a daemon restart can replay the same config with the right `prevResult` even when
//! the config file has changed or is gone (libcni keeps `/var/lib/cni/results` for the same
//! reason). Files are written to a temp file, fsynced and renamed into place, so a crash leaves
//! either the old or the new entry, never a torn one.
//!
//! An entry is written *before* the plugins run (with no result) and rewritten with the result
//! after ADD succeeds: if the daemon dies mid-ADD, the entry still tells GC what to DEL.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, Result};

const KIND: &str = "sluice-cni-cache-v1";
const SUFFIX: &str = ".json";

/// One cached attachment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// Format marker.
    pub kind: String,
    /// Network name.
    pub network_name: String,
    /// `CNI_CONTAINERID` (pod sandbox id).
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Netns path used for ADD.
    #[serde(default)]
    pub netns: String,
    /// `CNI_ARGS` used for ADD.
    pub cni_args: String,
    /// Capability arguments (`runtimeConfig` source) used for ADD.
    #[serde(default)]
    pub capability_args: Map<String, Value>,
    /// The config list used for ADD, in `.conflist` form.
    pub config: Value,
    /// The final ADD result; `None` while ADD is in flight (or if it never finished).
    #[serde(default)]
    pub result: Option<Value>,
}

impl CacheEntry {
    pub(crate) fn new(
        network_name: &str,
        container_id: &str,
        ifname: &str,
        netns: &str,
        cni_args: String,
        capability_args: Map<String, Value>,
        config: Value,
    ) -> Self {
        Self {
            kind: KIND.to_owned(),
            network_name: network_name.to_owned(),
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            netns: netns.to_owned(),
            cni_args,
            capability_args,
            config,
            result: None,
        }
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CniError + '_ {
    move |source| CniError::Cache {
        path: path.to_path_buf(),
        source,
    }
}

impl ResultCache {
    /// A cache rooted at `dir` (created on first write).
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// File of one attachment. All three parts are validated identifiers (no `/`), so the name
    /// cannot escape the directory.
    #[must_use]
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir
            .join(format!("{network}-{container_id}-{ifname}{SUFFIX}"))
    }

    /// Write an entry atomically (temp file, fsync, rename, fsync dir).
    pub fn write(&self, entry: &CacheEntry) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.path(&entry.network_name, &entry.container_id, &entry.ifname);
        let bytes = serde_json::to_vec(entry).map_err(|e| CniError::Cache {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        tmp.write_all(&bytes).map_err(io_err(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err(&path))?;
        tmp.persist(&path).map_err(|e| CniError::Cache {
            path: path.clone(),
            source: e.error,
        })?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }

    /// Read one entry by its key.
    pub fn read(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>> {
        self.read_path(&self.path(network, container_id, ifname))
    }

    fn read_path(&self, path: &Path) -> Result<Option<CacheEntry>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| CniError::CacheDecode {
                        path: path.to_path_buf(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// Every entry for this container and interface, whatever network it was added to.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<CacheEntry>> {
        let tail = format!("-{container_id}-{ifname}{SUFFIX}");
        let mut out = Vec::new();
        for path in self.files()? {
            let matches = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&tail));
            if !matches {
                continue;
            }
            match self.read_path(&path) {
                Ok(Some(e)) if e.container_id == container_id && e.ifname == ifname => out.push(e),
                Ok(_) => {}
                // A corrupt entry must not block DEL forever: the caller falls back to the
                // current config; GC reports it.
                Err(e) => tracing::warn!(error = %e, "skipping unreadable cni cache entry"),
            }
        }
        Ok(out)
    }

    /// Every entry. Undecodable files are returned as errors next to the good entries.
    pub fn list(&self) -> Result<(Vec<CacheEntry>, Vec<CniError>)> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for path in self.files()? {
            match self.read_path(&path) {
                Ok(Some(e)) => good.push(e),
                Ok(None) => {}
                Err(e) => bad.push(e),
            }
        }
        Ok((good, bad))
    }

    /// Remove an entry; a missing entry is fine.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn files(&self) -> Result<Vec<PathBuf>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut files = Vec::new();
        for entry in rd {
            let path = entry.map_err(io_err(&self.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(SUFFIX) && !name.starts_with('.') {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_find_remove() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path().join("c"));
        let mut e = CacheEntry::new(
            "net-a",
            "pod1",
            "eth0",
            "/x",
            "A=1".into(),
            Map::new(),
            Value::Null,
        );
        cache.write(&e).unwrap();
        e.result = Some(serde_json::json!({"cniVersion": "1.0.0"}));
        cache.write(&e).unwrap();
        assert_eq!(cache.read("net-a", "pod1", "eth0").unwrap().unwrap(), e);
        assert_eq!(cache.find("pod1", "eth0").unwrap(), vec![e.clone()]);
        assert!(cache.find("pod", "eth0").unwrap().is_empty());
        assert!(cache.find("1", "eth0").unwrap().is_empty());
        cache.remove("net-a", "pod1", "eth0").unwrap();
        cache.remove("net-a", "pod1", "eth0").unwrap();
        assert!(cache.read("net-a", "pod1", "eth0").unwrap().is_none());
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 0);
    }
}
