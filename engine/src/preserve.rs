//! Colour preservation (Gatys, Bethge, Hertzmann, Shechtman 2016,
//! "Preserving Color in Neural Artistic Style Transfer"; neural-style's
//! `-original_colors`): the render takes the painting's strokes and keeps
//! the photo's colours. Two ways, as in the paper:
//!
//! - **luminance**: the render runs on luminance images — the content's
//!   luminance, and the style's matched to the content's mean and
//!   deviation, each as a grey RGB image — and the result's luminance is
//!   put back together with the content's own chrominance. YIQ as in the
//!   paper: `Y = 0.299 R + 0.587 G + 0.114 B`.
//! - **histogram**: each style image recoloured to the content's colour
//!   statistics ([`crate::colors::transfer`]) before its Gram targets are
//!   taken.
//!
//! Everything here is a pure function of pictures in the optimisation space
//! (BGR minus the VGG means, `[1, 3, H, W]`), applied by the session to
//! every stage's pictures, so the farm and `farmctl render` agree.

use candle_core::{DType, Tensor};

use crate::colors::{transfer, ColorStats};
use crate::error::Result;
use crate::params::PreserveColors;
use crate::pixels::{Pictures, MEAN_BGR};

/// RGB → YIQ (rows Y, I, Q; columns R, G, B).
const YIQ: [[f64; 3]; 3] = [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]];
/// YIQ → RGB (rows R, G, B; columns Y, I, Q): the inverse of [`YIQ`].
const RGB: [[f64; 3]; 3] =
    [[1.0, 0.956_295_719_8, 0.621_024_416_5], [1.0, -0.272_122_099_3, -0.647_380_596_8], [1.0, -1.106_989_016_7, 1.704_614_998_4]];

/// The pictures a render with `mode` optimises against.
pub fn prepare(mode: Option<PreserveColors>, pictures: Pictures) -> Result<Pictures> {
    match mode {
        None => Ok(pictures),
        Some(PreserveColors::Histogram) => {
            let target = ColorStats::of(&pictures.content)?;
            let styles = pictures.styles.iter().map(|s| transfer(s, &ColorStats::of(s)?, &target)).collect::<Result<_>>()?;
            Ok(Pictures { content: pictures.content, styles })
        }
        Some(PreserveColors::Luminance) => {
            let content_y = luminance(&pictures.content)?;
            let (mean, dev) = mean_dev(&content_y)?;
            let styles = pictures
                .styles
                .iter()
                .map(|s| {
                    let y = luminance(s)?;
                    let (m, d) = mean_dev(&y)?;
                    // The style's luminance with the content's mean and deviation.
                    let matched = y.affine(dev / d.max(1e-6), mean - m * dev / d.max(1e-6))?;
                    grey(&matched)
                })
                .collect::<Result<_>>()?;
            Ok(Pictures { content: grey(&content_y)?, styles })
        }
    }
}

/// What the user sees of `image`, the render's optimised image: for
/// `luminance`, its luminance with `content`'s chrominance (I and Q);
/// otherwise `image` itself.
pub fn display(mode: Option<PreserveColors>, image: &Tensor, content: &Tensor) -> Result<Tensor> {
    if mode != Some(PreserveColors::Luminance) {
        return Ok(image.clone());
    }
    let y = luminance(image)?;
    let [_, i, q] = yiq(content)?;
    let yiq = [y, i, q];
    // R, G, B from Y, I, Q, then back to B, G, R minus the means.
    let channel = |row: usize| -> Result<Tensor> {
        let mut sum = yiq[0].affine(RGB[row][0], 0.0)?;
        for k in 1..3 {
            sum = (sum + yiq[k].affine(RGB[row][k], 0.0)?)?;
        }
        Ok(sum)
    };
    let (r, g, b) = (channel(0)?, channel(1)?, channel(2)?);
    Ok(Tensor::cat(&[b.affine(1.0, -MEAN_BGR[0])?, g.affine(1.0, -MEAN_BGR[1])?, r.affine(1.0, -MEAN_BGR[2])?], 1)?)
}

/// The R, G, B planes (0..255) of an optimisation-space image, each `[1, 1, H, W]`.
fn rgb(image: &Tensor) -> Result<[Tensor; 3]> {
    let plane = |c: usize| -> Result<Tensor> { Ok(image.narrow(1, c, 1)?.affine(1.0, MEAN_BGR[c])?) };
    let (b, g, r) = (plane(0)?, plane(1)?, plane(2)?);
    Ok([r, g, b])
}

