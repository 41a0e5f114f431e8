//! The store's unit tests, each on SQLite and (given a server) PostgreSQL.

use super::*;
use super::leases::{any_requirement_query, head_query, held_query, lease_query, requirements_query, running_query, waiting_query};
use crate::schedule::Policy;

const RULES: Rules = Rules { lease_seconds: 60.0, max_failures: 3, max_requeues: 10, quarantine_after: 3 };

pub(super) fn job(id: &str) -> NewJob {
    NewJob {
        id: id.into(),
        content_index: 0,
        style_index: 0,
        variant_index: 0,
        content_name: "c".into(),
        style_name: "s".into(),
        content_key: "inputs/c".into(),
        style_keys: vec!["inputs/s".into()],
        params_json: "{}".into(),
        width: 8,
        height: 8,
        iterations: 10,
        checkpoint_every: 5,
        snapshot_every: 0,
        min_memory: 0,
    }
}

/// A collection `id` of `jobs`, one per content, nobody's.
fn collection(id: &str, jobs: &[NewJob]) -> NewCollection {
    NewCollection {
        id: id.into(),
        owner: String::new(),
        idempotency_key: String::new(),
        name: id.into(),
        priority: 0,
        shape: (jobs.len() as u32, 1, 1),
        jobs: jobs.to_vec(),
        notify_url: String::new(),
        max_queued: None,
        require: String::new(),
    }
}

fn create(db: &mut Db, id: &str, priority: i32, jobs: &[NewJob]) {
    db.create_collection(&NewCollection { priority, ..collection(id, jobs) }).unwrap();
}

fn worker(db: &mut Db, id: &str, memory: u64) {
    db.register_worker(
        id,
        &pb::RegisterRequest {
            name: id.into(),
            device: "cpu".into(),
            memory_bytes: memory,
            ..Default::default()
        },
        &RULES,
    )
    .unwrap();
}

fn state(db: &Db, collection: &str, job: &str) -> pb::Job {
    db.collection(collection).unwrap().unwrap().1.jobs.into_iter().find(|j| j.job_id == job).unwrap()
}

fn open() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("farm.db")).unwrap();
    (dir, db)
}

/// Runs `test` on a fresh SQLite file, and on a fresh PostgreSQL
/// database when `STYLEFARM_TEST_POSTGRES` names a server
/// (`scripts/test.sh` starts one).
fn each_backend(test: impl Fn(&Target)) {
    let dir = tempfile::tempdir().unwrap();
    test(&Target::Sqlite(dir.path().join("farm.db")));
    if let Some(pg) = super::testing::Postgres::from_env() {
        let database = pg.fresh_database();
        eprintln!("again on PostgreSQL ({})", database.describe());
        test(&database);
    }
}

#[test]
fn ids_are_found_by_their_start_and_nothing_else() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "abcd0000-c", 0, &[job("abcd1111-j"), job("abce2222-j")]);
        let found = |p: &str| db.ids_starting(p, 20).unwrap().into_iter().map(|(k, id, _)| (k, id)).collect::<Vec<_>>();
        use ids::Kind::{Collection, Job};
        assert_eq!(found("abcd1"), vec![(Job, "abcd1111-j".to_string())]);
        assert_eq!(found("abcd"), vec![(Collection, "abcd0000-c".to_string()), (Job, "abcd1111-j".to_string())], "both kinds");
        assert_eq!(found("abc").len(), 3);
        assert!(found("abcf").is_empty() && found("bcd").is_empty(), "a start, not a part");
        assert_eq!(found("abce2222-j"), vec![(Job, "abce2222-j".to_string())], "a whole id is its own start");
    });
}

#[test]
fn survives_reopen_and_fences_stale_leases() {
    each_backend(|target| {
    {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "c1", 0, &[job("j1")]);
    }
    let mut db = Db::connect(target).unwrap();
    assert_eq!(db.collection("c1").unwrap().unwrap().1.jobs.len(), 1, "nothing lost across a reopen");
    worker(&mut db, "w1", 0);
    worker(&mut db, "w2", 0);
    let lapsing = Rules { lease_seconds: -1.0, ..RULES };
    let first = db.lease("w1", &lapsing, &Policy::default()).unwrap().unwrap();
    assert_eq!((first.spec.job_id.as_str(), first.attempt), ("j1", 1));
    db.expire_leases(&RULES).unwrap();
    let j = state(&db, "c1", "j1");
    assert_eq!((j.state, j.failures, j.requeues), (QUEUED, 0, 1), "a lapse is requeued without spending the failure budget");
    let second = db.lease("w2", &RULES, &Policy::default()).unwrap().unwrap();
    assert!(second.token > first.token && second.attempt == 2);
    let stale = Call { worker: "w1", job: "j1", token: first.token };
    assert!(matches!(db.complete(&stale, "k", &Default::default(), &RULES), Err(CallError::Stale { .. })));
    let hb = pb::HeartbeatRequest::default();
    assert!(matches!(db.heartbeat(&stale, &hb, None, &RULES), Err(CallError::Stale { .. })));
    let thief = Call { worker: "w1", job: "j1", token: second.token };
    assert!(matches!(db.complete(&thief, "k", &Default::default(), &RULES), Err(CallError::WrongWorker { .. })), "another worker's lease");
    let good = Call { worker: "w2", job: "j1", token: second.token };
    assert!(!db.complete(&good, "k", &Default::default(), &RULES).unwrap().repeated);
    assert!(db.complete(&good, "k", &Default::default(), &RULES).unwrap().repeated, "a retried completion is answered OK");
    assert_eq!(state(&db, "c1", "j1").state, pb::JobState::Succeeded as i32);
    assert!(matches!(db.fail(&good, pb::FailureKind::Internal, "x", &RULES), Err(CallError::Stale { .. })), "a success is final");
    });
}

