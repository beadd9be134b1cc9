#!/usr/bin/python3
"""Golden logits for qlm's forward-pass tests, from the independent PyTorch GPT-2 in
tools/gpt2_reference.py, computed in float64 and stored as F32.

    /usr/bin/python3 tools/make_golden_logits.py

Writes
  tests/data/golden_logits.safetensors           for models/gpt2-tiny-kjv
  tests/data/golden_random_model/                a random-weight GPT-2 of another shape, saved with
                                                 the "transformer." prefix and an explicit lm_head
  tests/data/golden_random_logits.safetensors    for that model
Each golden file holds, for prompt k: p{k}.tokens (I32), p{k}.positions (I32, a selection of
positions: first, some in the middle, last; the last one is always len(tokens) - 1) and
p{k}.logits [len(positions), vocab] (F32, computed with the whole model in float64). For the
bundled model the prompt texts are in the safetensors metadata ("p{k}.text") and, with their
token ids, in tests/data/golden_prompts.json (the ids are gpt2_bpe.py's encoding of the text).
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_bpe  # noqa: E402
from gpt2_reference import GPT2, load_hf, save_hf, save_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")


def positions_for(n):
    picks = {0, n // 4, n // 2, (3 * n) // 4, n - 1}
    if n > 129:
        picks |= {127, 128}  # either side of a 128-row block boundary
    return sorted(p for p in picks if 0 <= p < n)


@torch.no_grad()
def golden(model, prompts, path, texts=None, all_positions=False):
    model = model.to(torch.float64).eval()
    tensors = {}
    meta = {"generator": "tools/make_golden_logits.py", "precision": "float64"}
    for k, ids in enumerate(prompts):
        x = torch.tensor([ids], dtype=torch.long)
        logits = model(x)[0]  # [len, vocab], float64
        pos = list(range(len(ids))) if all_positions else positions_for(len(ids))
        if texts is not None:
            meta[f"p{k}.text"] = texts[k]
        tensors[f"p{k}.tokens"] = np.asarray(ids, dtype=np.int32)
        tensors[f"p{k}.positions"] = np.asarray(pos, dtype=np.int32)
        tensors[f"p{k}.logits"] = logits[pos].to(torch.float32).numpy()
        print(f"{os.path.basename(path)}: p{k}: {len(ids)} tokens, positions {pos}")
    save_safetensors(path, tensors, metadata=meta)


def heldout_passage(held, enc, start_line, n_tokens):
    """Whole verses of heldout.txt from line `start_line` on, until about n_tokens tokens."""
    lines = held.split("\n")[start_line:]
    text = ""
    for line in lines:
        cand = text + line + "\n"
        if text and len(enc.encode(cand)) > n_tokens:
            break
        text = cand
    return text


def bundled():
    model_dir = os.path.join(ROOT, "models", "gpt2-tiny-kjv")
    model, cfg = load_hf(model_dir)
    enc = gpt2_bpe.get_encoder()
    with open(os.path.join(model_dir, "heldout.txt"), encoding="utf-8") as f:
        held = f.read()
    texts = [
        "And",                                                     # 1 token
        "And the LORD said unto Moses,",                           # 7 tokens
        # ~40 tokens of modern text: numbers, punctuation, non-ASCII, ids unseen in training
        "The quick brown fox jumps over the lazy dog. In 2024, qlm's tokenizer "
        "met caf\u00e9 na\u00efvet\u00e9 \u2014 and 3.14159 \u00d7 42 = 131.95!",
        heldout_passage(held, enc, 100, 215),                      # ~200 tokens of held-out KJV
    ]
    prompts = [enc.encode(t) for t in texts]
    assert len(prompts[0]) == 1
    assert all(len(p) <= cfg["n_positions"] for p in prompts)
    for t, p in zip(texts, prompts):
        assert enc.decode(p) == t
    golden(model, prompts, os.path.join(DATA, "golden_logits.safetensors"), texts=texts)
    side = {"model": "models/gpt2-tiny-kjv", "tokenizer": "tools/gpt2_bpe.py",
            "prompts": [{"name": f"p{k}", "text": t, "tokens": p, "positions": positions_for(len(p))}
                        for k, (t, p) in enumerate(zip(texts, prompts))]}
    with open(os.path.join(DATA, "golden_prompts.json"), "w", encoding="utf-8") as f:
        json.dump(side, f, indent=1, ensure_ascii=False)
        f.write("\n")


def random_model():
    torch.manual_seed(20261125)
    model = GPT2(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=512, layer_norm_epsilon=1e-5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    out = os.path.join(DATA, "golden_random_model")
    save_hf(model, out, prefix="transformer.", with_lm_head=True)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (1, 5, 23, 64)]
    golden(model, prompts, os.path.join(DATA, "golden_random_logits.safetensors"), all_positions=True)


if __name__ == "__main__":
    from gpt2_reference import reexec_with_openblas
    reexec_with_openblas(1)
    torch.set_num_threads(1)
    random_model()
    if "--random-only" not in sys.argv:
        bundled()
