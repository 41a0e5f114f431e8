//! Who owns the coordinator's state, and how the handlers reach it.
//!
//! A writer thread owns a writing connection (the pattern of mini-redis
//! and tokio-console: handlers validate, send a command — one of
//! [`crate::command::Command`], the named list of every change — and
//! await the answer). It takes every command that is waiting, runs them in one
//! transaction — each in its own savepoint, so a failing one undoes only
//! itself — commits once (one fsync for the whole group: group commit) and
//! only then answers, so an acknowledged call survives a SIGKILL. SQLite
//! has one writer, which after each commit publishes the jobs that changed
//! on a broadcast channel: `Watch` streams are fed from it, never by
//! re-reading the database.
//!
//! Reads run on a few read-only connections on tokio's blocking threads
//! (WAL: they see every commit and never block the writer).
//!
//! On PostgreSQL a coordinator has `--writers` of them taking groups from
//! the same queue and committing side by side, as several coordinators do
//! (row locks keep them apart). Since other writers and coordinators
//! write too, changes are announced through the database instead: each
//! group `NOTIFY`s the jobs it changed inside its transaction (delivered
//! at commit, in commit order), and a listener thread per coordinator
//! turns every coordinator's notifications into the same [`JobEvent`]s.
//! A connection the database closed is opened again (a writer's before
//! its next group, a reader's on its next read, the listener's with
//! capped backoff — telling watchers to resynchronise, since changes may
//! have passed unheard).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stylefarm_proto as pb;
use tokio::sync::{broadcast, oneshot};
use tonic::Status;

use crate::command::{Command, Reply, Settle};
use crate::db::{Db, Target};

/// Most commands one commit takes.
const MAX_GROUP: usize = 512;

/// Commands that may wait for the writer; a handler beyond that waits for
/// room (backpressure instead of an unbounded queue).
const MAX_WAITING: usize = 4096;

/// A change to a job, announced after its commit.
#[derive(Debug, Default)]
pub struct JobEvent {
    pub job: pb::Job,
    /// Changes may have been missed before this one (the database's
    /// change feed reconnected): watchers read a fresh snapshot.
    pub lost: bool,
}

/// The handle every handler holds.
#[derive(Clone)]
pub struct StateHandle {
    commands: tokio::sync::mpsc::Sender<Command>,
    readers: Arc<Readers>,
    /// Every committed job change, in commit order.
    pub events: broadcast::Sender<Arc<JobEvent>>,
    /// Commits that changed jobs answered here and change notices heard
    /// from the other coordinators, counted: raised before a commit's
    /// callers are answered (see [`StateHandle::changes`]).
    changes: Arc<AtomicU64>,
    /// Gone when every handle is: the listener stops then.
    _alive: Arc<()>,
}

/// Read-only connections, reused, at most [`MAX_READERS`] at a time (each
/// holds its own page cache; a burst of snapshots must not open a hundred).
struct Readers {
    target: Target,
    idle: Mutex<Vec<Db>>,
    permits: tokio::sync::Semaphore,
    /// Turns for whole-collection snapshots of watchers, apart: a burst of
    /// them (many watchers resynchronising) never holds up other reads.
    snapshots: tokio::sync::Semaphore,
}

/// Reads that run at once; more wait their turn.
const MAX_READERS: usize = 4;
/// Watchers' snapshots that are read at once.
const MAX_SNAPSHOT_READERS: usize = 2;

/// Which turns a read waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// A call's own read.
    Call,
    /// A watcher's snapshot of a whole collection.
    Snapshot,
}

impl StateHandle {
    /// Starts the writer thread over `db` (connected to `target`) and, on
    /// PostgreSQL, `writers - 1` more and the listener. They run until
    /// every handle is dropped.
    pub fn start(db: Db, target: Target, event_capacity: usize, writers: usize) -> std::io::Result<StateHandle> {
        let (commands, inbox) = tokio::sync::mpsc::channel::<Command>(MAX_WAITING);
        let (events, _) = broadcast::channel(event_capacity);
        let publish = events.clone();
        let changes = Arc::new(AtomicU64::new(0));
        let alive = Arc::new(());
        if db.is_shared() {
            let (listening, publish, handles, heard) = (listener_target(&target), events.clone(), Arc::downgrade(&alive), changes.clone());
            std::thread::Builder::new().name("changes".into()).spawn(move || listen(listening, publish, heard, handles))?;
            let (pinging, handles) = (target.clone(), Arc::downgrade(&alive));
            std::thread::Builder::new().name("changes-ping".into()).spawn(move || ping(pinging, handles))?;
        }
        // SQLite takes one writer at a time; PostgreSQL's row locks let a
        // coordinator's writers commit side by side, as several
        // coordinators' do.
        let writers = if db.is_shared() { writers.max(1) } else { 1 };
        let inbox = Arc::new(Mutex::new(inbox));
        for i in 1..writers {
            // Each connects on its own thread (connecting blocks); one
            // that cannot leaves the others to serve, and says so.
            let (seed, target, inbox, publish, counted) = (db.writer_seed(), target.clone(), inbox.clone(), publish.clone(), changes.clone());
            std::thread::Builder::new().name(format!("state-{i}")).spawn(move || match seed.connect(&target) {
                Ok(db) => own(db, target, inbox, publish, counted),
                Err(e) => tracing::error!("writer {i} could not connect: {e}; the others serve"),
            })?;
        }
        let (target_0, inbox_0, counted) = (target.clone(), inbox.clone(), changes.clone());
        std::thread::Builder::new().name("state-0".into()).spawn(move || own(db, target_0, inbox_0, publish, counted))?;
        let readers = Readers {
            target,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(MAX_READERS),
            snapshots: tokio::sync::Semaphore::new(MAX_SNAPSHOT_READERS),
        };
        Ok(StateHandle { commands, readers: Arc::new(readers), events, changes, _alive: alive })
    }