#[test]
fn only_registered_unquarantined_workers_lease_and_tokens_are_not_a_sequence() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "c", 0, &[job("a"), job("b"), job("c"), job("d")]);
        assert!(matches!(db.lease("ghost", &RULES, &Policy::default()), Err(CallError::NotRegistered(_))));
        worker(&mut db, "w", 0);
        let l1 = db.lease("w", &RULES, &Policy::default()).unwrap().unwrap();
        let again = db.lease("w", &RULES, &Policy::default()).unwrap().unwrap();
        assert_eq!((&again.spec.job_id, again.token, again.attempt), (&l1.spec.job_id, l1.token, l1.attempt), "one lease at a time: the same again");
        assert_eq!(again.spec.prefix, l1.spec.prefix);
        worker(&mut db, "x", 0);
        let t1 = l1.token;
        let t2 = db.lease("x", &RULES, &Policy::default()).unwrap().unwrap().token;
        assert!(t2 > t1 && t2 - t1 != 1 && (t2 & 0xffff_ffff) != ((t1 + 1) & 0xffff_ffff), "{t1} then {t2}");
        db.fail(&Call { worker: "w", job: "a", token: t1 }, pb::FailureKind::Worker, "storage is read-only", &RULES).unwrap();
        for _ in 0..2 {
            let l = db.lease("w", &RULES, &Policy::default()).unwrap().unwrap();
            db.fail(&Call { worker: "w", job: &l.spec.job_id, token: l.token }, pb::FailureKind::Worker, "storage is read-only", &RULES).unwrap();
        }
        assert!(matches!(
            db.lease("w", &RULES, &Policy::default()),
            Err(CallError::Quarantined { strikes: 3, .. })
        ));
        let (listed, _) = db.workers_page(0, 10, false, RULES.lease_seconds).unwrap();
        let w = listed.iter().find(|w| w.worker_id == "w").unwrap();
        assert!(w.quarantined && w.strikes == 3);
        assert!(w.quarantine_reason.contains("its own failure (WORKER)"), "{}", w.quarantine_reason);
        let j = state(&db, "c", "a");
        assert_eq!((j.state, j.failures), (QUEUED, 0), "the worker's fault costs the job nothing");
        assert!(j.requeues >= 1);
    });
}

#[test]
fn bad_input_is_not_retried_other_failures_are_capped_and_cancel_is_final() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "c", 0, &[job("a"), job("b")]);
        worker(&mut db, "w", 0);
        let l = db.lease("w", &RULES, &Policy::default()).unwrap().unwrap();
        db.fail(&Call { worker: "w", job: &l.spec.job_id, token: l.token }, pb::FailureKind::BadInput, "not an image", &RULES).unwrap();
        assert_eq!(state(&db, "c", &l.spec.job_id).state, pb::JobState::Failed as i32);
        let l = db.lease("w", &RULES, &Policy::default()).unwrap().unwrap();
        let two = Rules { max_failures: 2, ..RULES };
        db.fail(&Call { worker: "w", job: &l.spec.job_id, token: l.token }, pb::FailureKind::Internal, "boom", &two).unwrap();
        assert_eq!(state(&db, "c", &l.spec.job_id).state, QUEUED, "retried after an internal failure");
        assert!(db.lease("w", &RULES, &Policy::default()).unwrap().is_none(), "not before its backoff");
        // Cancel while running: the worker's later Fail leaves it cancelled.
        db.conn.execute("UPDATE jobs SET not_before = 0", args![]).unwrap();
        let l = db.lease("w", &RULES, &Policy::default()).unwrap().unwrap();
        db.cancel("c").unwrap();
        let call = Call { worker: "w", job: &l.spec.job_id, token: l.token };
        db.fail(&call, pb::FailureKind::Internal, "interrupted", &RULES).unwrap();
        assert_eq!(state(&db, "c", &l.spec.job_id).state, pb::JobState::Cancelled as i32, "a fail after cancel does not requeue");
        assert!(db.lease("w", &RULES, &Policy::default()).unwrap().is_none());
    });
}

#[test]
fn out_of_memory_moves_the_job_to_a_larger_device() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "c", 0, &[job("a")]);
        worker(&mut db, "small", 1 << 30);
        worker(&mut db, "large", 8 << 30);
        let l = db.lease("small", &RULES, &Policy::default()).unwrap().unwrap();
        db.fail(&Call { worker: "small", job: "a", token: l.token }, pb::FailureKind::OutOfMemory, "CUDA_ERROR_OUT_OF_MEMORY", &RULES).unwrap();
        db.conn.execute("UPDATE jobs SET not_before = 0", args![]).unwrap();
        assert!(db.lease("small", &RULES, &Policy::default()).unwrap().is_none(), "not again on a device that ran out");
        assert_eq!(db.lease("large", &RULES, &Policy::default()).unwrap().unwrap().spec.job_id, "a");
    });
}

