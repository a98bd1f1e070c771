"""Serving benchmark: a synthetic workload over gRPC streaming, at a fixed concurrency and/or
a Poisson request rate; prints throughput and TTFT / ITL / TPOT / latency percentiles.

    python clients/bench_serving.py --num-requests 200 --concurrency 16 --input-len 256 --output-len 64
    python clients/bench_serving.py --num-requests 200 --request-rate 4 --concurrency 0 --out result.json
    python clients/bench_serving.py --workload W1 --max-len 2048     (the anchor kit's W1 shape; see below)

Prompts are random English words (`--input-len` words, spread uniformly by `--input-len-range`);
the server's token counts are what is reported. Each request asks for `--output-len` tokens
(same spread) and, unless `--allow-early-stop`, sets min_tokens to the same value so that every
request generates exactly that many. `--length-dist lognormal` draws both lengths from lognormal
distributions with those means (sigma `--length-sigma`, clipped to 4..`--max-len`), the
ShareGPT-like shape of `--workload W1`: 1000 requests, 256 at a time, means 200 -> 180, sigma 0.8
(`--workload W2`: 500 requests of 1024 -> 128, 128 at a time). A preset also takes the kit's seed (1234):
W1's lengths are then the kit's own draws in the kit's order (its longest request, 1,842 tokens, is
request 840 from 0, which sets W1's duration), so its figure compares with the kit's; other seeds draw
other W1s. A progress bar shows completed requests and output tokens/s while it runs. TTFT is measured
from the moment a request is sent (after it gets a concurrency slot). ITL: the gap between chunks, split
evenly over the tokens of a chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

import numpy as np
import tritonclient.grpc.aio as grpcclient_aio
from common import GenerateRequest, RequestTimer, chunk_from_grpc, grpc_inputs
from tqdm import tqdm

WORDS = (
    "the model serves tokens from a stream of requests while the router batches prefill and decode "
    "work across many users each waiting for text about weather history music science travel food "
    "code design memory cache kernel latency throughput river mountain city garden window light"
).split()


# --workload presets: the anchor kit's closed-loop workloads (../shared/anchor/bench_driver.py), with its seed.
KIT_SEED = 1234
WORKLOADS = {
    "W1": dict(
        num_requests=1000, concurrency=256, input_len=200, output_len=180, length_dist="lognormal", seed=KIT_SEED
    ),
    "W2": dict(num_requests=500, concurrency=128, input_len=1024, output_len=128, length_dist="uniform", seed=KIT_SEED),
}


def make_requests(args: argparse.Namespace, rng: np.random.Generator) -> list[GenerateRequest]:
    def lengths(mean: int, spread: float) -> np.ndarray:
        if args.length_dist == "lognormal":
            mu = np.log(mean) - args.length_sigma**2 / 2.0  # so that the mean is `mean`
            draws = rng.lognormal(mu, args.length_sigma, size=args.num_requests)
            return np.clip(np.round(draws), min(4, args.max_len), args.max_len).astype(int)
        low, high = max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread)))
        return rng.integers(low, high + 1, size=args.num_requests)

    requests = []
    for input_len, output_len in zip(
        lengths(args.input_len, args.input_len_range), lengths(args.output_len, args.output_len_range), strict=True
    ):
        prompt = " ".join(rng.choice(WORDS, size=int(input_len)))
        sampling: dict[str, float | int] = {} if args.allow_early_stop else {"min_tokens": int(output_len)}
        if args.temperature is not None:
            sampling["temperature"] = args.temperature
        requests.append(GenerateRequest(prompt=prompt, max_tokens=int(output_len), sampling=sampling))
    return requests


async def run_request(client, model: str, req: GenerateRequest) -> RequestTimer:
    """One request on its own bidirectional stream; the server closes it after the last response."""

    async def one_request():
        yield {"model_name": model, "inputs": grpc_inputs(req), "request_id": uuid.uuid4().hex}

    timer = RequestTimer()
    async for result, error in client.stream_infer(one_request()):
        if error is not None:
            raise error
        timer.add(chunk_from_grpc(result))
    if timer.finish_reason == "error" or not timer.chunk_times:
        raise RuntimeError(f"request ended with finish_reason={timer.finish_reason!r} after {timer.text!r}")
    return timer


async def run_workload(args: argparse.Namespace, requests: list[GenerateRequest], rng: np.random.Generator):
    """Sends `requests` at the requested rate, at most `concurrency` at a time; returns results and seconds."""
    client = grpcclient_aio.InferenceServerClient(args.url)
    slots = asyncio.Semaphore(args.concurrency if args.concurrency > 0 else len(requests))

    progress = tqdm(total=len(requests), unit="req", file=sys.stderr, disable=args.no_progress)
    tokens = 0

    async def limited(req: GenerateRequest) -> RequestTimer | Exception:
        nonlocal tokens
        async with slots:
            try:
                timer = await asyncio.wait_for(run_request(client, args.model, req), args.request_timeout)
                tokens += timer.num_output_tokens
                return timer
            except TimeoutError:  # a server that stopped answering must not hang the benchmark
                return TimeoutError(f"no final response within --request-timeout {args.request_timeout:g} s")
            except Exception as exc:  # counted as a failed request
                return exc
            finally:
                progress.update(1)
                progress.set_postfix_str(f"{tokens / max(progress.format_dict['elapsed'], 1e-9):.0f} out tok/s")

    try:
        if args.warmup:
            print(f"warm-up: {args.warmup} request(s) one by one ...", file=sys.stderr, flush=True)
        for req in requests[: args.warmup]:
            await asyncio.wait_for(run_request(client, args.model, req), args.request_timeout)
        print(f"running {len(requests)} requests ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        tasks = []
        for req in requests:
            tasks.append(asyncio.create_task(limited(req)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.exponential(1.0 / args.request_rate))  # Poisson arrivals
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - start
    finally:
        progress.close()
        await client.close()


def percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    p50, p90, p99 = np.percentile(values_ms, [50, 90, 99])
    return {"mean": float(np.mean(values_ms)), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def summarize(results: list, duration_s: float) -> dict:
    done = [r for r in results if isinstance(r, RequestTimer)]
    errors = [f"{type(r).__name__}: {r}" for r in results if not isinstance(r, RequestTimer)]
    num_output = sum(t.num_output_tokens for t in done)
    num_input = sum(t.num_input_tokens or 0 for t in done)
    tpots = [(t.latency - t.ttft) / (t.num_output_tokens - 1) * 1e3 for t in done if t.num_output_tokens > 1]
    return {
        "num_requests": len(results),
        "completed": len(done),
        "failed": len(errors),
        "duration_s": duration_s,
        "request_throughput": len(done) / duration_s,
        "output_token_throughput": num_output / duration_s,
        "total_token_throughput": (num_input + num_output) / duration_s,
        "total_input_tokens": num_input,
        "total_output_tokens": num_output,
        "ttft_ms": percentiles([t.ttft * 1e3 for t in done]),
        "itl_ms": percentiles([gap * 1e3 for t in done for gap in t.itls()]),
        "tpot_ms": percentiles(tpots),
        "e2e_latency_ms": percentiles([t.latency * 1e3 for t in done]),
        "errors": errors[:10],
    }


def print_summary(summary: dict) -> None:
    print(f"requests: {summary['completed']} completed, {summary['failed']} failed in {summary['duration_s']:.2f} s")
    print(f"request throughput:      {summary['request_throughput']:.2f} req/s")
    print(f"output token throughput: {summary['output_token_throughput']:.1f} tokens/s")
    print(f"total token throughput:  {summary['total_token_throughput']:.1f} tokens/s")
    print(f"{'ms':16}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}")
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_latency_ms"):
        row = summary[key]
        print(f"{key[:-3]:16}" + "".join(f"{row[p]:10.1f}" for p in ("mean", "p50", "p90", "p99")))
    for error in summary["errors"]:
        print("error:", error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="localhost:8001", help="gRPC address host:port")
    parser.add_argument("--model", default="ensemble")
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8, help="most requests in flight; 0 = no limit")
    parser.add_argument("--request-rate", type=float, default=float("inf"), help="Poisson arrivals, req/s")
    parser.add_argument("--input-len", type=int, default=128, help="mean prompt length in words")
    parser.add_argument("--input-len-range", type=float, default=0.0, help="uniform spread, fraction of the mean")
    parser.add_argument("--output-len", type=int, default=64, help="mean max_tokens")
    parser.add_argument("--output-len-range", type=float, default=0.0)
    parser.add_argument("--allow-early-stop", action="store_true", help="do not set min_tokens = max_tokens")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=1, help="requests sent one by one before timing")
    parser.add_argument("--length-dist", choices=["uniform", "lognormal"], default="uniform")
    parser.add_argument("--length-sigma", type=float, default=0.8, help="sigma of the lognormal lengths")
    parser.add_argument("--max-len", type=int, default=2048, help="lognormal lengths are clipped to 4..this")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), help="a preset of the flags above (they still win)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--request-timeout", type=float, default=600.0, help="seconds before a request counts as failed"
    )
    parser.add_argument("--seed", type=int, default=0, help=f"length and word draws (--workload: {KIT_SEED})")
    parser.add_argument("--out", help="write the summary and settings as JSON here")
    args = parser.parse_args(argv)
    if args.workload:  # the preset's values as defaults: flags given on the command line still win
        parser.set_defaults(**WORKLOADS[args.workload])
        args = parser.parse_args(argv)
    if args.num_requests < 1 or not 0 <= args.input_len_range < 1 or not 0 <= args.output_len_range < 1:
        parser.error("need --num-requests >= 1 and length ranges in [0, 1)")

    rng = np.random.default_rng(args.seed)
    results, duration_s = asyncio.run(run_workload(args, make_requests(args, rng), rng))
    summary = summarize(results, duration_s)
    print_summary(summary)
    if args.out:
        with open(args.out, "w") as f:
            settings = {**vars(args), "request_rate": None if args.request_rate == float("inf") else args.request_rate}
            json.dump({"settings": settings, **summary}, f, indent=2)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
