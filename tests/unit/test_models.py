"""Our Llama/Qwen2/LLaVA on the torch-ops path against transformers, fp32, on tiny random models.

transformers is imported inside the functions that use it: the tp=2 worker processes import this
module and would otherwise spend seconds importing it.
"""

from __future__ import annotations

import pytest
import torch

from llm_core.batch import ForwardBatch, KVCache
from llm_core.models import VisionEncoder, build_model, load_model_config, load_weights
from llm_core.models.rope import inv_freq_and_scaling
from llm_core.ops import torch_ops

ATOL = 1e-4
TEXT = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1,
)  # fmt: skip
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 8.0,
          "original_max_position_embeddings": 64}  # fmt: skip
VARIANTS = {
    "llama": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-rope-linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama-rope-llama3": ("llama", {"rope_scaling": LLAMA3}),
    "qwen2-gqa1": ("qwen2", {"num_key_value_heads": 4}),
}


def perturb(model: torch.nn.Module) -> None:
    # Norm weights != 1 and nonzero biases, so a wrongly loaded tensor shows in the logits.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def save_text_model(path, arch: str, **overrides):
    import transformers

    torch.manual_seed(0)
    cfg_cls = transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config
    cls = transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM
    hf = cls(cfg_cls(**{**TEXT, **overrides}, attn_implementation="eager")).eval()
    perturb(hf)
    hf.save_pretrained(path)
    return hf


class TinyRunner:
    """Builds ForwardBatches by hand: shuffled slots, one req_to_slot row per sequence."""

    def __init__(self, model, cfg, max_reqs: int = 4, max_len: int = 96, num_slots: int = 400):
        dtype = model.model.embed_tokens.weight.dtype
        self.model = model
        self.kv = KVCache.allocate(
            cfg.num_layers, num_slots, model.num_kv_heads, cfg.head_dim, max_reqs, max_len, dtype, "cpu"
        )
        self.free_slots = torch.randperm(num_slots, generator=torch.Generator().manual_seed(0)).tolist()
        self.cached: dict[int, int] = {}  # row -> tokens in the cache

    def step(self, rows, new_ids, is_prefill=True, image_embeds=None, image_positions=None):
        positions, slots, prefix_lens, seq_lens, starts = [], [], [], [], [0]
        for row, ids in zip(rows, new_ids, strict=True):
            prefix = self.cached.get(row, 0)
            new_slots = [self.free_slots.pop() for _ in ids]
            self.kv.req_to_slot[row, prefix : prefix + len(ids)] = torch.tensor(new_slots, dtype=torch.int32)
            self.cached[row] = prefix + len(ids)
            positions += range(prefix, prefix + len(ids))
            slots += new_slots
            prefix_lens.append(prefix)
            seq_lens.append(prefix + len(ids))
            starts.append(starts[-1] + len(ids))
        i32 = lambda x: torch.tensor(x, dtype=torch.int32)
        batch = ForwardBatch(
            is_prefill=is_prefill,
            input_ids=torch.tensor([t for ids in new_ids for t in ids]),
            positions=torch.tensor(positions),
            out_slots=i32(slots),
            req_rows=i32(rows),
            prefix_lens=i32(prefix_lens),
            seq_lens=i32(seq_lens),
            query_start_loc=i32(starts),
            logits_indices=torch.tensor(starts[1:]) - 1,
            max_query_len=max(len(ids) for ids in new_ids),
            max_seq_len=max(seq_lens),
            image_embeds=image_embeds,
            image_positions=image_positions,
        )
        return self.model(batch, self.kv, torch_ops)


def load_ours(path, dtype=torch.float32):
    cfg = load_model_config(path)
    model = build_model(cfg, dtype, "cpu")
    load_weights(model, path, "safetensors")
    return TinyRunner(model, cfg)


def hf_last_logits(hf, ids: list[int], **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=torch.tensor([ids]), **kwargs).logits[0, -1].float()


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def text_model(request, tmp_path_factory):
    arch, overrides = VARIANTS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    return path, save_text_model(path, arch, **overrides)


PROMPTS = [[1, 5, 9, 13, 17, 21, 25], [2, 40, 41, 42, 43, 44, 45, 46, 47, 90, 3], [7, 8, 60]]


def test_single_prefill(text_model):
    path, hf = text_model
    runner = load_ours(path)
    logits = runner.step([0], [PROMPTS[1]])
    assert logits.dtype == torch.float32 and logits.shape == (1, 97)
    torch.testing.assert_close(logits[0], hf_last_logits(hf, PROMPTS[1]), atol=ATOL, rtol=0)


