//! The farm's contract as a third party meets it: a client written against
//! `farm.proto` and the README alone, some of it hostile, against real
//! coordinator and worker processes on loopback. Each test is one promise
//! the contract makes (and a way it was broken before v2).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sha2::Digest;
use stylefarm_proto as pb;
use stylefarm_tests::{channel, all_succeeded, bin, fetch_and_compare, fixture, jobs, Farm, RENDER};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

type Interceptor = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type FarmClient = pb::farm_client::FarmClient<InterceptedService<Channel, Interceptor>>;
type WorkersClient = pb::workers_client::WorkersClient<InterceptedService<Channel, Interceptor>>;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn bearer(token: Option<&str>) -> Interceptor {
    let value = token.map(|t| MetadataValue::try_from(format!("Bearer {t}")).unwrap());
    Box::new(move |mut r: Request<()>| {
        if let Some(v) = &value {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    })
}


async fn farm_client(url: &str, token: Option<&str>) -> FarmClient {
    pb::farm_client::FarmClient::with_interceptor(channel(url).await, bearer(token))
}

async fn workers_client(url: &str, token: Option<&str>) -> WorkersClient {
    pb::workers_client::WorkersClient::with_interceptor(channel(url).await, bearer(token))
}

fn bytes(fixture_name: &str) -> Vec<u8> {
    std::fs::read(fixture(fixture_name)).unwrap()
}

fn upload(name: &str, fixture_name: &str) -> pb::InputImage {
    pb::InputImage { name: name.into(), source: Some(pb::input_image::Source::Data(bytes(fixture_name))) }
}

fn by_url(name: &str, url: &str) -> pb::InputImage {
    pb::InputImage { name: name.into(), source: Some(pb::input_image::Source::Url(url.into())) }
}

/// A tiny collection: these contents × one style, two iterations.
fn small(contents: Vec<pb::InputImage>) -> pb::SubmitRequest {
    pb::SubmitRequest {
        contents,
        styles: vec![upload("style", "style.png")],
        variants_json: vec![r#"{"iters": 2}"#.into()],
        width: 16,
        height: 12,
        ..Default::default()
    }
}

async fn register(w: &mut WorkersClient, name: &str, memory_bytes: u64) -> String {
    let r = pb::RegisterRequest { name: name.into(), device: "cpu".into(), memory_bytes, ..Default::default() };
    w.register(r).await.unwrap().into_inner().worker_id
}

async fn lease(w: &mut WorkersClient, worker: &str) -> pb::LeaseResponse {
    w.lease(pb::LeaseRequest { worker_id: worker.into(), free_memory_bytes: 0 }).await.unwrap().into_inner()
}

async fn job_state(f: &mut FarmClient, job: &str) -> pb::JobDetail {
    f.get_job(pb::JobRef { job_id: job.into() }).await.unwrap().into_inner()
}

fn state(d: &pb::JobDetail) -> pb::JobState {
    pb::JobState::try_from(d.job.as_ref().unwrap().state).unwrap()
}

#[test]
fn inputs_come_only_from_uploads_farm_keys_or_an_input_prefix() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let private = tempfile::tempdir().unwrap();
    let allowed = tempfile::tempdir().unwrap();
    std::fs::write(private.path().join("secret.png"), bytes("content.png")).unwrap();
    std::fs::write(allowed.path().join("photo.png"), bytes("content.png")).unwrap();
    // 20 MiB that claims to be an image: refused by its size, never read.
    std::fs::File::create(allowed.path().join("huge.png")).unwrap().set_len(20 << 20).unwrap();
    let prefix = allowed.path().to_string_lossy().into_owned();
    let secret = private.path().join("secret.png").to_string_lossy().into_owned();
    let farm = Farm::start_with(&["--input-prefix", &prefix, "--max-input-megapixels", "1"]);
    rt().block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        let outside = private.path().to_string_lossy().into_owned();
        let private_name = private.path().file_name().unwrap().to_string_lossy().into_owned();
        let refused = [
            format!("file://{secret}"),
            secret.clone(),
            format!("{outside}/missing.png"),
            format!("{prefix}/../{private_name}/secret.png"),
            format!("{prefix}//photo.png"),
            "s3://another-bucket/secret.png".to_string(),
            "inputs/../farm.db".to_string(),
            format!("file://{outside}/new-folder/x.png"),
            farm.dir.path().join("data/farm.db").to_string_lossy().into_owned(),
        ];
        let mut messages = BTreeSet::new();
        for url in &refused {
            let e = f.submit(small(vec![by_url("c", url)])).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
            messages.insert(e.message().to_string());
        }
        assert_eq!(messages.len(), 1, "one answer whatever exists there: {messages:?}");
        assert!(!private.path().join("new-folder").exists(), "nothing is created for a refused URL");

        let e = f.submit(small(vec![by_url("c", &format!("{prefix}/huge.png"))])).await.unwrap_err();
        assert!(e.code() == Code::InvalidArgument && e.message().contains("over the input limit"), "{e:?}");

        f.submit(small(vec![by_url("c", &format!("{prefix}/photo.png"))])).await.expect("a URL under --input-prefix");
        let key = format!("inputs/{:x}", sha2::Sha256::digest(bytes("style.png")));
        f.submit(small(vec![by_url("c", &key)])).await.expect("the key of an earlier upload");
        let listed = f.list_collections(pb::ListCollectionsRequest::default()).await.unwrap().into_inner().collections;
        assert_eq!(listed.len(), 2, "no refused submit left a collection");
    });
}