#[test]
fn a_retried_submit_returns_the_first_collection() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        let c = |id: &str| NewCollection {
            id: id.into(),
            owner: "u1".into(),
            idempotency_key: "k1".into(),
            name: "n".into(),
            priority: 0,
            shape: (1, 1, 1),
            jobs: vec![job("a")],
            notify_url: String::new(),
            max_queued: None,
            require: String::new(),
        };
        assert_eq!(db.create_collection(&c("first")).unwrap(), ("first".to_string(), 1));
        assert_eq!(db.create_collection(&c("second")).unwrap(), ("first".to_string(), 1));
        assert_eq!(db.collection_ids(None).unwrap().len(), 1);
        let other = NewCollection { id: "third".into(), owner: "u2".into(), jobs: vec![job("b")], ..c("x") };
        assert_eq!(db.create_collection(&other).unwrap().0, "third", "keys are per user");
        assert_eq!(db.collection_ids(Some("u1")).unwrap(), ["first"]);
    });
}

#[test]
fn lease_walks_an_index_and_never_sorts() {
    let (_d, db) = open();
    let plan: Vec<String> = db.conn.query_map(&format!("EXPLAIN QUERY PLAN {}", lease_query(0)), args![0.0, 0, "user-a"], |r| r.get::<_, String>(3)).unwrap();
    let plan = plan.join("; ");
    assert!(plan.contains("jobs_fair") && !plan.contains("TEMP B-TREE"), "{plan}");
    // … also for a worker that meets some of the pools asked for.
    let plan: Vec<String> = db.conn.query_map(&format!("EXPLAIN QUERY PLAN {}", lease_query(2)), args![0.0, 0, "user-a", "", "pool=a"], |r| r.get::<_, String>(3)).unwrap();
    let plan = plan.join("; ");
    assert!(plan.contains("jobs_fair") && !plan.contains("TEMP B-TREE"), "{plan}");
    // Whether any pool is asked for: one probe.
    let plan: Vec<String> = db.conn.query_map(&format!("EXPLAIN QUERY PLAN {}", any_requirement_query()), args![], |r| r.get::<_, String>(3)).unwrap();
    assert!(plan.join("; ").contains("jobs_by_requirement") && !plan.iter().any(|s| s.starts_with("SCAN jobs") && !s.contains("INDEX")), "{plan:?}");
    // The pools asked for: one probe each.
    let plan: Vec<String> = db.conn.query_map(&format!("EXPLAIN QUERY PLAN {}", requirements_query()), args![], |r| r.get::<_, String>(3)).unwrap();
    let scans: Vec<&String> = plan.iter().filter(|step| step.starts_with("SCAN") && !step.starts_with("SCAN needs") && !step.starts_with("SCAN CONSTANT ROW") && !step.contains("INDEX jobs_by_requirement")).collect();
    assert!(plan.iter().any(|s| s.contains("jobs_by_requirement")) && scans.is_empty() && !plan.iter().any(|s| s.contains("TEMP B-TREE")), "{plan:?}");
    // Whose turn it is: the users with queued work, one index probe each
    // (no scan but of the users found), and the head of each one's queue.
    for query in [waiting_query(), head_query()] {
        let plan: Vec<String> = db.conn.query_map(&format!("EXPLAIN QUERY PLAN {query}"), args!["user-a"], |r| r.get::<_, String>(3)).unwrap_or_else(|_| db.conn.query_map(&format!("EXPLAIN QUERY PLAN {query}"), args![], |r| r.get::<_, String>(3)).unwrap());
        let scans: Vec<&String> = plan.iter().filter(|step| step.starts_with("SCAN") && !step.starts_with("SCAN owners") && !step.starts_with("SCAN CONSTANT ROW") && !step.contains("INDEX jobs_fair")).collect();
        assert!(plan.iter().any(|s| s.contains("jobs_fair")) && scans.is_empty() && !plan.iter().any(|s| s.contains("TEMP B-TREE")), "{plan:?}");
    }
    // Who holds how many: an index alone, never the table.
    let plan: Vec<String> = db.conn.query_map(&format!("EXPLAIN QUERY PLAN {}", running_query()), args![], |r| r.get::<_, String>(3)).unwrap();
    assert!(plan.join("; ").contains("COVERING INDEX jobs_running_by_owner"), "{plan:?}");
    // The lease a worker already holds is found by its own index, not
    // a scan of every job.
    let plan: Vec<String> = db.conn.query_map(&format!("EXPLAIN QUERY PLAN {}", held_query()), args!["w"], |r| r.get::<_, String>(3)).unwrap();
    assert!(plan.join("; ").contains("jobs_held"), "{plan:?}");
}

#[test]
fn pages_cover_every_item_once() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        let jobs: Vec<NewJob> = (0..25).map(|i| job(&format!("j{i:02}"))).collect();
        create(&mut db, "c", 0, &jobs);
        for i in 0..5 {
            create(&mut db, &format!("other{i}"), 0, &[job(&format!("o{i}"))]);
        }
        let (mut seen, mut after) = (Vec::new(), 0);
        loop {
            let (page, next) = db.jobs_page("c", after, 10).unwrap();
            seen.extend(page.into_iter().map(|j| j.job_id));
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        assert_eq!(seen, jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>());
        let (mut collections, mut after) = (Vec::new(), 0);
        loop {
            let (page, next) = db.collections_page(None, after, 4).unwrap();
            collections.extend(page.into_iter().map(|c| (c.collection_id, c.counts.unwrap().queued)));
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        assert_eq!(collections.len(), 6);
        assert_eq!(collections[0], ("c".to_string(), 25), "counts come with each collection");
    });
}

