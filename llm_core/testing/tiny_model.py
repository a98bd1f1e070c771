"""Deterministic tiny Hugging Face model directories (tests and the default model).

`make_tiny_model(out_dir, arch, tokenizer, seed, **overrides)` writes a complete HF directory
that loads in transformers' own classes: config.json, generation_config.json, safetensors
weights (one file, or `shards=N` files plus an index), tokenizer.json, tokenizer_config.json,
special_tokens_map.json, and for LLaVA preprocessor_config.json + processor_config.json.

Invariants:
- Same arguments give byte-identical files (fixed seeds, sorted keys, no timestamps). The
  tokenizer does not depend on `seed`; only the weights do.
- Every tokenizer (tiny_tokenizer.py) has exactly `VOCAB_SIZE` (1024) tokens, special tokens included.
- Weights are scaled so that greedy decoding is well separated (top-1 minus top-2 logit gap
  mostly far above float reordering noise) and not degenerate (visits many tokens).
- Checkpoint keys follow the hub layout: `model.*`/`lm_head.*` for causal LMs, and for LLaVA
  `language_model.model.*`, `language_model.lm_head.*`, `vision_tower.vision_model.*`,
  `multi_modal_projector.*` (as llava-hf/llava-1.5-7b-hf ships them).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from llm_core.testing.tiny_tokenizer import (
    IMAGE_TOKEN,
    VOCAB_SIZE,
    TokenizerStyle,
    build_tokenizer_files,
    dumps,
    tokenizer_style,
)

LM_HEAD_STD = 0.6  # logits ~ N(0, (0.6 * sqrt(hidden))^2): std ~4.8 at hidden 64
ARCHS = ("llama", "qwen2", "llava")
TOKENIZERS = ("bpe", "sp")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

TEXT_DEFAULTS = {
    "vocab_size": None,  # None: the tokenizer's size; larger values pad the embedding rows
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
}
VISION_DEFAULTS = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "num_channels": 3,
}
LLAVA_DEFAULTS = {
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def make_tiny_model(out_dir: str | Path, arch: str, tokenizer: str = "bpe", seed: int = 0, **overrides) -> Path:
    """Write a tiny HF model directory and return its path.

    overrides: any key of TEXT_DEFAULTS (e.g. `tie_word_embeddings=True`,
    `rope_scaling={"rope_type": "llama3", ...}`), for LLaVA any key of LLAVA_DEFAULTS and
    `vision_config={...}` (merged into VISION_DEFAULTS), plus `shards` (int, default 1) and
    `dtype` ("float32" | "bfloat16" | "float16", default "float32").
    """
    if arch not in ARCHS or tokenizer not in TOKENIZERS:
        raise ValueError(f"arch must be in {ARCHS} and tokenizer in {TOKENIZERS}, got {arch}/{tokenizer}")
    shards = int(overrides.pop("shards", 1))
    dtype = overrides.pop("dtype", "float32")
    if dtype not in DTYPES or shards < 1:
        raise ValueError(f"dtype must be in {tuple(DTYPES)} and shards >= 1, got {dtype}, {shards}")
    text, vision, llava = _split_overrides(arch, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    style = tokenizer_style(arch, tokenizer)
    files, ids = build_tokenizer_files(style, text["max_position_embeddings"])
    text["vocab_size"] = text["vocab_size"] or VOCAB_SIZE
    if text["vocab_size"] < VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= the tokenizer's {VOCAB_SIZE}")
    config = _model_config(arch, style, ids, text, vision, llava, dtype)
    files["config.json"] = dumps(config)
    files["generation_config.json"] = dumps(_generation_config(style, ids))
    if arch == "llava":
        files.update(_llava_processor_files(vision, llava))
    for name, content in files.items():
        (out / name).write_text(content, encoding="utf-8")

    spec = _weight_spec(arch, text, vision)
    tensors = {name: _random_tensor(seed, name, *init).to(DTYPES[dtype]) for name, init in spec.items()}
    _save_weights(out, tensors, shards)
    return out


def _split_overrides(arch: str, overrides: dict) -> tuple[dict, dict, dict]:
    text, vision, llava = dict(TEXT_DEFAULTS), dict(VISION_DEFAULTS), dict(LLAVA_DEFAULTS)
    for key, value in overrides.items():
        if key in TEXT_DEFAULTS:
            text[key] = value
        elif arch == "llava" and key in LLAVA_DEFAULTS:
            llava[key] = value
        elif arch == "llava" and key == "vision_config":
            unknown = set(value) - set(VISION_DEFAULTS)
            if unknown:
                raise ValueError(f"unknown vision_config keys {sorted(unknown)}")
            vision.update(value)
        else:
            raise ValueError(f"unknown override {key!r} for arch {arch}")
    return text, vision, llava


# ---------------------------------------------------------------------------- configs


def _text_config(arch: str, style: TokenizerStyle, ids: dict[str, int], text: dict, dtype: str) -> dict:
    """config.json of the causal LM in the hub layout (rope_theta/rope_scaling/torch_dtype)."""
    config = {
        **text,
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": "qwen2" if arch == "qwen2" else "llama",
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "bos_token_id": ids[style.bos] if style.bos else ids[style.eos],
        "eos_token_id": ids[style.eos],
        "pad_token_id": ids[style.pad],
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if arch == "qwen2":
        config.update(use_sliding_window=False, sliding_window=None,
                      max_window_layers=text["num_hidden_layers"])  # fmt: skip
    else:
        config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    return config


def _model_config(arch, style, ids, text, vision, llava, dtype) -> dict:
    text_config = _text_config(arch, style, ids, text, dtype)
    if arch != "llava":
        return text_config
    num_patches = (vision["image_size"] // vision["patch_size"]) ** 2
    full = llava["vision_feature_select_strategy"] == "full"
    return {
        **llava,
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": text_config,
        "vision_config": {**vision, "model_type": "clip_vision_model"},
        "image_token_index": ids[IMAGE_TOKEN],
        "image_seq_length": num_patches + 1 if full else num_patches,
        "multimodal_projector_bias": True,
        "pad_token_id": ids[style.pad],
        "tie_word_embeddings": text["tie_word_embeddings"],
        "torch_dtype": dtype,
    }


def _generation_config(style: TokenizerStyle, ids: dict[str, int]) -> dict:
    eos = [ids[t] for t in (style.eos, *style.extra_eos)]
    config = {"eos_token_id": eos if len(eos) > 1 else eos[0], "pad_token_id": ids[style.pad]}
    if style.bos:
        config["bos_token_id"] = ids[style.bos]
    return config


def _llava_processor_files(vision: dict, llava: dict) -> dict[str, str]:
    """CLIP image processor (resize shortest edge + center crop to image_size) and LlavaProcessor."""
    size = vision["image_size"]
    image_processor = {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor",
        "resample": 3,  # bicubic
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }
    processor = {
        "image_token": IMAGE_TOKEN,
        "num_additional_image_tokens": 1,  # CLIP's CLS token
        "patch_size": vision["patch_size"],
        "processor_class": "LlavaProcessor",
        "vision_feature_select_strategy": llava["vision_feature_select_strategy"],
    }
    return {"preprocessor_config.json": dumps(image_processor), "processor_config.json": dumps(processor)}


# ---------------------------------------------------------------------------- weights

# name -> (shape, mean, std)
WeightSpec = dict[str, tuple[tuple[int, ...], float, float]]


def _linear(out_features: int, in_features: int, gain: float = 1.0) -> tuple[tuple[int, ...], float, float]:
    return (out_features, in_features), 0.0, gain * in_features**-0.5  # outputs of variance gain^2


def _norm(size: int) -> tuple[tuple[int, ...], float, float]:
    return (size,), 1.0, 0.1  # not all ones, so a missing norm weight shows up in tests


def _bias(size: int) -> tuple[tuple[int, ...], float, float]:
    return (size,), 0.0, 0.1


def _llama_spec(text: dict, qkv_bias: bool) -> WeightSpec:
    hidden, inter, vocab = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    q_size = text["num_attention_heads"] * text["head_dim"]
    kv_size = text["num_key_value_heads"] * text["head_dim"]
    # Tied: e_t.e_t/rms(h) favours the current token, so small embeddings and a strong MLP branch
    # (measured: ~8-20 distinct greedy tokens per 32 steps instead of one repeated token).
    tied = text["tie_word_embeddings"]
    embed_std, attn_gain, mlp_gain = (0.4, 0.5, 3.0) if tied else (1.0, 1.0, 1.0)
    spec: WeightSpec = {"model.embed_tokens.weight": ((vocab, hidden), 0.0, embed_std)}
    for i in range(text["num_hidden_layers"]):
        p = f"model.layers.{i}."
        spec[p + "input_layernorm.weight"] = _norm(hidden)
        spec[p + "post_attention_layernorm.weight"] = _norm(hidden)
        for name, size in (("q_proj", q_size), ("k_proj", kv_size), ("v_proj", kv_size)):
            spec[p + f"self_attn.{name}.weight"] = _linear(size, hidden)
            if qkv_bias:
                spec[p + f"self_attn.{name}.bias"] = _bias(size)
        spec[p + "self_attn.o_proj.weight"] = _linear(hidden, q_size, attn_gain)
        spec[p + "mlp.gate_proj.weight"] = _linear(inter, hidden)
        spec[p + "mlp.up_proj.weight"] = _linear(inter, hidden)
        spec[p + "mlp.down_proj.weight"] = _linear(hidden, inter, mlp_gain)
    spec["model.norm.weight"] = _norm(hidden)
    if not tied:
        spec["lm_head.weight"] = ((vocab, hidden), 0.0, LM_HEAD_STD)
    return spec


def _clip_spec(vision: dict) -> WeightSpec:
    hidden, inter, patch = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    num_positions = (vision["image_size"] // patch) ** 2 + 1
    channels = vision["num_channels"]
    spec: WeightSpec = {
        "embeddings.class_embedding": ((hidden,), 0.0, 1.0),
        "embeddings.patch_embedding.weight": ((hidden, channels, patch, patch), 0.0, (channels * patch**2) ** -0.5),
        "embeddings.position_embedding.weight": ((num_positions, hidden), 0.0, 0.5),
        "pre_layrnorm.weight": _norm(hidden),  # sic: CLIP's spelling
        "pre_layrnorm.bias": _bias(hidden),
        "post_layernorm.weight": _norm(hidden),
        "post_layernorm.bias": _bias(hidden),
    }
    for i in range(vision["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            spec[p + f"self_attn.{name}.weight"] = _linear(hidden, hidden)
            spec[p + f"self_attn.{name}.bias"] = _bias(hidden)
        for name in ("layer_norm1", "layer_norm2"):
            spec[p + f"{name}.weight"] = _norm(hidden)
            spec[p + f"{name}.bias"] = _bias(hidden)
        spec[p + "mlp.fc1.weight"] = _linear(inter, hidden)
        spec[p + "mlp.fc1.bias"] = _bias(inter)
        spec[p + "mlp.fc2.weight"] = _linear(hidden, inter)
        spec[p + "mlp.fc2.bias"] = _bias(hidden)
    return spec


def _weight_spec(arch: str, text: dict, vision: dict) -> WeightSpec:
    spec = _llama_spec(text, qkv_bias=arch == "qwen2")
    if arch != "llava":
        return spec
    text_hidden = text["hidden_size"]
    spec = {"language_model." + name: init for name, init in spec.items()}
    spec.update({"vision_tower.vision_model." + name: init for name, init in _clip_spec(vision).items()})
    spec["multi_modal_projector.linear_1.weight"] = _linear(text_hidden, vision["hidden_size"])
    spec["multi_modal_projector.linear_1.bias"] = _bias(text_hidden)
    spec["multi_modal_projector.linear_2.weight"] = _linear(text_hidden, text_hidden)
    spec["multi_modal_projector.linear_2.bias"] = _bias(text_hidden)
    return spec


def _random_tensor(seed: int, name: str, shape: tuple[int, ...], mean: float, std: float) -> torch.Tensor:
    """fp32 normal(mean, std) from numpy's platform-independent PCG64, seeded by (seed, name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    values = rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(mean)
    return torch.from_numpy(values)


def _save_weights(out: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    metadata = {"format": "pt"}
    if shards == 1:
        save_file(tensors, out / "model.safetensors", metadata=metadata)
        return
    names = list(tensors)  # model order: embeddings, layers, ..., head
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    groups: list[list[str]] = [[] for _ in range(shards)]
    done = 0
    for name in names:  # contiguous groups of about total/shards bytes each
        groups[min(shards - 1, done * shards // total)].append(name)
        done += tensors[name].numel() * tensors[name].element_size()
    weight_map = {}
    for k, group in enumerate(groups, start=1):
        file = f"model-{k:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, out / file, metadata=metadata)
        weight_map.update(dict.fromkeys(group, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(dumps(index), encoding="utf-8")
