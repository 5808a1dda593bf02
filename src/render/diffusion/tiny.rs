//! A tiny Stable Diffusion with random weights, for tests and the benchmark (no
//! weights can be downloaded where they run). It has every part of the real thing,
//! just small: a 2-block UNet with cross-attention, a 2-block VAE, a 2-layer CLIP text
//! encoder and a character-level tokenizer. `write` saves it in the diffusers layout,
//! so it loads through the same code as real weights. Random weights cost what real
//! ones do to compute, so at real sizes it also measures a device.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::{
    clip::text_model::{Activation, ClipTextConfig, ClipTextTransformer},
    stable_diffusion::{
        unet_2d::{BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig},
        vae::{AutoEncoderKL, AutoEncoderKLConfig},
    },
};
use serde_json::json;

use super::{
    arch::{Architecture, TextArch, TextEncoderArch},
    checkpoint::keys::{Component, Source},
    sampling::{BetaSchedule, Prediction, Spacing},
};

/// Characters the tiny tokenizer knows; anything else is `<unk>`.
const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789-.,'!?";

/// The tiny model's shape. `width` scales the channel counts (1: tests; larger for
/// benchmarks that want more arithmetic per pixel).
pub fn architecture(width: usize) -> Architecture {
    let c = 32 * width.max(1);
    let bc = |out_channels, use_cross_attn, attention_head_dim| BlockConfig {
        out_channels,
        use_cross_attn,
        attention_head_dim,
    };
    Architecture {
        unet: UNet2DConditionModelConfig {
            blocks: vec![bc(c, Some(1), 2), bc(2 * c, None, 2)],
            center_input_sample: false,
            cross_attention_dim: 32,
            downsample_padding: 1,
            flip_sin_to_cos: true,
            freq_shift: 0.,
            layers_per_block: 1,
            mid_block_scale_factor: 1.,
            norm_num_groups: 8,
            norm_eps: 1e-5,
            sliced_attention_size: None,
            use_linear_projection: false,
        },
        vae: AutoEncoderKLConfig {
            block_out_channels: vec![c, 2 * c],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 8,
            use_quant_conv: true,
            use_post_quant_conv: true,
        },
        vae_scale: 0.18215,
        text: vec![TextEncoderArch {
            arch: TextArch::Clip(ClipTextConfig {
                vocab_size: 3 + ALPHABET.len(),
                embed_dim: 32,
                activation: Activation::QuickGelu,
                intermediate_size: 64,
                max_position_embeddings: 16,
                pad_with: None,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                projection_dim: 32,
            }),
            dir: "text_encoder",
            tokenizer_dir: "tokenizer",
            tokenizer_repo: "",
        }],
        schedule: super::sampling::NoiseSchedule::default(),
        default_steps: 4,
        default_guidance: 7.5,
        // The VAE halves the size and the UNet halves it again.
        size_multiple: 4,
        repo: "",
    }
}

/// The size of CLIP's vocabulary: a tiny model of this size uses CLIP's tokenizer.
const CLIP_VOCAB: usize = 49408;

/// A tiny model shaped as a Stable Diffusion 1.x checkpoint reads: norm groups of 32,
/// 8 heads per attention, a CLIP text encoder with CLIP's vocabulary (its own
/// tokenizer; checkpoints ship none) and heads 64 wide.
pub fn checkpoint_architecture() -> Architecture {
    let mut arch = architecture(1);
    arch.unet.norm_num_groups = 32;
    arch.unet.cross_attention_dim = 64;
    for block in &mut arch.unet.blocks {
        block.attention_head_dim = 8;
    }
    arch.vae.norm_num_groups = 32;
    arch.text[0].arch = TextArch::Clip(ClipTextConfig {
        vocab_size: CLIP_VOCAB,
        embed_dim: 64,
        activation: Activation::QuickGelu,
        intermediate_size: 128,
        max_position_embeddings: 16,
        pad_with: None,
        num_hidden_layers: 2,
        num_attention_heads: 1,
        projection_dim: 64,
    });
    arch
}

