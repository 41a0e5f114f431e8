//! The memory a render may use, as a user states it (`--max-memory 8G`) or
//! as the machine has it, and the largest render that fits it by the
//! engine's model ([`stylefarm_params::RenderParams::estimated_peak_bytes`]):
//! what `farmctl render` checks before it loads anything, so a render too
//! large is refused with the number and what to do instead of dying on an
//! allocation.

use stylefarm_params::RenderParams;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BudgetError {
    #[error("`{0}` is not an amount of memory: a number with an optional K, M, G or T (powers of 1024), e.g. 8G or 512M")]
    Malformed(String),
}

/// `8G`, `512M`, `1.5G`, `1048576` → bytes (K, M, G, T are powers of 1024;
/// a trailing `B` or `iB` is allowed).
pub fn parse_bytes(s: &str) -> Result<u64, BudgetError> {
    let bad = || BudgetError::Malformed(s.to_string());
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (number, shift) = match t.chars().last() {
        Some(c @ ('K' | 'k' | 'M' | 'm' | 'G' | 'g' | 'T' | 't')) => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                _ => 40,
            };
            (&t[..t.len() - 1], shift)
        }
        _ => (t, 0),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !(value.is_finite() && value > 0.0) {
        return Err(bad());
    }
    Ok((value * (1u64 << shift) as f64) as u64)
}

/// The memory a render may use now: the host's `MemAvailable`, or the
/// headroom under the process's cgroup limit when that is lower (a pod's
/// limit, not the node's memory). The one figure a worker registers and
/// plans every lease from, and `farmctl render` checks against; `None` when
/// neither is known.
pub fn usable_memory() -> Option<u64> {
    let host = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| meminfo_available(&info));
    match (host, crate::cgroup::headroom()) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn meminfo_available(info: &str) -> Option<u64> {
    let kib = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// The longest side (with `(w, h)`'s aspect ratio) whose render fits
/// `budget` bytes by the model; `None` when not even a 16 px one does.
pub fn largest_fitting_side(params: &RenderParams, (w, h): (u32, u32), budget: u64) -> Option<u32> {
    let fits = |side: u32| {
        let scale = side as f64 / w.max(h) as f64;
        let (sw, sh) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
        params.estimated_peak_bytes(sw, sh) <= budget
    };
    if !fits(16) {
        return None;
    }
    let (mut lo, mut hi) = (16u32, crate::size::MAX_RENDER_SIDE);
    if fits(hi) {
        return Some(hi);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// Bytes as people read them: `1.7 GiB`, `719 MiB`, `12.5 KiB`, `800 B`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_the_unit_that_suits_them() {
        assert_eq!(human(800), "800 B");
        assert_eq!(human(12_800), "12.5 KiB");
        assert_eq!(human(719 << 20), "719 MiB");
        assert_eq!(human(1_825_361_101), "1.7 GiB");
    }

    #[test]
    fn amounts_parse_and_nonsense_is_named() {
        assert_eq!(parse_bytes("8G"), Ok(8 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "G", "-1G", "0", "eight", "1Q"] {
            assert_eq!(parse_bytes(bad), Err(BudgetError::Malformed(bad.to_string())), "{bad}");
        }
    }

    #[test]
    fn meminfo_is_read_in_kib() {
        assert_eq!(meminfo_available("MemTotal:  100 kB\nMemAvailable:    2048 kB\n"), Some(2 << 20));
        assert_eq!(meminfo_available("MemTotal:  100 kB\n"), None);
        assert!(usable_memory().is_some_and(|b| b > 0), "this Linux machine has a MemAvailable");
    }

    #[test]
    fn the_largest_fitting_side_fits_and_one_more_pixel_does_not() {
        let p = RenderParams::default();
        let budget = 2u64 << 30;
        let side = largest_fitting_side(&p, (800, 600), budget).unwrap();
        let at = |s: u32| (s, ((600.0 * s as f64 / 800.0).round() as u32));
        let (w, h) = at(side);
        assert!(p.estimated_peak_bytes(w, h) <= budget);
        let (w, h) = at(side + 1);
        assert!(p.estimated_peak_bytes(w, h) > budget);
        assert_eq!(largest_fitting_side(&p, (800, 600), 1 << 20), None, "1 MiB holds not even the weights");
    }
}
