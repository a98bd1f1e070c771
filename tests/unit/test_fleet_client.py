"""FleetClient with a fake transport and clock: choice, latency growth, retries, failover, shut-off."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from llm_core.serving.fleet.client import FleetClient, FleetUnavailableError, Server, StreamInterruptedError, read_state
from llm_core.serving.fleet.transport import TransportError

SERVERS = [Server("a", "chat", "h:1"), Server("b", "chat", "h:2"), Server("e", "embedding", "h:3")]


class FakeTransport:
    """Each server answers after `latency[url]` seconds per token (fake clock); `dead` urls fail at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.latency = {"h:1": 0.01, "h:2": 0.02, "h:3": 0.01}
        self.dead: set[str] = set()
        self.fail_after_first: set[str] = set()
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def _wait(self, url: str, seconds: float, timeout: float) -> None:
        with self.lock:
            self.calls.append(url)
            if url in self.dead:
                raise TransportError(f"{url}: connection refused")
            if seconds > timeout:
                self.now += timeout
                raise TimeoutError(url)
            self.now += seconds

    def generate(self, url, prompt, max_tokens, timeout):
        for i in range(max_tokens):
            self._wait(url, self.latency[url], timeout)
            if i == 1 and url in self.fail_after_first:
                raise TransportError(f"{url}: reset")
            yield f"<{url}>"

    def embed(self, url, texts, timeout):
        self._wait(url, self.latency[url] * len(texts), timeout)
        return np.ones((len(texts), 4), np.float32)

    def close(self) -> None:
        pass


def make(transport: FakeTransport, **kw) -> FleetClient:
    return FleetClient(SERVERS, transport=transport, clock=transport.clock, **kw)


def test_picks_the_fastest_and_skips_a_slower_probe_early():
    t = FakeTransport()
    t.latency["h:2"] = 0.015  # per token: 0.03 s for the probe, over a's 0.02 s after two tokens
    client = make(t, probe_max_tokens=2)
    assert client.complete("hi", max_tokens=3) == "<h:1>" * 3 and client.chosen("chat") == "a"
    # b's probe was cut once it passed a's latency (its second token), and not awaited further
    assert t.calls[:5] == ["h:1", "h:1", "h:2", "h:2", "h:1"] and client.embed(["x", "y"]).shape == (2, 4)


def test_switches_when_the_chosen_server_slows_down():
    t = FakeTransport()
    client = make(t, min_samples=2)
    client.complete("hi", 4)
    t.latency["h:1"] = 0.05  # a is kept busy: 5x slower than its baseline, and now slower than b
    for _ in range(3):
        client.complete("hi", 4)
    assert client.chosen("chat") == "b"


def test_a_dead_server_fails_over_after_a_retry_and_comes_back_when_faster():
    t = FakeTransport()
    client = make(t, cooldown_s=5.0, reprobe_s=100.0)
    client.complete("hi", 2)
    t.dead.add("h:1")  # kill -9 of the chosen server
    assert client.complete("hi", 2) == "<h:2>" * 2 and client.chosen("chat") == "b"
    t.dead.clear()  # restarted by the launcher
    t.now += 200  # past its cooldown and the periodic re-probe
    client.complete("hi", 2)
    assert client.chosen("chat") == "a"


def test_streams_fail_over_only_before_the_first_piece():
    t = FakeTransport()
    client = make(t)
    t.dead.add("h:1")
    assert list(client.stream("hi", 2)) == ["<h:2>"] * 2
    t.fail_after_first.add("h:2")
    with pytest.raises(StreamInterruptedError, match="not retried"):
        list(client.stream("hi", 3))


def test_every_server_gone_is_a_clear_error_then_shut_off():
    t = FakeTransport()
    client = make(t, max_retries=2)
    client.complete("hi", 1)
    t.dead |= {"h:1", "h:2"}
    with pytest.raises(FleetUnavailableError, match="no healthy chat server"):
        client.complete("hi", 1)
    calls = len(t.calls)
    with pytest.raises(FleetUnavailableError):
        client.embed(["x"])
    assert len(t.calls) == calls  # shut off: nothing more is sent


def test_concurrent_callers_and_the_state_file(tmp_path):
    t = FakeTransport()
    client = make(t)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(client.complete("hi", 2))) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(results) == 8 and all(r == "<h:1>" * 2 for r in results)
    state = {"servers": [
        {"name": "a", "kind": "chat", "host": "127.0.0.1", "grpc_port": 8101, "status": "ready"},
        {"name": "b", "kind": "chat", "host": "127.0.0.1", "grpc_port": 8111, "status": "dead"},
    ]}  # fmt: skip
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert read_state(tmp_path / "state.json") == [Server("a", "chat", "127.0.0.1:8101")]
