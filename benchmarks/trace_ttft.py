"""Where a streamed ensemble request's first token goes, hop by hop, from tritonserver's trace files.

Start the server with tracing at level TIMESTAMPS (the launcher passes what follows `--` to tritonserver):

  python -m llm_core.serving.launcher -- --trace-config triton,file=/tmp/trace.json --trace-config rate=1 \\
      --trace-config level=TIMESTAMPS --trace-config count=-1 --trace-config triton,log-frequency=10

send streamed requests to `ensemble` (e.g. the anchor kit's LAT), then

  python benchmarks/trace_ttft.py /tmp/trace.json.*            (medians and means per hop)
  python benchmarks/trace_ttft.py /tmp/trace.json.* --each     (one line per request, in arrival order)

Triton writes a file every `log-frequency` traced requests. Each hop is the time between two timestamps of
the ensemble or one of its steps: the HTTP/gRPC receive, each step's queue and compute (compute = the step's
Python `execute`, with its input and output transfers), the llm step's own time until the first response
reached postprocess (the engine's prefill and the way back), postprocess of that first response.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics

STEPS = ("preprocess", "llm", "postprocess")  # a request with images also calls visual from preprocess


def load(paths: list[str]) -> tuple[dict[int, dict], dict[int, list[tuple[str, int]]]]:
    info: dict[int, dict] = {}
    stamps: dict[int, list[tuple[str, int]]] = collections.defaultdict(list)
    for path in paths:
        with open(path) as f:
            for entry in json.load(f):
                if "model_name" in entry:
                    info[entry["id"]] = entry
                for stamp in entry.get("timestamps", []):
                    if stamp["ns"]:  # streamed HTTP responses carry zero send times
                        stamps[entry["id"]].append((stamp["name"], stamp["ns"]))
    return info, stamps


def hops(info: dict[int, dict], stamps: dict[int, list[tuple[str, int]]]) -> list[tuple[int, dict[str, float]]]:
    """(arrival ns, {hop: ms}) per ensemble request that has every step and a first response."""

    def at(trace_id: int, name: str) -> int | None:
        found = [ns for n, ns in stamps[trace_id] if n == name]
        return min(found) if found else None

    children: dict[int, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for trace_id, entry in info.items():
        if entry.get("parent_id") is not None:
            children[entry["parent_id"]][entry["model_name"]].append(trace_id)
    out = []
    for trace_id, entry in info.items():
        steps = children[trace_id]
        if entry["model_name"] != "ensemble" or not all(steps.get(s) for s in STEPS):
            continue
        received = at(trace_id, "HTTP_RECV_START") or at(trace_id, "GRPC_WAITREAD_START")
        received = received or at(trace_id, "REQUEST_START")
        first_response = at(trace_id, "INFER_RESPONSE_COMPLETE")
        if received is None or first_response is None:
            continue
        pre, llm = steps["preprocess"][0], steps["llm"][0]
        post = min(steps["postprocess"], key=lambda t: at(t, "REQUEST_START"))
        ms = {
            "receive -> preprocess": at(pre, "REQUEST_START") - received,
            "preprocess queue": at(pre, "COMPUTE_START") - at(pre, "REQUEST_START"),
            "preprocess compute": at(pre, "COMPUTE_END") - at(pre, "COMPUTE_START"),
            "llm queue": at(llm, "COMPUTE_START") - at(pre, "COMPUTE_END"),
            "llm compute (the request handed to the engine)": at(llm, "COMPUTE_END") - at(llm, "COMPUTE_START"),
            "llm: engine until the first response reaches postprocess": at(post, "REQUEST_START")
            - at(llm, "COMPUTE_END"),
            "postprocess queue": at(post, "COMPUTE_START") - at(post, "REQUEST_START"),
            "postprocess compute": at(post, "COMPUTE_END") - at(post, "COMPUTE_START"),
            "-> first response": first_response - at(post, "COMPUTE_END"),
            "total: receive -> first response": first_response - received,
        }
        out.append((received, {k: v / 1e6 for k, v in ms.items()}))
    return sorted(out, key=lambda item: item[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+", help="tritonserver trace files (trace.json.0, .1, ...)")
    ap.add_argument("--each", action="store_true", help="one line per request instead of medians")
    args = ap.parse_args()
    rows = hops(*load(args.traces))
    if not rows:
        raise SystemExit("no complete ensemble request in these traces")
    if args.each:
        names = list(rows[0][1])
        print("request  " + "  ".join(f"{n.split(' ')[0][:6]:>7}" for n in names))
        print("\n".join(f"{i:7d}  " + "  ".join(f"{r[n]:7.2f}" for n in names) for i, (_, r) in enumerate(rows)))
        return
    print(f"{len(rows)} requests; ms per hop: median (mean)")
    for name in rows[0][1]:
        values = [r[name] for _, r in rows]
        print(f"  {name:58s} {statistics.median(values):8.3f}  ({statistics.mean(values):8.3f})")


if __name__ == "__main__":
    main()
