//! `farmctl loadtest`: the coordinator under load, measured.
//!
//! Starts a real `farm-coordinator` (the binary beside this one) on a
//! scratch data folder, submits a collection of J jobs of tiny distinct
//! images, and lets N simulated workers speak the `Workers` service the way
//! `farm-worker` does — register, lease, heartbeat, write the output,
//! complete — without rendering. Optionally M watchers follow the
//! collection (reading, or `--lazy-watchers` never reading), some workers
//! die mid-job (`--stall`), the coordinator is SIGKILLed and restarted
//! (`--restarts`), and extra jobs wait in a lower-priority collection
//! (`--queued`) so Lease works against a deep queue while the measured
//! collection runs.
//!
//! First attempts' outputs are written before the clock starts (the
//! coordinator checks an output exists before a job may succeed; creating
//! thousands of folders on this machine is not what is measured).
//!
//! With `--database postgres://…` the coordinators keep their state in
//! PostgreSQL, and `--coordinators N` starts N of them on it: workers are
//! dealt to them in turn and move to the next one when theirs stops
//! answering, watchers follow the last one, and `--restarts` SIGKILLs
//! (and restarts) the first — the farm's failover, measured and checked.
//!
//! It prints completions/s, Lease/Heartbeat/Complete and another client's
//! GetCollection latency (p50/p99), the coordinator's CPU and peak RSS, and
//! checks that every job ended SUCCEEDED exactly once (one acknowledged
//! fencing token per job, one `succeeded` attempt per job). `--json` prints
//! the same as one object.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rand::Rng;
use stylefarm_proto as pb;
use stylefarm_shared::storage::Store;
use stylefarm_shared::client::{Bearer, ClientSecurity, Failover};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// Simulated workers.
    #[arg(long, default_value_t = 50)]
    workers: usize,
    /// Jobs in the collection the workers finish.
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Watchers following the collection.
    #[arg(long, default_value_t = 0)]
    watchers: usize,
    /// Watchers open the stream and never read it.
    #[arg(long)]
    lazy_watchers: bool,
    /// Watchers read every message but decode only its kind (snapshot or
    /// changes), as a relay would, instead of every job in it: the load
    /// generator shares the coordinator's cores, and decoding is the
    /// clients' work, not the coordinator's.
    #[arg(long)]
    skim_watchers: bool,
    /// Extra jobs queued in a lower-priority collection, behind the measured
    /// one (Lease against a deep queue).
    #[arg(long, default_value_t = 0)]
    queued: usize,
    /// Heartbeats each simulated job sends before completing.
    #[arg(long, default_value_t = 1)]
    heartbeats: usize,
    /// Chance that a worker dies with its job (stops heartbeating; its
    /// lease lapses and another worker takes the job).
    #[arg(long, default_value_t = 0.0)]
    stall: f64,
    /// SIGKILL and restart the coordinator this many times, spread over
    /// the run.
    #[arg(long, default_value_t = 0)]
    restarts: usize,
    /// The coordinator's --lease-seconds.
    #[arg(long, default_value_t = 4)]
    lease_seconds: u32,
    /// Where the coordinator keeps its database and storage (default: a
    /// temporary folder, removed after).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The coordinators' --database (default: SQLite in the data folder).
    /// A PostgreSQL database here must be empty: the run submits into it.
    #[arg(long, env = "STYLEFARM_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Coordinators serving at once (more than one needs a PostgreSQL
    /// --database).
    #[arg(long, default_value_t = 1)]
    coordinators: usize,
    /// Each coordinator's --writers on PostgreSQL (default: its own).
    #[arg(long)]
    writers: Option<usize>,
    /// A second user (`b`; the load is user `a`'s) queues this many jobs
    /// once a tenth of the load is done, the farm full: how long until
    /// b's first job starts, and each user's share of the busy workers
    /// while both have work.
    #[arg(long, default_value_t = 0)]
    second_user_jobs: usize,
    /// The second user's weight (`--share b=W`; the first weighs 1).
    #[arg(long, default_value_t = 1.0)]
    second_user_share: f64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// The run's tokens: the coordinator knows them (named users `a` and `b`),
/// and every client sends its own.
const TOKEN_A: &str = "loadtest-user-a";
const TOKEN_B: &str = "loadtest-user-b";
const TOKEN_WORKER: &str = "loadtest-worker";

type FarmClient = pb::farm_client::FarmClient<InterceptedService<Channel, Bearer>>;

