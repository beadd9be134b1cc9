#!/usr/bin/python3
"""Independent plain-PyTorch GPT-2 (no transformers) + minimal pure-Python safetensors I/O.

Developer tool only (training the bundled tiny model, producing golden data); never needed by
the C++ library at run time or in CI.

Model (GPT-2 / Hugging Face GPT2LMHeadModel semantics):
    h = wte[tokens] + wpe[positions]
    for each block:  h = h + attn(ln_1(h));  h = h + mlp(ln_2(h))
        attn: qkv = x @ c_attn.weight + c_attn.bias   (Conv1D layout [in, out] = [C, 3C])
              causal softmax(q k^T / sqrt(hd)) v, heads concatenated, then c_proj ([C, C])
        mlp:  gelu_new(x @ c_fc.weight + c_fc.bias) @ c_proj.weight + c_proj.bias  ([C,4C], [4C,C])
    logits = ln_f(h) @ wte^T   (tied lm head)
gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

State-dict names are HF's without the "transformer." prefix: wte.weight, wpe.weight,
h.{i}.ln_1.weight, h.{i}.attn.c_attn.weight, ..., ln_f.bias.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# BLAS: Debian's torch 1.13 is built with BLAS_INFO=generic and calls libblas.so.3, which by
# default is the netlib reference BLAS (~0.7 GFLOP/s here: a 4-layer training step takes
# minutes). With libopenblas0-pthread installed, re-exec the script with its directory first on
# LD_LIBRARY_PATH so this process (only) uses OpenBLAS, leaving the system alternative alone.
# --------------------------------------------------------------------------------------------

OPENBLAS_DIR = "/usr/lib/x86_64-linux-gnu/openblas-pthread"


def reexec_with_openblas(threads=1):
    if os.environ.get("QLM_TOOLS_NO_REEXEC") or not os.path.exists(os.path.join(OPENBLAS_DIR, "libblas.so.3")):
        return
    paths = os.environ.get("LD_LIBRARY_PATH", "").split(":")
    if OPENBLAS_DIR in paths:
        return
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([OPENBLAS_DIR] + [p for p in paths if p])
    env.setdefault("OPENBLAS_NUM_THREADS", str(threads))
    env["QLM_TOOLS_NO_REEXEC"] = "1"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


# --------------------------------------------------------------------------------------------
# safetensors (pure Python)
# --------------------------------------------------------------------------------------------

_DT_TO_NP = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


def _np_dtype_name(a):
    d = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    for k, v in _DT_TO_NP.items():
        if v == d:
            return k
    raise TypeError(f"safetensors: unsupported dtype {a.dtype}")


def save_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> numpy array or torch tensor. Written in insertion order.

    Header: 8-byte little-endian length N, then N bytes of JSON padded with spaces to a
    multiple of 8, then the raw little-endian data of each tensor back to back."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous().numpy()
        a = np.ascontiguousarray(t)
        dt = _np_dtype_name(a)
        a = a.astype(_DT_TO_NP[dt], copy=False)
        raw = a.tobytes(order="C")
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata is not None:
        header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **header}
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    """Returns (dict name -> numpy array, metadata dict or None)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, info in header.items():
        dt = _DT_TO_NP[info["dtype"]]
        s, e = info["data_offsets"]
        a = np.frombuffer(data, dtype=dt, count=(e - s) // dt.itemsize, offset=base + s)
        out[name] = a.reshape(info["shape"]).copy()
    return out, meta


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------

def hf_gpt2_config(n_layer, n_head, n_embd, n_positions, vocab_size=50257, layer_norm_epsilon=1e-5):
    """A config.json dict laid out like Hugging Face's gpt2 config."""
    return {
        "_name_or_path": "gpt2",
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": layer_norm_epsilon,
        "model_type": "gpt2",
        "n_ctx": n_positions,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_inner": None,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------

def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Conv1D(nn.Module):
    """Linear layer with weight stored [in, out] (GPT-2 / HF Conv1D layout): y = x @ W + b."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class Attention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        assert n_embd % n_head == 0
        self.n_head = n_head
        self.c_attn = Conv1D(n_embd, 3 * n_embd)
        self.c_proj = Conv1D(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        hd = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)                       # [B, T, C] each
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)               # [B, H, T, hd]
        k = k.view(B, T, self.n_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)                 # [B, H, T, T]
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)                  # heads concatenated
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = Conv1D(n_embd, 4 * n_embd)
        self.c_proj = Conv1D(4 * n_embd, n_embd)

    def forward(self, x):
        return self.c_proj(gelu_new(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, eps):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps)
        self.attn = Attention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, n_positions, vocab_size=50257, layer_norm_epsilon=1e-5):
        super().__init__()
        self.config = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                           vocab_size=vocab_size, layer_norm_epsilon=layer_norm_epsilon)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head, layer_norm_epsilon) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)
        # GPT-2 scales the residual output projections by 1/sqrt(2 * n_layer).
        for blk in self.h:
            nn.init.normal_(blk.attn.c_proj.weight, std=0.02 / math.sqrt(2 * n_layer))
            nn.init.normal_(blk.mlp.c_proj.weight, std=0.02 / math.sqrt(2 * n_layer))

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"],
                   cfg["vocab_size"], cfg.get("layer_norm_epsilon", 1e-5))

    def hidden(self, idx):
        """idx: [B, T] int64 -> final hidden states after ln_f, [B, T, C]."""
        B, T = idx.shape
        assert T <= self.config["n_positions"], f"sequence {T} > n_positions"
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)[None]
        for blk in self.h:
            x = blk(x)
        return self.ln_f(x)

    def forward(self, idx):
        """idx: [B, T] -> logits [B, T, vocab] (tied head)."""
        return self.hidden(idx) @ self.wte.weight.t()

    def loss(self, idx, targets):
        """Mean cross-entropy; targets == -100 are ignored."""
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, top_k=None, temperature=1.0, generator=None):
        """Greedy when top_k is None, else top-k sampling. idx: [1, T]."""
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config["n_positions"]:]
            logits = self(ctx)[:, -1, :] / temperature
            if top_k is None:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                v, ix = torch.topk(logits, top_k)
                probs = F.softmax(v, dim=-1)
                nxt = ix.gather(-1, torch.multinomial(probs, 1, generator=generator))
            idx = torch.cat([idx, nxt], dim=1)
        return idx


# --------------------------------------------------------------------------------------------
# HF-layout save / load
# --------------------------------------------------------------------------------------------

def hf_state_dict(model):
    """Tensors under HF GPT-2 names (no prefix, no lm_head), F32, in a stable order."""
    out = {}
    sd = model.state_dict()
    out["wte.weight"] = sd["wte.weight"]
    out["wpe.weight"] = sd["wpe.weight"]
    for i in range(model.config["n_layer"]):
        for n in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                  "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                  "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"):
            out[f"h.{i}.{n}"] = sd[f"h.{i}.{n}"]
    out["ln_f.weight"] = sd["ln_f.weight"]
    out["ln_f.bias"] = sd["ln_f.bias"]
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def save_hf(model, model_dir, prefix="", with_lm_head=False):
    os.makedirs(model_dir, exist_ok=True)
    c = model.config
    cfg = hf_gpt2_config(c["n_layer"], c["n_head"], c["n_embd"], c["n_positions"],
                         c["vocab_size"], c["layer_norm_epsilon"])
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    sd = {prefix + k: v for k, v in hf_state_dict(model).items()}
    if with_lm_head:
        sd["lm_head.weight"] = sd[prefix + "wte.weight"].clone()
    save_safetensors(os.path.join(model_dir, "model.safetensors"), sd, metadata={"format": "pt"})


def load_hf(model_dir, dtype=torch.float32):
    """Load a HF-layout GPT-2 (config.json + model.safetensors, with or without the
    'transformer.' prefix; an explicit lm_head.weight must equal wte and is ignored)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    tensors, _ = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    sd = {}
    for k, v in tensors.items():
        if k.startswith("transformer."):
            k = k[len("transformer."):]
        sd[k] = torch.from_numpy(v)
    lm_head = sd.pop("lm_head.weight", None)
    if lm_head is not None:
        assert torch.equal(lm_head, sd["wte.weight"]), "untied lm_head not supported"
    model = GPT2.from_config(cfg)
    model.load_state_dict(sd, strict=True)
    return model.to(dtype).eval(), cfg


# --------------------------------------------------------------------------------------------
# perplexity (Hugging Face "perplexity of fixed-length models", sliding window with stride)
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def sliding_window_nll(model, ids, max_length, stride, dtype=torch.float64):
    """Returns (nll_sum, scored_tokens) over the token list `ids`.

    Windows [begin, end) with begin = 0, stride, 2*stride, ..., end = min(begin + max_length, N);
    in each window only the last (end - prev_end) tokens are targets (the others are context,
    label -100), so every token from index 1 on is scored exactly once (token 0 has no context).
    The NLL is summed per token (exact token-weighted sum, not an average of window means)
    and accumulated in float64. Stops after the window that reaches the end of the text."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = ids.numel()
    nll_sum = 0.0
    scored = 0
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        trg_len = end - prev_end
        x = ids[begin:end][None]
        logits = model(x)[0].to(dtype)                          # [L, V]
        logp = torch.log_softmax(logits[:-1], dim=-1)           # predicts x[1:]
        tgt = x[0, 1:]
        tok_nll = -logp.gather(1, tgt[:, None])[:, 0]           # [L-1]
        # targets are positions end-trg_len .. end-1 of the text, i.e. the last trg_len labels;
        # label 0 of the window (text position `begin`) has no prediction and is never scored.
        k = min(trg_len, end - begin - 1)
        nll_sum += float(tok_nll[-k:].sum()) if k > 0 else 0.0
        scored += k
        prev_end = end
        if end == n:
            break
    return nll_sum, scored
