//! The hand-written backward pass against central finite differences, in
//! float64, on a narrow VGG with random weights at odd sizes.

use std::sync::Arc;

mod common;

use common::{image, narrow_vgg};
use stylefarm_engine::arch::VGG19;
use stylefarm_engine::{DType, Device, InputConvention, LayerWeight, Pooling, RenderParams, Renderer, Tensor, Vgg19};

/// Compares the analytic gradient with central differences at every pixel.
fn check(params: RenderParams, convention: InputConvention, h: usize, w: usize) {
    let vgg = Arc::new(Vgg19::new(&narrow_vgg(convention), params.pooling, DType::F64).unwrap());
    let content = image(h, w);
    // Two styles of other sizes, blended.
    let styles = [image(h + 2, w - 3), image(h - 4, w + 1)];
    let params = RenderParams { style_blend: vec![0.3, 0.7], ..params };
    let renderer = Renderer::new(vgg, params, &content, &styles).unwrap();
    let x = image(h, w);
    let (losses, grad) = renderer.loss_and_grad(&x).unwrap();
    assert!(losses.total.is_finite() && losses.total > 0.0);
    let grad = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let eps = 1e-4;
    let mut worst: f64 = 0.0;
    let scale = grad.iter().fold(0f64, |m, g| m.max(g.abs()));
    assert!(scale > 0.0, "the gradient is zero everywhere");
    for i in 0..base.len() {
        let at = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            let t = Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap();
            renderer.evaluate(&t).unwrap().total
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        worst = worst.max((numeric - grad[i]).abs() / scale);
    }
    // A ReLU kink inside ±eps could spoil one element; none does at this eps.
    assert!(worst < 1e-5, "max |numeric − analytic| / max|grad| = {worst:e}");
}

fn all_layers_params() -> RenderParams {
    RenderParams {
        tv_weight: 0.5,
        content_layers: vec![LayerWeight::new("conv4_2", 1.0), LayerWeight::new("conv2_2", 0.5)],
        // Down to conv5_1 so every pool at an odd size is crossed.
        style_layers: RenderParams::default().style_layers,
        ..RenderParams::default()
    }
}

#[test]
fn gradient_matches_finite_differences_avg_pool_13x17() {
    check(all_layers_params(), InputConvention::CaffeBgr, 13, 17);
}

#[test]
fn gradient_matches_finite_differences_max_pool_11x9() {
    check(RenderParams { pooling: Pooling::Max, ..all_layers_params() }, InputConvention::CaffeBgr, 11, 9);
}

#[test]
fn gradient_matches_finite_differences_torchvision_input_convention() {
    check(all_layers_params(), InputConvention::TorchvisionRgb, 9, 7);
}

#[test]
fn only_the_needed_depth_is_required() {
    // Weights with only conv1_1..conv2_1 serve a render that reads no deeper.
    let mut w = narrow_vgg(InputConvention::CaffeBgr);
    w.layers.truncate(3);
    let vgg = Arc::new(Vgg19::new(&w, Pooling::Avg, DType::F64).unwrap());
    let params = RenderParams {
        content_layers: vec![LayerWeight::new("conv1_2", 1.0)],
        style_layers: vec![LayerWeight::new("conv2_1", 1.0)],
        ..RenderParams::default()
    };
    let c = image(8, 8);
    assert!(Renderer::new(vgg.clone(), params.clone(), &c, &[c.clone()]).is_ok());
    let deeper = RenderParams { style_layers: vec![LayerWeight::new(VGG19[3].name, 1.0)], ..params };
    let err = Renderer::new(vgg, deeper, &c, &[c.clone()]).err().expect("conv2_2 is beyond the weights").to_string();
    assert!(err.contains("4 convs"), "{err}");
}
