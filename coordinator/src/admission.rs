//! Who may start something expensive, and where it runs. Two kinds of
//! limit keep one client from taking the farm down:
//!
//! - [`Admission`]: how many of one kind of thing (open `Watch` streams,
//!   submits being read) one client may have at once, and how many all
//!   clients together. Over either, the call is refused at once with
//!   RESOURCE_EXHAUSTED naming the limit and its flag: a burst from one
//!   user never queues in front of another's.
//! - [`Work`]: CPU-heavy steps (decoding and hashing uploaded images,
//!   reading a dashboard submit's JSON, drawing a contact sheet) run on
//!   blocking threads, at most `threads` at once, so the async runtime that
//!   answers heartbeats and other users is never the one doing them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tonic::Status;

/// Places counted per key and in all: the one counter behind
/// [`Admission`] (per client) and the connection gate (per address,
/// [`crate::conn`]).
#[derive(Debug)]
pub(crate) struct Places<K: std::hash::Hash + Eq + Clone> {
    per_key: usize,
    total: usize,
    open: Mutex<HashMap<K, usize>>,
    /// The gauge that shows how many are open.
    gauge: &'static str,
}

/// Which cap a refused place hit, with how many were open.
pub(crate) enum Full {
    Key(usize),
    Total(usize),
}

/// One place taken; dropping it frees it.
#[derive(Debug)]
pub(crate) struct Place<K: std::hash::Hash + Eq + Clone> {
    places: Arc<Places<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Places<K> {
    pub(crate) fn new(per_key: usize, total: usize, gauge: &'static str) -> Arc<Self> {
        Arc::new(Self { per_key, total, open: Mutex::new(HashMap::new()), gauge })
    }

    /// A place for `key`, unless it or everyone is at the cap.
    pub(crate) fn take(self: &Arc<Self>, key: &K) -> Result<Place<K>, Full> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let all: usize = open.values().sum();
        if all >= self.total {
            return Err(Full::Total(all));
        }
        let mine = open.entry(key.clone()).or_default();
        if *mine >= self.per_key {
            return Err(Full::Key(*mine));
        }
        *mine += 1;
        metrics::gauge!(self.gauge).set((all + 1) as f64);
        Ok(Place { places: self.clone(), key: key.clone() })
    }

    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.lock().map(|o| o.values().sum()).unwrap_or(0)
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Place<K> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.places.open.lock() {
            if let Some(n) = open.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.key);
                }
            }
            metrics::gauge!(self.places.gauge).set(open.values().sum::<usize>() as f64);
        }
    }
}

/// Counts one kind of open thing per client and in all, and says which
/// limit a refusal hit.
#[derive(Debug)]
pub(crate) struct Admission {
    /// What is counted, as a message says it ("watches open").
    what: &'static str,
    per_client_flag: &'static str,
    total_flag: &'static str,
    places: Arc<Places<String>>,
}

/// One admitted thing; dropping it frees its place.
pub(crate) type Permit = Place<String>;

impl Admission {
    /// Open `Watch` streams and dashboard event streams.
    pub(crate) fn watches(per_client: usize, total: usize) -> Arc<Self> {
        Self::new("watches open", per_client, "--max-watchers-per-client", total, "--max-watchers", "stylefarm_watchers")
    }

    /// Zips of a collection being built for the dashboard (fixed limits).
    pub(crate) fn zips() -> Arc<Self> {
        Self::new("zips being built", 2, "", 8, "", "stylefarm_zips_in_flight")
    }

    /// Submits whose images are being read and checked.
    pub(crate) fn submits(per_client: usize, total: usize) -> Arc<Self> {
        Self::new("submits being read", per_client, "--max-submits-per-client", total, "--max-submits", "stylefarm_submits_in_flight")
    }

    fn new(
        what: &'static str,
        per_client: usize,
        per_client_flag: &'static str,
        total: usize,
        total_flag: &'static str,
        gauge: &'static str,
    ) -> Arc<Self> {
        Arc::new(Self { what, per_client_flag, total_flag, places: Places::new(per_client, total, gauge) })
    }

    /// A place for `client`, or RESOURCE_EXHAUSTED naming the limit it hit.
    pub(crate) fn admit(&self, client: &str) -> Result<Permit, Status> {
        self.places.take(&client.to_string()).map_err(|full| match full {
            Full::Total(all) => Status::resource_exhausted(format!(
                "{all} {} on this coordinator, its limit ({}); try again shortly",
                self.what,
                limit(self.total_flag, self.places.total)
            )),
            Full::Key(mine) => Status::resource_exhausted(format!(
                "this client has {mine} {}, the limit per client ({}); wait for one to finish",
                self.what,
                limit(self.per_client_flag, self.places.per_key)
            )),
        })
    }
}

/// A limit as a message names it: its flag and value, or the value.
fn limit(flag: &str, n: usize) -> String {
    if flag.is_empty() { n.to_string() } else { format!("{flag} {n}") }
}

/// CPU-heavy work, on blocking threads, a bounded number at once.
pub(crate) struct Work {
    threads: Arc<Semaphore>,
}

impl Work {
    /// `threads` at once (at least one). The default leaves one core to
    /// the runtime: [`Work::default_threads`].
    pub(crate) fn new(threads: usize) -> Self {
        Self { threads: Arc::new(Semaphore::new(threads.max(1))) }
    }

    /// One fewer than the machine's cores, at least one.
    pub(crate) fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
    }

    /// Runs `f` on a blocking thread once a place is free; callers wait in
    /// arrival order. The runtime's threads only await it.
    pub(crate) async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
        let permit = self.threads.clone().acquire_owned().await.map_err(|_| Status::unavailable("the coordinator is stopping"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| {
            tracing::error!("a blocking step ended abnormally: {e}");
            Status::internal("the coordinator failed while processing the request (see its log)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_and_all_together_are_capped_and_places_come_back() {
        let a = Admission::submits(2, 3);
        let (p1, p2) = (a.admit("u1").unwrap(), a.admit("u1").unwrap());
        let over = a.admit("u1").unwrap_err();
        assert_eq!(over.code(), tonic::Code::ResourceExhausted);
        assert!(over.message().contains("--max-submits-per-client 2"), "{}", over.message());
        let p3 = a.admit("u2").unwrap();
        let full = a.admit("u3").unwrap_err();
        assert!(full.message().contains("--max-submits 3"), "{}", full.message());
        drop(p1);
        let _p4 = a.admit("u3").expect("a finished submit frees its place");
        drop((p2, p3));
        assert!(a.admit("u1").is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_runs_off_the_runtime_at_most_n_at_once() {
        let work = Arc::new(Work::new(1));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (work, running, most) = (work.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                work.run(move || {
                    let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
                .await
            }));
        }
        // While the four wait their turn, the runtime answers at once.
        let start = std::time::Instant::now();
        tokio::task::yield_now().await;
        assert!(start.elapsed() < std::time::Duration::from_millis(20));
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
