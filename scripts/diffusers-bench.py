#!/usr/bin/env python3
"""The diffusers side of scripts/diffusers-bench.sh.

    diffusers-bench.py write DIR          a full-size SD-Turbo with random weights, as
                                         diffusers' save_pretrained writes it (f32), with
                                         CLIP's vocab.json and merges.txt
    diffusers-bench.py run DIR SIZE THREADS
                                         loads it and renders one 1-step image, printing
                                         the load time and each stage's time as JSON
"""
import json
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests/data/model-configs/sd-turbo"


def write(out):
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = pathlib.Path(out)
    cfg = lambda part: json.loads((CONFIGS / part / "config.json").read_text())
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg("unet"))
    vae = AutoencoderKL.from_config(cfg("vae"))
    text = CLIPTextModel(CLIPTextConfig(**cfg("text_encoder")))
    # CLIP's vocabulary from the merges renderq compiles in, built as OpenAI builds it.
    merges = (ROOT / "src/render/diffusion/clip-merges.txt").read_text().splitlines()[1:]
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars = [chr(b) for b in bs] + [chr(256 + n) for n in range(256 - len(bs))]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tok_dir = out / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"),
                              pad_token="!", model_max_length=77)
    scheduler = EulerDiscreteScheduler.from_config(
        json.loads((CONFIGS / "scheduler/scheduler_config.json").read_text()))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)


def run(path, size, threads):
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(threads)
    started = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32)
    load = time.perf_counter() - started
    times = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            r = fn(*a, **k)
            times[name] = times.get(name, 0) + time.perf_counter() - t
            return r
        return wrapper

    pipe.text_encoder.forward = timed("text", pipe.text_encoder.forward)
    pipe.unet.forward = timed("unet", pipe.unet.forward)
    pipe.vae.decode = timed("decode", pipe.vae.decode)
    with torch.inference_mode():
        # A first call warms the allocator, as renderq's first batch is not timed apart.
        started = time.perf_counter()
        pipe("a teal armchair", height=size, width=size, num_inference_steps=1,
             guidance_scale=0.0, generator=torch.Generator().manual_seed(1))
        total = time.perf_counter() - started
    print(json.dumps({"load": load, "total": total, **times}))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