#[test]
fn worker_calls_are_checked_against_the_lease_and_retries_are_safe() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start();
    rt().block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        let id = f.submit(small(vec![upload("a", "content.png"), upload("b", "init.png")])).await.unwrap().into_inner().collection_id;
        let mut w = workers_client(&farm.url, None).await;

        let e = w.lease(pb::LeaseRequest { worker_id: "ghost-1234".into(), free_memory_bytes: 0 }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "only registered workers lease: {e:?}");
        let (a, b) = (register(&mut w, "a", 0).await, register(&mut w, "b", 0).await);
        let (la, lb) = (lease(&mut w, &a).await, lease(&mut w, &b).await);
        let (job_a, job_b) = (la.job.clone().unwrap().job_id, lb.job.clone().unwrap().job_id);
        assert!(lb.fencing_token.wrapping_sub(la.fencing_token) != 1, "tokens are not a sequence: {} then {}", la.fencing_token, lb.fencing_token);

        // b may not act on a's lease, even knowing its token.
        let hb = |worker: &str, token, progress: Option<pb::Progress>, checkpoint: &str| pb::HeartbeatRequest {
            worker_id: worker.into(),
            job_id: job_a.clone(),
            fencing_token: token,
            progress,
            checkpoint_name: checkpoint.into(),
            checkpoint_iteration: 1,
            resumed_from: None,
        };
        let complete = |worker: &str, name: &str| pb::CompleteRequest {
            worker_id: worker.into(),
            job_id: job_a.clone(),
            fencing_token: la.fencing_token,
            output_name: name.into(),
            progress: None,
        };
        let fail = |worker: &str, job: &str, token| pb::FailRequest {
            worker_id: worker.into(),
            job_id: job.into(),
            fencing_token: token,
            kind: pb::FailureKind::Internal as i32,
            message: "boom".into(),
        };
        assert_eq!(w.heartbeat(hb(&b, la.fencing_token, None, "")).await.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(w.complete(complete(&b, "output.png")).await.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(w.fail(fail(&b, &job_a, la.fencing_token)).await.unwrap_err().code(), Code::PermissionDenied);
        let release = pb::ReleaseRequest { worker_id: b.clone(), job_id: job_a.clone(), fencing_token: la.fencing_token, ..Default::default() };
        assert_eq!(w.release(release).await.unwrap_err().code(), Code::PermissionDenied);

        // Names stay inside the attempt's folder; the output must exist.
        for name in ["../../../etc/passwd", "/etc/passwd", "a/b.png", ".."] {
            assert_eq!(w.complete(complete(&a, name)).await.unwrap_err().code(), Code::InvalidArgument, "{name}");
            assert_eq!(w.heartbeat(hb(&a, la.fencing_token, None, name)).await.unwrap_err().code(), Code::InvalidArgument, "{name}");
        }
        let e = w.complete(complete(&a, "output.png")).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert_eq!(state(&job_state(&mut f, &job_a).await), pb::JobState::Running, "not SUCCEEDED without its output");

        // A loss that left the numbers is refused by name, not a database error.
        let nan = pb::Progress { total: f64::NAN, ..Default::default() };
        let e = w.heartbeat(hb(&a, la.fencing_token, Some(nan), "")).await.unwrap_err();
        assert!(e.code() == Code::InvalidArgument && e.message().contains("progress.total"), "{e:?}");

        // The same Fail twice (a lost reply): OK both times, charged once.
        w.fail(fail(&a, &job_a, la.fencing_token)).await.unwrap();
        w.fail(fail(&a, &job_a, la.fencing_token)).await.expect("a retried Fail is answered OK");
        let d = job_state(&mut f, &job_a).await;
        assert_eq!((state(&d), d.job.as_ref().unwrap().failures), (pb::JobState::Queued, 1));
        assert!(d.attempts[0].outcome.starts_with("failed (INTERNAL)"), "{:?}", d.attempts);

        // Cancelled is final: the running attempt's Fail does not requeue it.
        f.cancel(pb::CollectionRef { collection_id: id }).await.unwrap();
        w.fail(fail(&b, &job_b, lb.fencing_token)).await.expect("the attempt may still end");
        assert_eq!(state(&job_state(&mut f, &job_b).await), pb::JobState::Cancelled);
        assert_eq!(state(&job_state(&mut f, &job_a).await), pb::JobState::Cancelled);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(lease(&mut w, &a).await.job.is_none(), "nothing cancelled is leased again");
    });
}

