"""The steps a rank runs before the engine reports ready, so that no request pays for compilation.

Triton compiles a kernel once per set of constexprs and per "specialisation" of its integer arguments
(== 1, divisible by 16, other), the first time it is launched with them: a second or more each on a
GPU. The steps below reach every such variant a prefill or mixed step can launch: 1, 16k and other
token counts, sequence counts and query-block counts, sequences with and without a cached prefix,
one-token sequences (decode rows riding along in a mixed step), and image tokens when the model has
them, run eagerly (steps longer than the prefill graphs' last bucket run so). Decode steps, and prefill and
mixed steps up to that bucket, are covered by capturing every CUDA-graph bucket (`capture_all` of
`DecodeGraphRunner` and `PrefillGraphRunner`: the graphs' padded shapes compile then),
and the decode rows of mixed steps (any number of them) by `ModelRunner.warm_up` running the decode
kernel alone at every row count and context bucket.

The steps use request rows from 0 and slots from 0 of a fresh pool: what they write is overwritten by
the first real requests before it is read (a request reads only positions it has written).
"""

from __future__ import annotations

import numpy as np

from llm_core.batch import SeqInput, StepInput

# (prefix_len, new tokens) per sequence of each warm-up step.
_SHAPES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 1),),
    ((0, 16),),
    ((0, 17),),
    ((0, 5), (0, 11)),
    ((16, 16),),
    ((3, 7), (0, 9), (20, 1)),
    tuple((8, 1) for _ in range(16)),
    tuple((8, 1) for _ in range(16)) + ((0, 40),),
    tuple((4 * i, 1) for i in range(1, 32)) + ((32, 33),),
    # Long queries: token counts neither 1 nor a multiple of 16, then a multiple of 16, at chunk sizes.
    ((0, 385),),
    ((0, 2048),),
)


def warmup_steps(
    num_slots: int,
    max_rows: int,
    max_model_len: int,
    image_token: int | None = None,
    num_image_tokens: int | None = 0,
    hidden_size: int = 0,
) -> list[StepInput]:
    """The warm-up steps that fit the pool (`num_slots`), the request table (`max_rows`) and the context."""
    steps = []
    for shape in _SHAPES:
        if len(shape) > max_rows or max(p + n for p, n in shape) > max_model_len:
            continue
        seqs, slot = [], 0
        for row, (prefix_len, n) in enumerate(shape):
            if slot + n > num_slots:
                break
            seqs.append(SeqInput(row, prefix_len, [1 + (row + i) % 7 for i in range(n)], list(range(slot, slot + n))))
            slot += n
        if len(seqs) == len(shape):
            # Leading one-token rows with a prefix, then a chunk: a mixed step's decode rows.
            leading = next((i for i, (p, n) in enumerate(shape) if not (p > 0 and n == 1)), len(shape))
            num_decode = leading if 0 < leading < len(shape) else 0
            steps.append(StepInput(is_prefill=True, seqs=seqs, num_decode=num_decode))
    n = (num_image_tokens or 0) + 2
    if image_token is not None and num_image_tokens and n <= min(num_slots, max_model_len):
        ids = [1] + [image_token] * num_image_tokens + [1]
        embeds = np.zeros((num_image_tokens, hidden_size), dtype=np.float32)
        steps.append(StepInput(is_prefill=True, seqs=[SeqInput(0, 0, ids, list(range(n)), n, embeds)]))
    return steps
