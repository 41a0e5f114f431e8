//! Helpers for the end-to-end tests in `tests/tests/`: where the binaries
//! and the fixtures are (fixtures live in `tests/fixtures/`), and [`Farm`]:
//! a real coordinator and real workers as child processes on loopback,
//! driven by the real farmctl.

pub mod browser;
pub mod memcg;
pub mod needs;

pub use needs::Need;
pub mod scripted;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stylefarm_coordinator::db::testing::{FreshDatabase, Postgres};
use stylefarm_coordinator::db::Target;

/// A binary of this workspace, from the target folder the tests run from
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_path(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` before the tests", path.display());
    path
}

/// Where [`bin`] looks for `name`, whether it is there or not.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    exe.parent().and_then(Path::parent).map(|d| d.join(name)).expect("tests run from target/<profile>/deps")
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

/// A gRPC channel to `url`, waiting up to 30 s for it to accept.
pub async fn channel(url: &str) -> tonic::transport::Channel {
    let start = Instant::now();
    loop {
        match tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await {
            Ok(c) => return c,
            Err(e) => assert!(start.elapsed() < Duration::from_secs(30), "cannot reach {url}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port nobody listens on now.
/// A copy of fixture `fixture_name` as `DIR/NAME.png` (farmctl names an
/// input by its file's stem).
pub fn named_fixture(dir: &Path, name: &str, fixture_name: &str) -> String {
    let path = dir.join(format!("{name}.png"));
    std::fs::copy(fixture(fixture_name), &path).unwrap();
    path.to_string_lossy().into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Child processes that are killed when the test ends, however it ends.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A farm of child processes in a temporary folder: the coordinator
/// (`data/` holds its database and its storage, `data/storage`) and any
/// workers added; all killed when it drops.
pub struct Farm {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
    pub coordinator: Option<Child>,
    pub workers: Procs,
    /// Extra coordinator flags, kept for restarts.
    pub extra: Vec<String>,
    /// The dashboard's URL (`http://127.0.0.1:PORT/`), when started with
    /// `--http-listen`.
    pub dashboard: Option<String>,
    /// The farm's own PostgreSQL database, when the tests run on that
    /// backend ([`test_database`]); dropped after the coordinator.
    pub database: Option<FreshDatabase>,
}

/// Where a test farm keeps its state: the embedded SQLite file in its data
/// folder unless `STYLEFARM_TEST_BACKEND=postgres`, which gives each farm a
/// fresh database on the server `STYLEFARM_TEST_POSTGRES` names
/// (`scripts/test.sh` runs the contract tests a second time so).
pub fn test_database() -> Option<FreshDatabase> {
    match std::env::var("STYLEFARM_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => None,
        Ok("postgres") => {
            let server = Postgres::from_env().expect("STYLEFARM_TEST_BACKEND=postgres needs STYLEFARM_TEST_POSTGRES (a server's URL; scripts/test.sh starts one)");
            Some(server.fresh_database())
        }
        Ok(other) => panic!("STYLEFARM_TEST_BACKEND={other}: expected sqlite or postgres"),
    }
}

/// A fresh database on the PostgreSQL server `STYLEFARM_TEST_POSTGRES`
/// names, and its URL (for a second coordinator): for tests that
/// `require!(Need::Postgres)`.
pub fn postgres_database() -> (FreshDatabase, String) {
    let database = Postgres::from_env().expect("STYLEFARM_TEST_POSTGRES names a server (scripts/test.sh starts one)").fresh_database();
    let Target::Postgres(url) = database.target.clone() else { unreachable!("a PostgreSQL database has a URL") };
    (database, url)
}

/// The coordinator's --lease-seconds (heartbeats every second).
pub const LEASE: &str = "3";

impl Farm {
    pub fn start() -> Farm {
        Self::start_with(&[])
    }

    /// A coordinator with `extra` flags.
    pub fn start_with(extra: &[&str]) -> Farm {
        Self::start_on(test_database(), extra)
    }

