#!/usr/bin/env python
"""Write a deterministic tiny Hugging Face model directory (thin CLI over llm_core.testing.tiny_model).

python scripts/make_tiny_model.py --arch llava --tokenizer bpe --out models/tiny-llava [--seed 0]
    [--shards 2] [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_core.testing.tiny_model import ARCHS, DTYPES, TOKENIZERS, make_tiny_model  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a deterministic tiny HF model directory.")
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="bpe")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (the tokenizer does not depend on it)")
    parser.add_argument("--shards", type=int, default=1, help="number of safetensors files")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--tie-word-embeddings", action="store_true")
    args = parser.parse_args(argv)
    out = make_tiny_model(
        args.out, args.arch, args.tokenizer, seed=args.seed, shards=args.shards, dtype=args.dtype,
        tie_word_embeddings=args.tie_word_embeddings,
    )  # fmt: skip
    print(out)


if __name__ == "__main__":
    main()
