"""The fleet launcher with fake processes, readiness and clock (no tritonserver)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from llm_core.serving.fleet import __main__ as fleet_main
from llm_core.serving.fleet.config import load_fleet_config, parse_fleet_config
from llm_core.serving.fleet.gpus import GpuMemory, assign_gpus
from llm_core.serving.fleet.launcher import FleetLauncher, launcher_command

FLEET_TOML = """
state_file = "state.json"
device = "cpu"
[[server]]
name = "chat-small"
model_dir = "/m/small"
size = "0.5b"
[[server]]
name = "chat-large"
model_dir = "/m/large"
port = 9000
args = ["--max-total-tokens", "4096"]
[[server]]
name = "embed"
kind = "embedding"
model_dir = "/m/embed"
"""
GIB = 1 << 30


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid, self.returncode, self.terminated = pid, None, False

    def poll(self):
        return self.returncode

    def terminate(self) -> None:
        self.terminated, self.returncode = True, -15

    def wait(self, timeout=None):
        return self.returncode


class FakeWorld:
    def __init__(self) -> None:
        self.now = 0.0
        self.spawned: list[tuple[list[str], dict, FakeProcess]] = []
        self.ready_ports: set[int] = set()

    def spawn(self, cmd, env):
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((cmd, env, process))
        return process


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET_TOML)
    return load_fleet_config(path)


def test_config_ports_kinds_and_commands(config, tmp_path):
    small, large, embed = config.servers
    assert (small.http_port, small.grpc_port, large.http_port, embed.http_port) == (8100, 8101, 9000, 8120)
    assert config.state_file == tmp_path / "state.json" and small.model == "chat-small" and embed.kind == "embedding"
    cmd = launcher_command(large)
    assert cmd[-2:] == ["--max-total-tokens", "4096"] and "--http-port" in cmd and "--embedding" not in cmd
    assert "--embedding-only" in launcher_command(embed)  # no chat pipeline, one engine
    restarts = cmd.index("--max-restarts")  # one restart authority: the fleet (back-off, state file)
    assert cmd[restarts + 1] == "0"
    with pytest.raises(ValueError, match="overlap"):
        parse_fleet_config({"server": [{"name": "a", "model_dir": "m", "port": 8000}, {"name": "b", "model_dir": "m",
                                                                                      "port": 8002}]})  # fmt: skip
    with pytest.raises(ValueError, match="kind"):
        parse_fleet_config({"server": [{"name": "a", "model_dir": "m", "kind": "chatty"}]})


def test_gpus_in_use_are_skipped_and_tp_takes_several():
    gpus = [GpuMemory(0, 2 * GIB, 80 * GIB), GpuMemory(1, 70 * GIB, 80 * GIB), GpuMemory(2, 79 * GIB, 80 * GIB)]
    assert assign_gpus([("a", 1)], gpus, 8) == {"a": [1]}
    assert assign_gpus([("a", 2)], gpus, 8) == {"a": [1, 2]}
    with pytest.raises(ValueError, match="GPU 0: 2.0 GiB free"):
        assign_gpus([("a", 1), ("b", 2)], gpus, 8)


def test_start_ready_restart_and_stop(config):
    world = FakeWorld()
    fleet = FleetLauncher(config, {}, spawn=world.spawn, ready=lambda host, port: port in world.ready_ports,
                          clock=lambda: world.now, restart_backoff_s=2.0)  # fmt: skip
    fleet.start()
    assert len(world.spawned) == 3 and [s.status for s in fleet.servers] == ["starting"] * 3
    world.ready_ports |= {8100, 9000, 8120}
    assert fleet.poll() and fleet.all_ready()
    state = json.loads(config.state_file.read_text())
    assert [(s["name"], s["status"], s["grpc_port"]) for s in state["servers"]][1] == ("chat-large", "ready", 9001)

    world.spawned[1][2].returncode = -9  # kill -9 of chat-large (its launcher too: nobody removed its shm)
    world.ready_ports.discard(9000)
    prefix = fleet.servers[1].shm_prefix
    assert f"--shm-prefix={prefix}" in world.spawned[1][0] and prefix != fleet.servers[0].shm_prefix
    leftover = Path("/dev/shm") / f"{prefix}segment"
    leftover.write_bytes(b"x")
    runtime = Path(fleet.servers[1].runtime_dir)
    assert f"--runtime-dir={runtime}" in world.spawned[1][0]
    runtime.mkdir(parents=True)
    (runtime / "llm-health.json").write_text("{}")
    fleet.poll()
    assert fleet.servers[1].status == "dead" and not leftover.exists() and not runtime.exists()
    assert json.loads(config.state_file.read_text())["servers"][1]["status"] == "dead"
    world.now = 1.0
    fleet.poll()
    assert len(world.spawned) == 3  # backoff not over yet
    world.now = 2.5
    fleet.poll()
    assert len(world.spawned) == 4 and fleet.servers[1].status == "starting" and fleet.servers[1].restarts == 1
    world.ready_ports.add(9000)
    fleet.poll()
    assert fleet.all_ready() and json.loads(config.state_file.read_text())["servers"][1]["pid"] == 1003
    assert fleet.servers[1].shm_prefix not in (prefix, "")  # each start its own

    fleet.stop()
    assert all(p.terminated for _, _, p in world.spawned if p.returncode != -9)
    assert {s["status"] for s in json.loads(config.state_file.read_text())["servers"]} == {"stopped"}


def test_a_server_never_ready_is_stopped_after_the_timeout(config):
    world = FakeWorld()
    fleet = FleetLauncher(config, {}, spawn=world.spawn, ready=lambda h, p: False, clock=lambda: world.now)
    fleet.start()
    world.now = config.ready_timeout_s + 1
    fleet.poll()
    assert {s.status for s in fleet.servers} == {"dead"} and all(p.terminated for _, _, p in world.spawned)


def test_cuda_servers_get_their_gpus(config, monkeypatch, tmp_path):
    cuda = parse_fleet_config({"device": "cuda", "server": [{"name": "a", "model_dir": "m", "tp": 2}]}, tmp_path)
    monkeypatch.setattr(fleet_main, "query_gpus", lambda: [GpuMemory(i, 60 * GIB, 80 * GIB) for i in (0, 3)])
    world = FakeWorld()
    fleet = FleetLauncher(cuda, fleet_main.gpu_plan(cuda), spawn=world.spawn, ready=lambda h, p: True)
    fleet.start()
    assert world.spawned[0][1]["CUDA_VISIBLE_DEVICES"] == "0,3" and "--tp" in world.spawned[0][0]
    fleet.stop()


def test_run_stops_everything_when_told(config, monkeypatch):
    world = FakeWorld()
    monkeypatch.setattr(
        fleet_main,
        "FleetLauncher",
        lambda cfg, gpus: FleetLauncher(cfg, gpus, spawn=world.spawn, ready=lambda h, p: True),
    )
    stop = threading.Event()
    timer = threading.Timer(0.05, stop.set)
    timer.start()
    fleet_main.run(config, stop, poll_s=0.01)
    assert all(p.terminated for _, _, p in world.spawned) and len(world.spawned) == 3


def test_a_server_that_keeps_dying_before_ready_is_restarted_ever_later(config):
    world = FakeWorld()
    fleet = FleetLauncher(config, {}, spawn=world.spawn, ready=lambda host, port: port in world.ready_ports,
                          clock=lambda: world.now, restart_backoff_s=2.0, max_restart_backoff_s=10.0)  # fmt: skip
    fleet.start()
    world.ready_ports |= {8100, 8120}  # chat-large (port 9000) never gets ready: it dies while starting
    large, starts = fleet.servers[1], []
    for _ in range(600):  # 60 s in steps of 0.1 s; each start of chat-large dies at once
        if large.status == "starting":
            large.process.returncode = 1
        spawned = len(world.spawned)
        fleet.poll()
        if len(world.spawned) > spawned:
            starts.append(world.now)
        world.now = round(world.now + 0.1, 1)
    gaps = [round(b - a, 1) for a, b in zip(starts, starts[1:], strict=False)]
    assert starts[0] == pytest.approx(2.0, abs=0.15)  # the first restart after restart_backoff_s
    assert gaps[:3] == pytest.approx([4.1, 8.1, 10.1], abs=0.15) and all(g <= 10.2 for g in gaps), gaps
    assert [s.restarts for s in fleet.servers] == [0, len(starts), 0]
    world.ready_ports.add(9000)  # once it got ready, a later death waits restart_backoff_s again
    while large.status != "ready":
        world.now += 0.1
        fleet.poll()
    assert large.failed_starts == 0 and fleet.restart_wait(large) == 2.0
