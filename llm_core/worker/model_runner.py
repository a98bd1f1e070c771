"""Device work of one TP rank: weights, KV cache, forward pass (and sampling on rank 0)."""

from __future__ import annotations

import itertools
import logging
import os
import time
import traceback

import numpy as np
import torch
import torch.distributed as dist

from llm_core.batch import ForwardBatch, KVCache, SeqInput, StepInput, TokenFeed, host_to_device, pooled_offsets
from llm_core.collectives import create_symm_mem_all_reduce
from llm_core.config import EngineConfig
from llm_core.models import build_model, load_model_config, load_weights
from llm_core.ops import select_ops, torch_ops
from llm_core.worker.cuda_graph import DecodeGraphRunner, PrefillGraphRunner, bucket_for, context_buckets
from llm_core.worker.timeline import LateCompiles
from llm_core.worker.warmup import warmup_steps

log = logging.getLogger("llm_core.worker")
_GIB = 1 << 30
_CPU_KV_BUDGET = 2 * _GIB  # default KV pool on CPU when max_total_tokens is not given


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def prefill_graph_tokens(cfg: EngineConfig) -> int:
    """Tokens of the largest prefill graph bucket needed: cuda_graph_max_tokens, or fewer when no step can be that
    large (a prefill step carries at most max_prefill_tokens; a mixed step mixed_prefill_tokens and a decode row
    per running request)."""
    largest = max(cfg.max_prefill_tokens, cfg.mixed_prefill_tokens + cfg.max_running_requests)
    return min(cfg.cuda_graph_max_tokens, largest)


