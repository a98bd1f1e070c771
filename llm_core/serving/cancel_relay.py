"""Relay of client cancellation from the postprocess step to the llm step (ensemble only).

In tritonserver 2.51 a decoupled step already running inside an ensemble never sees
`is_cancelled()`; the ensemble marks the requests of the *later* steps as cancelled instead
(docs/SERVING.md). So postprocess, on a cancelled request, pushes the llm step's engine request id
(which travels with every llm response) over a zmq PUSH socket; the llm stub's PULL socket
thread calls engine.abort. Both stubs are children of the same tritonserver and find the socket
through LLM_SERVING_RUNTIME_DIR (set per launch by the launcher) or, without the launcher, a
directory named after the tritonserver pid (their common parent).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import zmq

log = logging.getLogger("llm_core.serving")
ENV_RUNTIME_DIR = "LLM_SERVING_RUNTIME_DIR"


def relay_path(model_name: str = "llm") -> tuple[Path, bool]:
    """(socket path, whether the directory is private to this server and ours to remove)."""
    runtime = os.environ.get(ENV_RUNTIME_DIR)
    if runtime:
        return Path(runtime) / f"cancel-{model_name}.sock", False
    directory = Path(tempfile.gettempdir()) / f"llm_core_triton_{os.getppid()}"
    return directory / f"cancel-{model_name}.sock", True


class CancelRelayServer:
    """PULL socket bound in the llm stub; calls on_abort(request_id) from its own thread."""

    def __init__(self, on_abort: Callable[[str], None], model_name: str = "llm") -> None:
        self.path, self._owns_dir = relay_path(model_name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()  # left by a stub of this server that died
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(f"ipc://{self.path}")
        self._on_abort = on_abort
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-cancel-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            request_id = self._socket.recv_string()
            try:
                self._on_abort(request_id)
            except Exception:  # noqa: BLE001
                log.exception("aborting %s failed", request_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close(linger=0)
        self._context.term()
        self.path.unlink(missing_ok=True)
        if self._owns_dir:
            shutil.rmtree(self.path.parent, ignore_errors=True)
        else:  # the launcher's runtime dir: remove it if empty (the launcher may have been killed)
            try:
                self.path.parent.rmdir()
            except OSError:
                pass


class CancelRelayClient:
    """PUSH socket in the postprocess stub; never blocks, sends each id at most once."""

    def __init__(self, model_name: str = "llm", remember: int = 4096) -> None:
        self.path, _ = relay_path(model_name)
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 10000)
        self._socket.connect(f"ipc://{self.path}")  # connects lazily; the llm may bind later
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def abort(self, request_id: str) -> bool:
        if not request_id or request_id in self._sent:
            return False
        self._sent[request_id] = None
        if len(self._sent) > self._remember:
            self._sent.popitem(last=False)
        try:
            self._socket.send_string(request_id, zmq.NOBLOCK)
        except zmq.Again:
            log.warning("cancel relay is full; %s not aborted", request_id)
            return False
        return True

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()
