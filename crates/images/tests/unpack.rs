//! Layer unpacking against the real file system (root: ownership, device nodes and
//! `trusted.*` xattrs need CAP_CHOWN, CAP_MKNOD and CAP_SYS_ADMIN).

#![allow(clippy::unwrap_used)]
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use images::Digest;
use images::unpack::{UnpackError, unpack};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_000_000);
    h.set_cksum();
    h
}

fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let h = header(path, tar::EntryType::Regular, 0o4755, data.len() as u64);
    b.append(&h, data).unwrap();
}

fn raw_path_entry(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    // tar::Header::set_path refuses ".." and absolute paths, so write the name bytes.
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
}

#[test]
fn unpacks_files_links_devices_and_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let data = layer(|b| {
        b.append(
            &header("etc/", tar::EntryType::Directory, 0o755, 0),
            &[][..],
        )
        .unwrap();
        file(b, "etc/a", b"hello");
        let mut h = header("etc/b", tar::EntryType::Link, 0o644, 0);
        h.set_link_name("etc/a").unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let mut h = header("etc/s", tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("/etc/a").unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let mut h = header("dev/null", tar::EntryType::Char, 0o666, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        file(b, "gone/.wh.old", b"");
        file(b, "opq/.wh..wh..opq", b"");
        file(b, "opq/new", b"n");
        let mut h = header("x", tar::EntryType::Regular, 0o644, 1);
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
            .unwrap();
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
    });
    let out = unpack(&data[..], dir.path()).unwrap();
    assert_eq!(out.diff_id, Digest::of(&data));
    assert_eq!(out.tar_size, data.len() as u64);
    let root = dir.path();
    let a = fs::symlink_metadata(root.join("etc/a")).unwrap();
    assert_eq!((a.uid(), a.gid(), a.mode() & 0o7777), (1000, 1001, 0o4755));
    assert_eq!(a.mtime(), 1_000_000);
    assert_eq!(fs::read(root.join("etc/a")).unwrap(), b"hello");
    assert_eq!(
        fs::symlink_metadata(root.join("etc/b")).unwrap().ino(),
        a.ino()
    );
    assert_eq!(
        fs::read_link(root.join("etc/s")).unwrap(),
        Path::new("/etc/a")
    );
    let n = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(n.file_type().is_char_device());
    assert_eq!(n.rdev(), nix::sys::stat::makedev(1, 3));
    let w = fs::symlink_metadata(root.join("gone/old")).unwrap();
    assert!(w.file_type().is_char_device());
    assert_eq!(w.rdev(), 0);
    assert!(!root.join("gone/.wh.old").exists());
    assert_eq!(
        xattr::get(root.join("opq"), OPAQUE_XATTR).unwrap().unwrap(),
        b"y"
    );
    assert!(!root.join("opq/.wh..wh..opq").exists());
    assert!(root.join("opq/new").exists());
    assert_eq!(xattr::get(root.join("x"), "user.k").unwrap().unwrap(), b"v");
    assert_eq!(
        fs::symlink_metadata(root.join("etc")).unwrap().mtime(),
        1_000_000
    );
}

#[test]
fn gzip_and_zstd_give_the_uncompressed_diff_id() {
    let data = layer(|b| file(b, "f", b"content"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &data).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&data[..], 3).unwrap();
    for input in [gz, zst] {
        let dir = tempfile::tempdir().unwrap();
        let out = unpack(&input[..], dir.path()).unwrap();
        assert_eq!(out.diff_id, Digest::of(&data));
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"content");
    }
}

#[test]
fn refuses_escapes() {
    let outside = tempfile::tempdir().unwrap();
    for build in [
        Box::new(|b: &mut tar::Builder<Vec<u8>>| raw_path_entry(b, "../evil"))
            as Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>,
        Box::new(|b: &mut tar::Builder<Vec<u8>>| raw_path_entry(b, "/abs")),
        Box::new(|b: &mut tar::Builder<Vec<u8>>| raw_path_entry(b, "a/../../evil")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = layer(|b| build(b));
        let e = unpack(&data[..], dir.path()).unwrap_err();
        assert!(matches!(e, UnpackError::Unsafe { .. }), "{e}");
    }
    // A symlink to a directory outside, then a file "through" it.
    let dir = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let data = layer(|b| {
        let mut h = header("link", tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name(&target).unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        file(b, "link/pwned", b"x");
    });
    let e = unpack(&data[..], dir.path()).unwrap_err();
    assert!(matches!(e, UnpackError::Unsafe { .. }), "{e}");
    assert!(!outside.path().join("pwned").exists());
    // A hard link to a file outside through a symlinked directory.
    let dir = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"s").unwrap();
    let data = layer(|b| {
        let mut h = header("link", tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name(&target).unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let mut h = header("hl", tar::EntryType::Link, 0o644, 0);
        h.set_link_name("link/secret").unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    });
    let e = unpack(&data[..], dir.path()).unwrap_err();
    assert!(matches!(e, UnpackError::Unsafe { .. }), "{e}");
    assert!(!dir.path().join("hl").exists());
}
