"""Issue 13 on the GPU machine: kill -9 of the rank-0 worker, then of the llm stub, each while a
W1-like load runs (closed-loop gRPC streams). Reports requests lost, the longest stall a stream
saw, and the time until the server is ready and serving again. Run by gpu_fault_check.sh against
a server already started (run_ours.sh); writes a JSON summary to --out."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient_aio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients"))
from bench_serving import make_requests, run_request  # noqa: E402

from llm_core.serving.supervisor import stub_pids  # noqa: E402


def ready(http: str) -> bool:
    try:
        return urllib.request.urlopen(f"{http}/v2/health/ready", timeout=2).status == 200
    except OSError:
        return False


def tritonserver_pid() -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "tritonserver":
                    return int(entry.name)
            except OSError:
                pass
    raise SystemExit("no tritonserver running")


def victim(kind: str) -> int:
    """The llm stub, or the engine's rank-0 worker (the stub's first multiprocessing-spawn child)."""
    stub = stub_pids(tritonserver_pid())["llm"]
    if kind == "stub":
        return stub
    children = [int(p) for p in Path(f"/proc/{stub}/task/{stub}/children").read_text().split()]
    spawned = [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return min(spawned)


async def watch_ready(http: str, kill_at: float, stop: asyncio.Event) -> dict:
    seen_down, back = None, None
    while not stop.is_set():
        ok = await asyncio.to_thread(ready, http)
        now = time.monotonic()
        if now > kill_at and not ok and seen_down is None:
            seen_down = now - kill_at
        if seen_down is not None and ok and back is None:
            back = now - kill_at
        await asyncio.sleep(0.1)
    return {"not_ready_after_s": seen_down, "ready_again_after_s": back}


async def phase(args, kind: str) -> dict:
    rng = np.random.default_rng(args.seed)
    reqs = make_requests(args, rng)
    client = grpcclient_aio.InferenceServerClient(args.url)
    slots = asyncio.Semaphore(args.concurrency)
    results: list = []

    async def one(req):
        async with slots:
            start = time.monotonic()
            try:
                timer = await asyncio.wait_for(run_request(client, "ensemble", req), args.request_timeout)
                times = [start, *timer.chunk_times]
                results.append(("ok", max(np.diff(times)) if len(times) > 1 else 0.0, None))
            except TimeoutError:
                results.append(("error", 0.0, f"no final response within {args.request_timeout:.0f} s"))
            except Exception as exc:  # noqa: BLE001
                results.append(("error", 0.0, str(exc)[:200]))

    start = time.monotonic()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_ready(args.http, start + args.kill_after, stop))
    tasks = [asyncio.create_task(one(r)) for r in reqs]
    await asyncio.sleep(args.kill_after)
    pid = victim(kind)
    os.kill(pid, signal.SIGKILL)
    print(f"[{kind}] killed pid {pid} at +{time.monotonic() - start:.1f} s", flush=True)
    await asyncio.gather(*tasks)
    print(f"[{kind}] every request ended at +{time.monotonic() - start:.1f} s", flush=True)
    while not await asyncio.to_thread(ready, args.http) and time.monotonic() - start < args.request_timeout + 60:
        await asyncio.sleep(0.5)
    stop.set()
    health = await watcher
    await client.close()
    errors = [e for s, _, e in results if s == "error"]
    return {
        "kill": kind,
        "pid": pid,
        "requests": len(results),
        "lost": len(errors),
        "errors": sorted(set(errors))[:10],
        "longest_stream_stall_s": max((g for s, g, _ in results if s == "ok"), default=None),
        "duration_s": time.monotonic() - start,
        **health,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="127.0.0.1:8001")
    p.add_argument("--http", default="http://127.0.0.1:8000")
    p.add_argument("--num-requests", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--input-len", type=int, default=70, help="words (about 200 tokens)")
    p.add_argument("--input-len-range", type=float, default=0.8)
    p.add_argument("--output-len", type=int, default=180)
    p.add_argument("--output-len-range", type=float, default=0.8)
    p.add_argument("--kill-after", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--kills", default="worker,stub")
    p.add_argument("--request-timeout", type=float, default=60.0, help="no final response by then: lost")
    p.add_argument("--out", default="fault_check.json")
    args = p.parse_args(argv)
    # the rest of what bench_serving.make_requests reads: uniform lengths, each request runs to max_tokens
    args.length_dist, args.allow_early_stop, args.temperature = "uniform", False, None
    return args


def main() -> None:
    args = parse_args()
    summary = []
    for kind in args.kills.split(","):  # each phase written as soon as it ends (a later one may hang)
        summary.append(asyncio.run(phase(args, kind)))
        print(json.dumps(summary[-1], indent=2), flush=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
