//! One merger per watched collection: it alone follows the stream of every
//! committed job change, keeps this collection's, merges them per job for
//! [`INTERVAL`] and hands the batch to every watcher of the collection at
//! once. A hundred watchers cost one pass over the change stream and ten
//! wake-ups a second each, not one per change each.
//!
//! A merger starts with its collection's first watcher and ends when its
//! last one has gone. A watcher that falls more than `BACKLOG` (64) batches
//! behind is told to resynchronise (it sends its client a fresh snapshot);
//! so is every watcher when the merger itself falls behind the stream.
//!
//! Batches are numbered. A snapshot read after batch `n` was sent already
//! holds every change of batches up to `n`, so watchers that need a
//! snapshot while no newer batch has been sent share one read
//! ([`Subscription::snapshot`]) and skip batches up to `n` — but only a
//! read that holds every change made before they subscribed: one begun
//! after they subscribed, or one since which nothing was committed. (A
//! change committed before a watcher came may still wait in the merger's
//! window, unsent; an older read would hide it from that watcher.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{broadcast, OnceCell};

use crate::state::JobEvent;

/// The least time between two batches of one collection.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// Batches a watcher may be behind before it must resynchronise.
const BACKLOG: usize = 64;

/// What a collection's watchers are handed.
#[derive(Debug)]
pub enum Batch {
    /// The latest change of each job that changed, merged; and their
    /// encodings for browsers and for Watch, each made by the first
    /// watcher that sends the batch and reused by every other.
    Changes { seq: u64, jobs: Vec<Arc<JobEvent>>, json: OnceLock<String>, watch: OnceLock<WatchChanges> },
    /// Changes were lost (the merger fell behind the stream): read a fresh
    /// snapshot.
    Resync { seq: u64 },
}

impl Batch {
    /// The batch's number: the first is 1.
    pub fn seq(&self) -> u64 {
        match self {
            Batch::Changes { seq, .. } | Batch::Resync { seq } => *seq,
        }
    }
}

/// A batch as Watch sends it.
#[derive(Debug)]
pub struct WatchChanges {
    /// The encoded `WatchEvent { changes }`.
    pub grpc: bytes::Bytes,
    /// Each changed job's place in [`Snapshot::jobs`] and whether it has
    /// ended. (A collection's jobs are fixed at submit, so every snapshot
    /// of it lists the same jobs in the same order.)
    pub places: Vec<(usize, bool)>,
}

/// One collection's merger, as its watchers see it.
pub struct Channel {
    batches: broadcast::Sender<Arc<Batch>>,
    /// Batches sent so far; raised just before each is sent.
    sent: AtomicU64,
    /// Subscriptions so far: each takes the next number as its ticket.
    subscribed: AtomicU64,
    /// The snapshot being read or read, and when it began.
    snapshot: Mutex<Option<Kept>>,
}

/// A shared snapshot read and the counts when it began. A watcher shares
/// it when no batch was sent since, and it began after the watcher
/// subscribed or nothing was committed since.
struct Kept {
    sent: u64,
    subscribed: u64,
    changes: u64,
    read: Arc<OnceCell<Arc<Snapshot>>>,
}

/// A collection as one Watch message, encoded once for every watcher that
/// needs it, and what each needs to follow it.
#[derive(Debug)]
pub struct Snapshot {
    /// Who owns the collection (each watcher checks it may see it).
    pub owner: String,
    /// The encoded `WatchEvent { snapshot }`.
    pub grpc: bytes::Bytes,
    /// The collection's job ids, sorted, and whether each had ended.
    pub jobs: Vec<(String, bool)>,
}

/// One watcher's place at its collection's merger.
pub struct Subscription {
    pub batches: broadcast::Receiver<Arc<Batch>>,
    channel: Arc<Channel>,
    /// Its number among the channel's subscriptions (the first is 1).
    ticket: u64,
}

impl Subscription {
    /// A snapshot that holds every change of the batches numbered up to
    /// the `u64` returned (later batches hold the rest and reach this
    /// subscription) and every change committed before this subscription
    /// was made: one `read` per collection while no batch is sent and
    /// nothing is committed (`changes`: [`crate::state::StateHandle::changes`]
    /// now).
    pub async fn snapshot<F, Fut, E>(&self, changes: u64, read: F) -> Result<(Arc<Snapshot>, u64), E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Snapshot, E>>,
    {
        // Subscribed first, then the count: a batch counted after this
        // load is sent after it, to this subscription too.
        let seq = self.channel.sent.load(Ordering::SeqCst);
        let cell = {
            let mut kept = self.channel.snapshot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match kept.as_ref() {
                Some(k) if k.sent == seq && (k.subscribed >= self.ticket || k.changes == changes) => k.read.clone(),
                _ => {
                    let read = Arc::new(OnceCell::new());
                    let subscribed = self.channel.subscribed.load(Ordering::SeqCst);
                    *kept = Some(Kept { sent: seq, subscribed, changes, read: read.clone() });
                    read
                }
            }
        };
        let snapshot = cell.get_or_try_init(|| async { read().await.map(Arc::new) }).await?;
        Ok((snapshot.clone(), seq))
    }
}

