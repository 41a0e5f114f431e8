//! One render from start to finish, the same for `farmctl render` and a farm
//! worker: start (the init, or a coarse-to-fine schedule), resume from a
//! checkpoint, step, snapshot, checkpoint, stop, finish. The session does no
//! I/O; what a caller does at each of those points — write a log line, save
//! a PNG, put a checkpoint in storage, heartbeat — it does in its
//! [`Hooks`]. So every render feature is written once, here, and both
//! callers get it.
//!
//! ```text
//! Session::new ─┬─ resume(checkpoint) ─┐
//!               └──────────────────────┴─ run(hooks) ─ coarse stages (fresh only)
//!                                                     ─ full size: control → step → iteration
//!                                                                  → snapshot? → checkpoint?
//!                                                     ─ final record ─ Outcome::Finished
//! ```
//!
//! Coarse stages are not checkpointed: they are a deterministic function of
//! the render's identity (parameters, inputs, size), so a resumed render
//! never needs them again, and a render stopped during them starts over.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;

use crate::checkpoint::{Checkpoint, Identity};
use crate::error::{EngineError, Result};
use crate::loss::LossRecord;
use crate::execution::Execution;
use crate::params::{Init, RenderParams};
use crate::pixels::{self, Pictures};
use crate::preserve;
use crate::render::{RenderState, Renderer};
use crate::vgg::Vgg19;

/// Gives the pictures at another size, for coarse stages. The caller
/// resamples from its source images (as it did for the full size), so a
/// coarse stage sees the same pixels whoever drives the session.
pub type Resample<'a> = &'a dyn Fn(usize, usize) -> Result<Pictures>;

/// When the session calls the snapshot and checkpoint hooks (0 = never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cadence {
    pub snapshot_every: usize,
    pub checkpoint_every: usize,
}

/// What a hook tells the session before each iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// End [`Session::run`] now with [`Outcome::Stopped`]; the state stays
    /// as it is, so the caller can still take a checkpoint.
    Stop,
}

/// A coarse stage about to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    /// 0-based, of `count` coarse stages.
    pub index: usize,
    pub count: usize,
    /// Fraction of the render size.
    pub scale: f64,
    pub width: usize,
    pub height: usize,
    pub iterations: usize,
}

/// How [`Session::run`] ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The render reached its iterations; the record is the final image's.
    Finished(LossRecord),
    /// A hook said [`Control::Stop`].
    Stopped,
}

/// What the caller does at each point of a render. Every method has a
/// default that does nothing, so a caller writes only the ones it needs.
pub trait Hooks {
    /// The caller's error; engine errors convert into it.
    type Error: From<EngineError>;

    /// Asked before every iteration, coarse stages included.
    fn control(&mut self) -> Control {
        Control::Continue
    }

    /// A coarse stage begins.
    fn stage(&mut self, _stage: &Stage) -> std::result::Result<(), Self::Error> {
        Ok(())
    }

    /// A full-size iteration ended; `record` holds the losses of the image
    /// it started from (already in [`Session::history`]).
    fn iteration(&mut self, _session: &Session, _record: &LossRecord) -> std::result::Result<(), Self::Error> {
        Ok(())
    }

    /// Every [`Cadence::snapshot_every`] full-size iterations.
    fn snapshot(&mut self, _session: &Session) -> std::result::Result<(), Self::Error> {
        Ok(())
    }

    /// Every [`Cadence::checkpoint_every`] full-size iterations.
    fn checkpoint(&mut self, _session: &Session, _checkpoint: Checkpoint) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
}

/// A render in progress: the full-size renderer, its state once started,
/// the loss history and what makes this render this render.
pub struct Session {
    vgg: Arc<Vgg19>,
    renderer: Renderer,
    /// How every stage is run (tiling): not part of the identity.
    execution: Execution,
    identity: Identity,
    /// The content as the render sees it (grey under luminance-only colour
    /// preservation) …
    content: Tensor,
    /// … and as the photo is, whose colours a luminance-only render shows.
    photo: Tensor,
    init: Option<Tensor>,
    /// `None` until the render has started (fresh) or resumed.
    state: Option<RenderState>,
    history: Vec<LossRecord>,
}

impl Session {
    /// Validates `params` and computes the full-size targets. `init` is the
    /// start image for [`Init::Image`], at the render size.
    pub fn new(vgg: Arc<Vgg19>, params: RenderParams, full: Pictures, init: Option<Tensor>) -> Result<Self> {
        Self::with_execution(vgg, params, Execution::default(), full, init)
    }

