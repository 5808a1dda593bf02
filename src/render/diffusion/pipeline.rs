//! The diffusion pipeline: text encoding, denoising and decoding for a batch of jobs
//! that share (model, size, steps, guidance), each with its own prompt, negative
//! prompt and seed, in one forward pass per step.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{
    clip::text_model::ClipTextTransformer,
    stable_diffusion::{
        clip::ClipTextTransformer as SdClipTextTransformer, unet_2d::UNet2DConditionModel,
        vae::AutoEncoderKL,
    },
};
use image::RgbImage;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use tokenizers::Tokenizer;

use super::{
    arch::{Architecture, TextArch},
    checkpoint::backend::Backend,
    sampling::{self, Noise, Sampler},
    tensors::FileTensors,
    weights::{ModelFiles, TokenizerFiles, Weights},
};

/// Why a batch failed, before it is mapped to Retry/Abort.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A weight or tokenizer file that cannot be used; names the file.
    #[error("{0}")]
    File(String),
    /// The device ran out of memory: try fewer images per call.
    #[error("{0}")]
    OutOfMemory(String),
    /// Any other device or shape error.
    #[error("{0}")]
    Device(String),
}

impl PipelineError {
    /// The same error, saying where it happened (`what`: the stage, the model).
    /// Out of memory stays out of memory, so the batch is still split.
    pub fn context(self, what: &str) -> Self {
        match self {
            PipelineError::File(m) => PipelineError::File(format!("{what}: {m}")),
            PipelineError::OutOfMemory(m) => PipelineError::OutOfMemory(format!("{what}: {m}")),
            PipelineError::Device(m) => PipelineError::Device(format!("{what}: {m}")),
        }
    }
}

impl From<candle_core::Error> for PipelineError {
    fn from(e: candle_core::Error) -> Self {
        let text = e.to_string();
        if is_out_of_memory(&text) {
            PipelineError::OutOfMemory(text)
        } else {
            PipelineError::Device(text)
        }
    }
}

/// Whether a device error means the batch did not fit, as CUDA (`DriverError(
/// CUDA_ERROR_OUT_OF_MEMORY, "out of memory")`), cuBLAS and cuDNN (`…_ALLOC_FAILED`)
/// and Metal (a buffer it could not create, or a command buffer that ran out of
/// memory) word it.
pub fn is_out_of_memory(error: &str) -> bool {
    let lower = error.to_lowercase();
    [
        "out of memory",
        "out_of_memory",
        "outofmemory",
        "alloc_failed",
        "insufficient memory",
        "failed to create metal resource: buffer",
    ]
    .iter()
    .any(|sign| lower.contains(sign))
}

enum TextModel {
    Sd(SdClipTextTransformer),
    Clip(ClipTextTransformer),
}

impl TextModel {
    fn forward(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            TextModel::Sd(m) => m.forward(tokens),
            TextModel::Clip(m) => m.forward_with_mask(tokens, usize::MAX),
        }
    }
}

struct TextEncoder {
    model: TextModel,
    tokenizer: Tokenizer,
    max_tokens: usize,
    pad_id: u32,
}

/// One job of a batch.
#[derive(Debug, Clone)]
pub struct Sample {
    /// What to draw.
    pub prompt: String,
    /// What to steer away from ("" for none).
    pub negative_prompt: String,
    /// The seed of its initial noise.
    pub seed: u64,
}

/// What every job of a batch shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Denoising steps.
    pub steps: u32,
    /// Classifier-free guidance scale (none at 1 or below).
    pub guidance: f64,
    /// How the latents are denoised.
    pub sampler: Sampler,
}

/// Each job's noise from its own seed: the starting latents, then whatever a sampler
/// adds at its steps, so a job's image depends on its seed alone, never on the device
/// (a device's generator cannot be seeded on CPU) or the other jobs of its batch.
struct JobNoise {
    generators: Vec<rand::rngs::StdRng>,
    shape: (usize, usize, usize),
    device: Device,
}

