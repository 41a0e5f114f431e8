//! The Kubernetes manifests validate offline against the 1.30 schemas, and
//! a manifest with a typo fails (so the validation can fail at all).
//! Needs kubectl and kubernetes-validate on PATH; `scripts/test.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    stylefarm_tests::package_dir().join("../deploy")
}

fn validate(k8s: &Path) -> (bool, String) {
    let o = Command::new(deploy().join("validate.sh")).arg(k8s).output().expect("deploy/validate.sh runs");
    assert_ne!(o.status.code(), Some(2), "validation tools missing: {}", String::from_utf8_lossy(&o.stderr));
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn manifests_are_valid_kubernetes() {
    let (ok, out) = validate(&deploy().join("k8s"));
    assert!(ok, "{out}");
    assert!(out.contains("overlay cpu") && out.contains("overlay gpu"), "{out}");
}

#[test]
fn a_typo_in_a_manifest_fails_validation() {
    for (file, from, to, needle) in [
        ("base/worker.yaml", "  replicas: 2", "  replcas: 2", "replcas"),
        ("base/coordinator.yaml", "containerPort: 50051", "containerPort: \"fifty\"", "fifty"),
        ("overlays/gpu/worker-gpu.yaml", "nvidia.com/gpu: 1", "nvidia.com/gpu: [1]", "gpu"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&deploy().join("k8s"), dir.path());
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} no longer contains `{from}`");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let (ok, out) = validate(dir.path());
        assert!(!ok && out.contains(needle), "typo `{to}` in {file} went unnoticed:\n{out}");
    }
}

#[test]
fn workers_request_one_gpu_and_have_time_to_checkpoint() {
    let gpu = Command::new("kubectl").args(["kustomize"]).arg(deploy().join("k8s/overlays/gpu")).output().unwrap();
    let yaml = String::from_utf8(gpu.stdout).unwrap();
    assert!(yaml.contains("nvidia.com/gpu: 1") && yaml.contains("--device=cuda:0"), "{yaml}");
    assert!(yaml.contains("terminationGracePeriodSeconds: 120"));
    assert!(yaml.matches("grpc:\n").count() >= 2 && yaml.contains("readinessProbe") && yaml.contains("livenessProbe"), "probes use the gRPC health service");
}
