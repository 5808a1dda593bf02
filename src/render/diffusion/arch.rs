//! What a diffusion model is made of: the UNet, VAE, text encoder(s) and scheduler
//! configurations, and the defaults a job falls back on. The five Stable Diffusion
//! models take candle's published configurations; tests and the benchmark build tiny
//! ones (`tiny.rs`) that load through the same code.

use candle_transformers::models::{
    clip::text_model::ClipTextConfig,
    stable_diffusion::{
        StableDiffusionConfig,
        clip::Config as SdClipConfig,
        unet_2d::{BlockConfig, UNet2DConditionModelConfig},
        vae::AutoEncoderKLConfig,
    },
};

use super::sampling::{NoiseSchedule, Prediction, Spacing};

/// A text encoder's shape. Stable Diffusion's published encoders use candle's SD
/// CLIP; the generic CLIP config is the one whose sizes a test can choose.
#[derive(Clone, Debug)]
pub enum TextArch {
    /// Stable Diffusion's CLIP text encoder (1.x, 2.x, the first of SDXL).
    Sd(SdClipConfig),
    /// OpenCLIP's text encoder with projection (the second of SDXL).
    Clip(ClipTextConfig),
}

impl TextArch {
    /// Most tokens of a prompt the text encoder reads.
    pub fn max_tokens(&self) -> usize {
        match self {
            TextArch::Sd(c) => c.max_position_embeddings,
            TextArch::Clip(c) => c.max_position_embeddings,
        }
    }

    /// The token prompts are padded with (`None`: the end-of-text token).
    pub fn pad_with(&self) -> Option<&str> {
        match self {
            TextArch::Sd(c) => c.pad_with.as_deref(),
            TextArch::Clip(c) => c.pad_with.as_deref(),
        }
    }
}

/// One text encoder: its shape and where its files live in the diffusers layout.
#[derive(Clone, Debug)]
pub struct TextEncoderArch {
    /// Its shape.
    pub arch: TextArch,
    /// `text_encoder` or `text_encoder_2`.
    pub dir: &'static str,
    /// `tokenizer` or `tokenizer_2`.
    pub tokenizer_dir: &'static str,
    /// Where the hub keeps a `tokenizer.json` for it (diffusers repos ship only the
    /// vocabulary and merges).
    pub tokenizer_repo: &'static str,
}

/// The shape of a Stable Diffusion model: its UNet, VAE, text encoders and schedule.
#[derive(Clone, Debug)]
pub struct Architecture {
    /// The UNet's shape.
    pub unet: UNet2DConditionModelConfig,
    /// The VAE's shape.
    pub vae: AutoEncoderKLConfig,
    /// Latents are divided by this before decoding.
    pub vae_scale: f64,
    /// One or two (SDXL); their outputs are concatenated.
    pub text: Vec<TextEncoderArch>,
    /// The noise schedule it was trained with; every sampler runs over it.
    pub schedule: NoiseSchedule,
    /// Steps of a job that sets none.
    pub default_steps: u32,
    /// Guidance of a job that sets none.
    pub default_guidance: f64,
    /// Width and height must be multiples of this.
    pub size_multiple: u32,
    /// The hub repository the weights come from (`--hub`).
    pub repo: &'static str,
}

impl Architecture {
    /// How much smaller the latents are than the image.
    pub fn latent_factor(&self) -> usize {
        1 << (self.vae.block_out_channels.len().saturating_sub(1))
    }

