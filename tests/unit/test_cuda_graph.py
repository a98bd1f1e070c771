"""Decode CUDA-graph bookkeeping without a GPU: buckets, padding, and the static-buffer path.

The graph capture itself needs CUDA (scripts/device/gpu_engine_check.py, gpu_tp_check.py);
here `DecodeGraphRunner(capture=False)` runs the same static-buffer path eagerly on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_core.batch import SeqInput, StepInput, TokenFeed
from llm_core.config import EngineConfig
from llm_core.worker.cuda_graph import (
    DecodeGraphRunner,
    PrefillGraphRunner,
    batch_buckets,
    bucket_for,
    context_buckets,
    decode_arrays,
    is_plain_decode,
    pad_decode_step,
    token_buckets,
)
from llm_core.worker.model_runner import ModelRunner, prefill_graph_tokens


def test_batch_buckets() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(16) == (1, 2, 4, 8, 16)
    assert batch_buckets(256) == (1, 2, 4, 8, 16) + tuple(range(24, 256, 16)) + (256,)
    assert batch_buckets(100) == (1, 2, 4, 8, 16, 24, 40, 56, 72, 88, 100)
    assert batch_buckets(20) == (1, 2, 4, 8, 16, 20)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    with pytest.raises(ValueError):
        batch_buckets(0)


def test_context_buckets() -> None:
    assert context_buckets(8192) == (4096, 8192)
    assert context_buckets(520) == (520,)
    assert context_buckets(131072) == (4096, 8192, 16384, 32768, 65536, 131072)
    assert context_buckets(10000, min_bucket=1024) == (1024, 2048, 4096, 8192, 10000)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, 1), (2, 2), (3, 4), (5, 8), (17, 24), (25, 40), (64, 72), (72, 72), (89, 100), (100, 100), (101, None)],
)
def test_bucket_for(n: int, expected: int | None) -> None:
    assert bucket_for(n, batch_buckets(100)) == expected


def _decode_step(rows, prefixes, tokens, slots) -> StepInput:
    seqs = [SeqInput(r, p, [t], [s], 3) for r, p, t, s in zip(rows, prefixes, tokens, slots, strict=True)]
    return StepInput(is_prefill=False, seqs=seqs)


def test_pad_decode_step_and_arrays() -> None:
    step = _decode_step([5, 0, 2], [10, 3, 7], [11, 12, 13], [40, 41, 42])
    dummy_row, dummy_slot, stride = 16, 500, 64
    padded = pad_decode_step(step, 4, dummy_row, dummy_slot)
    assert padded.seqs[:3] == step.seqs and len(padded.seqs) == 4
    pad = padded.seqs[3]
    assert (pad.row, pad.prefix_len, pad.new_token_ids, pad.new_slots) == (dummy_row, 0, [0], [dummy_slot])

    arrays = decode_arrays(step.seqs, 4, dummy_row, dummy_slot, stride)
    expected = np.array(
        [
            [11, 12, 13, 0],  # input_ids
            [10, 3, 7, 0],  # positions
            [5 * 64 + 10, 0 * 64 + 3, 2 * 64 + 7, 16 * 64],  # flat req_to_slot index
            [40, 41, 42, 500],  # out_slots
            [5, 0, 2, 16],  # req_rows
            [10, 3, 7, 0],  # prefix_lens
            [11, 4, 8, 1],  # seq_lens: padded rows read one key, the dummy slot
        ]
    )
    np.testing.assert_array_equal(arrays, expected)
    np.testing.assert_array_equal(arrays, decode_arrays(padded.seqs, 4, dummy_row, dummy_slot, stride))
    np.testing.assert_array_equal(decode_arrays((), 2, dummy_row, dummy_slot, stride)[:, 0], expected[:, 3])
    with pytest.raises(AssertionError):
        pad_decode_step(step, 2, dummy_row, dummy_slot)


def test_is_plain_decode() -> None:
    assert is_plain_decode(_decode_step([0], [4], [1], [2]))
    assert not is_plain_decode(StepInput(is_prefill=True, seqs=[SeqInput(0, 0, [1, 2], [3, 4], 2)]))
    assert not is_plain_decode(StepInput(is_prefill=False, seqs=[SeqInput(0, 4, [1, 2], [3, 4], 2)]))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="cuda_graph_max_batch"):
        EngineConfig(model_dir="x", cuda_graph_max_batch=0)
    default = EngineConfig(model_dir="x")
    assert default.cuda_graph and default.symm_mem_all_reduce  # all verified on H200s


@pytest.fixture(scope="module")
def runner(tiny_llama) -> ModelRunner:
    cfg = EngineConfig(model_dir=str(tiny_llama), device="cpu", dtype="float32", max_total_tokens=256,
                       max_running_requests=8, max_model_len=64, cuda_graph=True)  # fmt: skip
    runner = ModelRunner(cfg, rank=0)
    runner.allocate_kv(256)
    assert runner.graph_runner is None and not runner.use_cuda_graph  # never on CPU
    return runner


def _prefill(runner: ModelRunner, rows, lengths, first_slot: int) -> list[int]:
    """Prefill sequences on `rows`; returns the next free slot after each sequence's prompt."""
    step, slot, g = StepInput(is_prefill=True), first_slot, torch.Generator().manual_seed(1)
    for row, n in zip(rows, lengths, strict=True):
        ids = torch.randint(3, 200, (n,), generator=g).tolist()
        step.seqs.append(SeqInput(row, 0, ids, list(range(slot, slot + n)), n))
        slot += n
    runner.forward(step)
    return [s.new_slots[-1] for s in step.seqs]


