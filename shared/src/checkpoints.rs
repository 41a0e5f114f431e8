//! Checkpoints in a [`Store`]: `ckpt-00000120.safetensors`, newest K kept.
//! A new checkpoint is written before older ones are pruned, so a failed
//! write never leaves the render without a valid checkpoint.

use candle_core::Device;
use stylefarm_engine::Checkpoint;

use crate::storage::{StorageError, Store};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot encode the checkpoint: {0}")]
    Encode(#[from] stylefarm_engine::EngineError),
}

pub struct CheckpointStore {
    store: Store,
    keep: usize,
}

pub use crate::records::job_files::{checkpoint as name, checkpoint_iteration as iteration_of};

impl CheckpointStore {
    /// `keep` ≥ 1: how many of the newest checkpoints survive pruning.
    pub fn new(store: Store, keep: usize) -> Self {
        Self { store, keep: keep.max(1) }
    }

    pub fn location(&self) -> &str {
        self.store.location()
    }

    /// Checkpoint iterations present, newest first.
    pub async fn iterations(&self) -> Result<Vec<usize>, StorageError> {
        let mut its: Vec<usize> = self.store.list().await?.iter().filter_map(|n| iteration_of(n)).collect();
        its.sort_unstable_by(|a, b| b.cmp(a));
        Ok(its)
    }

    pub async fn check_writable(&self) -> Result<(), StorageError> {
        self.store.check_writable().await
    }

    /// Writes `ck` atomically, then deletes all but the newest `keep`.
    /// Returns the checkpoint's size in bytes.
    pub async fn save(&self, ck: &Checkpoint) -> Result<usize, CheckpointError> {
        let bytes = ck.encode()?;
        let size = bytes.len();
        self.store.put(&name(ck.state.iteration), bytes).await?;
        for old in self.iterations().await?.into_iter().skip(self.keep) {
            self.store.delete(&name(old)).await?;
        }
        Ok(size)
    }

    /// The newest checkpoint that reads and verifies, and a warning for
    /// each newer one that did not.
    pub async fn newest_valid(&self, device: &Device) -> Result<(Option<Checkpoint>, Vec<String>), StorageError> {
        let mut warnings = Vec::new();
        for it in self.iterations().await? {
            let n = name(it);
            let outcome = match self.store.get(&n).await {
                Ok(bytes) => Checkpoint::decode(&bytes, device).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(ck) => return Ok((Some(ck), warnings)),
                Err(e) => warnings.push(format!("skipping checkpoint {n} in {}: {e}", self.store.location())),
            }
        }
        Ok((None, warnings))
    }
}
