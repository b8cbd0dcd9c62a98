//! The on-disk content store and image metadata.
//!
//! ```text
//! <root>/                       storage.root/images
//!   tmp/                        scratch; everything here is garbage at start-up
//!   blobs/sha256/<hex>          manifests, indexes and configs, verified, by digest
//!   layers/<chain-hex>/diff/    one unpacked layer (an overlay lower dir), by chain id
//!   layers/<chain-hex>/layer.json
//!   images/<id-hex>.json        one image record per image id (config digest)
//! ```
//!
//! Every write goes to `tmp/` first and is renamed into place, so after a `kill -9` a layer
//! directory or record either exists whole or not at all; `Store::open` wipes `tmp/` and
//! removes layers and blobs no image references (a pull killed after some layers landed).
//! Records are one JSON file per object, atomically replaced, like the pod state store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, is_hex64};
use crate::error::{Error, Result};
use crate::manifest::ImageConfig;
use crate::reference::Reference;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the (compressed) blob in the registry.
    pub digest: Digest,
    pub media_type: String,
    /// Size of the blob in the registry.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Identity of this layer stacked on its parents; names its directory.
    pub chain_id: Digest,
}

/// What the store knows about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest, `sha256:<hex>`.
    pub id: Digest,
    /// `registry/repo:tag` names pointing at this image, as the client asked for them.
    pub repo_tags: Vec<String>,
    /// `registry/repo@sha256:...` of the manifest (or index) the image was pulled by.
    pub repo_digests: Vec<String>,
    /// The platform manifest.
    pub manifest_digest: Digest,
    /// The index the manifest was selected from, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    /// Bytes of the image in the registry: config plus compressed layers.
    pub size: u64,
    /// `os/arch[/variant]` of the config.
    pub platform: String,
    /// Seconds since the epoch of the first pull.
    pub pulled_at: u64,
    pub config: ImageConfig,
}

/// Bytes and inodes the store uses, and the mount point it lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// Layer metadata kept next to its directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerMeta {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub digest: Digest,
    pub content_size: u64,
}

/// How a lookup string matched an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Id,
    Tag(String),
    Digest(String),
    Prefix,
}

/// Answers whether containers use an image; the containers layer implements it so that
/// removing an image they run from is refused.
pub trait ImageUsage: Send + Sync + std::fmt::Debug {
    /// Ids of containers created from `image_id`.
    fn containers_using(&self, image_id: &Digest) -> Vec<String>;
}

/// No containers exist yet: nothing is in use.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoContainers;

impl ImageUsage for NoContainers {
    fn containers_using(&self, _image_id: &Digest) -> Vec<String> {
        Vec::new()
    }
}

/// The outcome of a remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// Nothing matched; removal is idempotent.
    NotPresent,
    /// One name was removed; the image stays under its other names.
    Untagged(String),
    /// The image and every layer and blob only it used are gone.
    Deleted(Digest),
}

#[derive(Debug, Default)]
struct State {
    images: BTreeMap<Digest, ImageRecord>,
    /// Layers that pulls in flight may be using, by chain id (count of pins).
    pinned: HashMap<Digest, usize>,
    /// Bumped on every change, to know when the cached usage is stale.
    generation: u64,
    usage: Option<(u64, FsUsage)>,
}

/// The content store and image metadata. All methods are blocking (file system work);
/// async callers use `spawn_blocking`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    state: Mutex<State>,
    counter: AtomicU64,
}

