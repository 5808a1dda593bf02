//! A model's architecture from its own files, as diffusers and transformers write
//! them: `model_index.json`, `unet/config.json`, `vae/config.json`,
//! `text_encoder*/config.json`, `scheduler/scheduler_config.json` and the tokenizers'
//! `tokenizer_config.json`. Any SD 1.x, 2.x, SDXL or Turbo fine-tune loads without a
//! preset; a config renderq cannot serve is refused at start, naming the file and
//! the field.

use std::path::{Path, PathBuf};

use candle_transformers::models::{
    clip::text_model::{Activation, ClipTextConfig},
    stable_diffusion::{
        clip::Config as SdClipConfig,
        unet_2d::{BlockConfig, UNet2DConditionModelConfig},
        vae::AutoEncoderKLConfig,
    },
};
use serde_json::Value;

use super::{
    arch::{Architecture, TextArch, TextEncoderArch},
    sampling::{BetaSchedule, NoiseSchedule, Prediction, Spacing},
};

/// A config renderq cannot read or serve: the file, the field, why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: field `{field}`: {reason}", file.display())]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// The field at fault (`file` for the file as a whole).
    pub field: String,
    /// Why.
    pub reason: String,
}

/// One parsed config file, whose every error names it.
struct Json {
    file: PathBuf,
    value: Value,
}

impl Json {
    fn read(file: PathBuf) -> Result<Self, ConfigError> {
        let fail = |reason: String| ConfigError {
            file: file.clone(),
            field: "file".into(),
            reason,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| fail(e.to_string()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
        if !value.is_object() {
            return Err(fail("not a JSON object".into()));
        }
        Ok(Json { file, value })
    }

    fn refuse(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field, absent when missing or null.
    fn get(&self, field: &str) -> Option<&Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    fn usize_or(&self, field: &str, default: usize) -> Result<usize, ConfigError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.refuse(field, format!("expected a whole number, got {v}"))),
        }
    }

    fn usize(&self, field: &str) -> Result<usize, ConfigError> {
        self.get(field)
            .ok_or_else(|| self.refuse(field, "missing"))?;
        self.usize_or(field, 0)
    }

    fn f64_or(&self, field: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.refuse(field, format!("expected a number, got {v}"))),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.refuse(field, format!("expected true or false, got {v}"))),
        }
    }

    fn str_or<'a>(&'a self, field: &str, default: &'a str) -> Result<&'a str, ConfigError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.refuse(field, format!("expected a string, got {v}"))),
        }
    }

    fn strings(&self, field: &str) -> Result<Vec<String>, ConfigError> {
        let v = self
            .get(field)
            .ok_or_else(|| self.refuse(field, "missing"))?;
        v.as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(String::from)).collect())
            .ok_or_else(|| self.refuse(field, format!("expected a list of names, got {v}")))
    }

    /// A number for every block: a list of `n`, or one number for all.
    fn per_block(&self, field: &str, n: usize, default: usize) -> Result<Vec<usize>, ConfigError> {
        match self.get(field) {
            None => Ok(vec![default; n]),
            Some(Value::Array(items)) => {
                let list: Option<Vec<usize>> = items
                    .iter()
                    .map(|v| v.as_u64().map(|x| x as usize))
                    .collect();
                match list {
                    Some(list) if list.len() == n => Ok(list),
                    _ => Err(self.refuse(
                        field,
                        format!(
                            "expected {n} whole numbers, one per block, got {}",
                            self.value[field]
                        ),
                    )),
                }
            }
            Some(v) => v
                .as_u64()
                .map(|x| vec![x as usize; n])
                .ok_or_else(|| self.refuse(field, format!("expected a whole number, got {v}"))),
        }
    }

    /// A named option: the value of the name given (or of `default` when absent).
    fn choice<T: Copy>(
        &self,
        field: &str,
        default: &str,
        options: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let given = self.str_or(field, default)?;
        options
            .iter()
            .find(|(name, _)| *name == given)
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
                self.refuse(
                    field,
                    format!(
                        "`{given}` is not served: renderq serves {}",
                        names.join(", ")
                    ),
                )
            })
    }

    /// A field that must be absent, or one of `allowed`, for renderq to serve it.
    fn only(&self, field: &str, allowed: &[Value], what: &str) -> Result<(), ConfigError> {
        match self.get(field) {
            Some(v) if !allowed.contains(v) => {
                Err(self.refuse(field, format!("{v} is not served: renderq serves {what}")))
            }
            _ => Ok(()),
        }
    }
}

