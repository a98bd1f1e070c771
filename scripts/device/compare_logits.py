"""Compare two logits files written by `benchmarks/tp_decode.py --save-logits` (e.g. LLM_PDL on/off).

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
        x, y = a[key].float(), b[key].float()
        diff = (x - y).abs().max().item()
        rel = ((x - y).norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-6)).max().item()
        argmax = (x.argmax(-1) == y.argmax(-1)).float().mean().item()
        detail = f"max abs diff {diff:.3g}, max relative row diff {rel:.3g}, same argmax in {argmax:.0%} of rows"
        print(f"{key}: {'identical' if equal else f'DIFFERENT ({detail})'}")
    print("LOGITS", "IDENTICAL" if same and set(a) & set(b) else "DIFFER")
    return 0 if same and set(a) & set(b) else 1


if __name__ == "__main__":
    sys.exit(main())
