#!/usr/bin/env python3
"""Writes models/gpt2-tiny-kjv/calibration.txt: calibration text for GPTQ / AWQ / static INT8,
taken from the TRAINING split of the bundled model's corpus (never from heldout.txt, which is
the evaluation text). Every 12th training chapter, about 330 KB, in canonical order.

    /usr/bin/python3 tools/make_calibration_text.py   # needs the `bible` program (Debian bible-kjv)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_reference_model import build_corpus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    train, heldout, _, _ = build_corpus()
    chapters = train.split("\n\n")
    picked = [c for i, c in enumerate(chapters) if i % 12 == 5]
    text = "\n".join(picked)
    held = set(heldout.split("\n\n"))
    assert not any(c in held for c in picked), "calibration text overlaps the held-out split"
    out = os.path.join(ROOT, "models", "gpt2-tiny-kjv", "calibration.txt")
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{out}: {len(picked)} chapters, {len(text)} characters")


if __name__ == "__main__":
    main()
