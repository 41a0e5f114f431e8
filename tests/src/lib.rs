//! Helpers for the end-to-end tests in `tests/tests/`: where the binaries
//! and the fixtures are. Fixtures live in `tests/fixtures/`.

use std::path::{Path, PathBuf};

/// A binary of this workspace, from the target folder the tests run from
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let path = exe.parent().and_then(Path::parent).map(|d| d.join(name)).expect("tests run from target/<profile>/deps");
    assert!(path.exists(), "{} is missing: run `cargo build --bins` before the tests", path.display());
    path
}

/// This package's folder (`tests/`), read when the test runs: cargo sets
/// `CARGO_MANIFEST_DIR` for test processes too. The compile-time value can
/// be stale: cargo does not rebuild a crate because its checkout moved, so a
/// target folder shared between checkouts (CI's cache) keeps the old path.
pub fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A file in `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    package_dir().join("fixtures").join(name).to_string_lossy().into_owned()
}
