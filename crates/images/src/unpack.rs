//! Layer unpacking: a (gzip, zstd or plain) tar stream into a directory that overlayfs can
//! use as a lower dir.
//!
//! OCI whiteouts become overlayfs whiteouts (image-spec `layer.md`, kernel
//! `Documentation/filesystems/overlayfs.rst`): `.wh.<name>` → a 0:0 character device
//! `<name>`, `.wh..wh..opq` → `trusted.overlay.opaque=y` on its directory. Ownership, modes,
//! xattrs (`SCHILY.xattr.*` PAX records), mtimes, hard links, symlinks, device nodes and
//! fifos are reproduced. Entries are confined to the layer root: absolute paths and `..` are
//! refused, and no entry is ever written through a symlink (every parent of an entry must be
//! a real directory inside the root), so a layer cannot write outside its directory.
//!
//! The uncompressed stream is hashed as it is read, so the caller gets the diff id to check
//! against the image config without a second pass.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::digest::{Digest, HashingReader};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";
const BUF: usize = 1 << 20;

/// What unpacking a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar stream.
    pub tar_size: u64,
    /// Bytes of regular file content written.
    pub content_size: u64,
    /// Entries written (files, dirs, links, devices, whiteouts).
    pub entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} is refused: {reason}")]
    Unsafe { path: PathBuf, reason: &'static str },
    #[error("reading the layer stream: {0}")]
    Read(#[source] io::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn nix_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        op,
        path: path.to_path_buf(),
        source: io::Error::from(e),
    }
}

/// The compression of a layer, recognized by its magic bytes rather than trusted from the
/// media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Unpacks the layer read from `input` into `dest`, which must be an empty directory.
pub fn unpack(input: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    let mut buffered = BufReader::with_capacity(BUF, input);
    let head = buffered.fill_buf().map_err(UnpackError::Read)?;
    let tar: Box<dyn Read> = match sniff(head) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(UnpackError::Read)?)
        }
        Compression::None => Box::new(buffered),
    };
    let mut hashing = HashingReader::new(tar);
    let mut stats = Unpacked {
        diff_id: Digest::of(b""),
        tar_size: 0,
        content_size: 0,
        entries: 0,
    };
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        for entry in archive.entries().map_err(UnpackError::Read)? {
            let mut entry = entry.map_err(UnpackError::Read)?;
            unpack_entry(&mut entry, dest, &mut stats, &mut dirs)?;
        }
    }
    // The tar's end-of-archive blocks and any padding belong to the diff id too.
    let (diff_id, tar_size) = hashing.finish().map_err(UnpackError::Read)?;
    // Directory mtimes last, deepest first: creating children changes them.
    for (path, mtime) in dirs.iter().rev() {
        set_mtime(path, *mtime)?;
    }
    stats.diff_id = diff_id;
    stats.tar_size = tar_size;
    Ok(stats)
}

/// `path` relative to the layer root, normalized, or refused.
fn confine(path: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(UnpackError::Unsafe {
                    path: path.to_path_buf(),
                    reason: "\"..\" would leave the layer root",
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::Unsafe {
                    path: path.to_path_buf(),
                    reason: "absolute paths are not allowed in layers",
                });
            }
        }
    }
    Ok(out)
}

/// Makes sure every component of `rel` under `root` is a real directory (creating missing
/// ones), never following a symlink.
fn ensure_dirs(root: &Path, rel: &Path, entry: &Path) -> Result<(), UnpackError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::Unsafe {
                    path: entry.to_path_buf(),
                    reason: "a parent is not a directory (writing through a symlink is refused)",
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(io_err("mkdir", &cur))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("chmod", &cur))?;
            }
            Err(e) => return Err(io_err("lstat", &cur)(e)),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (a later entry replaces an earlier one).
