//! The diffusion renderer: Stable Diffusion models (`sd-1.5`, `sd-2.1`, `sd-turbo`,
//! `sdxl`, `sdxl-turbo`) on candle, on CPU, CUDA or Metal.
//!
//! The worker hands over jobs that share (model, size, steps, guidance); they render
//! together, one UNet call per step, each with its own prompt, negative prompt and
//! seed. Weights load on the first job (a missing or corrupt file fails the job with
//! an Abort naming the file). A batch that runs out of device memory is split in two
//! and each half tried again, down to single jobs; later batches of that shape start
//! below the size that failed.

pub mod arch;
pub mod checkpoint;
pub mod config;
pub mod pipeline;
pub mod sampling;
pub mod tensors;
pub mod tiny;
pub mod tokenizer;
pub mod weights;

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use candle_core::{DType, Device};
use image::RgbImage;

pub use self::{
    arch::{Architecture, PRESETS},
    pipeline::{Pipeline, PipelineError, Sample, Settings, Timings},
    weights::{ModelFiles, WeightSource},
};
use super::{RenderError, RenderRequest, Renderer};

/// Parses `cpu`, `cuda`, `cuda:N` or `metal` (`metal:N`).
pub fn device(spec: &str) -> Result<Device, String> {
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>()
                .map_err(|_| format!("device `{spec}`: `{i}` is not a device number"))?,
        ),
        None => (spec, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(index).map_err(|e| {
            format!("device `{spec}`: {e} (is this binary built with --features cuda?)")
        }),
        "metal" => Device::new_metal(index).map_err(|e| {
            format!("device `{spec}`: {e} (is this binary built with --features metal?)")
        }),
        _ => Err(format!(
            "device `{spec}`: expected cpu, cuda, cuda:N or metal"
        )),
    }
}

/// Parses `f32`, `f16` or `bf16`, refusing what the device cannot run.
pub fn dtype(spec: &str, device: &Device) -> Result<DType, String> {
    match spec {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" if device.is_cpu() => {
            Err("dtype bf16: candle has no bf16 matrix product on CPU; use f32".into())
        }
        "bf16" => Ok(DType::BF16),
        _ => Err(format!("dtype `{spec}`: expected f32, f16 or bf16")),
    }
}

/// The default dtype of a device: f16 on GPUs, f32 on CPU.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    }
}

/// By (width, height, guided): what the worker learned of that shape's memory.
type Limits = HashMap<(u32, u32, bool), MemoryLimit>;

/// Device calls that fit before a learned limit is doubled, to find out whether the
/// shortage passed (another process on the GPU, say). A probe that does not fit costs
/// one failed call: about 1.5% of the calls at most.
pub const PROBE_AFTER: u32 = 64;

/// The smallest batch size of a shape that ran out of device memory, and how many
/// calls have fitted since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The smallest group size that ran out of memory, if one did.
    pub too_big: Option<usize>,
    /// Calls that fitted since.
    pub fitted: u32,
}

impl MemoryLimit {
    fn ran_out(&mut self, n: usize) {
        self.too_big = Some(self.too_big.map_or(n, |t| t.min(n)));
        self.fitted = 0;
    }

    fn fit(&mut self) {
        let Some(limit) = self.too_big else { return };
        self.fitted += 1;
        if self.fitted >= PROBE_AFTER {
            tracing::info!(from = limit, to = limit * 2, "probing a larger batch again");
            self.too_big = Some(limit * 2);
            self.fitted = 0;
        }
    }
}

/// Stable Diffusion on candle: loads its weights on first use, renders groups of jobs in one call.
pub struct DiffusionRenderer {
    model: String,
    arch: Architecture,
    source: WeightSource,
    device: Device,
    dtype: DType,
    loaded: tokio::sync::Mutex<Option<Arc<Pipeline>>>,
    limits: Arc<std::sync::Mutex<Limits>>,
    panic_on: super::PanicOn,
}

