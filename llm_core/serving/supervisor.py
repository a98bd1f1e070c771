"""Keep tritonserver's health true and bring dead Python stubs back (needs explicit model control).

tritonserver 2.51 never restarts a dead Python stub (every later request: "Stub process ... is
not healthy", readiness still 200) and lets no model mark itself unready. The supervisor, a
thread of the launcher (or `python -m llm_core.serving.supervisor` beside a plain tritonserver
started with `--model-control-mode=explicit --load-model=*`), every `poll_s`:
- finds the Python stubs (children of tritonserver) and, when one has died, unloads its model
  and loads it again through the repository API (the ensemble after it, for one of its steps), logging and counting
  each reload (supervisor.json -> `llm_stub_reloads_total`);
- reads the engines' states (llm-health.json and embedding-health.json, written by those stubs) and,
  while one is not "ready" or a reload runs, keeps the `engine_health` sentinel model failed, so
  `/v2/health/ready` is non-200 (see model_repository/engine_health/config.pbtxt).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from llm_core.lifetime import alive, live_processes, proc_stat
from llm_core.serving.health import HEALTH_FILES, SUPERVISOR_FILE, read_json, write_json

SENTINEL = "engine_health"
# In the sentinel's reason while a model whose stub died reloads. tritonserver 2.51 never answers the requests
# that stub held; the OpenAI server (openai/triton.py) ends its own with an error when it sees this.
STUB_DIED = "its stub died"
ENSEMBLE_STEPS = ("preprocess", "llm", "postprocess")
STUB_BINARY = "triton_python_backend_stub"


def describe(pid: int) -> str:
    """What /proc says of a pid (for the log: a stub that vanished, or one that only looked so)."""
    try:
        state, ppid = ((proc_stat(pid) or []) + ["?", "?"])[:2]
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return f"pid {pid}: state {state}, parent {ppid}, {len(args)} args, {args[0][-40:].decode(errors='replace')}"
    except OSError as exc:
        return f"pid {pid}: gone ({type(exc).__name__})"


def stub_pids(server_pid: int) -> dict[str, int]:
    """model name -> pid of its Python stub, among the children of `server_pid`."""
    stubs = {}
    for pid, stat in live_processes():
        if int(stat[1]) != server_pid:
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(args) >= 2 and args[0].endswith(STUB_BINARY.encode()):
            stubs[Path(args[1].decode()).parts[-3]] = pid  # <repo>/<model>/<version>/model.py
    return stubs


class Repository:
    """The parts of tritonserver's model repository API the supervisor uses."""

    def __init__(self, http_url: str) -> None:
        self.url = http_url.rstrip("/")

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def config(self, model: str) -> dict:
        return requests.get(f"{self.url}/v2/models/{model}/config", timeout=10).json()

    def python_configs(self) -> dict[str, dict]:
        """name -> config of every READY model of the Python backend (each has a stub process)."""
        index = requests.post(f"{self.url}/v2/repository/index", json={}, timeout=10).json()
        configs = {m["name"]: self.config(m["name"]) for m in index if m.get("state") == "READY"}
        return {name: c for name, c in configs.items() if c.get("backend") == "python"}

    def load(self, model: str, config: dict | None = None) -> tuple[bool, str]:
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else {}
        resp = requests.post(f"{self.url}/v2/repository/models/{model}/load", json=body, timeout=1800)
        return resp.status_code == 200, resp.text

    def unload(self, model: str) -> None:
        requests.post(f"{self.url}/v2/repository/models/{model}/unload", json={}, timeout=60)


def with_parameter(config: dict, key: str, value: str) -> dict:
    """A copy of a model config with one string parameter set (a changed config forces a reload)."""
    params = {**config.get("parameters", {}), key: {"string_value": value}}
    return {**config, "parameters": params}


