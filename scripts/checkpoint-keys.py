#!/usr/bin/env python3
"""Checks tests/data/checkpoint-keys/<model>.tsv, the single-file layouts of SD 1.5,
SD 2.1 and SDXL that tests/checkpoint_layouts.rs reads, with diffusers' own
single-file converter: each list, as meta tensors (no weights), must convert into
exactly the tensors of the diffusers models that tests/data/model-configs describes,
with the same shapes, and diffusers must recognise the checkpoint's kind.

    python3 -m venv /tmp/dvenv && /tmp/dvenv/bin/pip install torch diffusers transformers
    /tmp/dvenv/bin/python scripts/checkpoint-keys.py
"""
import json
import pathlib
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint,
                                                 convert_ldm_unet_checkpoint,
                                                 convert_ldm_vae_checkpoint,
                                                 convert_open_clip_checkpoint,
                                                 infer_diffusers_model_type)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEYS = ROOT / "tests/data/checkpoint-keys"
CONFIGS = ROOT / "tests/data/model-configs"


def config(model, part):
    return json.loads((CONFIGS / model / part / "config.json").read_text())


def compare(model, part, converted, reference):
    """Every tensor of `reference` converted, with its shape, and nothing else.
    transformers 5 names CLIPTextModel's tensors without `text_model.`, which the
    converter keeps: the prefix is not compared."""
    def name(k):
        return k.removeprefix("text_model.")
    conv = {name(k): tuple(v.shape) for k, v in converted.items()}
    ref = {name(k): tuple(v.shape) for k, v in reference.items() if not k.endswith("position_ids")}
    missing = sorted(set(ref) - set(conv))
    extra = sorted(set(conv) - set(ref))
    wrong = sorted(k for k in set(ref) & set(conv) if ref[k] != conv[k])
    for what, keys in (("missing", missing), ("extra", extra), ("wrong shape", wrong)):
        for k in keys[:10]:
            print(f"  {model} {part}: {what}: {k} {conv.get(k)} vs {ref.get(k)}")
    print(f"{model} {part}: {len(ref)} tensors, {len(missing)} missing, {len(extra)} extra, "
          f"{len(wrong)} of the wrong shape")
    return not (missing or extra or wrong)


def text_model(model, part, cls):
    with torch.device("meta"):
        return cls(CLIPTextConfig(**config(model, part)))


ok = True
for model, kind in (("sd-1.5", "v1"), ("sd-2.1", "v2"), ("sdxl", "xl_base")):
    ckpt = {}
    for line in (KEYS / f"{model}.tsv").read_text().splitlines():
        key, dims = line.split("\t")
        shape = [int(d) for d in dims.split(",") if d]
        ckpt[key] = torch.empty(shape, device="meta")
    inferred = infer_diffusers_model_type(ckpt)
    print(f"{model}: diffusers reads it as `{inferred}`")
    ok &= inferred == kind
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config(model, "unet"))
        vae = AutoencoderKL.from_config(config(model, "vae"))
    ok &= compare(model, "unet", convert_ldm_unet_checkpoint(ckpt, unet.config), unet.state_dict())
    ok &= compare(model, "vae", convert_ldm_vae_checkpoint(ckpt, vae.config), vae.state_dict())
    if kind == "v1":
        enc = text_model(model, "text_encoder", CLIPTextModel)
        ok &= compare(model, "text_encoder", convert_ldm_clip_checkpoint(ckpt), enc.state_dict())
    elif kind == "v2":
        enc = text_model(model, "text_encoder", CLIPTextModel)
        conv = convert_open_clip_checkpoint(enc, ckpt, prefix="cond_stage_model.model.")
        ok &= compare(model, "text_encoder", conv, enc.state_dict())
    else:
        enc = text_model(model, "text_encoder", CLIPTextModel)
        conv = convert_ldm_clip_checkpoint(ckpt, remove_prefix="conditioner.embedders.0.transformer.")
        ok &= compare(model, "text_encoder", conv, enc.state_dict())
        enc2 = text_model(model, "text_encoder_2", CLIPTextModelWithProjection)
        conv = convert_open_clip_checkpoint(enc2, ckpt, prefix="conditioner.embedders.1.model.")
        ok &= compare(model, "text_encoder_2", conv, enc2.state_dict())
print("ok" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
