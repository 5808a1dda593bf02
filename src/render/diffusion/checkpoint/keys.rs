//! Where each tensor candle's models ask for (by its diffusers name) lies in a
//! checkpoint of the original Stability layout. Most are renames; OpenCLIP keeps the
//! query, key and value projections in one `in_proj` tensor, and its text projection
//! the other way round.

use candle_transformers::models::stable_diffusion::{
    unet_2d::UNet2DConditionModelConfig, vae::AutoEncoderKLConfig,
};

/// Where a tensor comes from in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The tensor of this name (1×1 convolutions are reshaped to the linear layers
    /// diffusers has in their place).
    Tensor(String),
    /// Part `part` of `parts` equal slices of this tensor along its first dimension.
    Slice {
        /// The tensor holding all parts.
        name: String,
        /// Which part, from 0.
        part: usize,
        /// How many parts.
        parts: usize,
    },
    /// This matrix, transposed.
    Transposed(String),
}

/// One model of a checkpoint and what renaming its keys needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// The UNet under `model.diffusion_model.`: resnets per block, and which up
    /// blocks (in diffusers' order) have attention, which moves their upsampler.
    Unet {
        /// Resnets per down block.
        layers_per_block: usize,
        /// Per up block, whether it has attention.
        up_attention: Vec<bool>,
    },
    /// The VAE under `first_stage_model.`, with this many resolution levels.
    Vae {
        /// Resolution levels.
        levels: usize,
    },
    /// A CLIP text encoder in transformers' layout under `prefix` (SD 1.x,
    /// the first of SDXL).
    Clip {
        /// Everything before the transformers name.
        prefix: String,
        /// Whether the names keep transformers' `text_model.` (older checkpoints
        /// drop it).
        nested: bool,
    },
    /// An OpenCLIP text encoder under `prefix` (SD 2.x, the second of SDXL).
    OpenClip {
        /// Everything before the OpenCLIP name.
        prefix: String,
    },
}

/// The UNet's prefix in a checkpoint.
pub const UNET: &str = "model.diffusion_model.";
/// The VAE's prefix in a checkpoint.
pub const VAE: &str = "first_stage_model.";

impl Component {
    /// The UNet's keys, for a UNet of this shape.
    pub fn unet_of(unet: &UNet2DConditionModelConfig) -> Self {
        Component::Unet {
            layers_per_block: unet.layers_per_block,
            // Up blocks mirror the down blocks.
            up_attention: unet
                .blocks
                .iter()
                .rev()
                .map(|b| b.use_cross_attn.is_some())
                .collect(),
        }
    }

    /// The VAE's keys, for a VAE of this shape.
    pub fn vae_of(vae: &AutoEncoderKLConfig) -> Self {
        Component::Vae {
            levels: vae.block_out_channels.len(),
        }
    }

    /// Where `name` (a diffusers name) is, or `None` for a name this layout lacks.
    pub fn source(&self, name: &str) -> Option<Source> {
        match self {
            Component::Unet {
                layers_per_block,
                up_attention,
            } => unet(name, *layers_per_block, up_attention)
                .map(|k| Source::Tensor(format!("{UNET}{k}"))),
            Component::Vae { levels } => {
                vae(name, *levels).map(|k| Source::Tensor(format!("{VAE}{k}")))
            }
            Component::Clip { prefix, nested } => {
                let name = match nested {
                    true => name,
                    false => name.strip_prefix("text_model.").unwrap_or(name),
                };
                Some(Source::Tensor(format!("{prefix}{name}")))
            }
            Component::OpenClip { prefix } => open_clip(name, prefix),
        }
    }
}

/// `a.b.rest` split after `n` dots: the first `n` parts and the rest.
fn head<const N: usize>(name: &str) -> Option<([&str; N], &str)> {
    let mut parts = name.splitn(N + 1, '.');
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next()?;
    }
    Some((out, parts.next()?))
}

fn index(s: &str) -> Option<usize> {
    s.parse().ok()
}

