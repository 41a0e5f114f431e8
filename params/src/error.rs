//! The parameters' error type: every failure names the key to fix.

/// A parameter that is wrong, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// A render parameter is out of range or malformed.
    #[error("invalid parameter `{name}`: {reason}")]
    Invalid { name: &'static str, reason: String },
    /// Parameters in their wire form (JSON) that do not read: an unknown
    /// key, or a value of the wrong type.
    #[error("parameter `{key}`: {reason}")]
    Schema { key: String, reason: String },
    /// A layer name that VGG-19 does not have.
    #[error("unknown VGG-19 layer `{0}` (valid: conv1_1, conv1_2, conv2_1, conv2_2, conv3_1 … conv3_4, conv4_1 … conv4_4, conv5_1 … conv5_4)")]
    UnknownLayer(String),
}

pub type Result<T> = std::result::Result<T, ParamError>;

/// serde's account of a value that does not read, in a user's words:
/// `invalid type: string "abc", expected f64` becomes `"abc" is not a
/// number`, ``unknown variant `sgd`, expected one of `adam`, `lbfgs` ``
/// becomes ``sgd is not one of adam, lbfgs``. Anything else is kept, its
/// Rust type names replaced.
pub(crate) fn plain(serde: &str) -> String {
    let kind = |t: &str| -> String {
        let t = t.trim();
        match t {
            "f64" | "f32" => "a number".into(),
            "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".into(),
            "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
            "a boolean" | "bool" => "true or false".into(),
            _ if t.starts_with("one of ") => t.replace('`', ""),
            _ => t.replace('`', ""),
        }
    };
    let value = |v: &str| -> String {
        let v = v.trim();
        for prefix in ["string ", "integer ", "floating point ", "boolean "] {
            if let Some(rest) = v.strip_prefix(prefix) {
                return rest.trim_matches('`').to_string();
            }
        }
        v.trim_matches('`').to_string()
    };
    for prefix in ["invalid type: ", "invalid value: ", "unknown variant "] {
        if let Some((got, want)) = serde.strip_prefix(prefix).and_then(|rest| rest.split_once(", expected ")) {
            let (got, want) = (value(got), kind(want));
            return format!("{got} is not {want}");
        }
    }
    if let Some((got, want)) = serde.strip_prefix("unknown field ").and_then(|rest| rest.split_once(", expected ")) {
        return format!("{} is not a parameter; the parameters are {}", got.trim_matches('`'), want.trim_start_matches("one of ").replace('`', ""));
    }
    serde.replace("f64", "a number").replace("usize", "a whole number")
}

pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> ParamError {
    ParamError::Invalid { name, reason: reason.into() }
}
