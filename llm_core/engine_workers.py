"""The worker processes of one engine generation, started, watched and stopped together."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import threading
import time
from dataclasses import replace

from llm_core.config import EngineConfig
from llm_core.worker.process import worker_main

SPAWN_HINT = (
    "worker processes are started with multiprocessing 'spawn', which re-imports the main module: "
    'in a script, create the Engine under `if __name__ == "__main__":`'
)


class EngineDeadError(RuntimeError):
    pass


class EngineUnavailableError(EngineDeadError):
    """The engine cannot take requests now but may again later (workers restarting or down):
    a client should retry (HTTP 503 / gRPC UNAVAILABLE), unlike a bad request."""

    retryable = True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_not_bootstrapping() -> None:
    """Refuse to start workers from a spawned child that is still importing its main module
    (a script without a __main__ guard): multiprocessing would fail with a cryptic error."""
    if getattr(mp.current_process(), "_inheriting", False):
        raise EngineDeadError(f"an Engine was created while a worker process was starting: {SPAWN_HINT}")


class Workers:
    """One generation of worker processes: rank 0 (scheduler loop) and ranks 1..tp-1."""

    def __init__(self, cfg: EngineConfig) -> None:
        ctx = mp.get_context("spawn")
        if cfg.tp > 1:
            cfg = replace(cfg, dist_port=cfg.dist_port or _free_port())
        self.conns = []
        self.procs = []
        for rank in range(cfg.tp):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(rank, cfg, theirs, os.getpid()), daemon=True, name=f"llm_core-rank{rank}"
            )
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)
        self.conn = self.conns[0]
        self.start_timeout_s = cfg.start_timeout_s
        self._kill_lock = threading.Lock()
        self._killed = False
        self.num_slots = self._wait_ready()

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + self.start_timeout_s
        slots = 0
        for rank, conn in enumerate(self.conns):
            while not conn.poll(0.2):
                if not self.procs[rank].is_alive() or time.monotonic() > deadline:
                    self.kill()
                    raise EngineDeadError(self._start_failure(rank))
            try:
                message = conn.recv()
            except EOFError:
                self.procs[rank].join(timeout=5)
                self.kill()
                raise EngineDeadError(self._start_failure(rank)) from None
            if message[0] == "fatal":
                self.kill()
                raise EngineDeadError(f"worker rank {message[1]} failed to start:\n{message[2]}")
            slots = message[2]
        return slots

    def _start_failure(self, rank: int) -> str:
        code = self.procs[rank].exitcode
        if code is None:
            return f"worker rank {rank} failed to start within {self.start_timeout_s:.0f}s"
        # Exit code 1 before any message: typically the spawn bootstrap error of an unguarded script.
        hint = f"; {SPAWN_HINT}" if code == 1 else ""
        return f"worker rank {rank} failed to start (exit code {code}){hint}"

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def exit_codes(self) -> list[int | None]:
        return [p.exitcode for p in self.procs]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def kill(self) -> None:
        """Idempotent: the reader thread (recovery) and shutdown may both get here."""
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(timeout=5)
        for conn in self.conns:
            conn.close()

    def stop(self, timeout: float = 10.0) -> None:
        try:
            self.conn.send(("shutdown",))
        except (OSError, EOFError):
            pass
        for proc in self.procs:
            proc.join(timeout=timeout)
        self.kill()