/// The models renderq serves, as diffusers names their pipelines.
const PIPELINES: [&str; 2] = ["StableDiffusionPipeline", "StableDiffusionXLPipeline"];

/// Whether `dir` holds a model described by its own configs.
pub fn has_configs(dir: &Path) -> bool {
    dir.join("model_index.json").is_file()
}

/// The architecture of the model under `dir`; `name` chooses the defaults a job
/// falls back on when it is one of the presets (else: Turbo-like few steps for
/// trailing timesteps, 30 steps and guidance 7.5 otherwise).
pub fn read(dir: &Path, name: &str) -> Result<Architecture, ConfigError> {
    let index = Json::read(dir.join("model_index.json"))?;
    let class = index.str_or("_class_name", "")?;
    if !PIPELINES.contains(&class) {
        return Err(index.refuse(
            "_class_name",
            format!(
                "`{class}` is not served: renderq serves {}",
                PIPELINES.join(", ")
            ),
        ));
    }
    let unet = unet(&Json::read(dir.join("unet/config.json"))?)?;
    let (vae, vae_scale) = vae(&Json::read(dir.join("vae/config.json"))?)?;
    let (mut text, mut width) = (Vec::new(), 0);
    for (dir_name, tokenizer_dir) in [
        ("text_encoder", "tokenizer"),
        ("text_encoder_2", "tokenizer_2"),
    ] {
        // model_index.json lists each component as [library, class], null when absent.
        let listed = index
            .get(dir_name)
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.iter().all(|x| !x.is_null()));
        if !listed {
            continue;
        }
        let pad = pad_token(&dir.join(tokenizer_dir))?;
        let config = Json::read(dir.join(dir_name).join("config.json"))?;
        let (arch, encoder_width) = text_encoder(&config, pad)?;
        width += encoder_width;
        text.push(TextEncoderArch {
            arch,
            dir: dir_name,
            tokenizer_dir,
            tokenizer_repo: "",
        });
    }
    if text.is_empty() {
        return Err(index.refuse("text_encoder", "missing: a model needs a text encoder"));
    }
    if width != unet.cross_attention_dim {
        return Err(ConfigError {
            file: dir.join("unet/config.json"),
            field: "cross_attention_dim".into(),
            reason: format!(
                "{} does not match the text encoders' width, {width}",
                unet.cross_attention_dim
            ),
        });
    }
    // diffusers' own defaults for what a scheduler config leaves out.
    let base = NoiseSchedule {
        steps_offset: 0,
        ..NoiseSchedule::default()
    };
    let schedule = schedule(
        &Json::read(dir.join("scheduler/scheduler_config.json"))?,
        &base,
    )?;
    let preset = Architecture::preset(name);
    let (default_steps, default_guidance) = match &preset {
        Some(p) => (p.default_steps, p.default_guidance),
        None => job_defaults(schedule.spacing),
    };
    let factor = 1u32 << vae.block_out_channels.len().saturating_sub(1);
    Ok(Architecture {
        unet,
        vae,
        vae_scale,
        text,
        schedule,
        default_steps,
        default_guidance,
        size_multiple: factor,
        repo: preset.map_or("", |p| p.repo),
    })
}

