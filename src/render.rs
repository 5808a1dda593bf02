//! Renderers: a batch of requests in, one image (or error) per request out.
//!
//! Built in: `placeholder` (the default; a legible, deterministic card per job) and
//! `noop` (a blank image after `RENDERQ_NOOP_DELAY_MS` per call, for benchmarks and
//! drills); `remote/<name>` when an images endpoint is configured (`remote.rs`). A job
//! asking for a model this worker does not serve fails with that said.

pub mod diffusion;
pub mod noop;
mod options;
pub mod placeholder;
pub mod pool;
pub mod remote;

use std::{collections::BTreeMap, io::Cursor, sync::Arc};

use async_trait::async_trait;
use image::{ImageEncoder, RgbImage};

use crate::job::{ClaimedJob, ImageFormat, JobId, Sampler};

pub use self::{
    noop::NoopRenderer,
    options::{DiffusionOptions, RemoteOptions},
    placeholder::PlaceholderRenderer,
    remote::{RemoteConfig, RemoteRenderer},
};

/// How the remote renderer is listed among a worker's models.
const REMOTE_MODELS: &str = "remote/*";

/// Why a render failed, and whether to try again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// Transient: out of device memory, an upstream 503, a timeout.
    #[error("{0}")]
    Retry(String),
    /// Will fail again: a bad request, an unknown model, a missing weight file.
    #[error("{0}")]
    Abort(String),
}

impl RenderError {
    /// Whether the job should be tried again later.
    pub fn is_retry(&self) -> bool {
        matches!(self, RenderError::Retry(_))
    }
}

/// Fault injection for failure drills and tests (`--panic-on`): the built-in
/// renderers panic inside their device call on any batch holding a prompt that
/// contains the text, as a buggy model or native library would on a poison input.
#[derive(Debug, Clone, Default)]
pub struct PanicOn(Option<String>);

impl PanicOn {
    /// Panics on prompts containing `text`; `None` never panics.
    pub fn new(text: Option<String>) -> Self {
        PanicOn(text.filter(|t| !t.is_empty()))
    }

    /// Panics when one of `prompts` holds the poison text.
    pub fn check<'a>(&self, mut prompts: impl Iterator<Item = &'a str>) {
        if let Some(poison) = &self.0
            && prompts.any(|p| p.contains(poison.as_str()))
        {
            panic!("poison prompt (contains {poison:?})");
        }
    }
}

/// Runs device work on the blocking pool. A panic there is raised again in the
/// caller, so the worker sees it and renders the batch one job at a time: only the
/// poison job fails, never its whole batch.
pub(crate) async fn on_blocking_pool<T, F>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("device work cancelled: {e}"),
    }
}

/// What a renderer needs of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderRequest {
    /// The job it renders.
    pub job_id: JobId,
    /// The model asked for.
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// What to steer away from.
    pub negative_prompt: Option<String>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Denoising steps, if set.
    pub steps: Option<u32>,
    /// Guidance scale, if set.
    pub guidance: Option<f64>,
    /// The sampler (diffusion models).
    pub sampler: Sampler,
    /// The seed.
    pub seed: u64,
}

impl RenderRequest {
    /// The request of a claimed job: its spec and its recorded seed.
    pub fn from_job(job: &ClaimedJob) -> Self {
        RenderRequest {
            job_id: job.id,
            model: job.spec.model.clone(),
            prompt: job.spec.prompt.clone(),
            negative_prompt: job.spec.negative_prompt.clone(),
            width: job.spec.width,
            height: job.spec.height,
            steps: job.spec.steps,
            guidance: job.spec.guidance,
            sampler: job.spec.sampler(),
            seed: job.seed,
        }
    }

    /// Jobs with equal keys can share one device call (as `BatchKey::of` their jobs).
    pub fn batch_key(&self) -> BatchKey {
        BatchKey {
            model: self.model.clone(),
            width: self.width,
            height: self.height,
            steps: self.steps,
            guidance_bits: self.guidance.map(f64::to_bits),
            sampler: self.sampler,
        }
    }
}

impl BatchKey {
    /// The key of a claimed job, without building its request.
    pub fn of(job: &ClaimedJob) -> Self {
        BatchKey {
            model: job.spec.model.clone(),
            width: job.spec.width,
            height: job.spec.height,
            steps: job.spec.steps,
            guidance_bits: job.spec.guidance.map(f64::to_bits),
            sampler: job.spec.sampler(),
        }
    }
}

/// What jobs must share to be rendered in one device call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchKey {
    /// The model.
    pub model: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Denoising steps.
    pub steps: Option<u32>,
    /// The guidance scale's bits (an `f64` is not `Eq`).
    pub guidance_bits: Option<u64>,
    /// The sampler: one schedule of UNet calls per device call.
    pub sampler: Sampler,
}