    /// The published models renderq knows by name (attention unsliced: the worker's
    /// `--attention-slice` sets that for every model, whatever its source).
    pub fn preset(model: &str) -> Option<Self> {
        let sd = |repo, steps, guidance, cfg: StableDiffusionConfig, spacing, scale| {
            let prediction = match model {
                "sd-2.1" => Prediction::V,
                _ => Prediction::Epsilon,
            };
            let mut first = cfg.clip.clone();
            if cfg.clip2.is_some() {
                // SDXL's first tokenizer pads with its end token, as its
                // tokenizer_config.json says (candle's preset pads with `!`).
                first.pad_with = None;
            }
            let mut text = vec![TextEncoderArch {
                arch: TextArch::Sd(first),
                dir: "text_encoder",
                tokenizer_dir: "tokenizer",
                tokenizer_repo: "openai/clip-vit-large-patch14",
            }];
            if let Some(clip2) = &cfg.clip2 {
                text.push(TextEncoderArch {
                    arch: TextArch::Sd(clip2.clone()),
                    dir: "text_encoder_2",
                    tokenizer_dir: "tokenizer_2",
                    tokenizer_repo: "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
                });
            }
            Architecture {
                unet: unet(model),
                vae: AutoEncoderKLConfig {
                    block_out_channels: vec![128, 256, 512, 512],
                    layers_per_block: 2,
                    latent_channels: 4,
                    norm_num_groups: 32,
                    use_quant_conv: true,
                    use_post_quant_conv: true,
                },
                vae_scale: scale,
                text,
                schedule: NoiseSchedule {
                    prediction,
                    spacing,
                    ..Default::default()
                },
                default_steps: steps,
                default_guidance: guidance,
                size_multiple: 8,
                repo,
            }
        };
        let leading = Spacing::Leading;
        let trailing = Spacing::Trailing;
        Some(match model {
            "sd-1.5" => sd(
                "stable-diffusion-v1-5/stable-diffusion-v1-5",
                30,
                7.5,
                StableDiffusionConfig::v1_5(None, None, None),
                leading,
                0.18215,
            ),
            "sd-2.1" => sd(
                "stabilityai/stable-diffusion-2-1",
                30,
                7.5,
                StableDiffusionConfig::v2_1(None, None, None),
                leading,
                0.18215,
            ),
            "sd-turbo" => sd(
                "stabilityai/sd-turbo",
                1,
                0.0,
                StableDiffusionConfig::v2_1(None, None, None),
                trailing,
                0.18215,
            ),
            "sdxl" => sd(
                "stabilityai/stable-diffusion-xl-base-1.0",
                30,
                7.5,
                StableDiffusionConfig::sdxl(None, None, None),
                leading,
                0.13025,
            ),
            "sdxl-turbo" => sd(
                "stabilityai/sdxl-turbo",
                1,
                0.0,
                StableDiffusionConfig::sdxl_turbo(None, None, None),
                trailing,
                0.13025,
            ),
            _ => return None,
        })
    }
}

/// The UNet of a published model, from its `unet/config.json` (candle keeps its own
/// copy private).
fn unet(model: &str) -> UNet2DConditionModelConfig {
    let bc = |out_channels, use_cross_attn, attention_head_dim| BlockConfig {
        out_channels,
        use_cross_attn,
        attention_head_dim,
    };
    let (blocks, cross_attention_dim, use_linear_projection) = match model {
        "sd-1.5" => (
            vec![
                bc(320, Some(1), 8),
                bc(640, Some(1), 8),
                bc(1280, Some(1), 8),
                bc(1280, None, 8),
            ],
            768,
            false,
        ),
        "sd-2.1" | "sd-turbo" => (
            vec![
                bc(320, Some(1), 5),
                bc(640, Some(1), 10),
                bc(1280, Some(1), 20),
                bc(1280, None, 20),
            ],
            1024,
            true,
        ),
        _ => (
            vec![
                bc(320, None, 5),
                bc(640, Some(2), 10),
                bc(1280, Some(10), 20),
            ],
            2048,
            true,
        ),
    };
    UNet2DConditionModelConfig {
        sliced_attention_size: None,
        ..stable_diffusion_unet(blocks, 2, cross_attention_dim, use_linear_projection)
    }
}

/// A UNet with Stable Diffusion's fixed settings (timestep embedding, padding, norm
/// groups of 32) and the given blocks.
pub fn stable_diffusion_unet(
    blocks: Vec<BlockConfig>,
    layers_per_block: usize,
    cross_attention_dim: usize,
    use_linear_projection: bool,
) -> UNet2DConditionModelConfig {
    UNet2DConditionModelConfig {
        blocks,
        center_input_sample: false,
        cross_attention_dim,
        downsample_padding: 1,
        flip_sin_to_cos: true,
        freq_shift: 0.,
        layers_per_block,
        mid_block_scale_factor: 1.,
        norm_num_groups: 32,
        norm_eps: 1e-5,
        sliced_attention_size: None,
        use_linear_projection,
    }
}

/// The models `Architecture::preset` knows.
pub const PRESETS: [&str; 5] = ["sd-1.5", "sd-2.1", "sd-turbo", "sdxl", "sdxl-turbo"];
