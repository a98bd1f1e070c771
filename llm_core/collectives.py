"""Communication between tp ranks: rank 0's step inputs to the followers (`broadcast_step`), and a
low-latency all-reduce for small (decode-sized) tensors through torch symmetric memory.

A decode step of a tp-sharded Llama issues two all-reduces per layer on [batch, hidden]
activations: a few KB at batch 1, where NCCL's ring protocol costs ~20 µs each. The one-shot
all-reduce of `torch.ops.symm_mem` copies the local input into a buffer every rank has mapped
(CUDA IPC over NVLink, no multicast needed), signals the peers, and each rank sums all ranks'
buffers with plain loads: one kernel, capturable in CUDA graphs. Larger tensors (prefill) go to
NCCL, which is bandwidth-optimal there.

`add_rms_norm` goes one step further for the all-reduces of row-parallel projections: the sum, the
residual add and the RMSNorm after it in one Triton kernel (kernels/all_reduce_norm.py) over a
second, double staging buffer and our own flags.
"""

from __future__ import annotations

import importlib
import logging

import torch
import torch.distributed as dist

from llm_core.batch import StepInput

log = logging.getLogger("llm_core.collectives")
ONE_SHOT_MAX_BYTES = 1 << 20  # [128, 4096] bf16; above this NCCL's ring wins on 2 GPUs
# Fused all-reduce + RMSNorm up to this many rows (its buffers are sized for them). H200 x2, [rows, 4096]
# bf16 in a graph: 5.2 us at 1 row to 8.2 us at 64, 1.5x faster than the one-shot all-reduce + norm at
# every row count measured (benchmarks/all_reduce.py, 2026-11-22). Larger
# batches (not measured) take the one-shot + norm path up to 1 MiB, then NCCL.
FUSED_MAX_ROWS = 64
ONE_SHOT_DTYPES = (torch.bfloat16, torch.float32)  # what torch's CUDA one-shot kernel dispatches (not fp16)
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # the fused kernel: any of them


