"""FleetClient: one object that reaches a healthy, fast server of a fleet, for completions and embeddings.

- Choice: each server of the kind gets the probe message (`probe_message`, `probe_max_tokens` tokens, or one
  embedding); the fastest answers wins. A probe's deadline is the best latency so far, so a server is skipped
  as soon as it is slower than the best (its probe is cancelled, not waited for).
- Tracking: each request's latency per unit (per requested token; per text for embeddings) feeds a moving
  average; when it grows past `growth_factor` x the chosen server's probe latency (after `min_samples`), and
  every `reprobe_s` anyway, the choice is rebuilt, so a faster (or restarted) server is picked up.
- Failures: a failed server is left out for `cooldown_s`, the choice is rebuilt and the request retried, up to
  `max_retries` times. A stream fails over only before its first piece of text (after it, the caller has
  part of an answer: StreamInterruptedError). With no server left: FleetUnavailableError, the client closes
  its connections, and later calls fail at once with the same error.
Every switch and failure is logged (logger `llm_core.fleet.client`). Thread-safe: the choice is guarded by a
lock, requests run outside it, each on a pooled connection of its own (transport.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_core.serving.fleet.transport import GrpcTransport, TransportError

log = logging.getLogger("llm_core.fleet.client")


class FleetUnavailableError(RuntimeError):
    """No server of the kind answered."""


class StreamInterruptedError(RuntimeError):
    """A stream failed after its first text: not retried (the caller already has part of the answer)."""


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    kind: str  # chat | embedding
    url: str  # host:grpc_port


def read_state(path: str | Path) -> list[Server]:
    """The fleet launcher's state file -> its servers that are ready."""
    state = json.loads(Path(path).read_text())
    ready = [s for s in state["servers"] if s["status"] == "ready"]
    return [Server(s["name"], s["kind"], f"{s['host']}:{s['grpc_port']}") for s in ready]


@dataclass(slots=True)
class _Choice:
    server: Server | None = None
    baseline: float = 0.0  # probe latency per unit of the chosen server
    average: float = 0.0
    samples: int = 0
    chosen_at: float = 0.0
    down_until: dict[str, float] = field(default_factory=dict)  # server name -> end of its cooldown


