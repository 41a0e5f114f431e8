//! L-BFGS with a backtracking (Armijo) line search: the quality option, as
//! in most serious style-transfer implementations. Its state (the last `m`
//! steps and gradient changes, and the loss and gradient at the current
//! image) lives outside so a checkpoint can hold it.
//!
//! Within bounds ([`Bounds`]: a render's pixel range) it is a projected
//! L-BFGS, as L-BFGS-B keeps its iterates feasible: the variables sitting
//! on a bound that the gradient pushes past (the active set) are held; the
//! two-loop direction is taken on the others (`d = −F·H·F·g` with `F` the
//! free variables, a descent direction since `H` is positive definite);
//! each trial point of the line search is projected into the box, and the
//! Armijo condition is measured along the projected step.

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

/// A box the iterates stay in.
pub trait Bounds {
    /// `x` with every value moved to the nearest one inside.
    fn project(&self, x: &Tensor) -> Result<Tensor>;
    /// 1 where a step along −`g` may move `x`, 0 where `x` sits on a bound
    /// that `g` pushes it past (the active set); in `x`'s dtype.
    fn free(&self, x: &Tensor, g: &Tensor) -> Result<Tensor>;
}

/// The same bounds `[lo, hi]` for every value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

impl Bounds for Interval {
    fn project(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clamp(self.lo, self.hi)?)
    }

    fn free(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let blocked = ((x.le(self.lo)?.to_dtype(dtype)? * g.gt(0.0)?.to_dtype(dtype)?)? + (x.ge(self.hi)?.to_dtype(dtype)? * g.lt(0.0)?.to_dtype(dtype)?)?)?;
        Ok(blocked.affine(-1.0, 1.0)?)
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

    /// One iteration from `x`, inside `bounds` if given: returns the new
    /// image and the losses of `x` (the image before the update). `eval`
    /// gives losses and gradient.
    pub fn step<L: Objective>(
        &self,
        x: &Tensor,
        state: &mut LbfgsState<L>,
        bounds: Option<&dyn Bounds>,
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
        // The free variables' gradient: the active set's entries are zero.
        let free = bounds.map(|b| b.free(x, &g)).transpose()?;
        let held = |t: Tensor| -> Result<Tensor> {
            match &free {
                Some(f) => Ok((t * f)?),
                None => Ok(t),
            }
        };
        let g_free = held(g.clone())?;
        let mut d = held(self.direction(&g_free, state)?)?;
        let mut gtd = dot(&g, &d)?;
        let mut t = 1.0;
        if state.s.is_empty() || !(gtd < 0.0) {
            // No curvature yet (or a direction that does not descend):
            // steepest descent, moving no pixel more than `first_step`.
            state.s.clear();
            state.y.clear();
            d = g_free.neg()?;
            gtd = dot(&g, &d)?;
            let g_max = g_free.abs()?.to_dtype(DType::F64)?.max_all()?.to_scalar::<f64>()?;
            t = if g_max > 0.0 { self.first_step / g_max } else { 0.0 };
        }
        if t == 0.0 {
            state.current = Some((losses, g));
            return Ok((x.clone(), losses));
        }
        for _ in 0..self.max_evals {
            let trial = (x + d.affine(t, 0.0)?)?;
            let (x_new, decrease) = match bounds {
                // Along the projected path: the first-order change of the
                // step actually taken (never counted as a rise).
                Some(b) => {
                    let x_new = b.project(&trial)?;
                    let decrease = dot(&g, &(&x_new - x)?)?.min(0.0);
                    (x_new, decrease)
                }
                None => (trial, t * gtd),
            };
            state.evaluations += 1;
            let (l_new, g_new) = eval(&x_new)?;
            if l_new.total().is_finite() && l_new.total() <= f + self.c1 * decrease {
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
            let (next, l) = lbfgs.step(&x, &mut state, None, quadratic).unwrap();
            assert!(l <= prev, "the loss never rises: {l} after {prev}");
            prev = l;
            x = next;
        }
        let err = (x - 1.0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(err < 1e-6, "x is {err} from the minimum");
        assert!(state.s.len() <= 5);
    }

    /// The same quadratic with its minimum (1, 1, 1, 1) outside the box
    /// [−2, 0.5] for every value: the constrained minimum is 0.5 in each
    /// coordinate (the objective is separable), reached without an iterate
    /// ever leaving the box.
    #[test]
    fn stays_in_its_box_and_finds_the_minimum_on_its_edge() {
        let lbfgs = Lbfgs::new(5, 0.1);
        let box_ = Interval { lo: -2.0, hi: 0.5 };
        let mut state = LbfgsState::new();
        let mut x = Tensor::new(&[-1.5f64, -2.0, 0.0, 0.5], &Device::Cpu).unwrap();
        let mut prev = f64::INFINITY;
        for _ in 0..30 {
            let mut inside = |x: &Tensor| {
                let v = x.to_vec1::<f64>()?;
                assert!(v.iter().all(|&v| (-2.0..=0.5).contains(&v)), "an evaluation outside the box: {v:?}");
                quadratic(x)
            };
            let (next, l) = lbfgs.step(&x, &mut state, Some(&box_), &mut inside).unwrap();
            assert!(l <= prev, "the loss never rises: {l} after {prev}");
            prev = l;
            x = next;
        }
        let v = x.to_vec1::<f64>().unwrap();
        assert!(v.iter().all(|&v| (v - 0.5).abs() < 1e-9), "{v:?}");
        // Held at the bound the gradient pushes past, free elsewhere.
        let g = Tensor::new(&[-1.0f64, 1.0, 1.0, -1.0], &Device::Cpu).unwrap();
        let at = Tensor::new(&[0.5f64, -2.0, 0.0, 0.0], &Device::Cpu).unwrap();
        assert_eq!(box_.free(&at, &g).unwrap().to_vec1::<f64>().unwrap(), [0.0, 0.0, 1.0, 1.0]);
    }
}
