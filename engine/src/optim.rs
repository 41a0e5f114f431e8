//! Adam with TensorFlow 1's update rule (the assignment used
//! `tf.train.AdamOptimizer`), its state kept outside so a checkpoint can
//! hold it.

use candle_core::Tensor;

use crate::error::Result;

/// Adam's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
}

impl Adam {
    /// TensorFlow's defaults with the given learning rate.
    pub fn new(lr: f64) -> Self {
        Self { lr, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 }
    }

    /// One update of `x` in place of its state:
    /// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    /// `x ← x − lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m/(√v + ε)`.
    pub fn step(&self, x: &Tensor, grad: &Tensor, state: &mut AdamState) -> Result<Tensor> {
        state.step += 1;
        let t = state.step as i32;
        state.m = (state.m.affine(self.beta1, 0.0)? + grad.affine(1.0 - self.beta1, 0.0)?)?;
        state.v = (state.v.affine(self.beta2, 0.0)? + grad.sqr()?.affine(1.0 - self.beta2, 0.0)?)?;
        let lr_t = self.lr * (1.0 - self.beta2.powi(t)).sqrt() / (1.0 - self.beta1.powi(t));
        let update = (&state.m / state.v.sqrt()?.affine(1.0, self.epsilon)?)?.affine(lr_t, 0.0)?;
        Ok((x - update)?)
    }
}

/// Adam's moments and step count.
#[derive(Debug, Clone)]
pub struct AdamState {
    /// First moment, shaped like the image.
    pub m: Tensor,
    /// Second moment, shaped like the image.
    pub v: Tensor,
    /// Updates done so far.
    pub step: u64,
}

impl AdamState {
    pub fn new(like: &Tensor) -> Result<Self> {
        Ok(Self { m: like.zeros_like()?, v: like.zeros_like()?, step: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_moves_each_element_by_lr_against_the_gradient_sign() {
        // At t = 1, m/√v = g/|g| and the bias corrections cancel: Δx = −lr·sign(g).
        let x = Tensor::new(&[1.0f64, 2.0, 3.0], &Device::Cpu).unwrap();
        let g = Tensor::new(&[0.5f64, -4.0, 1e3], &Device::Cpu).unwrap();
        let mut s = AdamState::new(&x).unwrap();
        let y = Adam::new(2.0).step(&x, &g, &mut s).unwrap().to_vec1::<f64>().unwrap();
        for (got, want) in y.iter().zip([-1.0, 4.0, 1.0]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert_eq!(s.step, 1);
    }
}