impl DiffusionRenderer {
    /// A renderer of `model` with `arch`, its weights from `source`, on `device` in `dtype`.
    pub fn new(
        model: &str,
        arch: Architecture,
        source: WeightSource,
        device: Device,
        dtype: DType,
    ) -> Self {
        DiffusionRenderer {
            model: model.to_string(),
            arch,
            source,
            device,
            dtype,
            loaded: tokio::sync::Mutex::new(None),
            limits: Arc::default(),
            panic_on: super::PanicOn::default(),
        }
    }

    /// For failure drills: panic on a poison prompt (`--panic-on`), inside the device
    /// call, where a fault in candle or a native library would.
    pub fn panicking_on(mut self, poison: super::PanicOn) -> Self {
        self.panic_on = poison;
        self
    }

    /// The pipeline, loaded on first use. A failed load is not kept: the next batch
    /// tries again (the files may have been put in place meanwhile).
    pub async fn pipeline(&self) -> Result<Arc<Pipeline>, RenderError> {
        let mut slot = self.loaded.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let files = match &self.source {
            WeightSource::Local(dir) => weights::local(&self.model, &self.arch, dir)?,
            WeightSource::Checkpoint(file) => weights::checkpoint(&self.model, file)?,
            WeightSource::Hub => weights::hub(&self.model, &self.arch).await?,
        };
        let (arch, device, dtype, model) = (
            self.arch.clone(),
            self.device.clone(),
            self.dtype,
            self.model.clone(),
        );
        tracing::info!(model, ?files, "loading weights");
        let started = std::time::Instant::now();
        let pipeline = tokio::task::spawn_blocking(move || {
            Pipeline::load(arch, &files, device, dtype)
                .map_err(|e| RenderError::Abort(format!("model `{model}`: {e}")))
        })
        .await
        .map_err(|e| RenderError::Abort(format!("loading weights panicked: {e}")))??;
        tracing::info!(
            model = self.model,
            secs = started.elapsed().as_secs_f64(),
            "model loaded"
        );
        let pipeline = Arc::new(pipeline);
        *slot = Some(pipeline.clone());
        Ok(pipeline)
    }

    /// Sizes this model can make: multiples of its latent grid, within the job limits.
    fn check_size(&self, r: &RenderRequest) -> Result<(), RenderError> {
        let m = self.arch.size_multiple;
        if !r.width.is_multiple_of(m) || !r.height.is_multiple_of(m) {
            return Err(RenderError::Abort(format!(
                "model `{}` renders sizes that are multiples of {m}; {}x{} is not",
                self.model, r.width, r.height
            )));
        }
        Ok(())
    }
}

/// What one device call makes of a batch: its images, or why it failed.
pub type BatchOutcome = Result<Vec<RgbImage>, PipelineError>;

/// Renders `samples` with `render`, splitting the batch in halves while the device runs
/// out of memory, down to single jobs (then `Retry`). `limit` holds the smallest batch
/// size that ran out so far: later batches start below it instead of failing at full
/// size again, and after `PROBE_AFTER` calls that fit it is doubled. Generic over the
/// device call so the splitting is testable without a GPU.
pub fn render_splitting<F>(
    samples: &[Sample],
    limit: &mut MemoryLimit,
    render: &F,
) -> Vec<Result<RgbImage, RenderError>>
where
    F: Fn(&[Sample]) -> BatchOutcome,
{
    let halves = |limit: &mut MemoryLimit| {
        let (a, b) = samples.split_at(samples.len() / 2);
        let mut out = render_splitting(a, limit, render);
        out.extend(render_splitting(b, limit, render));
        out
    };
    if samples.len() > 1 && limit.too_big.is_some_and(|t| samples.len() >= t) {
        return halves(limit);
    }
    match render(samples) {
        Ok(images) => {
            limit.fit();
            images.into_iter().map(Ok).collect()
        }
        Err(PipelineError::OutOfMemory(e)) if samples.len() > 1 => {
            tracing::warn!(
                n = samples.len(),
                "out of device memory; splitting the batch, and later batches of this \
                 shape start smaller: {e}"
            );
            limit.ran_out(samples.len());
            crate::telemetry::metrics().oom_split();
            halves(limit)
        }
        Err(PipelineError::OutOfMemory(e)) => samples
            .iter()
            .map(|_| {
                Err(RenderError::Retry(format!(
                    "out of device memory for one image: {e}"
                )))
            })
            .collect(),
        Err(e) => samples
            .iter()
            .map(|_| Err(RenderError::Abort(e.to_string())))
            .collect(),
    }
}

