"""Helpers of the fault tests and the soak: find the llm stub and engine workers, watch readiness."""

from __future__ import annotations

import threading
import time

import psutil
import requests

from llm_core.serving.supervisor import stub_pids


def llm_stub_pid(server) -> int:
    return stub_pids(server.tritonserver_pid())["llm"]


def engine_worker_pids(server) -> list[int]:
    stub = psutil.Process(llm_stub_pid(server))
    return [p.pid for p in stub.children() if "llm_core" in " ".join(p.cmdline()) or p.name().startswith("python")]


def status(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0


def all_ready(server) -> bool:
    return status(f"{server.http_url}/v2/health/ready") == 200 and all(
        status(f"{server.http_url}/v2/models/{m}/ready") == 200 for m in ("ensemble", "llm")
    )


def wait_until(predicate, timeout: float, step: float = 0.05) -> float | None:
    """Seconds until predicate() held, or None after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return None


class ReadinessWatch:
    """Polls /v2/health/ready in a thread; remembers every status seen."""

    def __init__(self, server, interval: float = 0.1) -> None:
        self.url = f"{server.http_url}/v2/health/ready"
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.seen.append((time.monotonic(), status(self.url)))

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(5)
        return [code for _, code in self.seen]
