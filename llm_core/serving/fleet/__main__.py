"""`python -m llm_core.serving.fleet fleet.toml`: start the fleet, keep it running until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from llm_core.serving.fleet.config import FleetConfig, load_fleet_config
from llm_core.serving.fleet.gpus import assign_gpus, query_gpus
from llm_core.serving.fleet.launcher import FleetLauncher

log = logging.getLogger("llm_core.fleet")


def gpu_plan(config: FleetConfig) -> dict[str, list[int]]:
    needs = [(s.name, s.tp) for s in config.servers if s.device == "cuda"]
    return assign_gpus(needs, query_gpus(), config.min_free_gib) if needs else {}


def run(config: FleetConfig, stop: threading.Event, poll_s: float = 1.0) -> None:
    fleet = FleetLauncher(config, gpu_plan(config))
    fleet.start()
    announced = False
    try:
        while not stop.wait(poll_s):
            fleet.poll()
            if fleet.all_ready() and not announced:
                announced = True
                log.info("fleet: all %d servers ready; state in %s", len(fleet.servers), config.state_file)
    finally:
        fleet.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="fleet.toml")
    parser.add_argument("--poll-s", type=float, default=1.0, help="seconds between health checks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[fleet] %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(load_fleet_config(args.config), stop, args.poll_s)


if __name__ == "__main__":
    main()
