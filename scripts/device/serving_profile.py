"""Where a running server's CPU time goes under load: CPU seconds per process, and py-spy profiles.

Waits until a process whose command line contains `--wait-for` runs (the load generator), lets it run
`--delay` seconds, then over `--duration` seconds: CPU seconds of each of the server's processes
(tritonserver, each Python stub, the engine workers, the load generator) from /proc; where the requests'
time goes on the server over the same window, from two scrapes of Triton's metrics (`--metrics`): each
model's mean request, queue and compute time, and the llm step's own time to first token (from the request
reaching llm to its first token); and, when py-spy is installed, a sampled profile of the llm stub, engine
rank 0 and postprocess (each thread's hottest frames, and the share of samples that held the GIL). Writes
`<out>/profile.json` and `<out>/profile.txt`.

  python3 scripts/device/serving_profile.py --wait-for bench_driver.py --out $OUT/profile &
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
STUBS = ("llm", "preprocess", "postprocess", "visual", "embedding", "engine_health")


def processes(wait_for: str) -> dict[int, dict]:
    """pid -> {name, ppid, cpu_s} for the server's processes and the load generator."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = None
        if "bin/tritonserver" in cmd:
            name = "tritonserver"
        elif "triton_python_backend_stub" in cmd:
            name = next((f"stub:{s}" for s in STUBS if f"/{s}/1/model.py" in cmd), "stub:?")
        elif "spawn_main" in cmd:
            name = "engine-worker"
        elif wait_for in cmd and "serving_profile" not in cmd:
            name = "load"
        if name:
            found[int(entry)] = {"name": name, "ppid": int(stat[1]), "cpu_s": (int(stat[11]) + int(stat[12])) / HZ}
    return found


# Triton's per-model counters (microseconds, summed over requests) and our llm histograms (seconds).
_COUNTERS = ("nv_inference_request_success", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
             "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
             "nv_inference_compute_output_duration_us")  # fmt: skip
_HISTOGRAMS = ("llm_time_to_first_token_seconds", "llm_inter_token_latency_seconds")
# The engine's own counters (seconds and counts over the window) and gauges (sampled through the window).
_ENGINE = ("llm_engine_steps_total", "llm_generation_tokens_total", "llm_prompt_tokens_total",
           "llm_engine_step_seconds_total", "llm_engine_gpu_seconds_total", "llm_engine_host_seconds_total",
           "llm_engine_wait_seconds_total", "llm_engine_idle_seconds_total")  # fmt: skip
_GAUGES = ("llm_requests_running", "llm_requests_waiting", "llm_kv_slots_used")


def scrape(url: str) -> dict[str, float]:
    """The series above from one scrape of the metrics endpoint: `name{model}` or `name_sum` / `name_count`."""
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        if name in _COUNTERS:
            model = labels.split('model="', 1)[1].split('"', 1)[0] if 'model="' in labels else "?"
            values[f"{name}{{{model}}}"] = float(value)
        elif name in _ENGINE or name in _GAUGES or name.removesuffix("_sum").removesuffix("_count") in _HISTOGRAMS:
            values[name] = values.get(name, 0.0) + float(value)
    return values


def serving_breakdown(before: dict[str, float], after: dict[str, float]) -> dict:
    """Per model: requests and mean request / queue / compute ms over the window; the llm histograms' means."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    models = sorted({k.split("{")[1].rstrip("}") for k in delta if k.startswith("nv_inference_request_success")})
    out: dict = {"models": {}}
    for model in models:
        n = delta.get(f"nv_inference_request_success{{{model}}}", 0.0)
        if n <= 0:
            continue
        row = {"requests": int(n)}
        for key in _COUNTERS[1:]:
            short = key.removeprefix("nv_inference_").removesuffix("_duration_us")
            row[f"{short}_ms"] = round(delta.get(f"{key}{{{model}}}", 0.0) / n / 1e3, 3)
        out["models"][model] = row
    for name in _HISTOGRAMS:
        count = delta.get(f"{name}_count", 0.0)
        if count > 0:
            out[name] = {"count": int(count), "mean_ms": round(delta[f"{name}_sum"] / count * 1e3, 3)}
    steps = delta.get("llm_engine_steps_total", 0.0)
    if steps > 0:  # the engine loop over the window: tokens per step, and where a step's wall time went
        out["engine"] = {"steps": int(steps)}
        for name in _ENGINE[1:3]:
            key = name.removeprefix("llm_").removesuffix("_total") + "_per_step"
            out["engine"][key] = round(delta.get(name, 0.0) / steps, 2)
        for name in _ENGINE[3:]:
            out["engine"][name.removeprefix("llm_engine_").removesuffix("_seconds_total") + "_ms_per_step"] = round(
                delta.get(name, 0.0) / steps * 1e3, 3
            )
    return out


def sample_gauges(url: str, seconds: float, every: float = 0.25) -> dict[str, float]:
    """The engine's gauges (running and waiting requests, KV slots in use) averaged over `seconds`."""
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        values = {g: v for g, v in scrape(url).items() if g in _GAUGES}
        if values:
            samples.append(values)
        time.sleep(every)
    return {g: round(sum(s.get(g, 0.0) for s in samples) / len(samples), 1) for g in _GAUGES} if samples else {}