    /// How many job changes this coordinator has committed or heard of so
    /// far (commits and notices, not jobs).
    /// A caller answered after a commit finds the count already raised by
    /// it, so a read begun when the count was `n` holds every change made
    /// by calls answered while it was still `n` (the other coordinators'
    /// changes count once their notice arrives, milliseconds later).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Runs the command `make` builds (given where its result goes) on the
    /// writer thread inside the next group commit, and returns its result
    /// once that group is on disk:
    /// `db.run(|reply| Command::CancelCollection { id, reply })`.
    pub async fn run<R: Send + 'static>(&self, make: impl FnOnce(Reply<R>) -> Command) -> Result<R, Status> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Status::unavailable("the coordinator is stopping"))?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::error!("commit failed: {e}");
                Err(Status::unavailable("the coordinator could not save the change; retry"))
            }
            Err(_) => Err(Status::unavailable("the coordinator is stopping")),
        }
    }

    /// Runs `f` on a read-only connection on a blocking thread.
    pub async fn read<R: Send + 'static>(&self, f: impl FnOnce(&Db) -> R + Send + 'static) -> Result<R, Status> {
        self.read_as(ReadKind::Call, f).await
    }

    /// [`StateHandle::read`], waiting for the turns of `kind`.
    pub async fn read_as<R: Send + 'static>(&self, kind: ReadKind, f: impl FnOnce(&Db) -> R + Send + 'static) -> Result<R, Status> {
        let turns = match kind {
            ReadKind::Call => &self.readers.permits,
            ReadKind::Snapshot => &self.readers.snapshots,
        };
        let _turn = turns.acquire().await.map_err(|_| Status::unavailable("the coordinator is stopping"))?;
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let db = match readers.idle.lock().ok().and_then(|mut idle| idle.pop()) {
                Some(db) => db,
                None => Db::open_reader(&readers.target).map_err(|e| {
                    tracing::error!("opening a reader: {e}");
                    Status::unavailable("the coordinator's database is unavailable; retry")
                })?,
            };
            let result = f(&db);
            if !db.is_broken() {
                if let Ok(mut idle) = readers.idle.lock() {
                    idle.push(db);
                }
            }
            Ok(result)
        })
        .await
        .map_err(|_| Status::internal("a database read ended abnormally"))?
    }
}

