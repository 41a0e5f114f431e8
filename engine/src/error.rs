//! The engine's error type: every failure names what the caller can fix.

/// Everything that can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A render parameter that is out of range, malformed, or names a layer
    /// VGG-19 does not have (the parameters' own error, word for word).
    #[error(transparent)]
    Param(#[from] stylefarm_params::ParamError),
    /// A weights file that is not what it claims to be.
    #[error("weights: {0}")]
    Weights(String),
    /// An image the engine cannot work with (too small, wrong shape).
    #[error("image: {0}")]
    Image(String),
    /// A checkpoint that is damaged or not a checkpoint.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A broken invariant inside the engine (a kernel handed the wrong
    /// device, a backward pass with nothing to propagate): a bug, never the
    /// user's input.
    #[error("internal error in the engine: {0}")]
    Internal(String),
    /// A checkpoint that belongs to another render (other parameters,
    /// inputs or size): the reason names what differs.
    #[error("cannot resume from this checkpoint: {0}")]
    Mismatch(String),
    /// The loss stopped being a number. `culprit` says which term did it
    /// (a term itself: the image diverged, the step size is too large; a
    /// term times its weight: that weight is too large) and `lever` names
    /// the parameter to lower ([`crate::Losses::blame`]). The job's own
    /// fault, not worth retrying as it is.
    #[error("the loss became {value} at iteration {iteration}: {culprit}; try a smaller {lever}")]
    NonFinite { iteration: usize, value: f64, culprit: String, lever: &'static str },
    /// A failure inside candle (shape mismatch, allocation); a bug if it
    /// escapes validation.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;

pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> EngineError {
    EngineError::Param(stylefarm_params::ParamError::Invalid { name, reason: reason.into() })
}
