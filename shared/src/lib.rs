//! What Stylefarm's binaries share, the middle floor between the contract
//! and the math below and the three programs above: reading and writing
//! images with limits that protect the machine, storage, checkpoints in
//! storage, the files a render leaves, finding VGG-19 weights, how a client
//! reaches the coordinator (and retries), logs, metrics and shutdown.

//!
//! The modules that need the engine (pictures from tensors, checkpoints in
//! storage, weights, devices) come with the `engine` feature; the
//! coordinator builds without it, and so without candle.

pub mod attempt_log;
pub mod backoff;
pub mod budget;
pub mod cgroup;
#[cfg(feature = "engine")]
pub mod checkpoints;
pub mod client;
#[cfg(feature = "engine")]
pub mod device;
pub mod host;
pub mod image_io;
pub mod layout;
pub mod memory;
#[cfg(feature = "engine")]
pub mod pictures;
pub mod plot;
pub mod records;
pub mod redact;
pub mod sheet;
pub mod storage;
pub mod telemetry;
pub mod terminal;
pub mod tfevents;
pub mod size;
#[cfg(feature = "engine")]
pub mod weights;