/// The mergers, by collection.
pub struct Hubs {
    events: broadcast::Sender<Arc<JobEvent>>,
    mergers: Arc<Mutex<HashMap<String, Arc<Channel>>>>,
}

impl Hubs {
    pub fn new(events: broadcast::Sender<Arc<JobEvent>>) -> Self {
        Self { events, mergers: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Batches of `collection`'s changes from now on, starting its merger
    /// if it has none.
    pub fn subscribe(&self, collection: &str) -> Subscription {
        let mut mergers = self.mergers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = mergers.get(collection) {
            let ticket = channel.subscribed.fetch_add(1, Ordering::SeqCst) + 1;
            return Subscription { batches: channel.batches.subscribe(), channel: channel.clone(), ticket };
        }
        let (batches, first) = broadcast::channel(BACKLOG);
        let channel = Arc::new(Channel { batches, sent: AtomicU64::new(0), subscribed: AtomicU64::new(1), snapshot: Mutex::new(None) });
        mergers.insert(collection.to_string(), channel.clone());
        tokio::spawn(merge(collection.to_string(), self.events.subscribe(), channel.clone(), self.mergers.clone()));
        Subscription { batches: first, channel, ticket: 1 }
    }
}

/// A collection's merger: runs until no watcher is left.
async fn merge(
    collection: String,
    mut events: broadcast::Receiver<Arc<JobEvent>>,
    channel: Arc<Channel>,
    mergers: Arc<Mutex<HashMap<String, Arc<Channel>>>>,
) {
    let mut pending: HashMap<String, Arc<JobEvent>> = HashMap::new();
    let mut lost = false;
    let mut alive = true;
    while alive {
        // Wait for a change, checking now and then that someone still
        // watches.
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(e) => alive = absorb(e, &collection, &mut pending, &mut lost),
            Err(_) => {}
        }
        let window = tokio::time::sleep(INTERVAL);
        tokio::pin!(window);
        while alive {
            tokio::select! {
                _ = &mut window => break,
                e = events.recv() => alive = absorb(e, &collection, &mut pending, &mut lost),
            }
        }
        let seq = channel.sent.load(Ordering::SeqCst) + 1;
        let batch = if std::mem::take(&mut lost) {
            pending.clear();
            Some(Batch::Resync { seq })
        } else if pending.is_empty() {
            None
        } else {
            Some(Batch::Changes { seq, jobs: pending.drain().map(|(_, e)| e).collect(), json: OnceLock::new(), watch: OnceLock::new() })
        };
        // The lock makes "no watcher left" and "a new watcher subscribes"
        // exclusive: a merger never ends under a watcher that just came.
        let mut mergers = mergers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if channel.batches.receiver_count() == 0 {
            mergers.remove(&collection);
            return;
        }
        drop(mergers);
        if let Some(batch) = batch {
            channel.sent.store(seq, Ordering::SeqCst);
            let _ = channel.batches.send(Arc::new(batch));
        }
    }
    mergers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&collection);
}

/// Takes one event from the stream into `pending` if it is the
/// collection's; false when the stream has ended.
fn absorb(e: Result<Arc<JobEvent>, broadcast::error::RecvError>, collection: &str, pending: &mut HashMap<String, Arc<JobEvent>>, lost: &mut bool) -> bool {
    match e {
        Ok(e) if e.lost => {
            *lost = true;
            true
        }
        Ok(e) if e.job.collection_id == collection => {
            pending.insert(e.job.job_id.clone(), e);
            true
        }
        Ok(_) => true,
        Err(broadcast::error::RecvError::Lagged(_)) => {
            *lost = true;
            true
        }
        Err(broadcast::error::RecvError::Closed) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::{Hubs, Snapshot};

    /// Reads a snapshot through `sub`, counting the reads made.
    async fn read(sub: &super::Subscription, changes: u64, reads: &AtomicU32) -> u64 {
        let (_, seq) = sub
            .snapshot(changes, || async {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(Snapshot { owner: String::new(), grpc: bytes::Bytes::new(), jobs: Vec::new() })
            })
            .await
            .unwrap();
        seq
    }

    #[tokio::test]
    async fn a_watcher_shares_a_snapshot_read_that_holds_every_change_before_it_came() {
        let (events, _) = tokio::sync::broadcast::channel(16);
        let hubs = Hubs::new(events);
        let reads = AtomicU32::new(0);
        let count = || reads.load(Ordering::SeqCst);
        let (a, b) = (hubs.subscribe("c"), hubs.subscribe("c"));
        assert_eq!((read(&a, 7, &reads).await, read(&b, 7, &reads).await), (0, 0));
        assert_eq!(count(), 1, "two watchers share one read");
        let c = hubs.subscribe("c");
        read(&c, 7, &reads).await;
        assert_eq!(count(), 1, "nothing was committed since the read began: a later watcher shares it");
        let late = hubs.subscribe("c");
        read(&late, 8, &reads).await;
        assert_eq!(count(), 2, "a commit since the read began: a watcher that came after it reads again");
        read(&b, 9, &reads).await;
        assert_eq!(count(), 2, "a read begun after a watcher subscribed holds what it needs, commits or not");
        let other = hubs.subscribe("d");
        read(&other, 8, &reads).await;
        assert_eq!(count(), 3, "each collection has its own");
    }
}
