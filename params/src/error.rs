//! The parameters' error type: every failure names the key to fix.

/// A parameter that is wrong, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// A render parameter is out of range or malformed.
    #[error("invalid parameter `{name}`: {reason}")]
    Invalid { name: &'static str, reason: String },
    /// Parameters in their wire form (JSON) that do not read: an unknown
    /// key, or a value of the wrong type.
    #[error("render parameters, `{key}`: {reason}")]
    Schema { key: String, reason: String },
    /// A layer name that VGG-19 does not have.
    #[error("unknown VGG-19 layer `{0}` (valid: conv1_1, conv1_2, conv2_1, conv2_2, conv3_1 … conv3_4, conv4_1 … conv4_4, conv5_1 … conv5_4)")]
    UnknownLayer(String),
}

pub type Result<T> = std::result::Result<T, ParamError>;

pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> ParamError {
    ParamError::Invalid { name, reason: reason.into() }
}
