"""Tensor-parallel linear and embedding layers that know their shard.

Every parameter carries `weight_loader(param, source[, shard_id])`; `source` is the full
checkpoint tensor or a safetensors slice (`safe_open(...).get_slice(name)`): the loader indexes
only its own rows/columns, so a rank never materialises a full tensor. At tp size 1 no
collective is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llm_core.ops import torch_ops

WeightSource = Any  # torch.Tensor or safetensors PySafeSlice: both support `source[a:b]`, `source[:, a:b]`


@dataclass(frozen=True, slots=True)
class TensorParallel:
    """This rank's place in the tensor-parallel group (group None = the default process group)."""

    rank: int = 0
    size: int = 1
    group: Any = None
    # Optional small-tensor path (collectives.py): fast(x) -> reduced tensor, or None for NCCL.
    fast_all_reduce: Any = None

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks; the result may be a new tensor (use the return value)."""
        if self.size > 1:
            if self.fast_all_reduce is not None and x.is_cuda:
                out = self.fast_all_reduce(x)
                if out is not None:
                    return out
            dist.all_reduce(x, group=self.group)
        return x

    def all_reduce_add_rms_norm(
        self, ops, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ops.add_rms_norm(all_reduce(x), residual, ...), fused into one kernel where the small-tensor
        path can (kernels/all_reduce_norm.py)."""
        if self.size > 1:
            if self.fast_all_reduce is not None and x.is_cuda:
                fused = self.fast_all_reduce.add_rms_norm(x, residual, weight, eps)
                if fused is not None:
                    return fused
            x = self.all_reduce(x)
        return ops.add_rms_norm(x, residual, weight, eps)

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        # [..., N] per rank -> [..., size * N], rank order
        if self.size == 1:
            return x
        x = x.contiguous()
        if x.is_cuda:  # one flat NCCL all-gather: no per-part copies, capturable in CUDA graphs
            out = torch.empty((self.size, *x.shape), dtype=x.dtype, device=x.device)
            dist.all_gather_into_tensor(out, x, group=self.group)
            return out.movedim(0, -2).reshape(*x.shape[:-1], self.size * x.shape[-1])
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=-1)


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"weight shard shape {tuple(src.shape)} != parameter shape {tuple(dst.shape)}")
    dst.copy_(src)


def default_weight_loader(param: nn.Parameter, source: WeightSource) -> None:
    """Replicated parameter (norms, biases of row-parallel layers): copy the whole tensor."""
    with torch.no_grad():
        _copy(param.data, source[:])


def _new_param(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, loader) -> nn.Parameter:
    param = nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)
    param.weight_loader = loader
    return param


def _split(total: int, tp: TensorParallel, what: str) -> int:
    if total % tp.size:
        raise ValueError(f"{what}={total} is not divisible by tp size {tp.size}")
    return total // tp.size


