//! VGG's three building blocks, each as a forward and a hand-written backward
//! with respect to its input (the weights are never differentiated).
//!
//! Feature maps are channels-last, `[1, H, W, C]`: on the CPU every block
//! then runs as hand-written loops over contiguous channel vectors (the 3×3
//! convolutions by Winograd, [`crate::winograd`]); on other devices the same
//! functions fall back to candle's operations, permuting to `[N, C, H, W]`
//! around its convolution.

use std::sync::OnceLock;

use candle_core::{DType, Device, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::arch::pooled;
use crate::error::{EngineError, Result};
use crate::winograd::{self, Fused, Kernel};

/// Runs `f` on the elements of a CPU tensor in row-major order (copying only
/// if it is not contiguous).
pub(crate) fn with_cpu_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(EngineError::Internal("a CPU kernel was handed a tensor on another device".into()));
    };
    let all = cpu.as_slice::<T>()?;
    Ok(f(&all[layout.start_offset()..][..layout.shape().elem_count()]))
}

/// Whether the hand-written CPU kernels handle this tensor.
pub(crate) fn on_cpu(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The Winograd-domain kernels of one layer for one float type, built on
/// first use (layers deeper than a render needs never pay for them).
#[derive(Debug, Default)]
struct CpuKernels<T> {
    forward: OnceLock<Kernel<T>>,
    backward: OnceLock<Kernel<T>>,
    bias: OnceLock<Vec<T>>,
}

/// A 3×3 convolution (padding 1, stride 1) followed by ReLU.
#[derive(Debug)]
pub(crate) struct ConvRelu {
    /// `[C_out, C_in, 3, 3]`
    weight: Tensor,
    /// `[C_out]`
    bias: Tensor,
    f32: CpuKernels<f32>,
    f64: CpuKernels<f64>,
    /// The input gradient's kernel for candle's convolution (other
    /// devices): in/out swapped, flipped in space. Built on first use.
    weight_back: OnceLock<Tensor>,
}

/// Selects the kernels of a float type.
trait KernelsOf: WithDType {
    fn of(conv: &ConvRelu) -> &CpuKernels<Self>;
}

impl KernelsOf for f32 {
    fn of(conv: &ConvRelu) -> &CpuKernels<f32> {
        &conv.f32
    }
}

impl KernelsOf for f64 {
    fn of(conv: &ConvRelu) -> &CpuKernels<f64> {
        &conv.f64
    }
}

impl ConvRelu {
    /// `weight`: `[C_out, C_in, 3, 3]`, `bias`: `[C_out]`.
    pub(crate) fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (c_out, _, kh, kw) = weight.dims4()?;
        if (kh, kw) != (3, 3) || bias.dims() != [c_out] {
            return Err(EngineError::Weights(format!(
                "a conv layer needs a [C_out, C_in, 3, 3] kernel and [C_out] bias, got {:?} and {:?}",
                weight.dims(),
                bias.dims()
            )));
        }
        Ok(Self { weight, bias, f32: CpuKernels::default(), f64: CpuKernels::default(), weight_back: OnceLock::new() })
    }

    pub(crate) fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The kernel as f64 in `[C_out, C_in, 3, 3]` order.
    fn weight_f64(&self) -> Result<Vec<f64>> {
        Ok(self.weight.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    }

    fn forward_kernel<T: KernelsOf>(&self) -> Result<&Kernel<T>> {
        let cell = &T::of(self).forward;
        if let Some(k) = cell.get() {
            return Ok(k);
        }
        let k = Kernel::new(&self.weight_f64()?, self.out_channels(), self.in_channels());
        Ok(cell.get_or_init(|| k))
    }

    /// The kernel of the input gradient: in/out swapped, flipped in space.
    fn backward_kernel<T: KernelsOf>(&self) -> Result<&Kernel<T>> {
        let cell = &T::of(self).backward;
        if let Some(k) = cell.get() {
            return Ok(k);
        }
        let (c_out, c_in) = (self.out_channels(), self.in_channels());
        let w = self.weight_f64()?;
        let mut back = vec![0.0; w.len()];
        for co in 0..c_out {
            for ci in 0..c_in {
                for i in 0..3 {
                    for j in 0..3 {
                        back[((ci * c_out + co) * 3 + 2 - i) * 3 + 2 - j] = w[((co * c_in + ci) * 3 + i) * 3 + j];
                    }
                }
            }
        }
        let k = Kernel::new(&back, c_in, c_out);
        Ok(cell.get_or_init(|| k))
    }

    fn bias_of<T: KernelsOf>(&self) -> Result<&[T]> {
        let cell = &T::of(self).bias;
        if let Some(b) = cell.get() {
            return Ok(b);
        }
        let b: Vec<T> = self.bias.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter().map(T::from_f64).collect();
        Ok(cell.get_or_init(|| b))
    }

    fn forward_cpu<T: KernelsOf>(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, _) = x.dims4()?;
        let (kernel, bias) = (self.forward_kernel::<T>()?, self.bias_of::<T>()?);
        let fused = Fused { input_mask: None, bias: Some(bias), relu: true };
        let y = with_cpu_slice::<T, _>(x, |x| winograd::conv3x3(x, h, w, kernel, &fused))?;
        Ok(Tensor::from_vec(y, (n, h, w, self.out_channels()), &Device::Cpu)?)
    }

    fn backward_cpu<T: KernelsOf>(&self, output: &Tensor, grad_output: &Tensor) -> Result<Tensor> {
        let (n, h, w, _) = output.dims4()?;
        let kernel = self.backward_kernel::<T>()?;
        let g = with_cpu_slice::<T, _>(output, |out| {
            with_cpu_slice::<T, _>(grad_output, |grad| {
                let fused = Fused { input_mask: Some(out), bias: None, relu: false };
                winograd::conv3x3(grad, h, w, kernel, &fused)
            })
        })??;
        Ok(Tensor::from_vec(g, (n, h, w, self.in_channels()), &Device::Cpu)?)
    }

    /// candle's convolution on `[N, H, W, C]` (for devices without our kernels).
    fn conv_nhwc(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let x = x.permute((0, 3, 1, 2))?.contiguous()?;
        Ok(x.conv2d(weight, 1, 1, 1, 1)?.permute((0, 2, 3, 1))?.contiguous()?)
    }

    /// `relu(conv(x) + b)`: `[1, H, W, C_in]` → `[1, H, W, C_out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match x.dtype() {
            DType::F32 if on_cpu(x) => self.forward_cpu::<f32>(x),
            DType::F64 if on_cpu(x) => self.forward_cpu::<f64>(x),
            _ => Ok(Self::conv_nhwc(x, &self.weight)?.broadcast_add(&self.bias)?.relu()?),
        }
    }

    /// Given this layer's output and the gradient at it, the gradient at its
    /// input: the ReLU mask, then a forward convolution with the flipped,
    /// transposed kernel (the transpose of a padding-1 3×3 convolution).
    pub(crate) fn backward(&self, output: &Tensor, grad_output: &Tensor) -> Result<Tensor> {
        match output.dtype() {
            DType::F32 if on_cpu(output) => self.backward_cpu::<f32>(output, grad_output),
            DType::F64 if on_cpu(output) => self.backward_cpu::<f64>(output, grad_output),
            _ => {
                let active = output.gt(0.0)?.to_dtype(grad_output.dtype())?;
                let grad_pre = (grad_output * active)?;
                let weight_back = match self.weight_back.get() {
                    Some(w) => w,
                    None => {
                        let w = self.weight.transpose(0, 1)?.contiguous()?.flip(&[2, 3])?.contiguous()?;
                        self.weight_back.get_or_init(|| w)
                    }
                };
                Self::conv_nhwc(&grad_pre, weight_back)
            }
        }
    }

    /// Multiply-adds of one forward pass at `h`×`w`, times two (FLOPs).
    pub(crate) fn flops(&self, h: usize, w: usize) -> f64 {
        2.0 * 9.0 * (self.in_channels() * self.out_channels() * h * w) as f64
    }
}


