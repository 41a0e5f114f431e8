//! The contract's limits on what a request may hold that both sides of a
//! call need: the codec counts them on the wire before decoding, and the
//! coordinator checks them after (`coordinator/src/limits.rs` re-exports
//! these beside its own). `farm.proto`'s comments state the same numbers.

/// Content images, and style images, in one submit.
pub const MAX_INPUTS: usize = 100_000;
/// Variants in one submit.
pub const MAX_VARIANTS: usize = 1_000;
/// Capabilities a worker lists at registration.
pub const MAX_CAPABILITIES: usize = 16;
