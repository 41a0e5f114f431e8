//! Tiled evaluation is exact: against the untiled losses and gradient at
//! sizes where both fit, with several tile sizes and odd image sizes; a
//! 10-iteration render tiled equals the untiled one; and the halo is the
//! smallest that stays exact — one pixel less breaks it.

mod common;

use std::sync::Arc;

use common::{image, narrow_vgg};
use stylefarm_engine::tiled::{Reach, Tiled};
use stylefarm_engine::{DType, InputConvention, Optimizer, RenderParams, Renderer, Tensor, Vgg19};

fn vgg(dtype: DType) -> Arc<Vgg19> {
    Arc::new(Vgg19::new(&narrow_vgg(InputConvention::CaffeBgr), Default::default(), dtype).unwrap())
}

fn params() -> RenderParams {
    // Every default layer (conv1_1 … conv5_1, conv4_2) and TV.
    RenderParams { tv_weight: 0.05, alpha: 5.0, ..RenderParams::default() }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// ‖a − b‖ / ‖b‖.
fn rel_norm(a: &Tensor, b: &Tensor) -> f64 {
    let norm = |t: &Tensor| t.to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    norm(&(a - b).unwrap()) / norm(b)
}

struct Case {
    content: Tensor,
    style: Tensor,
    image: Tensor,
}

fn case(h: usize, w: usize, dtype: DType) -> Case {
    let t = |h, w| image(h, w).to_dtype(dtype).unwrap();
    Case { content: t(h, w), style: t(h, w), image: t(h, w) }
}

#[test]
fn tiled_losses_and_gradients_equal_the_untiled_ones() {
    let net = vgg(DType::F32);
    let p = params();
    for (h, w) in [(101, 131), (97, 83)] {
        let c = case(h, w, DType::F32);
        let whole = Renderer::new(net.clone(), p.clone(), &c.content, &[c.style.clone()]).unwrap();
        let (want, want_grad) = whole.loss_and_grad(&c.image).unwrap();
        for tile in [16, 32, 48, 200] {
            let tiled = Tiled::new(net.clone(), &p, &c.content, &[c.style.clone()], tile).unwrap();
            let (got, got_grad) = tiled.losses(&c.image, true).unwrap();
            let got_grad = got_grad.unwrap();
            for (name, a, b) in [("content", got.content, want.content), ("style", got.style, want.style), ("tv", got.tv, want.tv), ("total", got.total, want.total)] {
                assert!(rel(a, b) <= 1e-5, "{h}x{w}, tile {tile}: {name} {a} vs {b}");
            }
            let e = rel_norm(&got_grad, &want_grad);
            assert!(e <= 1e-4, "{h}x{w}, tile {tile}: gradient relative error {e}");
        }
    }
}

/// In f64: in f32 the two evaluations round differently (the tiled one
/// sums its Gram matrices in f64, the untiled one in f32), and ten L-BFGS
/// iterations carry that to ~1e-4 of a pixel value.
#[test]
fn a_tiled_render_equals_the_untiled_one() {
    let net = vgg(DType::F64);
    let c = case(70, 90, DType::F64);
    let run = |tile: Option<usize>| {
        let p = RenderParams { iterations: 10, optimizer: Optimizer::Lbfgs, tile, ..params() };
        let r = Renderer::new(net.clone(), p, &c.content, &[c.style.clone()]).unwrap();
        let mut state = r.initial_state(&c.content, None).unwrap();
        while state.iteration < 10 {
            r.step(&mut state).unwrap();
        }
        state.image
    };
    let (whole, tiled) = (run(None), run(Some(32)));
    let diff = (&whole - &tiled).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    assert!(diff <= 1e-4, "largest per-pixel difference after 10 iterations: {diff}");
}

#[test]
fn the_halo_is_the_smallest_that_stays_exact() {
    // f64, so "exact" is 1e-10 and a missing pixel stands far above it.
    let net = vgg(DType::F64);
    let p = params();
    // Wide enough that a tile's crop ends inside the image (32 + 70 < 150).
    let c = case(40, 150, DType::F64);
    let whole = Renderer::new(net.clone(), p.clone(), &c.content, &[c.style.clone()]).unwrap();
    let (want, want_grad) = whole.loss_and_grad(&c.image).unwrap();
    let reach = Reach::of(13);
    let error = |reach: Reach| {
        let tiled = Tiled::with_reach(net.clone(), &p, &c.content, &[c.style.clone()], 32, Some(reach)).unwrap();
        let (got, grad) = tiled.losses(&c.image, true).unwrap();
        rel(got.total, want.total).max(rel_norm(&grad.unwrap(), &want_grad))
    };
    let exact = error(reach);
    assert!(exact < 1e-12, "the receptive field's halo: {exact}");
    // A pixel at the edge of conv5_1's receptive field weighs little in
    // the total, but far above rounding.
    let short = error(Reach { after: reach.after - 1, ..reach });
    assert!(short > 1e3 * exact.max(1e-15), "one pixel less after the tile should break it: {short} (exact: {exact})");
    // Every tile size is exact with the full halo.
    for tile in [16, 48, 64] {
        let tiled = Tiled::new(net.clone(), &p, &c.content, &[c.style.clone()], tile).unwrap();
        let (got, grad) = tiled.losses(&c.image, true).unwrap();
        let e = rel(got.total, want.total).max(rel_norm(&grad.unwrap(), &want_grad));
        assert!(e < 1e-12, "tile {tile}: {e}");
    }
}
