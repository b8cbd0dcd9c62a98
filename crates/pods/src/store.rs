//! The state store: one JSON file per object (pods under `<root>/pods/`, containers under
//! `<root>/containers/`), replaced atomically.
//!
//! Why files and not an embedded database: a pod record is small and written whole, records
//! never need cross-object transactions (each RPC changes one pod), and operators can read them
//! with `cat` and `jq`. Atomicity comes from the classic sequence write temp file → `fsync` →
//! `rename` over the old file → `fsync` the directory: `rename(2)` replaces the name atomically,
//! so after `kill -9` or power loss at any point a reader sees either the old record or the new
//! one, never a mix. Leftover temp files are ignored and removed when the store opens.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::PodRecord;

/// An object the store keeps: serializable, with an id that names its file.
pub trait Record: Serialize + DeserializeOwned {
    fn id(&self) -> &str;
    /// Load order (creation time).
    fn created_at(&self) -> i64;
}

impl Record for PodRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> i64 {
        self.created_at
    }
}

const SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".json.tmp";

/// A store failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("pod state store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod state store {path}: cannot encode record: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A record file that could not be read back; reported, kept on disk for inspection, skipped.
#[derive(Debug, Clone)]
pub struct CorruptRecord {
    pub path: PathBuf,
    pub reason: String,
}

/// The directory of records of one kind.
#[derive(Debug)]
pub struct Store<T> {
    dir: PathBuf,
    _kind: std::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Self {
            dir: self.dir.clone(),
            _kind: std::marker::PhantomData,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl<T: Record> Store<T> {
    /// Opens (creating, mode 0700) the store directory and removes temp files a crash left.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.to_string_lossy().ends_with(TMP_SUFFIX) {
                tracing::info!(path = %path.display(), "removing interrupted pod record write");
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(Self {
            dir,
            _kind: std::marker::PhantomData,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }

    /// Every readable record, plus the files that could not be read.
    pub fn load_all(&self) -> Result<(Vec<T>, Vec<CorruptRecord>), StoreError> {
        let mut records = Vec::new();
        let mut corrupt = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let name = path.to_string_lossy();
            if !name.ends_with(SUFFIX) || name.ends_with(TMP_SUFFIX) {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(r) if self.path(r.id()) == path => records.push(r),
                Ok(r) => corrupt.push(CorruptRecord {
                    path: path.clone(),
                    reason: format!("record id {} does not match the file name", r.id()),
                }),
                Err(reason) => corrupt.push(CorruptRecord { path, reason }),
            }
        }
        records.sort_by_key(|r| r.created_at());
        Ok((records, corrupt))
    }

    /// Writes `record` durably and atomically (see the module docs).
    pub fn save(&self, record: &T) -> Result<(), StoreError> {
        let path = self.path(record.id());
        let tmp = self.dir.join(format!("{}{TMP_SUFFIX}", record.id()));
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Encode {
            path: path.clone(),
            source,
        })?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        self.sync_dir()
    }

    /// Removes the record of `id`; absent is fine.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PodState, SandboxConfig};

    fn record(id: &str, created_at: i64) -> PodRecord {
        PodRecord {
            id: id.to_string(),
            config: SandboxConfig::default(),
            state: PodState::Ready,
            reason: String::new(),
            created_at,
            boot_id: "b".into(),
            netns: Some("/run/netns/x".into()),
            ipc_ns: None,
            uts_ns: None,
            network: None,
            hostports: false,
            policy: false,
            cgroup: None,
            files_dir: None,
            pause_pid_ns: None,
            pause_pid: None,
        }
    }

    #[test]
    fn save_load_replace_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("pods")).unwrap();
        store.save(&record("bbb", 2)).unwrap();
        store.save(&record("aaa", 1)).unwrap();
        let mut r = record("bbb", 2);
        r.state = PodState::NotReady;
        store.save(&r).unwrap();
        let (all, corrupt) = store.load_all().unwrap();
        assert!(corrupt.is_empty());
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["aaa", "bbb"]
        );
        assert_eq!(all[1].state, PodState::NotReady);
        store.delete("aaa").unwrap();
        store.delete("aaa").unwrap();
        assert_eq!(store.load_all().unwrap().0.len(), 1);
    }

    #[test]
    fn interrupted_writes_and_corrupt_files_do_not_break_loading() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        let store = Store::open(&pods).unwrap();
        store.save(&record("good", 1)).unwrap();
        // A crash between creating the temp file and the rename leaves a temp file...
        fs::write(pods.join("half.json.tmp"), b"{\"id\": \"ha").unwrap();
        // ...and a disk problem could leave garbage under a real name.
        fs::write(pods.join("bad.json"), b"not json").unwrap();
        let store: Store<PodRecord> = Store::open(&pods).unwrap();
        assert!(
            !pods.join("half.json.tmp").exists(),
            "temp files are cleaned at open"
        );
        let (all, corrupt) = store.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(corrupt.len(), 1);
        assert!(corrupt[0].path.ends_with("bad.json"));
    }
}
