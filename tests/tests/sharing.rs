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