#[test]
fn a_group_of_calls_commits_once_and_a_failing_one_undoes_only_itself() {
    each_backend(|target| {
    let mut db = Db::connect(target).unwrap();
    create(&mut db, "c", 0, &[job("a"), job("b")]);
    worker(&mut db, "w", 0);
    worker(&mut db, "x", 0);
    db.begin().unwrap();
    let first = db.lease("w", &RULES, &Policy::default()).unwrap().unwrap();
    assert!(matches!(db.lease("ghost", &RULES, &Policy::default()), Err(CallError::NotRegistered(_))));
    let second = db.lease("x", &RULES, &Policy::default()).unwrap().unwrap();
    // Not visible to a reader before the commit…
    let reader = Db::open_reader(target).unwrap();
    assert_eq!(reader.collection("c").unwrap().unwrap().1.counts.unwrap().running, 0);
    db.commit().unwrap();
    // … and all of it after.
    assert_eq!(reader.collection("c").unwrap().unwrap().1.counts.unwrap().running, 2);
    assert_ne!(first.spec.job_id, second.spec.job_id);
    assert_eq!(db.take_touched().len(), 2, "both leased jobs are announced");
    });
}

#[test]
fn priority_first_then_fifo() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "low", 0, &[job("l1")]);
        create(&mut db, "high", 5, &[job("h1"), job("h2")]);
        let order: Vec<String> = (0..3)
            .map(|i| {
                // One lease a worker: three workers take the queue's first three.
                worker(&mut db, &format!("w{i}"), 0);
                db.lease(&format!("w{i}"), &RULES, &Policy::default()).unwrap().unwrap().spec.job_id
            })
            .collect();
        assert_eq!(order, ["h1", "h2", "l1"]);
    });
}

#[test]
fn a_restart_grants_running_leases_a_full_lease_length() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "c", 0, &[job("a")]);
        worker(&mut db, "w", 0);
        db.lease("w", &Rules { lease_seconds: -5.0, ..RULES }, &Policy::default()).unwrap().unwrap();
        db.grant_grace(&RULES).unwrap();
        assert!(db.expire_leases(&RULES).unwrap().is_empty(), "the downtime is not the worker's");
        assert_eq!(state(&db, "c", "a").state, RUNNING);
    });
}

/// Two coordinators on one PostgreSQL: the one that restarts must not
/// wait on (or deadlock against) the rows the other holds mid-call.
#[test]
fn a_restart_grants_grace_around_the_rows_another_coordinator_holds() {
    let Some(pg) = super::testing::Postgres::from_env() else {
        eprintln!("skipped: STYLEFARM_TEST_POSTGRES is not set (scripts/test.sh sets it)");
        return;
    };
    let database = pg.fresh_database();
    let mut survivor = Db::connect(&database).unwrap();
    create(&mut survivor, "c", 0, &[job("a"), job("b")]);
    worker(&mut survivor, "w", 0);
    worker(&mut survivor, "v", 0);
    survivor.lease("w", &RULES, &Policy::default()).unwrap().unwrap();
    survivor.lease("v", &RULES, &Policy::default()).unwrap().unwrap();
    // The survivor is inside a worker's call on job a: its row locked.
    let held = survivor.conn.savepoint().unwrap();
    held.query_row("SELECT id FROM jobs WHERE id = ?1 FOR UPDATE", args!["a"], |_| Ok(())).unwrap();
    let (target, (tx, rx)) = (database.target.clone(), std::sync::mpsc::channel());
    std::thread::spawn(move || {
        let mut restarted = Db::connect(&target).unwrap();
        let _ = tx.send(restarted.grant_grace(&RULES));
    });
    let graced = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the grace waited on the other coordinator's row lock");
    assert_eq!(graced.unwrap(), 1, "job b only: job a's lease is being served");
    drop(held);
}

#[test]
fn a_stalled_coordinator_blames_nobody_and_lapses_on_one_job_never_quarantine() {
    let rules = Rules { lease_seconds: 0.3, max_failures: 3, max_requeues: 100, quarantine_after: 2 };
    let pause = |s: f64| std::thread::sleep(std::time::Duration::from_secs_f64(s));
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "c", 0, &[job("a"), job("b")]);
        worker(&mut db, "w", 0);
        worker(&mut db, "o", 0);
        let a = db.lease("o", &rules, &Policy::default()).unwrap().unwrap();
        db.complete(&Call { worker: "o", job: "a", token: a.token }, "out", &pb::Progress::default(), &rules).unwrap();
        let strikes = |db: &Db| {
            let (ws, _) = db.workers_page(0, 10, false, RULES.lease_seconds).unwrap();
            let w = ws.into_iter().find(|w| w.worker_id == "w").unwrap();
            (w.strikes, w.quarantined, w.quarantine_reason)
        };
        assert!(db.expire_leases(&rules).unwrap().is_empty());
        db.lease("w", &rules, &Policy::default()).unwrap().unwrap();
        // The coordinator stalls for longer than a lease (no sweep runs):
        // the next sweep gives the time back instead of expiring.
        pause(STALL_SECONDS + 0.2);
        assert!(db.expire_leases(&rules).unwrap().is_empty(), "a stall is nobody's fault");
        assert_eq!(state(&db, "c", "b").state, RUNNING);
        // Everyone silent (o was last heard before w): no evidence, no strike.
        pause(0.6);
        assert_eq!(db.expire_leases(&rules).unwrap(), vec!["c".to_string()]);
        assert_eq!(state(&db, "c", "b").state, QUEUED);
        assert_eq!(strikes(&db).0, 0, "a lapse nobody else was heard through is no strike");
        // w silent while o is heard: strikes, but lapses on one job alone
        // (a job no worker can even read) never quarantine.
        for round in 1..=3 {
            db.lease("w", &rules, &Policy::default()).unwrap().unwrap();
            pause(0.2);
            assert!(db.lease("o", &rules, &Policy::default()).unwrap().is_none());
            pause(0.15);
            assert_eq!(db.expire_leases(&rules).unwrap().len(), 1);
            assert_eq!(strikes(&db), (round, false, String::new()), "round {round}");
        }
        // The same on a second job: evidence against the worker.
        db.cancel("c").unwrap();
        create(&mut db, "d", 0, &[job("e")]);
        db.lease("w", &rules, &Policy::default()).unwrap().unwrap();
        pause(0.2);
        assert!(db.lease("o", &rules, &Policy::default()).unwrap().is_none());
        pause(0.15);
        db.expire_leases(&rules).unwrap();
        let (n, quarantined, reason) = strikes(&db);
        assert!(n == 4 && quarantined, "{n} {quarantined}");
        assert!(reason.contains("on 2 different jobs") && reason.contains("lease lapsed while other workers were heard"), "{reason}");
    });
}