/// Replaces the first part of `rest` by the pairs' mapping, if it is one of them.
fn first_part(rest: &str, pairs: &[(&str, &str)]) -> String {
    for (from, to) in pairs {
        if let Some(tail) = rest.strip_prefix(from).and_then(|t| t.strip_prefix('.')) {
            return format!("{to}.{tail}");
        }
    }
    rest.to_string()
}

/// A UNet resnet's parts, diffusers to original.
const RESNET: [(&str, &str); 6] = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

fn unet(name: &str, layers: usize, up_attention: &[bool]) -> Option<String> {
    const TOP: [(&str, &str); 7] = [
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("add_embedding.linear_2", "label_emb.0.2"),
        ("conv_in", "input_blocks.0.0"),
        ("conv_norm_out", "out.0"),
        ("conv_out", "out.2"),
    ];
    for (from, to) in TOP {
        if let Some(tail) = name.strip_prefix(from).and_then(|t| t.strip_prefix('.')) {
            return Some(format!("{to}.{tail}"));
        }
    }
    // Each down block is `layers` resnets (each with its attention), then a
    // downsampler; each up block one resnet more, the upsampler after the last.
    if name.starts_with("mid_block.") {
        return mid(name);
    }
    let stride = layers + 1;
    let ([block, i, kind, j], rest) = head::<4>(name)?;
    let (i, j) = (index(i)?, index(j)?);
    let resnet = || first_part(rest, &RESNET);
    Some(match (block, kind) {
        ("down_blocks", "resnets") => format!("input_blocks.{}.0.{}", 1 + i * stride + j, resnet()),
        ("down_blocks", "attentions") => format!("input_blocks.{}.1.{rest}", 1 + i * stride + j),
        ("down_blocks", "downsamplers") if j == 0 => {
            let tail = rest.strip_prefix("conv.")?;
            format!("input_blocks.{}.0.op.{tail}", (i + 1) * stride)
        }
        ("up_blocks", "resnets") => format!("output_blocks.{}.0.{}", i * stride + j, resnet()),
        ("up_blocks", "attentions") => format!("output_blocks.{}.1.{rest}", i * stride + j),
        ("up_blocks", "upsamplers") if j == 0 => {
            let slot = if *up_attention.get(i)? { 2 } else { 1 };
            format!("output_blocks.{}.{slot}.{rest}", i * stride + layers)
        }
        _ => return None,
    })
}

fn mid(name: &str) -> Option<String> {
    let ([block, kind, j], rest) = head::<3>(name)?;
    match (block, kind, index(j)?) {
        ("mid_block", "resnets", j) if j < 2 => Some(format!(
            "middle_block.{}.{}",
            2 * j,
            first_part(rest, &RESNET)
        )),
        ("mid_block", "attentions", 0) => Some(format!("middle_block.1.{rest}")),
        _ => None,
    }
}

/// The VAE's attention parts, diffusers (both of its namings) to original.
const VAE_ATTENTION: [(&str, &str); 9] = [
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
    ("query", "q"),
    ("key", "k"),
    ("value", "v"),
    ("proj_attn", "proj_out"),
];