def test_padded_decode_matches_unpadded(runner: ModelRunner) -> None:
    """Dummy rows change nothing for the real ones: eager padded step == eager unpadded step."""
    rows, lengths = [3, 0, 6], [5, 9, 2]
    last = _prefill(runner, rows, lengths, 0)
    step = _decode_step(rows, lengths, [21, 22, 23], [100, 101, 102])
    ref = runner.forward(step).clone()
    padded = pad_decode_step(step, 8, runner.kv.req_to_slot.shape[0] - 1, runner.kv.num_slots)
    out = runner.forward(padded)
    torch.testing.assert_close(out[:3], ref, rtol=1e-5, atol=1e-5)
    assert last == [4, 13, 15]
    assert int(runner.kv.req_to_slot[-1, 0]) == runner.kv.num_slots  # dummy row still reads the dummy slot


def test_static_path_matches_eager(runner: ModelRunner) -> None:
    """DecodeGraphRunner's static-buffer path (what is captured on CUDA) == the eager step."""
    graphs = DecodeGraphRunner(runner.model, runner.kv, runner.ops, runner.model_config.vocab_size,
                               max_batch=8, max_model_len=runner.max_model_len, capture=False,
                               min_context_bucket=16)  # fmt: skip
    assert graphs.batch_buckets == (1, 2, 4, 8) and graphs.context_buckets == (16, 32, 64)
    rows, lengths = [1, 4, 7], [6, 17, 3]
    _prefill(runner, rows, lengths, 120)
    step = _decode_step(rows, lengths, [31, 32, 33], [200, 201, 202])
    assert graphs.buckets_for(step) == (4, 32)
    ref = runner.forward(step).clone()  # eager; stores the same K/V the static path stores again
    runner.kv.req_to_slot[rows, lengths] = runner.kv.num_slots  # the static path must write these
    out = graphs.forward(step)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert runner.kv.req_to_slot[rows, lengths].tolist() == [200, 201, 202]
    assert int(runner.kv.req_to_slot[-1, 0]) == runner.kv.num_slots
    assert graphs.num_graphs == 1
    # Steps the runner declines: prefill, too many sequences, context past the last bucket.
    assert not graphs.can_run(StepInput(is_prefill=True, seqs=step.seqs))
    assert not graphs.can_run(_decode_step(list(range(9)), [1] * 9, [1] * 9, list(range(9))))
    assert not graphs.can_run(_decode_step([0], [64], [1], [5]))
    assert graphs.can_run(_decode_step([0], [63], [1], [5]))


