//! The engine's error type: every failure names what the caller can fix.

/// Everything that can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A render parameter is out of range or malformed.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    /// A layer name that VGG-19 does not have.
    #[error("unknown VGG-19 layer `{0}` (valid: conv1_1, conv1_2, conv2_1, conv2_2, conv3_1 … conv3_4, conv4_1 … conv4_4, conv5_1 … conv5_4)")]
    UnknownLayer(String),
    /// A weights file that is not what it claims to be.
    #[error("weights: {0}")]
    Weights(String),
    /// An image the engine cannot work with (too small, wrong shape).
    #[error("image: {0}")]
    Image(String),
    /// A checkpoint that is damaged or not a checkpoint.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A failure inside candle (shape mismatch, allocation); a bug if it
    /// escapes validation.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;

pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> EngineError {
    EngineError::InvalidParam { name, reason: reason.into() }
}
