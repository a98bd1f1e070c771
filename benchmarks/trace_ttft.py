"""Per-hop breakdown of the first token from Triton trace files (level=TIMESTAMPS)."""
import json, sys, collections, statistics
tr = []
for f in sys.argv[1:]:
    tr += json.load(open(f))
info = {}; ts = collections.defaultdict(list)
for e in tr:
    if "model_name" in e:
        info[e["id"]] = e
    for t in e.get("timestamps", []):
        ts[e["id"]].append((t["name"], t["ns"]))
kids = collections.defaultdict(list)
for i, e in info.items():
    if e.get("parent_id") is not None:
        kids[e["parent_id"]].append(i)
def first(i, name):
    v = [n for k, n in ts[i] if k == name]
    return min(v) if v else None
rows = collections.defaultdict(list)
for i, e in info.items():
    if e["model_name"] != "ensemble":
        continue
    start = first(i, "HTTP_RECV_START") or first(i, "GRPC_WAITREAD_START") or first(i, "REQUEST_START")
    send = min((n for k, n in ts[i] if k == "INFER_RESPONSE_COMPLETE" and n), default=None)
    by = collections.defaultdict(list)
    for k in kids[i]:
        by[info[k]["model_name"]].append(k)
    if not all(m in by for m in ("preprocess", "visual", "llm", "postprocess")) or send is None:
        continue
    t = {}
    p = by["preprocess"][0]; v = by["visual"][0]; l = by["llm"][0]
    pp = min(by["postprocess"], key=lambda k: first(k, "REQUEST_START"))
    t["recv->ens start"] = first(i, "REQUEST_START") - start
    t["ens start->pre start"] = first(p, "REQUEST_START") - first(i, "REQUEST_START")
    t["pre queue"] = first(p, "COMPUTE_START") - first(p, "REQUEST_START")
    t["pre compute"] = first(p, "COMPUTE_END") - first(p, "COMPUTE_START")
    t["pre end->vis start"] = first(v, "REQUEST_START") - first(p, "COMPUTE_END")
    t["vis queue"] = first(v, "COMPUTE_START") - first(v, "REQUEST_START")
    t["vis compute"] = first(v, "COMPUTE_END") - first(v, "COMPUTE_START")
    t["vis end->llm start"] = first(l, "REQUEST_START") - first(v, "COMPUTE_END")
    t["llm start->compute start"] = first(l, "COMPUTE_START") - first(l, "REQUEST_START")
    t["llm compute (submit)"] = first(l, "COMPUTE_END") - first(l, "COMPUTE_START")
    t["llm compute end->post start (first token)"] = first(pp, "REQUEST_START") - first(l, "COMPUTE_END")
    t["post queue"] = first(pp, "COMPUTE_START") - first(pp, "REQUEST_START")
    t["post compute"] = first(pp, "COMPUTE_END") - first(pp, "COMPUTE_START")
    t["post compute end->ens response"] = send - first(pp, "COMPUTE_END")
    t["TOTAL recv->first send"] = send - start
    for k, x in t.items():
        rows[k].append(x / 1e6)
n = len(rows["TOTAL recv->first send"])
print(f"{n} requests; median ms per hop")
for k, v in rows.items():
    print(f"  {k:45s} {statistics.median(v):7.3f}  (mean {statistics.mean(v):7.3f})")
