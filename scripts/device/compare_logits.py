"""Compare two logits files written by `benchmarks/tp_decode.py --save-logits` (e.g. LLM_CORE_PDL on/off).

python scripts/device/compare_logits.py a.pt b.pt    -> one line per common key; exit 1 if any differs
"""

from __future__ import annotations

import sys

import torch


def main() -> int:
    a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
    same = True
    for key in sorted(set(a) & set(b)):
        equal = torch.equal(a[key], b[key])
        same &= equal
        diff = (a[key].float() - b[key].float()).abs().max().item()
        print(f"{key}: {'identical' if equal else f'DIFFERENT (max abs diff {diff:.3g})'}")
    print("LOGITS", "IDENTICAL" if same and set(a) & set(b) else "DIFFER")
    return 0 if same and set(a) & set(b) else 1


if __name__ == "__main__":
    sys.exit(main())
