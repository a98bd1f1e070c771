"""A second server (tiny Llama, SentencePiece-style tokenizer with byte fallback): exact
streaming with that tokenizer family, then `kill -9` of tritonserver leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from e2e_helpers import PROMPTS, grpc_stream, http_generate

from llm_core.serving.server_process import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sp_server(tiny_llama_sp, tmp_path_factory):
    server = ServerProcess(
        tiny_llama_sp,
        log_path=tmp_path_factory.mktemp("triton-logs-sp") / "sp.log",
        extra_args=["--max-total-tokens=4096", "--max-restarts=0"],  # the kill test wants the launcher to exit
    )
    server.start()
    yield server
    server.stop(signal.SIGTERM, timeout=45)  # a no-op once the kill test ran


def test_stream_concatenation_equals_non_streamed_sentencepiece(sp_server):
    texts = []
    for seed, prompt in enumerate(PROMPTS):
        for values in (
            {"text_input": prompt, "max_tokens": 40, "temperature": 1.0, "seed": seed},
            {"text_input": prompt, "max_tokens": 24, "temperature": 0.0},
        ):
            streamed = grpc_stream(sp_server.grpc_url, values)
            status, whole = http_generate(sp_server.http_url, values)
            assert streamed.error is None and status == 200, (streamed, whole)
            assert streamed.text == whole["text_output"], (prompt, streamed.chunks)
            assert all(streamed.chunks[:-1]), streamed.chunks
            texts.append(whole["text_output"])
    assert any(" " in text for text in texts), texts  # SentencePiece spaces ("▁") survived
    assert any(ord(ch) > 0x2E80 for text in texts for ch in text), texts


def test_kill_9_leaves_no_process_and_no_shm(sp_server):
    # Requests in flight, so the engine worker, the llm sender thread (sends, metric updates)
    # and every stub are busy when the server dies.
    assert grpc_stream(sp_server.grpc_url, {"text_input": "warm up", "max_tokens": 4}).error is None
    long = {"text_input": "a long one", "max_tokens": 900, "sampling_parameters": json.dumps({"ignore_eos": True})}
    for _ in range(4):
        threading.Thread(target=grpc_stream, args=(sp_server.grpc_url, long), daemon=True).start()
    time.sleep(0.5)
    pid = sp_server.tritonserver_pid()
    assert pid is not None
    procs_before = sp_server.sample_tree()
    assert len(procs_before) >= 11, procs_before  # launcher, server, 4 stubs + watchdogs, engine worker
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    code = sp_server.proc.wait(30)  # the launcher notices, cleans up and exits
    procs, shm = sp_server.leftovers(wait=15)
    assert not procs, f"processes left {time.monotonic() - start:.1f}s after kill -9: {procs}"
    assert not shm, f"/dev/shm segments left after kill -9: {shm}"
    assert code != 0
    # Every process exited by itself (the stubs' watchdogs, PR_SET_PDEATHSIG): none waited for the launcher's kill.
    assert "the server left behind" not in sp_server.log_path.read_text(), sp_server._tail()
