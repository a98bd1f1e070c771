"""ModelConfig: the parts of a Hugging Face config.json (+ generation_config.json) we serve from.

Parsed from the raw JSON (not through transformers' config classes) so the result does not depend
on the installed transformers version. Missing keys take transformers' defaults for the family
(old LLaVA checkpoints store only the text/vision keys that differ from those defaults).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ARCHS = ("llama", "qwen2", "llava")

# transformers' LlamaConfig / CLIPVisionConfig defaults.
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
}
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


@dataclass(frozen=True, slots=True)
class RopeScaling:
    rope_type: str  # "linear" | "llama3"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in ("linear", "llama3"):
            raise NotImplementedError(f"rope_scaling type {self.rope_type!r} is not supported")


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """CLIP vision tower."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    hidden_act: str
    layer_norm_eps: float

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True, slots=True)
class ModelConfig:
    arch: str  # "llama" | "qwen2" | "llava"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    qkv_bias: bool
    o_proj_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    pad_token_id: int | None
    torch_dtype: str
    # LLaVA only.
    image_token_index: int | None = None
    num_image_tokens: int | None = None  # tokens per image
    vision: VisionConfig | None = None
    vision_feature_layers: tuple[int, ...] = ()  # hidden-state indices, concatenated in order
    vision_feature_select_strategy: str = "default"  # "default" drops CLS, "full" keeps it
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True

    def __post_init__(self) -> None:
        if self.arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported arch {self.arch!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"bad vision_feature_select_strategy {self.vision_feature_select_strategy!r}")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _rope(text: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    # transformers 5 writes `rope_parameters` (with rope_theta inside); 4.x `rope_theta` + `rope_scaling`.
    params = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", text.get("rope_theta", _TEXT_DEFAULTS["rope_theta"])))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    fields = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    extra = {k: params[k] for k in fields if k in params}
    return theta, RopeScaling(rope_type=rope_type, factor=float(params["factor"]), **extra)


def _vision(raw: dict[str, Any]) -> VisionConfig:
    if raw.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise NotImplementedError(f"vision tower {raw.get('model_type')!r} is not supported")
    v = {**_VISION_DEFAULTS, **raw}
    return VisionConfig(
        hidden_size=v["hidden_size"],
        intermediate_size=v["intermediate_size"],
        num_layers=v["num_hidden_layers"],
        num_heads=v["num_attention_heads"],
        num_channels=v["num_channels"],
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        hidden_act=v["hidden_act"],
        layer_norm_eps=float(v["layer_norm_eps"]),
    )


def _llava_fields(raw: dict[str, Any]) -> dict[str, Any]:
    vision = _vision(raw.get("vision_config") or {})
    layers = raw.get("vision_feature_layer", -2)
    strategy = raw.get("vision_feature_select_strategy", "default")
    return {
        "image_token_index": int(raw.get("image_token_index", raw.get("image_token_id", 32000))),
        "num_image_tokens": vision.num_patches + (1 if strategy == "full" else 0),
        "vision": vision,
        "vision_feature_layers": tuple(layers) if isinstance(layers, list) else (int(layers),),
        "vision_feature_select_strategy": strategy,
        "projector_hidden_act": raw.get("projector_hidden_act", "gelu"),
        "projector_bias": bool(raw.get("multimodal_projector_bias", True)),
    }


def _dtype_name(raw: dict[str, Any], text: dict[str, Any]) -> str:
    for source in (raw, text):
        for key in ("dtype", "torch_dtype"):
            if isinstance(source.get(key), str):
                return source[key]
    return "float32"


def load_model_config(model_dir: str | Path) -> ModelConfig:
    model_dir = Path(model_dir)
    raw = _read_json(model_dir / "config.json")
    arch = raw.get("model_type")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unsupported model_type {arch!r} in {model_dir}")
    text = (raw.get("text_config") or {}) if arch == "llava" else raw
    t = {**_TEXT_DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
    if t["hidden_act"] != "silu":
        raise NotImplementedError(f"hidden_act {t['hidden_act']!r} is not supported")
    if t.get("use_sliding_window"):
        raise NotImplementedError("sliding-window attention is not supported")
    num_heads = t["num_attention_heads"]
    rope_theta, rope_scaling = _rope(t)
    is_qwen2 = text.get("model_type", arch) == "qwen2"
    attention_bias = bool(t.get("attention_bias", False))
    generation = _read_json(model_dir / "generation_config.json")
    eos = _as_ids(text.get("eos_token_id", raw.get("eos_token_id"))) + _as_ids(generation.get("eos_token_id"))
    return ModelConfig(
        arch=arch,
        vocab_size=t["vocab_size"],
        hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"],
        num_layers=t["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=t.get("num_key_value_heads") or num_heads,
        head_dim=t.get("head_dim") or t["hidden_size"] // num_heads,
        max_position_embeddings=t["max_position_embeddings"],
        rms_norm_eps=float(t["rms_norm_eps"]),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        qkv_bias=is_qwen2 or attention_bias,
        o_proj_bias=attention_bias and not is_qwen2,
        mlp_bias=bool(t.get("mlp_bias", False)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings") or t.get("tie_word_embeddings")),
        eos_token_ids=tuple(dict.fromkeys(eos)),
        bos_token_id=t.get("bos_token_id", raw.get("bos_token_id")),
        pad_token_id=t.get("pad_token_id", raw.get("pad_token_id")),
        torch_dtype=_dtype_name(raw, text),
        **(_llava_fields(raw) if arch == "llava" else {}),
    )
