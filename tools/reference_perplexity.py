#!/usr/bin/python3
"""Held-out perplexity of the bundled model with the Python reference (float64).

Method: Hugging Face "Perplexity of fixed-length models" (sliding window with stride):
  - tokenize the whole text with the GPT-2 BPE (tools/gpt2_bpe.py), no BOS/EOS added;
  - windows [begin, end) for begin = 0, stride, 2*stride, ...; end = min(begin + max_length, N);
    stop after the window that reaches the end of the text;
  - in each window only the last (end - prev_end) tokens are targets (the rest is context,
    label -100); a token's prediction comes from the position before it, so the very first
    token of the text is never scored and every other token is scored exactly once
    (scored_tokens = N - 1);
  - ppl = exp(nll_sum / scored_tokens): the exact token-weighted sum of per-token NLL. (HF's
    example multiplies each window's mean loss by an approximate token count; we sum the
    per-token NLLs directly, so no averaging of window means is involved.)
The model runs in float64 (weights upcast from F32), log-softmax in float64.

    /usr/bin/python3 tools/reference_perplexity.py [--model models/gpt2-tiny-kjv] [--stride 128]
writes tests/data/reference_perplexity.json;
    /usr/bin/python3 tools/reference_perplexity.py --max-tokens 2048 --out tests/data/reference_perplexity_2048.json
writes the first-2048-token reference the sanitizer builds check (the whole text is too slow there).
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_bpe  # noqa: E402
from gpt2_reference import load_hf, sliding_window_nll, reexec_with_openblas  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/gpt2-tiny-kjv", help="model dir, relative to the repo root")
    ap.add_argument("--text", default=None, help="default: <model>/heldout.txt")
    ap.add_argument("--max-length", type=int, default=0, help="default: n_positions")
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens of the text (0: all)")
    ap.add_argument("--out", default="tests/data/reference_perplexity.json")
    args = ap.parse_args()
    reexec_with_openblas(args.threads)
    torch.set_num_threads(args.threads)

    text_rel = args.text or os.path.join(args.model, "heldout.txt")
    model, cfg = load_hf(os.path.join(REPO, args.model), dtype=torch.float64)
    max_length = args.max_length or cfg["n_positions"]
    with open(os.path.join(REPO, text_rel), "rb") as f:
        raw = f.read()
    enc = gpt2_bpe.get_encoder(os.path.join(REPO, args.model))
    ids = enc.encode(raw.decode("utf-8"))
    if args.max_tokens:
        ids = ids[:args.max_tokens]
    t0 = time.time()
    nll_sum, scored = sliding_window_nll(model, ids, max_length, args.stride, dtype=torch.float64)
    ppl = math.exp(nll_sum / scored)
    out = {
        "model": args.model,
        "text": text_rel,
        "text_sha256": hashlib.sha256(raw).hexdigest(),
        "max_length": max_length,
        "stride": args.stride,
        "tokens": len(ids),
        "token_limit": args.max_tokens,
        "scored_tokens": scored,
        "nll_sum": nll_sum,
        "nll_per_token": nll_sum / scored,
        "perplexity": ppl,
        "compute_dtype": "float64",
        "method": "HF sliding window; last (end - prev_end) tokens of each window scored; "
                  "ppl = exp(sum of per-token NLL / scored_tokens)",
        "tool": "tools/reference_perplexity.py",
    }
    with open(os.path.join(REPO, args.out), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps(out, indent=2))
    print(f"({time.time() - t0:.0f}s)", file=sys.stderr)


if __name__ == "__main__":
    main()