#[test]
fn a_coordinators_writers_share_one_record_of_sweeps() {
    // Writers take sweeps in turn: one that has not swept for a while must
    // not take the others' sweeps for a stall (and extend every lease).
    let rules = Rules { lease_seconds: 30.0, ..RULES };
    let pause = |s: f64| std::thread::sleep(std::time::Duration::from_secs_f64(s));
    each_backend(|target| {
        let mut first = Db::connect(target).unwrap();
        let mut second = first.another_writer(target).unwrap();
        create(&mut first, "c", 0, &[job("j")]);
        worker(&mut first, "w", 0);
        first.lease("w", &rules, &Policy::default()).unwrap().unwrap();
        let deadline = |db: &Db| db.conn.query_row("SELECT lease_deadline FROM jobs WHERE id = ?1", args!["j"], |r| r.get::<_, f64>(0)).unwrap();
        let leased_until = deadline(&first);
        second.expire_leases(&rules).unwrap();
        pause(STALL_SECONDS * 0.75);
        first.expire_leases(&rules).unwrap();
        pause(STALL_SECONDS * 0.75);
        second.expire_leases(&rules).unwrap();
        assert_eq!(deadline(&second), leased_until, "sweeps came every {} s: no stall", STALL_SECONDS * 0.75);
    });
}

#[test]
fn a_deleted_collection_is_hidden_then_forgotten_and_its_own_inputs_named() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        let shared = NewJob { id: "b-j".into(), content_key: "inputs/c".into(), style_keys: vec!["inputs/other".into()], ..job("b-j") };
        create(&mut db, "a", 0, &[job("a-j")]);
        create(&mut db, "b", 0, &[shared]);
        // Queued work refuses a plain delete; nothing changed.
        assert!(matches!(db.mark_deleted("a", false), Err(CallError::Unfinished { queued: 1, running: 0, .. })));
        assert!(db.owner("a").unwrap().is_some());
        assert!(matches!(db.mark_deleted("nope", false), Err(CallError::NoCollection(_))));
        // With cancel: hidden at once, the job cancelled before it ran, so
        // no worker can still write.
        assert!(matches!(db.mark_deleted("a", true).unwrap(), Marked::Deleting(_)));
        assert!(db.owner("a").unwrap().is_none() && db.collection("a").unwrap().is_none());
        assert_eq!(db.owner_even_deleted("a").unwrap().as_deref(), Some(""));
        assert_eq!(db.deletions_due().unwrap().into_iter().map(|(id, _)| id).collect::<Vec<_>>(), ["a"]);
        assert!(!db.writers_may_remain("a").unwrap());
        assert_eq!(db.inputs_only_of("a").unwrap(), ["inputs/s"], "b reads inputs/c");
        assert!(matches!(db.mark_deleted("a", false).unwrap(), Marked::Deleting(_)), "a repeat while it goes");
        db.forget_collection("a").unwrap();
        assert!(db.deletions_due().unwrap().is_empty());
        assert_eq!(db.mark_deleted("a", false).unwrap(), Marked::AlreadyDeleted);
        assert!(db.collection("b").unwrap().is_some(), "b untouched");
        // Retention: b's job is queued, so b has not ended, however old.
        assert!(db.ended_before(now() + 3600.0, 10).unwrap().is_empty());
        db.cancel("b").unwrap();
        assert_eq!(db.ended_before(now() + 3600.0, 10).unwrap(), ["b"], "ended (cancelled before it ran): its creation counts");
        assert!(db.ended_before(now() - 3600.0, 10).unwrap().is_empty(), "not before it was created");
    });
}

