"""Deterministic tiny Hugging Face model directories (tests and the default model).

`make_tiny_model(out_dir, arch, tokenizer, seed, **overrides)` writes a complete HF directory
that loads in transformers' own classes: config.json, generation_config.json, safetensors
weights (one file, or `shards=N` files plus an index), tokenizer.json, tokenizer_config.json,
special_tokens_map.json, and for LLaVA preprocessor_config.json + processor_config.json.

Invariants:
- Same arguments give byte-identical files (fixed seeds, sorted keys, no timestamps). The
  tokenizer does not depend on `seed`; only the weights do.
- Every tokenizer has exactly `VOCAB_SIZE` (1024) tokens, special tokens included.
- Weights are scaled so that greedy decoding is well separated (top-1 minus top-2 logit gap
  mostly far above float reordering noise) and not degenerate (visits many tokens).
- Checkpoint keys follow the hub layout: `model.*`/`lm_head.*` for causal LMs, and for LLaVA
  `language_model.model.*`, `language_model.lm_head.*`, `vision_tower.vision_model.*`,
  `multi_modal_projector.*` (as llava-hf/llava-1.5-7b-hf ships them).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

VOCAB_SIZE = 1024
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

# Pre-tokenizer regexes of Llama-3 (digits in groups of 3) and Qwen2 (single digits).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class TokenizerStyle:
    """Special tokens and pre-tokenization of one tokenizer family."""

    kind: str  # "bpe" (byte-level) | "sp" (SentencePiece-like, byte fallback)
    leading: tuple[str, ...]  # specials at ids 0.. inside the model vocab (sp only)
    appended: tuple[str, ...]  # specials after the trained vocab, in id order
    bos: str | None
    eos: str
    extra_eos: tuple[str, ...]  # more generation stop tokens (generation_config.json)
    pad: str
    unk: str | None
    tokenizer_class: str
    split_regex: str | None = None
    nfc: bool = False

    @property
    def add_bos(self) -> bool:
        return self.bos is not None


LLAMA3 = TokenizerStyle(
    "bpe", (), ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"),
    bos="<|begin_of_text|>", eos="<|end_of_text|>", extra_eos=("<|eot_id|>",), pad="<|pad|>",
    unk=None, tokenizer_class="PreTrainedTokenizerFast", split_regex=LLAMA3_REGEX,
)  # fmt: skip
QWEN2 = TokenizerStyle(
    "bpe", (), ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    bos=None, eos="<|endoftext|>", extra_eos=("<|im_end|>",), pad="<|endoftext|>",
    unk=None, tokenizer_class="Qwen2Tokenizer", split_regex=QWEN2_REGEX, nfc=True,
)  # fmt: skip
LLAMA2 = TokenizerStyle(
    "sp", ("<unk>", "<s>", "</s>"), ("<pad>",),
    bos="<s>", eos="</s>", extra_eos=(), pad="<pad>", unk="<unk>", tokenizer_class="LlamaTokenizer",
)  # fmt: skip
IMAGE_TOKEN = "<image>"


def tokenizer_style(arch: str, tokenizer: str) -> TokenizerStyle:
    """sp: Llama-2 specials; bpe: Qwen2 specials for qwen2, Llama-3 specials otherwise.
    LLaVA puts `<image>` first among the appended specials (llava-1.5: <image>, then <pad>)."""
    style = LLAMA2 if tokenizer == "sp" else QWEN2 if arch == "qwen2" else LLAMA3
    if arch != "llava":
        return style
    return TokenizerStyle(**{**style.__dict__, "appended": (IMAGE_TOKEN, *style.appended)})


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
    files["config.json"] = _dumps(config)
    files["generation_config.json"] = _dumps(_generation_config(style, ids))
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


def _dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


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
    return {"preprocessor_config.json": _dumps(image_processor), "processor_config.json": _dumps(processor)}


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
    (out / "model.safetensors.index.json").write_text(_dumps(index), encoding="utf-8")


# ---------------------------------------------------------------------------- tokenizer

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had "
    "by word but not what all were we when your can said there use an each which she do how their if will "
    "up other about out many then them these so some her would make like him into time has look two more "
    "write go see number way could people my than first water been call who its now find long down day did "
    "get come made may part model token engine server request batch cache memory kernel tensor layer "
    "attention stream don't it's I'm we'll they're"
).split()
_CJK = (
    "你好", "世界", "我们", "一起", "学习", "中文", "今天", "天气", "很好", "我爱", "自然", "语言", "处理", "日本語",
    "の", "テキスト", "です", "こんにちは", "東京", "は", "首都", "、", "。", "，", "！", "안녕하세요", "세계",
)  # fmt: skip
_EMOJI = ("😀", "🚀", "👍🏽", "🎉", "❤️", "🤖", "🌍", "🔥")
_SPACES = (" ",) * 12 + ("  ", "\t", "\n", " \n", "   ")


def _sentence(rng) -> str:
    words = rng.choices(_WORDS, k=rng.randint(3, 14))
    words[0] = words[0].capitalize()
    text = words[0]
    for word in words[1:]:
        text += rng.choice(("", "", "", "", ",", ";", ":")) + rng.choice(_SPACES) + word
    text += rng.choice((".", ".", ".", "!", "?", "...", ""))
    return f'"{text}"' if rng.random() < 0.05 else f"({text})" if rng.random() < 0.05 else text


def _number(rng) -> str:
    forms = (
        f"{rng.randint(0, 99999)}", f"{rng.random() * 1000:.2f}", f"{rng.randint(1990, 2030)}-"
        f"{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", f"${rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
        f"{rng.randint(0, 100)}%", f"{rng.randint(1, 999)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}",
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
    )  # fmt: skip
    return rng.choice(forms)


def _code(rng) -> str:
    name, n = rng.choice(_WORDS).replace("'", ""), rng.randint(0, 99)
    forms = (
        f"def {name}(x):\n    return x * {n}\n", f"for i in range({n}):\n\tprint(i, {name!r})",
        f'{{"{name}": [{n}, {n + 1}], "ok": true}}', f"if ({name} >= {n}) {{ {name} += 1; }}",
    )  # fmt: skip
    return rng.choice(forms)


@lru_cache(maxsize=1)
def training_corpus() -> tuple[str, ...]:
    """English with varied spacing and punctuation, numbers, code, CJK and emoji (fixed seed)."""
    import random

    rng = random.Random(20240517)
    lines = []
    for i in range(3000):
        kind = i % 10
        if kind < 5:
            line = _sentence(rng)
        elif kind == 5:
            line = f"{_sentence(rng)} {_number(rng)} {_number(rng)}"
        elif kind == 6:
            line = "".join(rng.choices(_CJK, k=rng.randint(2, 12)))
        elif kind == 7:
            line = f"{_sentence(rng)} {''.join(rng.choices(_EMOJI, k=rng.randint(1, 3)))}"
        elif kind == 8:
            line = _code(rng)
        else:
            cjk = "".join(rng.choices(_CJK, k=rng.randint(1, 4)))
            line = f"{cjk} {_sentence(rng)} {_number(rng)} {rng.choice(_EMOJI)}"
        lines.append(line)
    return tuple(lines)


def _byte_level_bpe(style: TokenizerStyle, num_model_tokens: int):
    """Llama-3/Qwen2-like: regex split + ByteLevel pre-tokenizer, ByteLevel decoder."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if style.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(style.split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=num_model_tokens, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(training_corpus(), trainer)
    return tok