def test_token_buckets() -> None:
    assert token_buckets(1) == (8,)
    assert token_buckets(100) == (8, 24, 40, 56, 72, 88, 104)
    full = token_buckets(2048)
    assert full[:3] == (8, 24, 40) and full[31:34] == (504, 512, 544)
    assert full[48] == 1024 and full[49:] == tuple(range(1088, 2049, 64))
    assert token_buckets(2049)[-1] == 2112
    assert len(token_buckets(prefill_graph_tokens(EngineConfig(model_dir="x")))) == 49
    small = EngineConfig(model_dir="x", max_prefill_tokens=128, mixed_prefill_tokens=64, max_running_requests=16)
    assert prefill_graph_tokens(small) == 128 and token_buckets(128)[-1] == 136
    assert prefill_graph_tokens(EngineConfig(model_dir="x", cuda_graph_max_tokens=0)) == 0
    with pytest.raises(ValueError):
        token_buckets(0)
    with pytest.raises(ValueError, match="cuda_graph_max_tokens"):
        EngineConfig(model_dir="x", cuda_graph_max_tokens=-1)


def _mixed_step(runner: ModelRunner, decode_rows, decode_lens, prompt_rows, prompt_lens, first_slot: int, seed: int):
    """Decode rows (one new token after their prefix), then prompts from position 0: a mixed step."""
    g, slot, seqs = torch.Generator().manual_seed(seed), first_slot, []
    for row, n in zip(decode_rows, decode_lens, strict=True):
        seqs.append(SeqInput(row, n, [int(torch.randint(3, 200, (1,), generator=g))], [slot], 1))
        slot += 1
    for row, n in zip(prompt_rows, prompt_lens, strict=True):
        seqs.append(SeqInput(row, 0, torch.randint(3, 200, (n,), generator=g).tolist(), list(range(slot, slot + n)), n))
        slot += n
    return StepInput(is_prefill=True, seqs=seqs, num_decode=len(decode_rows))


