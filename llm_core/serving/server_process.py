"""Run the launcher (and so tritonserver) as a child process: for tests, benchmarks and scripts.

    with ServerProcess(model_dir) as server:      # free ports, waits until every model is ready
        server.grpc_url, server.http_url, server.metrics_url
    # on exit: SIGTERM, wait, then check that nothing of ours is left (leftovers())

`leftovers()` lists every process that ever belonged to this server's process tree (sampled
while it ran: launcher, tritonserver, Python stubs, engine workers) that is still alive, and
every /dev/shm entry with this server's shm prefix.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from llm_core.serving.launcher import SHM_PREFIX_BASE

MODELS = ("ensemble", "preprocess", "visual", "llm", "postprocess", "engine_health")


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("0.0.0.0", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


class ServerProcess:
    def __init__(
        self,
        model_dir: str | Path | None = None,
        log_path: str | Path | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 600.0,
        python: str | Path | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.http_port, self.grpc_port, self.metrics_port, self.openai_port = free_ports(4)
        self.shm_prefix = f"{SHM_PREFIX_BASE}t{os.getpid()}_{self.http_port}_"
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = extra_args or []
        self.env = env
        self.ready_timeout = ready_timeout
        self.python = str(python or sys.executable)  # the venv the launcher (and so every stub) runs in
        self.proc: subprocess.Popen | None = None
        self._known: dict[int, float] = {}  # pid -> create_time of every process seen in the tree
        self._log_file = None

    # --- addresses ---------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.openai_port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> ServerProcess:
        cmd = [
            self.python,
            "-m",
            "llm_core.serving.launcher",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--openai-port={self.openai_port}",
            f"--shm-prefix={self.shm_prefix}",
        ]
        if self.model_dir is not None:
            cmd.append(f"--model-dir={self.model_dir}")
        cmd += self.extra_args
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log_file
        env = dict(os.environ if self.env is None else self.env)
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.wait_ready()
        return self

    def _model_ready(self, model: str) -> bool:
        return self._answers_200(f"{self.http_url}/v2/models/{model}/ready")

    @staticmethod
    def _answers_200(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _openai_ready(self) -> bool:
        args = " ".join(self.extra_args)
        off = "--openai-port=0" in args or "--openai-port 0" in args
        return off or self._answers_200(self.openai_url.removesuffix("/v1") + "/health")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} during start-up; {self._tail()}")
            self.sample_tree()
            if all(self._model_ready(m) for m in MODELS) and self._openai_ready():
                self.sample_tree()
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready after {self.ready_timeout:.0f}s; {self._tail()}")

    def _tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "no log"
        return "log tail:\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def sample_tree(self) -> list[psutil.Process]:
        """Remember every process now in the server's tree (engine workers start late)."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            try:
                self._known.setdefault(p.pid, p.create_time())
            except psutil.NoSuchProcess:
                pass
        return procs

    def tritonserver_pid(self) -> int | None:
        for p in self.sample_tree():
            try:
                if p.name() == "tritonserver":
                    return p.pid
            except psutil.NoSuchProcess:
                pass
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Signal the launcher and wait; returns its exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        self.sample_tree()
        code = self.proc.poll()
        if code is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for p in reversed(self.sample_tree()):
                    p.kill()
                self.proc.wait(10)
                code = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def alive_processes(self) -> list[psutil.Process]:
        alive = []
        for pid, created in self._known.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive

    def shm_leftovers(self) -> list[str]:
        shm = Path("/dev/shm")
        return sorted(p.name for p in shm.glob(self.shm_prefix + "*")) if shm.is_dir() else []

    def leftovers(self, wait: float = 10.0) -> tuple[list[str], list[str]]:
        """(descriptions of our processes still alive, our /dev/shm entries), after up to `wait` s."""
        deadline = time.monotonic() + wait
        while True:
            procs, shm = self.alive_processes(), self.shm_leftovers()
            if (not procs and not shm) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        described = []
        for p in procs:
            try:
                described.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
            except psutil.NoSuchProcess:
                pass
        return described, shm

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
