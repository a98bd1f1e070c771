"""The supervisor's decisions (llm_core/serving/supervisor.py) against a fake model repository."""

from __future__ import annotations

from llm_core.serving import supervisor as sup
from llm_core.serving.health import HealthWriter


class FakeRepo:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def ready(self) -> bool:
        return True

    def config(self, model: str) -> dict:
        return {"name": model, "parameters": {}}

    def python_configs(self) -> dict[str, dict]:
        return {m: self.config(m) for m in ("preprocess", "visual", "llm", "postprocess", "engine_health")}

    def load(self, model: str, config: dict | None = None) -> tuple[bool, str]:
        state = ((config or {}).get("parameters", {}).get("engine_state") or {}).get("string_value", "")
        self.calls.append(("load", f"{model}:{state}" if state else model))
        return True, ""

    def unload(self, model: str) -> None:
        self.calls.append(("unload", model))


def _supervisor(tmp_path, monkeypatch, stubs: dict[str, int]) -> tuple[sup.Supervisor, FakeRepo, dict]:
    current = dict(stubs)
    monkeypatch.setattr(sup, "stub_pids", lambda server_pid: dict(current))
    s = sup.Supervisor("http://x", 1, tmp_path, log=lambda line: None)
    s.repo = FakeRepo()
    s.known = dict(stubs)
    s.configs = {m: s.repo.config(m) for m in stubs}
    return s, s.repo, current


def test_either_engine_not_ready_keeps_the_server_not_ready(tmp_path, monkeypatch):
    s, repo, _ = _supervisor(tmp_path, monkeypatch, {"embedding": 10, "engine_health": 11})
    embedding = HealthWriter(tmp_path, model="embedding")
    embedding.update("restarting", "a worker process died")
    s.check()
    assert ("load", "engine_health:embedding engine restarting: a worker process died") in repo.calls
    assert s.ready is False
    repo.calls.clear()
    embedding.update("ready")
    HealthWriter(tmp_path, model="llm").update("down", "restart failed")
    s.check()
    assert s.ready is False and not repo.calls  # still not ready (the llm engine now): nothing reloaded
    HealthWriter(tmp_path, model="llm").update("ready")
    s.check()
    assert repo.calls[-1] == ("load", "engine_health:ready") and s.ready is True


def test_a_dead_stub_is_reloaded_and_the_ensemble_only_for_its_steps(tmp_path, monkeypatch):
    s, repo, current = _supervisor(tmp_path, monkeypatch, {"embedding": 10, "llm": 12, "engine_health": 11})
    current["embedding"] = 20  # its stub died and tritonserver has not restarted it: a new pid is a reload
    s.check()
    loads = [m for kind, m in repo.calls if kind == "load"]
    assert ("unload", "embedding") in repo.calls and "embedding:" not in loads
    assert any(m.startswith("embedding") for m in loads) and "ensemble" not in loads
    repo.calls.clear()
    current["llm"] = 21
    s.check()
    loads = [m for kind, m in repo.calls if kind == "load"]
    assert loads[0].startswith("engine_health") and loads[1] == "llm" and loads[2] == "ensemble", loads


def test_a_stub_that_died_before_the_first_look_is_reloaded(tmp_path, monkeypatch):
    # Killed right after the server became ready, before the supervisor first listed the stubs.
    alive = {"preprocess": 10, "visual": 11, "postprocess": 13, "engine_health": 14}
    s, repo, _ = _supervisor(tmp_path, monkeypatch, alive)
    s.start()
    assert s.known["llm"] == 0
    s.check()
    loads = [m for kind, m in repo.calls if kind == "load"]
    assert ("unload", "llm") in repo.calls and "llm" in loads and "ensemble" in loads, repo.calls


def test_nothing_is_reloaded_when_tritonserver_itself_died(tmp_path, monkeypatch):
    # Its stubs vanish with it; the launcher restarts the whole server, the supervisor must not act.
    s, repo, current = _supervisor(tmp_path, monkeypatch, {"llm": 12, "engine_health": 11})
    current.clear()
    monkeypatch.setattr(sup, "alive", lambda pid: False)
    s.check()
    assert not repo.calls and s.known == {"llm": 12, "engine_health": 11}
    monkeypatch.setattr(sup, "alive", lambda pid: True)
    s.check()
    assert ("unload", "llm") in repo.calls  # with the server alive, the same look is a dead stub


def test_alive_tells_a_running_process_from_a_zombie_and_a_gone_one():
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert sup.alive(proc.pid)
    proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while sup.alive(proc.pid):  # a zombie until reaped: not alive
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.wait()
    assert not sup.alive(proc.pid)