class QKVParallelLinear(nn.Module):
    """q, k and v projections fused by output rows: [q heads | k heads | v heads] of this rank.

    With tp size > num_kv_heads each rank holds one kv head, replicated over tp / num_kv_heads ranks.
    """

    def __init__(self, hidden_size, head_dim, num_heads, num_kv_heads, bias, tp: TensorParallel, dtype, device):
        super().__init__()
        if num_kv_heads % tp.size and tp.size % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} and tp size {tp.size} do not divide")
        self.tp = tp
        self.head_dim = head_dim
        self.num_heads = _split(num_heads, tp, "num_heads")  # per rank
        self.num_kv_heads = max(1, num_kv_heads // tp.size)  # per rank
        self.first_kv_head = tp.rank * num_kv_heads // tp.size
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim
        self.weight = _new_param((out, hidden_size), dtype, device, self.weight_loader)
        self.bias = _new_param((out,), dtype, device, self.weight_loader) if bias else None

    @property
    def output_sizes(self) -> tuple[int, int, int]:
        kv = self.num_kv_heads * self.head_dim
        return self.num_heads * self.head_dim, kv, kv

    def weight_loader(self, param: nn.Parameter, source: WeightSource, shard_id: str) -> None:
        q_size, kv_size, _ = self.output_sizes
        if shard_id == "q":
            start, offset, size = self.tp.rank * q_size, 0, q_size
        else:
            start, size = self.first_kv_head * self.head_dim, kv_size
            offset = q_size if shard_id == "k" else q_size + kv_size
        with torch.no_grad():
            _copy(param.data[offset : offset + size], source[start : start + size])

    def forward(self, x: torch.Tensor, ops: ModuleType = torch_ops) -> torch.Tensor:
        # [T, hidden] -> [T, (num_heads + 2 * num_kv_heads) * head_dim] of this rank
        return ops.linear(x, self.weight, self.bias)


class MergedGateUpLinear(nn.Module):
    """gate and up projections fused by output rows: [gate shard | up shard], for ops.silu_and_mul."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, tp: TensorParallel, dtype, device):
        super().__init__()
        self.tp = tp
        self.shard_size = _split(intermediate_size, tp, "intermediate_size")
        out = 2 * self.shard_size
        self.weight = _new_param((out, hidden_size), dtype, device, self.weight_loader)
        self.bias = _new_param((out,), dtype, device, self.weight_loader) if bias else None

    def weight_loader(self, param: nn.Parameter, source: WeightSource, shard_id: int) -> None:
        # shard_id 0 = gate_proj, 1 = up_proj
        size = self.shard_size
        start = self.tp.rank * size
        with torch.no_grad():
            _copy(param.data[shard_id * size : (shard_id + 1) * size], source[start : start + size])

    def forward(self, x: torch.Tensor, ops: ModuleType = torch_ops) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)  # [T, 2 * intermediate / tp]

    def forward_silu_and_mul(self, x: torch.Tensor, ops: ModuleType = torch_ops) -> torch.Tensor:
        # silu(gate) * up: [T, intermediate / tp] (one kernel for decode-sized T on GPUs)
        return ops.linear_silu_and_mul(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_shard W_shard^T) + b, W split by input columns; input is sharded.

    `forward(x, reduce=False)` (no bias only) returns this rank's partial sum: the caller reduces
    it later, fused with what follows (TensorParallel.all_reduce_add_rms_norm)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TensorParallel, dtype, device):
        super().__init__()
        self.tp = tp
        in_per_rank = _split(in_features, tp, "in_features")
        self.weight = _new_param((out_features, in_per_rank), dtype, device, self.weight_loader)
        self.bias = _new_param((out_features,), dtype, device, default_weight_loader) if bias else None

    def weight_loader(self, param: nn.Parameter, source: WeightSource) -> None:
        cols = param.shape[1]
        with torch.no_grad():
            _copy(param.data, source[:, self.tp.rank * cols : (self.tp.rank + 1) * cols])

    def forward(self, x: torch.Tensor, reduce: bool = True, ops: ModuleType = torch_ops) -> torch.Tensor:
        out = ops.linear(x, self.weight)
        if not reduce:
            assert self.bias is None, "a partial sum with a bias would add the bias once per rank"
            return out
        out = self.tp.all_reduce(out)
        return out if self.bias is None else out + self.bias


def _vocab_shard(vocab_size: int, tp: TensorParallel) -> tuple[int, int, int]:
    # -> (rows per rank, first vocabulary row of this rank, real rows of this rank)
    rows_per_rank = -(-vocab_size // tp.size)
    start = tp.rank * rows_per_rank
    return rows_per_rank, start, max(0, min(rows_per_rank, vocab_size - start))


def _load_vocab_rows(param: nn.Parameter, source: WeightSource, start: int, num_rows: int) -> None:
    with torch.no_grad():
        _copy(param.data[:num_rows], source[start : start + num_rows])
        param.data[num_rows:].zero_()


class VocabParallelEmbedding(nn.Module):
    """Rank r holds vocabulary rows [r * rows, (r + 1) * rows), zero-padded past vocab_size."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel, dtype, device):
        super().__init__()
        self.tp = tp
        rows_per_rank, self.vocab_start, self.num_rows = _vocab_shard(vocab_size, tp)
        self.weight = _new_param((rows_per_rank, hidden_size), dtype, device, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, source: WeightSource) -> None:
        _load_vocab_rows(param, source, self.vocab_start, self.num_rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # [T] -> [T, hidden]
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        in_shard = (local >= 0) & (local < self.num_rows)
        out = F.embedding(local.masked_fill(~in_shard, 0), self.weight)
        out.masked_fill_(~in_shard[:, None], 0)
        return self.tp.all_reduce(out)


class ParallelLMHead(nn.Module):
    """Vocab-parallel output projection; logits are all-gathered to the full vocabulary.

    With `tied_to` (an embedding) the weight is that embedding's parameter: same shard layout.
    """

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel, dtype, device, tied_to=None):
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        rows_per_rank, self.vocab_start, self.num_rows = _vocab_shard(vocab_size, tp)
        if tied_to is not None:
            self.weight = tied_to.weight
        else:
            self.weight = _new_param((rows_per_rank, hidden_size), dtype, device, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, source: WeightSource) -> None:
        _load_vocab_rows(param, source, self.vocab_start, self.num_rows)

    def forward(self, hidden: torch.Tensor, ops: ModuleType = torch_ops) -> torch.Tensor:
        # [B, hidden] -> [B, vocab] in the model dtype
        logits = self.tp.all_gather_last_dim(ops.linear(hidden, self.weight))
        return logits[:, : self.vocab_size]