impl JobNoise {
    fn new(samples: &[Sample], shape: (usize, usize, usize), device: &Device) -> Self {
        JobNoise {
            generators: samples
                .iter()
                .map(|s| rand::rngs::StdRng::seed_from_u64(s.seed))
                .collect(),
            shape,
            device: device.clone(),
        }
    }
}

impl Noise for JobNoise {
    fn draw(&mut self) -> candle_core::Result<Tensor> {
        let (c, h, w) = self.shape;
        let mut values = Vec::with_capacity(self.generators.len() * c * h * w);
        for rng in &mut self.generators {
            values.extend((0..c * h * w).map(|_| -> f32 { StandardNormal.sample(rng) }));
        }
        Tensor::from_vec(values, (self.generators.len(), c, h, w), &Device::Cpu)?
            .to_device(&self.device)
    }
}

/// Time spent in each stage of one batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Time spent encoding prompts.
    pub text: Duration,
    /// Time spent in the UNet.
    pub denoise: Duration,
    /// Time spent decoding latents.
    pub decode: Duration,
    /// Distinct texts (prompts and negative prompts) put through the text encoders:
    /// a text that recurs in a batch (an empty negative prompt, most often) once.
    pub texts_encoded: usize,
}

/// A loaded model: tokenizers, text encoders, UNet and VAE on one device.
pub struct Pipeline {
    arch: Architecture,
    device: Device,
    dtype: DType,
    text: Vec<TextEncoder>,
    unet: UNet2DConditionModel,
    vae: AutoEncoderKL,
}

/// Reads safetensors files tensor by tensor (`tensors.rs`); a missing or corrupt one
/// is an error naming it. A single-file checkpoint's header is read once for all its
/// parts.
#[derive(Default)]
struct WeightReader {
    checkpoints: HashMap<std::path::PathBuf, Arc<FileTensors>>,
}

fn open(files: &[std::path::PathBuf]) -> Result<FileTensors, PipelineError> {
    for file in files {
        if !file.is_file() {
            return Err(PipelineError::File(format!(
                "cannot read {}: no such file",
                file.display()
            )));
        }
    }
    FileTensors::open(files).map_err(|e| {
        PipelineError::File(e.replace(
            ": not a safetensors file",
            " is not a valid safetensors file",
        ))
    })
}

impl WeightReader {
    fn var_builder(
        &mut self,
        files: &Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>, PipelineError> {
        if let (Some(part), [file]) = (&files.part, files.files.as_slice()) {
            let tensors = match self.checkpoints.get(file) {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(open(std::slice::from_ref(file))?);
                    self.checkpoints.insert(file.clone(), t.clone());
                    t
                }
            };
            let backend = Backend::new(tensors, part.clone());
            return Ok(VarBuilder::from_backend(
                Box::new(backend),
                dtype,
                device.clone(),
            ));
        }
        // One file, or the shards of an index: every tensor under its own name.
        let tensors = open(&files.files)?;
        Ok(VarBuilder::from_backend(
            Box::new(tensors),
            dtype,
            device.clone(),
        ))
    }
}

/// Tensors missing from a file, or of the wrong shape, mean the file is not this model's.
fn does_not_fit(files: &Weights) -> impl Fn(candle_core::Error) -> PipelineError + '_ {
    move |e| {
        PipelineError::File(format!(
            "{files} does not fit this model's architecture: {e}"
        ))
    }
}