/// Writes the model `write` saved under `diffusers` again as one checkpoint `file` in
/// the original Stability layout (SD 1.x's), as single-file tools save it: the same
/// tensors under their original names, the VAE's attention as 1×1 convolutions.
pub fn write_checkpoint(
    diffusers: &Path,
    arch: &Architecture,
    file: &Path,
) -> candle_core::Result<()> {
    let components = [
        (
            Component::unet_of(&arch.unet),
            "unet/diffusion_pytorch_model.safetensors",
        ),
        (
            Component::vae_of(&arch.vae),
            "vae/diffusion_pytorch_model.safetensors",
        ),
        (
            Component::Clip {
                prefix: "cond_stage_model.transformer.".into(),
                nested: true,
            },
            "text_encoder/model.safetensors",
        ),
    ];
    let mut out = std::collections::HashMap::new();
    for (component, path) in components {
        for (name, tensor) in candle_core::safetensors::load(diffusers.join(path), &Device::Cpu)? {
            let Some(Source::Tensor(key)) = component.source(&name) else {
                return Err(candle_core::Error::Msg(format!(
                    "{name}: no plain place in the original layout"
                )));
            };
            let tensor = if key.contains(".attn_1.") && tensor.rank() == 2 {
                tensor.unsqueeze(2)?.unsqueeze(3)?
            } else {
                tensor
            };
            out.insert(key, tensor);
        }
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    candle_core::safetensors::save(&out, file)
}

fn save(varmap: &VarMap, path: &Path) -> candle_core::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    varmap.save(path)
}