/// Y, I and Q planes of an image, each `[1, 1, H, W]`.
fn yiq(image: &Tensor) -> Result<[Tensor; 3]> {
    let [r, g, b] = rgb(image)?;
    let row = |k: usize| -> Result<Tensor> { Ok(((r.affine(YIQ[k][0], 0.0)? + g.affine(YIQ[k][1], 0.0)?)? + b.affine(YIQ[k][2], 0.0)?)?) };
    Ok([row(0)?, row(1)?, row(2)?])
}

/// The luminance plane `[1, 1, H, W]` (0..255).
pub fn luminance(image: &Tensor) -> Result<Tensor> {
    let [y, _, _] = yiq(image)?;
    Ok(y)
}

/// A luminance plane as a grey image in the optimisation space.
fn grey(y: &Tensor) -> Result<Tensor> {
    Ok(Tensor::cat(&[y.affine(1.0, -MEAN_BGR[0])?, y.affine(1.0, -MEAN_BGR[1])?, y.affine(1.0, -MEAN_BGR[2])?], 1)?)
}

/// Mean and standard deviation of a plane.
fn mean_dev(plane: &Tensor) -> Result<(f64, f64)> {
    let v = plane.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    Ok((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn image(seed: u64, w: usize, h: usize) -> Tensor {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut rgb = Vec::with_capacity(w * h * 3);
        for i in 0..w * h * 3 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // A colour cast per channel, so images differ in colour.
            rgb.push((((state >> 33) % 120) as usize + (i % 3) * 40 + seed as usize * 7).min(255) as u8);
        }
        crate::pixels::to_tensor(&rgb, w, h, DType::F32, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn yiq_round_trips() {
        let x = image(1, 9, 7);
        // Display with the image as its own content: its own colours back.
        let back = display(Some(PreserveColors::Luminance), &x, &x).unwrap();
        assert!(max_abs_diff(&x, &back) < 1e-3, "{}", max_abs_diff(&x, &back));
    }

    #[test]
    fn luminance_mode_renders_grey_and_shows_the_contents_colours() {
        let (content, style) = (image(1, 8, 6), image(2, 8, 6));
        let p = prepare(Some(PreserveColors::Luminance), Pictures { content: content.clone(), styles: vec![style] }).unwrap();
        // Grey: R = G = B in both pictures.
        for t in [&p.content, &p.styles[0]] {
            let [r, g, b] = rgb(t).unwrap();
            assert!(max_abs_diff(&r, &g) < 1e-3 && max_abs_diff(&g, &b) < 1e-3);
        }
        // The style's luminance has the content's mean and deviation.
        let (cm, cd) = mean_dev(&luminance(&content).unwrap()).unwrap();
        let (sm, sd) = mean_dev(&luminance(&p.styles[0]).unwrap()).unwrap();
        assert!((cm - sm).abs() < 1e-3 && (cd - sd).abs() < 1e-3, "{cm} {sm} {cd} {sd}");
        // A result keeps its own luminance and takes the content's I and Q.
        let result = image(3, 8, 6);
        let shown = display(Some(PreserveColors::Luminance), &result, &content).unwrap();
        assert!(max_abs_diff(&luminance(&shown).unwrap(), &luminance(&result).unwrap()) < 1e-3);
        let ([_, i1, q1], [_, i2, q2]) = (yiq(&shown).unwrap(), yiq(&content).unwrap());
        assert!(max_abs_diff(&i1, &i2) < 1e-3 && max_abs_diff(&q1, &q2) < 1e-3);
        // Without the mode, the image is shown as it is.
        assert_eq!(max_abs_diff(&display(None, &result, &content).unwrap(), &result), 0.0);
    }

    #[test]
    fn histogram_mode_gives_the_styles_the_contents_colour_statistics() {
        let (content, style) = (image(1, 8, 6), image(5, 10, 6));
        let p = prepare(Some(PreserveColors::Histogram), Pictures { content: content.clone(), styles: vec![style.clone()] }).unwrap();
        let (want, got) = (ColorStats::of(&content).unwrap(), ColorStats::of(&p.styles[0]).unwrap());
        for c in 0..3 {
            assert!((want.mean[c] - got.mean[c]).abs() < 1e-2, "{want:?} {got:?}");
            for d in 0..3 {
                assert!((want.cov[c][d] - got.cov[c][d]).abs() < 1e-1 * want.cov[c][d].abs().max(1.0), "{want:?} {got:?}");
            }
        }
        assert_eq!(max_abs_diff(&p.content, &content), 0.0, "the content is left as it is");
        let untouched = prepare(None, Pictures { content: content.clone(), styles: vec![style.clone()] }).unwrap();
        assert_eq!(max_abs_diff(&untouched.styles[0], &style), 0.0);
    }
}