/// Two coordinators on one PostgreSQL. One that restarts while the other
/// sweeps gives running leases nothing back, and one that stalls while the
/// other sweeps gives back nothing either: the other served the workers
/// (before, each restart or stall stretched every lease in the farm). When
/// no coordinator swept for a while, the leases get that time back.
#[test]
fn a_restart_or_a_stall_gives_back_only_the_time_no_coordinator_served() {
    let Some(pg) = super::testing::Postgres::from_env() else {
        eprintln!("skipped: STYLEFARM_TEST_POSTGRES is not set (scripts/test.sh sets it)");
        return;
    };
    let database = pg.fresh_database();
    let deadline = |db: &Db| -> f64 { db.conn.query_row("SELECT lease_deadline FROM jobs WHERE id = ?1", args!["a"], |r| r.get(0)).unwrap() };
    let pause = |s: f64| std::thread::sleep(std::time::Duration::from_secs_f64(s));
    let mut a = Db::connect(&database.target).unwrap();
    create(&mut a, "c", 0, &[job("a")]);
    worker(&mut a, "w", 0);
    a.lease("w", &RULES, &Policy::default()).unwrap().unwrap();
    let mut b = Db::connect(&database.target).unwrap();
    b.grant_grace(&RULES).unwrap();
    b.expire_leases(&RULES).unwrap();
    let leased = deadline(&a);

    // A restarts while B serves: no grace.
    let mut a = Db::connect(&database.target).unwrap();
    assert_eq!(a.grant_grace(&RULES).unwrap(), 0, "B served the workers");
    assert_eq!(deadline(&a), leased);

    // A stalls past STALL_SECONDS while B sweeps (every half second, as
    // a live coordinator does): nothing back.
    for _ in 0..5 {
        pause(0.5);
        b.expire_leases(&RULES).unwrap();
    }
    a.expire_leases(&RULES).unwrap();
    assert!((deadline(&a) - leased).abs() < 0.01, "B swept during A's stall: {} then {}", leased, deadline(&a));

    // Nobody sweeps for a while (both down), then A starts again: the
    // leases get the farm's downtime back.
    pause(STALL_SECONDS + 0.3);
    let mut a = Db::connect(&database.target).unwrap();
    assert_eq!(a.grant_grace(&RULES).unwrap(), 1);
    let given = deadline(&a) - leased;
    assert!(given > STALL_SECONDS && given < STALL_SECONDS + 5.0, "the downtime back: {given:.2} s");
}

/// A notification's try is claimed by one coordinator at a time, under one
/// delivery id that every later try keeps, whoever makes it; a stale
/// claimer cannot end a delivery that is not its own.
#[test]
fn one_coordinator_claims_each_try_of_a_notification_under_one_delivery_id() {
    each_backend(|target| {
        let mut a = Db::connect(target).unwrap();
        let c = NewCollection { notify_url: "http://hooks/x".into(), ..collection("c", &[job("j")]) };
        a.create_collection(&c).unwrap();
        let mut b = Db::connect(target).unwrap();
        let t = now();
        assert!(a.collections_to_notify(t, 10).unwrap().is_empty(), "not before it has ended");
        a.conn.execute("UPDATE jobs SET state = ?1", args![pb::JobState::Cancelled as i32]).unwrap();
        assert_eq!(a.collections_to_notify(t, 10).unwrap(), [("c".to_string(), String::new(), "http://hooks/x".to_string())]);

        let first = a.claim_notification("c", t, t + 30.0, "d1").unwrap();
        assert_eq!(first, Some(Claim { delivery: "d1".into(), tries: 0 }));
        assert_eq!(b.claim_notification("c", t, t + 30.0, "d2").unwrap(), None, "claimed by a");
        assert!(b.collections_to_notify(t, 10).unwrap().is_empty(), "not due while claimed");
        assert!(a.notification_tried("c", "d1", Tried::Again(t - 1.0)).unwrap());
        let second = b.claim_notification("c", t, t + 30.0, "d3").unwrap();
        assert_eq!(second, Some(Claim { delivery: "d1".into(), tries: 1 }), "the next try keeps the delivery id, on any coordinator");
        assert!(!a.notification_tried("c", "d2", Tried::Done).unwrap(), "not a's delivery to end");
        // A claim that lapsed (its coordinator died mid-try) is taken again.
        assert!(b.claim_notification("c", t + 31.0, t + 61.0, "d4").unwrap().is_some());
        assert!(b.notification_tried("c", "d1", Tried::Done).unwrap());
        assert!(a.collections_to_notify(t + 100.0, 10).unwrap().is_empty(), "done: not sent again");
        assert_eq!(a.claim_notification("c", t + 100.0, t + 130.0, "d5").unwrap(), None);
    });
}

