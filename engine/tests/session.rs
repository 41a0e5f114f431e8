//! The render session: hooks called at their cadence, stop and resume
//! ending bit-identical to an uninterrupted render (with coarse-to-fine
//! too), and a checkpoint of another render refused by name.

mod common;

use std::sync::Arc;

use common::Seeded;
use stylefarm_engine::session::Resample;
use stylefarm_engine::{
    Cadence, Checkpoint, Control, DType, EngineError, Hooks, InputConvention, LossRecord, Optimizer, Outcome, Pictures, RenderParams, Session,
    Stage, Tensor, Vgg19,
};

const H: usize = 19;
const W: usize = 23;

/// The caller's side of a session: counts what it was told and stops when
/// asked to.
#[derive(Default)]
struct Recorder {
    stages: Vec<Stage>,
    iterations: Vec<usize>,
    snapshots: Vec<usize>,
    checkpoints: Vec<Checkpoint>,
    stop_after: Option<usize>,
    asked: usize,
}

impl Hooks for Recorder {
    type Error = EngineError;

    fn control(&mut self) -> Control {
        self.asked += 1;
        match self.stop_after {
            Some(n) if self.iterations.len() >= n => Control::Stop,
            _ => Control::Continue,
        }
    }

    fn stage(&mut self, stage: &Stage) -> Result<(), EngineError> {
        self.stages.push(*stage);
        Ok(())
    }

    fn iteration(&mut self, session: &Session, record: &LossRecord) -> Result<(), EngineError> {
        // (Compared as text: a diverged render's NaN is not equal to itself.)
        assert_eq!(format!("{:?}", session.history().last()), format!("{:?}", Some(record)), "the record is in the history before the hook sees it");
        self.iterations.push(record.iteration);
        Ok(())
    }

    fn snapshot(&mut self, session: &Session) -> Result<(), EngineError> {
        self.snapshots.push(session.iteration());
        Ok(())
    }

    fn checkpoint(&mut self, _: &Session, checkpoint: Checkpoint) -> Result<(), EngineError> {
        self.checkpoints.push(checkpoint);
        Ok(())
    }
}

/// Fixed pictures at any size: a content and a style drawn once at full
/// size from a fixed seed (a run is the same run on every machine),
/// resampled bilinearly for coarse stages.
struct Scene {
    vgg: Arc<Vgg19>,
    content: Tensor,
    style: Tensor,
}

impl Scene {
    fn new() -> Scene {
        let mut rng = Seeded::new(7);
        let vgg = Arc::new(Vgg19::new(&rng.narrow_vgg(InputConvention::CaffeBgr), Default::default(), DType::F32).unwrap());
        let content = rng.image(H, W).to_dtype(DType::F32).unwrap();
        let style = rng.image(H + 3, W - 2).to_dtype(DType::F32).unwrap();
        Scene { vgg, content, style }
    }

    fn pictures(&self, w: usize, h: usize) -> stylefarm_engine::Result<Pictures> {
        Ok(Pictures {
            content: stylefarm_engine::pixels::resize(&self.content, w, h)?,
            styles: vec![stylefarm_engine::pixels::resize(&self.style, w, h)?],
        })
    }

    fn session(&self, params: &RenderParams) -> Session {
        Session::new(self.vgg.clone(), params.clone(), self.pictures(W, H).unwrap(), None).unwrap()
    }

