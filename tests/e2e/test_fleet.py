"""A fleet from one fleet.toml, on CPU with tiny models, through the real fleet launcher
(`python -m llm_core.serving.fleet`): two chat servers (tiny Llama) and one embedding server (tiny Qwen2),
read by the FleetClient through the launcher's state file.

- Choice: chat-a is saturated by real streams (its small KV pool keeps some of them queued, so anything sent to
  it waits behind them); the client picks chat-b, the faster one, although chat-a comes first.
- Failover: kill -9 of chat-b's whole process tree (its launcher, tritonserver, stubs, engine worker) while the
  client is busy: the next request succeeds on chat-a after one failed attempt. The fleet removes the /dev/shm
  segments the killed tree left and restarts chat-b (no load meanwhile: it loads faster); once chat-a is
  saturated again, the client goes back to chat-b at a re-probe.
- Embeddings through the fleet equal transformers' pooled final hidden states.
- SIGTERM to the fleet launcher: it exits 0, and no process of its tree and no /dev/shm segment of any of its
  servers (the killed start included) is left. Then every request fails at once with FleetUnavailableError,
  also from a client whose state file still lists the servers as ready (their ports are closed).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from e2e_helpers import grpc_stream

from llm_core.serving.fleet.client import FleetClient, FleetUnavailableError
from llm_core.serving.fleet.transport import GrpcTransport
from llm_core.serving.launcher import busy_ports
from llm_core.serving.server_process import free_ports

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 150.0  # three servers loading at once on 2 CPU cores take about a minute
STOP_TIMEOUT_S = 60.0  # the fleet waits up to 45 s per launcher
# Chat servers with a KV pool of 512 tokens: it holds one or two 400-token load streams (1-2 s each), so with
# LOAD_STREAMS of them some always wait, and anything else sent to chat-a waits behind them: its probes take
# over a second, chat-b's some ms.
CHAT_ARGS = ["--max-total-tokens", "512", "--max-model-len", "512"]
LOAD = {"text_input": "load", "max_tokens": 400, "sampling_parameters": json.dumps({"ignore_eos": True})}
LOAD_STREAMS = 4
PROMPT = "Count with me"  # the client's requests (the probes send "Hello")


def _port_bases(count: int) -> list[int]:
    """`count` HTTP ports whose port + 1 (gRPC) and port + 2 (metrics) are free too, none overlapping."""
    bases: list[int] = []
    taken: set[int] = set()
    while len(bases) < count:
        (port,) = free_ports(1)
        trio = [port, port + 1, port + 2]
        if port + 2 < 65533 and not taken & set(trio) and not busy_ports(trio):
            bases.append(port)
            taken |= set(trio)
    return bases


def _toml_list(args: list[str]) -> str:
    return "[" + ", ".join(json.dumps(a) for a in args) + "]"


def _shm_segments(prefixes) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(tuple(prefixes))) if prefixes else []


def wait_for(predicate, timeout: float, what, step: float = 0.1):
    """predicate()'s first truthy value; AssertionError naming `what` (or what() returns) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what() if callable(what) else what}")
        time.sleep(step)


class Fleet:
    """The fleet launcher as a child process; every process of its tree and every tritonserver's shm prefix
    is remembered (sampled in a thread while it runs), for the leftover check after stop()."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config, self.log_path = config, log_path
        self.state_file = config.parent / "state.json"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "llm_core.serving.fleet", str(config), "--poll-s", "0.2"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=config.parent)
        self.known: dict[int, float] = {}  # pid -> create_time
        self.shm_prefixes: set[str] = set()
        self.code: int | None = None
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._sampler.start()

    def _sample_until_stopped(self) -> None:
        while not self._done.wait(0.2):
            self.sample()

    def sample(self) -> None:
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                self.known.setdefault(p.pid, p.create_time())
                if p.name() == "tritonserver":
                    for arg in p.cmdline():
                        if "shm-region-prefix-name=" in arg:
                            self.shm_prefixes.add(arg.split("shm-region-prefix-name=", 1)[1])
            except psutil.Error:
                pass

    def state(self) -> dict[str, dict]:
        try:
            return {s["name"]: s for s in json.loads(self.state_file.read_text())["servers"]}
        except (OSError, ValueError):
            return {}

    def all_ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the fleet launcher exited with {self.proc.returncode}; {self.tail()}")
        state = self.state()
        return bool(state) and all(s["status"] == "ready" for s in state.values())

    def tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "fleet log tail:\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, as Ctrl-C or a service manager would; returns the exit code (None: it had to be killed)."""
        if self.proc.poll() is None:
            self.sample()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.code = self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.sample()
                for pid in self.known:
                    try:
                        psutil.Process(pid).kill()
                    except psutil.Error:
                        pass
                self.proc.wait(10)
                self.code = None
        self._done.set()
        self._sampler.join(5)
        self._log.close()
        return self.code

    def alive(self) -> list[str]:
        out = []
        for pid, created in self.known.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{pid} {' '.join(p.cmdline())[:160]}")
            except psutil.Error:
                pass
        return out

    def leftovers(self, wait: float = 10.0) -> tuple[list[str], list[str]]:
        deadline = time.monotonic() + wait
        while (left := (self.alive(), _shm_segments(self.shm_prefixes))) != ([], []) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left


