"""Start, watch and stop the servers of a fleet; keep the state file clients read.

Each server is one `python -m llm_core.serving.launcher` child (its own tritonserver, engine workers and
clean-up) with its ports, model and, on CUDA, `CUDA_VISIBLE_DEVICES` set to the GPUs it was given, and
`--max-restarts 0`: a dead tritonserver ends its launcher, so the state file says so. All are
started at once, then `poll()` (every poll_s) ready-checks the starting ones, restarts one that has exited
(after `restart_backoff_s`, doubled for each further start that dies before getting ready) and rewrites the
state file when anything changed. `stop()` stops them all.

Each start gets a Python-backend shm prefix of its own (`--shm-prefix`): a server killed with its launcher
(kill -9 of the tree, the OOM killer) leaves its /dev/shm segments behind, and nobody else would remove them;
the fleet removes them once it sees the server gone, and again after stop().
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_core.lifetime import set_parent_death_signal
from llm_core.serving.fleet.config import FleetConfig, ServerSpec
from llm_core.serving.launcher import SHM_PREFIX_BASE, remove_shm, stop_process

log = logging.getLogger("llm_core.fleet")
# How long stop() waits for a launcher: tritonserver's own exit timeout is 30 s (in-flight requests), and the
# launcher cleans up (shm, runtime directory) after it; a launcher killed before that leaves both behind.
STOP_TIMEOUT_S = 45.0


def launcher_command(spec: ServerSpec, shm_prefix: str | None = None, runtime_dir: str | None = None) -> list[str]:
    cmd = [
        sys.executable, "-m", "llm_core.serving.launcher", "--model-dir", spec.model_dir,
        "--http-port", str(spec.http_port), "--grpc-port", str(spec.grpc_port),
        "--metrics-port", str(spec.metrics_port), "--openai-port", "0", "--device", spec.device,
        "--tp", str(spec.tp), "--max-restarts", "0",  # the fleet restarts its servers itself, with back-off
    ]  # fmt: skip
    if shm_prefix:
        cmd.append(f"--shm-prefix={shm_prefix}")
    if runtime_dir:
        cmd.append(f"--runtime-dir={runtime_dir}")
    if spec.kind == "embedding":
        cmd.append("--embedding-only")
    return cmd + list(spec.args)


def http_ready(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v2/health/ready", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


@dataclass(slots=True)
class ServerState:
    spec: ServerSpec
    gpus: list[int]
    process: subprocess.Popen | None = None
    status: str = "stopped"  # starting | ready | dead | stopped
    started_at: float = 0.0
    died_at: float = 0.0
    restarts: int = 0
    failed_starts: int = 0  # deaths in a row before becoming ready (the restart wait doubles with each)
    shm_prefix: str = ""  # this start's Python-backend shm prefix
    runtime_dir: str = ""  # this start's runtime directory (the launcher removes it, unless killed)

    def record(self, host: str) -> dict:
        spec = self.spec
        return {
            "name": spec.name, "kind": spec.kind, "model": spec.model, "size": spec.size,
            "model_dir": spec.model_dir, "host": host, "http_port": spec.http_port, "grpc_port": spec.grpc_port,
            "metrics_port": spec.metrics_port, "gpus": self.gpus, "status": self.status,
            "pid": self.process.pid if self.process is not None else None, "restarts": self.restarts,
            "shm_prefix": self.shm_prefix, "runtime_dir": self.runtime_dir,
        }  # fmt: skip


class FleetLauncher:
    def __init__(
        self,
        config: FleetConfig,
        gpus: dict[str, list[int]],
        spawn: Callable[[list[str], dict[str, str]], subprocess.Popen] | None = None,
        ready: Callable[[str, int], bool] = http_ready,
        clock: Callable[[], float] = time.monotonic,
        restart_backoff_s: float = 2.0,
        max_restart_backoff_s: float = 120.0,
    ) -> None:
        self.config = config
        self.servers = [ServerState(spec, gpus.get(spec.name, [])) for spec in config.servers]
        self.spawn = spawn or _spawn
        self.ready = ready
        self.clock = clock
        self.restart_backoff_s = restart_backoff_s
        self.max_restart_backoff_s = max_restart_backoff_s

    def start(self) -> None:
        for server in self.servers:  # Popen returns at once: the servers load concurrently
            self._start(server)
        self.write_state()

    def _start(self, server: ServerState) -> None:
        env = dict(os.environ)
        if server.spec.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in server.gpus)
        # unique per fleet, server and start: removing a dead start's leftovers never touches a live one's
        server.shm_prefix = f"{SHM_PREFIX_BASE}f{os.getpid()}_{server.spec.http_port}_{server.restarts}_"
        server.runtime_dir = str(Path(tempfile.gettempdir()) / f"llm_core_fleet_{server.shm_prefix.rstrip('_')}")
        server.process = self.spawn(launcher_command(server.spec, server.shm_prefix, server.runtime_dir), env)
        server.status, server.started_at = "starting", self.clock()
        log.info("fleet: started %s (pid %d, port %d, gpus %s)", server.spec.name, server.process.pid,
                 server.spec.http_port, server.gpus or "-")  # fmt: skip

    def poll(self) -> bool:
        """One round of checks; True when some server's status changed (the state file is rewritten)."""
        changed = False
        for server in self.servers:
            changed |= self._check(server)
        if changed:
            self.write_state()
        return changed

    def _check(self, server: ServerState) -> bool:
        process, now = server.process, self.clock()
        if server.status in ("starting", "ready") and process is not None and process.poll() is not None:
            if server.status == "starting":
                server.failed_starts += 1
            log.warning("fleet: %s exited with %s; restart in %.0f s", server.spec.name, process.returncode,
                        self.restart_wait(server))  # fmt: skip
            server.status, server.died_at = "dead", now
            _remove_leftovers(server)
            return True
        if server.status == "dead" and self.config.restart and now - server.died_at >= self.restart_wait(server):
            server.restarts += 1
            self._start(server)
            return True
        if server.status == "starting":
            if self.ready(self.config.host, server.spec.http_port):
                log.info("fleet: %s ready after %.1f s", server.spec.name, now - server.started_at)
                server.status, server.failed_starts = "ready", 0
                return True
            if now - server.started_at > self.config.ready_timeout_s:
                log.error("fleet: %s not ready after %.0f s; stopping it", server.spec.name, now - server.started_at)
                stop_process(process, STOP_TIMEOUT_S)
                server.failed_starts += 1
                server.status, server.died_at = "dead", now
                _remove_leftovers(server)
                return True
        return False

    def restart_wait(self, server: ServerState) -> float:
        """`restart_backoff_s` after a death; doubled for each further start in a row that died before getting
        ready (a bad model directory, a GPU that is gone), up to `max_restart_backoff_s`."""
        return min(self.restart_backoff_s * 2 ** max(server.failed_starts - 1, 0), self.max_restart_backoff_s)

    def all_ready(self) -> bool:
        return all(s.status == "ready" for s in self.servers)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        for server in self.servers:
            if server.process is not None and server.process.poll() is None:
                server.process.terminate()
        for server in self.servers:
            stop_process(server.process, timeout)
            server.status = "stopped"
            _remove_leftovers(server)
        self.write_state()

    def write_state(self) -> None:
        """Atomically (rename) so a client never reads half a file."""
        path = Path(self.config.state_file)
        state = {"updated": time.time(), "servers": [s.record(self.config.host) for s in self.servers]}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Its own session (a Ctrl-C reaches it once, through stop()); SIGTERM when the fleet dies, even by SIGKILL.
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    set_parent_death_signal(signal.SIGTERM)


def _remove_leftovers(server: ServerState) -> None:
    """The /dev/shm segments and the runtime directory a server that is gone left behind (none when its
    launcher cleaned up)."""
    if server.shm_prefix and (removed := remove_shm(server.shm_prefix)):
        log.warning("fleet: removed %d shm segment(s) %s* that %s left", len(removed), server.shm_prefix,
                    server.spec.name)  # fmt: skip
    if server.runtime_dir and Path(server.runtime_dir).exists():
        shutil.rmtree(server.runtime_dir, ignore_errors=True)
        log.warning("fleet: removed the runtime directory %s that %s left", server.runtime_dir, server.spec.name)