impl Store {
    /// Opens (creating) the store at `root`, discarding scratch data and unreferenced
    /// layers and blobs left by an interrupted run.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "images"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(Error::io("create", &p))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(Error::io("remove scratch", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(Error::io("create", &tmp))?;
        let mut images = BTreeMap::new();
        let dir = root.join("images");
        for entry in fs::read_dir(&dir).map_err(Error::io("read", &dir))? {
            let entry = entry.map_err(Error::io("read", &dir))?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let rec: Option<ImageRecord> = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match rec {
                Some(rec) => {
                    images.insert(rec.id.clone(), rec);
                }
                None => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable image record");
                }
            }
        }
        let store = Self {
            root,
            state: Mutex::new(State {
                images,
                ..State::default()
            }),
            counter: AtomicU64::new(0),
        };
        // Records whose layers are missing (disk tampering) cannot be used; drop them.
        {
            let mut st = store.lock();
            let broken: Vec<Digest> = st
                .images
                .values()
                .filter(|r| {
                    r.layers
                        .iter()
                        .any(|l| !store.layer_path(&l.chain_id).exists())
                })
                .map(|r| r.id.clone())
                .collect();
            for id in broken {
                tracing::warn!(image = %id, "dropping image record whose layers are missing");
                st.images.remove(&id);
                let p = store.record_path(&id);
                fs::remove_file(&p).map_err(Error::io("remove", &p))?;
            }
            let trash = store.collect_garbage(&st)?;
            drop(st);
            store.empty_trash(trash);
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn layer_path(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    /// The directory holding the unpacked files of a layer (an overlay lower dir).
    pub fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.layer_path(chain).join("diff")
    }

    pub fn has_layer(&self, chain: &Digest) -> bool {
        self.layer_path(chain).exists()
    }

    /// A fresh scratch directory under `tmp/`, removed on drop unless committed.
    pub(crate) fn scratch(&self, what: &str) -> Result<Scratch> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let p = self
            .root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()));
        fs::create_dir(&p).map_err(Error::io("create", &p))?;
        Ok(Scratch { path: Some(p) })
    }

    /// Moves an unpacked layer (scratch containing `diff/`) into place.
    pub(crate) fn commit_layer(&self, mut scratch: Scratch, meta: &LayerMeta) -> Result<()> {
        let dir = scratch.path().to_path_buf();
        write_file(&dir.join("layer.json"), &to_json(meta)?)?;
        let dest = self.layer_path(&meta.chain_id);
        match fs::rename(&dir, &dest) {
            Ok(()) => {
                scratch.path = None;
                self.lock().generation += 1;
                Ok(())
            }
            // Someone else committed the same layer first: theirs is as good as ours.
            Err(e) if dest.exists() => {
                tracing::debug!(error = %e, layer = %meta.chain_id, "layer already present");
                Ok(())
            }
            Err(e) => Err(Error::io("rename", &dest)(e)),
        }
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        let p = self.blob_path(d);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &p)(e)),
        }
    }

    /// Stores a small blob (manifest, index, config) that the caller has verified.
    pub(crate) fn put_blob(&self, d: &Digest, data: &[u8]) -> Result<()> {
        let p = self.blob_path(d);
        if p.exists() {
            return Ok(());
        }
        self.atomic_write(&p, data)
    }

    fn atomic_write(&self, dest: &Path, data: &[u8]) -> Result<()> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("write-{}-{n}", std::process::id()));
        write_file(&tmp, data)?;
        fs::rename(&tmp, dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("rename", dest)(e)
        })
    }

    /// Keeps the layers named by `chains` from garbage collection until the guard drops.
    pub fn pin(self: &Arc<Self>, chains: &[Digest]) -> Pin {
        let mut st = self.lock();
        for c in chains {
            *st.pinned.entry(c.clone()).or_default() += 1;
        }
        Pin {
            store: Arc::clone(self),
            chains: chains.to_vec(),
        }
    }

    /// Records a pulled image under `name` (a tag or digest reference as the client asked
    /// for it), merging with an existing record of the same id and moving the tag away from
    /// any other image that held it.
    pub fn add_image(
        &self,
        mut rec: ImageRecord,
        tag: Option<&str>,
        repo_digest: &str,
    ) -> Result<ImageRecord> {
        let mut st = self.lock();
        if let Some(t) = tag {
            let holders: Vec<Digest> = st
                .images
                .values()
                .filter(|r| r.id != rec.id && r.repo_tags.iter().any(|x| x == t))
                .map(|r| r.id.clone())
                .collect();
            for id in holders {
                if let Some(other) = st.images.get_mut(&id) {
                    other.repo_tags.retain(|x| x != t);
                    let other = other.clone();
                    self.atomic_write(&self.record_path(&other.id), &to_json(&other)?)?;
                }
            }
        }
        if let Some(old) = st.images.get(&rec.id) {
            let mut tags = old.repo_tags.clone();
            let mut digests = old.repo_digests.clone();
            tags.append(&mut rec.repo_tags);
            digests.append(&mut rec.repo_digests);
            rec.repo_tags = tags;
            rec.repo_digests = digests;
            rec.pulled_at = old.pulled_at;
        }
        if let Some(t) = tag {
            rec.repo_tags.push(t.to_string());
        }
        rec.repo_digests.push(repo_digest.to_string());
        dedup(&mut rec.repo_tags);
        dedup(&mut rec.repo_digests);
        self.atomic_write(&self.record_path(&rec.id), &to_json(&rec)?)?;
        st.images.insert(rec.id.clone(), rec.clone());
        st.generation += 1;
        Ok(rec)
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.lock().images.values().cloned().collect()
    }

    pub fn get(&self, id: &Digest) -> Option<ImageRecord> {
        self.lock().images.get(id).cloned()
    }

    /// Finds the image `s` names: a full id (with or without `sha256:`), a tag or digest
    /// reference, or a unique id prefix.
    pub fn resolve(&self, s: &str) -> Result<Option<(ImageRecord, Match)>> {
        let st = self.lock();
        resolve_in(&st.images, s)
    }

    /// Lower dirs for an overlay mount of the image, topmost layer first.
    pub fn rootfs(&self, id: &Digest) -> Option<Vec<PathBuf>> {
        let st = self.lock();
        let rec = st.images.get(id)?;
        Some(
            rec.layers
                .iter()
                .rev()
                .map(|l| self.layer_dir(&l.chain_id))
                .collect(),
        )
    }

    /// Removes what `s` names. A tag of an image with other tags is only untagged; otherwise
    /// the image goes, unless a container uses it, and so do layers and blobs nothing else
    /// references.
    pub fn remove(&self, s: &str, usage: &dyn ImageUsage) -> Result<Removed> {
        let mut st = self.lock();
        let Some((rec, how)) = resolve_in(&st.images, s)? else {
            return Ok(Removed::NotPresent);
        };
        if let Match::Tag(t) = &how
            && rec.repo_tags.len() > 1
        {
            let mut rec = rec.clone();
            rec.repo_tags.retain(|x| x != t);
            self.atomic_write(&self.record_path(&rec.id), &to_json(&rec)?)?;
            st.images.insert(rec.id.clone(), rec);
            st.generation += 1;
            return Ok(Removed::Untagged(t.clone()));
        }
        let users = usage.containers_using(&rec.id);
        if !users.is_empty() {
            return Err(Error::InUse {
                image: rec.id.to_string(),
                containers: users,
            });
        }
        let p = self.record_path(&rec.id);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &p)(e)),
        }
        st.images.remove(&rec.id);
        st.generation += 1;
        let trash = self.collect_garbage(&st)?;
        drop(st);
        self.empty_trash(trash);
        Ok(Removed::Deleted(rec.id))
    }

    /// Moves every layer and blob that no image references and no pull has pinned into
    /// `tmp/`, under the lock (renames are cheap), returning the paths to delete after it.
    fn collect_garbage(&self, st: &State) -> Result<Vec<PathBuf>> {
        let mut live_layers: BTreeSet<String> =
            st.pinned.keys().map(|c| c.hex().to_string()).collect();
        let mut live_blobs: BTreeSet<String> = BTreeSet::new();
        for r in st.images.values() {
            live_blobs.insert(r.id.hex().to_string());
            live_blobs.insert(r.manifest_digest.hex().to_string());
            if let Some(i) = &r.index_digest {
                live_blobs.insert(i.hex().to_string());
            }
            for l in &r.layers {
                live_layers.insert(l.chain_id.hex().to_string());
            }
        }
        let mut trash = Vec::new();
        for (dir, live) in [("layers", &live_layers), ("blobs/sha256", &live_blobs)] {
            let d = self.root.join(dir);
            for entry in fs::read_dir(&d).map_err(Error::io("read", &d))? {
                let entry = entry.map_err(Error::io("read", &d))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if live.contains(&name) {
                    continue;
                }
                if !is_hex64(&name) {
                    tracing::warn!(path = %entry.path().display(), "removing unexpected file from the image store");
                }
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let dest = self
                    .root
                    .join("tmp")
                    .join(format!("gc-{}-{n}", std::process::id()));
                fs::rename(entry.path(), &dest).map_err(Error::io("rename", entry.path()))?;
                tracing::debug!(removed = %entry.path().display(), "image store garbage");
                trash.push(dest);
            }
        }
        Ok(trash)
    }

    fn empty_trash(&self, trash: Vec<PathBuf>) {
        for p in trash {
            let res = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            if let Err(e) = res {
                // tmp/ is wiped at the next start anyway.
                tracing::warn!(path = %p.display(), error = %e, "could not delete image store garbage");
            }
        }
    }

    /// Bytes and inodes used under the store root, counting hard-linked inodes once. The
    /// walk is cached until the store next changes.
    pub fn usage(&self) -> Result<FsUsage> {
        let gen_now = {
            let st = self.lock();
            if let Some((g, u)) = &st.usage
                && *g == st.generation
            {
                return Ok(u.clone());
            }
            st.generation
        };
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0u64;
        let mut inodes = 0u64;
        walk(&self.root, &mut |m: &fs::Metadata| {
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                return;
            }
            bytes += m.blocks() * 512;
            inodes += 1;
        })?;
        let usage = FsUsage {
            mountpoint: mountpoint_of(&self.root),
            used_bytes: bytes,
            inodes_used: inodes,
        };
        let mut st = self.lock();
        if st.generation == gen_now {
            st.usage = Some((gen_now, usage.clone()));
        }
        Ok(usage)
    }
}

