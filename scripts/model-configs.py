#!/usr/bin/env python3
"""Writes the configs of the five hub models renderq knows by name, as today's
diffusers and transformers write them (every field, normalised by the libraries),
under tests/data/model-configs/<name>/. No weights: the components are built on
PyTorch's meta device and only their configs are saved.

    python3 -m venv /tmp/dvenv && /tmp/dvenv/bin/pip install torch diffusers transformers
    /tmp/dvenv/bin/python scripts/model-configs.py

tests/diffusion.rs reads them and checks that each gives the preset of its name.
"""
import json
import pathlib

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel)
from transformers import CLIPTextConfig

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/data/model-configs"

CA, DB, CU, UB = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
SD_UNET = dict(down_block_types=[CA, CA, CA, DB], up_block_types=[UB, CU, CU, CU],
               block_out_channels=[320, 640, 1280, 1280], layers_per_block=2)
SD2_UNET = dict(SD_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                use_linear_projection=True)
XL_UNET = dict(down_block_types=[DB, CA, CA], up_block_types=[CU, CU, UB],
               block_out_channels=[320, 640, 1280], attention_head_dim=[5, 10, 20],
               transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
               use_linear_projection=True, addition_embed_type="text_time",
               addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768)
CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
              num_attention_heads=16, hidden_act="gelu", projection_dim=512)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, hidden_act="gelu", projection_dim=1280)
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
             num_train_timesteps=1000, steps_offset=1)

MODELS = {
    "sd-1.5": ("StableDiffusionPipeline", dict(SD_UNET, attention_head_dim=8, cross_attention_dim=768),
               dict(VAE), [(CLIP_L, "CLIPTextModel", "<|endoftext|>")],
               PNDMScheduler, dict(BETAS, skip_prk_steps=True, set_alpha_to_one=False)),
    "sd-2.1": ("StableDiffusionPipeline", dict(SD2_UNET, upcast_attention=True), dict(VAE),
               [(CLIP_H, "CLIPTextModel", "!")],
               DDIMScheduler, dict(BETAS, prediction_type="v_prediction", clip_sample=False,
                                   set_alpha_to_one=False)),
    "sd-turbo": ("StableDiffusionPipeline", SD2_UNET, dict(VAE), [(CLIP_H, "CLIPTextModel", "!")],
                 EulerDiscreteScheduler, dict(BETAS, timestep_spacing="trailing")),
    "sdxl": ("StableDiffusionXLPipeline", XL_UNET, dict(VAE, scaling_factor=0.13025),
             [(CLIP_L, "CLIPTextModel", "<|endoftext|>"),
              (CLIP_G, "CLIPTextModelWithProjection", "!")],
             EulerDiscreteScheduler, dict(BETAS, timestep_spacing="leading")),
    "sdxl-turbo": ("StableDiffusionXLPipeline", XL_UNET, dict(VAE, scaling_factor=0.13025),
                   [(CLIP_L, "CLIPTextModel", "<|endoftext|>"),
                    (CLIP_G, "CLIPTextModelWithProjection", "!")],
                   EulerAncestralDiscreteScheduler, dict(BETAS, timestep_spacing="trailing")),
}

for name, (pipeline, unet, vae, encoders, scheduler, sched_kw) in MODELS.items():
    root = OUT / name
    index = {"_class_name": pipeline}
    with torch.device("meta"):
        UNet2DConditionModel(**unet).save_config(root / "unet")
        AutoencoderKL(**vae).save_config(root / "vae")
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    index["vae"] = ["diffusers", "AutoencoderKL"]
    scheduler(**sched_kw).save_config(root / "scheduler")
    index["scheduler"] = ["diffusers", scheduler.__name__]
    for i, (clip, cls, pad) in enumerate(encoders):
        suffix = "" if i == 0 else f"_{i + 1}"
        cfg = CLIPTextConfig(**clip, architectures=[cls])
        cfg.save_pretrained(root / f"text_encoder{suffix}")
        tok = root / f"tokenizer{suffix}"
        tok.mkdir(parents=True, exist_ok=True)
        (tok / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": pad,
             "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}, indent=2))
        index[f"text_encoder{suffix}"] = ["transformers", cls]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
    if len(encoders) == 1:
        index["text_encoder_2"] = [None, None]
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    print("wrote", root)
