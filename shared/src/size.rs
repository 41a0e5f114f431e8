//! Render sizes as users type them (`333x250`) and as a content image
//! implies them (`--max-side`).

/// The largest side a render may have: 8192 px is ~50 GB of activations
/// in VGG-19, far past any machine this runs on.
pub const MAX_RENDER_SIDE: u32 = 8192;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SizeError {
    #[error("size `{0}` is not WIDTHxHEIGHT with two positive whole numbers (e.g. 333x250)")]
    Malformed(String),
    #[error("size {0}x{1} has a side over the limit of {MAX_RENDER_SIDE} px")]
    TooLarge(u32, u32),
    #[error("--max-side must be between 1 and {MAX_RENDER_SIDE}; got {0}")]
    BadMaxSide(u32),
}

/// Parses `WxH` (also `W×H`); both sides must be 1..=MAX_RENDER_SIDE.
pub fn parse_size(s: &str) -> Result<(u32, u32), SizeError> {
    let bad = || SizeError::Malformed(s.to_string());
    let (w, h) = s.split_once(['x', 'X', '×']).ok_or_else(bad)?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    let h: u32 = h.trim().parse().map_err(|_| bad())?;
    if w == 0 || h == 0 {
        return Err(bad());
    }
    if w > MAX_RENDER_SIDE || h > MAX_RENDER_SIDE {
        return Err(SizeError::TooLarge(w, h));
    }
    Ok((w, h))
}

/// Scales `(w, h)` so that its longer side is `max_side`, keeping the
/// aspect ratio (rounded, at least 1 px).
pub fn fit_max_side((w, h): (u32, u32), max_side: u32) -> Result<(u32, u32), SizeError> {
    if max_side == 0 || max_side > MAX_RENDER_SIDE {
        return Err(SizeError::BadMaxSide(max_side));
    }
    let scale = max_side as f64 / w.max(h) as f64;
    let side = |n: u32| ((n as f64 * scale).round() as u32).max(1);
    Ok((side(w), side(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(parse_size("333x250"), Ok((333, 250)));
        assert_eq!(parse_size("64×48"), Ok((64, 48)));
        for bad in ["", "333", "0x10", "-5x10", "10x", "axb", "1.5x2"] {
            assert!(matches!(parse_size(bad), Err(SizeError::Malformed(_))), "{bad}");
        }
        assert_eq!(parse_size("9000x10"), Err(SizeError::TooLarge(9000, 10)));
    }

    #[test]
    fn fits_longer_side() {
        assert_eq!(fit_max_side((600, 400), 333), Ok((333, 222)));
        assert_eq!(fit_max_side((400, 800), 100), Ok((50, 100)));
        assert_eq!(fit_max_side((1000, 1), 10), Ok((10, 1)));
        assert_eq!(fit_max_side((10, 10), 0), Err(SizeError::BadMaxSide(0)));
    }
}
