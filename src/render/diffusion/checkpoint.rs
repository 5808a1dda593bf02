//! Single-file checkpoints, as ComfyUI and AUTOMATIC1111 users hold them: one
//! `.safetensors` in the original Stability layout (`model.diffusion_model.*`,
//! `first_stage_model.*`, and `cond_stage_model.*` or, for SDXL,
//! `conditioner.embedders.*`). The architecture is read from the tensors' shapes in
//! the file's header; the tensors are renamed as candle's models ask for them
//! (`keys.rs`, `backend.rs`). What weights cannot say (v-prediction, Turbo's trailing
//! timesteps) comes from a `<name>.json` beside the file, or from a `v_pred` tensor
//! some tools write.

pub mod backend;
pub mod keys;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use candle_transformers::models::stable_diffusion::{
    unet_2d::{BlockConfig, UNet2DConditionModelConfig},
    vae::AutoEncoderKLConfig,
};

use self::keys::{Component, UNET, VAE};
use super::{
    arch::{Architecture, TextEncoderArch, stable_diffusion_unet},
    config::{self, TextShape},
    sampling::{NoiseSchedule, Prediction},
};

/// A checkpoint's file name ends so: the model's name is the rest.
pub const EXTENSION: &str = "safetensors";

/// The checkpoint of `model` under `models_dir`, if there is one.
pub fn find(models_dir: &Path, model: &str) -> Option<PathBuf> {
    let file = models_dir.join(format!("{model}.{EXTENSION}"));
    file.is_file().then_some(file)
}

/// What a checkpoint holds.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Its architecture, from its shapes and its sidecar.
    pub arch: Architecture,
    /// The UNet's keys.
    pub unet: Component,
    /// The VAE's keys.
    pub vae: Component,
    /// Each text encoder's keys, in the order their embeddings are joined.
    pub text: Vec<Component>,
}

/// The Stable Diffusion generations, told apart by their text encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// CLIP ViT-L, transformers' layout under `cond_stage_model.transformer.`.
    Sd1,
    /// OpenCLIP ViT-H under `cond_stage_model.model.`.
    Sd2,
    /// CLIP ViT-L and OpenCLIP bigG under `conditioner.embedders.{0,1}.`.
    Sdxl,
}

/// Tensor names and shapes, from a safetensors file's header alone.
struct Shapes(BTreeMap<String, Vec<usize>>);

impl Shapes {
    fn read(path: &Path) -> Result<Self, String> {
        let (_, tensors) = super::tensors::header(path)?;
        let mut shapes = BTreeMap::new();
        for (name, info) in tensors {
            let shape = info
                .get("shape")
                .and_then(|s| s.as_array())
                .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                .ok_or_else(|| {
                    format!(
                        "{}: not a safetensors file: tensor `{name}` has no shape",
                        path.display()
                    )
                })?;
            shapes.insert(name, shape);
        }
        Ok(Shapes(shapes))
    }