class Supervisor:
    def __init__(
        self, http_url: str, server_pid: int, runtime_dir: Path, log: Callable[[str], None] = print, poll_s: float = 0.5
    ) -> None:
        self.repo = Repository(http_url)
        self.server_pid = server_pid
        self.runtime_dir = Path(runtime_dir)
        self.log = log
        self.poll_s = poll_s
        self.reloads = 0
        self.ready: bool | None = True  # what the sentinel says now (None: unknown, set it)
        self.configs: dict[str, dict] = {}
        self.known: dict[str, int] = {}

    def run(self, stop: threading.Event) -> None:
        while not self.repo.ready():  # start-up: every model loads first
            if stop.wait(self.poll_s):
                return
        self.start()
        while not stop.wait(self.poll_s):
            try:
                self.check()
            except requests.RequestException as exc:  # the server is going away, or busy
                self.log(f"[supervisor] {type(exc).__name__}: {exc}")

    def start(self) -> None:
        """What to watch: the stub of every READY Python model. One already gone (it died between the server's
        readiness and this look) is known with pid 0, so the first check reloads it."""
        self.configs = self.repo.python_configs()
        self.known = {model: 0 for model in self.configs} | stub_pids(self.server_pid)
        self.configs |= {m: self.repo.config(m) for m in self.known if m not in self.configs}

    def check(self) -> None:
        if not alive(self.server_pid):  # tritonserver itself died: its stubs went with it, the launcher acts
            return
        stubs = stub_pids(self.server_pid)
        dead = [m for m, pid in self.known.items() if stubs.get(m) != pid]
        if SENTINEL in dead:
            self.ready = None  # its stub died: load it again below
        dead = [m for m in dead if m != SENTINEL]
        if dead:
            self.reload(dead)
            stubs = stub_pids(self.server_pid)
        self.known = stubs
        for model, name in HEALTH_FILES.items():  # not ready while any engine is not
            health = read_json(self.runtime_dir / name) or {"state": "ready"}
            state = str(health.get("state", "ready"))
            if state != "ready":
                self.set_ready(False, f"{model} engine {state}: {health.get('reason', '')}".rstrip(": "))
                return
        self.set_ready(True, "ready")

    def reload(self, models: list[str]) -> None:
        start = time.monotonic()
        seen = "; ".join(describe(self.known[m]) for m in models if m in self.known)
        self.log(f"[supervisor] Python stub of {models} died ({seen}); reloading (server not ready meanwhile)")
        self.set_ready(False, f"reloading {', '.join(models)} ({STUB_DIED})")
        for model in models:
            self.repo.unload(model)  # the ensemble goes with it
        self.reloads += 1
        write_json(self.runtime_dir / SUPERVISOR_FILE, {"stub_reloads": self.reloads})
        for model in models:
            ok, text = self.repo.load(
                model, with_parameter(self.configs[model], "supervisor_reload", str(self.reloads))
            )
            if not ok:
                self.log(f"[supervisor] reloading {model} failed: {text}")
        outcome = "done"
        if any(m in ENSEMBLE_STEPS for m in models):  # unloading a step took the ensemble with it
            ok, text = self.repo.load("ensemble")
            outcome = "done" if ok else f"ensemble failed: {text}"
        self.log(f"[supervisor] reload {self.reloads} of {models} {outcome} in {time.monotonic() - start:.1f}s")

    def set_ready(self, ready: bool, reason: str) -> None:
        if ready == self.ready:
            return
        self.ready = ready
        if ready:
            ok, text = self.repo.load(SENTINEL, with_parameter(self.sentinel_config(), "engine_state", "ready"))
            self.log("[supervisor] engine ready: server ready again" if ok else f"[supervisor] {text}")
            return
        self.log(f"[supervisor] server not ready: {reason}")
        self.repo.unload(SENTINEL)  # a failed reload would keep the old, ready version serving
        self.repo.load(SENTINEL, with_parameter(self.sentinel_config(), "engine_state", reason or "not ready"))

    def sentinel_config(self) -> dict:
        return self.configs[SENTINEL]  # fetched at start, while it was loaded


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http-url", default="http://127.0.0.1:8000")
    p.add_argument("--tritonserver-pid", type=int, required=True)
    p.add_argument("--runtime-dir", help="LLM_SERVING_RUNTIME_DIR (default: /tmp/llm_core_triton_<pid>)")
    args = p.parse_args(argv)
    runtime = args.runtime_dir or f"/tmp/llm_core_triton_{args.tritonserver_pid}"
    Supervisor(args.http_url, args.tritonserver_pid, Path(runtime)).run(threading.Event())


if __name__ == "__main__":
    main()