#[test]
fn parameters_are_one_schema_and_what_no_worker_can_run_is_refused_at_submit() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start();
    rt().block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        let with = |variant: &str| pb::SubmitRequest { variants_json: vec![variant.into()], ..small(vec![upload("c", "content.png")]) };
        for (variant, needle) in [(r#"{"alhpa": 1}"#, "alhpa"), (r#"{"iters": -3}"#, "iters"), (r#"{"init": "image"}"#, "init"), (r#"{"scales": [2]}"#, "scales"), (r#"{"preset": "turbo"}"#, "preset"), (r#"{"bit_depth": 12}"#, "bit_depth"), (r#"{"tile": 512}"#, "tile"), (r#"{"keep_tiles": 2}"#, "keep_tiles"), (r#"{"preserve_colors": "sepia"}"#, "preserve_colors")] {
            let e = f.submit(with(variant)).await.unwrap_err();
            assert!(e.code() == Code::InvalidArgument && e.message().contains(needle), "{variant}: {e:?}");
        }
        f.submit(with(r#"{"preset": "fast", "iters": 3, "tv_weight": 0.5, "preserve_colors": "luminance", "bit_depth": 16}"#))
            .await
            .expect("the flag names, over a preset");

        // With a worker of 8 GiB registered, an 8192×8192 render is refused
        // with the estimate (even in the farm's smallest tiles); a small one
        // still goes in.
        let mut w = workers_client(&farm.url, None).await;
        let worker = register(&mut w, "small", 8 << 30).await;
        let huge = pb::SubmitRequest { width: 8192, height: 8192, ..with("{}") };
        let e = f.submit(huge).await.unwrap_err();
        assert!(e.code() == Code::FailedPrecondition && e.message().contains("GiB") && e.message().contains("even in tiles of 512 px"), "{e:?}");
        // 4096×4096 needs ~40 GiB untiled, a few in tiles: it goes in, and
        // the worker that leases it tiles it.
        let tiled = pb::SubmitRequest { width: 4096, height: 4096, ..with(r#"{"iters": 1}"#) };
        let accepted = f.submit(tiled).await.expect("tiled, it fits the registered device").into_inner();
        f.cancel(pb::CollectionRef { collection_id: accepted.collection_id.clone() }).await.unwrap();
        // A retry with changes is priced like a submit: a history no
        // registered device could hold is refused with the numbers, not
        // parked in the queue for good; a change that fits goes in.
        let big_job = f.get_collection(pb::CollectionRef { collection_id: accepted.collection_id }).await.unwrap().into_inner().jobs[0].job_id.clone();
        let retry = |changes: &str| pb::RetryJobRequest { job_id: big_job.clone(), changes_json: changes.into() };
        let e = f.retry_job(retry(r#"{"optimizer": "lbfgs", "lbfgs_history": 1000}"#)).await.unwrap_err();
        assert!(e.code() == Code::FailedPrecondition && e.message().contains("needs about") && e.message().contains(&big_job), "{e:?}");
        let again = f.retry_job(retry(r#"{"iters": 2}"#)).await.expect("a change that fits").into_inner();
        assert_eq!(pb::JobState::try_from(again.state), Ok(pb::JobState::Queued));
        f.cancel_job(pb::JobRef { job_id: big_job.clone() }).await.unwrap();
        let spec = lease(&mut w, &worker).await.job.expect("the small job");
        assert!(spec.params_json.contains(r#""iters":3"#), "the worker gets the same schema: {}", spec.params_json);
        // The preset arrives expanded: its values, under the keys given.
        for expanded in [r#""optimizer":"lbfgs""#, r#""init":"recolored""#, r#""scales":[0.5]"#, r#""tv_weight":0.5"#, r#""preserve_colors":"luminance""#, r#""bit_depth":16"#] {
            assert!(spec.params_json.contains(expanded), "{expanded} in {}", spec.params_json);
        }
        assert!(!spec.params_json.contains("preset"), "{}", spec.params_json);
    });
}

#[test]
fn users_see_only_their_own_collections_and_errors_name_no_server_path() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start_with(&["--user-token", "alice-token", "--user-token", "bob-token", "--admin-token", "root-token", "--worker-token", "w"]);
    rt().block_on(async {
        let (mut alice, mut bob, mut root) =
            (farm_client(&farm.url, Some("alice-token")).await, farm_client(&farm.url, Some("bob-token")).await, farm_client(&farm.url, Some("root-token")).await);
        let request = || pb::SubmitRequest { idempotency_key: "retry-me".into(), ..small(vec![upload("c", "content.png")]) };
        let first = alice.submit(request()).await.unwrap().into_inner();
        let again = alice.submit(request()).await.unwrap().into_inner();
        assert_eq!(again.collection_id, first.collection_id, "a retried submit returns the first collection");
        let id = first.collection_id;
        let job = alice.get_collection(pb::CollectionRef { collection_id: id.clone() }).await.unwrap().into_inner().jobs[0].job_id.clone();
        let inside = format!("collections/{id}/jobs/{job}/attempt-1/output.png");

        let r = || pb::CollectionRef { collection_id: id.clone() };
        assert_eq!(bob.get_collection(r()).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(bob.watch(r()).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(bob.cancel(r()).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(bob.fetch(pb::FetchRequest { collection_id: id.clone(), key: inside.clone() }).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(bob.get_job(pb::JobRef { job_id: job.clone() }).await.unwrap_err().code(), Code::NotFound);
        assert!(bob.list_collections(pb::ListCollectionsRequest::default()).await.unwrap().into_inner().collections.is_empty());
        let start = |id: &str| pb::IdPrefix { prefix: id[..8].into() };
        assert_eq!(bob.resolve_id(start(&id)).await.unwrap_err().code(), Code::NotFound, "another user's id does not resolve");
        assert_eq!(bob.resolve_id(start(&job)).await.unwrap_err().code(), Code::NotFound);
        let e = bob.delete_collection(pb::DeleteCollectionRequest { collection_id: id.clone(), cancel: true }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "another user's collection is not deleted: {e:?}");
        let found = alice.resolve_id(start(&job)).await.unwrap().into_inner();
        assert_eq!((found.kind.as_str(), found.id.as_str()), ("job", job.as_str()));
        let e = alice.resolve_id(pb::IdPrefix { prefix: "abc".into() }).await.unwrap_err();
        assert!(e.code() == Code::InvalidArgument && e.message().contains("4 to 36"), "{e:?}");
        let bobs = bob.submit(request()).await.unwrap().into_inner().collection_id;
        assert_ne!(bobs, id, "idempotency keys are per user");

        let all = root.list_collections(pb::ListCollectionsRequest::default()).await.unwrap().into_inner().collections;
        assert_eq!(all.len(), 2, "an admin sees everyone's");
        root.get_collection(r()).await.unwrap();
        assert_eq!(alice.get_collection(r()).await.unwrap().into_inner().jobs[0].state, pb::JobState::Queued as i32, "bob's cancel did nothing");

        let e = alice.fetch(pb::FetchRequest { collection_id: id.clone(), key: inside }).await.unwrap_err();
        let data_dir = farm.dir.path().to_string_lossy().into_owned();
        assert!(e.code() == Code::NotFound && !e.message().contains(&data_dir), "{e:?}");
    });
}

#[test]
fn lost_leases_and_coordinator_downtime_cost_the_job_nothing() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let mut farm = Farm::start();
    let runtime = rt();
    let (job, b, lb) = runtime.block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        f.submit(small(vec![upload("c", "content.png")])).await.unwrap();
        let mut w = workers_client(&farm.url, None).await;
        let a = register(&mut w, "silent", 0).await;
        let la = lease(&mut w, &a).await;
        let job = la.job.unwrap().job_id;
        // a never heartbeats: its lease lapses and the job is requeued, free.
        let start = Instant::now();
        let d = loop {
            let d = job_state(&mut f, &job).await;
            if state(&d) != pb::JobState::Running {
                break d;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the lease never lapsed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let j = d.job.unwrap();
        assert_eq!((state_of(j.state), j.failures, j.requeues), (pb::JobState::Queued, 0, 1), "{}", j.error);
        assert_eq!(d.attempts[0].outcome, "lease lapsed");
        let b = register(&mut w, "patient", 0).await;
        let lb = lease(&mut w, &b).await;
        assert_eq!(lb.job.as_ref().map(|j| j.job_id.as_str()), Some(job.as_str()));
        (job, b, lb)
    });
    // Down for longer than a lease (3 s): the worker holding a job keeps it.
    farm.kill_coordinator();
    std::thread::sleep(Duration::from_secs(5));
    farm.start_coordinator();
    runtime.block_on(async {
        let mut w = workers_client(&farm.url, None).await;
        let hb = pb::HeartbeatRequest { worker_id: b.clone(), job_id: job.clone(), fencing_token: lb.fencing_token, ..Default::default() };
        w.heartbeat(hb).await.expect("the lease survived the coordinator's downtime");
        let mut f = farm_client(&farm.url, None).await;
        let j = job_state(&mut f, &job).await.job.unwrap();
        assert_eq!((state_of(j.state), j.failures), (pb::JobState::Running, 0));
    });
}

fn state_of(s: i32) -> pb::JobState {
    pb::JobState::try_from(s).unwrap()
}

#[test]
fn a_failing_worker_is_quarantined_and_one_on_the_wrong_storage_never_starts() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let farm = Farm::start();
    let runtime = rt();
    let id = runtime.block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        f.submit(small(vec![upload("a", "content.png"), upload("b", "init.png")])).await.unwrap().into_inner().collection_id
    });

    // A worker given other storage than the farm's refuses to start.
    let wrong = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("farm-worker"))
        .args(["--coordinator", &farm.url, "--device", "cpu", "--threads", "1", "--name", "lost", "--storage"])
        .arg(wrong.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "a worker on the wrong storage kept running");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not this farm's storage"), "{stderr}");

    runtime.block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        let c = f.get_collection(pb::CollectionRef { collection_id: id.clone() }).await.unwrap().into_inner();
        assert!(c.jobs.iter().all(|j| j.state == pb::JobState::Queued as i32 && j.attempts == 0), "no job was touched");

        // Three attempts lost to the worker itself: it is quarantined, and
        // the jobs have spent nothing.
        let mut w = workers_client(&farm.url, None).await;
        let flaky = register(&mut w, "flaky", 0).await;
        for _ in 0..3 {
            let l = lease(&mut w, &flaky).await;
            let r = pb::FailRequest {
                worker_id: flaky.clone(),
                job_id: l.job.unwrap().job_id,
                fencing_token: l.fencing_token,
                kind: pb::FailureKind::Worker as i32,
                message: "storage: disk full".into(),
            };
            w.fail(r).await.unwrap();
        }
        let e = w.lease(pb::LeaseRequest { worker_id: flaky.clone(), free_memory_bytes: 0 }).await.unwrap_err();
        assert!(e.code() == Code::FailedPrecondition && e.message().contains("quarantined"), "{e:?}");
        let workers = f.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
        let listed = workers.iter().find(|x| x.worker_id == flaky).unwrap();
        assert!(listed.quarantined && listed.strikes == 3, "{listed:?}");
        let c = f.get_collection(pb::CollectionRef { collection_id: id.clone() }).await.unwrap().into_inner();
        assert!(c.jobs.iter().all(|j| j.state == pb::JobState::Queued as i32 && j.failures == 0), "{:?}", c.jobs);
    });
    let o = farm.farmctl(&["status"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("quarantined") && stdout.contains("its own failure (WORKER)"),
        "{stdout}"
    );
}

#[test]
fn a_corrupt_newest_checkpoint_is_skipped_for_the_one_before_it() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    let a = farm.add_worker("a");
    let (c, s) = (fixture("content.png"), fixture("style.png"));
    let id = farm.submit(&[&["--content", &c, "--style", &s], &RENDER[..]].concat());
    let st = farm.wait_for(&id, "iteration 17", |st| jobs(st)[0]["progress"]["iteration"].as_u64() >= Some(17));
    farm.kill_worker(a);
    let job = jobs(&st)[0]["job_id"].as_str().unwrap().to_string();
    let folder = farm.dir.path().join(format!("data/storage/collections/{id}/jobs/{job}/attempt-1"));
    let mut checkpoints: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    checkpoints.sort();
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");
    let iteration = |n: &str| n.trim_start_matches("ckpt-").trim_end_matches(".safetensors").parse::<u32>().unwrap();
    let (older, newest) = (iteration(&checkpoints[checkpoints.len() - 2]), &checkpoints[checkpoints.len() - 1]);
    std::fs::write(folder.join(newest), b"not a checkpoint any more").unwrap();

    farm.add_worker("b");
    farm.wait_for(&id, "the job to succeed", all_succeeded);
    let resumed = rt().block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        job_state(&mut f, &job).await.attempts.iter().map(|a| a.resumed_from).collect::<Vec<_>>()
    });
    assert_eq!(resumed, vec![0, older], "the second attempt resumed from the checkpoint before the corrupt one");
    fetch_and_compare(&farm, &id, &[(&c, &s)]);
}

#[test]
fn watch_and_status_ride_out_a_coordinator_restart() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let mut farm = Farm::start();
    let id = farm.submit(&["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "8x8", "--iters", "1"]);
    let url = farm.url.clone();
    let farmctl = |args: &[&str]| {
        Command::new(bin("farmctl")).arg("--coordinator").arg(&url).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let mut watch = farmctl(&["watch", &id]);
    // Its stderr, line by line, as it comes: the kill waits for the watch
    // to have shown the collection.
    let watched = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (lines, out) = (watched.clone(), watch.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
                lines.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    let start = Instant::now();
    while !watched.lock().unwrap().contains("queued") {
        assert!(start.elapsed() < Duration::from_secs(30), "watch showed nothing: {}", watched.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    farm.kill_coordinator();
    let status = farmctl(&["status", &id, "--json"]);
    std::thread::sleep(Duration::from_secs(3));
    farm.start_coordinator();
    let status = status.wait_with_output().unwrap();
    assert!(status.status.success(), "status waited for the coordinator: {}", String::from_utf8_lossy(&status.stderr));
    let o = farm.farmctl(&["cancel", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exit = watch.wait().unwrap();
    reader.join().unwrap();
    let stderr = watched.lock().unwrap().clone();
    assert!(stderr.contains("reconnecting") && stderr.contains("0 of 1 jobs succeeded") && stderr.contains("cancelled"), "watch followed the collection to its end: {stderr}");
    assert_eq!(exit.code(), Some(1), "not every job succeeded");
}

/// Workers and the coordinator SIGKILLed at random moments, the coordinator
/// down for longer than a lease: every job still ends SUCCEEDED exactly
/// once, charged nothing, and bit-identical to a local render.
#[test]
fn chaos_every_job_succeeds_exactly_once_and_matches_a_local_render() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut farm = Farm::start();
    let mut alive = vec![farm.add_worker("w0"), farm.add_worker("w1")];
    let (c1, c2, s1, s2) = (fixture("content.png"), fixture("init.png"), fixture("style.png"), fixture("init.png"));
    let id = farm.submit(&[&["--content", &c1, "--content", &c2, "--style", &s1, "--style", &s2], &RENDER[..]].concat());
    let start = Instant::now();
    let mut events = 0;
    loop {
        let done = farm.status(&id).is_some_and(|s| all_succeeded(&s));
        if done {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "the collection never finished: {:?}", farm.status(&id));
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        if events >= 8 {
            continue;
        }
        events += 1;
        match rng.random_range(0..3) {
            0 => {
                let i = alive.remove(rng.random_range(0..alive.len()));
                farm.kill_worker(i);
                alive.push(farm.add_worker(&format!("w{events}")));
                eprintln!("chaos: killed a worker");
            }
            1 => {
                farm.kill_coordinator();
                std::thread::sleep(Duration::from_millis(rng.random_range(1000..5000)));
                farm.start_coordinator();
                eprintln!("chaos: coordinator down and back");
            }
            _ => {}
        }
    }
    let details = rt().block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        let c = f.get_collection(pb::CollectionRef { collection_id: id.clone() }).await.unwrap().into_inner();
        let mut details = Vec::new();
        for j in c.jobs {
            details.push(job_state(&mut f, &j.job_id).await);
        }
        details
    });
    for d in &details {
        let succeeded = d.attempts.iter().filter(|a| a.outcome == "succeeded").count();
        let job = d.job.as_ref().unwrap();
        assert_eq!(succeeded, 1, "exactly one attempt succeeded: {:?}", d.attempts);
        assert_eq!(job.failures, 0, "nothing was the job's fault: {:?}", d.attempts);
    }
    fetch_and_compare(&farm, &id, &[(&c1, &s1), (&c2, &s2)]);
}

#[test]
fn fetch_goes_on_past_an_image_it_cannot_read() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start();
    let id = rt().block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        let id = f.submit(small(vec![upload("a", "content.png"), upload("b", "init.png")])).await.unwrap().into_inner().collection_id;
        // A worker that "renders" by copying a picture into its folder.
        let mut w = workers_client(&farm.url, None).await;
        let worker = register(&mut w, "copier", 0).await;
        for _ in 0..2 {
            let l = lease(&mut w, &worker).await;
            let spec = l.job.unwrap();
            let folder = farm.dir.path().join("data/storage").join(&spec.prefix);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("output.png"), bytes("style.png")).unwrap();
            let r = pb::CompleteRequest { worker_id: worker.clone(), job_id: spec.job_id, fencing_token: l.fencing_token, output_name: "output.png".into(), progress: None };
            w.complete(r).await.unwrap();
        }
        id
    });
    // One finished image goes missing from storage.
    let st = farm.status(&id).unwrap();
    let lost = jobs(&st).iter().find(|j| j["content_name"] == "b").unwrap()["output_key"].as_str().unwrap().to_string();
    std::fs::remove_file(farm.dir.path().join("data/storage").join(&lost)).unwrap();

    let out = farm.dir.path().join("fetched");
    let o = farm.farmctl(&["fetch", &id, "-o", &out.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("b_style_v0.png"), "the missing image is named: {stderr}");
    assert!(out.join("a_style_v0.png").is_file() && out.join("contact_sheet.png").is_file(), "the rest was fetched: {stderr}");
    let data_dir = farm.dir.path().join("data").to_string_lossy().into_owned();
    assert!(!stderr.contains(&data_dir), "no coordinator path in the error: {stderr}");
}

#[test]
fn a_loss_that_leaves_the_numbers_fails_the_job_once_by_name() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("a");
    let id = rt().block_on(async {
        let mut f = farm_client(&farm.url, None).await;
        // (A huge lr no longer does it: every step lands inside the pixel
        // range. A weight that overflows its term still does.)
        let r = pb::SubmitRequest { variants_json: vec![r#"{"iters": 5, "beta": 1e300}"#.into()], ..small(vec![upload("c", "content.png")]) };
        f.submit(r).await.unwrap().into_inner().collection_id
    });
    let st = farm.wait_for(&id, "the job to end", |s| jobs(s)[0]["state"] != "QUEUED" && jobs(s)[0]["state"] != "RUNNING");
    let job = &jobs(&st)[0];
    assert_eq!(job["state"], "FAILED", "{job}");
    assert!(job["error"].as_str().unwrap().contains("try a smaller beta"), "the error says what to change: {job}");
    assert_eq!((job["attempts"].as_u64(), job["failures"].as_u64()), (Some(1), Some(1)), "bad input is not retried: {job}");
}

/// A worker whose setup (inputs, targets, the first iteration) outlasts
/// several leases keeps its job: it heartbeats from the moment of the lease.
#[test]
fn a_slow_start_does_not_lose_the_lease() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights);
    let mut farm = Farm::start();
    farm.add_worker("slow");
    let id = farm.submit(&["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "1200x900", "--iters", "3"]);
    farm.wait_for(&id, "the lease", |s| jobs(s)[0]["state"] == "RUNNING");
    std::thread::sleep(Duration::from_secs(9)); // three leases
    let st = farm.status(&id).unwrap();
    let job = &jobs(&st)[0];
    assert_eq!((job["attempts"].as_u64(), job["requeues"].as_u64()), (Some(1), Some(0)), "{job}");
    assert!(job["state"] == "RUNNING" || job["state"] == "SUCCEEDED", "{job}");
}

#[test]
fn a_coordinator_that_never_answers_is_named_with_what_to_do() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let url = format!("http://127.0.0.1:{}", stylefarm_tests::free_port());
    let o = Command::new(bin("farmctl")).args(["--coordinator", &url, "--wait", "1", "status"]).env("RUST_BACKTRACE", "0").output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("retrying") && stderr.contains("farm-coordinator running") && stderr.contains("--wait"), "{stderr}");
}

/// With neither `--coordinator` nor `--wait` given, nobody at the default
/// address is a forgotten flag: the hint comes at once, not after the
/// 90 s a restart is ridden out for.
#[test]
fn a_forgotten_coordinator_flag_is_named_at_once() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    if std::net::TcpStream::connect("127.0.0.1:50051").is_ok() {
        eprintln!("skipped: something listens at the default coordinator address 127.0.0.1:50051");
        return;
    }
    let start = std::time::Instant::now();
    let o = Command::new(bin("farmctl"))
        .arg("status")
        .env_remove("STYLEFARM_COORDINATOR")
        .env_remove("STYLEFARM_WAIT")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("--coordinator URL") && stderr.contains("farmctl up") && !stderr.contains("retrying"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(30), "answered after {:?}, not at once", start.elapsed());
}

/// RetryFailed puts every FAILED job of a collection back in the queue
/// (and only those), for its owner alone; a failure's message names no
/// path of the farm's storage.
#[test]
fn every_failed_job_of_a_collection_is_retried_at_once() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = Farm::start_with(&["--user-token", "alice-token", "--user-token", "bob-token", "--worker-token", "w"]);
    rt().block_on(async {
        let (mut alice, mut bob) = (farm_client(&farm.url, Some("alice-token")).await, farm_client(&farm.url, Some("bob-token")).await);
        let id = alice.submit(small(vec![upload("a", "content.png"), upload("b", "init.png"), upload("c", "style.png")])).await.unwrap().into_inner().collection_id;
        let r = || pb::CollectionRef { collection_id: id.clone() };
        let mut w = workers_client(&farm.url, Some("w")).await;
        // Two workers each fail one job as bad input; the third job stays queued.
        let storage = farm.dir.path().join("data/storage").to_string_lossy().into_owned();
        for name in ["w1", "w2"] {
            let worker = register(&mut w, name, 0).await;
            let l = lease(&mut w, &worker).await;
            let message = format!("cannot read inputs/x from {storage}: permission denied");
            let f = pb::FailRequest { worker_id: worker, job_id: l.job.unwrap().job_id, fencing_token: l.fencing_token, kind: pb::FailureKind::BadInput as i32, message };
            w.fail(f).await.unwrap();
        }
        let c = alice.get_collection(r()).await.unwrap().into_inner();
        let failed: Vec<&pb::Job> = c.jobs.iter().filter(|j| j.state == pb::JobState::Failed as i32).collect();
        assert_eq!(failed.len(), 2);
        assert!(failed.iter().all(|j| j.error.contains("<storage>") && !j.error.contains(&storage)), "{:?}", failed[0].error);
        assert_eq!(bob.retry_failed(r()).await.unwrap_err().code(), Code::NotFound, "another user's collection");
        let after = alice.retry_failed(r()).await.unwrap().into_inner();
        let counts = after.counts.unwrap();
        assert_eq!((counts.queued, counts.failed), (3, 0), "{counts:?}");
        assert!(after.jobs.iter().all(|j| j.error.is_empty() && j.failures == 0));
    });
}