    fn get(&self, name: &str) -> Option<&[usize]> {
        self.0.get(name).map(Vec::as_slice)
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// How many of `0, 1, 2, …` give a present `name(i)`, counting from 0 up.
    fn count(&self, name: impl Fn(usize) -> String) -> usize {
        (0..).take_while(|&i| self.has(&name(i))).count()
    }
}

/// A shape's dimension, or an error naming the tensor that lacks it.
fn dim(shapes: &Shapes, name: &str, d: usize) -> Result<usize, String> {
    shapes
        .get(name)
        .ok_or_else(|| format!("tensor `{name}` is missing"))?
        .get(d)
        .copied()
        .ok_or_else(|| format!("tensor `{name}` has no dimension {d}"))
}

/// Reads `path`'s header (and sidecar) and tells what it is, or why it is refused.
pub fn read(path: &Path) -> Result<Checkpoint, String> {
    let shapes = Shapes::read(path)?;
    let at = |e: String| format!("{}: {e}", path.display());
    let family = family(&shapes).map_err(at)?;
    let (text, width): (Vec<_>, usize) = text_encoders(&shapes, family).map_err(at)?;
    let (unet_config, unet) = unet(&shapes, family).map_err(at)?;
    if unet_config.cross_attention_dim != width {
        return Err(at(format!(
            "the UNet attends to {} wide text, its text encoders give {width}",
            unet_config.cross_attention_dim
        )));
    }
    let (vae_config, vae) = vae(&shapes).map_err(at)?;
    let mut base = NoiseSchedule::default();
    // ComfyUI marks v-prediction models it saves with an empty `v_pred` tensor.
    if shapes.has("v_pred") {
        base.prediction = Prediction::V;
    }
    let sidecar = path.with_extension("json");
    let (schedule, steps, guidance) = if sidecar.is_file() {
        config::sidecar(&sidecar, &base).map_err(|e| e.to_string())?
    } else {
        (base, None, None)
    };
    let (default_steps, default_guidance) = config::job_defaults(schedule.spacing);
    let factor = 1u32 << vae_config.block_out_channels.len().saturating_sub(1);
    let arch = Architecture {
        unet: unet_config,
        vae: vae_config,
        vae_scale: match family {
            Family::Sdxl => 0.13025,
            _ => 0.18215,
        },
        text: text.iter().map(|(arch, _)| arch.clone()).collect(),
        schedule,
        default_steps: steps.unwrap_or(default_steps),
        default_guidance: guidance.unwrap_or(default_guidance),
        size_multiple: factor,
        repo: "",
    };
    Ok(Checkpoint {
        arch,
        unet,
        vae,
        text: text.into_iter().map(|(_, keys)| keys).collect(),
    })
}

const SD1_TEXT: &str = "cond_stage_model.transformer.";
const SD2_TEXT: &str = "cond_stage_model.model.";
const XL_TEXT: [&str; 2] = [
    "conditioner.embedders.0.transformer.",
    "conditioner.embedders.1.model.",
];

fn family(shapes: &Shapes) -> Result<Family, String> {
    let clip = |p: &str| {
        shapes.has(&format!("{p}text_model.embeddings.token_embedding.weight"))
            || shapes.has(&format!("{p}embeddings.token_embedding.weight"))
    };
    let open_clip = |p: &str| shapes.has(&format!("{p}token_embedding.weight"));
    if clip(XL_TEXT[0]) && open_clip(XL_TEXT[1]) {
        Ok(Family::Sdxl)
    } else if open_clip(SD2_TEXT) {
        Ok(Family::Sd2)
    } else if clip(SD1_TEXT) {
        Ok(Family::Sd1)
    } else if !shapes.has(&format!("{UNET}input_blocks.0.0.weight")) {
        Err(format!(
            "not a Stable Diffusion checkpoint: no `{UNET}input_blocks.0.0.weight` (renderq reads \
             the original Stability layout; a diffusers model is a directory)"
        ))
    } else {
        Err(format!(
            "no text encoder renderq knows: expected CLIP under `{SD1_TEXT}`, OpenCLIP under \
             `{SD2_TEXT}`, or SDXL's two under `conditioner.embedders.`"
        ))
    }
}

/// A text encoder's shape, padding and keys, and the width of its embeddings.
type Encoder = (TextEncoderArch, Component);

fn text_encoders(shapes: &Shapes, family: Family) -> Result<(Vec<Encoder>, usize), String> {
    // SD 2.x reads OpenCLIP's penultimate layer: the last is not used (diffusers drops it).
    let encoders: Vec<(&str, bool, Option<&str>, bool)> = match family {
        Family::Sd1 => vec![(SD1_TEXT, false, None, false)],
        Family::Sd2 => vec![(SD2_TEXT, true, Some("!"), true)],
        Family::Sdxl => vec![
            (XL_TEXT[0], false, None, false),
            (XL_TEXT[1], true, Some("!"), false),
        ],
    };
    let names = [
        ("text_encoder", "tokenizer"),
        ("text_encoder_2", "tokenizer_2"),
    ];
    let mut out = Vec::new();
    let mut width = 0;
    for (i, (prefix, open, pad, penultimate)) in encoders.into_iter().enumerate() {
        let (keys, shape, projection) = if open {
            open_clip_shape(shapes, prefix, penultimate)?
        } else {
            clip_shape(shapes, prefix)?
        };
        let (arch, w) = config::text_arch(shape, pad.map(String::from), projection)
            .map_err(|e| format!("text encoder under `{prefix}`: {e}"))?;
        width += w;
        out.push((
            TextEncoderArch {
                arch,
                dir: names[i].0,
                tokenizer_dir: names[i].1,
                tokenizer_repo: "",
            },
            keys,
        ));
    }
    Ok((out, width))
}

/// OpenAI's CLIP in transformers' layout; its heads are 64 wide.
fn clip_shape(shapes: &Shapes, prefix: &str) -> Result<(Component, TextShape, usize), String> {
    let nested = shapes.has(&format!(
        "{prefix}text_model.embeddings.token_embedding.weight"
    ));
    let p = if nested {
        format!("{prefix}text_model.")
    } else {
        prefix.to_string()
    };
    let token = format!("{p}embeddings.token_embedding.weight");
    let width = dim(shapes, &token, 1)?;
    let shape = TextShape {
        vocab: dim(shapes, &token, 0)?,
        width,
        layers: shapes.count(|i| format!("{p}encoder.layers.{i}.layer_norm1.weight")),
        heads: width / 64,
        mlp: dim(shapes, &format!("{p}encoder.layers.0.mlp.fc1.weight"), 0)?,
        positions: dim(
            shapes,
            &format!("{p}embeddings.position_embedding.weight"),
            0,
        )?,
        gelu: false,
    };
    let keys = Component::Clip {
        prefix: prefix.to_string(),
        nested,
    };
    Ok((keys, shape, width))
}

/// OpenCLIP's layout; its heads are 64 wide.
fn open_clip_shape(
    shapes: &Shapes,
    prefix: &str,
    penultimate: bool,
) -> Result<(Component, TextShape, usize), String> {
    let token = format!("{prefix}token_embedding.weight");
    let width = dim(shapes, &token, 1)?;
    let layers = shapes.count(|i| format!("{prefix}transformer.resblocks.{i}.ln_1.weight"));
    let shape = TextShape {
        vocab: dim(shapes, &token, 0)?,
        width,
        layers: layers.saturating_sub(usize::from(penultimate)),
        heads: width / 64,
        mlp: dim(
            shapes,
            &format!("{prefix}transformer.resblocks.0.mlp.c_fc.weight"),
            0,
        )?,
        positions: dim(shapes, &format!("{prefix}positional_embedding"), 0)?,
        gelu: true,
    };
    let projection = match shapes.get(&format!("{prefix}text_projection")) {
        Some(s) => s.get(1).copied().unwrap_or(width),
        None => width,
    };
    let keys = Component::OpenClip {
        prefix: prefix.to_string(),
    };
    Ok((keys, shape, projection))
}

fn unet(
    shapes: &Shapes,
    family: Family,
) -> Result<(UNet2DConditionModelConfig, Component), String> {
    let u = |k: String| format!("{UNET}{k}");
    let conv_in = u("input_blocks.0.0.weight".into());
    let inputs = dim(shapes, &conv_in, 1)?;
    if inputs != 4 {
        return Err(format!(
            "the UNet takes {inputs} input channels (`{conv_in}`); renderq serves text-to-image \
             models, which take 4 (9 is an inpainting model)"
        ));
    }
    // Input block 0 is conv_in; then each down block's resnets and its downsampler,
    // all but the last.
    let resnet = |i: usize| u(format!("input_blocks.{i}.0.in_layers.0.weight"));
    let downsampler = |i: usize| u(format!("input_blocks.{i}.0.op.weight"));
    let count = 1 + shapes.count(|i| {
        let i = i + 1;
        if shapes.has(&downsampler(i)) {
            downsampler(i)
        } else {
            resnet(i)
        }
    });
    let Some(stride) = (1..count).find(|&i| shapes.has(&downsampler(i))) else {
        return Err(format!(
            "no downsampler in the UNet (`{UNET}input_blocks.N.0.op.weight`)"
        ));
    };
    let layers = stride - 1;
    if layers == 0 || !count.is_multiple_of(stride) {
        return Err(format!(
            "the UNet's {count} input blocks, downsampling every {stride}, are not Stable \
             Diffusion's"
        ));
    }
    let mut blocks = Vec::new();
    for b in 0..count / stride {
        let first = 1 + b * stride;
        let out_channels = dim(
            shapes,
            &u(format!("input_blocks.{first}.0.out_layers.3.weight")),
            0,
        )?;
        let depth = shapes.count(|k| {
            u(format!(
                "input_blocks.{first}.1.transformer_blocks.{k}.norm1.weight"
            ))
        });
        // SD 1.x has 8 heads everywhere; SD 2.x and SDXL heads 64 channels wide.
        let heads = match family {
            Family::Sd1 => 8,
            _ => out_channels / 64,
        };
        blocks.push(BlockConfig {
            out_channels,
            use_cross_attn: (depth > 0).then_some(depth),
            attention_head_dim: heads.max(1),
        });
    }
    let mid = |k: &str| u(format!("middle_block.1.{k}"));
    let cross_attention_dim = dim(shapes, &mid("transformer_blocks.0.attn2.to_k.weight"), 1)?;
    let proj_in = shapes
        .get(&mid("proj_in.weight"))
        .ok_or_else(|| format!("tensor `{}` is missing", mid("proj_in.weight")))?;
    let linear = proj_in.len() == 2;
    let config = stable_diffusion_unet(blocks, layers, cross_attention_dim, linear);
    let keys = Component::unet_of(&config);
    Ok((config, keys))
}

fn vae(shapes: &Shapes) -> Result<(AutoEncoderKLConfig, Component), String> {
    let v = |k: String| format!("{VAE}{k}");
    let levels = shapes.count(|i| v(format!("encoder.down.{i}.block.0.conv1.weight")));
    if levels == 0 {
        return Err(format!(
            "no VAE (`{VAE}encoder.down.0.block.0.conv1.weight`)"
        ));
    }
    let block_out_channels = (0..levels)
        .map(|i| {
            dim(
                shapes,
                &v(format!("encoder.down.{i}.block.0.conv1.weight")),
                0,
            )
        })
        .collect::<Result<_, _>>()?;
    let config = AutoEncoderKLConfig {
        block_out_channels,
        layers_per_block: shapes.count(|j| v(format!("encoder.down.0.block.{j}.conv1.weight"))),
        latent_channels: dim(shapes, &v("decoder.conv_in.weight".into()), 1)?,
        norm_num_groups: 32,
        use_quant_conv: shapes.has(&v("quant_conv.weight".into())),
        use_post_quant_conv: shapes.has(&v("post_quant_conv.weight".into())),
    };
    let keys = Component::vae_of(&config);
    Ok((config, keys))
}