/// Bytes stored: a new collection is due for measuring, then not until
/// something changes (a stale mark, an attempt that ends); the farm's
/// total counts a shared input once and a deleted collection not at all;
/// a job's worker is shown by the name it registered under.
#[test]
fn what_collections_store_is_measured_when_due_and_an_input_counted_once() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        create(&mut db, "a", 0, &[job("a-j")]);
        let b_job = NewJob { content_key: "inputs/c".into(), style_keys: vec!["inputs/t".into()], ..job("b-j") };
        create(&mut db, "b", 0, &[b_job]);
        let t = now();
        let mut due = db.usage_due(t, t - 60.0, 10).unwrap();
        due.sort();
        assert_eq!(due, ["a", "b"], "never measured");
        assert_eq!(db.inputs_of("b").unwrap(), ["inputs/c", "inputs/t"]);
        db.record_usage("a", 1000, &[("inputs/c".into(), 300), ("inputs/s".into(), 20)], t).unwrap();
        db.record_usage("b", 50, &[("inputs/c".into(), 300), ("inputs/t".into(), 7)], t).unwrap();
        assert!(db.usage_due(t + 1.0, t - 60.0, 10).unwrap().is_empty(), "measured, nothing since");
        assert_eq!(db.collection("a").unwrap().unwrap().1.stored_bytes, 1320);
        assert_eq!(db.collection("b").unwrap().unwrap().1.stored_bytes, 357);
        assert_eq!(db.stored_bytes().unwrap(), 1000 + 50 + 300 + 20 + 7, "inputs/c once");
        assert_eq!(db.stored_bytes_by_owner().unwrap(), [(String::new(), 1320 + 357)]);

        // A lease: running collections are due once their measure is old;
        // the job carries its worker's name.
        db.register_worker("w-1a2b", &pb::RegisterRequest { name: "gpu-box".into(), device: "cpu".into(), ..Default::default() }, &RULES).unwrap();
        let l = db.lease("w-1a2b", &RULES, &Policy::default()).unwrap().unwrap();
        let running = db.collection(&l.spec.collection_id).unwrap().unwrap().1.jobs[0].clone();
        assert_eq!((running.worker.as_str(), running.worker_name.as_str(), running.worker_shown()), ("w-1a2b", "gpu-box", "gpu-box"));
        assert!(db.usage_due(t + 1.0, t - 60.0, 10).unwrap().is_empty(), "measured recently");
        assert_eq!(db.usage_due(t + 1.0, t + 1.0, 10).unwrap(), [l.spec.collection_id.clone()], "running, measured long enough ago");
        // Paused: the running job's heartbeat asks for it back; resumed, not.
        let call = Call { worker: "w-1a2b", job: &l.spec.job_id, token: l.token };
        let beat = pb::HeartbeatRequest { progress: Some(pb::Progress { iteration: 1, iterations: 10, ..Default::default() }), ..Default::default() };
        db.update_collection(&l.spec.collection_id, Some(true), None).unwrap();
        assert!(db.heartbeat(&call, &beat, None, &RULES).unwrap().release.is_some(), "a paused collection's job is asked back");
        db.update_collection(&l.spec.collection_id, Some(false), None).unwrap();
        assert!(db.heartbeat(&call, &beat, None, &RULES).unwrap().release.is_none());
        // An attempt that ends makes its collection due.
        let ended_after = now();
        db.complete(&Call { worker: "w-1a2b", job: &l.spec.job_id, token: l.token }, "out", &pb::Progress::default(), &RULES).unwrap();
        assert_eq!(db.usage_due(ended_after, t - 60.0, 10).unwrap(), [l.spec.collection_id.clone()]);
        let (_, detail) = db.job(&l.spec.job_id).unwrap().unwrap();
        assert_eq!(detail.attempts[0].worker_name, "gpu-box");
        // A stale mark makes it due again.
        db.usage_stale("b").unwrap();
        assert!(db.usage_due(now(), t - 60.0, 10).unwrap().contains(&"b".to_string()));

        // Deleted: its folder counts no more; an input it alone read goes
        // when the deleter forgets it.
        db.cancel("b").unwrap();
        db.mark_deleted("b", false).unwrap();
        db.forget_collection("b").unwrap();
        db.forget_stored_input("inputs/t").unwrap();
        assert_eq!(db.stored_bytes().unwrap(), 1000 + 300 + 20);
    });
}

/// The lease follows the sharing rule: a user who holds every worker
/// yields the next free one to a newcomer; weights and running quotas
/// hold; a submit past `--max-queued` is refused with the numbers and
/// adds nothing.
#[test]
fn leases_go_to_the_user_furthest_below_their_share_and_quotas_hold() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        let owned = |owner: &str, id: &str, jobs: usize| NewCollection { owner: owner.into(), ..collection(id, &(0..jobs).map(|i| job(&format!("{id}-{i}"))).collect::<Vec<_>>()) };
        db.create_collection(&owned("ana", "a", 20)).unwrap();
        for w in ["w0", "w1", "w2", "w3"] {
            worker(&mut db, w, 0);
        }
        let even = Policy::default();
        let mut held = std::collections::HashMap::new();
        for w in ["w0", "w1", "w2"] {
            held.insert(w, db.lease(w, &RULES, &even).unwrap().unwrap());
        }
        assert!(held.values().all(|l| l.spec.collection_id == "a"), "alone on the farm, ana has it all");
        // bo's later, lower-priority work goes first at the next lease.
        db.create_collection(&NewCollection { priority: -5, ..owned("bo", "b", 3) }).unwrap();
        assert_eq!(db.lease("w3", &RULES, &even).unwrap().unwrap().spec.collection_id, "b");
        // w0 frees: 2 of ana's and 1 of bo's run; even shares of 4 are 2
        // each, so bo again.
        let done = |db: &mut Db, w: &str, l: Leased| db.complete(&Call { worker: w, job: &l.spec.job_id, token: l.token }, "out.png", &pb::Progress::default(), &RULES).unwrap();
        done(&mut db, "w0", held.remove("w0").unwrap());
        let l = db.lease("w0", &RULES, &even).unwrap().unwrap();
        assert_eq!(l.spec.collection_id, "b");
        // The same moment with ana weighing 3 (a share of 3 of 4): ana.
        done(&mut db, "w0", l);
        let heavy = Policy { shares: [("ana".to_string(), 3.0)].into(), ..Policy::default() };
        let l = db.lease("w0", &RULES, &heavy).unwrap().unwrap();
        assert_eq!(l.spec.collection_id, "a");
        // ana at a running quota of 2 (w1, w2): with bo allowed none,
        // a free worker gets nothing.
        done(&mut db, "w0", l);
        let capped = Policy { max_running: [("ana".to_string(), 2), ("bo".to_string(), 0)].into(), ..Policy::default() };
        assert!(db.lease("w0", &RULES, &capped).unwrap().is_none(), "ana holds 2, bo may hold none");
        let capped_ana = Policy { max_running: [("ana".to_string(), 2)].into(), ..Policy::default() };
        assert_eq!(db.lease("w0", &RULES, &capped_ana).unwrap().unwrap().spec.collection_id, "b", "the next free worker: bo (ana at her quota)");

        // --max-queued: ana has 16 queued (20 less 4 leased); 3 more fit
        // 19, 4 do not.
        let queued_jobs = |db: &Db| db.conn.query_row(&format!("SELECT CAST(COUNT(*) AS BIGINT) FROM jobs WHERE state = {QUEUED}"), args![], |r| r.get::<_, i64>(0)).unwrap();
        let queued_before = queued_jobs(&db);
        match db.create_collection(&NewCollection { max_queued: Some(19), ..owned("ana", "a2", 4) }) {
            Err(CallError::OverQuota { queued, adding, max }) => assert_eq!((queued, adding, max), (16, 4, 19)),
            other => panic!("over quota: {other:?}"),
        }
        assert!(db.collection("a2").unwrap().is_none() && queued_jobs(&db) == queued_before, "nothing of it stays");
        db.create_collection(&NewCollection { max_queued: Some(19), ..owned("ana", "a3", 3) }).unwrap();
        db.create_collection(&NewCollection { max_queued: Some(3), ..owned("cy", "c", 3) }).unwrap();
    });
}