/// A `Farm` client of user `token` on `ch`.
fn farm_client(ch: Channel, token: &str) -> Result<FarmClient> {
    let bearer = ClientSecurity { token: Some(token.into()), ..Default::default() }.bearer()?;
    Ok(pb::farm_client::FarmClient::with_interceptor(ch, bearer).max_decoding_message_size(256 << 20).max_encoding_message_size(1 << 30))
}

/// Two users sharing the farm: every lease (+1) and every end (−1) of a
/// job, by collection, in the order they happened (kept only in a run
/// with a second user), read once the run is over.
#[derive(Default)]
struct TwoUsers(Mutex<Vec<(Instant, String, i8)>>);

/// What the second user saw.
struct Sharing {
    /// Leases granted to the first user between b's submit and b's first.
    leases_before_first: usize,
    /// From b's submit to b's first lease.
    first_started: Duration,
    /// b's share of the busy workers averaged over each window of 50
    /// leases, from the first lease at which b held 90% of its share to
    /// b's last queued job: the lowest and highest.
    share_range: Option<(f64, f64)>,
}

impl TwoUsers {
    fn record(&self, on: bool, collection: &str, change: i8) {
        if let (true, Ok(mut events)) = (on, self.0.lock()) {
            events.push((Instant::now(), collection.to_string(), change));
        }
    }

    /// What user b (collection `b`, `jobs` of them, queued at `queued`)
    /// saw; `target` is b's share.
    fn sharing(&self, b: &str, jobs: usize, queued: Instant, target: f64) -> Option<Sharing> {
        let events = self.0.lock().ok()?.clone();
        let mut running = [0i64; 2];
        let (mut before, mut first, mut b_leased) = (0, None, 0);
        let mut fraction = Vec::new();
        for (at, collection, change) in events {
            let user = usize::from(collection == b);
            running[user] += change as i64;
            if change < 0 {
                continue;
            }
            // (b's jobs may be leased between the submit's commit and its
            // answer, the moment called `queued`.)
            if user == 1 {
                first.get_or_insert(at.saturating_duration_since(queued));
                b_leased += 1;
            } else if at < queued {
                continue;
            } else if first.is_none() {
                before += 1;
            }
            if b_leased < jobs {
                fraction.push(running[1].max(0) as f64 / (running[0] + running[1]).max(1) as f64);
            }
        }
        let settled = fraction.iter().position(|x| *x >= target * 0.9);
        let means: Vec<f64> = settled.map(|s| fraction[s..].windows(50).map(|w| w.iter().sum::<f64>() / 50.0).collect()).unwrap_or_default();
        let share_range = (!means.is_empty()).then(|| (means.iter().copied().fold(f64::INFINITY, f64::min), means.iter().copied().fold(f64::NEG_INFINITY, f64::max)));
        Some(Sharing { leases_before_first: before, first_started: first?, share_range })
    }
}

/// What every simulated client shares.
struct Shared {
    /// Every coordinator's URL; worker i starts on the i-th (in turn).
    urls: Vec<String>,
    /// The second user, in a run with one.
    two: TwoUsers,
    second_user_jobs: usize,
    /// The measured collection.
    measured: String,
    store: Store,
    stall: f64,
    heartbeats: usize,
    done: AtomicBool,
    lease: Latencies,
    heartbeat: Latencies,
    complete: Latencies,
    probe: Latencies,
    /// The simulated worker's own write of its output to storage.
    put: Latencies,
    /// Acknowledged completions: job → the fencing tokens acknowledged.
    acks: Mutex<HashMap<String, Vec<u64>>>,
    stalls: AtomicU64,
    resyncs: AtomicU64,
    /// Watchers that have read their first snapshot.
    watching: AtomicU64,
    /// Watchers whose last view had every job SUCCEEDED.
    saw_the_end: AtomicU64,
    /// What a coordinator's death costs a worker: from its first call that
    /// failed UNAVAILABLE (or could not connect) to its next that succeeded.
    outage: Latencies,
    /// The farm's longest time without an acknowledged Complete, and when
    /// the last one was (µs since `epoch`; 0 before the first).
    longest_quiet_us: AtomicU64,
    last_complete_us: AtomicU64,
    epoch: Instant,
}

impl Shared {
    /// An acknowledged Complete: ends the farm's quiet time.
    fn completed(&self) {
        let now = self.epoch.elapsed().as_micros() as u64;
        let before = self.last_complete_us.swap(now, Ordering::Relaxed);
        if before > 0 {
            self.longest_quiet_us.fetch_max(now.saturating_sub(before), Ordering::Relaxed);
        }
    }
}

