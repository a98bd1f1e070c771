"""Worker processes stop with shutdown() and die with a killed parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from llm_core import Engine, EngineConfig


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids, timeout=10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_shutdown_stops_workers(tiny_model_factory):
    engine = Engine(EngineConfig(model_dir=str(tiny_model_factory("llama"))))
    pids = engine.worker_pids()
    assert all(_alive(p) for p in pids)
    engine.shutdown()
    assert _wait_gone(pids) == []


_CHILD = """
import sys, time
from llm_core import Engine, EngineConfig
engine = Engine(EngineConfig(model_dir=sys.argv[1]))
print(" ".join(map(str, engine.worker_pids())), flush=True)
time.sleep(600)
"""


def test_killing_the_parent_kills_workers(tiny_model_factory):
    model_dir = str(tiny_model_factory("llama"))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, model_dir], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert pids and all(_alive(p) for p in pids)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _wait_gone(pids) == []


def test_dead_worker_fails_requests_and_engine_recovers(tiny_model_factory):
    import queue

    from llm_core import SamplingParams

    with Engine(EngineConfig(model_dir=str(tiny_model_factory("llama")))) as engine:
        q: queue.Queue = queue.Queue()
        engine.add_request([1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True, temperature=0.0), output_queue=q)
        q.get(timeout=60)
        os.kill(engine.worker_pids()[0], signal.SIGKILL)
        start = time.monotonic()
        while not (chunk := q.get(timeout=10)).finished:
            pass
        assert chunk.finish_reason == "error" and "engine failure" in chunk.error
        assert time.monotonic() - start < 5
        deadline = time.monotonic() + 120
        while True:
            try:
                out = engine.generate([[4, 5, 6]], SamplingParams(max_tokens=4, temperature=0.0))[0]
                break
            except RuntimeError:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert out.finish_reason in ("stop", "length") and engine.stats()["restarts"] == 1