fn vae(name: &str, levels: usize) -> Option<String> {
    let (half, rest) = name.split_once('.')?;
    if !["encoder", "decoder"].contains(&half) {
        return ["quant_conv.", "post_quant_conv."]
            .iter()
            .any(|p| name.starts_with(p))
            .then(|| name.to_string());
    }
    let resnet = |r: &str| first_part(r, &[("conv_shortcut", "nin_shortcut")]);
    for (from, to) in [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("conv_norm_out.", "norm_out."),
    ] {
        if let Some(tail) = rest.strip_prefix(from) {
            return Some(format!("{half}.{to}{tail}"));
        }
    }
    if let Some(mid) = rest.strip_prefix("mid_block.") {
        let ([kind, j], r) = head::<2>(mid)?;
        return match (kind, index(j)?) {
            ("resnets", j) if j < 2 => Some(format!("{half}.mid.block_{}.{}", j + 1, resnet(r))),
            ("attentions", 0) => Some(format!(
                "{half}.mid.attn_1.{}",
                first_part(r, &VAE_ATTENTION)
            )),
            _ => None,
        };
    }
    let ([blocks, i, kind, j], r) = head::<4>(rest)?;
    let (i, j) = (index(i)?, index(j)?);
    // The decoder's levels run the other way round in the original layout.
    let (level, own) = match (half, blocks) {
        ("encoder", "down_blocks") => (i, "down"),
        ("decoder", "up_blocks") => (levels.checked_sub(i + 1)?, "up"),
        _ => return None,
    };
    match kind {
        "resnets" => Some(format!("{half}.{own}.{level}.block.{j}.{}", resnet(r))),
        "downsamplers" | "upsamplers" if j == 0 => {
            let sampler = if own == "down" {
                "downsample"
            } else {
                "upsample"
            };
            Some(format!("{half}.{own}.{level}.{sampler}.{r}"))
        }
        _ => None,
    }
}