fn unet(c: &Json) -> Result<UNet2DConditionModelConfig, ConfigError> {
    c.only(
        "_class_name",
        &["UNet2DConditionModel".into()],
        "UNet2DConditionModel",
    )?;
    for (field, value) in [("in_channels", 4), ("out_channels", 4)] {
        let n = c.usize_or(field, 4)?;
        if n != value {
            return Err(c.refuse(
                field,
                format!("{n} is not served: renderq renders text to image, with {value} latent channels (not inpainting)"),
            ));
        }
    }
    // Features candle's UNet does not have: refused rather than loaded without them.
    c.only("class_embed_type", &[], "none")?;
    c.only("encoder_hid_dim", &[], "none")?;
    c.only(
        "time_cond_proj_dim",
        &[],
        "none (LCM-LoRA weights work; a distilled UNet with a guidance embedding does not)",
    )?;
    c.only(
        "addition_embed_type",
        &["text_time".into()],
        "none, or text_time (SDXL)",
    )?;
    c.only("attention_type", &["default".into()], "default")?;
    c.only("resnet_time_scale_shift", &["default".into()], "default")?;
    c.only("time_embedding_type", &["positional".into()], "positional")?;
    c.only("conv_in_kernel", &[3.into()], "3")?;
    c.only("conv_out_kernel", &[3.into()], "3")?;
    c.only(
        "mid_block_type",
        &["UNetMidBlock2DCrossAttn".into()],
        "UNetMidBlock2DCrossAttn",
    )?;
    c.only("only_cross_attention", &[false.into()], "false")?;
    c.only("dual_cross_attention", &[false.into()], "false")?;
    c.only("mid_block_only_cross_attention", &[false.into()], "false")?;
    c.only("act_fn", &["silu".into()], "silu")?;
    c.only("num_class_embeds", &[], "none")?;
    c.only("class_embeddings_concat", &[false.into()], "false")?;
    c.only("reverse_transformer_layers_per_block", &[], "none")?;
    c.only("cross_attention_norm", &[], "none")?;
    c.only("time_embedding_act_fn", &[], "none")?;
    c.only("timestep_post_act", &[], "none")?;
    c.only("time_embedding_dim", &[], "none")?;
    c.only("resnet_skip_time_act", &[false.into()], "false")?;
    c.only("resnet_out_scale_factor", &[1.into(), 1.0.into()], "1")?;
    let channels: Vec<usize> = match c.get("block_out_channels") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_u64().map(|x| x as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| c.refuse("block_out_channels", "expected whole numbers"))?,
        _ => return Err(c.refuse("block_out_channels", "missing")),
    };
    let n = channels.len();
    let down = c.strings("down_block_types")?;
    if down.len() != n {
        return Err(c.refuse(
            "down_block_types",
            format!("{} blocks, but block_out_channels has {n}", down.len()),
        ));
    }
    let cross: Vec<bool> = down
        .iter()
        .map(|b| match b.as_str() {
            "CrossAttnDownBlock2D" => Ok(true),
            "DownBlock2D" => Ok(false),
            other => Err(c.refuse(
                "down_block_types",
                format!(
                    "`{other}` is not served: renderq serves CrossAttnDownBlock2D and DownBlock2D"
                ),
            )),
        })
        .collect::<Result<_, _>>()?;
    // candle mirrors the down blocks on the way up.
    let up = c.strings("up_block_types")?;
    let mirrored: Vec<&str> = cross
        .iter()
        .rev()
        .map(|&x| if x { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    if up != mirrored {
        return Err(c.refuse(
            "up_block_types",
            format!("expected {mirrored:?}, the down blocks mirrored; got {up:?}"),
        ));
    }
    // diffusers' `attention_head_dim` has long meant the number of heads;
    // `num_attention_heads`, where set, says so plainly.
    let heads_field = if c.get("num_attention_heads").is_some() {
        "num_attention_heads"
    } else {
        "attention_head_dim"
    };
    let heads = c.per_block(heads_field, n, 8)?;
    let layers = c.per_block("transformer_layers_per_block", n, 1)?;
    if c.get("cross_attention_dim").is_some_and(|v| v.is_array()) {
        return Err(c.refuse("cross_attention_dim", "one width per block is not served"));
    }
    if c.get("layers_per_block").is_some_and(|v| v.is_array()) {
        return Err(c.refuse("layers_per_block", "one count per block is not served"));
    }
    let groups = c.usize_or("norm_num_groups", 32)?;
    if let Some(&odd) = channels.iter().find(|&&ch| groups == 0 || ch % groups != 0) {
        return Err(c.refuse(
            "norm_num_groups",
            format!("{groups} does not divide a block's {odd} channels"),
        ));
    }
    let blocks = (0..n)
        .map(|i| BlockConfig {
            out_channels: channels[i],
            use_cross_attn: cross[i].then_some(layers[i]),
            attention_head_dim: heads[i],
        })
        .collect();
    Ok(UNet2DConditionModelConfig {
        blocks,
        center_input_sample: c.bool_or("center_input_sample", false)?,
        cross_attention_dim: c.usize("cross_attention_dim")?,
        downsample_padding: c.usize_or("downsample_padding", 1)?,
        flip_sin_to_cos: c.bool_or("flip_sin_to_cos", true)?,
        freq_shift: c.f64_or("freq_shift", 0.0)?,
        layers_per_block: c.usize_or("layers_per_block", 2)?,
        mid_block_scale_factor: c.f64_or("mid_block_scale_factor", 1.0)?,
        norm_num_groups: groups,
        norm_eps: c.f64_or("norm_eps", 1e-5)?,
        sliced_attention_size: None,
        use_linear_projection: c.bool_or("use_linear_projection", false)?,
    })
}

fn vae(c: &Json) -> Result<(AutoEncoderKLConfig, f64), ConfigError> {
    c.only("_class_name", &["AutoencoderKL".into()], "AutoencoderKL")?;
    c.only(
        "shift_factor",
        &[],
        "none (SD3 and Flux VAEs are not served)",
    )?;
    c.only("mid_block_add_attention", &[true.into()], "true")?;
    for (field, value) in [("in_channels", 3), ("out_channels", 3)] {
        let n = c.usize_or(field, 3)?;
        if n != value {
            return Err(c.refuse(
                field,
                format!("{n} is not served: images have {value} channels"),
            ));
        }
    }
    let channels: Vec<usize> = match c.get("block_out_channels") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_u64().map(|x| x as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| c.refuse("block_out_channels", "expected whole numbers"))?,
        _ => return Err(c.refuse("block_out_channels", "missing")),
    };
    for (field, block) in [
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ] {
        if let Some(other) = c.strings(field)?.into_iter().find(|b| b != block) {
            return Err(c.refuse(
                field,
                format!("`{other}` is not served: renderq serves {block}"),
            ));
        }
    }
    let latent_channels = c.usize_or("latent_channels", 4)?;
    if latent_channels != 4 {
        return Err(c.refuse(
            "latent_channels",
            format!("{latent_channels} is not served: Stable Diffusion's VAEs have 4"),
        ));
    }
    let config = AutoEncoderKLConfig {
        block_out_channels: channels,
        layers_per_block: c.usize_or("layers_per_block", 2)?,
        latent_channels,
        norm_num_groups: c.usize_or("norm_num_groups", 32)?,
        use_quant_conv: c.bool_or("use_quant_conv", true)?,
        use_post_quant_conv: c.bool_or("use_post_quant_conv", true)?,
    };
    Ok((config, c.f64_or("scaling_factor", 0.18215)?))
}