/// Number of valid elements of output row (or column) `i` of an input side `n`.
fn window_side(i: usize, n: usize) -> usize {
    if 2 * i + 1 < n {
        2
    } else {
        1
    }
}

/// `1 / (number of valid elements)` of every 2×2 window, `[1, ⌈h/2⌉, ⌈w/2⌉, 1]`:
/// 1/4 inside, 1/2 on a partial last row or column, 1 in a partial corner.
fn inverse_window_sizes(h: usize, w: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let (ho, wo) = (pooled(h), pooled(w));
    let mut v = Vec::with_capacity(ho * wo);
    for i in 0..ho {
        for j in 0..wo {
            v.push(1.0 / (window_side(i, h) * window_side(j, w)) as f64);
        }
    }
    Ok(Tensor::from_vec(v, (1, ho, wo, 1), device)?.to_dtype(dtype)?)
}

/// 2×2 stride-2 average pooling as TensorFlow's `padding='SAME'` does it:
/// the output side is ⌈n/2⌉ and a partial last window averages only its
/// valid elements. `[1, H, W, C]` → `[1, ⌈H/2⌉, ⌈W/2⌉, C]`.
pub(crate) fn avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    match x.dtype() {
        DType::F32 if on_cpu(x) => avg_pool_cpu::<f32>(x, (n, h, w, c)),
        DType::F64 if on_cpu(x) => avg_pool_cpu::<f64>(x, (n, h, w, c)),
        _ => avg_pool_generic(x),
    }
}

