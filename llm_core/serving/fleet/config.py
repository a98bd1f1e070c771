"""fleet.toml: the servers of a fleet (README "A fleet of servers" has an example).

Top-level keys: `state_file`, `host`, `device` ("cpu" | "cuda"), `min_free_gib` (a GPU with less free memory
counts as in use), `restart` (restart a server that dies), `ready_timeout_s`, `base_port`. Each
`[[server]]`: `name`, `kind` ("chat" | "embedding"), `model_dir`, optional `model` (the name clients see;
default `name`), `size`, `tp`, `port` (HTTP; gRPC = port + 1, metrics = port + 2), `device`, `args` (more
launcher flags).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

KINDS = ("chat", "embedding")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    kind: str
    model_dir: str
    http_port: int
    model: str = ""
    size: str = ""
    tp: int = 1
    device: str = "cpu"
    args: tuple[str, ...] = ()

    @property
    def grpc_port(self) -> int:
        return self.http_port + 1

    @property
    def metrics_port(self) -> int:
        return self.http_port + 2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"server {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.device not in DEVICES:
            raise ValueError(f"server {self.name!r}: device must be one of {DEVICES}, got {self.device!r}")
        if not isinstance(self.tp, int) or self.tp < 1:
            raise ValueError(f"server {self.name!r}: tp must be an int >= 1, got {self.tp!r}")
        if not 0 < self.http_port < 65533:
            raise ValueError(f"server {self.name!r}: port {self.http_port} out of range")
        if not self.model:
            object.__setattr__(self, "model", self.name)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    servers: tuple[ServerSpec, ...]
    state_file: Path = Path("fleet_state.json")
    host: str = "127.0.0.1"
    min_free_gib: float = 8.0
    restart: bool = True
    ready_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("fleet config: no [[server]] entries")
        names = [s.name for s in self.servers]
        if len(set(names)) != len(names):
            raise ValueError(f"fleet config: server names must be distinct, got {names}")
        ports = [p for s in self.servers for p in (s.http_port, s.grpc_port, s.metrics_port)]
        if len(set(ports)) != len(ports):
            raise ValueError("fleet config: servers' ports overlap (each takes port, port + 1, port + 2)")


_SERVER_KEYS = {"name", "kind", "model_dir", "model", "size", "tp", "port", "device", "args"}
_TOP_KEYS = {"state_file", "host", "device", "min_free_gib", "restart", "ready_timeout_s", "base_port", "server"}


def parse_fleet_config(data: dict, base_dir: Path = Path(".")) -> FleetConfig:
    if unknown := set(data) - _TOP_KEYS:
        raise ValueError(f"fleet config: unknown keys {sorted(unknown)}")
    device = data.get("device", "cpu")
    base_port = int(data.get("base_port", 8100))
    servers = []
    for i, entry in enumerate(data.get("server", [])):
        if unknown := set(entry) - _SERVER_KEYS:
            raise ValueError(f"fleet config: server {i}: unknown keys {sorted(unknown)}")
        if "name" not in entry or "model_dir" not in entry:
            raise ValueError(f"fleet config: server {i} needs `name` and `model_dir`")
        servers.append(
            ServerSpec(
                name=entry["name"],
                kind=entry.get("kind", "chat"),
                model_dir=str(entry["model_dir"]),
                http_port=int(entry.get("port", base_port + 10 * i)),
                model=entry.get("model", ""),
                size=str(entry.get("size", "")),
                tp=entry.get("tp", 1),
                device=entry.get("device", device),
                args=tuple(str(a) for a in entry.get("args", ())),
            )  # fmt: skip
        )
    state_file = Path(data.get("state_file", "fleet_state.json"))
    return FleetConfig(
        servers=tuple(servers),
        state_file=state_file if state_file.is_absolute() else base_dir / state_file,
        host=data.get("host", "127.0.0.1"),
        min_free_gib=float(data.get("min_free_gib", 8.0)),
        restart=bool(data.get("restart", True)),
        ready_timeout_s=float(data.get("ready_timeout_s", 600.0)),
    )


def load_fleet_config(path: str | Path) -> FleetConfig:
    path = Path(path)
    with path.open("rb") as f:
        return parse_fleet_config(tomllib.load(f), path.parent)