/// Writes random weights, the tokenizer and the configs under `dir` in the diffusers
/// layout.
pub fn write(dir: &Path, arch: &Architecture) -> candle_core::Result<()> {
    write_configs(dir, arch)?;
    let fresh = || {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        (map, vb)
    };
    let (map, vb) = fresh();
    UNet2DConditionModel::new(vb, 4, 4, false, arch.unet.clone())?;
    save(&map, &dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    let (map, vb) = fresh();
    AutoEncoderKL::new(vb, 3, 3, arch.vae.clone())?;
    save(&map, &dir.join("vae/diffusion_pytorch_model.safetensors"))?;
    for enc in &arch.text {
        let TextArch::Clip(cfg) = &enc.arch else {
            return Err(candle_core::Error::Msg(
                "the tiny model writes generic CLIP encoders only".into(),
            ));
        };
        let (map, vb) = fresh();
        ClipTextTransformer::new(vb.pp("text_model"), cfg)?;
        save(&map, &dir.join(enc.dir).join("model.safetensors"))?;
        let tokenizer = dir.join(enc.tokenizer_dir);
        std::fs::create_dir_all(&tokenizer)?;
        if cfg.vocab_size == CLIP_VOCAB {
            super::tokenizer::write_clip(&tokenizer)?;
        } else {
            std::fs::write(
                tokenizer.join("tokenizer.json"),
                tokenizer_json().to_string(),
            )?;
        }
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> candle_core::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(value).map_err(candle_core::Error::wrap)?;
    Ok(std::fs::write(path, text)?)
}

/// Writes the configs diffusers and transformers write beside the weights
/// (`model_index.json`, each component's `config.json`, the scheduler's and the
/// tokenizer's), with the fields renderq reads.
pub fn write_configs(dir: &Path, arch: &Architecture) -> candle_core::Result<()> {
    let u = &arch.unet;
    let kind = |cross: bool, up: bool| match (cross, up) {
        (true, false) => "CrossAttnDownBlock2D",
        (false, false) => "DownBlock2D",
        (true, true) => "CrossAttnUpBlock2D",
        (false, true) => "UpBlock2D",
    };
    let down: Vec<&str> = u
        .blocks
        .iter()
        .map(|b| kind(b.use_cross_attn.is_some(), false))
        .collect();
    let up: Vec<&str> = u
        .blocks
        .iter()
        .rev()
        .map(|b| kind(b.use_cross_attn.is_some(), true))
        .collect();
    write_json(
        &dir.join("unet/config.json"),
        &json!({
            "_class_name": "UNet2DConditionModel",
            "act_fn": "silu",
            "attention_head_dim": u.blocks.iter().map(|b| b.attention_head_dim).collect::<Vec<_>>(),
            "block_out_channels": u.blocks.iter().map(|b| b.out_channels).collect::<Vec<_>>(),
            "center_input_sample": u.center_input_sample,
            "cross_attention_dim": u.cross_attention_dim,
            "down_block_types": down,
            "downsample_padding": u.downsample_padding,
            "flip_sin_to_cos": u.flip_sin_to_cos,
            "freq_shift": u.freq_shift,
            "in_channels": 4,
            "layers_per_block": u.layers_per_block,
            "mid_block_scale_factor": u.mid_block_scale_factor,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "norm_eps": u.norm_eps,
            "norm_num_groups": u.norm_num_groups,
            "out_channels": 4,
            "transformer_layers_per_block":
                u.blocks.iter().map(|b| b.use_cross_attn.unwrap_or(1)).collect::<Vec<_>>(),
            "up_block_types": up,
            "use_linear_projection": u.use_linear_projection,
        }),
    )?;
    let v = &arch.vae;
    let n = v.block_out_channels.len();
    write_json(
        &dir.join("vae/config.json"),
        &json!({
            "_class_name": "AutoencoderKL",
            "block_out_channels": v.block_out_channels,
            "down_block_types": vec!["DownEncoderBlock2D"; n],
            "in_channels": 3,
            "latent_channels": v.latent_channels,
            "layers_per_block": v.layers_per_block,
            "norm_num_groups": v.norm_num_groups,
            "out_channels": 3,
            "scaling_factor": arch.vae_scale,
            "up_block_types": vec!["UpDecoderBlock2D"; n],
            "use_post_quant_conv": v.use_post_quant_conv,
            "use_quant_conv": v.use_quant_conv,
        }),
    )?;
    let mut index = json!({
        "_class_name": if arch.text.len() > 1 { "StableDiffusionXLPipeline" } else { "StableDiffusionPipeline" },
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    for enc in &arch.text {
        let TextArch::Clip(c) = &enc.arch else {
            return Err(candle_core::Error::Msg(
                "the tiny model writes generic CLIP encoders only".into(),
            ));
        };
        index[enc.dir] = json!(["transformers", "CLIPTextModel"]);
        index[enc.tokenizer_dir] = json!(["transformers", "CLIPTokenizer"]);
        write_json(
            &dir.join(enc.dir).join("config.json"),
            &json!({
                "architectures": ["CLIPTextModel"],
                "hidden_act": "quick_gelu",
                "hidden_size": c.embed_dim,
                "intermediate_size": c.intermediate_size,
                "max_position_embeddings": c.max_position_embeddings,
                "num_attention_heads": c.num_attention_heads,
                "num_hidden_layers": c.num_hidden_layers,
                "projection_dim": c.projection_dim,
                "vocab_size": c.vocab_size,
            }),
        )?;
        write_json(
            &dir.join(enc.tokenizer_dir).join("tokenizer_config.json"),
            &json!({
                "model_max_length": c.max_position_embeddings,
                "pad_token": c.pad_with.as_deref().unwrap_or("<|endoftext|>"),
                "tokenizer_class": "CLIPTokenizer",
            }),
        )?;
    }
    write_json(&dir.join("model_index.json"), &index)?;
    let s = &arch.schedule;
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &json!({
            "_class_name": "DDIMScheduler",
            "beta_end": s.beta_end,
            "beta_schedule": match s.beta_schedule {
                BetaSchedule::ScaledLinear => "scaled_linear",
                BetaSchedule::Linear => "linear",
            },
            "beta_start": s.beta_start,
            "num_train_timesteps": s.train_steps,
            "prediction_type": match s.prediction {
                Prediction::Epsilon => "epsilon",
                Prediction::V => "v_prediction",
            },
            "set_alpha_to_one": s.set_alpha_to_one,
            "steps_offset": s.steps_offset,
            "timestep_spacing": match s.spacing {
                Spacing::Leading => "leading",
                Spacing::Trailing => "trailing",
                Spacing::Linspace => "linspace",
            },
        }),
    )
}

/// A character-level tokenizer in the `tokenizer.json` format: lower-cased, split on
/// whitespace, each character a token, wrapped in start and end tokens as CLIP's is.
fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<|startoftext|>", "<|endoftext|>", "<unk>"]
        .iter()
        .enumerate()
    {
        vocab.insert(t.to_string(), json!(i));
    }
    for (i, c) in ALPHABET.chars().enumerate() {
        vocab.insert(c.to_string(), json!(3 + i));
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let token = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = |s: &str| json!({"Sequence": {"id": s, "type_id": 0}});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<|startoftext|>"), special(1, "<|endoftext|>")],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [token("<|startoftext|>"), seq("A"), token("<|endoftext|>")],
            "pair": [token("<|startoftext|>"), seq("A"), seq("B"), token("<|endoftext|>")],
            "special_tokens": {
                "<|startoftext|>": {"id": "<|startoftext|>", "ids": [0], "tokens": ["<|startoftext|>"]},
                "<|endoftext|>": {"id": "<|endoftext|>", "ids": [1], "tokens": ["<|endoftext|>"]}
            }
        },
        "decoder": null,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    })
}