/// [`avg_pool`] in candle's operations, for any device.
fn avg_pool_generic(x: &Tensor) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (ho, wo) = (pooled(h), pooled(w));
    let padded = x.pad_with_zeros(1, 0, 2 * ho - h)?.pad_with_zeros(2, 0, 2 * wo - w)?;
    let sums = padded.reshape((n, ho, 2, wo, 2, c))?.sum(4)?.sum(2)?;
    Ok(sums.broadcast_mul(&inverse_window_sizes(h, w, x.dtype(), x.device())?)?)
}

fn avg_pool_cpu<T: WithDType>(x: &Tensor, (n, h, w, c): (usize, usize, usize, usize)) -> Result<Tensor> {
    let (ho, wo) = (pooled(h), pooled(w));
    let zero = T::from_f64(0.0);
    let mut y = vec![zero; n * ho * wo * c];
    with_cpu_slice::<T, _>(x, |x| {
        y.par_chunks_mut(wo * c).enumerate().for_each(|(row, y_row)| {
            let (b, i) = (row / ho, row % ho);
            let rows = window_side(i, h);
            for (j, y_px) in y_row.chunks_exact_mut(c).enumerate() {
                let cols = window_side(j, w);
                let inv = T::from_f64(1.0 / (rows * cols) as f64);
                for di in 0..rows {
                    for dj in 0..cols {
                        let src = &x[((b * h + 2 * i + di) * w + 2 * j + dj) * c..][..c];
                        y_px.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
                    }
                }
                y_px.iter_mut().for_each(|d| *d *= inv);
            }
        })
    })?;
    Ok(Tensor::from_vec(y, (n, ho, wo, c), &Device::Cpu)?)
}

/// Backward of [`avg_pool`] for an input of `h`×`w`: each input element gets
/// its window's gradient divided by the window's valid size.
pub(crate) fn avg_pool_backward(grad_output: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (n, ho, wo, c) = grad_output.dims4()?;
    if (ho, wo) != (pooled(h), pooled(w)) {
        return Err(EngineError::Internal(format!("a {ho}x{wo} pooling gradient for a {h}x{w} input")));
    }
    match grad_output.dtype() {
        DType::F32 if on_cpu(grad_output) => avg_pool_backward_cpu::<f32>(grad_output, (n, h, w, c)),
        DType::F64 if on_cpu(grad_output) => avg_pool_backward_cpu::<f64>(grad_output, (n, h, w, c)),
        _ => avg_pool_backward_generic(grad_output, h, w),
    }
}

/// [`avg_pool_backward`] in candle's operations, for any device.
fn avg_pool_backward_generic(grad_output: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let inv = inverse_window_sizes(h, w, grad_output.dtype(), grad_output.device())?;
    spread(&grad_output.broadcast_mul(&inv)?, h, w)
}

fn avg_pool_backward_cpu<T: WithDType>(g: &Tensor, (n, h, w, c): (usize, usize, usize, usize)) -> Result<Tensor> {
    let (ho, wo) = (pooled(h), pooled(w));
    let mut dx = vec![T::from_f64(0.0); n * h * w * c];
    with_cpu_slice::<T, _>(g, |g| {
        dx.par_chunks_mut(w * c).enumerate().for_each(|(row, dx_row)| {
            let (b, y) = (row / h, row % h);
            let i = y / 2;
            let rows = window_side(i, h);
            for (x, dx_px) in dx_row.chunks_exact_mut(c).enumerate() {
                let j = x / 2;
                let inv = T::from_f64(1.0 / (rows * window_side(j, w)) as f64);
                let src = &g[((b * ho + i) * wo + j) * c..][..c];
                dx_px.iter_mut().zip(src).for_each(|(d, &s)| *d = s * inv);
            }
        })
    })?;
    Ok(Tensor::from_vec(dx, (n, h, w, c), &Device::Cpu)?)
}