fn open_clip(name: &str, prefix: &str) -> Option<Source> {
    let at = |k: &str| format!("{prefix}{k}");
    let fixed = match name {
        "text_model.embeddings.token_embedding.weight" => Some("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight" => Some("positional_embedding"),
        "text_model.final_layer_norm.weight" => Some("ln_final.weight"),
        "text_model.final_layer_norm.bias" => Some("ln_final.bias"),
        _ => None,
    };
    if let Some(k) = fixed {
        return Some(Source::Tensor(at(k)));
    }
    if name == "text_projection.weight" {
        return Some(Source::Transposed(at("text_projection")));
    }
    let layer = name.strip_prefix("text_model.encoder.layers.")?;
    let ([i], rest) = head::<1>(layer)?;
    let block = at(&format!("transformer.resblocks.{}", index(i)?));
    for (part, projection) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        if let Some(what) = rest
            .strip_prefix("self_attn.")
            .and_then(|r| r.strip_prefix(projection))
            .and_then(|r| r.strip_prefix('.'))
        {
            return Some(Source::Slice {
                name: format!("{block}.attn.in_proj_{what}"),
                part,
                parts: 3,
            });
        }
    }
    let renamed = first_part(
        rest,
        &[
            ("self_attn.out_proj", "attn.out_proj"),
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ],
    );
    (renamed != rest).then(|| Source::Tensor(format!("{block}.{renamed}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15_unet(name: &str) -> Option<Source> {
        Component::Unet {
            layers_per_block: 2,
            up_attention: vec![false, true, true, true],
        }
        .source(name)
    }

    fn tensor(name: &str) -> Option<Source> {
        Some(Source::Tensor(name.to_string()))
    }

    #[test]
    fn unet_names_land_where_stable_diffusion_1_5_keeps_them() {
        for (diffusers, original) in [
            ("conv_in.weight", "input_blocks.0.0.weight"),
            ("time_embedding.linear_2.bias", "time_embed.2.bias"),
            (
                "down_blocks.0.resnets.1.conv2.weight",
                "input_blocks.2.0.out_layers.3.weight",
            ),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "down_blocks.1.resnets.0.conv_shortcut.bias",
                "input_blocks.4.0.skip_connection.bias",
            ),
            (
                "down_blocks.2.downsamplers.0.conv.weight",
                "input_blocks.9.0.op.weight",
            ),
            (
                "down_blocks.3.resnets.1.time_emb_proj.weight",
                "input_blocks.11.0.emb_layers.1.weight",
            ),
            (
                "mid_block.resnets.1.norm1.weight",
                "middle_block.2.in_layers.0.weight",
            ),
            (
                "mid_block.attentions.0.proj_in.weight",
                "middle_block.1.proj_in.weight",
            ),
            (
                "up_blocks.0.resnets.2.norm2.bias",
                "output_blocks.2.0.out_layers.0.bias",
            ),
            (
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.1.conv.weight",
            ),
            (
                "up_blocks.1.upsamplers.0.conv.bias",
                "output_blocks.5.2.conv.bias",
            ),
            (
                "up_blocks.3.attentions.2.norm.weight",
                "output_blocks.11.1.norm.weight",
            ),
            ("conv_norm_out.weight", "out.0.weight"),
            ("conv_out.bias", "out.2.bias"),
        ] {
            assert_eq!(
                sd15_unet(diffusers),
                tensor(&format!("{UNET}{original}")),
                "{diffusers}"
            );
        }
        assert_eq!(sd15_unet("up_blocks.3.upsamplers.1.conv.weight"), None);
        assert_eq!(sd15_unet("nonsense.weight"), None);
    }

    #[test]
    fn vae_names_land_where_stable_diffusion_keeps_them() {
        let vae = Component::Vae { levels: 4 };
        for (diffusers, original) in [
            ("encoder.conv_in.weight", "encoder.conv_in.weight"),
            (
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
                "encoder.down.1.block.0.nin_shortcut.weight",
            ),
            (
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
                "encoder.down.2.downsample.conv.bias",
            ),
            (
                "encoder.mid_block.attentions.0.to_q.weight",
                "encoder.mid.attn_1.q.weight",
            ),
            (
                "encoder.mid_block.attentions.0.group_norm.bias",
                "encoder.mid.attn_1.norm.bias",
            ),
            (
                "decoder.mid_block.attentions.0.to_out.0.weight",
                "decoder.mid.attn_1.proj_out.weight",
            ),
            (
                "decoder.mid_block.resnets.1.conv2.weight",
                "decoder.mid.block_2.conv2.weight",
            ),
            (
                "decoder.up_blocks.0.resnets.2.norm1.weight",
                "decoder.up.3.block.2.norm1.weight",
            ),
            (
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
                "decoder.up.1.upsample.conv.weight",
            ),
            ("decoder.conv_norm_out.bias", "decoder.norm_out.bias"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ] {
            assert_eq!(
                vae.source(diffusers),
                tensor(&format!("{VAE}{original}")),
                "{diffusers}"
            );
        }
        assert_eq!(
            vae.source("decoder.up_blocks.4.resnets.0.conv1.weight"),
            None
        );
    }

    #[test]
    fn open_clip_splits_its_joint_projection_and_transposes_its_text_projection() {
        let enc = Component::OpenClip {
            prefix: "cond_stage_model.model.".into(),
        };
        let p = "cond_stage_model.model.";
        assert_eq!(
            enc.source("text_model.encoder.layers.3.self_attn.k_proj.bias"),
            Some(Source::Slice {
                name: format!("{p}transformer.resblocks.3.attn.in_proj_bias"),
                part: 1,
                parts: 3
            })
        );
        assert_eq!(
            enc.source("text_model.encoder.layers.0.mlp.fc2.weight"),
            tensor(&format!("{p}transformer.resblocks.0.mlp.c_proj.weight"))
        );
        assert_eq!(
            enc.source("text_model.embeddings.position_embedding.weight"),
            tensor(&format!("{p}positional_embedding"))
        );
        assert_eq!(
            enc.source("text_projection.weight"),
            Some(Source::Transposed(format!("{p}text_projection")))
        );
        assert_eq!(
            enc.source("text_model.encoder.layers.0.unknown.weight"),
            None
        );
    }

    #[test]
    fn a_clip_encoder_is_found_with_or_without_text_model() {
        let name = "text_model.encoder.layers.1.mlp.fc1.weight";
        let p = "cond_stage_model.transformer.";
        let nested = Component::Clip {
            prefix: p.into(),
            nested: true,
        };
        let flat = Component::Clip {
            prefix: p.into(),
            nested: false,
        };
        assert_eq!(nested.source(name), tensor(&format!("{p}{name}")));
        assert_eq!(
            flat.source(name),
            tensor(&format!("{p}encoder.layers.1.mlp.fc1.weight"))
        );
    }
}
