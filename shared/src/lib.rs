//! What Stylefarm's binaries share: reading and writing images with limits
//! that protect the machine, finding and importing VGG-19 weights, and the
//! small parsers of the command lines.

pub mod checkpoints;
pub mod device;
pub mod image_io;
pub mod memory;
pub mod plot;
pub mod storage;
pub mod telemetry;
pub mod tfevents;
pub mod size;
pub mod weights;
