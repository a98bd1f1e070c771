"""The engines' states, shared with the supervisor through the server's runtime directory.

The llm stub writes `llm-health.json` ({"state", "reason", "pid", "time"}) whenever its engine's
state changes ("ready", "restarting", "down"), the embedding stub (when enabled) `embedding-health.json`;
the supervisor (launcher) reads them to decide server readiness. The supervisor writes `supervisor.json`
({"stub_reloads": n}) so that a reloaded llm stub can count the reloads in its metrics, and the launcher
`launcher.json` ({"server_restarts": n}) before it starts tritonserver again after it died.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from llm_core.serving.cancel_relay import relay_path

HEALTH_FILES = {"llm": "llm-health.json", "embedding": "embedding-health.json"}  # model -> its engine's file
SUPERVISOR_FILE = "supervisor.json"
LAUNCHER_FILE = "launcher.json"


def runtime_dir() -> Path:
    """LLM_SERVING_RUNTIME_DIR, or the per-tritonserver directory the cancel relay uses."""
    return relay_path()[0].parent


def write_json(path: Path, values: dict[str, Any]) -> None:
    """Atomic: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(values))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


class HealthWriter:
    """Used from one thread (the llm sender, the embedding stub's watch): writes the file only when the
    state changes."""

    def __init__(self, directory: Path | None = None, model: str = "llm") -> None:
        self.path = (directory or runtime_dir()) / HEALTH_FILES[model]
        self._last: tuple[str, str] | None = None

    def update(self, state: str, reason: str = "") -> bool:
        """-> whether the state changed (and was written)."""
        if self._last == (state, reason):
            return False
        self._last = (state, reason)
        write_json(self.path, {"state": state, "reason": reason, "pid": os.getpid(), "time": time.time()})
        return True


def watch_engine(engine: Any, writer: HealthWriter, interval_s: float = 0.25) -> threading.Thread:
    """A daemon thread that writes `engine`'s state through `writer` every `interval_s` (for a stub with no
    thread of its own to do it, e.g. the embedding model's)."""

    def run() -> None:
        while not engine.closed:
            writer.update(engine.state, engine.state_reason)
            time.sleep(interval_s)

    thread = threading.Thread(target=run, name="engine-health", daemon=True)
    thread.start()
    return thread


def stub_reloads(directory: Path | None = None) -> int:
    values = read_json((directory or runtime_dir()) / SUPERVISOR_FILE) or {}
    return int(values.get("stub_reloads", 0))


def server_restarts(directory: Path | None = None) -> int:
    values = read_json((directory or runtime_dir()) / LAUNCHER_FILE) or {}
    return int(values.get("server_restarts", 0))