class SymmMemAllReduce:
    """Callable: `self(x)` returns the sum over ranks of x, or None where NCCL should do it."""

    def __init__(
        self,
        group,
        device: torch.device,
        dtype: torch.dtype,
        hidden_size: int,
        max_bytes: int = ONE_SHOT_MAX_BYTES,
        fused_max_rows: int = FUSED_MAX_ROWS,
    ):
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = group.group_name
        self.dtype = dtype
        self.enabled = True  # benchmarks switch it off to compare with NCCL
        self.fuse_norm = True  # add_rms_norm: the fused kernel (benchmarks compare with all-reduce + norm)
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        # CUDA IPC handles. Not NVSHMEM: its frees are collective, so a buffer freed by one rank's
        # garbage collector or exit path alone waits for the others forever.
        if hasattr(symm_mem, "set_backend") and symm_mem.get_backend(device) != "CUDA":
            symm_mem.set_backend("CUDA")
        self.buffer = symm_mem.empty(max_bytes // dtype.itemsize, dtype=dtype, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)
        # The fused kernel's buffers: a double staging buffer with a slot per source rank and
        # flags[row, rank] (both symmetric), and this rank's call count per row. Flags are zero before
        # the rendezvous (collective), so no peer can signal into them before.
        from llm_core.kernels.all_reduce_norm import all_reduce_add_rms_norm  # triton: imported on CUDA only

        self._fused_kernel = all_reduce_add_rms_norm
        self.one_shot = dtype in ONE_SHOT_DTYPES  # torch's one-shot kernel has no fp16; NCCL does those
        self.hidden_size = hidden_size
        self.fused_max_rows = max(1, min(fused_max_rows, self.buffer.numel() // hidden_size))
        self.stage = symm_mem.empty(2 * self.world * self.fused_max_rows * hidden_size, dtype=dtype, device=device)
        self.flags = symm_mem.empty((self.fused_max_rows, self.world), dtype=torch.int64, device=device)
        self.flags.zero_()
        self.epochs = torch.zeros(self.fused_max_rows, dtype=torch.int64, device=device)
        torch.cuda.synchronize(device)
        stage_handle = symm_mem.rendezvous(self.stage, self.group_name)
        flags_handle = symm_mem.rendezvous(self.flags, self.group_name)
        self.stage_ptrs = torch.tensor(
            [stage_handle.get_buffer(r, self.stage.shape, dtype).data_ptr() for r in range(self.world)],
            dtype=torch.int64, device=device,
        )  # fmt: skip
        self.flag_ptrs = torch.tensor(
            [flags_handle.get_buffer(r, self.flags.shape, torch.int64).data_ptr() for r in range(self.world)],
            dtype=torch.int64, device=device,
        )  # fmt: skip
        self.backend = symm_mem.get_backend(device) if hasattr(symm_mem, "get_backend") else "CUDA"

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        # The op wants the local input aligned like the staging view (offset 0 of the buffer).
        if not (self.enabled and self.one_shot) or x.dtype != self.dtype or x.numel() > self.buffer.numel():
            return None
        if not x.is_contiguous() or x.storage_offset() != 0:
            return None
        out = torch.empty_like(x)
        staging = self.buffer[: x.numel()].view(x.shape)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(staging, x, "sum", self.group_name, out)
        return out

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rms_norm(sum_ranks(x) + residual), sum_ranks(x) + residual) in one kernel, or None where
        the caller should all-reduce and normalise separately (every rank decides alike: by shape)."""
        if not (self.enabled and self.fuse_norm) or x.dtype != self.dtype or x.dim() != 2:
            return None
        if x.shape[1] != self.hidden_size or x.shape[0] > self.fused_max_rows:
            return None
        return self._fused_kernel(x, residual, weight, eps, self.stage_ptrs, self.flag_ptrs, self.epochs, self.rank)


def _agree(ok: bool, group, device: torch.device) -> bool:
    flag = torch.tensor([int(ok)], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return bool(flag.item())


def _off(reason: str) -> None:
    log.warning("symmetric-memory all-reduce off (%s); using NCCL", reason or "on another rank")


def create_symm_mem_all_reduce(
    group, device: torch.device, dtype: torch.dtype, hidden_size: int
) -> SymmMemAllReduce | None:
    """A SymmMemAllReduce on every rank, or None on every rank (NCCL then does every all-reduce).

    The ranks agree before the rendezvous, which is collective (one rank failing alone must not leave
    the others waiting in it), and again after it. Rank r drives cuda:r, and every pair of GPUs must
    reach each other's memory (NVLink, or PCIe with peer access)."""
    if device.type != "cuda" or dtype not in SUPPORTED_DTYPES:
        return None
    reason = ""
    try:
        importlib.import_module("torch.distributed._symmetric_memory")
        if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out"):
            reason = "this torch has no symm_mem.one_shot_all_reduce_copy_out"
        world = dist.get_world_size(group)
        if any(not torch.cuda.can_device_access_peer(device.index, r) for r in range(world) if r != device.index):
            reason = "no peer access between the GPUs"
    except Exception as exc:  # noqa: BLE001 (any reason means: use NCCL)
        reason = f"{type(exc).__name__}: {exc}"
    if not _agree(not reason, group, device):
        return _off(reason)
    comm = None
    try:
        comm = SymmMemAllReduce(group, device, dtype, hidden_size)
    except Exception as exc:  # noqa: BLE001
        reason = f"{type(exc).__name__}: {exc}"
    if not _agree(comm is not None, group, device):
        return _off(reason)
    return comm


def broadcast_step(step: StepInput | None, group) -> None:
    """Rank 0 sends each step's inputs to the other ranks over the CPU (gloo) group; None ends their loops."""
    dist.broadcast_object_list([step], src=0, group=group)


def receive_step(group) -> StepInput | None:
    """A follower rank's half of broadcast_step."""
    box: list[StepInput | None] = [None]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]
