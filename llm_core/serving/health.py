"""The llm stub's engine state, shared with the supervisor through the server's runtime directory.

The llm stub writes `llm-health.json` ({"state", "reason", "pid", "time"}) whenever the engine's
state changes ("ready", "restarting", "down"); the supervisor (launcher) reads it to decide server
readiness, and reads `pid` to notice a dead stub. The supervisor writes `supervisor.json`
({"stub_reloads": n}) so that a reloaded llm stub can count the reloads in its metrics.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from llm_core.serving.cancel_relay import relay_path

HEALTH_FILE = "llm-health.json"
SUPERVISOR_FILE = "supervisor.json"


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
    """Used from the llm sender thread: writes the file only when the state changes."""

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or runtime_dir()) / HEALTH_FILE
        self._last: tuple[str, str] | None = None

    def update(self, state: str, reason: str = "") -> bool:
        """-> whether the state changed (and was written)."""
        if self._last == (state, reason):
            return False
        self._last = (state, reason)
        write_json(self.path, {"state": state, "reason": reason, "pid": os.getpid(), "time": time.time()})
        return True


def stub_reloads(directory: Path | None = None) -> int:
    values = read_json((directory or runtime_dir()) / SUPERVISOR_FILE) or {}
    return int(values.get("stub_reloads", 0))
