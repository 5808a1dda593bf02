"""Writes openai-ids.json: the ids OpenAI's CLIP tokenizer (open_clip's copy of it,
with the BPE merges Stable Diffusion's text encoders were trained with) gives each
prompt of prompts.json, cut or padded as Stable Diffusion reads them (77 tokens).
renderq's tests check that its built-in CLIP vocabulary gives the same.

    python -m venv /tmp/oc && /tmp/oc/bin/pip install open_clip_torch ftfy regex torch
    /tmp/oc/bin/python openai.py > openai-ids.json
"""
import importlib.util, json, pathlib, sysconfig

# open_clip's tokenizer module alone: the package's __init__ wants torchvision and timm.
path = pathlib.Path(sysconfig.get_paths()["purelib"]) / "open_clip" / "tokenizer.py"
spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

here = pathlib.Path(__file__).resolve().parent
prompts = json.loads((here / "prompts.json").read_text())
tok = module.SimpleTokenizer()
out = []
for p in prompts:
    ids = [tok.sot_token_id] + tok.encode(p) + [tok.eot_token_id]
    if len(ids) > 77:
        ids = ids[:76] + [tok.eot_token_id]
    out.append(ids)
print(json.dumps({"vocab_size": len(tok.encoder), "ids": out}))