#[async_trait]
impl Renderer for DiffusionRenderer {
    async fn prepare(&self) -> Result<(), RenderError> {
        self.pipeline().await.map(|_| ())
    }

    fn device(&self) -> Option<String> {
        Some(format!("{:?}", self.device.location()))
    }

    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        let Some(first) = batch.first() else {
            return Vec::new();
        };
        if let Err(e) = self.check_size(first) {
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        let pipeline = match self.pipeline().await {
            Ok(p) => p,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        let samples: Vec<Sample> = batch
            .iter()
            .map(|r| Sample {
                prompt: r.prompt.clone(),
                negative_prompt: r.negative_prompt.clone().unwrap_or_default(),
                seed: r.seed,
            })
            .collect();
        let settings = Settings {
            width: first.width,
            height: first.height,
            steps: first.steps.unwrap_or(self.arch.default_steps),
            guidance: first.guidance.unwrap_or(self.arch.default_guidance),
            sampler: first.sampler,
        };
        // Memory grows with the pixels and doubles under classifier-free guidance.
        let memory_shape = (settings.width, settings.height, settings.guidance > 1.0);
        let limits = self.limits.clone();
        let poison = self.panic_on.clone();
        let model = self.model.clone();
        // A panic in here (candle, a native library) reaches the worker, which renders
        // the batch again one job at a time so only the job that causes it fails.
        super::on_blocking_pool(move || {
            let mut limit = limits
                .lock()
                .unwrap()
                .get(&memory_shape)
                .copied()
                .unwrap_or_default();
            let images = render_splitting(&samples, &mut limit, &|s: &[Sample]| {
                poison.check(s.iter().map(|s| s.prompt.as_str()));
                let rendered = pipeline.render(s, &settings);
                let (images, t) = rendered.map_err(|e| {
                    e.context(&format!(
                        "model `{model}`, {}x{}, {} {} steps, batch of {}",
                        settings.width,
                        settings.height,
                        settings.steps,
                        settings.sampler.name(),
                        s.len()
                    ))
                })?;
                let m = crate::telemetry::metrics();
                m.diffusion_stage(&model, "text", t.text.as_secs_f64());
                m.diffusion_stage(&model, "unet", t.denoise.as_secs_f64());
                m.diffusion_stage(&model, "decode", t.decode.as_secs_f64());
                tracing::debug!(
                    model,
                    jobs = s.len(),
                    text_secs = t.text.as_secs_f64(),
                    unet_secs = t.denoise.as_secs_f64(),
                    decode_secs = t.decode.as_secs_f64(),
                    "device call"
                );
                Ok(images)
            });
            if limit.too_big.is_some() {
                limits.lock().unwrap().insert(memory_shape, limit);
            }
            images
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use image::Rgb;

    use super::*;

    fn samples(n: u64) -> Vec<Sample> {
        (0..n)
            .map(|seed| Sample {
                prompt: format!("prompt {seed}"),
                negative_prompt: String::new(),
                seed,
            })
            .collect()
    }

    /// A device that fits `fits` images per call: it records each call's size and
    /// paints each image with its sample's seed, so order can be checked.
    fn device_fitting(
        fits: usize,
        calls: &Mutex<Vec<usize>>,
    ) -> impl Fn(&[Sample]) -> BatchOutcome {
        move |batch| {
            calls.lock().unwrap().push(batch.len());
            if batch.len() > fits {
                return Err(PipelineError::OutOfMemory(
                    "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
                ));
            }
            Ok(batch
                .iter()
                .map(|s| RgbImage::from_pixel(1, 1, Rgb([s.seed as u8, 0, 0])))
                .collect())
        }
    }

    /// A limit learned earlier: batches of `too_big` ran out of memory.
    fn learned(too_big: usize) -> MemoryLimit {
        MemoryLimit {
            too_big: Some(too_big),
            fitted: 0,
        }
    }

    fn seeds(out: &[Result<RgbImage, RenderError>]) -> Vec<u8> {
        out.iter()
            .map(|r| r.as_ref().expect("rendered").get_pixel(0, 0).0[0])
            .collect()
    }

    #[test]
    fn a_batch_that_does_not_fit_is_split_until_it_does_and_keeps_its_order() {
        let calls = Mutex::new(Vec::new());
        let mut limit = MemoryLimit::default();
        let out = render_splitting(&samples(8), &mut limit, &device_fitting(2, &calls));
        assert_eq!(seeds(&out), (0..8).collect::<Vec<u8>>());
        // The second half starts at 2: the first half taught it that 4 does not fit.
        assert_eq!(*calls.lock().unwrap(), vec![8, 4, 2, 2, 2, 2]);
        assert_eq!(limit.too_big, Some(4), "the smallest size that failed");
    }

    #[test]
    fn later_batches_start_below_the_size_that_ran_out_of_memory() {
        let calls = Mutex::new(Vec::new());
        let mut limit = learned(4);
        let out = render_splitting(&samples(8), &mut limit, &device_fitting(3, &calls));
        assert_eq!(seeds(&out), (0..8).collect::<Vec<u8>>());
        assert_eq!(*calls.lock().unwrap(), vec![2, 2, 2, 2], "no call runs out");
        assert_eq!(limit.too_big, Some(4));
        // A batch below the limit goes in one call.
        calls.lock().unwrap().clear();
        let out = render_splitting(&samples(3), &mut limit, &device_fitting(3, &calls));
        assert_eq!(seeds(&out), vec![0, 1, 2]);
        assert_eq!(*calls.lock().unwrap(), vec![3]);
    }

    #[test]
    fn one_image_that_does_not_fit_is_retried_later_not_failed() {
        let calls = Mutex::new(Vec::new());
        let mut limit = MemoryLimit::default();
        let out = render_splitting(&samples(2), &mut limit, &device_fitting(0, &calls));
        assert_eq!(out.len(), 2);
        for r in &out {
            match r {
                Err(RenderError::Retry(e)) => assert!(e.contains("out of device memory"), "{e}"),
                other => panic!("expected Retry, got {other:?}"),
            }
        }
        assert_eq!(*calls.lock().unwrap(), vec![2, 1, 1]);
    }

    #[test]
    fn other_device_errors_fail_the_whole_batch_without_splitting() {
        let calls = Mutex::new(Vec::new());
        let render = |batch: &[Sample]| {
            calls.lock().unwrap().push(batch.len());
            Err(PipelineError::Device("unsupported dtype".into()))
        };
        let mut limit = MemoryLimit::default();
        let out = render_splitting(&samples(3), &mut limit, &render);
        assert_eq!(*calls.lock().unwrap(), vec![3]);
        assert!(
            out.iter()
                .all(|r| matches!(r, Err(RenderError::Abort(e)) if e == "unsupported dtype"))
        );
        assert_eq!(limit, MemoryLimit::default());
    }

    #[test]
    fn a_learned_limit_is_probed_again_after_calls_that_fit() {
        let calls = Mutex::new(Vec::new());
        let mut limit = learned(4);
        // The shortage lasts: 16 batches of 8 make 64 calls of 2 that fit, then the
        // limit is doubled and the next batch tries 4 once, which fails.
        for _ in 0..16 {
            render_splitting(&samples(8), &mut limit, &device_fitting(3, &calls));
        }
        assert_eq!(calls.lock().unwrap().len(), PROBE_AFTER as usize);
        assert_eq!(limit.too_big, Some(8));
        calls.lock().unwrap().clear();
        let out = render_splitting(&samples(8), &mut limit, &device_fitting(3, &calls));
        assert_eq!(seeds(&out), (0..8).collect::<Vec<u8>>());
        assert_eq!(*calls.lock().unwrap(), vec![4, 2, 2, 2, 2]);
        assert_eq!(limit.too_big, Some(4));
        // The shortage passed: two rounds of probing bring batches back to full size.
        for _ in 0..64 {
            render_splitting(&samples(8), &mut limit, &device_fitting(8, &calls));
        }
        calls.lock().unwrap().clear();
        render_splitting(&samples(8), &mut limit, &device_fitting(8, &calls));
        assert_eq!(*calls.lock().unwrap(), vec![8]);
    }
}