fn clear(path: &Path, keep_dir: bool) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if !keep_dir {
                fs::remove_dir_all(path).map_err(io_err("remove", path))?;
            }
        }
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("lstat", path)(e)),
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) -> Result<(), UnpackError> {
    let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(nix_err("utimensat", path))
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &Path,
    stats: &mut Unpacked,
    dirs: &mut Vec<(PathBuf, u64)>,
) -> Result<(), UnpackError> {
    let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
    let rel = confine(&raw)?;
    let kind = entry.header().entry_type();
    let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        // The root itself ("./"): only its metadata applies.
        if kind.is_dir() {
            apply_metadata(entry, root, false)?;
            dirs.push((root.to_path_buf(), entry.header().mtime().unwrap_or(0)));
        }
        return Ok(());
    };
    let parent_rel = rel.parent().unwrap_or(Path::new(""));
    ensure_dirs(root, parent_rel, &raw)?;
    let parent = root.join(parent_rel);
    let path = root.join(&rel);

    if name == OPAQUE {
        xattr::set(&parent, OPAQUE_XATTR, b"y").map_err(io_err("setxattr", &parent))?;
        stats.entries += 1;
        return Ok(());
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.*` names are aufs bookkeeping (hard link dirs); not content.
            return Ok(());
        }
        let target = parent.join(hidden);
        clear(&target, false)?;
        nix::sys::stat::mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(nix_err("mknod whiteout", &target))?;
        stats.entries += 1;
        return Ok(());
    }

    let header_mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
    match kind {
        tar::EntryType::Directory => {
            clear(&path, true)?;
            if !path.exists() {
                fs::create_dir(&path).map_err(io_err("mkdir", &path))?;
            }
            apply_metadata(entry, &path, false)?;
            dirs.push((path, entry.header().mtime().unwrap_or(0)));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            clear(&path, false)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err("create", &path))?;
            let n = io::copy(entry, &mut f).map_err(io_err("write", &path))?;
            drop(f);
            stats.content_size += n;
            apply_metadata(entry, &path, true)?;
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(UnpackError::Read)?
                .ok_or(UnpackError::Unsafe {
                    path: raw.clone(),
                    reason: "symlink without a target",
                })?
                .into_owned();
            clear(&path, false)?;
            std::os::unix::fs::symlink(&target, &path).map_err(io_err("symlink", &path))?;
            apply_metadata(entry, &path, true)?;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(UnpackError::Read)?
                .ok_or(UnpackError::Unsafe {
                    path: raw.clone(),
                    reason: "hard link without a target",
                })?
                .into_owned();
            let target_rel = confine(&target)?;
            // The target's parents must be real directories too, or the link could pick up
            // a file outside the root through a symlinked directory.
            let target_parent = target_rel.parent().unwrap_or(Path::new(""));
            let mut cur = root.to_path_buf();
            for c in target_parent.components() {
                cur.push(c);
                if !fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
                    return Err(UnpackError::Unsafe {
                        path: raw.clone(),
                        reason: "hard link target is not inside this layer",
                    });
                }
            }
            let target_path = root.join(&target_rel);
            match fs::symlink_metadata(&target_path) {
                Ok(m) if !m.is_dir() => {}
                _ => {
                    return Err(UnpackError::Unsafe {
                        path: raw.clone(),
                        reason: "hard link target is not a file earlier in this layer",
                    });
                }
            }
            if target_path != path {
                clear(&path, false)?;
                fs::hard_link(&target_path, &path).map_err(io_err("link", &path))?;
            }
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            clear(&path, false)?;
            let (sflag, dev) = match kind {
                tar::EntryType::Char | tar::EntryType::Block => {
                    let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                    let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                    let flag = if kind == tar::EntryType::Char {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    (flag, nix::sys::stat::makedev(major.into(), minor.into()))
                }
                _ => (SFlag::S_IFIFO, 0),
            };
            nix::sys::stat::mknod(&path, sflag, Mode::from_bits_truncate(header_mode), dev)
                .map_err(nix_err("mknod", &path))?;
            apply_metadata(entry, &path, true)?;
        }
        other => {
            tracing::debug!(path = %raw.display(), kind = ?other, "skipping tar entry of unsupported type");
            return Ok(());
        }
    }
    stats.entries += 1;
    Ok(())
}

/// Owner, mode, xattrs and (for non-directories) mtime of an entry, in that order: chown
/// clears set-id bits, so the mode comes after it.
fn apply_metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    with_mtime: bool,
) -> Result<(), UnpackError> {
    let h = entry.header();
    let uid = h
        .uid()
        .ok()
        .and_then(|u| u32::try_from(u).ok())
        .unwrap_or(0);
    let gid = h
        .gid()
        .ok()
        .and_then(|g| u32::try_from(g).ok())
        .unwrap_or(0);
    let mode = h.mode().unwrap_or(0o644) & 0o7777;
    let mtime = h.mtime().unwrap_or(0);
    let is_symlink = h.entry_type() == tar::EntryType::Symlink;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err("lchown", path))?;
    if !is_symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", path))?;
    }
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts {
            let Ok(ext) = ext else { continue };
            let Ok(key) = ext.key() else { continue };
            let Some(name) = key.strip_prefix(PAX_XATTR) else {
                continue;
            };
            if let Err(e) = xattr::set(path, name, ext.value_bytes()) {
                // Symlinks cannot carry user.* xattrs, and some filesystems lack a namespace;
                // neither makes the layer unusable.
                if is_symlink || e.raw_os_error() == Some(nix::errno::Errno::EOPNOTSUPP as i32) {
                    tracing::debug!(path = %path.display(), xattr = name, error = %e, "xattr not set");
                } else {
                    return Err(io_err("setxattr", path)(e));
                }
            }
        }
    }
    if with_mtime {
        set_mtime(path, mtime)?;
    }
    Ok(())
}

/// Reads a blocking stream of chunks handed over from async code.
#[derive(Debug)]
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    cur: bytes::Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Self {
        Self {
            rx,
            cur: bytes::Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}
