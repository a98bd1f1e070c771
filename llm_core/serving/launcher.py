"""Start tritonserver on our model repository: `python -m llm_core.serving.launcher [flags] [-- triton args]`.

What it adds around `tritonserver --model-repository=model_repository`:
- finds the binary and sets up its environment (tritonserver_env.py);
- resolves the model directory (flag, LLM_MODEL_DIR, or the default tiny LLaVA it builds) and
  passes it and the engine settings to the four models through LLM_* environment variables;
- gives the Python backend a shm-region prefix unique to this launch, and a private runtime
  directory (LLM_SERVING_RUNTIME_DIR: the cancellation relay's ipc socket lives there);
- forwards SIGTERM/SIGINT to tritonserver, which runs in its own session and gets SIGTERM from the
  kernel if this launcher is killed (PR_SET_PDEATHSIG); after tritonserver exits, however it
  exited, removes that shm prefix and the runtime directory. Python stubs exit by themselves when
  tritonserver dies, and engine workers die with their stub (PR_SET_PDEATHSIG in llm_core).
- starts the OpenAI-compatible API (`python -m llm_core.serving.openai`, --openai-port, 0: off) as
  a second child talking to tritonserver over gRPC, and stops it after tritonserver has exited
  (so it can finish answering what tritonserver is still draining);
- prints the HTTP/gRPC/metrics/OpenAI addresses once the server is ready;
- restarts tritonserver when it dies by itself after it had been ready (e.g. the Python backend's abort of
  triton-inference-server/server#8882), at most `--max-restarts` times: it first ends what the dead server
  started (stubs, their watchdogs, engine workers: tritonserver's session) and removes its shm, so the new
  one finds the GPU memory and ports free; `/v2/health/ready` is down meanwhile and the OpenAI API answers 503.
  A server that dies before it was ever ready is not restarted (a load error would only repeat);
- kills a tritonserver that was ready and then stops answering `/v2/health/live` for `--hang-timeout` seconds
  (a deadlock, a stopped process), so that it is restarted (or, with `--max-restarts 0`, the launcher exits);
- runs tritonserver with explicit model control (every model loaded at start) and a supervisor
  thread (supervisor.py) that reloads a model whose Python stub died and keeps
  /v2/health/ready non-200 while the llm engine restarts or a model reloads (`--no-supervisor`:
  tritonserver's default model control, nothing watched).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from llm_core.lifetime import live_processes, set_parent_death_signal
from llm_core.serving.cancel_relay import ENV_RUNTIME_DIR
from llm_core.serving.health import LAUNCHER_FILE, write_json
from llm_core.serving.model_dir import ENV_MODEL_DIR, resolve_model_dir
from llm_core.serving.supervisor import Supervisor
from llm_core.serving.tritonserver_env import find_tritonserver, server_env

REPO_ROOT = Path(__file__).resolve().parents[2]
SHM_PREFIX_BASE = "triton_python_backend_shm_region_llmcore"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", help=f"HF Llama/Qwen2/LLaVA directory (default: ${ENV_MODEL_DIR} or tiny LLaVA)")
    p.add_argument("--model-repository", default=str(REPO_ROOT / "model_repository"))
    p.add_argument("--host", default="127.0.0.1", help="address printed for clients")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--openai-port", type=int, default=9000, help="OpenAI-compatible API (0: do not start it)")
    p.add_argument("--chat-template", help="Jinja chat template (file or text) for models without one (OpenAI API)")
    p.add_argument("--device", help="cpu or cuda (LLM_DEVICE)")
    p.add_argument("--tp", type=int, help="tensor-parallel ranks (LLM_TP)")
    p.add_argument("--max-total-tokens", type=int, help="KV pool size in tokens (LLM_MAX_TOTAL_TOKENS)")
    p.add_argument("--max-model-len", type=int, help="context limit (LLM_MAX_MODEL_LEN)")
    p.add_argument("--dtype", help="float32 | float16 | bfloat16 | auto (LLM_DTYPE)")
    p.add_argument(
        "--embedding", action="store_true",
        help="also serve the embedding model (LLM_EMBEDDING=1): a second engine, with its own KV pool",
    )  # fmt: skip
    p.add_argument(
        "--embedding-only", action="store_true",
        help="serve only the embedding model (no chat pipeline, one engine); implies --embedding",
    )  # fmt: skip
    p.add_argument("--shm-prefix", help="Python backend shm-region prefix (default: unique per launch)")
    p.add_argument("--runtime-dir", help="this launch's runtime directory, removed at exit (default: a new temp dir)")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait before giving up")
    p.add_argument("--no-supervisor", action="store_true", help="no explicit model control, no stub reloads")
    p.add_argument(
        "--max-restarts", type=int, default=3,
        help="restarts of a tritonserver that died after it was ready (0: exit with its code, leave it to the "
        "orchestrator)",
    )  # fmt: skip
    p.add_argument(
        "--hang-timeout", type=float, default=60.0,
        help="seconds a ready tritonserver may go without answering /v2/health/live before it is killed (and "
        "restarted, see --max-restarts); 0: never",
    )  # fmt: skip
    p.add_argument("triton_args", nargs="*", help="extra tritonserver arguments (after --)")
    return p.parse_args(argv)


def model_env(args: argparse.Namespace) -> dict[str, str]:
    """LLM_* variables read by the models (llm_core/serving/settings.py)."""
    env = {ENV_MODEL_DIR: str(resolve_model_dir(args.model_dir, build_default=True))}
    for flag, name in (
        ("device", "LLM_DEVICE"),
        ("tp", "LLM_TP"),
        ("max_total_tokens", "LLM_MAX_TOTAL_TOKENS"),
        ("max_model_len", "LLM_MAX_MODEL_LEN"),
        ("dtype", "LLM_DTYPE"),
    ):
        value = getattr(args, flag)
        if value is not None:
            env[name] = str(value)
    if args.embedding or args.embedding_only:
        env["LLM_EMBEDDING"] = "1"
    return env


def triton_command(binary: Path, backend_dir: Path | None, args: argparse.Namespace, shm_prefix: str) -> list[str]:
    cmd = [
        str(binary),
        f"--model-repository={args.model_repository}",
        f"--http-port={args.http_port}",
        f"--grpc-port={args.grpc_port}",
        f"--metrics-port={args.metrics_port}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        f"--log-verbose={args.log_verbose}",
    ]
    if backend_dir is not None:
        cmd.append(f"--backend-directory={backend_dir}")
    if not any(a.startswith("--model-control-mode") for a in args.triton_args):
        if args.embedding_only:  # the sentinel too: /v2/health/ready needs a ready model set
            cmd += ["--model-control-mode=explicit", "--load-model=embedding", "--load-model=engine_health"]
        elif not args.no_supervisor:
            cmd += ["--model-control-mode=explicit", "--load-model=*"]
    return cmd + list(args.triton_args)


def openai_command(args: argparse.Namespace, model_dir: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "llm_core.serving.openai",
        f"--triton-url=127.0.0.1:{args.grpc_port}",
        f"--model-dir={model_dir}",
        f"--port={args.openai_port}",
    ]
    return cmd + ([f"--chat-template={args.chat_template}"] if args.chat_template else [])


def missing_api_packages() -> list[str]:
    """The OpenAI API's packages (the `api` extra) this interpreter lacks."""
    return [name for name in ("fastapi", "uvicorn", "tritonclient") if importlib.util.find_spec(name) is None]


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; waits for the exit (nothing to do when it is gone)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the launcher dies (even by SIGKILL)."""
    set_parent_death_signal(signal.SIGTERM)


def remove_shm(prefix: str) -> list[str]:
    """Remove /dev/shm segments whose name starts with `prefix`; returns what was removed."""
    removed = []
    shm = Path("/dev/shm")
    for entry in shm.glob(prefix + "*") if shm.is_dir() else ():
        try:
            entry.unlink()
            removed.append(entry.name)
        except OSError:
            pass
    return removed


def busy_ports(ports: list[int]) -> list[int]:
    """Ports some other process listens on (tritonserver binds 0.0.0.0 and would fail late)."""
    busy = []
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                busy.append(port)
    return busy


def answers(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if answers(url, timeout=2):
            return True
        time.sleep(0.5)
    return False


def _announce(
    args: argparse.Namespace,
    proc: subprocess.Popen,
    openai: subprocess.Popen | None,
    was_ready: threading.Event | None = None,
) -> None:
    ready = wait_ready(f"http://127.0.0.1:{args.http_port}/v2/health/ready", proc, args.ready_timeout)
    if ready and was_ready is not None:
        was_ready.set()
    if not ready:
        if proc.poll() is None:
            print(f"[launcher] server not ready after {args.ready_timeout:.0f}s", flush=True)
        return
    print(
        f"[launcher] ready  HTTP    http://{args.host}:{args.http_port}\n"
        f"[launcher] ready  gRPC    {args.host}:{args.grpc_port}\n"
        f"[launcher] ready  metrics http://{args.host}:{args.metrics_port}/metrics",
        flush=True,
    )
    if openai is None:
        return
    if wait_ready(f"http://127.0.0.1:{args.openai_port}/health", openai, timeout=60):
        print(f"[launcher] ready  OpenAI  http://{args.host}:{args.openai_port}/v1", flush=True)
    else:  # e.g. its packages are missing (the api extra); tritonserver serves on without it
        state = f"exited with {openai.returncode}" if openai.poll() is not None else "not answering /health"
        print(f"[launcher] OpenAI API on port {args.openai_port} {state}; see its error above", flush=True)


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`. tritonserver runs in its own session, so this is
    tritonserver, its Python stubs, their watchdogs and the engine workers."""
    return [pid for pid, stat in live_processes() if int(stat[3]) == sid]  # state ppid pgrp session ...


