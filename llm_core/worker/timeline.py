"""Where the rank-0 loop's time goes: one record per step, summed per step kind.

An iteration of the loop is: schedule (router + step inputs), launch (input staging and the forward's
kernel launches or CUDA graph replay, and the sampling, all queued on the device), wait (until the ids of
the step before come back: with the overlapped loop the device already has this step queued), output
(those ids into requests, stop checks, chunks sent to the engine). The time between iterations is spent
reading commands (`between`, while requests are in flight) or idle (nothing to run). On CUDA each step's
device work is bracketed by two events (`GpuSpan`); their elapsed time is read once the step is done.

`summary()` gives totals per kind ("decode", "prefill", "mixed") in the engine's stats, as flat keys
`step_<kind>_<field>` (counts, rows, tokens and seconds), plus `step_between_s` and `step_idle_s`.
`LateCompiles` adds the time spent compiling Triton kernels after warm-up (none when warm-up is complete).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, fields

import torch

PHASES = ("schedule", "launch", "wait", "output")


@dataclass(slots=True)
class KindTotals:
    steps: int = 0
    rows: int = 0  # sequences
    tokens: int = 0  # new tokens computed
    schedule_s: float = 0.0
    launch_s: float = 0.0
    wait_s: float = 0.0
    output_s: float = 0.0
    gpu_s: float = 0.0  # CUDA events around the forward (0 on CPU)
    wall_s: float = 0.0


class GpuSpan:
    """Events recorded before and after a step's device work; read once that work is done."""

    __slots__ = ("start", "stop")

    def __init__(self) -> None:
        self.start = torch.cuda.Event(enable_timing=True)
        self.stop = torch.cuda.Event(enable_timing=True)

    def seconds(self) -> float:
        return self.start.elapsed_time(self.stop) / 1000.0


class StepTimeline:
    """Records the phases of each step; `begin` ... `mark(phase)` ... `end(kind, rows, tokens)`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals: dict[str, KindTotals] = {}
        self.idle_s = 0.0
        self.between_s = 0.0
        self._busy = False  # requests were in flight when the last step ended
        self._last_end = time.perf_counter()
        self._t0 = self._mark = self._last_end
        self._phases = dict.fromkeys(PHASES, 0.0)

    def begin(self) -> None:
        now = time.perf_counter()
        if self._busy:
            self.between_s += now - self._last_end
        else:
            self.idle_s += now - self._last_end
        self._t0 = self._mark = now

    def mark(self, phase: str) -> None:
        """The time since the previous mark (or begin) was spent in `phase`."""
        now = time.perf_counter()
        self._phases[phase] += now - self._mark
        self._mark = now

    def gpu_span(self) -> GpuSpan | None:
        """Two timing events for one step's device work (None on the CPU)."""
        return GpuSpan() if self.cuda else None

    def end(
        self, kind: str, rows: int, tokens: int, busy: bool, gpu: GpuSpan | None = None, gpu_kind: str = ""
    ) -> None:
        """After the iteration's outputs are sent; `kind`, `rows`, `tokens`: of the step it launched; `gpu`: the
        span of the step it completed (done by now), of kind `gpu_kind`; busy: work remains."""
        now = time.perf_counter()
        self._busy = busy
        totals = self._kind(kind)
        totals.steps += 1
        totals.rows += rows
        totals.tokens += tokens
        for phase in PHASES:
            setattr(totals, f"{phase}_s", getattr(totals, f"{phase}_s") + self._phases[phase])
            self._phases[phase] = 0.0
        if gpu is not None:
            self._kind(gpu_kind or kind).gpu_s += gpu.seconds()
        totals.wall_s += now - self._t0
        self._last_end = now

    def _kind(self, kind: str) -> KindTotals:
        totals = self.totals.get(kind)
        if totals is None:
            totals = self.totals[kind] = KindTotals()
        return totals

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {"step_idle_s": round(self.idle_s, 6), "step_between_s": round(self.between_s, 6)}
        for kind, totals in self.totals.items():
            for f in fields(KindTotals):
                value = getattr(totals, f.name)
                out[f"step_{kind}_{f.name}"] = round(value, 6) if isinstance(value, float) else value
        return out


class LateCompiles:
    """Counts the Triton kernels compiled after warm-up (each one stalls every request for a second or more)
    and logs each with its specialisation, so that a variant the steps above miss shows up in the log and in
    `Engine.stats()` (`kernels_compiled_after_warmup`, `compile_s_after_warmup`) instead of as slow requests.
    Installed by the worker once warm-up is done; through Triton's JIT hooks (no effect in the interpreter)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    def install(self) -> None:
        try:
            from triton import knobs
        except ImportError:  # a Triton without knobs: nothing to watch
            return
        knobs.runtime.jit_cache_hook = self._before
        knobs.runtime.jit_post_compile_hook = self._after

    def _before(self, *, key, repr, **_) -> bool:
        with self._lock:
            self._started[str(key)] = time.perf_counter()
        return False  # compile as usual

    def _after(self, *, key, repr, **_) -> None:
        with self._lock:
            seconds = time.perf_counter() - self._started.pop(str(key), time.perf_counter())
            self.count += 1
            self.seconds += seconds
        logging.getLogger(__name__).warning(
            "compiled a Triton kernel after warm-up in %.2f s (worker/warmup.py misses this variant): %s", seconds, repr
        )

    def stats(self) -> dict:
        return {"kernels_compiled_after_warmup": self.count, "compile_s_after_warmup": round(self.seconds, 3)}
