//! Locating the SPDY capture vectors shared by the integration tests.

use std::fs;
use std::path::{Path, PathBuf};

/// `$SLUICE_SPDY_VECTORS`, else `../shared/spdy-vectors` next to the checkout. Panics with
/// a clear message when the directory is absent: the captures are not in the repository.
pub fn vectors_dir() -> PathBuf {
    let dir = match std::env::var_os("SLUICE_SPDY_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spdy-vectors"),
    };
    assert!(
        dir.join("README.md").is_file(),
        "SPDY capture vectors not found at {}: they are not in the repository; set \
         SLUICE_SPDY_VECTORS to the spdy-vectors directory (CI provides ../shared/spdy-vectors)",
        dir.display()
    );
    dir
}

/// Every capture directory (those with a frames.txt), sorted.
pub fn sessions() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(vectors_dir())
        .expect("read the vectors directory")
        .map(|e| e.expect("read a directory entry").path())
        .filter(|p| p.join("frames.txt").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no capture directories with a frames.txt");
    dirs
}

/// Length of the HTTP upgrade preamble at the start of a `.bin`.
pub fn http_preamble_len(bin: &[u8]) -> usize {
    bin.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .expect("the stream starts with an HTTP preamble")
}