def end_session(sid: int, grace: float = 10.0) -> list[int]:
    """After the tritonserver that led session `sid` died: give what it started `grace` seconds to exit by
    itself (stubs exit once it is gone, engine workers with their stub), then SIGKILL the rest and wait for
    them. Returns the pids that had to be killed."""
    deadline = time.monotonic() + grace
    while (pids := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while session_pids(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
    reap_group(sid)
    return pids


def reap_group(pgid: int) -> None:
    """Reap the exited processes of group `pgid` that are our children: where the launcher is PID 1 (the
    container's entrypoint) the dead server's stubs are re-parented to it and would stay zombies."""
    while True:
        try:
            if os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG) is None:
                return
        except ChildProcessError:
            return


def wait_ports_free(ports: list[int], timeout: float = 60.0) -> list[int]:
    """Wait until none of `ports` is in use; returns those still busy after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (busy := busy_ports(ports)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return busy


def reset_runtime_dir(runtime_dir: Path, restarts: int) -> None:
    """Empty the runtime directory for a new tritonserver (the dead one's health files and sockets would
    mislead the new stubs and the supervisor) and record how often it was restarted."""
    for entry in runtime_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    write_json(runtime_dir / LAUNCHER_FILE, {"server_restarts": restarts})


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"signal {-code}"


class TritonRuns:
    """Runs tritonserver, and again after it died by itself, with the supervisor watching each run."""

    def __init__(
        self, cmd: list[str], env: dict[str, str], args: argparse.Namespace, runtime_dir: Path,
        openai: subprocess.Popen | None,
    ) -> None:  # fmt: skip
        self.cmd, self.env, self.args, self.runtime_dir, self.openai = cmd, env, args, runtime_dir, openai
        self.stopping = threading.Event()  # a signal asked the launcher to stop: no restart
        self._run_over = threading.Event()  # ends the current run's supervisor
        self._proc: subprocess.Popen | None = None  # set and signalled in the main thread (no lock: the signal
        # handler runs there too, between two of its bytecodes); the hang watchdog only SIGKILLs it
        self.hung_for: float | None = None  # the current run was killed for not answering this many seconds

    def forward(self, signum: int, _frame: object = None) -> None:
        """Signal handler: pass SIGTERM/SIGINT/SIGHUP to the running tritonserver and restart no more."""
        self.stopping.set()
        self._run_over.set()  # stubs exiting on shutdown are no failure
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signum)

    def run_once(self) -> tuple[int, bool]:
        """Start tritonserver and wait for its exit: (exit code, whether it had been ready)."""
        ready = threading.Event()
        self._run_over = threading.Event()
        self._proc = proc = subprocess.Popen(
            self.cmd, env=self.env, start_new_session=True, preexec_fn=_die_with_parent
        )
        if self.stopping.is_set():  # a signal came while it started
            self.forward(signal.SIGTERM)
        threading.Thread(target=_announce, args=(self.args, proc, self.openai, ready), daemon=True).start()
        if self.args.hang_timeout > 0:
            watch = threading.Thread(target=self.watch_liveness, args=(proc, ready, self._run_over), daemon=True)
            watch.start()
        if not self.args.no_supervisor:
            supervisor = Supervisor(f"http://127.0.0.1:{self.args.http_port}", proc.pid, self.runtime_dir, log=_log)
            threading.Thread(target=supervisor.run, args=(self._run_over,), name="supervisor", daemon=True).start()
        try:
            return proc.wait(), ready.is_set()
        finally:
            self._run_over.set()

    def watch_liveness(self, proc: subprocess.Popen, ready: threading.Event, run_over: threading.Event) -> None:
        """Once the server was ready: SIGKILL it when `/v2/health/live` has not answered for --hang-timeout
        seconds. Its HTTP thread answers that while models are busy or reloading, so silence means the process
        is stuck (or stopped); killing it hands it to the restart path in serve()."""
        url = f"http://127.0.0.1:{self.args.http_port}/v2/health/live"
        limit = self.args.hang_timeout
        period = min(5.0, limit / 4)
        while not ready.is_set():
            if run_over.wait(0.5):
                return
        last_answer = time.monotonic()
        while not run_over.wait(period):
            if answers(url, timeout=period):
                last_answer = time.monotonic()
            elif (silent := time.monotonic() - last_answer) >= limit and not self.stopping.is_set():
                self.hung_for = silent
                _log(f"[launcher] tritonserver has not answered /v2/health/live for {silent:.0f} s: killing it")
                proc.kill()
                return

    def serve(self, shm_prefix: str) -> int:
        """Run until tritonserver exits for good; returns its last exit code."""
        restarts = 0
        while True:
            self.hung_for = None
            code, was_ready = self.run_once()
            sid = self._proc.pid
            if killed := end_session(sid):
                _log(f"[launcher] killed {len(killed)} process(es) the server left behind: {killed}")
            if removed := remove_shm(shm_prefix):
                _log(f"[launcher] removed leftover shm: {' '.join(removed)}")
            if self.stopping.is_set() or code in (0, -signal.SIGTERM, -signal.SIGINT):
                return code
            how = "was killed, hung" if self.hung_for is not None else f"died ({describe_exit(code)})"
            if not was_ready or restarts >= self.args.max_restarts:
                why = "before it was ready" if not was_ready else f"after {restarts} restart(s)"
                _log(f"[launcher] tritonserver {how} {why}: not restarting it")
                return code
            restarts += 1
            _log(
                f"[launcher] tritonserver {how} after it was ready; restarting it "
                f"({restarts} of at most {self.args.max_restarts})"
            )
            ports = [self.args.http_port, self.args.grpc_port, self.args.metrics_port]
            if busy := wait_ports_free(ports):
                _log(f"[launcher] port(s) {busy} still in use a minute after the server died: not restarting it")
                return code
            reset_runtime_dir(self.runtime_dir, restarts)
            if self.stopping.is_set():
                return code


def _log(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    busy = busy_ports(
        [args.http_port, args.grpc_port, args.metrics_port] + ([args.openai_port] if args.openai_port else [])
    )
    if busy:
        print(
            f"[launcher] port(s) {busy} already in use: pick others with --http-port/--grpc-port/--metrics-port"
            "/--openai-port",
            file=sys.stderr,
        )
        return 2
    install = find_tritonserver()
    shm_prefix = args.shm_prefix or f"{SHM_PREFIX_BASE}{os.getpid()}_"
    if args.runtime_dir:
        runtime_dir = Path(args.runtime_dir)
        runtime_dir.mkdir(parents=True, exist_ok=True)
    else:
        runtime_dir = Path(tempfile.mkdtemp(prefix="llm_core_triton_"))
    env = server_env(install)
    env.update(model_env(args))
    env[ENV_RUNTIME_DIR] = str(runtime_dir)
    cmd = triton_command(install.binary, install.backend_dir, args, shm_prefix)
    print(f"[launcher] model dir {env[ENV_MODEL_DIR]}\n[launcher] {' '.join(cmd)}", flush=True)
    openai = None
    missing = missing_api_packages() if args.openai_port else []
    if missing:  # tritonserver serves on without it; say so in one line instead of the child's traceback
        need = ", ".join(missing)
        print(f"[launcher] OpenAI API off: {need} not installed (pip install 'llm_core[api]')", flush=True)
    elif args.openai_port:  # own session: a terminal's Ctrl-C must not stop it before tritonserver drains
        openai_cmd = openai_command(args, env[ENV_MODEL_DIR])
        openai = subprocess.Popen(openai_cmd, start_new_session=True, preexec_fn=_die_with_parent)
    runs = TritonRuns(cmd, env, args, runtime_dir, openai)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, runs.forward)
    try:
        code = runs.serve(shm_prefix)
    finally:
        stop_process(openai)
        remove_shm(shm_prefix)
        shutil.rmtree(runtime_dir, ignore_errors=True)
    print(f"[launcher] tritonserver exited with {code}", flush=True)
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else (code if code > 0 else 128 - code)


if __name__ == "__main__":
    sys.exit(main())
