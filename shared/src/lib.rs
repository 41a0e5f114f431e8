//! What Stylefarm's binaries share, the middle floor between the contract
//! and the math below and the three programs above: reading and writing
//! images with limits that protect the machine, storage, checkpoints in
//! storage, the files a render leaves, finding VGG-19 weights, how a client
//! reaches the coordinator (and retries), logs, metrics and shutdown.

pub mod attempt_log;
pub mod backoff;
pub mod budget;
pub mod checkpoints;
pub mod client;
pub mod device;
pub mod image_io;
pub mod memory;
pub mod pictures;
pub mod plot;
pub mod records;
pub mod sheet;
pub mod storage;
pub mod telemetry;
pub mod tfevents;
pub mod size;
pub mod weights;