    /// [`Session::new`], run as `execution` says (tiled, every stage). The
    /// execution is not part of the render's identity: a checkpoint resumes
    /// under any.
    pub fn with_execution(vgg: Arc<Vgg19>, params: RenderParams, execution: Execution, full: Pictures, init: Option<Tensor>) -> Result<Self> {
        let photo = full.content.clone();
        let full = preserve::prepare(params.preserve_colors, full)?;
        let identity = Identity::new(&params, &full.content, &full.styles, init.as_ref())?;
        let renderer = Renderer::with_execution(vgg.clone(), params, &execution, &full.content, &full.styles)?;
        Ok(Self { vgg, renderer, execution, identity, content: full.content, photo, init, state: None, history: Vec::new() })
    }

    /// Continues from `checkpoint` instead of starting over; refused with
    /// [`EngineError::Mismatch`] naming what differs when the checkpoint is
    /// of another render. (A larger `iterations` is allowed: it extends.)
    pub fn resume(&mut self, checkpoint: Checkpoint) -> Result<()> {
        if let Some(why) = checkpoint.identity.difference(&self.identity) {
            return Err(EngineError::Mismatch(why));
        }
        self.state = Some(checkpoint.state);
        self.history = checkpoint.history;
        Ok(())
    }

    pub fn params(&self) -> &RenderParams {
        self.renderer.params()
    }

    /// How the render is run.
    pub fn execution(&self) -> &Execution {
        &self.execution
    }

    /// What a checkpoint of this render must match.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// `(width, height)` of the full-size render.
    pub fn size(&self) -> (usize, usize) {
        self.identity.size
    }

