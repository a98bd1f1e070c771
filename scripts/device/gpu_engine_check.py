"""End-to-end engine check on a CUDA device (run by scripts/device/gpu_engine_check.sh).

1. fp32: greedy tokens of the engine (Triton kernels) equal transformers' greedy tokens for
   the tiny Llama, Qwen2 and LLaVA models (8 prompts, 32 new tokens, one continuous batch; then
   each prompt alone, decoding at batch 1).
   Then the same prompts again in an engine that prefills at most 16 tokens per step (chunked
   prefill), twice: the second pass takes its prompts from the prefix cache (hits counted).
2. bf16: last-token logits of one packed prefill, a few decode steps and a mixed step (decode
   rows plus a new prompt) are within bf16 tolerance of transformers' bf16 logits.
On CUDA both run steps from CUDA graphs (cuda_graph=True, --no-cuda-graph: eager): decode steps
whole, prefill and mixed steps piecewise; the bf16 check also compares each graph step with the
same step launched eagerly and requires that both kinds of graph were captured without falling back.
Also runs on CPU (`--device cpu`) as a dry run of the script itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from llm_core import Engine, EngineConfig, SamplingParams  # noqa: E402
from llm_core.batch import SeqInput, StepInput  # noqa: E402
from llm_core.config import EngineConfig as _Cfg  # noqa: E402
from llm_core.models import VisionEncoder, preprocess_images  # noqa: E402
from llm_core.testing.tiny_model import make_tiny_model  # noqa: E402
from llm_core.worker.model_runner import ModelRunner  # noqa: E402


def _image(seed: int):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8).numpy())


def _cases(engine: Engine, model_dir: str, device: str):
    cfg = engine.model_config
    g = torch.Generator().manual_seed(0)
    cases = []
    for i in range(8):
        n = [3, 40, 7, 25, 1, 12, 33, 5][i]
        ids = torch.randint(3, cfg.vocab_size - 8, (n,), generator=g).tolist()
        ids = [5 if t == cfg.image_token_index else t for t in ids]
        pixels = None
        if cfg.image_token_index is not None:
            num_images = 1 + i % 2
            pixels = preprocess_images([_image(10 * i + k) for k in range(num_images)], model_dir)
            for _ in range(num_images):
                ids = ids[:2] + [cfg.image_token_index] * cfg.num_image_tokens + ids[2:]
        cases.append((ids, pixels))
    return cases


CUDA_GRAPH = True


def check_fp32_greedy(arch: str, device: str, work: Path) -> dict:
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    model_dir = str(make_tiny_model(work / arch, arch))
    cls = LlavaForConditionalGeneration if arch == "llava" else AutoModelForCausalLM
    hf = cls.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    params = SamplingParams(max_tokens=32, temperature=0.0)
    with Engine(EngineConfig(model_dir=model_dir, device=device, dtype="float32", cuda_graph=CUDA_GRAPH)) as engine:
        cases = _cases(engine, model_dir, device)
        embeds = [None] * len(cases)
        if arch == "llava":
            vision = VisionEncoder.from_pretrained(model_dir, torch.device(device), torch.float32)
            embeds = [
                vision.encode(px.to(device)).reshape(-1, engine.model_config.hidden_size).cpu() for _, px in cases
            ]
        t0 = time.perf_counter()
        outs = engine.generate([c[0] for c in cases], params, image_embeds=embeds)
        elapsed = time.perf_counter() - t0
        # Each prompt alone: decode at batch 1 (the GEMV path).
        single = [
            engine.generate([ids], params, image_embeds=[e])[0] for (ids, _), e in zip(cases, embeds, strict=True)
        ]
        eos = set(engine.model_config.eos_token_ids)
    chunked_cfg = EngineConfig(
        model_dir=model_dir, device=device, dtype="float32", cuda_graph=CUDA_GRAPH, max_prefill_tokens=16
    )
    with Engine(chunked_cfg) as engine:
        chunked = engine.generate([c[0] for c in cases], params, image_embeds=embeds)
        hits_before = engine.stats().get("prefix_cache_hit_tokens_total", 0)
        cached = engine.generate([c[0] for c in cases], params, image_embeds=embeds)
        cache_hits = engine.stats().get("prefix_cache_hit_tokens_total", 0) - hits_before
    mismatches = {"plain": 0, "chunked": 0, "cached": 0, "single": 0}
    for (ids, pixels), *runs in zip(cases, outs, chunked, cached, single, strict=True):
        extra = {"pixel_values": pixels.to(device)} if pixels is not None else {}
        with torch.no_grad():
            ref = hf.generate(
                input_ids=torch.tensor([ids], device=device),
                max_new_tokens=32,
                do_sample=False,
                num_beams=1,
                pad_token_id=0,
                **extra,
            )[0, len(ids) :].tolist()
        cut = next((i + 1 for i, t in enumerate(ref) if t in eos), len(ref))
        for name, out in zip(mismatches, runs, strict=True):
            mismatches[name] += out.token_ids != ref[:cut]
    return {
        "arch": arch,
        "prompts": len(cases),
        "mismatches": sum(mismatches.values()),
        "mismatches_by_run": mismatches,
        "prefix_cache_hit_tokens_second_pass": cache_hits,
        "seconds": round(elapsed, 2),
    }


def _graph_and_eager(runner: ModelRunner, step: StepInput) -> tuple[torch.Tensor, float]:
    """(the step's logits on the CPU, their max relative difference from the same step run eagerly first; 0.0
    without graphs). The graphs store the same K/V again."""
    if not runner.use_cuda_graph:
        return runner.forward(step).float().cpu(), 0.0
    runner.use_cuda_graph = False
    eager = runner.forward(step).float().cpu()
    runner.use_cuda_graph = True
    ours = runner.forward(step).float().cpu()
    return ours, ((ours - eager).abs().max() / eager.abs().max()).item()


def check_bf16_logits(arch: str, device: str, work: Path) -> dict:
    from transformers import AutoModelForCausalLM

    model_dir = str(make_tiny_model(work / f"{arch}-bf16", arch))
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    cfg = _Cfg(model_dir=model_dir, device=device, dtype="bfloat16", max_total_tokens=4096, cuda_graph=CUDA_GRAPH)
    runner = ModelRunner(cfg, rank=0)
    runner.allocate_kv(4096)
    prompts = [[5, 9, 17, 33, 2, 8], list(range(10, 51)), [7] * 19]
    step = StepInput(is_prefill=True)
    next_slot = 0
    for row, ids in enumerate(prompts):
        step.seqs.append(SeqInput(row, 0, ids, list(range(next_slot, next_slot + len(ids))), len(ids)))
        next_slot += len(ids)
    ours, prefill_vs_eager = _graph_and_eager(runner, step)

    def rel_err(row_logits, ids) -> float:
        with torch.no_grad():
            ref = hf(torch.tensor([ids], device=device)).logits[0, -1].float().cpu()
        return (row_logits - ref).abs().max().item() / ref.abs().max().item()

    worst = max(rel_err(ours[row], ids) for row, ids in enumerate(prompts))
    # Decode steps: 3 sequences, padded to the graph batch bucket 4 on CUDA.
    seqs = [list(ids) for ids in prompts]
    decode_worst = graph_vs_eager = 0.0
    for _ in range(4):
        next_ids = ours.argmax(-1).tolist()
        step = StepInput(is_prefill=False)
        for row, ids in enumerate(seqs):
            step.seqs.append(SeqInput(row, len(ids), [next_ids[row]], [next_slot], len(prompts[row])))
            ids.append(next_ids[row])
            next_slot += 1
        ours, diff = _graph_and_eager(runner, step)
        graph_vs_eager = max(graph_vs_eager, diff)
        decode_worst = max(decode_worst, *(rel_err(ours[row], ids) for row, ids in enumerate(seqs)))
    # A mixed step: the 3 sequences decode one more token while a new prompt (row 3) is prefilled with them.
    next_ids = ours.argmax(-1).tolist()
    prompt = list(range(60, 97))
    step = StepInput(is_prefill=True, num_decode=len(seqs))
    for row, ids in enumerate(seqs):
        step.seqs.append(SeqInput(row, len(ids), [next_ids[row]], [next_slot], len(prompts[row])))
        ids.append(next_ids[row])
        next_slot += 1
    step.seqs.append(SeqInput(3, 0, prompt, list(range(next_slot, next_slot + len(prompt))), len(prompt)))
    ours, mixed_vs_eager = _graph_and_eager(runner, step)
    mixed_worst = max(rel_err(ours[row], ids) for row, ids in enumerate([*seqs, prompt]))
    graphs, pieces = runner.num_graphs()
    graphs_ok = device != "cuda" or not CUDA_GRAPH or (graphs > 0 and pieces > 0 and not runner.graph_failed)
    return {
        "arch": arch,
        "max_rel_logit_err_bf16": round(worst, 5),
        "decode_max_rel_logit_err_bf16": round(decode_worst, 5),
        "mixed_max_rel_logit_err_bf16": round(mixed_worst, 5),
        "graph_vs_eager_max_rel_diff": round(graph_vs_eager, 5),
        "prefill_graph_vs_eager_max_rel_diff": round(prefill_vs_eager, 5),
        "mixed_graph_vs_eager_max_rel_diff": round(mixed_vs_eager, 5),
        "graphs_captured": graphs,
        "prefill_graph_pieces_captured": pieces,
        "graph_failed": runner.graph_failed,
        "ok": max(worst, decode_worst, mixed_worst, graph_vs_eager, prefill_vs_eager, mixed_vs_eager) < 0.05
        and graphs_ok,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-cuda-graph", action="store_true", help="eager decode steps")
    args = ap.parse_args()
    global CUDA_GRAPH
    CUDA_GRAPH = not args.no_cuda_graph
    results = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "cuda_graph": CUDA_GRAPH,
        "checks": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for arch in ("llama", "qwen2", "llava"):
            results["checks"].append(check_fp32_greedy(arch, args.device, work))
            print(json.dumps(results["checks"][-1]), flush=True)
        for arch in ("llama", "qwen2"):
            results["checks"].append(check_bf16_logits(arch, args.device, work))
            print(json.dumps(results["checks"][-1]), flush=True)
    ok = all(c.get("mismatches", 0) == 0 and c.get("ok", True) for c in results["checks"])
    # The second pass must have come from the cache: every prompt but its last token at least.
    ok = ok and all(c.get("prefix_cache_hit_tokens_second_pass", 1) > 0 for c in results["checks"])
    results["ok"] = ok
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print("ENGINE CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