/// Renders a group of requests in one device call; one result per request, in order.
#[async_trait]
pub trait Renderer: Send + Sync {
    /// Renders every request of a batch (all share one `BatchKey`). Returns exactly one
    /// result per request, in order.
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>>;

    /// Loads what the first call would need (weights), so a worker reports ready only
    /// once it can render. Models with nothing to load have nothing to do.
    async fn prepare(&self) -> Result<(), RenderError> {
        Ok(())
    }

    /// Device calls this renderer takes at once. A device that runs one batch at a
    /// time takes 1; an endpoint that serves many requests takes as many as it is
    /// allowed, and a new call starts as soon as any one ends.
    fn lanes(&self) -> usize {
        1
    }

    /// The device this renderer's calls run on, when renderers share one: renderers
    /// naming the same device share its lanes (two models on one GPU take turns, so
    /// their batches never hold the GPU's memory at once). `None`: a lane of its own.
    fn device(&self) -> Option<String> {
        None
    }
}

/// The models a worker serves, by name.
#[derive(Clone, Default)]
pub struct Renderers {
    by_model: BTreeMap<String, Arc<dyn Renderer>>,
}

impl Renderers {
    /// `placeholder` and `noop`.
    pub fn builtin(noop_delay_ms: u64) -> Self {
        Renderers::builtin_panicking(noop_delay_ms, PanicOn::default())
    }

    /// `placeholder` and `noop`, both panicking on `poison` (failure drills).
    pub fn builtin_panicking(noop_delay_ms: u64, poison: PanicOn) -> Self {
        let mut r = Renderers::default();
        r.insert(
            "placeholder",
            Arc::new(PlaceholderRenderer::new().panicking_on(poison.clone())),
        );
        r.insert(
            "noop",
            Arc::new(NoopRenderer::new(noop_delay_ms).panicking_on(poison)),
        );
        r
    }

    /// Serves `model` with `renderer`, replacing any before it.
    pub fn insert(&mut self, model: &str, renderer: Arc<dyn Renderer>) {
        self.by_model.insert(model.to_string(), renderer);
    }

    /// The renderer of `model`; every `remote/<name>` goes to the one remote renderer.
    pub fn get(&self, model: &str) -> Option<Arc<dyn Renderer>> {
        self.by_model.get(model).cloned().or_else(|| {
            model
                .starts_with("remote/")
                .then(|| self.by_model.get(REMOTE_MODELS).cloned())
                .flatten()
        })
    }

    /// Serves every `remote/<name>` through an images endpoint.
    pub fn insert_remote(&mut self, remote: RemoteRenderer) {
        self.insert(REMOTE_MODELS, Arc::new(remote));
    }

    /// The most device calls any one renderer takes at once (1 for a GPU, the
    /// endpoint's allowance for a remote one).
    pub fn widest_lane(&self) -> usize {
        self.by_model.values().map(|r| r.lanes()).max().unwrap_or(1)
    }

    /// The names of the models served, for `renderq.workers`.
    pub fn models(&self) -> Vec<String> {
        self.by_model.keys().cloned().collect()
    }

    /// The error a job for an unserved model fails with.
    pub fn unknown_model(&self, model: &str) -> RenderError {
        RenderError::Abort(format!(
            "model `{model}` is not served by this worker (it serves: {}); \
             send it to a queue whose workers serve it",
            self.models().join(", ")
        ))
    }
}

/// Encodes an image in the job's format.
pub fn encode(image: &RgbImage, format: ImageFormat) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Cursor::new(Vec::with_capacity(image.len() / 2 + 1024));
    let (w, h) = image.dimensions();
    let color = image::ExtendedColorType::Rgb8;
    match format {
        ImageFormat::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
            image.as_raw(),
            w,
            h,
            color,
        )?,
        ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(image.as_raw(), w, h, color)?,
        ImageFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(
            image.as_raw(),
            w,
            h,
            color,
        )?,
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_decodes_back_at_its_size() {
        let img = RgbImage::from_pixel(24, 16, image::Rgb([200, 10, 10]));
        for (format, want) in [
            (ImageFormat::Png, image::ImageFormat::Png),
            (ImageFormat::Jpeg, image::ImageFormat::Jpeg),
            (ImageFormat::Webp, image::ImageFormat::WebP),
        ] {
            let bytes = encode(&img, format).unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), want);
            let back = image::load_from_memory(&bytes).unwrap();
            assert_eq!((back.width(), back.height()), (24, 16));
        }
    }
}
