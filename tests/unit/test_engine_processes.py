"""Worker processes stop with shutdown() and die with a killed parent."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time

from llm_core import Engine, EngineConfig, SamplingParams, StreamChunk


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
from llm_core import Engine, EngineConfig, SamplingParams, StreamChunk
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


def _stream_tokens(q: queue.Queue, on_first=None) -> tuple[list[int], StreamChunk, float]:
    """Collect a request's tokens; -> (tokens, last chunk, longest gap between chunks in s)."""
    tokens: list[int] = []
    longest, last = 0.0, time.monotonic()
    while True:
        chunk = q.get(timeout=120)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
        tokens += chunk.token_ids
        if on_first is not None:
            on_first, call = None, on_first
            call()
        if chunk.finished:
            return tokens, chunk, longest


def test_dead_worker_resumes_in_flight_and_queues_new_requests(tiny_model_factory):
    params = SamplingParams(max_tokens=300, ignore_eos=True, temperature=0.0)
    with Engine(EngineConfig(model_dir=str(tiny_model_factory("llama")))) as engine:
        expected = engine.generate([[1, 2, 3]], params)[0].token_ids
        q: queue.Queue = queue.Queue()
        engine.add_request([1, 2, 3], params, output_queue=q)
        late: queue.Queue = queue.Queue()

        def kill_then_add() -> None:
            os.kill(engine.worker_pids()[0], signal.SIGKILL)
            while engine.state == "ready":  # the reader notices within 0.2 s
                time.sleep(0.01)
            engine.add_request([4, 5, 6], SamplingParams(max_tokens=4, temperature=0.0), output_queue=late)

        tokens, last, longest = _stream_tokens(q, on_first=kill_then_add)
        assert last.finish_reason == "length" and last.error is None, last
        assert tokens == expected  # greedy: resumed output equals the uninterrupted run
        assert longest > 0.2  # it did pause for the restart
        late_tokens, late_last, _ = _stream_tokens(late)
        assert late_last.finish_reason in ("stop", "length") and late_tokens
        stats = engine.stats()
        assert stats["restarts"] == 1 and stats["resumed_requests"] == 2 and engine.state == "ready"


_UNGUARDED = """
from llm_core import Engine, EngineConfig, SamplingParams
import sys
with Engine(EngineConfig(model_dir=sys.argv[1])) as engine:
    print(engine.generate([[1, 2]], SamplingParams(max_tokens=2))[0].token_ids)
"""


def test_script_without_main_guard_gets_a_clear_error(tiny_model_factory, tmp_path):
    script = tmp_path / "offline.py"
    script.write_text(_UNGUARDED)
    out = subprocess.run(
        [sys.executable, str(script), str(tiny_model_factory("llama"))], capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    assert 'if __name__ == "__main__":' in out.stderr, out.stderr[-2000:]