    /// A coordinator on `database` (`None`: its data folder's SQLite file,
    /// or whatever `--database` in `extra` names) with `extra` flags.
    pub fn start_on(database: Option<FreshDatabase>, extra: &[&str]) -> Farm {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (url, extra) = (format!("http://127.0.0.1:{port}"), extra.iter().map(|s| s.to_string()).collect());
        let mut farm = Farm { dir, port, url, coordinator: None, workers: Procs(Vec::new()), extra, dashboard: None, database };
        farm.start_coordinator();
        farm
    }

    pub fn start_coordinator(&mut self) {
        let mut c = Command::new(bin("farm-coordinator"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--lease-seconds", LEASE, "--heartbeat-seconds", "1", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(self.database_flag())
            .args(&self.extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "coordinator said: {line}");
        if self.extra.iter().any(|a| a == "--http-listen") {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            self.dashboard = Some(dashboard_url(&line));
        }
        self.coordinator = Some(c);
    }

    /// `--database URL` when the farm is on PostgreSQL; nothing on SQLite.
    fn database_flag(&self) -> Vec<String> {
        match self.database.as_ref().map(|db| &db.target) {
            Some(Target::Postgres(url)) => vec!["--database".into(), url.clone()],
            Some(Target::Sqlite(path)) => vec!["--database".into(), format!("sqlite:{}", path.display())],
            None => Vec::new(),
        }
    }

    pub fn kill_coordinator(&mut self) {
        let mut c = self.coordinator.take().unwrap();
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }

    /// Starts a worker; returns its index for [`Farm::kill_worker`].
    pub fn add_worker(&mut self, name: &str) -> usize {
        self.add_worker_with(name, &[])
    }

    /// Starts a worker with `extra` flags.
    pub fn add_worker_with(&mut self, name: &str, extra: &[&str]) -> usize {
        let w = Command::new(bin("farm-worker"))
            .args(["--coordinator", &self.url, "--device", "cpu", "--threads", "1", "--name", name])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.workers.0.push(w);
        self.workers.0.len() - 1
    }

    /// Starts another coordinator on `database_url` (this farm's
    /// PostgreSQL database) sharing this farm's storage, with `extra`
    /// flags and `env` set, its data folder in `dir`; its URL. It is
    /// killed with `procs`.
    pub fn second_coordinator(&self, database_url: &str, dir: &Path, extra: &[&str], env: &[(&str, &str)], procs: &mut Procs) -> String {
        let port = free_port();
        let mut b = Command::new(bin("farm-coordinator"));
        b.args(["--listen", &format!("127.0.0.1:{port}"), "--lease-seconds", LEASE, "--heartbeat-seconds", "1", "--database", database_url, "--storage"])
            .arg(self.dir.path().join("data/storage"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut b = b.spawn().unwrap();
        let mut line = String::new();
        BufRead::read_line(&mut BufReader::new(b.stdout.take().unwrap()), &mut line).unwrap();
        assert!(line.contains("listening on"), "{line}");
        procs.0.push(b);
        format!("http://127.0.0.1:{port}")
    }

    pub fn kill_worker(&mut self, i: usize) {
        self.workers.0[i].kill().unwrap();
        self.workers.0[i].wait().unwrap();
    }

    pub fn farmctl(&self, args: &[&str]) -> Output {
        Command::new(bin("farmctl")).arg("--coordinator").arg(&self.url).args(args).output().unwrap()
    }

    pub fn submit(&self, args: &[&str]) -> String {
        let o = self.farmctl(&[&["submit"], args].concat());
        assert!(o.status.success(), "submit failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().lines().last().unwrap().trim().to_string()
    }

    pub fn status(&self, id: &str) -> Option<Value> {
        let o = self.farmctl(&["status", id, "--json"]);
        o.status.success().then(|| serde_json::from_slice(&o.stdout).unwrap())
    }

    /// Polls until `pred` holds for the collection's status.
    pub fn wait_for(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status(id) {
                if pred(&s) {
                    return s;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(240), "timed out waiting for {what}: {:?}", self.status(id));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The URL in `farm-coordinator`'s second line (with `--http-listen`).
pub fn dashboard_url(line: &str) -> String {
    line.trim().strip_prefix("farm-coordinator dashboard on ").unwrap_or_else(|| panic!("coordinator said: {line}")).to_string()
}

/// The jobs of a `farmctl status --json`.
pub fn jobs(s: &Value) -> &Vec<Value> {
    s["jobs"].as_array().unwrap()
}

pub fn all_succeeded(s: &Value) -> bool {
    jobs(s).iter().all(|j| j["state"] == "SUCCEEDED")
}

/// A small render with checkpoints, for farm tests.
pub const RENDER: [&str; 6] = ["--size", "32x24", "--iters", "60", "--checkpoint-every", "5"];

/// The same image rendered by `farmctl render` on this machine, no farm.
pub fn local_render(dir: &Path, content: &str, style: &str) -> Vec<u8> {
    local_render_with(dir, content, style, &["--size", "32x24", "--iters", "60"])
}

/// [`local_render`] with render flags `args` (size, iterations, …).
pub fn local_render_with(dir: &Path, content: &str, style: &str, args: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("local_{}_{}.png", Path::new(content).file_stem().unwrap().to_string_lossy(), Path::new(style).file_stem().unwrap().to_string_lossy()));
    let o = Command::new(bin("farmctl"))
        .args(["render", "-q", "--no-extras", "--content", content, "--style", style])
        .args(args)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

/// Fetches the collection and checks each image against a local render.
pub fn fetch_and_compare(farm: &Farm, id: &str, pairs: &[(&str, &str)]) {
    fetch_and_compare_with(farm, id, pairs, &["--size", "32x24", "--iters", "60"])
}

/// [`fetch_and_compare`] for jobs submitted with render flags `args`.
pub fn fetch_and_compare_with(farm: &Farm, id: &str, pairs: &[(&str, &str)], args: &[&str]) {
    let out = farm.dir.path().join("fetched");
    let o = farm.farmctl(&["fetch", id, "-o", &out.to_string_lossy()]);
    assert!(o.status.success(), "fetch: {}", String::from_utf8_lossy(&o.stderr));
    let sheet = String::from_utf8(o.stdout).unwrap().lines().last().unwrap().to_string();
    assert!(Path::new(&sheet).exists(), "contact sheet {sheet}");
    for (c, s) in pairs {
        let name = format!("{}_{}_v0.png", Path::new(c).file_stem().unwrap().to_string_lossy(), Path::new(s).file_stem().unwrap().to_string_lossy());
        let farmed = std::fs::read(out.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(farmed == local_render_with(farm.dir.path(), c, s, args), "{name} differs from the same render done locally");
    }
}

/// Fetches `http://addr/metrics` with a plain HTTP/1.1 request.
pub fn scrape_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let start = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            return body;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no metrics endpoint at {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An interceptor that sends `token` as the bearer token.
pub fn with_token(token: &str) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let value = tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")).unwrap();
    move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", value.clone());
        Ok(r)
    }
}

/// Sends and reads gRPC messages as bytes: a client that shares no code
/// with the farm.
#[derive(Clone, Copy, Default)]
pub struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: bytes::Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

/// A Submit of `contents` copies of the fixture photo (named c0, c1, …)
/// and the same image as the one style, rendered at 8×8 for `iters`
/// iterations: jobs for tests that drive the farm's calls themselves.
pub fn small_submit(contents: usize, iters: u32) -> stylefarm_proto::SubmitRequest {
    use stylefarm_proto::{input_image::Source, InputImage};
    let png = std::fs::read(fixture("content.png")).expect("the fixture photo");
    stylefarm_proto::SubmitRequest {
        contents: (0..contents).map(|i| InputImage { name: format!("c{i}"), source: Some(Source::Data(png.clone())) }).collect(),
        styles: vec![InputImage { name: "s".into(), source: Some(Source::Data(png)) }],
        variants_json: vec![format!(r#"{{"iters": {iters}}}"#)],
        width: 8,
        height: 8,
        ..Default::default()
    }
}

/// A process's resident memory in bytes (Linux `/proc`; 0 if unknown).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// [`rss_bytes`] in MiB.
pub fn rss_mib(pid: u32) -> u64 {
    rss_bytes(pid) >> 20
}
