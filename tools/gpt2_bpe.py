#!/usr/bin/python3
"""Faithful Python port of OpenAI's GPT-2 byte-level BPE tokenizer (gpt-2/src/encoder.py).

Reads `encoder.json` (token string -> id) and `vocab.bpe` (merge list, rank = line order)
from models/gpt2-tokenizer/ by default. Developer tool only: used to tokenize the training
corpus and the golden-test prompts; the C++ library has its own tokenizer.

Requires the `regex` module (Debian: python3-regex) for \\p{L} / \\p{N}.

    /usr/bin/python3 tools/gpt2_bpe.py "Hello world"      # -> [15496, 995]
"""
import json
import os
import sys
from functools import lru_cache

import regex as re

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(REPO_ROOT, "models", "gpt2-tokenizer")

# The pre-tokenizer pattern of the original encoder.py, verbatim.
PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

EOT_ID = 50256  # "<|endoftext|>"


@lru_cache()
def bytes_to_unicode():
    """Map every byte 0..255 to a printable unicode character (same table as encoder.py)."""
    bs = (list(range(ord("!"), ord("~") + 1))
          + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def get_pairs(word):
    pairs = set()
    prev = word[0]
    for ch in word[1:]:
        pairs.add((prev, ch))
        prev = ch
    return pairs


class Encoder:
    def __init__(self, encoder, bpe_merges, errors="replace"):
        self.encoder = encoder
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.errors = errors
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.bpe_ranks = dict(zip(bpe_merges, range(len(bpe_merges))))
        self.cache = {}
        self.pat = re.compile(PAT)

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        pairs = get_pairs(word)
        if not pairs:
            return token
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text):
        bpe_tokens = []
        for token in re.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return bpe_tokens

    def decode(self, tokens):
        text = "".join(self.decoder[t] for t in tokens)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors=self.errors)


def get_encoder(model_dir=DEFAULT_DIR):
    """Load encoder.json + vocab.bpe (or HF names vocab.json + merges.txt) from model_dir."""
    enc_path = os.path.join(model_dir, "encoder.json")
    bpe_path = os.path.join(model_dir, "vocab.bpe")
    if not os.path.exists(enc_path):
        enc_path = os.path.join(model_dir, "vocab.json")
        bpe_path = os.path.join(model_dir, "merges.txt")
    with open(enc_path, "r", encoding="utf-8") as f:
        encoder = json.load(f)
    with open(bpe_path, "r", encoding="utf-8") as f:
        bpe_data = f.read()
    # First line is the "#version: 0.2" header; last line is empty.
    bpe_merges = [tuple(m.split()) for m in bpe_data.split("\n")[1:-1]]
    return Encoder(encoder=encoder, bpe_merges=bpe_merges)


if __name__ == "__main__":
    enc = get_encoder()
    text = " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "Hello world"
    ids = enc.encode(text)
    print(ids)
    assert enc.decode(ids) == text