class FleetClient:
    def __init__(
        self,
        servers: list[Server] | None = None,
        state_file: str | Path | None = None,
        *,
        max_retries: int = 3,
        growth_factor: float = 2.0,
        min_samples: int = 3,
        probe_message: str = "Hello",
        probe_max_tokens: int = 4,
        probe_timeout_s: float = 30.0,
        request_timeout_s: float = 300.0,
        cooldown_s: float = 10.0,
        reprobe_s: float = 60.0,
        transport=None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if servers is None and state_file is None:
            raise ValueError("FleetClient needs `servers` or `state_file`")
        self._servers, self.state_file = servers, state_file
        self.max_retries, self.growth_factor, self.min_samples = max_retries, growth_factor, min_samples
        self.probe_message, self.probe_max_tokens = probe_message, probe_max_tokens
        self.probe_timeout_s, self.request_timeout_s = probe_timeout_s, request_timeout_s
        self.cooldown_s, self.reprobe_s = cooldown_s, reprobe_s
        self.transport = transport or GrpcTransport()
        self.clock = clock
        self._lock = threading.Lock()
        self._choices = {"chat": _Choice(), "embedding": _Choice()}
        self._closed: str | None = None  # the error every later call raises

    # --- public API ------------------------------------------------------------------------
    def complete(self, prompt: str, max_tokens: int = 64) -> str:
        return self._call("chat", max_tokens, lambda s: "".join(self._generate(s, prompt, max_tokens)))

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), hidden] float32."""
        return self._call("embedding", len(texts), lambda s: self.transport.embed(s.url, texts, self.request_timeout_s))

    def stream(self, prompt: str, max_tokens: int = 64) -> Iterator[str]:
        """Text pieces as they arrive. Fails over only before the first piece (StreamInterruptedError after)."""
        for attempt in range(self.max_retries + 1):
            server = self._server("chat")
            start, pieces = self.clock(), 0
            try:
                for piece in self._generate(server, prompt, max_tokens):
                    pieces += 1
                    yield piece
            except (TransportError, TimeoutError) as exc:
                if pieces:
                    log.error("fleet: stream on %s failed after its first text, not retried: %s", server.name, exc)
                    raise StreamInterruptedError(f"{server.name} failed mid-stream (not retried): {exc}") from exc
                self._failed("chat", server, exc, attempt)
                continue
            self._observe("chat", server, (self.clock() - start) / max(1, max_tokens))
            return
        self._give_up("chat", f"{self.max_retries} retries failed")

    def chosen(self, kind: str) -> str | None:
        with self._lock:
            server = self._choices[kind].server
        return server.name if server is not None else None

    def close(self) -> None:
        self.transport.close()

    # --- choice ---------------------------------------------------------------------------
    def _call(self, kind: str, units: int, request: Callable[[Server], object]):
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            server = self._server(kind)
            start = self.clock()
            try:
                result = request(server)
            except (TransportError, TimeoutError) as exc:
                last = exc
                self._failed(kind, server, exc, attempt)
                continue
            self._observe(kind, server, (self.clock() - start) / max(1, units))
            return result
        self._give_up(kind, f"{self.max_retries} retries failed; last error: {last}")

    def _generate(self, server: Server, prompt: str, max_tokens: int) -> Iterator[str]:
        return self.transport.generate(server.url, prompt, max_tokens, self.request_timeout_s)

    def _server(self, kind: str) -> Server:
        with self._lock:
            if self._closed is not None:
                raise FleetUnavailableError(self._closed)
            choice = self._choices[kind]
            if choice.server is None or self.clock() - choice.chosen_at > self.reprobe_s:
                self._rebuild(kind, "first request" if choice.server is None else "periodic re-probe")
            return choice.server

    def _rebuild(self, kind: str, reason: str) -> None:
        """Probe every server of `kind` not cooling down; keep the fastest (caller holds the lock)."""
        choice, now = self._choices[kind], self.clock()
        candidates = [s for s in self._candidates(kind) if choice.down_until.get(s.name, 0.0) <= now]
        best, best_latency = None, self.probe_timeout_s
        for server in candidates:
            try:
                latency = self._probe(server, best_latency)
            except TimeoutError:
                log.info("fleet: %s skipped: slower than %.3f s (best so far)", server.name, best_latency)
                continue
            except TransportError as exc:
                log.warning("fleet: probe of %s failed: %s", server.name, exc)
                choice.down_until[server.name] = now + self.cooldown_s
                continue
            if latency < best_latency:
                best, best_latency = server, latency
        if best is None:
            self._give_up(kind, f"no {kind} server answered a probe (candidates: {[s.name for s in candidates]})")
        previous = choice.server
        units = self.probe_max_tokens if kind == "chat" else 1
        choice.server, choice.baseline, choice.average, choice.samples = best, best_latency / units, 0.0, 0
        choice.chosen_at = self.clock()
        if previous != best:
            log.info("fleet: %s server %s -> %s (%s; probe %.3f s)", kind, previous.name if previous else "-",
                     best.name, reason, best_latency)  # fmt: skip

    def _probe(self, server: Server, timeout: float) -> float:
        start = self.clock()
        if server.kind == "chat":
            pieces = self.transport.generate(server.url, self.probe_message, self.probe_max_tokens, timeout)
            try:
                for _ in pieces:
                    if self.clock() - start > timeout:  # slower than the best so far: stop (cancels it)
                        raise TimeoutError(f"{server.name}: over {timeout:.3f} s")
            finally:
                pieces.close()
        else:
            self.transport.embed(server.url, [self.probe_message], timeout)
        latency = self.clock() - start
        if latency > timeout:
            raise TimeoutError(f"{server.name}: {latency:.3f} s")
        return latency

    def _candidates(self, kind: str) -> list[Server]:
        servers = self._servers if self._servers is not None else read_state(self.state_file)
        return [s for s in servers if s.kind == kind]

    def _observe(self, kind: str, server: Server, per_unit: float) -> None:
        with self._lock:
            choice = self._choices[kind]
            if choice.server != server:
                return
            choice.samples += 1
            choice.average = per_unit if choice.samples == 1 else 0.7 * choice.average + 0.3 * per_unit
            if choice.samples >= self.min_samples and choice.average > self.growth_factor * choice.baseline:
                log.warning("fleet: %s latency grew %.1fx over its baseline; re-choosing", server.name,
                            choice.average / max(choice.baseline, 1e-9))  # fmt: skip
                self._rebuild(kind, "latency grew")

    def _failed(self, kind: str, server: Server, exc: Exception, attempt: int) -> None:
        log.warning("fleet: %s failed (attempt %d of %d): %s", server.name, attempt + 1, self.max_retries + 1, exc)
        with self._lock:
            choice = self._choices[kind]
            choice.down_until[server.name] = self.clock() + self.cooldown_s
            if choice.server == server:
                choice.server = None  # the next attempt rebuilds the choice without it

    def _give_up(self, kind: str, detail: str) -> None:
        message = f"fleet client shut off: no healthy {kind} server ({detail})"
        log.error("fleet: %s", message)
        self._closed = message
        self.transport.close()
        raise FleetUnavailableError(message)
