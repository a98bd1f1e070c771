"""Each client in clients/ against a live tritonserver serving the ensemble.

The server is the `triton_server` fixture of conftest.py, or an already running one when
TRITON_HTTP_URL and TRITON_GRPC_URL are set (e.g. http://127.0.0.1:8000 and 127.0.0.1:8001).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
PROMPT = "Hello, 世界 🙂! Tell me a story about a cat."


@dataclass(frozen=True)
class Urls:
    http: str  # http://host:port
    grpc: str  # host:port
    model_dir: str | None  # the served model (for the tokenizer of direct llm calls)


@pytest.fixture(scope="module")
def urls(request) -> Urls:
    if os.environ.get("TRITON_HTTP_URL") and os.environ.get("TRITON_GRPC_URL"):
        return Urls(os.environ["TRITON_HTTP_URL"], os.environ["TRITON_GRPC_URL"], os.environ.get("LLM_MODEL_DIR"))
    server = request.getfixturevalue("triton_server")
    http = server.http_url if "://" in server.http_url else "http://" + server.http_url
    return Urls(http, server.grpc_url.removeprefix("grpc://"), str(server.model_dir))


def run_client(script: str, *args: str, timeout_s: float = 180.0, env: dict | None = None):
    out = subprocess.run(
        [sys.executable, str(CLIENTS / script), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, f"{script} {args} failed:\n{out.stdout}\n{out.stderr}"
    return out


def test_grpc_cli_prints_streamed_text_equal_to_non_streamed(urls):
    args = (PROMPT, "--url", urls.grpc, "--max-tokens", "24", "--temperature", "0")
    streamed = run_client("grpc_stream.py", *args)
    whole = run_client("grpc_stream.py", *args, "--no-stream")
    assert streamed.stdout.strip() and streamed.stdout == whole.stdout
    assert "TTFT" in streamed.stderr and "tokens/s" in streamed.stderr


def test_grpc_cli_direct_llm_matches_ensemble(urls):
    args = (PROMPT, "--url", urls.grpc, "--max-tokens", "16", "--temperature", "0")
    tokenizer = ("--tokenizer", urls.model_dir) if urls.model_dir else ()
    direct = run_client("grpc_stream.py", *args, "--model", "llm", *tokenizer)
    ensemble = run_client("grpc_stream.py", *args)
    assert direct.stdout.strip() and direct.stdout == ensemble.stdout


def test_grpc_cli_with_two_images(urls, tmp_path):
    from PIL import Image

    paths = []
    for color in ("red", "blue"):
        paths += ["--image", str(tmp_path / f"{color}.png")]
        Image.new("RGB", (40, 30), color).save(paths[-1])
    out = run_client(
        "grpc_stream.py", "<image> and <image>: what differs?", "--url", urls.grpc, "--max-tokens", "8", *paths
    )
    assert out.stdout.strip()


def test_sse_streamed_text_equals_generate_text(urls):
    args = (PROMPT, "--url", urls.http, "--max-tokens", "24", "--temperature", "0")
    streamed = run_client("http_sse.py", *args)
    whole = run_client("http_sse.py", *args, "--no-stream")
    assert streamed.stdout.strip() and streamed.stdout == whole.stdout
    assert "TTFT" in streamed.stderr


def test_bench_serving_small_workload(urls, tmp_path):
    out_json = tmp_path / "bench.json"
    run_client(
        "bench_serving.py",
        *("--url", urls.grpc, "--num-requests", "8", "--concurrency", "4", "--input-len", "16"),
        *("--input-len-range", "0.5", "--output-len", "8", "--out", str(out_json)),
    )
    result = json.loads(out_json.read_text())
    assert result["completed"] == 8 and result["failed"] == 0
    assert result["total_output_tokens"] == 8 * 8  # min_tokens = max_tokens
    assert result["total_input_tokens"] >= 8 * 8
    assert result["request_throughput"] > 0 and result["output_token_throughput"] > 0
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_latency_ms"):
        row = result[key]
        assert 0 < row["p50"] <= row["p90"] <= row["p99"] < 120_000, (key, row)
    assert result["ttft_ms"]["p50"] <= result["e2e_latency_ms"]["p50"]


@pytest.mark.slow
def test_locust_30s_headless_run_has_no_failures(urls, tmp_path):
    prefix = tmp_path / "locust"
    cmd = [sys.executable, "-m", "locust", "-f", str(CLIENTS / "locustfile.py"), "--headless"]
    cmd += ["-u", "8", "-r", "4", "-t", "30s", "--csv", str(prefix), "--host", urls.http, "--only-summary"]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=150, env={**os.environ, "TRITON_GRPC_URL": urls.grpc}
    )
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}
    failures = Path(f"{prefix}_failures.csv").read_text()
    assert out.returncode == 0, f"{out.stderr[-3000:]}\n{failures}"
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0, failures
    for kind in ("grpc_stream", "http_sse"):
        assert int(rows[(kind, "generate")]["Request Count"]) > 0, kind
        assert int(rows[("TTFT", kind)]["Request Count"]) > 0, kind
        assert int(rows[("tokens/s", kind)]["Request Count"]) > 0, kind
