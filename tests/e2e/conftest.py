"""A real tritonserver (through our launcher) on free ports, one per session and model.

`triton_server` serves the default tiny LLaVA (byte-level BPE tokenizer); test_sentencepiece_kill.py
starts its own (tiny Llama, SentencePiece-style tokenizer) and ends it with kill -9. Teardown sends
SIGTERM and asserts a clean exit: launcher exit code 0, no process of the server's tree left,
no /dev/shm segment with its prefix. Server logs go to the session's temp dir.
"""

from __future__ import annotations

import signal

import pytest

from llm_core.serving.server_process import ServerProcess

pytestmark = pytest.mark.e2e

SHUTDOWN_TIMEOUT_S = 45.0  # tritonserver's own exit timeout is 30 s


def _serve(model_dir, log_dir, name: str, extra_args: list[str] | None = None, exit_codes: tuple[int, ...] = (0,)):
    server = ServerProcess(model_dir, log_path=log_dir / f"{name}.log", extra_args=extra_args)
    server.start()
    try:
        yield server
    finally:
        code = server.stop(signal.SIGTERM, timeout=SHUTDOWN_TIMEOUT_S)
        procs, shm = server.leftovers()
        assert code in exit_codes, f"server did not exit cleanly on SIGTERM (code {code}); {server._tail()}"
        assert not procs, f"processes left after shutdown: {procs}"
        assert not shm, f"/dev/shm segments left after shutdown: {shm}"


@pytest.fixture(scope="session")
def triton_server(tiny_llava, tmp_path_factory):
    """ServerProcess serving tiny LLaVA (bpe): .grpc_url, .http_url, .metrics_url, .model_dir."""
    yield from _serve(tiny_llava, tmp_path_factory.mktemp("triton-logs"), "llava", ["--max-total-tokens=8192"])


@pytest.fixture(scope="module")
def tp2_server(tiny_llava, tmp_path_factory):
    """The same model served with tp=2 (two gloo rank processes under the llm stub)."""
    yield from _serve(
        tiny_llava, tmp_path_factory.mktemp("tp2-logs"), "llava-tp2", ["--tp=2", "--max-total-tokens=4096"]
    )


@pytest.fixture(scope="session")
def fault_server(tiny_llava, tmp_path_factory):
    """A server of its own for the fault tests and the soak (they kill its llm stub and engine
    workers), so that the other tests never run against a server that is recovering."""
    # After a stub was killed, tritonserver 2.51 waits its whole exit timeout on shutdown (the dead
    # stub's model never finishes unloading) and exits 1: shorten the wait, accept that code.
    args = ["--max-total-tokens=8192", "--", "--exit-timeout-secs=5"]
    yield from _serve(tiny_llava, tmp_path_factory.mktemp("fault-logs"), "faults", args, exit_codes=(0, 1))
