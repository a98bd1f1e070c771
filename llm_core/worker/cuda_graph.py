"""CUDA-graph capture and replay of steps (device "cuda" with the Triton ops only): whole decode steps
(`DecodeGraphRunner`), and prefill and mixed steps piecewise, everything but attention (`PrefillGraphRunner`).

A Llama-3-8B decode step launches ~600 kernels; launched from Python it is bound by launch
overhead (16 ms at batch 1 on an H200 against ~3.7 ms of weight reads). `DecodeGraphRunner`
captures the whole decode forward once per (batch bucket, context bucket) and replays it:

* Batch buckets 1, 2, 4, 8, 16, 24, 40, ..., max_batch: a batch of B sequences runs in the smallest bucket
  >= B, padded with dummy sequences: request row `max_reqs` (the KVCache padding row), one new
  token at position 0 stored to the dummy slot `num_slots`, seq_len 1 (it reads only that
  slot, since unused req_to_slot entries point at it). Padded rows cost a few GEMM rows.
* Context buckets 4096, 8192, ..., max_model_len: the decode kernel's split-K grid is shaped by
  `max_seq_len`, a Python int frozen at capture, so a step runs in the smallest context bucket
  >= its longest sequence. The kernel skips splits past each sequence's length (the split
  program returns at once; the reduce reads only cdiv(seq_len, split_len) partials), so a
  bound above the real length costs only empty programs; buckets keep the split length near
  what the real length would pick (at most 2x longer).
* Inputs live in one static int64 device buffer, written by a single host-to-device copy from
  a pinned staging buffer per step (`stage`). The graph itself converts the int32 columns,
  records each new token's slot in req_to_slot, runs the model, and copies the logits into one
  persistent [max_batch, vocab] fp32 buffer shared by all graphs (graphs share one memory pool,
  so a graph's own output could be overwritten by another graph's replay).
  `forward` returns a view of it: valid until the next forward call.
* Graphs are captured lazily, the first time a (batch, context) bucket is needed. With tp > 1
  every rank sees the same steps, so all ranks capture the same graphs in the same order and
  the NCCL collectives inside them match.

Prefill and mixed steps carry any mix of sequences and query lengths, which would need a graph per
(tokens, sequences, decode rows, query length, context) combination with whole-step graphs. Their attention is
the only part that depends on more than the token count, so `PrefillGraphRunner` captures the rest per
token-count bucket (`token_buckets`: every 16 tokens to 512, then every 32): one graph from the
embeddings to layer 0's queries, one per layer boundary (o_proj, norms, MLP, the next layer's norm, QKV, rotary
and K/V store), one after the last layer; attention runs eagerly between them on the real tokens, the logits
after them. An eager mixed step is ~430 launches that take the host longer than the GPU needs for them
(benchmarks/RESULTS.md); this way it is ~33 graph replays and ~3 attention launches per layer. Padding tokens
(id 0, position 0) store their K/V to the dummy slot and their rows are never read.

With `capture=False` (CPU tests) the same static-buffer path runs eagerly: everything but the
graph itself is exercised without a GPU.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
from torch import nn

from llm_core.batch import ForwardBatch, KVCache, SeqInput, StepInput, TokenFeed

MIN_CONTEXT_BUCKET = 4096
NUM_FIELDS = 7  # rows of the static input buffer, see FIELDS
FIELDS = ("input_ids", "positions", "table_index", "out_slots", "req_rows", "prefix_lens", "seq_lens")
_I32_FROM = 3  # FIELDS[3:] are int32 in the ForwardBatch


# cuBLAS on an H200 (torch 2.11, CUDA 13) picks slower kernels at many row counts that are multiples of 16 but
# not of 128: 400 rows take 12% longer than 408 for a step's GEMMs, 208 6% longer than 200; at 8 more than a
# multiple of 16 it was never slower than its neighbours (benchmarks/gemm.py --cublas-only, 8 to 2048 rows;
# benchmarks/RESULTS.md). Graph buckets past 16 rows sit there: 24, 40, 56, ...
ROW_STEP = 16


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, 8, 16, then 24, 40, 56, ... (every ROW_STEP rows, 8 past a multiple of it) below max_batch, then
    max_batch itself. A decode step runs padded to its bucket: past 16 rows the padding stays under ROW_STEP rows,
    where doubling buckets would run a batch of 130 as 256 (a decode GEMM of 256 rows is no longer bound by the
    weight reads alone on an H200)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    out, b = [], 1
    while b < min(max_batch, ROW_STEP):
        out.append(b)
        b *= 2
    b = ROW_STEP
    while b < max_batch:
        out.append(b)
        b += ROW_STEP if b > ROW_STEP else ROW_STEP // 2
    out.append(max_batch)
    return tuple(out)


def token_buckets(max_tokens: int) -> tuple[int, ...]:
    """Token counts of the prefill graphs, up to the first >= max_tokens: 8, 24, 40, ..., 504 (every ROW_STEP, 8
    past a multiple of it), 512, then every 32 to 1024, then every 64. A step runs padded to its bucket; past 512
    tokens its GEMMs grow with their rows, so 32 more cost ~3%."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    out = [ROW_STEP // 2]
    while out[-1] < max_tokens:
        n = out[-1]
        out.append(n + ROW_STEP if n + ROW_STEP < 512 else 512 if n < 512 else n + 32 if n < 1024 else n + 64)
    return tuple(out)


