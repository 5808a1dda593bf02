//! The diffusion renderer: Stable Diffusion models (`sd-1.5`, `sd-2.1`, `sd-turbo`,
//! `sdxl`, `sdxl-turbo`) on candle, on CPU, CUDA or Metal.
//!
//! The worker hands over jobs that share (model, size, steps, guidance); they render
//! together, one UNet call per step, each with its own prompt, negative prompt and
//! seed. Weights load on the first job (a missing or corrupt file fails the job with
//! an Abort naming the file). A batch that runs out of device memory is split in two
//! and each half tried again, down to single jobs.

pub mod arch;
pub mod pipeline;
pub mod tiny;
pub mod weights;

use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device};
use image::RgbImage;

pub use self::{
    arch::{Architecture, PRESETS},
    pipeline::{Pipeline, PipelineError, Sample, Timings},
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

pub struct DiffusionRenderer {
    model: String,
    arch: Architecture,
    source: WeightSource,
    device: Device,
    dtype: DType,
    loaded: tokio::sync::Mutex<Option<Arc<Pipeline>>>,
}

impl DiffusionRenderer {
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
        }
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
            WeightSource::Hub => weights::hub(&self.model, &self.arch).await?,
        };
        let (arch, device, dtype, model) = (
            self.arch.clone(),
            self.device.clone(),
            self.dtype,
            self.model.clone(),
        );
        tracing::info!(model, ?files, "loading weights");
        let pipeline = tokio::task::spawn_blocking(move || {
            Pipeline::load(arch, &files, device, dtype)
                .map_err(|e| RenderError::Abort(format!("model `{model}`: {e}")))
        })
        .await
        .map_err(|e| RenderError::Abort(format!("loading weights panicked: {e}")))??;
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

/// Renders, splitting the batch in halves while the device runs out of memory.
pub fn render_splitting(
    pipeline: &Pipeline,
    samples: &[Sample],
    (width, height, steps, guidance): (u32, u32, u32, f64),
) -> Vec<Result<RgbImage, RenderError>> {
    match pipeline.render(samples, width, height, steps, guidance) {
        Ok((images, _)) => images.into_iter().map(Ok).collect(),
        Err(PipelineError::OutOfMemory(e)) if samples.len() > 1 => {
            tracing::warn!(
                n = samples.len(),
                "out of device memory; splitting the batch: {e}"
            );
            let (a, b) = samples.split_at(samples.len() / 2);
            let mut out = render_splitting(pipeline, a, (width, height, steps, guidance));
            out.extend(render_splitting(
                pipeline,
                b,
                (width, height, steps, guidance),
            ));
            out
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
        let shape = (
            first.width,
            first.height,
            first.steps.unwrap_or(self.arch.default_steps),
            first.guidance.unwrap_or(self.arch.default_guidance),
        );
        let n = batch.len();
        tokio::task::spawn_blocking(move || render_splitting(&pipeline, &samples, shape))
            .await
            .unwrap_or_else(|e| {
                (0..n)
                    .map(|_| Err(RenderError::Abort(format!("rendering panicked: {e}"))))
                    .collect()
            })
    }
}