/// A text encoder's shape. Stable Diffusion's published encoders (CLIP ViT-L, OpenCLIP
/// ViT-H and bigG) run on candle's SD encoder, which knows GELU; other sizes run on
/// its generic CLIP encoder, which knows only quick GELU.
/// Returns the shape and the width of its embeddings.
fn text_encoder(c: &Json, pad_with: Option<String>) -> Result<(TextArch, usize), ConfigError> {
    let class = c
        .get("architectures")
        .and_then(|v| v.get(0))
        .and_then(|v| v.as_str())
        .unwrap_or("CLIPTextModel");
    if !["CLIPTextModel", "CLIPTextModelWithProjection"].contains(&class) {
        return Err(c.refuse(
            "architectures",
            format!("`{class}` is not served: renderq serves CLIPTextModel and CLIPTextModelWithProjection"),
        ));
    }
    let gelu = c.choice(
        "hidden_act",
        "quick_gelu",
        &[("quick_gelu", false), ("gelu", true)],
    )?;
    let shape = TextShape {
        vocab: c.usize("vocab_size")?,
        width: c.usize("hidden_size")?,
        layers: c.usize("num_hidden_layers")?,
        heads: c.usize("num_attention_heads")?,
        mlp: c.usize("intermediate_size")?,
        positions: c.usize("max_position_embeddings")?,
        gelu,
    };
    let projection = c.usize_or("projection_dim", shape.width)?;
    text_arch(shape, pad_with, projection).map_err(|reason| c.refuse("hidden_act", reason))
}