    /// Full-size iterations done (0 before the render starts).
    pub fn iteration(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.iteration)
    }

    /// The full-size image so far (`None` while coarse stages run).
    pub fn image(&self) -> Option<&Tensor> {
        self.state.as_ref().map(|s| &s.image)
    }

    /// The full-size image as the user sees it: [`Session::image`], or
    /// under luminance-only colour preservation its luminance in the
    /// photo's colours. What a caller writes as a PNG.
    pub fn picture(&self) -> Result<Option<Tensor>> {
        self.image().map(|image| preserve::display(self.params().preserve_colors, image, &self.photo)).transpose()
    }

    /// Every record so far, across resumes.
    pub fn history(&self) -> &[LossRecord] {
        &self.history
    }

    /// A checkpoint of where the render is now (`None` before the
    /// full-size stage has started: there is nothing worth keeping yet).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let state = self.state.clone()?;
        Some(Checkpoint { state, history: self.history.clone(), identity: self.identity.clone() })
    }

    /// Runs the render to its end, or until a hook says stop. `resample`
    /// gives the pictures of coarse stages (unused without `scales`).
    pub fn run<H: Hooks>(&mut self, hooks: &mut H, cadence: Cadence, resample: Resample<'_>) -> std::result::Result<Outcome, H::Error> {
        let clock = Instant::now();
        if self.state.is_none() {
            self.state = Some(match self.coarse_stages(hooks, resample)? {
                Start::Init => self.renderer.initial_state(&self.content, self.init.as_ref())?,
                Start::From(image) => self.renderer.state_from(image)?,
                Start::Stopped => return Ok(Outcome::Stopped),
            });
        }
        // Seconds count on from the last record, so a resumed render's log
        // reads as if it had never stopped.
        let offset = self.history.last().map_or(0.0, |r| r.seconds);
        let iterations = self.params().iterations;
        loop {
            let Some(state) = self.state.as_mut() else {
                return Err(EngineError::Internal("the render lost its state".into()).into());
            };
            if state.iteration >= iterations {
                break;
            }
            if hooks.control() == Control::Stop {
                return Ok(Outcome::Stopped);
            }
            let iteration = state.iteration;
            let losses = self.renderer.step(state)?;
            let done = state.iteration;
            let record = LossRecord { iteration, losses, seconds: offset + clock.elapsed().as_secs_f64() };
            self.history.push(record);
            hooks.iteration(self, &record)?;
            if !losses.total.is_finite() {
                let before = self.history.iter().rev().map(|r| r.losses).find(|l| l.total.is_finite());
                return Err(diverged(iteration, &losses, before.as_ref(), self.params()).into());
            }
            if cadence.snapshot_every > 0 && done % cadence.snapshot_every == 0 {
                hooks.snapshot(self)?;
            }
            if cadence.checkpoint_every > 0 && done % cadence.checkpoint_every == 0 {
                if let Some(ck) = self.checkpoint() {
                    hooks.checkpoint(self, ck)?;
                }
            }
        }
        // The last record is the final image, so the log ends where the
        // render does.
        let (image, iteration) = match &self.state {
            Some(s) => (s.image.clone(), s.iteration),
            None => return Err(EngineError::Internal("the render lost its state".into()).into()),
        };
        let losses = self.renderer.evaluate(&image)?;
        let record = LossRecord { iteration, losses, seconds: offset + clock.elapsed().as_secs_f64() };
        self.history.push(record);
        Ok(Outcome::Finished(record))
    }

    /// Runs the coarse stages, each from the previous one's result, and
    /// says where the full-size render starts.
    fn coarse_stages<H: Hooks>(&self, hooks: &mut H, resample: Resample<'_>) -> std::result::Result<Start, H::Error> {
        let params = self.params();
        if params.scales.is_empty() {
            return Ok(Start::Init);
        }
        let (width, height) = self.size();
        // The previous stage's result and the content it was rendered
        // against (`None` before the first stage: a user's init image has
        // no coarse content to take detail from).
        let mut previous: Option<(Tensor, Option<Tensor>)> = self.init.clone().map(|t| (t, None));
        for (index, &scale) in params.scales.iter().enumerate() {
            let (w, h) = (((width as f64 * scale).round() as usize).max(1), ((height as f64 * scale).round() as usize).max(1));
            let iterations = params.coarse_iterations();
            hooks.stage(&Stage { index, count: params.scales.len(), scale, width: w, height: h, iterations })?;
            let pictures = preserve::prepare(params.preserve_colors, resample(w, h)?)?;
            let start = previous.as_ref().map(|(image, content)| upsample_with_detail(image, content.as_ref(), &pictures.content)).transpose()?;
            let stage_params = RenderParams {
                iterations,
                init: if start.is_some() { Init::Image } else { params.init.clone() },
                scales: Vec::new(),
                ..params.clone()
            };
            let renderer = Renderer::with_execution(self.vgg.clone(), stage_params, &self.execution, &pictures.content, &pictures.styles)?;
            let mut state = renderer.initial_state(&pictures.content, start.as_ref())?;
            let mut before = None;
            while state.iteration < iterations {
                if hooks.control() == Control::Stop {
                    return Ok(Start::Stopped);
                }
                let losses = renderer.step(&mut state)?;
                if !losses.total.is_finite() {
                    return Err(diverged(state.iteration - 1, &losses, before.as_ref(), params).into());
                }
                before = Some(losses);
            }
            previous = Some((state.image, Some(pictures.content)));
        }
        match previous {
            Some((last, content)) => Ok(Start::From(upsample_with_detail(&last, content.as_ref(), &self.content)?)),
            None => Err(EngineError::Internal("coarse stages ran but left no image".into()).into()),
        }
    }
}

/// A coarse stage's result `image` carried to the size of `content` (the
/// next stage's content): resampled, plus the content detail the coarse
/// size could not hold, `content − resize(coarse_content)`. Upsampling
/// alone starts the next stage from a blurred picture whose content loss
/// is already twice the blend init's; the detail puts back the edges the
/// content loss measures (a Laplacian-pyramid step).
fn upsample_with_detail(image: &Tensor, coarse_content: Option<&Tensor>, content: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = content.dims4()?;
    let upsampled = pixels::resize(image, w, h)?;
    Ok(match coarse_content {
        Some(coarse) => ((upsampled + content)? - pixels::resize(coarse, w, h)?)?,
        None => upsampled,
    })
}

/// Where the full-size render starts.
enum Start {
    /// From `params.init` (no coarse stages).
    Init,
    /// From the last coarse stage's result, resampled to the full size.
    From(Tensor),
    /// A hook stopped a coarse stage.
    Stopped,
}

/// The error of a render whose loss stopped being a number, naming the
/// term that did it and the parameter to lower.
fn diverged(iteration: usize, losses: &crate::Losses, before: Option<&crate::Losses>, params: &RenderParams) -> EngineError {
    let (culprit, lever) = losses.blame(before, params.alpha, params.beta, params.tv_weight);
    EngineError::NonFinite { iteration, value: losses.total, culprit, lever }
}