class ModelRunner:
    """Owns the model shard and the KV pool shard of one rank."""

    def __init__(self, cfg: EngineConfig, rank: int, tp_group=None) -> None:
        self.cfg = cfg
        self.rank = rank
        self.model_config = load_model_config(cfg.model_dir)
        self.max_model_len = cfg.max_model_len or self.model_config.max_position_embeddings
        self.context_buckets = context_buckets(self.max_model_len)  # decode kernels' split grids (and graphs)
        if cfg.device == "cuda":
            torch.cuda.set_device(rank)
            self.device = torch.device("cuda", rank)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(cfg.cpu_threads or max(1, (os.cpu_count() or 2) // (2 * cfg.tp)))
        self.dtype = torch_dtype(cfg.torch_dtype_name)
        torch.manual_seed(cfg.seed)
        # Small all-reduces (decode) through symmetric memory at tp > 1 on CUDA; None: NCCL only.
        self.fast_all_reduce = (
            create_symm_mem_all_reduce(
                tp_group or dist.group.WORLD, self.device, self.dtype, self.model_config.hidden_size
            )
            if cfg.tp > 1 and self.device.type == "cuda" and cfg.symm_mem_all_reduce
            else None
        )
        self.model = build_model(
            self.model_config, self.dtype, self.device, rank, cfg.tp, tp_group, self.fast_all_reduce
        )
        load_weights(self.model, cfg.model_dir, cfg.load_format)
        self.model.eval()
        self.ops = select_ops(self.device, cfg.force_torch_ops)
        if self.ops is not torch_ops:
            self.ops.configure(
                gemv=cfg.gemv, pdl=cfg.pdl, pdl_followers=cfg.pdl_followers, gemv_prefetch_mb=cfg.gemv_prefetch_mb
            )
        self.image_token_index = self.model_config.image_token_index
        self.kv: KVCache | None = None
        # Decode, prefill and mixed steps replay CUDA graphs (Triton ops on CUDA only; the torch ops sync on host).
        self.use_cuda_graph = cfg.cuda_graph and self.device.type == "cuda" and self.ops is not torch_ops
        self.graph_runner: DecodeGraphRunner | None = None
        self.prefill_graphs: PrefillGraphRunner | None = None
        self.graph_failed = False
        self.warmup_s = 0.0
        self.late_compiles = LateCompiles()  # kernels compiled after warm-up: installed once it is done

    # --- KV pool -------------------------------------------------------------------------
    def kv_heads_per_rank(self) -> int:
        return max(1, self.model_config.num_kv_heads // self.cfg.tp)

    def bytes_per_token(self) -> int:
        mc = self.model_config
        return KVCache.bytes_per_token(mc.num_layers, self.kv_heads_per_rank(), mc.head_dim, self.dtype)

    def max_slots_available(self) -> int:
        """How many token slots this rank can hold (ranks agree on the minimum)."""
        if self.cfg.max_total_tokens is not None:
            return self.cfg.max_total_tokens
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            reserve = 1 * _GIB + self.cfg.max_prefill_tokens * self.model_config.hidden_size * 64
            budget = int(total * self.cfg.mem_fraction) - (total - free) - reserve
            return max(0, budget // self.bytes_per_token())
        # Bounded so that many engines (tests, several TP ranks) fit in host memory.
        return min(_CPU_KV_BUDGET // self.bytes_per_token(), 1 << 17)

    def allocate_kv(self, num_slots: int) -> None:
        mc = self.model_config
        self.kv = KVCache.allocate(
            mc.num_layers,
            num_slots,
            self.kv_heads_per_rank(),
            mc.head_dim,
            self.cfg.max_running_requests,
            self.max_model_len,
            self.dtype,
            self.device,
        )
        if self.use_cuda_graph:
            pool = torch.cuda.graph_pool_handle()  # one memory pool for all graphs (outputs live outside it)
            self.graph_runner = self.new_graph_runner(pool)
            max_tokens = prefill_graph_tokens(self.cfg)
            if max_tokens and self.cfg.tp == 1:
                self.prefill_graphs = PrefillGraphRunner(self.model, self.kv, self.ops, max_tokens, pool=pool)

    def new_graph_runner(self, pool=None) -> DecodeGraphRunner:
        """Decode graphs over this runner's model and KV pool, captured lazily per batch bucket."""
        return DecodeGraphRunner(
            self.model, self.kv, self.ops, self.model_config.vocab_size,
            max_batch=min(self.cfg.cuda_graph_max_batch, self.cfg.max_running_requests),
            max_model_len=self.max_model_len, pool=pool,
        )  # fmt: skip

    def warm_up(self, force: bool = False) -> None:
        """Compile every Triton kernel variant a step can launch and capture every CUDA graph, so that
        the first requests after ready pay for neither (worker/warmup.py). CUDA with the Triton ops (and
        cfg.warmup) only, unless `force` (tests: the same steps through the torch ops)."""
        if not force and (not self.cfg.warmup or self.ops is torch_ops):
            return
        t0 = time.perf_counter()
        mc = self.model_config
        steps = warmup_steps(
            self.kv.num_slots, self.cfg.max_running_requests, self.max_model_len,
            mc.image_token_index, mc.num_image_tokens, mc.hidden_size,
        )  # fmt: skip
        graphs, self.use_cuda_graph = self.use_cuda_graph, False  # the eager variants (steps past the graphs)
        for step in steps:
            self.forward(step)
        self.use_cuda_graph = graphs
        self._warm_decode_attention()
        if self.graph_runner is not None and self.use_cuda_graph:
            self.graph_runner.capture_all()
        if self.prefill_graphs is not None and self.use_cuda_graph:
            self.prefill_graphs.capture_all()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmup_s = time.perf_counter() - t0
        log.info("rank %d warm: %d prefill shapes, %d decode graphs, %d prefill graph pieces in %.1f s", self.rank,
                 len(steps), *self.num_graphs(), self.warmup_s)  # fmt: skip
        self.late_compiles.install()

    def _warm_decode_attention(self) -> None:
        """The decode kernel at every row count a mixed step can carry and every context bucket: its split
        count (a launch argument) depends on both. Reads only the dummy row and slot."""
        mc = self.model_config
        heads = max(1, mc.num_heads // self.cfg.tp)
        rows_max = self.cfg.max_running_requests
        q = torch.zeros((rows_max, heads, mc.head_dim), dtype=self.dtype, device=self.device)
        dummy_row = self.kv.req_to_slot.shape[0] - 1
        rows = torch.full((rows_max,), dummy_row, dtype=torch.int32, device=self.device)
        seq_lens = torch.ones(rows_max, dtype=torch.int32, device=self.device)
        k_cache, v_cache = self.kv.k[0], self.kv.v[0]
        for ctx in self.context_buckets:
            for n in range(1, rows_max + 1):
                self.ops.decode_attention(
                    q[:n], k_cache, v_cache, self.kv.req_to_slot, rows[:n], seq_lens[:n], ctx, mc.head_dim**-0.5
                )

    # --- forward -------------------------------------------------------------------------
    def prepare(self, step: StepInput, feed: TokenFeed | None = None, pad_to: int = 0) -> ForwardBatch:
        """The device inputs of an eager step: one host-to-device copy from pinned memory, no wait for
        the device's queue (the previous step may still run). `feed` overwrites some input ids on the device.
        `pad_to` > the step's tokens: input_ids, positions and out_slots padded to that many tokens (a CUDA-graph
        bucket) with token 0 at position 0 stored to the dummy slot; everything else describes the real tokens."""
        input_ids: list[int] = []
        positions: list[int] = []
        out_slots: list[int] = []
        token_rows: list[int] = []  # request row of each new token
        rows: list[int] = []
        cached_rows: list[int] = []  # prefix-cache hits: their rows, positions and slots
        cached_positions: list[int] = []
        cached_slots: list[int] = []
        prefix_lens: list[int] = []
        seq_lens: list[int] = []
        starts = [0]
        image_rows: list[np.ndarray] = []
        image_positions: list[int] = []
        hidden_indices: list[int] = []  # embedding requests' rows (pooled_offsets)
        has_pooling = False
        for seq in step.seqs:
            n = len(seq.new_token_ids)
            base = len(input_ids)
            if seq.pooling is not None:
                has_pooling = True
                hidden_indices += [base + i for i in pooled_offsets(seq)]
            input_ids += seq.new_token_ids
            positions += range(seq.prefix_len, seq.prefix_len + n)
            out_slots += seq.new_slots
            token_rows += [seq.row] * n
            rows.append(seq.row)
            if seq.cached_slots:
                cached_rows += [seq.row] * len(seq.cached_slots)
                cached_positions += range(len(seq.cached_slots))
                cached_slots += seq.cached_slots
            prefix_lens.append(seq.prefix_len)
            seq_lens.append(seq.prefix_len + n)
            starts.append(base + n)
            if seq.image_embeds is not None:
                idx, pos = self._image_positions(seq)
                if idx:
                    image_rows.append(seq.image_embeds[idx])
                    image_positions += [base + p for p in pos]
        num_tokens, num_seqs = len(input_ids), len(rows)
        padding = max(0, pad_to - num_tokens)
        if padding:  # after the real tokens: indices and offsets below stay those of the real ones
            input_ids += [0] * padding
            positions += [0] * padding
            out_slots += [self.kv.num_slots] * padding
        d = step.num_decode  # a mixed step: the prompt chunks' query offsets, after the decode rows
        prefill_starts = [s - d for s in starts[d:]] if d else []
        # One int64 array, sliced on the device: per token, per prefix-cache entry, per sequence, per image row.
        # Each part starts on a 16-byte boundary (odd lengths padded by one): Triton compiles a kernel again for
        # a pointer that is not, so a slice's alignment must not depend on the step's shape.
        parts = (input_ids, positions, out_slots, token_rows, cached_rows, cached_positions, cached_slots,
                 rows, prefix_lens, seq_lens, starts, [s - 1 for s in starts[1:]], image_positions,
                 prefill_starts)  # fmt: skip
        sizes = [len(p) for p in parts]
        padded = [n + (n & 1) for n in sizes]
        values = itertools.chain.from_iterable(
            itertools.chain(p, (0,) * (m - n)) for p, n, m in zip(parts, sizes, padded, strict=True))  # fmt: skip
        flat = host_to_device(np.fromiter(values, dtype=np.int64, count=sum(padded)), self.device)
        (ids_t, positions_t, out_slots_t, token_rows_t, cached_rows_t, cached_positions_t, cached_slots_t,
         rows_t, prefix_lens_t, seq_lens_t, starts_t, logits_t, image_positions_t, prefill_starts_t) = (
            t[:n] for t, n in zip(flat.split(padded), sizes, strict=True))  # fmt: skip
        if feed is not None:
            ids_t = ids_t.index_copy(0, feed.positions, feed.token_ids)
        out_slots_t = out_slots_t.to(torch.int32)
        # Record where each new token's KV lives: req_to_slot[row, position] = slot.
        self.kv.req_to_slot[token_rows_t, positions_t[:num_tokens]] = out_slots_t[:num_tokens]
        if cached_slots:  # and where the shared prefix of a prefix-cache hit lives
            self.kv.req_to_slot[cached_rows_t, cached_positions_t] = cached_slots_t.to(torch.int32)
        batch = ForwardBatch(
            is_prefill=step.is_prefill,
            input_ids=ids_t,
            positions=positions_t,
            out_slots=out_slots_t,
            req_rows=rows_t.to(torch.int32),
            prefix_lens=prefix_lens_t.to(torch.int32),
            seq_lens=seq_lens_t.to(torch.int32),
            query_start_loc=starts_t.to(torch.int32),
            logits_indices=logits_t,
            max_query_len=max(e - s for s, e in zip(starts[:-1], starts[1:], strict=True)),
            max_seq_len=max(seq_lens),
        )
        assert num_tokens + padding == len(out_slots) and num_seqs >= 1, (num_tokens, len(out_slots), num_seqs)
        if d:
            assert step.is_prefill and starts[d] == d, "decode rows come first"
            batch.num_decode = d
            batch.prefill_query_start_loc = prefill_starts_t.to(torch.int32)
            longest = max(seq_lens[:d])
            batch.decode_max_seq_len = bucket_for(longest, self.context_buckets) or longest
        if has_pooling:
            batch.hidden_indices = host_to_device(np.asarray(hidden_indices, dtype=np.int64), self.device)
        if image_rows:
            embeds = host_to_device(np.concatenate(image_rows).astype(np.float32, copy=False), self.device)
            batch.image_embeds = embeds.to(self.dtype)
            batch.image_positions = image_positions_t
        return batch

    def _image_positions(self, seq: SeqInput) -> tuple[list[int], list[int]]:
        """(rows of seq.image_embeds, offsets within the new tokens) of the prompt's image tokens.

        A prefill may start after a cached prefix: the k-th image token among the new tokens is
        row image_row_start + k of the request's image embeddings.
        """
        token = self.image_token_index
        prompt_part = seq.new_token_ids[: max(0, seq.num_prompt_tokens - seq.prefix_len)]
        offsets = [i for i, t in enumerate(prompt_part) if t == token]
        return [seq.image_row_start + k for k in range(len(offsets))], offsets

    def forward(self, step: StepInput, feed: TokenFeed | None = None) -> torch.Tensor:
        """[B, vocab] fp32 logits; from a CUDA graph, a view valid until the next forward. Queued on the
        device, not waited for. `feed`: input ids that are still on the device (sampled by the previous step)."""
        return self.forward_with_hidden(step, feed)[0]

    @torch.inference_mode()
    def forward_with_hidden(
        self, step: StepInput, feed: TokenFeed | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits as forward(), final normed hidden states [R, hidden] fp32 of the embedding requests' rows,
        in step order (`pooled_offsets`), or None when the step has no embedding request). Every rank calls
        this, so the ranks all-reduce the same rows."""
        graphs = self.graph_runner
        if self.use_cuda_graph and graphs is not None and graphs.can_run(step):
            try:
                return graphs.forward(step, feed), None
            except Exception:  # a capture that fails leaves the eager path working
                self._graphs_failed()
        pieces = self.prefill_graphs if self.use_cuda_graph else None
        num_tokens = sum(len(s.new_token_ids) for s in step.seqs)
        bucket = pieces.bucket_for(step, num_tokens) if pieces is not None else None
        batch = self.prepare(step, feed, pad_to=bucket or 0)
        if bucket is not None:
            try:
                return pieces.forward(batch, num_tokens)
            except Exception:  # the padded batch runs eagerly just as well
                self._graphs_failed()
        return self.model.forward_with_hidden(batch, self.kv, self.ops)

    def num_graphs(self) -> tuple[int, int]:
        """(decode graphs, prefill graph pieces) captured so far."""
        return (self.graph_runner.num_graphs if self.graph_runner is not None else 0,
                self.prefill_graphs.num_graphs if self.prefill_graphs is not None else 0)  # fmt: skip

    def _graphs_failed(self) -> None:
        log.error("rank %d: a CUDA graph failed, running eagerly from now on:\n%s", self.rank, traceback.format_exc())
        self.use_cuda_graph = False
        self.graph_failed = True