@pytest.fixture(scope="module")
def fleet(tiny_llama, tiny_qwen2, tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    ports = _port_bases(3)
    servers = [("chat-a", "chat", tiny_llama, CHAT_ARGS), ("chat-b", "chat", tiny_llama, CHAT_ARGS),
               ("embed", "embedding", tiny_qwen2, ["--max-total-tokens", "256"])]  # fmt: skip
    lines = ['state_file = "state.json"', 'device = "cpu"', f"ready_timeout_s = {READY_TIMEOUT_S}"]
    for (name, kind, model_dir, args), port in zip(servers, ports, strict=True):
        lines += ["", "[[server]]", f'name = "{name}"', f'kind = "{kind}"', f'model_dir = "{model_dir}"',
                  f"port = {port}", f"args = {_toml_list(args)}"]  # fmt: skip
    config = root / "fleet.toml"
    config.write_text("\n".join(lines) + "\n")
    fleet = Fleet(config, root / "fleet.log")
    try:
        wait_for(fleet.all_ready, READY_TIMEOUT_S, "all three servers ready", step=0.5)
        fleet.sample()
        yield fleet
    finally:
        if fleet.proc.poll() is None:  # test_all_servers_gone did not run (or failed before stopping it)
            code = fleet.stop()
            procs, shm = fleet.leftovers()
            assert code == 0 and not procs and not shm, (code, procs, shm, fleet.tail())


def _url(server: dict) -> str:
    return f"{server['host']}:{server['grpc_port']}"


class RecordingTransport(GrpcTransport):
    """The real gRPC transport, remembering where each of the client's own requests (not probes) went."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[float, str, str]] = []  # (time, url, "start" | "ok" | "failed")

    def generate(self, url, prompt, max_tokens, timeout):
        mine = prompt == PROMPT
        if mine:
            self.events.append((time.monotonic(), url, "start"))
        try:
            yield from super().generate(url, prompt, max_tokens, timeout)
        except BaseException:
            if mine:
                self.events.append((time.monotonic(), url, "failed"))
            raise
        if mine:
            self.events.append((time.monotonic(), url, "ok"))

    def count(self, url: str, outcome: str, since: float = 0.0) -> int:
        return sum(1 for t, u, o in list(self.events) if u == url and o == outcome and t >= since)

    def in_flight(self, url: str) -> bool:
        mine = [o for _, u, o in list(self.events) if u == url]
        return bool(mine) and mine[-1] == "start"


class Background:
    """`fn` called in a loop by `threads` threads until stop(); a thread ends at its first exception (kept)."""

    def __init__(self, fn, threads: int) -> None:
        self.fn, self.errors, self.results = fn, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.results.append(self.fn())
            except Exception as exc:  # noqa: BLE001 - reported by the test; this thread ends
                self.errors.append(exc)
                return

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "background requests did not end"


def _load_stream(url: str):
    result = grpc_stream(url, LOAD, timeout=60)
    assert result.error is None and result.num_output_tokens == LOAD["max_tokens"], result
    return result


def test_embeddings_through_the_fleet_equal_transformers(fleet, tiny_qwen2):
    from transformers import AutoModel, AutoTokenizer

    texts = ["Hello world", "The quick brown fox", "你好，世界！今天"]
    client = FleetClient(state_file=fleet.state_file)
    try:
        ours = client.embed(texts)
        assert client.chosen("embedding") == "embed"
    finally:
        client.close()
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModel.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    with torch.no_grad():  # the server's default pooling: the last token's final hidden state, unit norm
        ref = np.stack([
            torch.nn.functional.normalize(model(torch.tensor([tokenizer(t)["input_ids"]])).last_hidden_state[0, -1],
                                          dim=-1).numpy() for t in texts
        ])  # fmt: skip
    assert ours.shape == ref.shape and ours.dtype == np.float32
    cosine = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.min() >= 0.9999, cosine


def test_picks_the_faster_server_fails_over_on_kill_9_and_returns_after_the_restart(fleet, caplog):
    caplog.set_level(logging.INFO, logger="llm_core.fleet.client")
    state = fleet.state()
    url_a, url_b, old_b = _url(state["chat-a"]), _url(state["chat-b"]), state["chat-b"]
    load = Background(lambda: _load_stream(url_a), threads=LOAD_STREAMS)
    transport = RecordingTransport()
    client = FleetClient(state_file=fleet.state_file, transport=transport, cooldown_s=1.0, reprobe_s=2.0,
                         probe_timeout_s=30.0, request_timeout_s=30.0)  # fmt: skip
    worker = None
    try:
        wait_for(lambda: len(load.results) >= 1, 30, "a load stream on chat-a finished")
        # Choice: chat-a answers only after the streams queued before the probe, chat-b at once.
        assert client.complete(PROMPT, 8) and client.chosen("chat") == "chat-b"
        assert transport.count(url_b, "ok") == 1 and transport.count(url_a, "ok") == 0

        worker = Background(lambda: client.complete(PROMPT, 16), threads=1)
        wait_for(lambda: transport.count(url_b, "ok") >= 3, 30, "requests served by chat-b")
        # kill -9 of chat-b's whole tree, with one of the client's requests in flight on it
        wait_for(lambda: transport.in_flight(url_b), 10, "a request in flight on chat-b", step=0.005)
        tree = psutil.Process(old_b["pid"])
        procs = [tree, *tree.children(recursive=True)]
        assert len(procs) >= 10, procs  # launcher, tritonserver, stubs and their watchdogs, engine worker
        assert _shm_segments([old_b["shm_prefix"]]), "chat-b's shm segments are not under the fleet's prefix"
        for p in procs:
            p.kill()
        killed_at = time.monotonic()

        # The request on chat-b fails, its retry succeeds on chat-a; the worker never sees an error.
        wait_for(lambda: transport.count(url_a, "ok", since=killed_at), 30, "a request served by chat-a")
        assert transport.count(url_b, "failed", since=killed_at - 1) >= 1
        assert any("chat-b failed (attempt 1 of" in r.getMessage() for r in caplog.records), caplog.text
        for background in (worker, load):
            background.stop()
            assert not background.errors, background.errors
        worker = load = None
        # The fleet removes what the killed tree left in /dev/shm and restarts chat-b; no traffic meanwhile (on
        # 2 cores a server loads in ~20 s beside idle ones, in minutes beside a saturated one).
        wait_for(lambda: not _shm_segments([old_b["shm_prefix"]]), 15, "the killed chat-b's shm segments removed")
        assert old_b["runtime_dir"]
        wait_for(lambda: not Path(old_b["runtime_dir"]).exists(), 15, "the killed chat-b's runtime directory removed")
        new_b = wait_for(
            lambda: (s := fleet.state().get("chat-b", {})).get("status") == "ready" and s["pid"] != old_b["pid"] and s,
            90, lambda: f"chat-b restarted and ready; {fleet.tail(20)}",
        )  # fmt: skip
        assert new_b["restarts"] == 1 and new_b["shm_prefix"] != old_b["shm_prefix"]
        ready_at = time.monotonic()

        # chat-a saturated again: at its next re-probe the client goes back to chat-b, now the faster one
        load = Background(lambda: _load_stream(url_a), threads=LOAD_STREAMS)
        wait_for(lambda: len(load.results) >= 1, 30, "a load stream on chat-a finished")
        worker = Background(lambda: client.complete(PROMPT, 16), threads=1)
        wait_for(lambda: transport.count(url_b, "ok", since=ready_at) >= 2, 30, "requests served by chat-b again")
        assert client.chosen("chat") == "chat-b"
        for background in (worker, load):
            background.stop()
            assert not background.errors, background.errors
        worker = load = None
    finally:
        for background in (worker, load):
            if background is not None:
                background.stop()
        client.close()


def test_all_servers_gone_is_a_clear_error(fleet):
    client = FleetClient(state_file=fleet.state_file, max_retries=2)
    assert client.complete(PROMPT, 4) and client.embed(["hi"]).shape[0] == 1
    stale = fleet.state_file.with_name("stale_state.json")  # what a client could still read after a crash
    shutil.copy(fleet.state_file, stale)

    start = time.monotonic()
    code = fleet.stop()
    stopped_in = time.monotonic() - start
    procs, shm = fleet.leftovers()
    assert code == 0, f"the fleet launcher exited with {code} after {stopped_in:.1f} s; {fleet.tail()}"
    assert not procs, f"processes left after the fleet stopped: {procs}"
    assert not shm, f"/dev/shm segments left after the fleet stopped: {shm}"
    assert {s["status"] for s in fleet.state().values()} == {"stopped"}

    start = time.monotonic()
    with pytest.raises(FleetUnavailableError, match="no healthy chat server"):
        client.complete(PROMPT, 4)  # its chosen server is gone, and the state file lists none ready
    with pytest.raises(FleetUnavailableError):
        client.embed(["hi"])  # shut off: fails at once
    for call, kind in ((lambda c: c.complete(PROMPT, 4), "chat"), (lambda c: c.embed(["hi"]), "embedding")):
        stale_client = FleetClient(state_file=stale, max_retries=2)
        with pytest.raises(FleetUnavailableError, match=f"no healthy {kind} server"):
            call(stale_client)  # probes of closed ports fail at once
        stale_client.close()
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"failing took {elapsed:.1f} s"
    client.close()