@pytest.mark.parametrize("kind", ["prefill", "mixed", "mixed_fed", "pooled"])
def test_prefill_static_path_matches_eager(runner: ModelRunner, kind: str) -> None:
    """PrefillGraphRunner's piecewise static-buffer path (what is captured on CUDA, attention eager in between) and
    the eager step on a padded batch both give the unpadded eager step's logits, K/V and hidden rows."""
    pieces = PrefillGraphRunner(runner.model, runner.kv, runner.ops, max_tokens=48, capture=False)
    assert pieces.buckets == (8, 24, 40, 56)
    if kind == "prefill":
        step = _mixed_step(runner, [], [], [2, 5], [5, 8], 0, seed=3)
    else:
        _prefill(runner, [1, 4], [6, 9], 30)
        step = _mixed_step(runner, [1, 4], [6, 9], [0, 7], [11, 4], 60, seed=4)
    if kind == "pooled":
        step.seqs[-1].pooling = "mean"
    feed = None
    if kind == "mixed_fed":  # the decode rows' ids are still on the device: placeholders on the host
        real = [s.new_token_ids[0] for s in step.seqs[:2]]
        for s in step.seqs[:2]:
            s.new_token_ids = [0]
        feed = TokenFeed(positions=torch.tensor([0, 1]), token_ids=torch.tensor(real))
    num_tokens = sum(len(s.new_token_ids) for s in step.seqs)
    bucket = pieces.bucket_for(step, num_tokens)
    assert bucket == 24 and bucket > num_tokens

    def cache_of(step):  # this step's K and V, all layers
        slots = torch.tensor([x for s in step.seqs for x in s.new_slots])
        return torch.stack([torch.cat([k[slots], v[slots]]) for k, v in zip(runner.kv.k, runner.kv.v, strict=True)])

    ref_logits, ref_hidden = runner.model.forward_with_hidden(runner.prepare(step, feed), runner.kv, runner.ops)
    ref_logits, ref_kv = ref_logits.clone(), cache_of(step)
    for layer in range(len(runner.kv.k)):  # the paths below must store the K/V again
        runner.kv.k[layer][torch.tensor([x for s in step.seqs for x in s.new_slots])] = 0
    padded = runner.prepare(step, feed, pad_to=bucket)
    assert padded.input_ids.shape == padded.positions.shape == padded.out_slots.shape == (bucket,)
    assert padded.out_slots[num_tokens:].tolist() == [runner.kv.num_slots] * (bucket - num_tokens)
    eager_logits, eager_hidden = runner.model.forward_with_hidden(padded, runner.kv, runner.ops)
    torch.testing.assert_close(eager_logits, ref_logits, rtol=1e-5, atol=1e-5)
    logits, hidden = pieces.forward(runner.prepare(step, feed, pad_to=bucket), num_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache_of(step), ref_kv, rtol=1e-5, atol=1e-5)
    if kind == "pooled":
        assert hidden.shape == ref_hidden.shape == (4, runner.model_config.hidden_size)
        torch.testing.assert_close(hidden, ref_hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eager_hidden, ref_hidden, rtol=1e-5, atol=1e-5)
    else:
        assert hidden is None and ref_hidden is None
    assert int(runner.kv.req_to_slot[-1, 0]) == runner.kv.num_slots  # padding wrote no table entry
    # Steps the runner declines: decode steps, images, more tokens than the last bucket.
    assert pieces.bucket_for(_decode_step([0], [3], [1], [5]), 1) is None
    images = StepInput(is_prefill=True, seqs=[SeqInput(0, 0, [1, 2], [3, 4], 2, np.zeros((1, 8), np.float32))])
    assert pieces.bucket_for(images, 2) is None
    assert pieces.bucket_for(_mixed_step(runner, [], [], [0], [57], 0, seed=5), 57) is None


def test_model_runner_routes_prefill_steps_through_the_graphs(runner: ModelRunner, monkeypatch) -> None:
    """ModelRunner.forward_with_hidden sends prefill and mixed steps through PrefillGraphRunner (padded to a bucket)
    when graphs are on, and runs the padded batch eagerly, graphs off from then on, when a graph fails."""
    pieces = PrefillGraphRunner(runner.model, runner.kv, runner.ops, max_tokens=48, capture=False)
    _prefill(runner, [3, 6], [5, 8], 140)
    step = _mixed_step(runner, [3, 6], [5, 8], [2], [13], 170, seed=6)
    ref = runner.forward(step).clone()  # eager: graphs are off on CPU
    calls = []
    forward = pieces.forward
    monkeypatch.setattr(
        pieces, "forward", lambda batch, n: calls.append((batch.input_ids.shape[0], n)) or forward(batch, n)
    )
    monkeypatch.setattr(runner, "prefill_graphs", pieces)
    monkeypatch.setattr(runner, "use_cuda_graph", True)
    torch.testing.assert_close(runner.forward(step), ref, rtol=1e-5, atol=1e-5)
    assert calls == [(24, 15)]  # 2 decode rows + 13 prompt tokens, padded to the 24-token bucket

    def broken(batch, n):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(pieces, "forward", broken)
    torch.testing.assert_close(runner.forward(step), ref, rtol=1e-5, atol=1e-5)  # the padded batch, eagerly
    assert runner.graph_failed and not runner.use_cuda_graph
    runner.graph_failed = False  # the module's runner is shared
