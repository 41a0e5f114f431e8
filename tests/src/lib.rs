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

/// A file in `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name).to_string_lossy().into_owned()
}
