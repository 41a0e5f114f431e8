//! VGG's three building blocks, each as a forward and a hand-written backward
//! with respect to its input (the weights are never differentiated).
//!
//! Shapes are `[N, C, H, W]` throughout.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// A 3×3 convolution (padding 1, stride 1) followed by ReLU.
#[derive(Debug, Clone)]
pub struct ConvRelu {
    /// `[C_out, C_in, 3, 3]`
    weight: Tensor,
    /// `[1, C_out, 1, 1]`
    bias: Tensor,
    /// The kernel the input gradient needs: in/out swapped and flipped in
    /// space, `[C_in, C_out, 3, 3]`. Computed once.
    weight_back: Tensor,
}

impl ConvRelu {
    /// `weight`: `[C_out, C_in, 3, 3]`, `bias`: `[C_out]`.
    pub fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let c_out = weight.dim(0)?;
        let bias = bias.reshape((1, c_out, 1, 1))?;
        let weight_back = weight.transpose(0, 1)?.contiguous()?.flip(&[2, 3])?.contiguous()?;
        Ok(Self { weight, bias, weight_back })
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `relu(conv(x) + b)`: `[N, C_in, H, W]` → `[N, C_out, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.conv2d(&self.weight, 1, 1, 1, 1)?.broadcast_add(&self.bias)?.relu()?)
    }

    /// Given this layer's output and the gradient at it, the gradient at its
    /// input: the ReLU mask, then a forward convolution with the flipped,
    /// transposed kernel (the transpose of a padding-1 3×3 convolution).
    pub fn backward(&self, output: &Tensor, grad_output: &Tensor) -> Result<Tensor> {
        let active = output.gt(0.0)?.to_dtype(grad_output.dtype())?;
        let grad_pre = (grad_output * active)?;
        Ok(grad_pre.conv2d(&self.weight_back, 1, 1, 1, 1)?)
    }

    /// Multiply-adds of one forward pass at `h`×`w`, times two (FLOPs).
    pub fn flops(&self, h: usize, w: usize) -> f64 {
        2.0 * 9.0 * (self.in_channels() * self.out_channels() * h * w) as f64
    }
}

/// Output side of 2×2 stride-2 pooling with SAME padding.
pub fn pooled(n: usize) -> usize {
    n.div_ceil(2)
}

/// `1 / (number of valid elements)` of every 2×2 window, `[1, 1, ⌈h/2⌉, ⌈w/2⌉]`:
/// 1/4 inside, 1/2 on a partial last row or column, 1 in a partial corner.
fn inverse_window_sizes(h: usize, w: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let (ho, wo) = (pooled(h), pooled(w));
    let rows = |i: usize, n: usize| if 2 * i + 1 < n { 2.0 } else { 1.0 };
    let mut v = Vec::with_capacity(ho * wo);
    for i in 0..ho {
        for j in 0..wo {
            v.push(1.0 / (rows(i, h) * rows(j, w)));
        }
    }
    Ok(Tensor::from_vec(v, (1, 1, ho, wo), device)?.to_dtype(dtype)?)
}

/// Sums of 2×2 windows of `x`, zero-padded at the bottom/right to even size.
fn window_sums(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (pooled(h), pooled(w));
    let padded = x.pad_with_zeros(2, 0, 2 * ho - h)?.pad_with_zeros(3, 0, 2 * wo - w)?;
    Ok(padded.reshape((n, c, ho, 2, wo, 2))?.sum(5)?.sum(3)?)
}

/// 2×2 stride-2 average pooling as TensorFlow's `padding='SAME'` does it:
/// the output side is ⌈n/2⌉ and a partial last window averages only its
/// valid elements. `[N, C, H, W]` → `[N, C, ⌈H/2⌉, ⌈W/2⌉]`.
pub fn avg_pool(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let inv = inverse_window_sizes(h, w, x.dtype(), x.device())?;
    Ok(window_sums(x)?.broadcast_mul(&inv)?)
}

/// Backward of [`avg_pool`] for an input of `h`×`w`: each input element gets
/// its window's gradient divided by the window's valid size.
pub fn avg_pool_backward(grad_output: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let inv = inverse_window_sizes(h, w, grad_output.dtype(), grad_output.device())?;
    let share = grad_output.broadcast_mul(&inv)?;
    spread(&share, h, w)
}

/// Copies each element of `[N, C, ⌈h/2⌉, ⌈w/2⌉]` to its 2×2 window and crops
/// to `h`×`w`.
fn spread(t: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ho, wo) = t.dims4()?;
    Ok(t.upsample_nearest2d(2 * ho, 2 * wo)?.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()?)
}

/// 2×2 stride-2 max pooling with SAME padding (partial windows take the max
/// of their valid elements).
pub fn max_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (pooled(h), pooled(w));
    // Replicating the edge never changes a window's max.
    let padded = x.pad_with_same(2, 0, 2 * ho - h)?.pad_with_same(3, 0, 2 * wo - w)?;
    Ok(padded.reshape((n, c, ho, 2, wo, 2))?.max(5)?.max(3)?)
}

/// Backward of [`max_pool`]: the gradient goes to the element(s) equal to
/// their window's max (ties, rare on real images, all receive it).
pub fn max_pool_backward(input: &Tensor, output: &Tensor, grad_output: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = input.dims4()?;
    let is_max = input.eq(&spread(output, h, w)?)?.to_dtype(grad_output.dtype())?;
    Ok((spread(grad_output, h, w)? * is_max)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], h: usize, w: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (1, 1, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn avg_pool_odd_sides_average_only_valid_elements() {
        // 3×3 input: windows {1,2,4,5}, {3,6}, {7,8}, {9}.
        let x = t(&[1., 2., 3., 4., 5., 6., 7., 8., 9.], 3, 3);
        let y = avg_pool(&x).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(y, vec![3.0, 4.5, 7.5, 9.0]);
    }

    #[test]
    fn avg_pool_backward_is_the_adjoint() {
        // <avg_pool(x), g> == <x, avg_pool_backward(g)> for any x, g.
        let (h, w) = (5, 7);
        let x = Tensor::randn(0f64, 1., (1, 2, h, w), &Device::Cpu).unwrap();
        let g = Tensor::randn(0f64, 1., (1, 2, 3, 4), &Device::Cpu).unwrap();
        let lhs = (avg_pool(&x).unwrap() * &g).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let rhs = (x * avg_pool_backward(&g, h, w).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!((lhs - rhs).abs() < 1e-12, "{lhs} vs {rhs}");
    }

    #[test]
    fn max_pool_takes_window_max_and_routes_gradient_to_it() {
        let x = t(&[1., 5., 3., 4., 2., 6., 9., 8., 7.], 3, 3);
        let y = max_pool(&x).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f64>().unwrap(), vec![5.0, 6.0, 9.0, 7.0]);
        let g = t(&[1., 2., 3., 4.], 2, 2);
        let gx = max_pool_backward(&x, &y, &g).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(gx, vec![0., 1., 0., 0., 0., 2., 3., 0., 4.]);
    }

    #[test]
    fn conv_backward_is_the_adjoint_of_the_linear_part() {
        // With a bias large enough that every unit is active, the layer is
        // linear, so <conv(x), g> == <x, backward(g)>.
        let dev = Device::Cpu;
        let w = Tensor::randn(0f64, 1., (4, 3, 3, 3), &dev).unwrap();
        let b = Tensor::full(1e6f64, 4, &dev).unwrap();
        let layer = ConvRelu::new(w, b.clone()).unwrap();
        let x = Tensor::randn(0f64, 1., (1, 3, 5, 6), &dev).unwrap();
        let g = Tensor::randn(0f64, 1., (1, 4, 5, 6), &dev).unwrap();
        let y = layer.forward(&x).unwrap();
        let linear = y.broadcast_sub(&b.reshape((1, 4, 1, 1)).unwrap()).unwrap();
        let lhs = (linear * &g).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let rhs = (x * layer.backward(&y, &g).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!((lhs - rhs).abs() < 1e-6 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }
}