/// The text encoder of `shape`: candle's SD encoder for Stable Diffusion's own sizes,
/// its generic CLIP encoder (quick GELU only) for others. `Err`: why not served.
pub(super) fn text_arch(
    shape: TextShape,
    pad_with: Option<String>,
    projection_dim: usize,
) -> Result<(TextArch, usize), String> {
    if let Some((_, preset)) = SD_ENCODERS.iter().find(|(s, _)| *s == shape) {
        let mut config = preset();
        config.pad_with = pad_with;
        return Ok((TextArch::Sd(config), shape.width));
    }
    if shape.gelu {
        return Err(
            "gelu is served for Stable Diffusion's own text encoders only (OpenCLIP \
             ViT-H with 23 layers, ViT-bigG with 32); this one has other sizes"
                .into(),
        );
    }
    let config = ClipTextConfig {
        vocab_size: shape.vocab,
        embed_dim: shape.width,
        activation: Activation::QuickGelu,
        intermediate_size: shape.mlp,
        max_position_embeddings: shape.positions,
        pad_with,
        num_hidden_layers: shape.layers,
        num_attention_heads: shape.heads,
        projection_dim,
    };
    Ok((TextArch::Clip(config), shape.width))
}

/// The sizes that tell text encoders apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TextShape {
    pub vocab: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp: usize,
    pub positions: usize,
    /// GELU (OpenCLIP) rather than quick GELU (OpenAI's CLIP).
    pub gelu: bool,
}

const fn clip_shape(width: usize, layers: usize, heads: usize, gelu: bool) -> TextShape {
    TextShape {
        vocab: 49408,
        width,
        layers,
        heads,
        mlp: width * 4,
        positions: 77,
        gelu,
    }
}

/// Stable Diffusion's text encoders, whose configs candle keeps private.
const SD_ENCODERS: [(TextShape, fn() -> SdClipConfig); 3] = [
    (clip_shape(768, 12, 12, false), SdClipConfig::v1_5),
    (clip_shape(1024, 23, 16, true), SdClipConfig::v2_1),
    (clip_shape(1280, 32, 20, true), SdClipConfig::sdxl2),
];

/// The token prompts are padded with (`None`: the end-of-text token), from the
/// tokenizer's `tokenizer_config.json` or `special_tokens_map.json`.
fn pad_token(dir: &Path) -> Result<Option<String>, ConfigError> {
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let file = dir.join(name);
        if !file.is_file() {
            continue;
        }
        let c = Json::read(file)?;
        let pad = match c.get("pad_token") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => v.get("content").and_then(|s| s.as_str()).map(String::from),
            None => None,
        };
        if let Some(pad) = pad {
            return Ok((pad != "<|endoftext|>").then_some(pad));
        }
    }
    Ok(None)
}

/// Steps and guidance of a job that sets none, for a model that is no preset:
/// Turbo-like (one step, no guidance) for trailing timesteps, else 30 and 7.5.
pub(super) fn job_defaults(spacing: Spacing) -> (u32, f64) {
    match spacing {
        Spacing::Trailing => (1, 0.0),
        _ => (30, 7.5),
    }
}

