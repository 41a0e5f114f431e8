//! The CPU image, built and run: `deploy/images.sh` builds it from the
//! binaries this test run uses and smoke-tests it (non-root user, weights,
//! a render, the health check); then a coordinator container and two
//! worker containers (host network, loopback only) sharing one storage
//! folder render a 2×2 collection submitted by the host's farmctl, one
//! worker container is SIGKILLed mid-job, its job resumes in the other
//! from its checkpoint, and the outputs are fetched.
//!
//! Needs podman, runc and debootstrap (`scripts/test.sh` installs them).
//! The base image is made once by debootstrap and kept in podman's store.
//! Where podman cannot run a container at all the test says so on stderr
//! and checks nothing else: that is its only skip.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use stylefarm_tests::{all_succeeded, bin, fixture, free_port, jobs, package_dir, Farm, Procs, LEASE, RENDER};

const TAG: &str = "localhost/stylefarm:test";

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .env("CONTAINERS_CONF", package_dir().join("../deploy/podman/containers.conf"))
        .args(args)
        .output()
        .expect("podman runs")
}

fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Why podman cannot run containers here, if it cannot.
fn podman_unusable() -> Option<String> {
    match Command::new("podman").env("CONTAINERS_CONF", package_dir().join("../deploy/podman/containers.conf")).arg("info").output() {
        Err(e) => Some(format!("podman is not installed ({e}); scripts/test.sh installs it")),
        Ok(o) if !o.status.success() => Some(format!("`podman info` fails: {}", String::from_utf8_lossy(&o.stderr))),
        Ok(_) => None,
    }
}

/// Containers removed when the test ends, however it ends.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = podman(&["rm", "-f", "-t", "0", name]);
        }
    }
}

impl Containers {
    /// The last lines each container logged, for a failure's message.
    fn logs(&self) -> String {
        self.0
            .iter()
            .map(|name| {
                let o = podman(&["logs", "--tail", "40", name]);
                format!("--- {name}:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `podman run -d` of the image on the host network with the farm's
    /// folder at `/data`.
    fn start(&mut self, name: &str, data: &Path, command: &[&str]) {
        let volume = format!("{}:/data", data.display());
        let args = [&["run", "-d", "--name", name, "--network", "host", "-v", &volume, TAG], command].concat();
        ok(&podman(&args), &format!("starting container {name}"));
        self.0.push(name.to_string());
    }
}

#[test]
fn a_farm_of_containers_renders_and_survives_a_killed_worker() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights, stylefarm_tests::Need::Podman);
    if let Some(why) = podman_unusable() {
        eprintln!("SKIPPED a_farm_of_containers_renders_and_survives_a_killed_worker: {why}");
        return;
    }
    // The image from this run's binaries, smoke-tested by the script.
    let started = Instant::now();
    let binaries = bin("farmctl").parent().unwrap().to_path_buf();
    let o = Command::new(package_dir().join("../deploy/images.sh")).arg("--binaries").arg(&binaries).args(["--tag", TAG]).output().unwrap();
    let log = ok(&o, "deploy/images.sh");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("uid 10001") && stderr.contains("SERVING"), "the smoke test ran: {log}\n{stderr}");
    eprintln!("image built and smoke-tested in {:.0}s", started.elapsed().as_secs_f64());

    // The farm's folder, writable by the image's user.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    if std::os::unix::fs::chown(&data, Some(10001), Some(10001)).is_err() {
        // Not root: open the folder to everyone instead.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let tag = std::process::id();
    let mut containers = Containers(Vec::new());
    let listen = format!("127.0.0.1:{port}");
    containers.start(
        &format!("sf-coordinator-{tag}"),
        &data,
        &["farm-coordinator", "--listen", &listen, "--lease-seconds", LEASE, "--heartbeat-seconds", "1", "--data-dir", "/data"],
    );
    // The host drives it with its own farmctl, as a user would.
    let farm = Farm { dir, port, url: url.clone(), coordinator: None, workers: Procs(Vec::new()), extra: Vec::new(), dashboard: None, database: None };
    let health = Instant::now();
    while !farm.farmctl(&["--wait", "1", "health"]).status.success() {
        assert!(health.elapsed() < Duration::from_secs(30), "the coordinator container never served: {:?}", podman(&["logs", &format!("sf-coordinator-{tag}")]));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (a, b) = (format!("sf-worker-a-{tag}"), format!("sf-worker-b-{tag}"));
    for (name, short) in [(&a, "a"), (&b, "b")] {
        containers.start(name, &data, &["farm-worker", "--coordinator", &url, "--threads", "1", "--name", short]);
    }
    let (c1, c2, s1, s2) = (fixture("content.png"), fixture("init.png"), fixture("style.png"), fixture("init.png"));
    let id = farm.submit(&[&["--content", &c1, "--content", &c2, "--style", &s1, "--style", &s2], &RENDER[..]].concat());

    // Worker a's job, past its checkpoint at 10: SIGKILL the container.
    let on_a = |st: &serde_json::Value| {
        jobs(st).iter().find(|j| j["worker"].as_str().is_some_and(|w| w.starts_with("a-")) && j["state"] == "RUNNING" && j["progress"]["iteration"].as_u64() >= Some(12)).map(|j| j["job_id"].clone())
    };
    let st = wait_for(&farm, &containers, &id, "a job on worker a past iteration 12", |st| on_a(st).is_some());
    let victim = on_a(&st).unwrap();
    ok(&podman(&["kill", "-s", "KILL", &a]), "killing worker a");

    let st = wait_for(&farm, &containers, &id, "every job to succeed", all_succeeded);
    let job = jobs(&st).iter().find(|j| j["job_id"] == victim).unwrap();
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(job["started_from"].as_u64().unwrap() >= 10, "the second attempt resumed from a checkpoint: {job}");
    assert!(job["worker"].as_str().unwrap().starts_with("b-"), "{job}");

    // The outputs, from the farm's storage through the coordinator.
    let out = farm.dir.path().join("out");
    let o = farm.farmctl(&["fetch", &id, "-o", out.to_str().unwrap()]);
    ok(&o, "farmctl fetch");
    let pngs = std::fs::read_dir(&out).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "png")).count();
    assert_eq!(pngs, 5, "four renders and the contact sheet");
    eprintln!("container farm test took {:.0}s in all", started.elapsed().as_secs_f64());
}

/// [`Farm::wait_for`], but a timeout shows what each container logged.
fn wait_for(farm: &Farm, containers: &Containers, id: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(s) = farm.status(id).filter(|s| pred(s)) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(240), "timed out waiting for {what}: {:?}\n{}", farm.status(id), containers.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}
