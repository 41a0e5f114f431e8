//! L-BFGS with a backtracking (Armijo) line search: the quality option, as
//! in most serious style-transfer implementations. Its state (the last `m`
//! steps and gradient changes, and the loss and gradient at the current
//! image) lives outside so a checkpoint can hold it.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// What an evaluation returns besides the gradient: anything with a total
/// to minimise (a render's [`crate::Losses`] keeps its parts for the log).
pub trait Objective: Copy {
    fn total(&self) -> f64;
}

impl Objective for f64 {
    fn total(&self) -> f64 {
        *self
    }
}

/// L-BFGS settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lbfgs {
    /// Pairs `(s, y)` kept (each pair is two image-sized tensors).
    pub history: usize,
    /// Largest per-pixel move of the very first step, in pixel units (the
    /// first step has no curvature information to scale it).
    pub first_step: f64,
    /// Sufficient-decrease constant of the Armijo condition.
    pub c1: f64,
    /// Evaluations the line search may spend before it gives up.
    pub max_evals: usize,
}

impl Lbfgs {
    pub fn new(history: usize, first_step: f64) -> Self {
        Self { history, first_step, c1: 1e-4, max_evals: 20 }
    }
}

/// What L-BFGS carries from one iteration to the next.
#[derive(Debug, Clone)]
pub struct LbfgsState<L> {
    /// Steps `s_k = x_{k+1} − x_k`, oldest first.
    pub s: Vec<Tensor>,
    /// Gradient changes `y_k = g_{k+1} − g_k`, oldest first.
    pub y: Vec<Tensor>,
    /// Losses and gradient at the current image, once known.
    pub current: Option<(L, Tensor)>,
    /// Loss evaluations so far (forward + backward passes).
    pub evaluations: u64,
}

impl<L> LbfgsState<L> {
    pub fn new() -> Self {
        Self { s: Vec::new(), y: Vec::new(), current: None, evaluations: 0 }
    }
}

impl<L> Default for LbfgsState<L> {
    fn default() -> Self {
        Self::new()
    }
}

fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a * b)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

impl Lbfgs {
    /// The quasi-Newton direction `−H·g` by the two-loop recursion, with
    /// `H₀ = (sᵀy / yᵀy)·I` from the newest pair.
    fn direction<L>(&self, g: &Tensor, state: &LbfgsState<L>) -> Result<Tensor> {
        let k = state.s.len();
        let mut q = g.clone();
        let mut alpha = vec![0.0; k];
        let rho: Vec<f64> = (0..k).map(|i| Ok(1.0 / dot(&state.y[i], &state.s[i])?)).collect::<Result<_>>()?;
        for i in (0..k).rev() {
            alpha[i] = rho[i] * dot(&state.s[i], &q)?;
            q = (q - state.y[i].affine(alpha[i], 0.0)?)?;
        }
        let gamma = match k {
            0 => 1.0,
            _ => dot(&state.s[k - 1], &state.y[k - 1])? / dot(&state.y[k - 1], &state.y[k - 1])?,
        };
        let mut r = q.affine(gamma, 0.0)?;
        for i in 0..k {
            let beta = rho[i] * dot(&state.y[i], &r)?;
            r = (r + state.s[i].affine(alpha[i] - beta, 0.0)?)?;
        }
        Ok(r.neg()?)
    }

    /// One iteration from `x`: returns the new image and the losses of `x`
    /// (the image before the update). `eval` gives losses and gradient.
    pub fn step<L: Objective>(
        &self,
        x: &Tensor,
        state: &mut LbfgsState<L>,
        mut eval: impl FnMut(&Tensor) -> Result<(L, Tensor)>,
    ) -> Result<(Tensor, L)> {
        let (losses, g) = match state.current.take() {
            Some(c) => c,
            None => {
                state.evaluations += 1;
                eval(x)?
            }
        };
        let f = losses.total();
        let mut d = self.direction(&g, state)?;
        let mut gtd = dot(&g, &d)?;
        let mut t = 1.0;
        if state.s.is_empty() || !(gtd < 0.0) {
            // No curvature yet (or a direction that does not descend):
            // steepest descent, moving no pixel more than `first_step`.
            state.s.clear();
            state.y.clear();
            d = g.neg()?;
            gtd = dot(&g, &d)?;
            let g_max = g.abs()?.to_dtype(DType::F64)?.max_all()?.to_scalar::<f64>()?;
            t = if g_max > 0.0 { self.first_step / g_max } else { 0.0 };
        }
        if t == 0.0 {
            state.current = Some((losses, g));
            return Ok((x.clone(), losses));
        }
        for _ in 0..self.max_evals {
            let x_new = (x + d.affine(t, 0.0)?)?;
            state.evaluations += 1;
            let (l_new, g_new) = eval(&x_new)?;
            if l_new.total().is_finite() && l_new.total() <= f + self.c1 * t * gtd {
                let s = (&x_new - x)?;
                let y = (&g_new - &g)?;
                if dot(&s, &y)? > 1e-10 {
                    state.s.push(s);
                    state.y.push(y);
                    if state.s.len() > self.history {
                        state.s.remove(0);
                        state.y.remove(0);
                    }
                }
                state.current = Some((l_new, g_new));
                return Ok((x_new, losses));
            }
            t *= 0.5;
        }
        // No decrease found: forget the curvature and stay; the next
        // iteration starts again from steepest descent.
        state.s.clear();
        state.y.clear();
        state.current = Some((losses, g));
        Ok((x.clone(), losses))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// f(x) = Σ c_i (x_i − 1)² with very different c_i: badly conditioned,
    /// which is where L-BFGS beats steepest descent.
    fn quadratic(x: &Tensor) -> Result<(f64, Tensor)> {
        let c = Tensor::new(&[1.0f64, 10.0, 100.0, 1000.0], x.device())?;
        let d = (x - 1.0)?;
        let total = (c.clone() * d.sqr()?)?.sum_all()?.to_scalar::<f64>()?;
        let g = (c * d.affine(2.0, 0.0)?)?;
        Ok((total, g))
    }

    #[test]
    fn minimises_an_ill_conditioned_quadratic() {
        let lbfgs = Lbfgs::new(5, 0.1);
        let mut state = LbfgsState::new();
        let mut x = Tensor::new(&[5.0f64, -3.0, 2.0, 0.0], &Device::Cpu).unwrap();
        let mut prev = f64::INFINITY;
        for _ in 0..30 {
            let (next, l) = lbfgs.step(&x, &mut state, quadratic).unwrap();
            assert!(l <= prev, "the loss never rises: {l} after {prev}");
            prev = l;
            x = next;
        }
        let err = (x - 1.0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(err < 1e-6, "x is {err} from the minimum");
        assert!(state.s.len() <= 5);
    }
}