/// transformers 5.x writes a text encoder's keys without the `text_model.` prefix
/// that hub checkpoints (and candle's encoders) have: read either layout.
fn text_model_keys(vb: VarBuilder<'static>) -> VarBuilder<'static> {
    const PREFIXED: &str = "text_model.embeddings.token_embedding.weight";
    if vb.contains_tensor(PREFIXED) || !vb.contains_tensor("embeddings.token_embedding.weight") {
        return vb;
    }
    vb.rename_f(|name| name.strip_prefix("text_model.").unwrap_or(name).to_string())
}

impl Pipeline {
    /// Loads every part of a model from `files`, naming the file of any error.
    pub fn load(
        arch: Architecture,
        files: &ModelFiles,
        device: Device,
        dtype: DType,
    ) -> Result<Self, PipelineError> {
        let mut reader = WeightReader::default();
        let mut text = Vec::new();
        for (enc, (weights_path, tokenizer_files)) in arch.text.iter().zip(&files.text) {
            let vb = text_model_keys(reader.var_builder(weights_path, dtype, &device)?);
            let model = match &enc.arch {
                TextArch::Sd(c) => SdClipTextTransformer::new(vb, c).map(TextModel::Sd),
                TextArch::Clip(c) => {
                    ClipTextTransformer::new(vb.pp("text_model"), c).map(TextModel::Clip)
                }
            }
            .map_err(does_not_fit(weights_path))?;
            let tokenizer = match tokenizer_files {
                TokenizerFiles::Dir(dir) => super::tokenizer::load(dir),
                TokenizerFiles::Clip => super::tokenizer::clip(),
            }
            .map_err(PipelineError::File)?;
            let pad = enc.arch.pad_with().unwrap_or("<|endoftext|>");
            let pad_id = tokenizer.token_to_id(pad).ok_or_else(|| {
                PipelineError::File(format!(
                    "{tokenizer_files} has no `{pad}` token to pad prompts with"
                ))
            })?;
            text.push(TextEncoder {
                model,
                tokenizer,
                max_tokens: enc.arch.max_tokens(),
                pad_id,
            });
        }
        let vb = reader.var_builder(&files.unet, dtype, &device)?;
        let unet = UNet2DConditionModel::new(vb, 4, 4, false, arch.unet.clone())
            .map_err(does_not_fit(&files.unet))?;
        let vb = reader.var_builder(&files.vae, dtype, &device)?;
        let vae =
            AutoEncoderKL::new(vb, 3, 3, arch.vae.clone()).map_err(does_not_fit(&files.vae))?;
        Ok(Pipeline {
            arch,
            device,
            dtype,
            text,
            unet,
            vae,
        })
    }

    /// The architecture this pipeline was loaded with.
    pub fn arch(&self) -> &Architecture {
        &self.arch
    }

    /// The embeddings of one prompt: every encoder's, concatenated (SDXL has two).
    /// Each prompt is encoded alone: candle's SD text encoder fails on batches.
    fn embed(&self, prompt: &str) -> Result<Tensor, PipelineError> {
        let mut parts = Vec::new();
        for enc in &self.text {
            // Longer prompts are cut before their end token, as diffusers does; shorter
            // ones padded.
            let ids =
                super::tokenizer::prompt_ids(&enc.tokenizer, prompt, enc.max_tokens, enc.pad_id)
                    .map_err(PipelineError::Device)?;
            let tokens = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
            parts.push(enc.model.forward(&tokens)?.to_dtype(self.dtype)?);
        }
        Ok(Tensor::cat(&parts, D::Minus1)?)
    }

    /// Renders `samples` together: one UNet call per step for the whole batch.
    pub fn render(
        &self,
        samples: &[Sample],
        settings: &Settings,
    ) -> Result<(Vec<RgbImage>, Timings), PipelineError> {
        let Settings {
            width,
            height,
            steps,
            guidance,
            sampler,
        } = *settings;
        let mut timings = Timings::default();
        let started = Instant::now();
        let guided = guidance > 1.0;
        let mut embedded: HashMap<String, Tensor> = HashMap::new();
        let mut encoded = 0;
        let mut embed = |text: &str| -> Result<Tensor, PipelineError> {
            if let Some(t) = embedded.get(text) {
                return Ok(t.clone()); // shares the storage: no copy
            }
            let t = self.embed(text)?;
            encoded += 1;
            embedded.insert(text.to_string(), t.clone());
            Ok(t)
        };
        let mut texts = || -> Result<Tensor, PipelineError> {
            let cond: Vec<Tensor> = samples
                .iter()
                .map(|s| embed(&s.prompt))
                .collect::<Result<_, _>>()?;
            let mut context = Tensor::cat(&cond, 0)?;
            if guided {
                let uncond: Vec<Tensor> = samples
                    .iter()
                    .map(|s| embed(&s.negative_prompt))
                    .collect::<Result<_, _>>()?;
                context = Tensor::cat(&[Tensor::cat(&uncond, 0)?, context], 0)?;
            }
            Ok(context)
        };
        let context = texts().map_err(|e| e.context("text encoder"))?;
        timings.texts_encoded = encoded;
        timings.text = started.elapsed();

        let started = Instant::now();
        let f = self.arch.latent_factor();
        let shape = (4, height as usize / f, width as usize / f);
        let mut run = sampling::sampling(sampler, &self.arch.schedule, steps as usize);
        let mut noise = JobNoise::new(samples, shape, &self.device);
        // Latents stay f32 between steps whatever the model's dtype.
        let mut latents = run.start(&noise.draw()?)?;
        let timesteps = run.timesteps().to_vec();
        let total = timesteps.len();
        for (i, t) in timesteps.into_iter().enumerate() {
            let mut step = || -> Result<Tensor, PipelineError> {
                let input = run.model_input(i, &latents)?.to_dtype(self.dtype)?;
                let input = if guided {
                    Tensor::cat(&[&input, &input], 0)?
                } else {
                    input
                };
                let predicted = self
                    .unet
                    .forward(&input, t, &context)?
                    .to_dtype(DType::F32)?;
                let predicted = if guided {
                    let halves = predicted.chunk(2, 0)?;
                    let (uncond, cond) = (&halves[0], &halves[1]);
                    (uncond + ((cond - uncond)? * guidance)?)?
                } else {
                    predicted
                };
                Ok(run.step(i, &latents, &predicted, &mut noise)?)
            };
            latents = step().map_err(|e| {
                e.context(&format!(
                    "UNet, {} step {} of {total}",
                    sampler.name(),
                    i + 1
                ))
            })?;
        }
        timings.denoise = started.elapsed();

        let started = Instant::now();
        let decode = || -> Result<Tensor, PipelineError> {
            let decoded = self
                .vae
                .decode(&(latents / self.arch.vae_scale)?.to_dtype(self.dtype)?)?;
            Ok(((decoded.to_dtype(DType::F32)? / 2.)? + 0.5)?
                .clamp(0f32, 1f32)?
                .affine(255., 0.)?
                .to_dtype(DType::U8)?
                .to_device(&Device::Cpu)?)
        };
        let pixels = decode().map_err(|e| e.context("VAE decoder"))?;
        let mut images = Vec::with_capacity(samples.len());
        for i in 0..samples.len() {
            // (3, h, w) -> (h, w, 3), the image crate's layout.
            let hwc = pixels.get(i)?.permute((1, 2, 0))?.flatten_all()?;
            let raw: Vec<u8> = hwc.to_vec1()?;
            let image = RgbImage::from_raw(width, height, raw).ok_or_else(|| {
                PipelineError::Device("the decoder made an image of the wrong size".into())
            })?;
            images.push(image);
        }
        timings.decode = started.elapsed();
        Ok((images, timings))
    }
}

#[cfg(test)]
mod tests {
    use super::is_out_of_memory;

    #[test]
    fn device_errors_that_mean_the_batch_did_not_fit_are_recognised() {
        for oom in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "CublasError(CUBLAS_STATUS_ALLOC_FAILED)",
            "CudnnError(CUDNN_STATUS_ALLOC_FAILED)",
            "Failed to create metal resource: Buffer",
            "Command buffer had following error: Insufficient Memory \
             (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
        ] {
            assert!(is_out_of_memory(oom), "{oom}");
        }
        for other in [
            "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access was encountered\")",
            "shape mismatch in matmul, lhs: [2, 77, 768], rhs: [512, 320]",
            "Failed to create metal resource: CommandQueue",
        ] {
            assert!(!is_out_of_memory(other), "{other}");
        }
    }
}
