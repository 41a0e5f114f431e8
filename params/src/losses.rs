//! What a render reports: the [`Losses`] of an image, split by the
//! [`Part`] each term adds to, and the [`LossRecord`] of the log and a
//! checkpoint's history. Plain numbers, so the coordinator, the plots and
//! the records read them without the engine.

use serde::{Deserialize, Serialize};

/// The losses of one image. `content`, `style` and `tv` are unweighted by
/// α, β and the TV weight (but include each layer's own weight);
/// `total = α·content + β·style + tv_weight·tv`, the number the optimizer
/// minimises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    pub content: f64,
    pub style: f64,
    pub tv: f64,
    pub total: f64,
}

impl Losses {
    /// Which part made a non-finite total, and the parameter to lower
    /// (`before`: the last finite losses of the render, if any). A finite
    /// part whose weighted value is not: its weight (`alpha`, `beta`,
    /// `tv_weight`). A part that is itself not finite means the image left
    /// the range of numbers: the weight of a part that was already
    /// astronomical (over 1e100) the step before drove it there, else the
    /// step size (`lr`). A sum that overflows although every weighted part
    /// is finite: the largest part's weight.
    pub fn blame(&self, before: Option<&Losses>, alpha: f64, beta: f64, tv_weight: f64) -> (String, &'static str) {
        let parts = [("content", self.content, "α", alpha, "alpha"), ("style", self.style, "β", beta, "beta"), ("TV", self.tv, "the TV weight", tv_weight, "tv_weight")];
        if let Some((name, value, ..)) = parts.iter().find(|p| !p.1.is_finite()) {
            let earlier = before.map(|b| [b.content * alpha, b.style * beta, b.tv * tv_weight]);
            let huge = earlier.and_then(|w| (0..3).filter(|&i| w[i].abs() > 1e100).max_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs())).map(|i| (i, w[i])));
            if let Some((i, weighted)) = huge {
                let (part, _, symbol, weight, lever) = parts[i];
                return (
                    format!("the {name} loss itself is {value}, after {part} × {symbol} reached {weighted:.3e} ({symbol} = {weight:e}) the step before"),
                    lever,
                );
            }
            return (format!("the {name} loss itself is {value} (the image left the range of numbers)"), "lr");
        }
        if let Some((name, value, symbol, weight, lever)) = parts.iter().find(|p| !(p.1 * p.3).is_finite()) {
            return (format!("{name} × {symbol} = {value:.3e} × {weight:e} overflows"), lever);
        }
        let (name, value, symbol, weight, lever) = parts.iter().max_by(|a, b| (a.1 * a.3).abs().total_cmp(&(b.1 * b.3).abs())).copied().unwrap_or(parts[0]);
        (format!("{name} × {symbol} = {:.3e} is too large to add up", value * weight), lever)
    }

    /// Adds a term's (layer-weighted) value to the part it belongs to.
    pub fn add(&mut self, part: Part, value: f64) {
        match part {
            Part::Content => self.content += value,
            Part::Style => self.style += value,
            Part::Tv => self.tv += value,
        }
    }
}

/// One line of the loss log, and of a checkpoint's history: the losses of
/// the image *before* iteration `iteration`'s update (the last line of a
/// finished render is the final image).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    pub iteration: usize,
    #[serde(flatten)]
    pub losses: Losses,
    /// Render time up to this evaluation, across resumes.
    pub seconds: f64,
}

/// Which column of [`Losses`] a term adds to, and so which global weight
/// (α, β, TV weight) multiplies it in the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Content,
    Style,
    Tv,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_total_names_its_term_and_the_parameter_to_lower() {
        let l = |content: f64, style: f64, tv: f64| Losses { content, style, tv, total: f64::INFINITY };
        // (losses, α, β, tv weight, words, lever)
        let cases = [
            (l(1.0, f64::NAN, 1.0), 1.0, 1.0, 1.0, "the style loss itself is NaN", "lr"),
            (l(f64::INFINITY, 1.0, 1.0), 1.0, 1.0, 1.0, "the content loss itself is inf", "lr"),
            (l(1.0, 3e10, 1.0), 1.0, 1e300, 1.0, "style × β = 3.000e10 × 1e300 overflows", "beta"),
            (l(1.0, 1.0, 1e10), 1.0, 1.0, 1e300, "TV × the TV weight", "tv_weight"),
            (l(1e308, 1e308, 1.0), 1.5, 1.0, 1.0, "content × α = 1.500e308", "alpha"),
        ];
        for (losses, alpha, beta, tv, words, lever) in cases {
            let (culprit, got) = losses.blame(None, alpha, beta, tv);
            assert!(culprit.contains(words), "{culprit} should say {words}");
            assert_eq!(got, lever, "{culprit}");
        }
        // A term that left the numbers after its weighted value was
        // astronomical the step before: that weight, not the step size.
        let before = Losses { content: 1.0, style: 2e-3, tv: 0.0, total: 2e297 };
        let (culprit, lever) = l(f64::NAN, f64::NAN, 0.0).blame(Some(&before), 1.0, 1e300, 0.0);
        assert_eq!(lever, "beta", "{culprit}");
        assert!(culprit.contains("after style × β reached 2.000e297"), "{culprit}");
        let calm = Losses { content: 1.0, style: 2.0, tv: 0.0, total: 3.0 };
        assert_eq!(l(f64::NAN, f64::NAN, 0.0).blame(Some(&calm), 1.0, 1.0, 0.0).1, "lr");
    }
}