/// Preemption as the database applies it: a full farm of ana's when bo
/// submits marks one of her jobs (not while a worker idles, not twice,
/// not again within `min_run`); its heartbeat is answered "release" with
/// why, its release costs nothing and ends the attempt saying so; a job
/// paused is asked back too, and the next attempt of a preempted job is
/// not asked back for the old mark.
#[test]
fn a_full_farm_marks_one_job_to_give_back_and_its_release_costs_nothing() {
    each_backend(|target| {
        let mut db = Db::connect(target).unwrap();
        let owned = |owner: &str, id: &str, jobs: usize| NewCollection { owner: owner.into(), ..collection(id, &(0..jobs).map(|i| job(&format!("{id}-{i}"))).collect::<Vec<_>>()) };
        db.create_collection(&owned("ana", "a", 4)).unwrap();
        for w in ["w0", "w1", "w2"] {
            worker(&mut db, w, 0);
        }
        let even = Policy::default();
        let l0 = db.lease("w0", &RULES, &even).unwrap().unwrap();
        let l1 = db.lease("w1", &RULES, &even).unwrap().unwrap();
        assert!(db.preempt(&even, &RULES, 60.0).unwrap().is_empty(), "ana alone: nothing outranks her own jobs");
        db.create_collection(&owned("bo", "b", 1)).unwrap();
        assert!(db.preempt(&even, &RULES, 60.0).unwrap().is_empty(), "w2 is idle: it takes bo's job");
        // w2 drains: the farm is full.
        db.set_draining("w2", true).unwrap();
        let taken = db.preempt(&even, &RULES, 60.0).unwrap();
        assert_eq!(taken.len(), 1, "{taken:?}");
        assert_eq!(taken[0].for_owner, "bo");
        assert!(db.preempt(&even, &RULES, 60.0).unwrap().is_empty(), "the job leaving frees the worker bo needs: nothing more");
        let (victim, kept, victim_worker, kept_worker) = if taken[0].job == l0.spec.job_id { (&l0, &l1, "w0", "w1") } else { (&l1, &l0, "w1", "w0") };
        let beat = pb::HeartbeatRequest { progress: Some(pb::Progress { iteration: 3, iterations: 10, ..Default::default() }), ..Default::default() };
        let call = Call { worker: victim_worker, job: &victim.spec.job_id, token: victim.token };
        let why = db.heartbeat(&call, &beat, None, &RULES).unwrap().release.expect("asked back");
        assert!(why.starts_with("preempted: another user is"), "{why}");
        assert!(db.heartbeat(&Call { worker: kept_worker, job: &kept.spec.job_id, token: kept.token }, &beat, None, &RULES).unwrap().release.is_none());
        db.release(&call, Some(("ck-3", 3)), &RULES).unwrap();
        let (_, detail) = db.job(&victim.spec.job_id).unwrap().unwrap();
        let job = detail.job.clone().unwrap();
        assert_eq!((job.state, job.failures, job.requeues), (pb::JobState::Queued as i32, 0, 0), "a preemption costs nothing");
        assert!(detail.attempts[0].outcome.starts_with("released (preempted: another user is"), "{:?}", detail.attempts[0].outcome);
        // The freed worker takes bo's; ana's job waits, its next attempt
        // is not asked back for the old mark, and within --min-run it is
        // not preempted again.
        assert_eq!(db.lease(victim_worker, &RULES, &even).unwrap().unwrap().spec.collection_id, "b");
        worker(&mut db, "w3", 0);
        let again = db.lease("w3", &RULES, &even).unwrap().unwrap();
        assert_eq!(again.spec.job_id, victim.spec.job_id, "the preempted job is first in ana's queue again");
        let call = Call { worker: "w3", job: &again.spec.job_id, token: again.token };
        assert!(db.heartbeat(&call, &beat, None, &RULES).unwrap().release.is_none(), "a new attempt is not asked back for the old mark");
        db.create_collection(&NewCollection { priority: 9, ..owned("ana", "rush", 1) }).unwrap();
        let taken = db.preempt(&even, &RULES, 60.0).unwrap();
        assert_eq!(taken.len(), 1, "ana's rush job takes back one of her own: {taken:?}");
        assert_ne!(taken[0].job, again.spec.job_id, "not the one preempted within --min-run");
        assert!(taken[0].why.contains("priority 9"), "{}", taken[0].why);
    });
}
