//! Kill-and-resume: a render SIGKILLed mid-way and resumed from its last
//! checkpoint ends bit-identical to one never interrupted (final PNG bytes
//! and every loss in the log), for Adam and for L-BFGS. Real child
//! processes, real SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A file in `tests/fixtures/`, found from farmctl's folder at run time (cargo
/// sets CARGO_MANIFEST_DIR for test processes; the compile-time value goes
/// stale when a shared target folder is reused from another checkout).
fn fixture(name: &str) -> String {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&dir).join("../tests/fixtures").join(name).to_string_lossy().into_owned()
}

const ITERS: &str = "60";

/// `farmctl render` of the fixtures at 40x30, checkpointing every 5
/// iterations into `dir/NAME.ckpt`, logging to `dir/NAME.jsonl`.
fn render(dir: &Path, name: &str, optimizer: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_farmctl"));
    c.args(["render", "-q", "--size", "40x30", "--checkpoint-every", "5", "--optimizer", optimizer]);
    if !extra.contains(&"--iters") {
        c.args(["--iters", ITERS]);
    }
    c
        .args(["--content", &fixture("content.png"), "--style", &fixture("style.png")])
        .arg("-o")
        .arg(dir.join(format!("{name}.png")))
        .arg("--log")
        .arg(dir.join(format!("{name}.jsonl")))
        .args(extra);
    c
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "farmctl failed:\n{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Waits until `file` exists, then SIGKILLs the child (std's kill is SIGKILL on Unix).
fn kill_when_exists(mut child: Child, file: &Path) {
    let start = Instant::now();
    while !file.exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "{} never appeared", file.display());
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the render ended ({status}) before {} appeared", file.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// The log without wall-clock seconds.
fn losses(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

fn ckpt(dir: &Path, name: &str, iteration: usize) -> PathBuf {
    dir.join(format!("{name}.ckpt/ckpt-{iteration:08}.safetensors"))
}

fn kill_and_resume_is_bit_identical(optimizer: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(render(d, "straight", optimizer, &[]).output().unwrap());

    let child = render(d, "broken", optimizer, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    kill_when_exists(child, &ckpt(d, "broken", 10));
    assert!(!d.join("broken.png").exists(), "the render finished before the kill; nothing was tested");

    let resumed = ok(render(d, "broken", optimizer, &["--resume"]).output().unwrap());
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    let from: usize = stderr
        .split("resuming from iteration ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume message in:\n{stderr}"));
    assert!(from >= 10, "resumed from iteration {from}");

    let a = std::fs::read(d.join("straight.png")).unwrap();
    let b = std::fs::read(d.join("broken.png")).unwrap();
    assert!(a == b, "{optimizer}: the resumed render's PNG differs from the uninterrupted one");
    let (la, lb) = (losses(&d.join("straight.jsonl")), losses(&d.join("broken.jsonl")));
    assert_eq!(la.len(), 61);
    assert_eq!(la, lb, "{optimizer}: the loss logs differ");
}

#[test]
fn adam_render_killed_and_resumed_is_bit_identical() {
    stylefarm_tests::require!(stylefarm_tests::Need::Weights);
    kill_and_resume_is_bit_identical("adam");
}

#[test]
fn lbfgs_render_killed_and_resumed_is_bit_identical() {
    stylefarm_tests::require!(stylefarm_tests::Need::Weights);
    kill_and_resume_is_bit_identical("lbfgs");
}

#[test]
fn a_corrupt_newest_checkpoint_is_skipped_for_the_previous_one() {
    stylefarm_tests::require!(stylefarm_tests::Need::Weights);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(render(d, "straight", "adam", &["--iters", "20"]).output().unwrap());
    let child = render(d, "broken", "adam", &["--iters", "20", "--keep-checkpoints", "5"]).stderr(Stdio::null()).spawn().unwrap();
    kill_when_exists(child, &ckpt(d, "broken", 10));
    // Damage the newest checkpoint: cut it in half.
    let newest = (5..=20).rev().step_by(5).map(|i| ckpt(d, "broken", i)).find(|p| p.exists()).unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();

    let o = ok(render(d, "broken", "adam", &["--iters", "20", "--resume"]).output().unwrap());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("skipping checkpoint") && stderr.contains(&newest.file_name().unwrap().to_string_lossy().into_owned()), "{stderr}");
    assert_eq!(std::fs::read(d.join("straight.png")).unwrap(), std::fs::read(d.join("broken.png")).unwrap());
}

#[test]
fn resuming_with_other_parameters_or_inputs_is_refused_by_name() {
    stylefarm_tests::require!(stylefarm_tests::Need::Weights);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(render(d, "r", "adam", &["--iters", "5"]).output().unwrap());
    let o = render(d, "r", "adam", &["--iters", "10", "--resume", "--alpha", "0.5"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("`alpha` differs"), "{stderr}");
    let o = render(d, "r", "adam", &["--iters", "10", "--resume", "--style", &fixture("init.png")]).output().unwrap();
    // --style given twice means two styles: the style images differ.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("style image(s) differ"), "{stderr}");
    // More iterations with the same render is an extension, not a new render.
    let o = ok(render(d, "r", "adam", &["--iters", "10", "--resume"]).output().unwrap());
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from iteration 5"));
}

#[test]
fn a_checkpoint_location_that_stops_taking_writes_ends_the_render_cleanly() {
    stylefarm_tests::require!(stylefarm_tests::Need::Weights);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Unwritable from the start: a path under a regular file.
    std::fs::write(d.join("file"), b"x").unwrap();
    let o = render(d, "x", "adam", &["--checkpoint-dir", &d.join("file/ckpt").to_string_lossy()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("file/ckpt"), "{stderr}");
    assert!(!d.join("x.jsonl").exists() || losses(&d.join("x.jsonl")).is_empty(), "no work before the check");

    // Unwritable mid-render: the folder is swapped for a file.
    let child = render(d, "y", "adam", &[]).stderr(Stdio::piped()).spawn().unwrap();
    let ckpt_dir = d.join("y.ckpt");
    let start = Instant::now();
    while !ckpt(d, "y", 10).exists() {
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::rename(&ckpt_dir, d.join("saved.ckpt")).unwrap();
    std::fs::write(&ckpt_dir, b"not a folder").unwrap();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("previous checkpoint stays valid"), "{stderr}");
    // The last good checkpoint resumes.
    std::fs::remove_file(&ckpt_dir).unwrap();
    std::fs::rename(d.join("saved.ckpt"), &ckpt_dir).unwrap();
    let o = ok(render(d, "y", "adam", &["--resume"]).output().unwrap());
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from iteration"));
}