def test_packed_ragged_prefill(text_model):
    path, hf = text_model
    logits = load_ours(path).step([2, 0, 1], PROMPTS)
    for i, ids in enumerate(PROMPTS):
        torch.testing.assert_close(logits[i], hf_last_logits(hf, ids), atol=ATOL, rtol=0)


def test_prefill_then_greedy_decode(text_model):
    path, hf = text_model
    runner = load_ours(path)
    seqs = [list(PROMPTS[0]), list(PROMPTS[2])]
    logits = runner.step([0, 1], seqs)
    for _ in range(5):
        for i, seq in enumerate(seqs):
            expected = hf_last_logits(hf, seq)
            torch.testing.assert_close(logits[i], expected, atol=ATOL, rtol=0)
            assert logits[i].argmax().item() == expected.argmax().item()
            seq.append(int(expected.argmax()))
        logits = runner.step([0, 1], [[seq[-1]] for seq in seqs], is_prefill=False)


def test_resumed_prefill(text_model):
    # Part of each prompt was cached by an earlier step; the rest arrives with prefix_lens > 0.
    path, hf = text_model
    runner = load_ours(path)
    runner.step([0, 1], [PROMPTS[1][:4], PROMPTS[0][:1]])
    logits = runner.step([1, 0, 2], [PROMPTS[0][1:], PROMPTS[1][4:], PROMPTS[2]])
    for i, ids in enumerate([PROMPTS[0], PROMPTS[1], PROMPTS[2]]):
        torch.testing.assert_close(logits[i], hf_last_logits(hf, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["llama-rope-linear", "llama-rope-llama3"])
def test_rope_inv_freq_matches_transformers(variant, tmp_path):
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    arch, overrides = VARIANTS[variant]
    hf_cfg = transformers.LlamaConfig(**{**TEXT, **overrides})
    hf_cfg.save_pretrained(tmp_path)
    expected, expected_scaling = ROPE_INIT_FUNCTIONS[hf_cfg.rope_parameters["rope_type"]](hf_cfg, "cpu")
    inv_freq, scaling = inv_freq_and_scaling(load_model_config(tmp_path))
    torch.testing.assert_close(inv_freq, expected, atol=0, rtol=0)
    assert scaling == expected_scaling


# ---------------------------------------------------------------- LLaVA

LLAVA_VARIANTS = {
    "default-layer-2": {"vision_feature_layer": -2, "vision_feature_select_strategy": "default"},
    "full-layers-list": {"vision_feature_layer": [-3, -1], "vision_feature_select_strategy": "full"},
}
IMAGE_TOKEN = 96


@pytest.fixture(scope="module", params=list(LLAVA_VARIANTS), ids=list(LLAVA_VARIANTS))
def llava_model(request, tmp_path_factory):
    import transformers

    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
        image_size=16, patch_size=4, projection_dim=8,
        hidden_act="gelu" if request.param.startswith("full") else "quick_gelu",
    )  # fmt: skip
    cfg = transformers.LlavaConfig(
        text_config=transformers.LlamaConfig(**TEXT).to_dict(), vision_config=vision.to_dict(),
        image_token_index=IMAGE_TOKEN, image_seq_length=16, **LLAVA_VARIANTS[request.param],
    )  # fmt: skip
    cfg._attn_implementation = "eager"
    hf = transformers.LlavaForConditionalGeneration(cfg).eval()
    perturb(hf)
    path = tmp_path_factory.mktemp("llava")
    hf.save_pretrained(path)
    return path, hf


