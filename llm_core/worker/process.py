"""Worker process entry point: one process per TP rank, rank 0 also runs the scheduler loop."""

from __future__ import annotations

import faulthandler
import functools
import logging
import os
import signal
import sys
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from llm_core.collectives import broadcast_step, receive_step
from llm_core.config import EngineConfig
from llm_core.detokenizer import load_tokenizer_in_background
from llm_core.lifetime import set_parent_death_signal
from llm_core.scheduler import Router
from llm_core.worker.model_runner import ModelRunner
from llm_core.worker.scheduler_loop import AddCommand, SchedulerLoop


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the process that started us dies."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _init_distributed(cfg: EngineConfig, rank: int):
    """Returns (tp_group for tensors, cpu_group for control objects); (None, None) at tp=1."""
    if cfg.tp == 1:
        return None, None
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{cfg.dist_port}",
        rank=rank,
        world_size=cfg.tp,
        timeout=timedelta(seconds=600),
    )
    cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return dist.group.WORLD, cpu_group


def _agree_num_slots(runner: ModelRunner, cpu_group) -> int:
    slots = torch.tensor([runner.max_slots_available()], dtype=torch.int64)
    if cpu_group is not None:
        dist.all_reduce(slots, op=dist.ReduceOp.MIN, group=cpu_group)
    return int(slots.item())


def worker_main(rank: int, cfg: EngineConfig, conn, parent_pid: int) -> None:
    """conn: a Pipe end to the engine (rank 0) or to nothing but readiness (ranks > 0)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides when we stop
    faulthandler.enable()  # a crash in native code (CUDA, NCCL) still leaves the Python stack in the log
    logging.basicConfig(level=logging.INFO, format=f"[llm_core rank {rank}] %(levelname)s %(message)s")
    if cfg.dump_stacks_s:  # debugging hangs
        faulthandler.dump_traceback_later(cfg.dump_stacks_s, repeat=True)
    tokenizer = load_tokenizer_in_background(cfg.model_dir) if rank == 0 else None  # while the weights load
    try:
        tp_group, cpu_group = _init_distributed(cfg, rank)
        runner = ModelRunner(cfg, rank, tp_group)
        num_slots = _agree_num_slots(runner, cpu_group)
        if num_slots < 1:
            raise RuntimeError("no device memory left for the KV cache (raise mem_fraction?)")
        runner.allocate_kv(num_slots)
        runner.warm_up()
        tokenizer = tokenizer.result() if tokenizer is not None else None
    except BaseException:
        conn.send(("fatal", rank, traceback.format_exc()))
        raise SystemExit(1) from None
    if rank == 0:
        _rank0_loop(cfg, runner, conn, cpu_group, num_slots, tokenizer)
    else:
        conn.send(("ready", rank, num_slots))
        _follower_loop(runner, cpu_group)
    _exit_worker(runner)


def _exit_worker(runner: ModelRunner) -> None:
    """Leave without running destructors. At tp > 1 the process group and the symmetric-memory
    buffer (CUDA IPC mappings of the peer's memory) would be torn down by static destructors in an
    order the ranks do not agree on, and a rank can wait there for a peer that has already gone.
    The engine has stopped sending work, so nothing is left to finish but our own GPU queue."""
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _follower_loop(runner: ModelRunner, cpu_group) -> None:
    while (step := receive_step(cpu_group)) is not None:
        runner.forward(step)


def _rank0_loop(cfg: EngineConfig, runner: ModelRunner, conn, cpu_group, num_slots: int, tokenizer) -> None:
    router = Router(
        num_slots=num_slots,
        max_running_requests=cfg.max_running_requests,
        max_prefill_tokens=cfg.max_prefill_tokens,
        max_model_len=runner.max_model_len,
        decode_steps_per_prefill=cfg.decode_steps_per_prefill,
        mixed_prefill_tokens=cfg.mixed_prefill_tokens,
        lookahead=1 if cfg.overlaps_steps else 0,
        optimistic=cfg.optimistic_admission,
        optimistic_ratio=cfg.optimistic_ratio,
        prefix_cache=cfg.prefix_cache,
    )
    broadcast = functools.partial(broadcast_step, group=cpu_group) if cpu_group is not None else None
    loop = SchedulerLoop(runner, router, tokenizer, conn.send, broadcast, overlap=cfg.overlaps_steps)
    conn.send(("ready", 0, num_slots))
    try:
        while True:
            # Block when idle; otherwise just drain what has arrived since the last step.
            timeout = 0 if loop.has_work() else 0.5
            while conn.poll(timeout):
                message = conn.recv()
                kind = message[0]
                if kind == "add":
                    loop.add(message[1])
                elif kind == "abort":
                    loop.abort(message[1])
                elif kind == "shutdown":
                    if broadcast is not None:
                        broadcast(None)  # the followers' loops end
                    return
                timeout = 0
            loop.step()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the engine went away
    except BaseException:
        conn.send(("fatal", 0, traceback.format_exc()))
        raise


__all__ = ["AddCommand", "worker_main", "die_with_parent"]