def summarize_raw(path: Path, top: int = 25) -> dict:
    """py-spy's raw (collapsed) output -> samples per thread and the top inclusive frames."""
    threads: collections.Counter = collections.Counter()
    frames: collections.Counter = collections.Counter()  # inclusive, outside threading.py
    leaves: collections.Counter = collections.Counter()  # the innermost frame
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        thread = parts[0].split(":")[-1].strip()
        threads[thread] += int(count)
        leaves[f"{thread} | {parts[-1]}"] += int(count)
        for frame in set(parts[1:]):
            if "threading.py" not in frame:
                frames[f"{thread} | {frame}"] += int(count)
    return {
        "threads": dict(threads.most_common()),
        "top_frames": frames.most_common(top),
        "top_leaves": leaves.most_common(top // 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wait-for", default="bench_driver.py")
    ap.add_argument("--delay", type=float, default=6.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--metrics", default="http://127.0.0.1:8002/metrics", help="Triton's metrics endpoint")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.timeout
    while not any(p["name"] == "load" for p in processes(args.wait_for).values()):
        if time.monotonic() > deadline:
            return
        time.sleep(0.5)
    time.sleep(args.delay)
    before, t0, metrics_before = processes(args.wait_for), time.monotonic(), scrape(args.metrics)
    stub_pids = {p["name"]: pid for pid, p in before.items() if p["name"].startswith("stub:")}
    targets = {"llm": stub_pids.get("stub:llm"), "postprocess": stub_pids.get("stub:postprocess")}
    targets["rank0"] = next(
        (pid for pid, p in before.items() if p["name"] == "engine-worker" and p["ppid"] == targets["llm"]), None
    )
    spies = {}
    py_spy = shutil.which("py-spy")
    for label, pid in targets.items():
        if py_spy and pid:
            for mode in ("all", "gil"):
                cmd = [py_spy, "record", "--pid", str(pid), "-d", str(int(args.duration)), "-r", "200", "-f", "raw"]
                cmd += ["--threads", "--nonblocking", "-o", str(out / f"{label}_{mode}.raw")]
                cmd += ["--gil"] if mode == "gil" else ["--idle"]
                spies[(label, mode)] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    gauges = sample_gauges(args.metrics, args.duration)
    after, elapsed, metrics_after = processes(args.wait_for), time.monotonic() - t0, scrape(args.metrics)
    cpu = sorted(
        ((after[pid]["cpu_s"] - p["cpu_s"]) / elapsed, p["name"], pid) for pid, p in before.items() if pid in after
    )
    result = {
        "elapsed_s": elapsed,
        "cores_busy": [{"name": n, "pid": pid, "cores": round(c, 3)} for c, n, pid in cpu[::-1]],
        "serving": serving_breakdown(metrics_before, metrics_after) | {"gauges_mean": gauges},
    }
    for (label, mode), proc in spies.items():
        _, err = proc.communicate(timeout=args.duration + 60)
        raw = out / f"{label}_{mode}.raw"
        result[f"pyspy_{label}_{mode}"] = summarize_raw(raw) if raw.exists() else {"error": err.decode()[-400:]}
    (out / "profile.json").write_text(json.dumps(result, indent=1))
    lines = [f"over {elapsed:.1f} s: cores busy per process"]
    lines += [f"  {r['cores']:6.2f}  {r['name']} ({r['pid']})" for r in result["cores_busy"] if r["cores"] > 0.01]
    serving = result["serving"]
    lines.append("per model (Triton's metrics): requests, mean ms of request / queue / compute in,infer,out")
    for model, row in serving["models"].items():
        lines.append(
            f"  {model:12s} {row['requests']:7d}  {row['request_ms']:8.2f} / {row['queue_ms']:7.2f} / "
            f"{row['compute_input_ms']:.2f},{row['compute_infer_ms']:.2f},{row['compute_output_ms']:.2f}"
        )
    for name in _HISTOGRAMS:
        if name in serving:
            lines.append(f"  {name}: mean {serving[name]['mean_ms']:.2f} ms over {serving[name]['count']}")
    lines.append(f"  engine: {serving.get('engine')}")
    lines.append(f"  gauges (mean over the window): {serving['gauges_mean']}")
    for key, value in result.items():
        if key.startswith("pyspy_"):
            lines.append(f"== {key}: {value.get('threads', value)}")
            lines += [f"  {c:6d} {f[:150]}" for f, c in value.get("top_frames", [])]
            lines += [f"  {c:6d} leaf {f[:150]}" for f, c in value.get("top_leaves", [])]
    (out / "profile.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