def context_buckets(max_model_len: int, min_bucket: int = MIN_CONTEXT_BUCKET) -> tuple[int, ...]:
    """min_bucket, 2 * min_bucket, ... below max_model_len, then max_model_len itself."""
    if max_model_len < 1 or min_bucket < 1:
        raise ValueError(f"max_model_len and min_bucket must be >= 1, got {max_model_len}, {min_bucket}")
    out, c = [], min_bucket
    while c < max_model_len:
        out.append(c)
        c *= 2
    out.append(max_model_len)
    return tuple(out)


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket >= n (buckets sorted ascending), or None if n exceeds them all."""
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else None


def pad_decode_step(step, bucket: int, dummy_row: int, dummy_slot: int):
    """The decode StepInput padded to `bucket` sequences with dummy ones (the graph's inputs).

    A dummy sequence is row `dummy_row`, prefix 0, one new token (id 0) stored to `dummy_slot`:
    seq_len 1, so it reads only req_to_slot[dummy_row, 0], which stays `dummy_slot`.
    """
    assert not step.is_prefill and len(step.seqs) <= bucket, (step.is_prefill, len(step.seqs), bucket)
    pad = [SeqInput(dummy_row, 0, [0], [dummy_slot]) for _ in range(bucket - len(step.seqs))]
    return StepInput(is_prefill=False, seqs=list(step.seqs) + pad)


def decode_arrays(seqs: Sequence, bucket: int, dummy_row: int, dummy_slot: int, row_stride: int) -> np.ndarray:
    """[NUM_FIELDS, bucket] int64 inputs of decode sequences padded to `bucket` (rows: FIELDS).

    The same as the unpadded arrays of `pad_decode_step(step, bucket, dummy_row, dummy_slot).seqs`;
    table_index = row * row_stride + position, the flat req_to_slot entry of each new token.
    """
    n = len(seqs)
    assert n <= bucket, (n, bucket)
    out = np.empty((NUM_FIELDS, bucket), dtype=np.int64)
    # Padding columns first: token 0 at position 0 of the dummy row, stored to the dummy slot.
    out[:, n:] = np.array([0, 0, dummy_row * row_stride, dummy_slot, dummy_row, 0, 1], dtype=np.int64)[:, None]
    if n:
        cols = [
            (s.new_token_ids[0], s.prefix_len, s.row * row_stride + s.prefix_len, s.new_slots[0], s.row,
             s.prefix_len, s.prefix_len + 1)
            for s in seqs
        ]  # fmt: skip
        out[:, :n] = np.array(cols, dtype=np.int64).T
    return out


def is_plain_decode(step) -> bool:
    """A decode step of one new token per sequence, no images."""
    return not step.is_prefill and all(len(s.new_token_ids) == 1 and len(s.new_slots) == 1 for s in step.seqs)


def capture_graphs(fns: Sequence[Callable[[], None]], pool, device: torch.device, warm_runs: int) -> list:
    """One CUDA graph per function, in order, allocating from the memory pool `pool`. Each function first runs
    `warm_runs` times eagerly on a side stream (Triton compiles, cuBLAS workspaces, NCCL communicators), then all
    are captured on that stream, idle by then.

    torch.cuda.graph() would also run gc.collect() and empty the allocator's cache before each capture: ~10 ms
    a graph here, for ~1,600 of them at start-up; every tensor a graph keeps is persistent anyway.
    thread_local: the NCCL watchdog thread (tp > 1) may query its events during capture."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for fn in fns:
            for _ in range(warm_runs):
                fn()
    current.wait_stream(side)
    torch.cuda.synchronize(device)
    graphs = []
    with torch.cuda.stream(side):
        for fn in fns:
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            try:
                fn()
            finally:
                graph.capture_end()
            graphs.append(graph)
    return graphs


@dataclass(slots=True)
class _Entry:
    run: Callable[[], None]  # replays the graph (or runs the static path eagerly)
    graph: object | None  # torch.cuda.CUDAGraph, kept alive


class DecodeGraphRunner:
    """Captures decode steps of `model` per (batch bucket, context bucket) and replays them."""

    def __init__(
        self,
        model: nn.Module,
        kv: KVCache,
        ops: ModuleType,
        vocab_size: int,
        max_batch: int,
        max_model_len: int,
        capture: bool = True,
        min_context_bucket: int = MIN_CONTEXT_BUCKET,
        pool=None,
    ) -> None:
        self.model = model
        self.kv = kv
        self.ops = ops
        self.device = kv.req_to_slot.device
        self.capture = capture
        if capture and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.batch_buckets = batch_buckets(max_batch)
        self.context_buckets = context_buckets(max_model_len, min_context_bucket)
        self.dummy_row = kv.req_to_slot.shape[0] - 1
        self.dummy_slot = kv.num_slots
        self.row_stride = kv.req_to_slot.shape[1]
        assert kv.req_to_slot.is_contiguous() and self.row_stride >= max_model_len
        max_bs = self.batch_buckets[-1]
        pinned = self.device.type == "cuda"
        # Two pinned staging buffers, used in turn: the copy of one may still be queued behind the step
        # before (the loop queues a step before the previous one is done).
        self._host = [torch.empty(NUM_FIELDS * max_bs, dtype=torch.int64, pin_memory=pinned) for _ in range(2)]
        self._inputs = torch.zeros(NUM_FIELDS * max_bs, dtype=torch.int64, device=self.device)
        self._copied = [torch.cuda.Event() if pinned else None for _ in range(2)]  # each buffer's last copy done
        self._turn = 0
        self.logits = torch.zeros((max_bs, vocab_size), dtype=torch.float32, device=self.device)
        # Every tensor a graph reads must outlive it: these are sliced per bucket, never freed.
        self._arange32 = torch.arange(max_bs + 1, dtype=torch.int32, device=self.device)  # query_start_loc
        self._arange64 = torch.arange(max_bs, dtype=torch.int64, device=self.device)  # logits_indices
        self._pool = (pool or torch.cuda.graph_pool_handle()) if capture else None
        self._entries: dict[tuple[int, int], _Entry] = {}

    @property
    def num_graphs(self) -> int:
        return len(self._entries)

    def buckets_for(self, step) -> tuple[int, int] | None:
        """(batch bucket, context bucket) of a plain decode step, or None if it must run eagerly."""
        if not step.seqs or not is_plain_decode(step):
            return None
        bs = bucket_for(len(step.seqs), self.batch_buckets)
        ctx = bucket_for(max(s.prefix_len for s in step.seqs) + 1, self.context_buckets)
        if bs is None or ctx is None:
            return None
        return bs, ctx

    def can_run(self, step) -> bool:
        return self.buckets_for(step) is not None

    def forward(self, step: StepInput, feed: TokenFeed | None = None) -> torch.Tensor:
        """[B, vocab] fp32 logits of a decode step; a view valid until the next forward call. `feed`: input
        ids still on the device (sampled by the previous step), written over the staged ones."""
        buckets = self.buckets_for(step)
        assert buckets is not None, "not a step for the graph runner (check can_run)"
        bs, ctx = buckets
        entry = self._entries.get(buckets)
        if entry is None:
            entry = self._entries[buckets] = self._make_entry(bs, ctx)
        self.stage(decode_arrays(step.seqs, bs, self.dummy_row, self.dummy_slot, self.row_stride))
        if feed is not None:  # row 0 of the static buffer: the input ids
            self._inputs[:bs].index_copy_(0, feed.positions, feed.token_ids)
        entry.run()
        return self.logits[: len(step.seqs)]

    def capture_all(self, context_buckets: Sequence[int] | None = None) -> None:
        """Capture every batch bucket (largest first) for the given context buckets now."""
        for ctx in context_buckets or self.context_buckets:
            for bs in reversed(self.batch_buckets):
                if (bs, ctx) not in self._entries:
                    self._entries[bs, ctx] = self._make_entry(bs, ctx)

    # --- internals -----------------------------------------------------------------------
    def stage(self, arrays: np.ndarray) -> None:
        """Copy [NUM_FIELDS, bs] int64 inputs into the static device buffer (one copy)."""
        k = arrays.size
        self._turn ^= 1
        host, copied = self._host[self._turn], self._copied[self._turn]
        if copied is not None:
            copied.synchronize()  # this buffer's previous copy (two steps ago) is done: free again
        host.numpy()[:k] = arrays.reshape(-1)
        self._inputs[:k].copy_(host[:k], non_blocking=True)
        if copied is not None:
            copied.record()

    def _run_static(self, bs: int, ctx: int, query_start_loc: torch.Tensor, logits_indices: torch.Tensor) -> None:
        """The captured work: one decode step of bucket (bs, ctx) from the static buffers."""
        fields = self._inputs[: NUM_FIELDS * bs].view(NUM_FIELDS, bs)
        small = fields[_I32_FROM:].to(torch.int32)  # [4, bs]: out_slots, req_rows, prefix_lens, seq_lens
        out_slots, req_rows, prefix_lens, seq_lens = small.unbind(0)
        # Record where each new token's KV lives: req_to_slot[row, position] = slot.
        self.kv.req_to_slot.view(-1).index_copy_(0, fields[2], out_slots)
        batch = ForwardBatch(
            is_prefill=False,
            input_ids=fields[0],
            positions=fields[1],
            out_slots=out_slots,
            req_rows=req_rows,
            prefix_lens=prefix_lens,
            seq_lens=seq_lens,
            query_start_loc=query_start_loc,
            logits_indices=logits_indices,
            max_query_len=1,
            max_seq_len=ctx,
        )
        self.logits[:bs].copy_(self.model(batch, self.kv, self.ops))

    def _make_entry(self, bs: int, ctx: int) -> _Entry:
        # Views of persistent buffers: a tensor allocated here and dropped after capture would
        # be freed while the graph still reads its address (seen on GPU: corrupted indices).
        query_start_loc = self._arange32[: bs + 1]
        logits_indices = self._arange64[:bs]

        def fn() -> None:
            self._run_static(bs, ctx, query_start_loc, logits_indices)

        if not self.capture:
            return _Entry(run=fn, graph=None)
        # Warmed up and captured with all-padding inputs, which touch only the dummy row and slot.
        self.stage(decode_arrays((), bs, self.dummy_row, self.dummy_slot, self.row_stride))
        (graph,) = capture_graphs([fn], self._pool, self.device, warm_runs=2)
        return _Entry(run=graph.replay, graph=graph)


class PrefillGraphRunner:
    """Prefill and mixed steps of `model` through CUDA graphs of everything but attention, per token bucket."""

    def __init__(
        self, model: nn.Module, kv: KVCache, ops: ModuleType, max_tokens: int, capture: bool = True, pool=None
    ) -> None:
        self.model = model
        self.layers = model.model.layers
        self.kv = kv
        self.ops = ops
        device = kv.req_to_slot.device
        self.capture = capture
        if capture and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.buckets = token_buckets(max_tokens)
        n, attn = self.buckets[-1], self.layers[0].self_attn
        dtype, hidden = kv.k[0].dtype, model.config.hidden_size
        # The graphs' inputs and the tensors passed between graphs and attention: persistent, sliced per bucket.
        self._ids = torch.zeros(n, dtype=torch.int64, device=device)
        self._positions = torch.zeros(n, dtype=torch.int64, device=device)
        self._slots = torch.full((n,), kv.num_slots, dtype=torch.int32, device=device)
        self._q = torch.zeros((n, attn.num_heads, attn.head_dim), dtype=dtype, device=device)
        self._attn = torch.zeros((n, attn.num_heads * attn.head_dim), dtype=dtype, device=device)
        self._hidden = torch.zeros((n, hidden), dtype=dtype, device=device)
        self._residual = torch.zeros((n, hidden), dtype=dtype, device=device)
        self._pool = (pool or torch.cuda.graph_pool_handle()) if capture else None
        self._entries: dict[int, list[_Entry]] = {}  # bucket -> len(layers) + 1 pieces

    @property
    def num_graphs(self) -> int:
        return sum(len(pieces) for pieces in self._entries.values()) if self.capture else 0

    def bucket_for(self, step: StepInput, num_tokens: int) -> int | None:
        """The token bucket of a prefill or mixed step of `num_tokens` new tokens without images, or None if it
        must run eagerly."""
        if not step.is_prefill or any(s.image_embeds is not None for s in step.seqs):
            return None
        return bucket_for(num_tokens, self.buckets)

    def forward(self, batch: ForwardBatch, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, hidden rows) as the model's forward_with_hidden, for a batch prepared with its tokens padded
        to a bucket (`ModelRunner.prepare(pad_to=...)`); `num_tokens` are real. Queued, not waited for."""
        n = batch.input_ids.shape[0]
        pieces = self._entries.get(n)
        if pieces is None:
            pieces = self._entries[n] = self._make_pieces(n)
        self._ids[:n].copy_(batch.input_ids)
        self._positions[:n].copy_(batch.positions)
        self._slots[:n].copy_(batch.out_slots)
        q, out = self._q[:num_tokens], self._attn[:num_tokens]
        for layer, piece in zip(self.layers, pieces, strict=False):
            piece.run()  # up to this layer's queries and K/V store
            out.copy_(layer.self_attn.attend(q, batch, self.kv, self.ops))
        pieces[-1].run()  # the last layer's rest
        return self.model.finish(self._hidden, self._residual, batch, self.ops)

    def capture_all(self) -> None:
        """Capture every bucket now (largest first: the shared memory pool grows once)."""
        for n in reversed(self.buckets):
            if n not in self._entries:
                self._entries[n] = self._make_pieces(n)

    # --- internals -----------------------------------------------------------------------
    def _piece(self, i: int, n: int) -> None:
        """Piece i of an n-token step: the embeddings (i = 0) or layer i - 1 after its attention, then layer i
        up to its attention (i < number of layers); reads and writes only the static buffers."""
        if i == 0:
            hidden, residual = self.model.model.embed_tokens(self._ids[:n]), None
        else:
            hidden, residual = self.layers[i - 1].post_attention(self._attn[:n], self._residual[:n], self.ops)
        if i == len(self.layers):
            self._hidden[:n].copy_(hidden)
            self._residual[:n].copy_(residual)
            return
        q, residual = self.layers[i].pre_attention(
            hidden, residual, self._positions[:n], self._slots[:n], self.kv, self.ops, self.model.cos_sin
        )
        self._q[:n].copy_(q)
        self._residual[:n].copy_(residual)

    @torch.inference_mode()
    def _make_pieces(self, n: int) -> list[_Entry]:
        fns = [functools.partial(self._piece, i, n) for i in range(len(self.layers) + 1)]
        if not self.capture:
            return [_Entry(run=fn, graph=None) for fn in fns]
        # All padding while capturing (token 0 at position 0 into the dummy slot); one graph per piece.
        self._ids[:n].zero_()
        self._positions[:n].zero_()
        self._slots[:n].fill_(self.kv.num_slots)
        graphs = capture_graphs(fns, self._pool, self._ids.device, warm_runs=1)
        return [_Entry(run=graph.replay, graph=graph) for graph in graphs]