/// Latencies of one call, in microseconds.
#[derive(Default)]
struct Latencies(Mutex<Vec<u32>>);

impl Latencies {
    fn record(&self, since: Instant) {
        if let Ok(mut v) = self.0.lock() {
            v.push(since.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
    }

    /// (p50, p99, count) in milliseconds.
    fn summary(&self) -> (f64, f64, usize) {
        let mut v = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        if v.is_empty() {
            return (0.0, 0.0, 0);
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        (at(0.5), at(0.99), v.len())
    }

    /// The longest, in milliseconds.
    fn max(&self) -> f64 {
        self.0.lock().ok().and_then(|v| v.iter().max().copied()).unwrap_or(0) as f64 / 1000.0
    }
}

/// The coordinator under test, a child process.
struct Coordinator {
    child: Option<Child>,
    data: PathBuf,
    /// Its number (its log is `coordinator-N.log`).
    index: usize,
    database: Option<String>,
    writers: Option<usize>,
    port: u16,
    lease_seconds: u32,
    max_jobs: usize,
    /// `--share b=W`.
    second_user_share: f64,
    /// CPU seconds and peak RSS of earlier lives (restarts).
    cpu_before: f64,
    peak_rss: u64,
}

impl Coordinator {
    fn start(&mut self) -> Result<()> {
        let exe = std::env::current_exe()?.with_file_name("farm-coordinator");
        if !exe.exists() {
            bail!("{} is missing: build the workspace's binaries (`cargo build --release --bins`)", exe.display());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data.join(format!("coordinator-{}.log", self.index)))?;
        let mut command = Command::new(&exe);
        if let Some(database) = &self.database {
            command.env("STYLEFARM_DATABASE", database);
        }
        if let Some(writers) = self.writers {
            command.args(["--writers", &writers.to_string()]);
        }
        let mut child = command
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--data-dir"])
            .arg(&self.data)
            .args(["--lease-seconds", &self.lease_seconds.to_string(), "--heartbeat-seconds", "1"])
            .args(["--max-jobs", &self.max_jobs.to_string(), "--max-request-mb", "1024", "--max-watchers-per-client", "100000"])
            .args(["--max-watchers", "100000", "--max-connections-per-address", "100000", "--max-connections", "100000"])
            .args(["--user-token", &format!("a={TOKEN_A}"), "--user-token", &format!("b={TOKEN_B}"), "--worker-token", TOKEN_WORKER])
            .args(["--share", &format!("b={}", self.second_user_share)])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("coordinator stdout")?).read_line(&mut line)?;
        let addr = line.trim().rsplit(' ').next().unwrap_or_default().to_string();
        self.port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).with_context(|| format!("the coordinator said: {line}"))?;
        self.child = Some(child);
        Ok(())
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (CPU seconds, peak RSS bytes) of the running process.
    fn usage(&self) -> (f64, u64) {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else { return (0.0, 0) };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name's closing parenthesis: utime and
        // stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let peak = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        (cpu, peak)
    }

    fn kill(&mut self) {
        let (cpu, peak) = self.usage();
        self.cpu_before += cpu;
        self.peak_rss = self.peak_rss.max(peak);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn channel(url: &str) -> Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(url.to_string())?.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => bail!("cannot reach {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A tiny PNG that differs from every other index's.
fn tiny_png(i: usize) -> Result<Vec<u8>> {
    let rgb: Vec<u8> = (0..8 * 8).flat_map(|p| [(i & 0xff) as u8, ((i >> 8) & 0xff) as u8, ((i >> 16) as u8).wrapping_add(p as u8)]).collect();
    Ok(stylefarm_shared::image_io::encode_png(&rgb, 8, 8, "loadtest")?)
}

fn collection_request(name: &str, jobs: usize, priority: i32, offset: usize) -> Result<pb::SubmitRequest> {
    let contents = (0..jobs)
        .map(|i| Ok(pb::InputImage { name: format!("c{}", i + offset), source: Some(pb::input_image::Source::Data(tiny_png(i + offset)?)) }))
        .collect::<Result<Vec<_>>>()?;
    Ok(pb::SubmitRequest {
        name: name.into(),
        contents,
        styles: vec![pb::InputImage { name: "s".into(), source: Some(pb::input_image::Source::Data(tiny_png(usize::MAX >> 8)?)) }],
        variants_json: vec![r#"{"iters": 1}"#.into()],
        width: 8,
        height: 8,
        priority,
        ..Default::default()
    })
}

fn transient(s: &tonic::Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

/// One simulated worker: lease, heartbeat, write the output, complete —
/// until the collection is done. Rides out coordinator restarts.
async fn worker(i: usize, shared: Arc<Shared>) -> Result<()> {
    // Each incarnation its own name: one that comes back after dying (a
    // simulated stall) is a new worker, not one waiting a lease length for
    // its old name (a live name is refused).
    let mut incarnation = 0u32;
    let register = |incarnation: u32| pb::RegisterRequest { name: format!("sim{i}-{incarnation}"), device: "cpu".into(), ..Default::default() };
    // Its coordinators, starting at its own (the workers spread over them);
    // a call that cannot reach one sends the next to another, as a real
    // worker's do (one rule: `Rotation`).
    let n = shared.urls.len();
    let urls: Vec<String> = shared.urls.iter().cycle().skip(i % n).take(n).cloned().collect();
    let security = ClientSecurity { token: Some(TOKEN_WORKER.into()), ..Default::default() };
    let mut client = pb::workers_client::WorkersClient::with_interceptor(Failover::new(&security, &urls)?, security.bearer()?);
    let mut id = String::new();
    // Since when this worker has had no coordinator answering.
    let mut down_since: Option<Instant> = None;
    // Its coordinator stopped answering: a pause before the next call,
    // which goes to the next coordinator (with one, the same one again,
    // once it is back).
    macro_rules! fail_over {
        () => {{
            down_since.get_or_insert_with(Instant::now);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }};
    }
    // A call succeeded: the outage, if there was one, is over.
    macro_rules! answered {
        () => {{
            if let Some(since) = down_since.take() {
                shared.outage.record(since);
            }
        }};
    }
    while !shared.done.load(Ordering::Relaxed) {
        if id.is_empty() {
            incarnation += 1;
            match client.register(register(incarnation)).await {
                Ok(r) => {
                    answered!();
                    id = r.into_inner().worker_id
                }
                Err(s) if transient(&s) => fail_over!(),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            continue;
        }
        let t = Instant::now();
        let leased = match client.lease(pb::LeaseRequest { worker_id: id.clone(), free_memory_bytes: 0 }).await {
            Ok(r) => {
                answered!();
                r.into_inner()
            }
            Err(s) if transient(&s) => {
                fail_over!();
                continue;
            }
            // Forgotten, or quarantined after its leases lapsed on an
            // overloaded coordinator: a restarted worker registers anew.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {
                id.clear();
                continue;
            }
            Err(s) => bail!("lease: {s}"),
        };
        shared.lease.record(t);
        let Some(job) = leased.job else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let token = leased.fencing_token;
        let two_users = shared.second_user_jobs > 0;
        shared.two.record(two_users, &job.collection_id, 1);
        if rand::rng().random_bool(shared.stall.clamp(0.0, 1.0)) {
            // This worker dies with its job: it never heartbeats again, and
            // comes back as a new worker.
            shared.stalls.fetch_add(1, Ordering::Relaxed);
            id.clear();
            continue;
        }
        for _ in 0..shared.heartbeats {
            let r = pb::HeartbeatRequest { worker_id: id.clone(), job_id: job.job_id.clone(), fencing_token: token, ..Default::default() };
            let t = Instant::now();
            match client.heartbeat(r).await {
                Ok(_) => {
                    answered!();
                    shared.heartbeat.record(t)
                }
                Err(s) if transient(&s) => fail_over!(),
                Err(_) => {}
            }
        }
        // First attempts' outputs in the measured collection were written
        // before the clock started; a later attempt, or a job of another
        // collection (the probe's, leased once the load is done), writes
        // its own.
        if leased.attempt > 1 || job.collection_id != shared.measured {
            let t = Instant::now();
            shared.store.put(&format!("{}/output.png", job.prefix), tiny_png(0)?).await?;
            shared.put.record(t);
        }
        let r = pb::CompleteRequest { worker_id: id.clone(), job_id: job.job_id.clone(), fencing_token: token, output_name: "output.png".into(), progress: None };
        loop {
            let t = Instant::now();
            match client.complete(r.clone()).await {
                Ok(_) => {
                    answered!();
                    shared.complete.record(t);
                    shared.completed();
                    shared.two.record(two_users, &job.collection_id, -1);
                    if let Ok(mut acks) = shared.acks.lock() {
                        let tokens = acks.entry(job.job_id.clone()).or_default();
                        if !tokens.contains(&token) {
                            tokens.push(token);
                        }
                    }
                    break;
                }
                // A reply lost to a restart: the same call again (it is
                // idempotent under the token), to another coordinator if
                // there is one.
                Err(s) if transient(&s) => fail_over!(),
                // The lease lapsed while the coordinator was down and the
                // job went to another worker: not ours any more.
                Err(_) => {
                    shared.two.record(two_users, &job.collection_id, -1);
                    break;
                }
            }
        }
    }
    Ok(())
}

/// One watcher: follows the collection (or holds the stream unread),
/// reconnecting after restarts, until the run is done.
async fn watcher(id: String, lazy: bool, skim: bool, shared: Arc<Shared>) {
    // Every job's last state as this watcher was told it.
    let mut view: HashMap<String, i32> = HashMap::new();
    let mut ended = false;
    while !shared.done.load(Ordering::Relaxed) {
        let Some(url) = shared.urls.last() else { return };
        let Ok(ch) = channel(url).await else { return };
        let request = pb::CollectionRef { collection_id: id.clone() };
        let kinds: Result<Kinds, tonic::Status> = if skim {
            skim_watch(ch, request).await
        } else {
            let Ok(mut farm) = farm_client(ch, TOKEN_A) else { return };
            match farm.watch(request).await {
                Ok(s) => {
                    let mut events = s.into_inner();
                    let mut snapshots = 0u64;
                    while let Some(Ok(e)) = tokio_stream::StreamExt::next(&mut events).await {
                        match e.event {
                            Some(pb::watch_event::Event::Snapshot(c)) => {
                                if snapshots == 0 {
                                    shared.watching.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    shared.resyncs.fetch_add(1, Ordering::Relaxed);
                                }
                                snapshots += 1;
                                view = c.jobs.into_iter().map(|j| (j.job_id, j.state)).collect();
                            }
                            Some(pb::watch_event::Event::Changes(c)) => view.extend(c.jobs.into_iter().map(|j| (j.job_id, j.state))),
                            None => {}
                        }
                        let done = !view.is_empty() && view.values().all(|&s| s == pb::JobState::Succeeded as i32);
                        if done && !ended {
                            ended = true;
                            shared.saw_the_end.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                Err(s) => Err(s),
            }
        };
        let Ok(mut kinds) = kinds else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if lazy {
            while !shared.done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            return;
        }
        let mut snapshots = 0u64;
        while let Some(Ok(kind)) = tokio_stream::StreamExt::next(&mut kinds).await {
            if kind == 1 {
                if snapshots == 0 {
                    shared.watching.fetch_add(1, Ordering::Relaxed);
                }
                snapshots += 1;
                if snapshots > 1 {
                    shared.resyncs.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The kinds of a watch's messages: 1 a snapshot, 2 changes.
type Kinds = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<u8, tonic::Status>> + Send>>;

/// Watch, each message read whole and decoded only as far as its kind:
/// the field number of `WatchEvent`'s one field (the first byte of its
/// encoding: field 1 `snapshot`, field 2 `changes`).
async fn skim_watch(ch: Channel, request: pb::CollectionRef) -> Result<Kinds, tonic::Status> {
    #[derive(Clone, Copy, Default)]
    struct Skim;
    impl tonic::codec::Codec for Skim {
        type Encode = pb::CollectionRef;
        type Decode = u8;
        type Encoder = tonic_prost::ProstEncoder<pb::CollectionRef>;
        type Decoder = Skim;
        fn encoder(&mut self) -> Self::Encoder {
            tonic_prost::ProstEncoder::default()
        }
        fn decoder(&mut self) -> Skim {
            Skim
        }
    }
    impl tonic::codec::Decoder for Skim {
        type Item = u8;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<u8>, tonic::Status> {
            use bytes::Buf;
            let tag = src.chunk().first().copied().unwrap_or(0);
            src.advance(src.remaining());
            Ok(Some(tag >> 3))
        }
    }
    let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(256 << 20);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!("/{}/Watch", pb::farm_server::SERVICE_NAME)).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut request = tonic::Request::new(request);
    if let Ok(bearer) = format!("Bearer {TOKEN_A}").parse() {
        request.metadata_mut().insert("authorization", bearer);
    }
    let stream = grpc.server_streaming(request, path, Skim).await?.into_inner();
    Ok(Box::pin(stream))
}

/// Writes every job's first-attempt output before the clock starts: what
/// is measured is the coordinator, not how fast this machine creates 5000
/// folders and files for the simulated workers (on a 2-core VM, 200 such
/// writes at once take ~120 ms each and would set the pace).
async fn prewrite_outputs(data: &Path, collection: &str, jobs: usize, url: &str) -> Result<()> {
    let mut farm = farm_client(channel(url).await?, TOKEN_A)?;
    let mut ids = Vec::with_capacity(jobs);
    let mut page_token = String::new();
    loop {
        let page = farm.list_jobs(pb::ListJobsRequest { collection_id: collection.into(), page_size: 10_000, page_token }).await?.into_inner();
        ids.extend(page.jobs.into_iter().map(|j| j.job_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let storage = data.join("storage");
    let collection = collection.to_string();
    // A real (tiny) image, so `farmctl fetch` of the result works.
    let png = tiny_png(0)?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        for id in ids {
            let folder = storage.join(stylefarm_shared::layout::attempt(&collection, &id, 1));
            std::fs::create_dir_all(&folder)?;
            std::fs::write(folder.join("output.png"), &png)?;
        }
        Ok(())
    })
    .await??;
    Ok(())
}

pub fn run(args: LoadtestArgs) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let data = args.data_dir.clone().unwrap_or_else(|| scratch.path().to_path_buf());
    std::fs::create_dir_all(&data)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(drive(args, &data))
}

async fn drive(args: LoadtestArgs, data: &Path) -> Result<()> {
    let database = args.database.clone().filter(|d| !d.is_empty());
    if args.coordinators > 1 && !database.as_deref().is_some_and(|d| d.starts_with("postgres")) {
        bail!("--coordinators {} needs a PostgreSQL --database (SQLite is one coordinator's file)", args.coordinators);
    }
    let mut coordinators = Vec::new();
    for index in 0..args.coordinators.max(1) {
        let mut c = Coordinator {
            child: None,
            data: data.to_path_buf(),
            index,
            database: database.clone(),
            writers: args.writers,
            port: 0,
            lease_seconds: args.lease_seconds,
            max_jobs: args.jobs.max(args.queued).max(args.second_user_jobs).max(1),
            second_user_share: args.second_user_share,
            cpu_before: 0.0,
            peak_rss: 0,
        };
        c.start()?;
        coordinators.push(c);
    }
    let urls: Vec<String> = coordinators.iter().map(Coordinator::url).collect();
    // This client (submits, the probe, progress) talks to the last
    // coordinator, which is never killed; restarts hit the first.
    let url = urls.last().cloned().context("no coordinator")?;
    let mut farm = farm_client(channel(&url).await?, TOKEN_A)?;
    if args.queued > 0 {
        farm.submit(collection_request("deep-queue", args.queued, -1, 1 << 20)?).await.context("submitting the deep queue")?;
    }
    let id = farm.submit(collection_request("load", args.jobs, 0, 0)?).await.context("submitting the collection")?.into_inner().collection_id;
    // Another user's small collection, read while the farm is busy: how
    // long everyone else waits (its jobs run after the load's).
    let other = farm.submit(collection_request("other", 10, -2, 1 << 24)?).await.context("submitting the probe's collection")?.into_inner().collection_id;

    prewrite_outputs(data, &id, args.jobs, &url).await?;
    let shared = Arc::new(Shared {
        urls: urls.clone(),
        two: TwoUsers::default(),
        second_user_jobs: args.second_user_jobs,
        measured: id.clone(),
        store: Store::open(&data.join("storage").to_string_lossy())?,
        stall: args.stall,
        heartbeats: args.heartbeats,
        done: AtomicBool::new(false),
        lease: Latencies::default(),
        heartbeat: Latencies::default(),
        complete: Latencies::default(),
        probe: Latencies::default(),
        put: Latencies::default(),
        acks: Mutex::new(HashMap::new()),
        stalls: AtomicU64::new(0),
        resyncs: AtomicU64::new(0),
        watching: AtomicU64::new(0),
        saw_the_end: AtomicU64::new(0),
        outage: Latencies::default(),
        longest_quiet_us: AtomicU64::new(0),
        last_complete_us: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    let watchers: Vec<_> = (0..args.watchers).map(|_| tokio::spawn(watcher(id.clone(), args.lazy_watchers, args.skim_watchers, shared.clone()))).collect();
    // Let the watchers connect, and those that read take their first
    // snapshot, before the clock starts: what is measured is following.
    let connecting = Instant::now();
    while !args.lazy_watchers && (shared.watching.load(Ordering::Relaxed) as usize) < args.watchers && connecting.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(if args.watchers > 0 { 1000 } else { 0 })).await;
    let cpu_of = |cs: &[Coordinator]| cs.iter().map(|c| c.cpu_before + c.usage().0).sum::<f64>();
    let cpu_at_start = cpu_of(&coordinators);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.workers).map(|i| tokio::spawn(worker(i, shared.clone()))).collect();

    // Another client's view: GetCollection of its own small collection
    // every 20 ms, timed; the load's progress from ListCollections'
    // counts; restarts when the load is that far along.
    let mut restarts_done = 0;
    // The second user's collection and when its submit was answered.
    let mut second: Option<(String, Instant)> = None;
    let deadline = started + Duration::from_secs(600);
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        if farm.get_collection(pb::CollectionRef { collection_id: other.clone() }).await.is_ok() {
            shared.probe.record(t);
        }
        tick += 1;
        // Progress every 200 ms; every 20 ms while a restart is still due
        // (a fast run may be over before the first look otherwise).
        if tick % 10 != 0 && restarts_done >= args.restarts {
            continue;
        }
        let listed = farm.list_collections(pb::ListCollectionsRequest::default()).await;
        let succeeded = match listed {
            Ok(l) => l.into_inner().collections.iter().find(|c| c.collection_id == id).and_then(|c| c.counts.clone()).map_or(0, |n| n.succeeded as usize),
            Err(_) => {
                farm = farm_client(channel(&url).await?, TOKEN_A)?;
                continue;
            }
        };
        if succeeded >= args.jobs {
            break;
        }
        if args.second_user_jobs > 0 && second.is_none() && succeeded * 10 >= args.jobs {
            let mut b = farm_client(channel(&url).await?, TOKEN_B)?;
            let submitted = b.submit(collection_request("second user", args.second_user_jobs, 0, 1 << 26)?).await.context("the second user's submit")?;
            second = Some((submitted.into_inner().collection_id, Instant::now()));
        }
        if restarts_done < args.restarts && succeeded * (args.restarts + 1) >= args.jobs * (restarts_done + 1) {
            coordinators[0].kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            coordinators[0].start()?;
            restarts_done += 1;
        }
        if Instant::now() > deadline {
            bail!("the collection did not finish in 10 minutes ({succeeded} of {} jobs)", args.jobs);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_of(&coordinators) - cpu_at_start;
    let peak_rss = coordinators.iter().map(|c| c.peak_rss.max(c.usage().1)).max().unwrap_or(0);
    // Watchers that decode are told the end a moment after it is listed.
    let reading = if args.lazy_watchers || args.skim_watchers { 0 } else { args.watchers as u64 };
    let waiting = Instant::now();
    while shared.saw_the_end.load(Ordering::Relaxed) < reading && waiting.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.done.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    for w in watchers {
        let _ = w.await;
    }

    // Exactly once: every job SUCCEEDED, one acknowledged token each, one
    // succeeded attempt each.
    let mut farm = farm_client(channel(&url).await?, TOKEN_A)?;
    let mut problems = Vec::new();
    let mut page_token = String::new();
    let mut jobs = Vec::new();
    loop {
        let page = farm.list_jobs(pb::ListJobsRequest { collection_id: id.clone(), page_size: 5000, page_token }).await?.into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let acks = shared.acks.lock().map(|a| a.clone()).unwrap_or_default();
    for j in &jobs {
        if j.state != pb::JobState::Succeeded as i32 {
            problems.push(format!("{} ended {:?}", j.job_id, pb::JobState::try_from(j.state)));
        }
        let tokens = acks.get(&j.job_id).map_or(0, Vec::len);
        if tokens != 1 {
            problems.push(format!("{} was acknowledged complete under {tokens} leases", j.job_id));
        }
        let detail = farm.get_job(pb::JobRef { job_id: j.job_id.clone() }).await?.into_inner();
        let succeeded = detail.attempts.iter().filter(|a| a.outcome == "succeeded").count();
        if succeeded != 1 {
            problems.push(format!("{} has {succeeded} succeeded attempts", j.job_id));
        }
    }
    if jobs.len() != args.jobs {
        problems.push(format!("{} jobs listed, {} submitted", jobs.len(), args.jobs));
    }
    let saw_the_end = shared.saw_the_end.load(Ordering::Relaxed);
    if saw_the_end < reading {
        problems.push(format!("{} of {reading} watchers were not told every job succeeded", reading - saw_the_end));
    }

    let b_share = args.second_user_share / (1.0 + args.second_user_share);
    let sharing = second.as_ref().and_then(|(b, queued)| shared.two.sharing(b, args.second_user_jobs, *queued, b_share));
    if args.second_user_jobs > 0 && sharing.is_none() {
        problems.push("the second user's jobs never started".into());
    }
    let (lease, heartbeat, complete, probe) = (shared.lease.summary(), shared.heartbeat.summary(), shared.complete.summary(), shared.probe.summary());
    let outage = shared.outage.summary();
    let quiet_ms = shared.longest_quiet_us.load(Ordering::Relaxed) as f64 / 1000.0;
    let per_second = args.jobs as f64 / elapsed;
    let exactly_once = problems.is_empty();
    if args.json {
        let ms = |(p50, p99, n): (f64, f64, usize)| serde_json::json!({"p50_ms": p50, "p99_ms": p99, "calls": n});
        let v = serde_json::json!({
            "workers": args.workers, "jobs": args.jobs, "watchers": args.watchers, "lazy_watchers": args.lazy_watchers, "skim_watchers": args.skim_watchers,
            "queued": args.queued, "restarts": restarts_done, "coordinators": coordinators.len(), "writers": args.writers,
            "database": if database.is_some() { "postgres" } else { "sqlite" }, "watchers_saw_the_end": saw_the_end, "stalls": shared.stalls.load(Ordering::Relaxed),
            "seconds": elapsed, "completions_per_second": per_second,
            "lease": ms(lease), "heartbeat": ms(heartbeat), "complete": ms(complete), "get_collection": ms(probe),
            "coordinator_cpu_cores": cpu / elapsed, "coordinator_peak_rss_mb": peak_rss as f64 / (1 << 20) as f64,
            "watch_resyncs": shared.resyncs.load(Ordering::Relaxed),
            "worker_outage": {"p50_ms": outage.0, "p99_ms": outage.1, "max_ms": shared.outage.max(), "outages": outage.2},
            "longest_without_a_completion_ms": quiet_ms,
            "second_user": sharing.as_ref().map(|s| serde_json::json!({
                "jobs": args.second_user_jobs, "share": b_share, "leases_to_others_before_its_first": s.leases_before_first,
                "first_started_ms": s.first_started.as_secs_f64() * 1000.0,
                "share_over_50_leases": s.share_range.map(|(lo, hi)| [lo, hi]),
            })),
            "exactly_once": exactly_once, "problems": problems.iter().take(20).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "{} coordinator(s) on {}, {} workers, {} jobs, {} watchers{}, {} queued behind, {} restarts, {} stalled workers",
            coordinators.len(),
            if database.is_some() { "PostgreSQL" } else { "SQLite" },
            args.workers,
            args.jobs,
            args.watchers,
            if args.lazy_watchers { " (never reading)" } else if args.skim_watchers { " (reading, not decoding)" } else { "" },
            args.queued,
            restarts_done,
            shared.stalls.load(Ordering::Relaxed)
        );
        println!("  {per_second:.0} completions/s ({elapsed:.1} s)");
        for (name, (p50, p99, n)) in [("Lease", lease), ("Heartbeat", heartbeat), ("Complete", complete), ("GetCollection*", probe), ("output write†", shared.put.summary())] {
            println!("  {name:<14} p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   ({n} calls)");
        }
        println!("  (* another client's 10-job collection, every 20 ms; † a simulated worker's own write, for attempts after the first)");
        if outage.2 > 0 {
            println!(
                "  coordinator deaths: {} worker outages (first failed call to next answer) p50 {:.0} ms / p99 {:.0} ms / max {:.0} ms; the farm's longest time without a completion {quiet_ms:.0} ms",
                outage.2,
                outage.0,
                outage.1,
                shared.outage.max()
            );
        }
        if let Some(s) = &sharing {
            println!(
                "  a second user's {} jobs, queued with a tenth of the load done: its first started {:.0} ms after the submit's answer, {} leases to the first user before it; its share of the busy workers over every 50 leases while it had jobs queued: {} (its share: {b_share:.2})",
                args.second_user_jobs,
                s.first_started.as_secs_f64() * 1000.0,
                s.leases_before_first,
                s.share_range.map_or("not measured (it never had 50 leases' worth queued)".to_string(), |(lo, hi)| format!("{lo:.3} to {hi:.3}")),
            );
        }
        println!("  coordinators: {:.2} cores in all, peak RSS {:.0} MB (the database's own CPU not counted)", cpu / elapsed, peak_rss as f64 / (1 << 20) as f64);
        println!("  exactly once: {}", if exactly_once { "yes".to_string() } else { format!("NO: {}", problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ")) });
    }
    if !exactly_once {
        bail!("{} jobs did not end SUCCEEDED exactly once", problems.len());
    }
    Ok(())
}
