#!/usr/bin/env python3
"""Convert a Hugging Face GPT-2 folder to a GGUF file that llama.cpp loads (architecture "gpt2").

Reads config.json, model.safetensors (or the shards of model.safetensors.index.json; F32, F16 or
BF16; names with or without "transformer.") and the GPT-2 byte-level BPE tokenizer (vocab.json +
merges.txt, or OpenAI's encoder.json + vocab.bpe), and writes F32 weights, or F16 with --outtype f16
(1-D tensors and position_embd stay F32, as llama.cpp's own converter keeps them). Quantize the result
with llama-quantize. This is how tools/bench-vs-llama.sh gives llama.cpp the weights qlm benchmarks.

The safetensors files are parsed here with numpy; the GGUF file is written with llama.cpp's gguf-py
package (its directory on PYTHONPATH, or --gguf-py DIR). Needs numpy, and gguf-py's own imports
(on Debian: apt-get install python3-numpy python3-yaml python3-sentencepiece). No torch, no
transformers.

    PYTHONPATH=llama.cpp/gguf-py python3 tools/hf_to_gguf_gpt2.py MODEL_DIR out-f32.gguf [--outtype f16]
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}

# Hugging Face GPT-2 names (after "h.N.") -> GGUF names (after "blk.N."); see gguf-py's
# tensor_mapping.py (MODEL_TENSOR.ATTN_NORM, ...) and constants.py (TENSOR_NAMES).
LAYER_NORMS = {"ln_1": "attn_norm", "ln_2": "ffn_norm"}
CONV1D_LAYERS = {"attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def read_safetensors(path):
    """All tensors of one safetensors file as float32 numpy arrays, by name."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; only F32, F16 and BF16 are read")
        begin, end = info["data_offsets"]
        values = data[begin:end].view(dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = values.astype(np.float32)
    return tensors


def read_checkpoint(model_dir):
    """The checkpoint's tensors by name, without any "transformer." prefix."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for file in files:
        for name, values in read_safetensors(model_dir / file).items():
            tensors[name.removeprefix("transformer.")] = values
    return tensors


def read_tokenizer(model_dir, vocab_size, token_type):
    """(tokens by id, token types, merges) of a GPT-2 byte-level BPE vocabulary."""
    for vocab_file, merges_file in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (model_dir / vocab_file).exists() and (model_dir / merges_file).exists():
            break
    else:
        raise FileNotFoundError(f"{model_dir}: no vocab.json + merges.txt or encoder.json + vocab.bpe")
    vocab = json.loads((model_dir / vocab_file).read_text(encoding="utf-8"))
    if max(vocab.values()) >= vocab_size:
        raise ValueError(f"{vocab_file} has ids up to {max(vocab.values())}, beyond vocab_size {vocab_size}")
    by_id = {i: token for token, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(token_type.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(token_type.CONTROL if by_id[i] == "<|endoftext|>" else token_type.NORMAL)
    lines = (model_dir / merges_file).read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines if line and not line.startswith("#version")]
    for merge in merges:
        if len(merge.split(" ")) != 2:
            raise ValueError(f"{merges_file}: malformed merge {merge!r}")
    return tokens, types, merges


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="Hugging Face GPT-2 folder")
    parser.add_argument("output", type=Path, help="GGUF file to write")
    parser.add_argument("--outtype", choices=("f32", "f16"), default="f32")
    parser.add_argument("--gguf-py", type=Path, help="llama.cpp's gguf-py directory (otherwise from PYTHONPATH)")
    args = parser.parse_args()
    if args.gguf_py:
        sys.path.insert(0, str(args.gguf_py))
    import gguf

    config = json.loads((args.model_dir / "config.json").read_text())
    if config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"config.json: model_type {config['model_type']!r} is not gpt2")
    activation = config.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"config.json: activation_function {activation!r}; llama.cpp's gpt2 computes tanh GELU only")
    n_layer, n_head, n_embd = config["n_layer"], config["n_head"], config["n_embd"]
    n_ctx = config.get("n_positions", config.get("n_ctx", 1024))
    n_inner = config.get("n_inner") or 4 * n_embd
    vocab_size = config["vocab_size"]

    tensors = read_checkpoint(args.model_dir)
    f16 = args.outtype == "f16"
    out = {}

    def put(gguf_name, values, matrix_f16=True):
        values = np.ascontiguousarray(values)
        if f16 and matrix_f16 and values.ndim == 2:
            values = values.astype(np.float16)
        out[gguf_name] = values

    def take(name, shape):
        if name not in tensors:
            raise KeyError(f"{args.model_dir}: tensor {name} is missing")
        values = tensors.pop(name)
        if list(values.shape) != list(shape):
            raise ValueError(f"{args.model_dir}: tensor {name} has shape {list(values.shape)}, expected {list(shape)}")
        return values

    wte = take("wte.weight", (vocab_size, n_embd))
    put("token_embd.weight", wte)
    put("position_embd.weight", take("wpe.weight", (n_ctx, n_embd)), matrix_f16=False)
    put("output_norm.weight", take("ln_f.weight", (n_embd,)))
    put("output_norm.bias", take("ln_f.bias", (n_embd,)))
    # GPT2LMHeadModel ties lm_head to wte; llama.cpp's gpt2 needs the head as its own tensor.
    put("output.weight", tensors.pop("lm_head.weight", wte))
    conv1d_in_out = {"attn.c_attn": (n_embd, 3 * n_embd), "attn.c_proj": (n_embd, n_embd),
                     "mlp.c_fc": (n_embd, n_inner), "mlp.c_proj": (n_inner, n_embd)}
    for i in range(n_layer):
        for hf, gg in LAYER_NORMS.items():
            put(f"blk.{i}.{gg}.weight", take(f"h.{i}.{hf}.weight", (n_embd,)))
            put(f"blk.{i}.{gg}.bias", take(f"h.{i}.{hf}.bias", (n_embd,)))
        for hf, gg in CONV1D_LAYERS.items():
            # Conv1D holds its weight as [in, out]; GGUF wants [out, in] (ggml's ne = {in, out}).
            n_in, n_out = conv1d_in_out[hf]
            put(f"blk.{i}.{gg}.weight", take(f"h.{i}.{hf}.weight", (n_in, n_out)).T)
            put(f"blk.{i}.{gg}.bias", take(f"h.{i}.{hf}.bias", (n_out,)))
        # Old checkpoints store the causal mask as a buffer; llama.cpp builds its own.
        tensors.pop(f"h.{i}.attn.bias", None)
        tensors.pop(f"h.{i}.attn.masked_bias", None)
    if tensors:
        raise ValueError(f"{args.model_dir}: tensors not converted: {', '.join(sorted(tensors))}")

    tokens, types, merges = read_tokenizer(args.model_dir, vocab_size, gguf.TokenType)

    writer = gguf.GGUFWriter(args.output, "gpt2")
    writer.add_name(args.model_dir.resolve().name)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_inner)
    writer.add_block_count(n_layer)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(config.get("layer_norm_epsilon", 1e-5))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.get("bos_token_id", 50256))
    writer.add_eos_token_id(config.get("eos_token_id", 50256))
    for name, values in out.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"hf_to_gguf_gpt2: wrote {args.output} ({args.outtype}, {len(out)} tensors, {n_layer} layers, "
          f"n_embd {n_embd}, vocab {vocab_size})")


if __name__ == "__main__":
    main()