    fn run(&self, session: &mut Session, hooks: &mut Recorder, cadence: Cadence) -> Outcome {
        let resample: Resample<'_> = &|w, h| self.pictures(w, h);
        session.run(hooks, cadence, resample).unwrap()
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

fn params(optimizer: Optimizer, scales: Vec<f64>) -> RenderParams {
    RenderParams { optimizer, iterations: 12, scales, coarse_iters: Some(5), lr: 1.0, ..RenderParams::default() }
}

#[test]
fn hooks_are_called_at_their_cadence_and_the_log_ends_with_the_final_image() {
    let scene = Scene::new();
    let mut session = scene.session(&params(Optimizer::Adam, vec![0.3, 0.6]));
    let mut hooks = Recorder::default();
    let outcome = scene.run(&mut session, &mut hooks, Cadence { snapshot_every: 4, checkpoint_every: 5 });
    let Outcome::Finished(last) = outcome else { panic!("the render did not finish: {outcome:?}") };
    assert_eq!(hooks.stages.len(), 2);
    assert_eq!((hooks.stages[0].width, hooks.stages[0].height, hooks.stages[0].iterations), (7, 6, 5), "{:?}", hooks.stages[0]);
    assert_eq!((hooks.stages[1].width, hooks.stages[1].height), (14, 11));
    assert_eq!(hooks.iterations, (0..12).collect::<Vec<_>>(), "one record per full-size iteration");
    assert_eq!(hooks.snapshots, [4, 8, 12]);
    assert_eq!(hooks.checkpoints.iter().map(|c| c.state.iteration).collect::<Vec<_>>(), [5, 10]);
    assert_eq!(last.iteration, 12);
    assert_eq!(session.history().len(), 13, "12 iterations and the final image");
    assert_eq!(session.history().last(), Some(&last));
    assert!(hooks.asked >= 2 * 5 + 12, "asked before every iteration, coarse ones too ({})", hooks.asked);
}

/// Stops after `stop_after` iterations, resumes a fresh session from the
/// stop's checkpoint, and compares with a render never stopped.
fn stop_and_resume_is_bit_identical(optimizer: Optimizer, scales: Vec<f64>) {
    let scene = Scene::new();
    let p = params(optimizer, scales);

    let mut whole = scene.session(&p);
    scene.run(&mut whole, &mut Recorder::default(), Cadence::default());

    let mut first = scene.session(&p);
    let mut hooks = Recorder { stop_after: Some(7), ..Recorder::default() };
    assert_eq!(scene.run(&mut first, &mut hooks, Cadence::default()), Outcome::Stopped);
    assert_eq!(first.iteration(), 7);
    // Through the file format, as a real resume would.
    let bytes = first.checkpoint().expect("a full-size state exists").encode().unwrap();
    let checkpoint = Checkpoint::decode(&bytes, &stylefarm_engine::Device::Cpu).unwrap();

    let mut second = scene.session(&p);
    second.resume(checkpoint).unwrap();
    let mut hooks = Recorder::default();
    scene.run(&mut second, &mut hooks, Cadence::default());
    assert!(hooks.stages.is_empty(), "a resumed render does not redo its coarse stages");
    assert_eq!(hooks.iterations, (7..12).collect::<Vec<_>>());

    assert_eq!(bits(whole.image().unwrap()), bits(second.image().unwrap()), "final images differ");
    let losses = |s: &Session| s.history().iter().map(|r| (r.iteration, r.losses)).collect::<Vec<_>>();
    assert_eq!(losses(&whole), losses(&second));
}

#[test]
fn stop_and_resume_adam() {
    stop_and_resume_is_bit_identical(Optimizer::Adam, Vec::new());
}

#[test]
fn stop_and_resume_lbfgs_coarse_to_fine() {
    stop_and_resume_is_bit_identical(Optimizer::Lbfgs, vec![0.5]);
}

#[test]
fn a_stop_during_a_coarse_stage_leaves_nothing_to_checkpoint() {
    let scene = Scene::new();
    let mut session = scene.session(&params(Optimizer::Adam, vec![0.5]));
    let mut hooks = Recorder { stop_after: Some(0), ..Recorder::default() };
    assert_eq!(scene.run(&mut session, &mut hooks, Cadence::default()), Outcome::Stopped);
    assert!(session.checkpoint().is_none());
    assert_eq!(session.iteration(), 0);
}

#[test]
fn a_checkpoint_of_another_render_is_refused_by_name() {
    let scene = Scene::new();
    let p = params(Optimizer::Adam, vec![0.5]);
    let mut first = scene.session(&p);
    let mut hooks = Recorder { stop_after: Some(3), ..Recorder::default() };
    scene.run(&mut first, &mut hooks, Cadence::default());
    let checkpoint = first.checkpoint().unwrap();

    // Other coarse scales are another render: its image came from elsewhere.
    let mut other = scene.session(&RenderParams { scales: vec![0.25], ..p.clone() });
    let err = other.resume(checkpoint.clone()).unwrap_err().to_string();
    assert!(err.contains("scales"), "{err}");
    // More iterations extend the same render.
    let mut longer = scene.session(&RenderParams { iterations: 20, ..p });
    longer.resume(checkpoint).unwrap();
    assert_eq!(longer.iteration(), 3);
}

#[test]
fn a_diverging_render_stops_with_the_iteration_and_the_lever() {
    let scene = Scene::new();
    let resample: Resample<'_> = &|w, h| scene.pictures(w, h);
    // A step size that once threw the image out of the range of numbers
    // now lands on the pixel range's edge: the render ends, finite.
    for optimizer in [stylefarm_engine::Optimizer::Adam, stylefarm_engine::Optimizer::Lbfgs] {
        let p = RenderParams { lr: 1e30, iterations: 30, optimizer, ..RenderParams::default() };
        let end = scene.session(&p).run(&mut Recorder::default(), Cadence::default(), resample).unwrap();
        let Outcome::Finished(last) = end else { panic!("{optimizer:?}: not finished") };
        assert!(last.losses.total.is_finite(), "{optimizer:?}: {last:?}");
    }
    // A weight that overflows its term is named, with the parameter to lower.
    let p = RenderParams { beta: 1e300, iterations: 3, ..RenderParams::default() };
    let err = scene.session(&p).run(&mut Recorder::default(), Cadence::default(), resample).unwrap_err();
    assert!(err.to_string().contains("style × β") && err.to_string().contains("try a smaller beta"), "{err}");
}

#[test]
fn coarse_to_fine_puts_back_the_content_detail_the_coarse_size_lost() {
    let scene = Scene::new();
    // No coarse iterations, from the content itself: the coarse stage's
    // result is the coarse content, so the full size must start from the
    // content exactly — not from its blurred upsampling.
    let p = RenderParams { iterations: 0, init: stylefarm_engine::Init::Content, scales: vec![0.5], coarse_iters: Some(0), ..RenderParams::default() };
    let mut session = scene.session(&p);
    scene.run(&mut session, &mut Recorder::default(), Cadence::default());
    let start = session.history()[0].losses.content;

    let full = scene.pictures(W, H).unwrap();
    let renderer = stylefarm_engine::Renderer::new(scene.vgg.clone(), RenderParams::default(), &full.content, &full.styles).unwrap();
    let (w, h) = ((W as f64 * 0.5).round() as usize, (H as f64 * 0.5).round() as usize);
    let coarse = scene.pictures(w, h).unwrap().content;
    let blurred = renderer.evaluate(&stylefarm_engine::pixels::resize(&coarse, W, H).unwrap()).unwrap().content;
    assert!(blurred > 0.0);
    // Every start is inside the pixel range, so "the content exactly" is
    // the content as the range holds it: its resampling may overshoot the
    // range, at both sizes, and the two clippings need not cancel — the
    // start is within twice that of the content. The random content
    // overshoots the range by a seed-dependent amount, so the clipped
    // content's own loss reaches a few percent of the blur's (5 % over 40
    // seeds): "far from the blur" is a quarter of it.
    use stylefarm_engine::lbfgs::Bounds;
    let boxed = stylefarm_engine::pixels::PixelBox::new(&full.content).unwrap().project(&full.content).unwrap();
    let floor = renderer.evaluate(&boxed).unwrap().content;
    assert!(start <= 2.0 * floor + 1e-4 * blurred && start < 0.25 * blurred, "the full size starts {start:e} from the content ({floor:e} in range); upsampling alone gives {blurred:e}");
}

#[test]
fn the_recolored_init_has_the_styles_colours_and_the_contents_shapes() {
    use stylefarm_engine::colors::ColorStats;
    let scene = Scene::new();
    let full = scene.pictures(W, H).unwrap();
    let init = |noise_ratio: f64, seed: u64| {
        let p = RenderParams { init: stylefarm_engine::Init::Recolored, noise_ratio, seed, ..RenderParams::default() };
        let renderer = stylefarm_engine::Renderer::new(scene.vgg.clone(), p, &full.content, &full.styles).unwrap();
        renderer.initial_image(&full.content, None).unwrap()
    };
    let pure = init(0.0, 0);
    let (got, want) = (ColorStats::of(&pure).unwrap(), ColorStats::of(&full.styles[0]).unwrap());
    for c in 0..3 {
        assert!((got.mean[c] - want.mean[c]).abs() < 1e-2, "mean {c}: {} vs {}", got.mean[c], want.mean[c]);
        assert!((got.cov[c][c] - want.cov[c][c]).abs() < 1e-3 * want.cov[c][c], "variance {c}");
    }
    // An affine map per pixel keeps the content's shapes: recolouring the
    // result back gives the content.
    let back = stylefarm_engine::colors::transfer(&pure, &got, &ColorStats::of(&full.content).unwrap()).unwrap();
    let err = (back - &full.content).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err < 1e-2, "recolouring back is off by {err}");
    // The seed still matters through the noise share.
    assert_ne!(bits(&init(0.1, 0)), bits(&init(0.1, 1)));
}

/// Colour preservation, as a whole render sees it: a luminance-only render
/// shows the photo's own colours (its I and Q) with the render's
/// luminance, with coarse stages too; a checkpoint of a render without it
/// is another render's; the PNGs' bit depth is not.
#[test]
fn luminance_only_renders_show_the_photos_colours_and_resume_only_themselves() {
    use stylefarm_engine::preserve::{display, luminance};
    use stylefarm_engine::PreserveColors;
    let scene = Scene::new();
    let p = RenderParams { preserve_colors: Some(PreserveColors::Luminance), ..params(Optimizer::Lbfgs, vec![0.5]) };
    let mut session = scene.session(&p);
    scene.run(&mut session, &mut Recorder::default(), Cadence::default());
    let image = session.image().unwrap().clone();
    let picture = session.picture().unwrap().unwrap();
    let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff(&luminance(&picture).unwrap(), &luminance(&image).unwrap()) < 1e-2, "the render's luminance");
    // Its chrominance is the photo's: showing the photo's own luminance in
    // the picture's colours gives back the photo.
    assert!(diff(&display(p.preserve_colors, &scene.content, &picture).unwrap(), &scene.content) < 1e-2);
    // A plain render of the same pictures shows its optimised image as it is.
    let mut plain = scene.session(&params(Optimizer::Lbfgs, vec![0.5]));
    scene.run(&mut plain, &mut Recorder::default(), Cadence::default());
    assert_eq!(diff(&plain.picture().unwrap().unwrap(), plain.image().unwrap()), 0.0);
    // Resuming: another mode is another render (named).
    let checkpoint = session.checkpoint().unwrap();
    let mut histogram = scene.session(&RenderParams { preserve_colors: Some(PreserveColors::Histogram), ..p.clone() });
    let refused = histogram.resume(checkpoint.clone()).unwrap_err().to_string();
    // (The luminance render's pictures are grey: it is the content that differs first.)
    assert!(["preserve_colors", "content image", "style image"].iter().any(|w| refused.contains(w)), "{refused}");
    let mut again = scene.session(&p);
    again.resume(checkpoint).expect("the same render resumes");
}
