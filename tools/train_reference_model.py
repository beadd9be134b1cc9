#!/usr/bin/python3
"""Train the bundled tiny GPT-2 (models/gpt2-tiny-kjv) on the King James Bible.

Developer tool (needs PyTorch; the C++ library never does). Recipe:

    apt-get install bible-kjv python3-regex          # the `bible` program + the text
    /usr/bin/python3 tools/train_reference_model.py --minutes 25

Corpus: the KJV text of the Debian package bible-kjv-text (public domain), dumped with
`bible "Gen1:1-Rev22:21"`, cleaned into plain prose (chapter headings and verse numbers dropped,
wrapped lines re-joined: one verse per line, a blank line between chapters). Split: every 25th
chapter (chapter index % 25 == 12, counting the 1189 chapters from 0 in canonical order) is
held out and written to models/gpt2-tiny-kjv/heldout.txt; the rest is training text (regenerated
on every run, not committed).

Training: fixed seed, deterministic data order (a seeded permutation of non-overlapping
256+1-token chunks per epoch, each chunk at a seeded random offset), AdamW with linear warmup
and cosine decay. The run is budgeted in wall-clock time (--minutes): the cosine schedule
follows the elapsed fraction of the budget. For a step-exact replay pass --steps N (the
schedule then follows the step count; the log reports the step count a timed run reached).
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_bpe  # noqa: E402
from gpt2_reference import GPT2, save_hf, load_hf, sliding_window_nll, reexec_with_openblas  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(REPO, "models", "gpt2-tiny-kjv")
TOK_DIR = os.path.join(REPO, "models", "gpt2-tokenizer")
HELDOUT_EVERY = 25
HELDOUT_PHASE = 12


# ---------------------------------------------------------------------------------- corpus

def read_kjv_raw(raw_path=None):
    if raw_path and os.path.exists(raw_path):
        with open(raw_path, encoding="utf-8") as f:
            return f.read()
    out = subprocess.run(["bible", "Gen1:1-Rev22:21"], check=True, capture_output=True)
    text = out.stdout.decode("utf-8")
    if raw_path:
        with open(raw_path, "w", encoding="utf-8") as f:
            f.write(text)
    return text


def parse_chapters(raw):
    """-> list of (heading, [verse, ...]). Headings are the non-indented lines that follow a
    blank line ("Genesis 1", "Song of Solomon 3"); verses start with "  <n> "; any other
    non-empty line continues the previous verse."""
    chapters = []
    verse_re = re.compile(r"^\s+(\d+) (.*)$")
    prev_blank = True
    for line in raw.split("\n"):
        line = line.rstrip()
        if not line:
            prev_blank = True
            continue
        m = verse_re.match(line)
        if prev_blank and not m:
            assert re.match(r"^[1-3]?\s?[A-Z][A-Za-z ]* \d+$", line), f"unexpected heading {line!r}"
            chapters.append((line, []))
        elif m:
            verses = chapters[-1][1]
            assert int(m.group(1)) == len(verses) + 1, f"verse numbering in {chapters[-1][0]}"
            verses.append(m.group(2).strip())
        else:
            chapters[-1][1][-1] += " " + line.strip()
        prev_blank = False
    return chapters


def chapter_text(verses):
    return "\n".join(" ".join(v.split()) for v in verses) + "\n"


def build_corpus(raw_path=None):
    """-> (train_text, heldout_text, n_chapters, heldout_headings)."""
    chapters = parse_chapters(read_kjv_raw(raw_path))
    assert len(chapters) == 1189, len(chapters)
    train, held, held_names = [], [], []
    for i, (name, verses) in enumerate(chapters):
        if i % HELDOUT_EVERY == HELDOUT_PHASE:
            held.append(chapter_text(verses))
            held_names.append(name)
        else:
            train.append(chapter_text(verses))
    return "\n".join(train), "\n".join(held), len(chapters), held_names


# ---------------------------------------------------------------------------------- training

def lr_at(progress, base_lr, min_lr, warmup_frac):
    if progress < warmup_frac:
        return base_lr * progress / warmup_frac
    p = min(1.0, (progress - warmup_frac) / (1.0 - warmup_frac))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * p))


class ChunkLoader:
    """Deterministic: epoch e uses a permutation from a generator seeded with (seed, e)."""

    def __init__(self, tokens, seq_len, batch, seed):
        self.tokens = torch.as_tensor(tokens, dtype=torch.long)
        self.seq_len, self.batch, self.seed = seq_len, batch, seed
        self.epoch, self.order, self.pos = -1, None, 0
        self._new_epoch()

    def _new_epoch(self):
        self.epoch += 1
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        L = self.seq_len + 1
        shift = int(torch.randint(0, L, (1,), generator=g))
        n_chunks = (self.tokens.numel() - shift) // L
        self.starts = shift + torch.randperm(n_chunks, generator=g) * L
        self.pos = 0

    def next(self):
        if self.pos + self.batch > self.starts.numel():
            self._new_epoch()
        s = self.starts[self.pos:self.pos + self.batch]
        self.pos += self.batch
        idx = s[:, None] + torch.arange(self.seq_len + 1)[None]
        chunk = self.tokens[idx]
        return chunk[:, :-1], chunk[:, 1:]


class TiedAbsentSoftmax:
    """Exact full-vocabulary cross-entropy at the cost of a ~10k-way softmax.

    Only ~9.8k of the 50257 ids occur in the training text; the lm head (h @ wte^T over 50257
    rows) is ~85% of the FLOPs. The other ("absent") ids never occur as inputs or targets, so in
    full-softmax training their rows only ever receive the same kind of gradient (pushed down).
    We tie all absent rows to one shared vector w_abs (stored in the row of the first absent id):
    then the full softmax over 50257 logits equals a softmax over the present ids plus one extra
    logit  h . w_abs + log(n_absent),  exactly. Before saving, w_abs is copied into every absent
    row, so the saved model is an ordinary GPT-2 whose full-vocabulary softmax is the one trained.
    """

    def __init__(self, model, present_ids):
        V = model.config["vocab_size"]
        present = torch.as_tensor(sorted(set(int(t) for t in present_ids)), dtype=torch.long)
        mask = torch.ones(V, dtype=torch.bool)
        mask[present] = False
        self.absent = mask.nonzero()[:, 0]
        self.rep = int(self.absent[0])
        self.cols = torch.cat([present, torch.tensor([self.rep])])
        self.log_n_absent = math.log(self.absent.numel())
        self.remap = torch.full((V,), -1, dtype=torch.long)
        self.remap[present] = torch.arange(present.numel())
        self.bias = torch.zeros(self.cols.numel())
        self.bias[-1] = self.log_n_absent
        self.tie(model)

    @torch.no_grad()
    def tie(self, model):
        """Copy w_abs into every absent row (at init and before saving/evaluating)."""
        w = model.wte.weight
        w[self.absent] = w[self.rep].clone()

    def loss(self, model, x, y):
        h = model.hidden(x)
        logits = h @ model.wte.weight[self.cols].t() + self.bias
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.remap[y].reshape(-1))


def make_optimizer(model, lr, weight_decay):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def sample(model, enc, prompt, n, top_k=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor([enc.encode(prompt)], dtype=torch.long)
    y = model.generate(x, n, top_k=top_k, generator=g)
    return enc.decode(y[0].tolist())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-clock training budget")
    ap.add_argument("--steps", type=int, default=0, help="train exactly N steps instead (schedule by steps)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=float, default=0.03, help="warmup as a fraction of the run")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--init", default=None, help="start from the weights of this model directory (continued training)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch + OpenBLAS threads (1 is faster on the shared 2-core box)")
    ap.add_argument("--work", default="/tmp/train", help="scratch dir (raw dump, token cache, checkpoint)")
    ap.add_argument("--out", default=MODEL_DIR)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--ckpt-every", type=float, default=120.0,
                    help="seconds between checkpoints (model + optimizer + data position) in --work")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from <work>/checkpoint.pt (same arguments)")
    ap.add_argument("--no-save", action="store_true", help="throughput test: do not write the model")
    ap.add_argument("--prepare-only", action="store_true", help="write heldout.txt and exit")
    args = ap.parse_args()
    reexec_with_openblas(args.threads)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    os.makedirs(args.work, exist_ok=True)

    train_text, held_text, n_ch, held_names = build_corpus(os.path.join(args.work, "kjv_raw.txt"))
    print(f"corpus: {n_ch} chapters; train {len(train_text)} chars, held-out {len(held_names)} chapters "
          f"{len(held_text)} chars ({100.0 * len(held_text) / (len(held_text) + len(train_text)):.1f}%)", flush=True)
    print("held-out chapters: " + ", ".join(held_names), flush=True)
    if not args.no_save:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
            f.write(held_text)
    if args.prepare_only:
        return

    enc = gpt2_bpe.get_encoder(TOK_DIR)
    cache = os.path.join(args.work, "train_tokens.npy")
    t0 = time.time()
    if os.path.exists(cache):
        tokens = np.load(cache)
    else:
        tokens = np.array(enc.encode(train_text), dtype=np.int32)
        np.save(cache, tokens)
    held_ids = enc.encode(held_text)
    print(f"tokens: train {tokens.size}, held-out {len(held_ids)} ({time.time() - t0:.1f}s)", flush=True)

    model = GPT2(n_layer=4, n_head=4, n_embd=128, n_positions=256, vocab_size=50257, layer_norm_epsilon=1e-5)
    if args.init:
        init, _ = load_hf(args.init)
        model.load_state_dict(init.state_dict())
        print(f"initialised from {args.init}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params} ({n_params * 4 / 2**20:.2f} MiB F32)", flush=True)
    opt = make_optimizer(model, args.lr, args.weight_decay)
    loader = ChunkLoader(tokens, args.seq_len, args.batch, args.seed)

    head = TiedAbsentSoftmax(model, np.append(tokens, gpt2_bpe.EOT_ID))
    print(f"softmax: {head.cols.numel() - 1} present ids + 1 tied row for {head.absent.numel()} absent ids",
          flush=True)

    budget = args.minutes * 60.0
    ckpt_path = os.path.join(args.work, "checkpoint.pt")
    step, ema, done_before, lv = 0, None, 0.0, float("nan")
    if args.resume:
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, ema, done_before = ck["step"], ck["ema"], ck["elapsed"]
        loader.epoch = ck["epoch"] - 1
        loader._new_epoch()
        loader.pos = ck["pos"]
        torch.set_rng_state(ck["rng"])
        print(f"resumed from {ckpt_path}: step {step}, {done_before:.0f}s done", flush=True)
    start = time.time() - done_before   # elapsed time counts the interrupted part
    last_ckpt = time.time()
    model.train()
    while True:
        if not args.no_save and time.time() - last_ckpt >= args.ckpt_every:
            tmp = ckpt_path + ".tmp"
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "ema": ema,
                        "elapsed": time.time() - start, "epoch": loader.epoch, "pos": loader.pos,
                        "rng": torch.get_rng_state()}, tmp)
            os.replace(tmp, ckpt_path)
            last_ckpt = time.time()
        elapsed = time.time() - start
        if args.steps:
            if step >= args.steps:
                break
            progress = step / args.steps
        else:
            if elapsed >= budget:
                break
            progress = elapsed / budget
        lr = lr_at(progress, args.lr, args.min_lr, args.warmup)
        for gr in opt.param_groups:
            gr["lr"] = lr
        x, y = loader.next()
        loss = head.loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        lv = loss.item()
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if step % args.log_every == 0 or step == 1:
            el = time.time() - start
            print(f"step {step:6d}  loss {lv:.4f}  ema {ema:.4f}  lr {lr:.2e}  epoch {loader.epoch}  "
                  f"{el:7.1f}s  {step * args.batch * args.seq_len / el:7.0f} tok/s", flush=True)
    train_time = time.time() - start
    seen = step * args.batch * args.seq_len
    print(f"done: {step} steps, {seen} tokens ({seen / tokens.size:.2f} epochs) in {train_time:.0f}s; "
          f"final loss {lv:.4f}, ema {ema:.4f}", flush=True)

    model.eval()
    head.tie(model)
    with torch.no_grad():  # the tied-row loss is the full-vocabulary loss
        x, y = loader.next()
        a, b = head.loss(model, x, y).item(), model.loss(x, y).item()
    print(f"check: tied-row loss {a:.6f} vs full-vocabulary loss {b:.6f}", flush=True)
    assert abs(a - b) < 1e-3 * max(1.0, abs(b)), (a, b)
    t1 = time.time()
    nll, n = sliding_window_nll(model, held_ids, 256, 128)
    print(f"held-out: {n} tokens scored, nll/token {nll / n:.4f}, perplexity {math.exp(nll / n):.3f} "
          f"({time.time() - t1:.0f}s)", flush=True)

    for prompt in ("Once upon a time", "And the LORD said"):
        print(f"--- greedy  {prompt!r}: {sample(model, enc, prompt, 40)!r}", flush=True)
        print(f"--- top-k40 {prompt!r}: {sample(model, enc, prompt, 40, top_k=40, seed=1)!r}", flush=True)

    if args.no_save:
        return
    save_hf(model, args.out)
    shutil.copyfile(os.path.join(TOK_DIR, "encoder.json"), os.path.join(args.out, "vocab.json"))
    shutil.copyfile(os.path.join(TOK_DIR, "vocab.bpe"), os.path.join(args.out, "merges.txt"))
    # round-trip check of the written file
    m2, _ = load_hf(args.out)
    with torch.no_grad():
        xx = torch.tensor([held_ids[:64]])
        d = (m2(xx) - model(xx)).abs().max().item()
    assert d == 0.0, d
    stats = {"steps": step, "batch": args.batch, "seq_len": args.seq_len, "train_tokens_seen": seen,
             "train_corpus_tokens": int(tokens.size), "epochs": seen / tokens.size,
             "train_seconds": round(train_time, 1), "final_loss": lv, "final_loss_ema": ema,
             "heldout_tokens": len(held_ids), "heldout_scored": n, "heldout_ppl": math.exp(nll / n),
             "params": n_params, "seed": args.seed, "lr": args.lr, "min_lr": args.min_lr,
             "warmup": args.warmup, "weight_decay": args.weight_decay, "torch": torch.__version__}
    with open(os.path.join(args.work, "train_stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    print(f"saved {args.out}: {json.dumps(stats)}", flush=True)


if __name__ == "__main__":
    main()
