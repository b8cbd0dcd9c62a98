//! The container root filesystem: an overlay of the image's layer directories (read-only lower
//! dirs) and a per-container upper (writable layer) and work dir.
//!
//! A read-only rootfs still gets an upper dir (overlayfs refuses a single lower dir without
//! one) but is mounted `MS_RDONLY`, and the spec's `root.readonly` makes runc keep it so.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// A rootfs failure, with the path and the OS error.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("overlay needs at least one lower directory")]
    NoLayers,
    #[error("layer path {0} contains ':' or ',', which overlayfs options cannot carry")]
    BadLayerPath(PathBuf),
    #[error("overlay mount options are {0} bytes, more than a page (too many layers)")]
    OptionsTooLong(usize),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The directories of one container's overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// Image layer directories, top (newest) first.
    pub lower: Vec<PathBuf>,
    /// The writable layer.
    pub upper: PathBuf,
    /// overlayfs's scratch dir (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the merged tree is mounted (the bundle's `root.path`).
    pub target: PathBuf,
    pub readonly: bool,
}

impl Overlay {
    /// The standard layout under a container directory: `upper/`, `work/`, `merged/`.
    pub fn in_dir(dir: &Path, lower: Vec<PathBuf>, readonly: bool) -> Self {
        Self {
            lower,
            upper: dir.join("upper"),
            work: dir.join("work"),
            target: dir.join("merged"),
            readonly,
        }
    }

    /// The overlayfs mount data.
    pub fn options(&self) -> Result<String, RootfsError> {
        if self.lower.is_empty() {
            return Err(RootfsError::NoLayers);
        }
        let all = self.lower.iter().chain([&self.upper, &self.work]);
        for p in all {
            let s = p.to_string_lossy();
            if s.contains(':') || s.contains(',') {
                return Err(RootfsError::BadLayerPath(p.clone()));
            }
        }
        let lower: Vec<String> = self
            .lower
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upper.display(),
            self.work.display()
        );
        // The kernel copies at most one page of mount data.
        if opts.len() >= 4096 {
            return Err(RootfsError::OptionsTooLong(opts.len()));
        }
        Ok(opts)
    }

    /// Creates upper/work/target and mounts the overlay. Blocking (a few syscalls).
    pub fn mount(&self) -> Result<(), RootfsError> {
        let opts = self.options()?;
        for d in [&self.upper, &self.work, &self.target] {
            std::fs::create_dir_all(d).map_err(io("creating", d))?;
        }
        let mut flags = MsFlags::empty();
        if self.readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        nix::mount::mount(
            Some("overlay"),
            &self.target,
            Some("overlay"),
            flags,
            Some(opts.as_str()),
        )
        .map_err(|e| RootfsError::Io {
            op: "mounting overlay on",
            path: self.target.clone(),
            source: std::io::Error::other(format!("{e} (options {opts})")),
        })
    }

    /// Unmounts (lazily, so a process still holding a file does not block removal); not
    /// mounted or missing is fine.
    pub fn unmount(&self) -> Result<(), RootfsError> {
        unmount(&self.target)
    }
}

/// Unmounts `target` with `MNT_DETACH`; idempotent.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(RootfsError::Io {
            op: "unmounting",
            path: target.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Whether `path` is a mount point in this process's mount namespace (from
/// `/proc/self/mountinfo`; octal escapes decoded).
pub fn is_mounted(path: &Path) -> Result<bool, RootfsError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(io("reading", info))?;
    let want = path.to_string_lossy();
    Ok(text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    }))
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Disk use of a writable layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerUsage {
    /// Allocated bytes (`st_blocks * 512`), each inode counted once.
    pub bytes: u64,
    pub inodes: u64,
}

/// Walks `upper` (not following symlinks, not crossing into other filesystems) and sums
/// allocated bytes and inodes, hard links counted once.
pub fn layer_usage(upper: &Path) -> Result<LayerUsage, RootfsError> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::symlink_metadata(upper).map_err(io("reading", upper))?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut usage = LayerUsage::default();
    let mut stack = vec![upper.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("reading", &p)(e)),
        };
        if md.dev() != dev {
            continue;
        }
        if seen.insert(md.ino()) {
            usage.bytes += md.blocks() * 512;
            usage.inodes += 1;
        }
        if md.is_dir() {
            let rd = match std::fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("listing", &p)(e)),
            };
            for e in rd.flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_order_and_validation() {
        let mut o = Overlay::in_dir(
            Path::new("/c/1"),
            vec!["/l/top".into(), "/l/base".into()],
            false,
        );
        assert_eq!(
            o.options().unwrap(),
            "lowerdir=/l/top:/l/base,upperdir=/c/1/upper,workdir=/c/1/work"
        );
        o.lower.push("/l/a:b".into());
        assert!(matches!(o.options(), Err(RootfsError::BadLayerPath(_))));
        o.lower.clear();
        assert!(matches!(o.options(), Err(RootfsError::NoLayers)));
        o.lower = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/sluice/layers/{i:040}")))
            .collect();
        assert!(matches!(o.options(), Err(RootfsError::OptionsTooLong(_))));
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn usage_counts_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), vec![1u8; 10000]).unwrap();
        std::fs::hard_link(d.path().join("f"), d.path().join("g")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let u = layer_usage(d.path()).unwrap();
        assert_eq!(u.inodes, 3);
        assert!(u.bytes >= 10000, "{u:?}");
    }
}
