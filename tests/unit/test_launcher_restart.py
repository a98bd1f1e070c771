"""The launcher restarts a tritonserver that died (or hung) after it was ready, and only then.

A fake `tritonserver` first on PATH (the launcher prefers one there) answers /v2/health/ready and
then dies by SIGKILL, as the real one does on the Python backend's abort (docs/SERVING.md); the
real server's restart, with its stubs and engine, is `tests/e2e/test_faults.py`'s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from llm_core.serving import launcher
from llm_core.serving.server_process import free_ports

REPO = Path(__file__).resolve().parents[2]

FAKE = """\
#!{python}
import http.server, json, os, signal, sys, threading, time
from pathlib import Path
port = int(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--http-port=")))
state = Path(os.environ["FAKE_STATE"])
runs = json.loads(state.read_text()) if state.exists() else []
info = Path(os.environ["LLM_SERVING_RUNTIME_DIR"]) / "launcher.json"
runs.append(json.loads(info.read_text()) if info.exists() else None)
state.write_text(json.dumps(runs))
mode = os.environ["FAKE_MODE"]
if mode == "die-early":
    os.kill(os.getpid(), signal.SIGKILL)

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Ready)
threading.Thread(target=server.serve_forever, daemon=True).start()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if mode == "die-always" or (mode == "die-once" and len(runs) == 1):
    time.sleep(1.5)  # ready long enough for the launcher to see it
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "hang-once" and len(runs) == 1:
    time.sleep(1.5)
    os.kill(os.getpid(), signal.SIGSTOP)  # alive, answering nothing
while True:
    time.sleep(1)
"""


def _launcher(tmp_path: Path, model_dir: Path, mode: str, *flags: str) -> tuple[subprocess.Popen, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tritonserver"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    state = tmp_path / "runs.json"
    http, grpc, metrics = free_ports(3)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_STATE": str(state)}
    env |= {"FAKE_MODE": mode, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "llm_core.serving.launcher", f"--model-dir={model_dir}", "--openai-port=0"]
    cmd += [f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}", "--no-supervisor", *flags]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, state


def _runs(state: Path) -> list:
    try:
        return json.loads(state.read_text())
    except (OSError, ValueError):
        return []


def test_restarts_after_a_death_when_ready_then_stops_on_sigterm(tmp_path, tiny_llama):
    proc, state = _launcher(tmp_path, tiny_llama, "die-once")
    deadline = time.monotonic() + 60
    while len(_runs(state)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)  # the second run is up
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert _runs(state) == [None, {"server_restarts": 1}], out  # the second run found the count
    assert "died (signal SIGKILL) after it was ready; restarting it (1 of at most 3)" in out
    assert out.count("[launcher] ready  HTTP") == 2, out


def test_a_hung_server_is_killed_and_restarted(tmp_path, tiny_llama):
    proc, state = _launcher(tmp_path, tiny_llama, "hang-once", "--hang-timeout=2")
    deadline = time.monotonic() + 60
    while len(_runs(state)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(3.0)  # the second run answers past the hang timeout: it is left alone
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert _runs(state) == [None, {"server_restarts": 1}], out
    assert out.count("has not answered /v2/health/live for") == 1, out
    assert "tritonserver was killed, hung after it was ready; restarting it (1 of at most 3)" in out, out


def test_no_restart_past_the_limit(tmp_path, tiny_llama):
    proc, state = _launcher(tmp_path, tiny_llama, "die-always", "--max-restarts=1")
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGKILL, out
    assert len(_runs(state)) == 2 and "after 1 restart(s): not restarting it" in out, out


def test_no_restart_of_a_server_that_was_never_ready(tmp_path, tiny_llama):
    proc, state = _launcher(tmp_path, tiny_llama, "die-early")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL, out
    assert len(_runs(state)) == 1 and "before it was ready: not restarting it" in out, out


def test_max_restarts_zero_leaves_it_to_the_orchestrator(tmp_path, tiny_llama):
    proc, state = _launcher(tmp_path, tiny_llama, "die-always", "--max-restarts=0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL and len(_runs(state)) == 1, out


def test_end_session_kills_what_a_dead_leader_left(tmp_path):
    # A session leader that starts a child ignoring SIGTERM, then dies: the child is found by its session and
    # killed after the grace period.
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """)
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert sorted(launcher.session_pids(leader.pid)) == sorted([leader.pid, child])
    leader.kill()
    leader.wait()
    start = time.monotonic()
    assert launcher.end_session(leader.pid, grace=0.5) == [child]
    assert time.monotonic() - start < 5
    assert launcher.session_pids(leader.pid) == []
    assert launcher.end_session(leader.pid, grace=0.5) == []  # nothing left: returns at once


def test_reap_group_reaps_exited_children_of_that_group_only():
    from llm_core.lifetime import alive

    member = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)  # its own group
    other = subprocess.Popen([sys.executable, "-c", "pass"])  # ours, in pytest's group
    deadline = time.monotonic() + 30
    while alive(member.pid) or alive(other.pid):  # both exited: zombies until reaped
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert Path(f"/proc/{member.pid}").exists()  # a zombie until reaped
    launcher.reap_group(member.pid)
    assert not Path(f"/proc/{member.pid}").exists()
    assert Path(f"/proc/{other.pid}").exists() and other.wait() == 0  # another group's child is left alone
    launcher.reap_group(member.pid)  # nothing left in the group: returns at once


def test_describe_exit():
    assert launcher.describe_exit(1) == "code 1"
    assert launcher.describe_exit(-signal.SIGABRT) == "signal SIGABRT"
    assert launcher.describe_exit(-40) == "signal 40"  # real-time signals have no name
