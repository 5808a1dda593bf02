"""Makes this directory's CLIP tokenizer fixture: a small byte-level BPE vocabulary
in CLIP's layout (vocab.json, merges.txt, as diffusers repositories ship them), the
tokenizer.json transformers builds from them, and the ids transformers gives each
prompt of prompts.json (expected.json). renderq's tests check that its own CLIP
tokenizer, built from vocab.json and merges.txt, gives the same ids.

    python -m venv /tmp/tf && /tmp/tf/bin/pip install transformers tokenizers
    /tmp/tf/bin/python make.py OUT prompts.json    # then copy OUT/* and OUT/reference/tokenizer.json here
"""
import json, os, sys
from transformers import CLIPTokenizer
import transformers

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~")+1))+list(range(ord("¡"), ord("¬")+1))+list(range(ord("®"), ord("ÿ")+1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b); cs.append(2**8+n); n += 1
    return dict(zip(bs, [chr(c) for c in cs]))

base = list(bytes_to_unicode().values())
merges = [("t","h"),("th","e</w>"),("o","f</w>"),("p","h"),("ph","o"),("pho","t"),("phot","o</w>"),
          ("a","r"),("ar","m"),("s","t"),("st","u"),("stu","d"),("stud","i"),("studi","o</w>"),
          ("e","a"),("t","ea"),("tea","l</w>"),("l","a"),("la","m"),("lam","p</w>"),("c","h"),
          ("ch","a"),("cha","i"),("chai","r</w>"),("s","o"),("so","f"),("sof","a</w>"),("i","n"),
          ("in","g</w>")]
vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
json.dump({t: i for i, t in enumerate(vocab)}, open(f"{out}/vocab.json", "w"), ensure_ascii=False)
with open(f"{out}/merges.txt", "w") as f:
    f.write("#version: 0.2\n")
    for a, b in merges:
        f.write(f"{a} {b}\n")
tok = CLIPTokenizer.from_pretrained(out)
ref = f"{out}/reference"
tok.save_pretrained(ref)
prompts = json.load(open(sys.argv[2]))
ids = [tok(p, truncation=True, max_length=77)["input_ids"] for p in prompts]
json.dump({"transformers": transformers.__version__, "prompts": prompts, "ids": ids}, open(f"{out}/expected.json", "w"), ensure_ascii=False, indent=0)