/// Copies each element of `[N, ⌈h/2⌉, ⌈w/2⌉, C]` to its 2×2 window and crops
/// to `h`×`w`.
fn spread(t: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (n, ho, wo, c) = t.dims4()?;
    let up = t.reshape((n, ho, 1, wo, 1, c))?.broadcast_as((n, ho, 2, wo, 2, c))?.contiguous()?;
    Ok(up.reshape((n, 2 * ho, 2 * wo, c))?.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous()?)
}

/// 2×2 stride-2 max pooling with SAME padding (partial windows take the max
/// of their valid elements). `[1, H, W, C]` → `[1, ⌈H/2⌉, ⌈W/2⌉, C]`.
pub(crate) fn max_pool(x: &Tensor) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (ho, wo) = (pooled(h), pooled(w));
    // Replicating the edge never changes a window's max.
    let padded = x.pad_with_same(1, 0, 2 * ho - h)?.pad_with_same(2, 0, 2 * wo - w)?;
    Ok(padded.reshape((n, ho, 2, wo, 2, c))?.max(4)?.max(2)?)
}

/// Backward of [`max_pool`]: the gradient goes to the element(s) equal to
/// their window's max (ties, rare on real images, all receive it).
pub(crate) fn max_pool_backward(input: &Tensor, output: &Tensor, grad_output: &Tensor) -> Result<Tensor> {
    let (_, h, w, _) = input.dims4()?;
    let is_max = input.eq(&spread(output, h, w)?)?.to_dtype(grad_output.dtype())?;
    Ok((spread(grad_output, h, w)? * is_max)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], h: usize, w: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (1, h, w, 1), &Device::Cpu).unwrap()
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
        let x = Tensor::randn(0f64, 1., (1, h, w, 2), &Device::Cpu).unwrap();
        let g = Tensor::randn(0f64, 1., (1, 3, 4, 2), &Device::Cpu).unwrap();
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
        let x = Tensor::randn(0f64, 1., (1, 5, 6, 3), &dev).unwrap();
        let g = Tensor::randn(0f64, 1., (1, 5, 6, 4), &dev).unwrap();
        let y = layer.forward(&x).unwrap();
        let linear = y.broadcast_sub(&b).unwrap();
        let lhs = (linear * &g).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let rhs = (x * layer.backward(&y, &g).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!((lhs - rhs).abs() < 1e-6 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn cpu_kernels_agree_with_candles_operations() {
        // The hand-written CPU paths against the generic ones other devices
        // take, on odd sides (partial pooling windows, partial tiles).
        let dev = Device::Cpu;
        let (h, w) = (7, 9);
        let x = Tensor::randn(0f64, 1., (1, h, w, 3), &dev).unwrap();
        assert!(max_abs_diff(&avg_pool(&x).unwrap(), &avg_pool_generic(&x).unwrap()) < 1e-15);
        let g = Tensor::randn(0f64, 1., (1, 4, 5, 3), &dev).unwrap();
        let cpu = avg_pool_backward(&g, h, w).unwrap();
        assert!(max_abs_diff(&cpu, &avg_pool_backward_generic(&g, h, w).unwrap()) < 1e-15);

        let weight = Tensor::randn(0f64, 1., (5, 3, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f64, 1., 5, &dev).unwrap();
        let layer = ConvRelu::new(weight.clone(), bias.clone()).unwrap();
        let y = layer.forward(&x).unwrap();
        let want = ConvRelu::conv_nhwc(&x, &weight).unwrap().broadcast_add(&bias).unwrap().relu().unwrap();
        assert!(max_abs_diff(&y, &want) < 1e-12);
        let gy = Tensor::randn(0f64, 1., (1, h, w, 5), &dev).unwrap();
        let active = y.gt(0.0).unwrap().to_dtype(DType::F64).unwrap();
        let back = weight.transpose(0, 1).unwrap().contiguous().unwrap().flip(&[2, 3]).unwrap().contiguous().unwrap();
        let want = ConvRelu::conv_nhwc(&(gy.clone() * active).unwrap(), &back).unwrap();
        assert!(max_abs_diff(&layer.backward(&y, &gy).unwrap(), &want) < 1e-12);
    }
}