def _sentencepiece_bpe(style: TokenizerStyle, num_model_tokens: int):
    """Llama-2-like: ids = leading specials, <0x00>..<0xFF>, then trained pieces; Metaspace
    pre-tokenizer; byte fallback. Emoji are left out of training so they always fall back to bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="first", split=True)
    num_fixed = len(style.leading) + 256
    trainer = trainers.BpeTrainer(vocab_size=num_model_tokens - num_fixed, min_frequency=2, show_progress=False)
    bmp_only = ("".join(c for c in line if ord(c) <= 0xFFFF) for line in training_corpus())
    trainer_tok.train_from_iterator(bmp_only, trainer)
    trained = json.loads(trainer_tok.to_str())["model"]

    pieces = [*style.leading, *(f"<0x{b:02X}>" for b in range(256))]
    pieces += sorted(trained["vocab"], key=trained["vocab"].__getitem__)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=style.unk, byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])  # fmt: skip
    return tok


@cache
def _tokenizer_json(style: TokenizerStyle) -> str:
    """tokenizer.json text with exactly VOCAB_SIZE tokens; the special tokens are added tokens."""
    from tokenizers import AddedToken, processors

    num_model_tokens = VOCAB_SIZE - len(style.appended)
    build = _byte_level_bpe if style.kind == "bpe" else _sentencepiece_bpe
    tok = build(style, num_model_tokens)
    if tok.get_vocab_size() != num_model_tokens:
        raise RuntimeError(f"trained {tok.get_vocab_size()} tokens, wanted {num_model_tokens}")
    specials = (*style.leading, *style.appended)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if style.bos:  # what transformers' update_post_processor() builds for add_bos_token=True
        bos = style.bos
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )  # fmt: skip
    assert tok.get_vocab_size() == VOCAB_SIZE
    return tok.to_str(pretty=True) + "\n"


def build_tokenizer_files(style: TokenizerStyle, model_max_length: int) -> tuple[dict[str, str], dict[str, int]]:
    """({file name: content}, {special token: id}) for tokenizer.json, tokenizer_config.json
    and special_tokens_map.json."""
    tokenizer_json = _tokenizer_json(style)
    added = json.loads(tokenizer_json)["added_tokens"]
    ids = {t["content"]: t["id"] for t in added}
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    named = {"bos_token": style.bos, "eos_token": style.eos, "pad_token": style.pad, "unk_token": style.unk}
    config = {
        **named,
        "add_bos_token": style.add_bos,
        "add_eos_token": False,
        "added_tokens_decoder": {str(ids[t]): {"content": t, **entry, "special": True} for t in ids},
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "tokenizer_class": style.tokenizer_class,
    }
    if style.kind == "sp":
        config["legacy"] = False
    special_map = {key: {"content": t, **entry} for key, t in named.items() if t is not None}
    files = {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": _dumps(config),
        "special_tokens_map.json": _dumps(special_map),
    }
    return files, ids
