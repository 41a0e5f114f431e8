//! Several users on one farm, as they meet it: a real coordinator with
//! named tokens, `farmctl` submitting as each user, workers speaking the
//! `Workers` contract. The next free worker goes to the user furthest
//! below their share (not to the oldest queue); a submit past
//! `--max-queued` is RESOURCE_EXHAUSTED with the numbers; sharing flags
//! that name nobody stop the coordinator at once.

use std::process::Command;

use stylefarm_tests::scripted::ScriptedWorker;
use stylefarm_tests::{bin, fixture, free_port, Farm, Need};

const ANA: &str = "ana-token-0123456789";
const BO: &str = "bo-token-0123456789";
const WORKER: &str = "worker-token-0123456789";

static CONTENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| fixture("content.png"));
static STYLE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| fixture("style.png"));

fn farmctl_as(farm: &Farm, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", token]).args(args).output().unwrap()
}

/// A collection of `jobs` tiny jobs (one photo, one painting, a seed
/// each), submitted as `token`.
fn submit(farm: &Farm, token: &str, jobs: usize) -> std::process::Output {
    let mut args = vec!["submit".to_string(), "--content".into(), fixture("content.png"), "--style".into(), fixture("style.png"), "--size".into(), "8x8".into(), "--iters".into(), "2".into()];
    for seed in 0..jobs {
        args.extend(["--variant".into(), format!("seed={seed}")]);
    }
    farmctl_as(farm, token, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn collection_id(o: &std::process::Output) -> String {
    assert!(o.status.success(), "submit: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().last().unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_free_worker_goes_to_the_user_below_their_share_and_quotas_refuse_with_numbers() {
    stylefarm_tests::require!(Need::Binaries);
    let farm = Farm::start_with(&["--user-token", &format!("ana={ANA}"), "--user-token", &format!("bo={BO}"), "--worker-token", WORKER, "--max-queued", "bo=3"]);
    let storage = farm.dir.path().join("data/storage");
    let png = std::fs::read(fixture("content.png")).unwrap();
    // ana's 4 jobs, first: both workers take hers.
    let ana = collection_id(&submit(&farm, ANA, 4));
    let mut w1 = ScriptedWorker::register(&farm.url, Some(WORKER), &storage, "w1").await;
    let mut w2 = ScriptedWorker::register(&farm.url, Some(WORKER), &storage, "w2").await;
    let (j1, j2) = (w1.lease().await, w2.lease().await);
    assert!(j1.spec.collection_id == ana && j2.spec.collection_id == ana);

    // bo's 2 jobs, later: w1 frees and takes bo's, though ana's queue is
    // older (she holds 1 of 2 busy workers, her share; bo holds none).
    let bo = collection_id(&submit(&farm, BO, 2));
    w1.complete(j1, &png).await;
    let j3 = w1.lease().await;
    assert_eq!(j3.spec.collection_id, bo, "the user below their share goes first");
    // w2 frees: ana holds none now, bo one: ana's turn again.
    w2.complete(j2, &png).await;
    assert_eq!(w2.lease().await.spec.collection_id, ana);

    // bo has 1 queued; 2 more make 3, the quota; 1 more is refused.
    collection_id(&submit(&farm, BO, 2));
    let refused = submit(&farm, BO, 1);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "over the quota");
    assert!(why.contains("ResourceExhausted") || why.contains("RESOURCE_EXHAUSTED") || why.contains("resource"), "{why}");
    assert!(why.contains("at most 3 jobs") && why.contains("--max-queued") && why.contains("3 of yours") && why.contains("adds 1"), "{why}");
    // ana is not bo: her own submit is not limited.
    collection_id(&submit(&farm, ANA, 5));
    let listed = farmctl_as(&farm, BO, &["status", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["collections"]["collections"].as_array().map(Vec::len), Some(2), "the refused submit left nothing: {listed}");
    let _ = (j3, bo);
}

#[test]
fn sharing_flags_that_name_nobody_stop_the_coordinator_at_once() {
    stylefarm_tests::require!(Need::Binaries);
    let dir = tempfile::tempdir().unwrap();
    for (flags, says) in [
        (vec!["--user-token", "ana=a-token", "--share", "bo=2"], "no --user-token or --admin-token is named bo"),
        (vec!["--user-token", "ana=a-token", "--share", "ana=0"], "the weight is a number above 0"),
        (vec!["--user-token", "ana=a-token", "--max-running", "ana=many"], "a whole number"),
        (vec!["--user-token", "ana=a-token", "--user-token", "ana=another"], "two tokens are named ana"),
    ] {
        let o = Command::new(bin("farm-coordinator")).args(["--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"]).arg(dir.path()).args(&flags).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(says), "{flags:?}: {stderr}");
    }
}

/// A farm full of ana's jobs when bo submits: one of ana's workers is told
/// in its next heartbeat's reply to give its job back (bo is 2 workers
/// further below his share than ana), the other is not; the freed worker's
/// next lease is bo's, and ana's job waits charged nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_farm_gives_one_worker_back_to_the_user_below_their_share() {
    stylefarm_tests::require!(Need::Binaries);
    let farm = Farm::start_with(&["--user-token", &format!("ana={ANA}"), "--user-token", &format!("bo={BO}"), "--worker-token", WORKER]);
    let storage = farm.dir.path().join("data/storage");
    let ana = collection_id(&submit(&farm, ANA, 4));
    let mut w1 = ScriptedWorker::register(&farm.url, Some(WORKER), &storage, "w1").await;
    let mut w2 = ScriptedWorker::register(&farm.url, Some(WORKER), &storage, "w2").await;
    let (j1, j2) = (w1.lease().await, w2.lease().await);
    assert!(j1.spec.collection_id == ana && j2.spec.collection_id == ana);
    for _ in 0..5 {
        let (a, b) = (w1.progress(&j1, 1, 2).await, w2.progress(&j2, 1, 2).await);
        assert!(!a.release && !b.release, "nobody else waits: ana keeps both");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let bo = collection_id(&submit(&farm, BO, 1));
    let start = std::time::Instant::now();
    let (released, kept) = loop {
        let (a, b) = (w1.progress(&j1, 1, 2).await, w2.progress(&j2, 1, 2).await);
        assert!(!(a.release && b.release), "one worker is enough for bo's one job");
        if a.release || b.release {
            break if a.release { ((w1, j1, a), (w2, j2)) } else { ((w2, j2, b), (w1, j1)) };
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "no worker was asked back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let (mut freed, job, answer) = released;
    assert!(answer.release_reason.starts_with("preempted: another user is 1.0 workers below their share; this job's user is 1.0 above theirs"), "{}", answer.release_reason);
    let (mut other, other_job) = kept;
    for _ in 0..3 {
        assert!(!other.progress(&other_job, 1, 2).await.release, "only one job is taken back");
    }
    let job_id = job.spec.job_id.clone();
    freed.checkpoint_and_release(job, 1).await;
    assert_eq!(freed.lease().await.spec.collection_id, bo, "the freed worker goes to bo");
    let st = farmctl_as(&farm, ANA, &["status", &ana, "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let j = st["jobs"].as_array().unwrap().iter().find(|j| j["job_id"] == job_id.as_str()).unwrap().clone();
    assert_eq!((j["state"].as_str(), j["failures"].as_u64(), j["requeues"].as_u64()), (Some("QUEUED"), Some(0), Some(0)), "{j}");

    // Each user's standing, as ana reads it: 1 running each, even shares
    // of the 2 busy workers; ana has 3 queued.
    let o = farmctl_as(&farm, ANA, &["status"]);
    let farm_view = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(farm_view.contains("ana                  1 running (share 1.0), 3 queued, weight 1  (you)"), "{farm_view}");
    assert!(farm_view.contains("bo                   1 running (share 1.0), 0 queued, weight 1\n"), "{farm_view}");
    // … and why her queued jobs wait: both workers are busy, and 2 of her
    // own are ahead of her last.
    let o = farmctl_as(&farm, ANA, &["status", &ana]);
    let view = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(view.contains("waits: every worker that can take it is busy"), "{view}");
}

/// Pools: a job that requires `pool=a100` goes only to a worker that has
/// that label; a requirement no worker ever registered with is refused,
/// naming it, unless `--wait-for-pool`; `farmctl workers --label` lists
/// the pool; a label that is not KEY=VALUE is refused at registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_requires_a_pool_goes_only_to_a_worker_in_it() {
    stylefarm_tests::require!(Need::Binaries);
    let farm = Farm::start();
    let storage = farm.dir.path().join("data/storage");
    let mut plain = ScriptedWorker::register(&farm.url, None, &storage, "plain").await;
    let pooled = |extra: &[&str]| {
        let mut args = vec!["submit", "--content", CONTENT.as_str(), "--style", STYLE.as_str(), "--size", "8x8", "--iters", "2", "--require", "pool=a100"];
        args.extend_from_slice(extra);
        farm.farmctl(&args)
    };
    let refused = pooled(&[]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && why.contains("no worker has ever registered with pool=a100") && why.contains("--wait-for-pool"), "{why}");
    let id = collection_id(&pooled(&["--wait-for-pool"]));
    assert!(plain.try_lease().await.is_none(), "a worker outside the pool gets nothing");
    let view = String::from_utf8_lossy(&farm.farmctl(&["status", &id]).stdout).to_string();
    assert!(view.contains("for workers with pool=a100") && view.contains("waits: needs a worker with pool=a100: none online has it"), "{view}");
    let bad = ScriptedWorker::register_with(&farm.url, None, &storage, "odd", &["Pool=x"]).await.err().expect("refused");
    assert!(bad.code() == tonic::Code::InvalidArgument && bad.message().contains("label `Pool=x`"), "{bad:?}");
    let mut big = ScriptedWorker::register_with(&farm.url, None, &storage, "big", &["pool=a100", "zone=eu"]).await.unwrap();
    let job = big.try_lease().await.expect("the pool's worker takes it");
    assert_eq!(job.spec.collection_id, id);
    // Now that a worker has had the label, a submit needs no flag.
    collection_id(&pooled(&[]));
    let listed = farm.farmctl(&["workers", "--label", "pool=a100"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("big") && listed.contains("[pool=a100 zone=eu]") && !listed.contains("plain"), "{listed}");
    let all = farm.farmctl(&["workers", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    let labels: Vec<&serde_json::Value> = all["workers"].as_array().unwrap().iter().map(|w| &w["labels"]).collect();
    assert!(labels.iter().any(|l| l == &&serde_json::json!(["pool=a100", "zone=eu"])), "{all}");
    let c = farm.farmctl(&["status", &id, "--json"]);
    let c: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(c["require"], serde_json::json!(["pool=a100"]), "{c}");
}