def hf_image_features(hf, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = hf.model.get_image_features(pixel_values=pixels)
    features = getattr(out, "pooler_output", out)
    return torch.stack(list(features)) if isinstance(features, (list, tuple)) else features


def test_vision_encoder_matches_transformers(llava_model):
    path, hf = llava_model
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    vision = VisionEncoder.from_pretrained(path, torch.device("cpu"), torch.float32)
    embeds = vision.encode(pixels)
    cfg = load_model_config(path)
    assert embeds.shape == (2, cfg.num_image_tokens, cfg.hidden_size)
    torch.testing.assert_close(embeds, hf_image_features(hf, pixels), atol=ATOL, rtol=0)


@pytest.mark.parametrize("num_images", [1, 2])
def test_llava_logits_match_transformers(llava_model, num_images):
    path, hf = llava_model
    cfg = load_model_config(path)
    pixels = torch.randn(num_images, 3, 16, 16, generator=torch.Generator().manual_seed(num_images))
    ids = [1, 5]
    for _ in range(num_images):
        ids += [IMAGE_TOKEN] * cfg.num_image_tokens + [30, 31]
    embeds = VisionEncoder.from_pretrained(path, "cpu", torch.float32).encode(pixels)
    positions = torch.tensor([i for i, t in enumerate(ids) if t == IMAGE_TOKEN])
    runner = load_ours(path)
    logits = runner.step([0], [ids], image_embeds=embeds.reshape(-1, cfg.hidden_size), image_positions=positions)
    seq = list(ids)
    for _ in range(3):
        expected = hf_last_logits(hf, seq, pixel_values=pixels)
        torch.testing.assert_close(logits[0], expected, atol=ATOL, rtol=0)
        seq.append(int(expected.argmax()))
        logits = runner.step([0], [[seq[-1]]], is_prefill=False)


# ---------------------------------------------------------------- tensor parallel (gloo, 2 processes)

TP_VARIANTS = {
    "llama-kv-replicated-tied": ("llama", {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "qwen2": ("qwen2", {}),
}


def run_greedy(model_dir, tp_rank=0, tp_size=1) -> torch.Tensor:
    # Packed prefill of two prompts, then 3 greedy decode steps: -> logits [4, 2, vocab]
    cfg = load_model_config(model_dir)
    model = build_model(cfg, torch.float32, "cpu", tp_rank=tp_rank, tp_size=tp_size)
    load_weights(model, model_dir, "safetensors")
    runner = TinyRunner(model, cfg)
    steps = [runner.step([0, 1], [PROMPTS[0], PROMPTS[1]])]
    for _ in range(3):
        tokens = steps[-1].argmax(-1).tolist()
        steps.append(runner.step([0, 1], [[t] for t in tokens], is_prefill=False))
    return torch.stack(steps)


def tp_worker(rank: int, init_file: str, model_dirs: list[str], out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = [run_greedy(d, tp_rank=rank, tp_size=2) for d in model_dirs]
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def test_tp2_matches_tp1(tmp_path):
    dirs = []
    for name, (arch, overrides) in TP_VARIANTS.items():
        save_text_model(tmp_path / name, arch, **overrides)
        dirs.append(str(tmp_path / name))
    out_file = str(tmp_path / "tp2.pt")
    torch.multiprocessing.spawn(tp_worker, args=(str(tmp_path / "init"), dirs, out_file), nprocs=2)
    for model_dir, tp2 in zip(dirs, torch.load(out_file), strict=True):
        tp1 = run_greedy(model_dir)
        torch.testing.assert_close(tp2, tp1, atol=ATOL, rtol=0)
        assert tp2.argmax(-1).tolist() == tp1.argmax(-1).tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("load_format", ["safetensors", "dummy"])
def test_half_precision_and_dummy_run(tmp_path, dtype, load_format):
    save_text_model(tmp_path, "llama")
    cfg = load_model_config(tmp_path)
    model = build_model(cfg, dtype, "cpu")
    load_weights(model, tmp_path, load_format)
    assert all(p.dtype == dtype for p in model.parameters())
    runner = TinyRunner(model, cfg)
    logits = runner.step([0, 1], [PROMPTS[0], PROMPTS[2]])
    logits = runner.step([0, 1], logits.argmax(-1)[:, None].tolist(), is_prefill=False)
    assert logits.dtype == torch.float32 and logits.shape == (2, 97) and torch.isfinite(logits).all()


def test_linear_layers_go_through_ops(tmp_path):
    # Every projection of the text model is an ops call (the GPU op set puts batch-1 decode on our GEMV):
    # per layer qkv, o and down through ops.linear and gate_up through ops.linear_silu_and_mul, plus lm_head.
    from types import SimpleNamespace

    save_text_model(tmp_path, "llama")
    runner = load_ours(tmp_path)
    calls = []

    def recorded(name):
        def call(x, weight, bias=None):
            calls.append((name, tuple(weight.shape)))
            return getattr(torch_ops, name)(x, weight, bias)

        return call

    ops = SimpleNamespace(**{n: getattr(torch_ops, n) for n in dir(torch_ops) if not n.startswith("_")})
    ops.linear, ops.linear_silu_and_mul = recorded("linear"), recorded("linear_silu_and_mul")
    expected = runner.step([0], [PROMPTS[0]])
    runner.cached.clear()
    model, runner.model = runner.model, lambda batch, kv, _ops: model(batch, kv, ops)
    torch.testing.assert_close(runner.step([0], [PROMPTS[0]]), expected, atol=0, rtol=0)
    hidden, inter, q, kv = TEXT["hidden_size"], TEXT["intermediate_size"], 4 * 8, 2 * 8
    per_layer = [
        ("linear", (q + 2 * kv, hidden)),
        ("linear", (hidden, q)),
        ("linear_silu_and_mul", (2 * inter, hidden)),
        ("linear", (hidden, inter)),
    ]
    assert calls == per_layer * TEXT["num_hidden_layers"] + [("linear", (TEXT["vocab_size"], hidden))]