/// The fields a checkpoint's sidecar may set: a scheduler config's, and a job's
/// default steps and guidance.
const SIDECAR_FIELDS: [&str; 11] = [
    "prediction_type",
    "timestep_spacing",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "num_train_timesteps",
    "steps_offset",
    "set_alpha_to_one",
    "default_steps",
    "default_guidance",
    "_comment",
];

/// What a single-file checkpoint's weights cannot say, from the JSON file beside it
/// (`<name>.json`): the schedule over `base`, and a job's default steps and guidance.
pub(super) fn sidecar(
    file: &Path,
    base: &NoiseSchedule,
) -> Result<(NoiseSchedule, Option<u32>, Option<f64>), ConfigError> {
    let c = Json::read(file.to_path_buf())?;
    if let Some(field) = c
        .value
        .as_object()
        .and_then(|o| o.keys().find(|k| !SIDECAR_FIELDS.contains(&k.as_str())))
    {
        return Err(c.refuse(
            field,
            format!(
                "not a setting renderq reads here ({})",
                SIDECAR_FIELDS[..10].join(", ")
            ),
        ));
    }
    let schedule = schedule(&c, base)?;
    let steps = match c.get("default_steps") {
        None => None,
        Some(_) => Some(
            u32::try_from(c.usize("default_steps")?)
                .ok()
                .filter(|s| (1..=crate::job::Limits::default().max_steps).contains(s))
                .ok_or_else(|| c.refuse("default_steps", "outside the steps a job may take"))?,
        ),
    };
    let guidance = match c.get("default_guidance") {
        None => None,
        Some(_) => Some(c.f64_or("default_guidance", 0.0)?),
    };
    Ok((schedule, steps, guidance))
}

fn schedule(c: &Json, d: &NoiseSchedule) -> Result<NoiseSchedule, ConfigError> {
    let name = |p: Prediction| match p {
        Prediction::Epsilon => "epsilon",
        Prediction::V => "v_prediction",
    };
    let beta_schedule = c.choice(
        "beta_schedule",
        "scaled_linear",
        &[
            ("scaled_linear", BetaSchedule::ScaledLinear),
            ("linear", BetaSchedule::Linear),
        ],
    )?;
    let prediction = c.choice(
        "prediction_type",
        name(d.prediction),
        &[
            ("epsilon", Prediction::Epsilon),
            ("v_prediction", Prediction::V),
        ],
    )?;
    let spacing = c.choice(
        "timestep_spacing",
        "leading",
        &[
            ("leading", Spacing::Leading),
            ("trailing", Spacing::Trailing),
            ("linspace", Spacing::Linspace),
        ],
    )?;
    if c.bool_or("rescale_betas_zero_snr", false)? {
        return Err(c.refuse("rescale_betas_zero_snr", "true is not served"));
    }
    if c.get("trained_betas").is_some() {
        return Err(c.refuse("trained_betas", "a table of betas is not served"));
    }
    let train_steps = c.usize_or("num_train_timesteps", d.train_steps)?;
    if !(2..=100_000).contains(&train_steps) {
        return Err(c.refuse(
            "num_train_timesteps",
            format!("{train_steps} is outside 2..=100000"),
        ));
    }
    let beta_start = c.f64_or("beta_start", d.beta_start)?;
    let beta_end = c.f64_or("beta_end", d.beta_end)?;
    if !(0.0 < beta_start && beta_start <= beta_end && beta_end < 1.0) {
        return Err(c.refuse(
            "beta_end",
            format!("betas from {beta_start} to {beta_end} are not 0 < start <= end < 1"),
        ));
    }
    Ok(NoiseSchedule {
        beta_start,
        beta_end,
        beta_schedule,
        train_steps,
        prediction,
        spacing,
        steps_offset: c.usize_or("steps_offset", d.steps_offset)?,
        set_alpha_to_one: c.bool_or("set_alpha_to_one", d.set_alpha_to_one)?,
    })
}
