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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::state::JobEvent;

/// The least time between two batches of one collection.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// Batches a watcher may be behind before it must resynchronise.
const BACKLOG: usize = 64;

/// What a collection's watchers are handed.
#[derive(Debug)]
pub enum Batch {
    /// The latest change of each job that changed, merged; and the
    /// dashboard's encoding of them, made by the first browser that sends
    /// the batch and reused by every other.
    Changes(Vec<Arc<JobEvent>>, std::sync::OnceLock<String>),
    /// Changes were lost (the merger fell behind the stream): read a fresh
    /// snapshot.
    Resync,
}

/// The mergers, by collection.
pub struct Hubs {
    events: broadcast::Sender<Arc<JobEvent>>,
    mergers: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Batch>>>>>,
}

impl Hubs {
    pub fn new(events: broadcast::Sender<Arc<JobEvent>>) -> Self {
        Self { events, mergers: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Batches of `collection`'s changes from now on, starting its merger
    /// if it has none.
    pub fn subscribe(&self, collection: &str) -> broadcast::Receiver<Arc<Batch>> {
        let mut mergers = self.mergers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(batches) = mergers.get(collection) {
            return batches.subscribe();
        }
        let (batches, first) = broadcast::channel(BACKLOG);
        mergers.insert(collection.to_string(), batches.clone());
        tokio::spawn(merge(collection.to_string(), self.events.subscribe(), batches, self.mergers.clone()));
        first
    }
}

/// A collection's merger: runs until no watcher is left.
async fn merge(
    collection: String,
    mut events: broadcast::Receiver<Arc<JobEvent>>,
    batches: broadcast::Sender<Arc<Batch>>,
    mergers: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Batch>>>>>,
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
        let batch = if std::mem::take(&mut lost) {
            pending.clear();
            Some(Batch::Resync)
        } else if pending.is_empty() {
            None
        } else {
            Some(Batch::Changes(pending.drain().map(|(_, e)| e).collect(), std::sync::OnceLock::new()))
        };
        // The lock makes "no watcher left" and "a new watcher subscribes"
        // exclusive: a merger never ends under a watcher that just came.
        let mut mergers = mergers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if batches.receiver_count() == 0 {
            mergers.remove(&collection);
            return;
        }
        drop(mergers);
        if let Some(batch) = batch {
            let _ = batches.send(Arc::new(batch));
        }
    }
    mergers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&collection);
}

/// Takes one event from the stream into `pending` if it is the
/// collection's; false when the stream has ended.
fn absorb(e: Result<Arc<JobEvent>, broadcast::error::RecvError>, collection: &str, pending: &mut HashMap<String, Arc<JobEvent>>, lost: &mut bool) -> bool {
    match e {
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
