//! What every handler shares — the gRPC services, the Watch route and the
//! dashboard alike: the state's owner, storage, the configuration, the
//! admission limits, the blocking threads and the change mergers.

use std::sync::Arc;

use stylefarm_shared::storage::Store;

use crate::admission::{Admission, Work};
use crate::config::Config;
use crate::state::StateHandle;

/// What every handler shares.
pub(crate) struct State {
    /// The state's owner: reads, and the commands that change it.
    pub(crate) db: StateHandle,
    pub(crate) store: Store,
    /// The farm's identity, also in storage at [`crate::paths::FARM_MARKER`].
    pub(crate) farm_id: String,
    /// The operator's `--input-prefix` locations, opened at start.
    pub(crate) input_stores: Vec<(String, Store)>,
    pub(crate) config: Config,
    /// Open `Watch` and dashboard event streams, counted against the limits.
    pub(crate) watchers: Arc<Admission>,
    /// Submits being read and checked, counted against the limits.
    pub(crate) submits: Arc<Admission>,
    /// Dashboard zips being built, counted against their limits.
    pub(crate) zips: Arc<Admission>,
    /// Where a submit's image decoding and other CPU-heavy steps of a
    /// request run.
    pub(crate) work: Work,
    /// Where dashboard zips (their contact sheets) are drawn: a lane of
    /// their own, so a large one never holds up a submit's decoding.
    pub(crate) sheets: Work,
    /// One merger of committed changes per watched collection.
    pub(crate) hubs: crate::hub::Hubs,
    /// Wakes the preemption pass ([`crate::preemption`]) after a change
    /// that can make queued work outrank running work.
    pub(crate) preempt_now: tokio::sync::Notify,
}