fn walk(p: &Path, f: &mut dyn FnMut(&fs::Metadata)) -> Result<()> {
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        // Removed while we walked (concurrent GC): not ours to count.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", p)(e)),
    };
    f(&m);
    if m.is_dir() {
        let rd = match fs::read_dir(p) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read", p)(e)),
        };
        for e in rd {
            let e = e.map_err(Error::io("read", p))?;
            walk(&e.path(), f)?;
        }
    }
    Ok(())
}

/// The mount point containing `path`, from `/proc/self/mountinfo` (longest prefix).
pub fn mountpoint_of(path: &Path) -> PathBuf {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

fn resolve_in(
    images: &BTreeMap<Digest, ImageRecord>,
    s: &str,
) -> Result<Option<(ImageRecord, Match)>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if is_hex64(hex)
        && let Ok(d) = Digest::parse(&format!("sha256:{hex}"))
        && let Some(r) = images.get(&d)
    {
        return Ok(Some((r.clone(), Match::Id)));
    }
    if let Ok(r) = Reference::parse(s) {
        if let Some(d) = r.digest() {
            let want = r.with_digest(d);
            if let Some(rec) = images.values().find(|x| x.repo_digests.contains(&want)) {
                return Ok(Some((rec.clone(), Match::Digest(want))));
            }
        } else if let Some(t) = r.tagged()
            && let Some(rec) = images.values().find(|x| x.repo_tags.contains(&t))
        {
            return Ok(Some((rec.clone(), Match::Tag(t))));
        }
    }
    let is_prefix = !hex.is_empty()
        && hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if is_prefix {
        let found: Vec<&ImageRecord> = images
            .values()
            .filter(|r| r.id.hex().starts_with(hex))
            .collect();
        match found.as_slice() {
            [] => {}
            [one] => return Ok(Some(((*one).clone(), Match::Prefix))),
            many => {
                return Err(Error::Ambiguous {
                    image: s.to_string(),
                    candidates: many
                        .iter()
                        .map(|r| r.id.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    Ok(None)
}

/// Keeps layers from GC while a pull uses them.
#[derive(Debug)]
pub struct Pin {
    store: Arc<Store>,
    chains: Vec<Digest>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut st = self.store.lock();
        for c in &self.chains {
            if let Some(n) = st.pinned.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    st.pinned.remove(c);
                }
            }
        }
    }
}

/// A scratch directory, removed on drop unless committed.
#[derive(Debug)]
pub(crate) struct Scratch {
    path: Option<PathBuf>,
}

impl Scratch {
    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("/nonexistent"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = self.path.take()
            && let Err(e) = fs::remove_dir_all(&p)
        {
            tracing::warn!(path = %p.display(), error = %e, "could not remove scratch dir");
        }
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Internal(format!("encode record: {e}")))
}

/// Writes and fsyncs a new file.
fn write_file(p: &Path, data: &[u8]) -> Result<()> {
    let mut f = fs::File::create(p).map_err(Error::io("create", p))?;
    f.write_all(data).map_err(Error::io("write", p))?;
    f.sync_all().map_err(Error::io("fsync", p))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(n: u8) -> ImageRecord {
        ImageRecord {
            id: Digest::of(&[n]),
            repo_tags: vec![],
            repo_digests: vec![],
            manifest_digest: Digest::of(&[n, 1]),
            index_digest: None,
            layers: vec![],
            size: 1,
            platform: "linux/amd64".into(),
            pulled_at: 0,
            config: ImageConfig::default(),
        }
    }

    #[test]
    fn tags_move_and_lookups_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = record(1);
        let b = record(2);
        let dig = format!("docker.io/library/x@{}", a.manifest_digest);
        store
            .add_image(a.clone(), Some("docker.io/library/x:1"), &dig)
            .unwrap();
        store
            .add_image(a.clone(), Some("docker.io/library/x:2"), &dig)
            .unwrap();
        store
            .add_image(
                b.clone(),
                Some("docker.io/library/x:2"),
                &format!("docker.io/library/x@{}", b.manifest_digest),
            )
            .unwrap();
        let ra = store.get(&a.id).unwrap();
        assert_eq!(ra.repo_tags, vec!["docker.io/library/x:1"]);
        assert_eq!(ra.repo_digests, vec![dig.clone()]);
        assert_eq!(store.resolve("x:1").unwrap().unwrap().0.id, a.id);
        assert_eq!(store.resolve("x:2").unwrap().unwrap().0.id, b.id);
        assert_eq!(store.resolve(&dig).unwrap().unwrap().0.id, a.id);
        assert_eq!(store.resolve(a.id.as_str()).unwrap().unwrap().1, Match::Id);
        assert_eq!(
            store.resolve(&a.id.hex()[..12]).unwrap().unwrap().0.id,
            a.id
        );
        assert!(store.resolve("nope").unwrap().is_none());
        // Reopen: records persist.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list().len(), 2);
        assert_eq!(
            store.remove("x:1", &NoContainers).unwrap(),
            Removed::Deleted(a.id.clone())
        );
        assert_eq!(
            store.remove("x:1", &NoContainers).unwrap(),
            Removed::NotPresent
        );
        assert_eq!(store.list().len(), 1);
    }

    #[test]
    fn open_discards_scratch_and_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = store.scratch("layer").unwrap();
        let kept = s.path().to_path_buf();
        std::mem::forget(s);
        fs::create_dir_all(dir.path().join("layers").join("a".repeat(64)).join("diff")).unwrap();
        fs::write(dir.path().join("blobs/sha256").join("b".repeat(64)), b"x").unwrap();
        drop(store);
        let _store = Store::open(dir.path()).unwrap();
        assert!(!kept.exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("layers")).unwrap().count(), 0);
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn mountinfo_unescapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(
            mountpoint_of(Path::new("/proc/self")),
            PathBuf::from("/proc")
        );
    }
}
