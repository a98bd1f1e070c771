"""The llm stub survives the death of its engine worker: in-flight requests fail with a clear
error, the engine restarts its workers, and the server serves again (DESIGN §5: a dead stub
would never come back)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from e2e_helpers import grpc_stream, metrics

pytestmark = pytest.mark.e2e


def _engine_workers(server) -> list:
    workers = []
    for proc in server.sample_tree():
        try:
            parent = proc.parent()
            if parent is not None and "llm/1/model.py" in " ".join(parent.cmdline()):
                workers.append(proc)
        except Exception:  # noqa: BLE001 - a process may vanish while we look
            pass
    return workers


def test_engine_worker_death_fails_in_flight_then_recovers(triton_server):
    workers = _engine_workers(triton_server)
    assert workers, "no engine worker found under the llm stub"
    restarts = metrics(triton_server.metrics_url).get("llm_engine_restarts_total", 0)
    result = {}
    values = {
        "text_input": "a long story",
        "max_tokens": 900,
        "sampling_parameters": json.dumps({"ignore_eos": True, "temperature": 0}),
    }
    thread = threading.Thread(target=lambda: result.update(r=grpc_stream(triton_server.grpc_url, values)))
    thread.start()
    time.sleep(0.3)
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    thread.join(60)
    assert result["r"].error is not None and "engine" in result["r"].error, result["r"]
    deadline = time.monotonic() + 180
    while True:
        again = grpc_stream(triton_server.grpc_url, {"text_input": "are you back?", "max_tokens": 4})
        if again.error is None:
            break
        assert "restarting" in again.error, again.error
        assert time.monotonic() < deadline, "the engine did not come back"
        time.sleep(1)
    assert again.num_output_tokens >= 1
    time.sleep(0.5)
    assert metrics(triton_server.metrics_url)["llm_engine_restarts_total"] == restarts + 1