/// The writer thread: group, commit, answer, announce — until every handle
/// is gone.
fn own(mut db: Db, target: Target, inbox: Arc<Mutex<tokio::sync::mpsc::Receiver<Command>>>, events: broadcast::Sender<Arc<JobEvent>>, changes: Arc<AtomicU64>) {
    let shared = db.is_shared();
    loop {
        // The next group: what is waiting, taken by one writer at a time.
        let group = {
            let Ok(mut inbox) = inbox.lock() else { return };
            let Some(first) = inbox.blocking_recv() else { return };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match inbox.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            group
        };
        if db.is_broken() {
            match db.another_writer(&target) {
                Ok(fresh) => {
                    tracing::info!("the database is back");
                    db = fresh;
                }
                Err(e) => {
                    // This group's callers see their answer dropped
                    // (UNAVAILABLE) and retry; the next group tries again.
                    tracing::error!("the database is unavailable: {e}");
                    drop(group);
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        metrics::histogram!("stylefarm_commit_group_size").record(group.len() as f64);
        if let Err(e) = db.begin() {
            // Nothing ran: the callers see their answer dropped (UNAVAILABLE).
            tracing::error!("cannot open a transaction: {e}");
            db.rollback();
            continue;
        }
        let answers: Vec<Settle> = group.into_iter().map(|c| c.apply(&mut db)).collect();
        let changed_jobs = db.touched_any();
        let committed = if shared { db.notify_touched().and_then(|()| db.commit()) } else { db.commit() };
        match committed {
            Ok(()) => {
                if changed_jobs {
                    changes.fetch_add(1, Ordering::SeqCst);
                }
                answers.into_iter().for_each(|a| a(Ok(())));
                if !shared {
                    announce(&mut db, &events);
                }
            }
            Err(e) => {
                db.rollback();
                let message = e.to_string();
                answers.into_iter().for_each(|a| a(Err(message.clone())));
            }
        }
    }
}

/// How often each coordinator announces itself on the change channel, and
/// how long a listener may hear nothing before it takes its connection for
/// dead: a connection that died silently (no reset: a NAT or firewall
/// dropped it) would otherwise look like a farm where nothing changes,
/// freezing every Watch on this coordinator.
const PING_EVERY: Duration = Duration::from_secs(2);
const LISTEN_PATIENCE: Duration = Duration::from_secs(3 * PING_EVERY.as_secs());

/// Where the listener connects: the farm's database, or, for tests only,
/// `STYLEFARM_TEST_LISTENER_DATABASE` (the same database through a proxy
/// that can go silent).
fn listener_target(target: &Target) -> Target {
    match std::env::var("STYLEFARM_TEST_LISTENER_DATABASE") {
        Ok(url) if !url.is_empty() => Target::Postgres(url),
        _ => target.clone(),
    }
}

/// Announces this coordinator on the change channel every [`PING_EVERY`],
/// on a connection of its own, so every listener (its own and the other
/// coordinators') hears something while its connection is alive.
fn ping(target: Target, handles: std::sync::Weak<()>) {
    let mut db = None;
    while handles.strong_count() > 0 {
        if db.is_none() {
            db = Db::open_reader(&target).ok();
        }
        if let Some(d) = &db {
            // The farm's clock, kept to the database's.
            if let Err(e) = d.sync_clock() {
                tracing::debug!("reading the database's clock: {e}");
            }
            if let Err(e) = d.ping_listeners() {
                tracing::debug!("announcing on the change channel: {e}");
                db = None;
            }
        }
        std::thread::sleep(PING_EVERY);
    }
}

/// Every coordinator's changes, as PostgreSQL announces them, published
/// as [`JobEvent`]s; reconnects with capped backoff until the process
/// ends (or every handle is gone), and when it has heard nothing, not even
/// the coordinators' pings, for [`LISTEN_PATIENCE`].
fn listen(target: Target, events: broadcast::Sender<Arc<JobEvent>>, changes: Arc<AtomicU64>, handles: std::sync::Weak<()>) {
    let mut pause = Duration::from_millis(100);
    let mut first = true;
    while handles.strong_count() > 0 {
        let db = match Db::open_reader(&target).and_then(|db| db.listen_for_changes().map(|()| db)) {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!("listening for changes: {e}; again in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if !first {
            changes.fetch_add(1, Ordering::SeqCst);
            tracing::info!("listening for changes again; watchers resynchronise");
            let _ = events.send(Arc::new(JobEvent { lost: true, ..Default::default() }));
        }
        first = false;
        pause = Duration::from_millis(100);
        let mut heard = std::time::Instant::now();
        while handles.strong_count() > 0 {
            let (ids, any) = match db.changed_jobs(Duration::from_millis(500)) {
                Ok(changes) => changes,
                Err(e) => {
                    tracing::warn!("the change feed broke: {e}");
                    break;
                }
            };
            if any {
                heard = std::time::Instant::now();
            } else if heard.elapsed() > LISTEN_PATIENCE {
                tracing::warn!("the change feed went silent (no ping for {LISTEN_PATIENCE:?}): connecting again");
                break;
            }
            if !ids.is_empty() {
                changes.fetch_add(1, Ordering::SeqCst);
            }
            if events.receiver_count() == 0 || ids.is_empty() {
                continue;
            }
            match db.jobs_by_id(&ids) {
                Ok(jobs) => jobs.into_iter().for_each(|job| {
                    let _ = events.send(Arc::new(JobEvent { job, lost: false }));
                }),
                Err(e) => {
                    tracing::warn!("reading changed jobs: {e}");
                    break;
                }
            }
        }
    }
}

/// Publishes the jobs the last group changed. Nobody listening is fine.
fn announce(db: &mut Db, events: &broadcast::Sender<Arc<JobEvent>>) {
    let ids = db.take_touched();
    if ids.is_empty() || events.receiver_count() == 0 {
        return;
    }
    match db.jobs_by_id(&ids) {
        Ok(jobs) => {
            for job in jobs {
                let _ = events.send(Arc::new(JobEvent { job, lost: false }));
            }
        }
        Err(e) => tracing::error!("reading changed jobs for watchers: {e}"),
    }
}
