"""Tiny HF model directories load in transformers' own classes, are deterministic, and decode well."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors import safe_open
from tokenizers import Tokenizer

from llm_core.testing.tiny_model import VOCAB_SIZE, make_tiny_model

transformers.logging.set_verbosity_error()

COMBOS = [("llama", "bpe"), ("llama", "sp"), ("qwen2", "bpe"), ("qwen2", "sp"), ("llava", "bpe"), ("llava", "sp")]
MODEL_CLASSES = {
    "llama": transformers.LlamaForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "llava": transformers.LlavaForConditionalGeneration,
}
PROMPTS = ["Hello world, this is", "The model token engine", "你好世界", "def cache(x):\n    return", "🚀 at 12:30"]
TEXTS = [
    "Hello  world,\tthis is 3.14159!\n",
    "  leading spaces and trailing  ",
    "你好世界 日本語のテキスト 鼠",
    "emoji 😀🚀👍🏽 and ❤️",
    "mixed: x=42; y = [1, 2]\n\n\tdone.",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """2 shared CPU cores: intra-op threads only add contention for these tiny matmuls."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


def load(model_dir, arch):
    model, info = MODEL_CLASSES[arch].from_pretrained(model_dir, output_loading_info=True)
    assert not any(info.values()), info  # no missing/unexpected/mismatched keys
    return model.eval()


@pytest.mark.parametrize("arch,tokenizer", COMBOS)
def test_loads_in_transformers_and_generates(tiny_model_factory, arch, tokenizer):
    model_dir = tiny_model_factory(arch, tokenizer)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    text_config = config.text_config if arch == "llava" else config
    assert len(tok) == text_config.vocab_size == VOCAB_SIZE
    assert (text_config.num_key_value_heads, text_config.head_dim) == (2, 16)
    model = load(model_dir, arch)
    ids = tok("Hello world", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], VOCAB_SIZE)
    out = model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


@pytest.mark.parametrize("arch,tokenizer", [("llama", "bpe"), ("llama", "sp"), ("qwen2", "bpe")])
def test_greedy_is_well_separated_and_diverse(tiny_model_factory, arch, tokenizer):
    model_dir = tiny_model_factory(arch, tokenizer)
    model, tok = load(model_dir, arch), transformers.AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(
        **batch, max_new_tokens=32, min_new_tokens=32, do_sample=False,
        output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    top2 = torch.stack(out.scores).topk(2, dim=-1).values  # [steps, prompts, 2]
    gaps = (top2[..., 0] - top2[..., 1]).flatten()
    new_ids = out.sequences[:, batch["input_ids"].shape[1] :].tolist()
    for row in new_ids:
        assert len(set(row)) >= 16, row  # not one token (or a short cycle) forever
    multibyte = sum(any(ord(c) > 127 for c in tok.decode([i])) for row in new_ids for i in row)
    # Measured at seed 0: median ~0.9-1.1, fraction below 0.05 ~1-6%.
    assert gaps.median() > 0.5 and (gaps < 0.05).float().mean() < 0.1, gaps
    assert multibyte > 0  # CJK / emoji / partial UTF-8 tokens get generated too


def test_same_arguments_give_identical_bytes(tmp_path):
    kwargs = dict(arch="llava", tokenizer="sp", seed=3, shards=2, dtype="bfloat16")
    a, b = make_tiny_model(tmp_path / "a", **kwargs), make_tiny_model(tmp_path / "b", **kwargs)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"preprocessor_config.json", "processor_config.json", "model.safetensors.index.json"} <= set(names)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = make_tiny_model(tmp_path / "c", **{**kwargs, "seed": 4})
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()
    shard = "model-00001-of-00002.safetensors"
    assert (a / shard).read_bytes() != (c / shard).read_bytes()


def test_sharded_weights_load_and_match(tmp_path):
    whole = make_tiny_model(tmp_path / "whole", "qwen2")
    sharded = make_tiny_model(tmp_path / "sharded", "qwen2", shards=3)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    with safe_open(whole / "model.safetensors", "pt") as f:
        assert sorted(f.keys()) == sorted(index["weight_map"])
        assert index["metadata"]["total_size"] == sum(f.get_tensor(k).nbytes for k in f.keys())
        assert "model.layers.0.self_attn.q_proj.bias" in f.keys()  # Qwen2 qkv bias
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(load(whole, "qwen2")(ids).logits, load(sharded, "qwen2")(ids).logits)


@pytest.mark.parametrize("arch,tokenizer", [("llama", "bpe"), ("qwen2", "bpe"), ("llama", "sp"), ("llava", "sp")])
def test_tokenizer_round_trips_and_specials(tiny_model_factory, arch, tokenizer):
    model_dir = tiny_model_factory(arch, tokenizer)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert tok.clean_up_tokenization_spaces is False
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == raw.encode(text).ids  # transformers' class and tokenizer.json agree
        if tok.bos_token_id is not None:
            assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
            ids = ids[1:]
        # Metaspace (as transformers 5 builds Llama-2) adds no "▁" before a leading space, yet the
        # decoder strips one: text starting with a space loses one space.
        lost = 1 if tokenizer == "sp" and text.startswith(" ") else 0
        assert tok.decode(ids) == text[lost:]
    if tokenizer == "sp":
        assert tok.convert_ids_to_tokens([0, 1, 2, 3, 258]) == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]
        assert "<0xF0>" in tok.convert_ids_to_tokens(tok.encode("😀"))  # emoji fall back to bytes
    generation = json.loads((model_dir / "generation_config.json").read_text())
    expected = {
        ("llama", "bpe"): (1020, [1021, 1022], 1023),  # <|begin_of_text|>, <|end_of_text|> <|eot_id|>, <|pad|>
        ("qwen2", "bpe"): (None, [1021, 1023], 1021),  # -, <|endoftext|> <|im_end|>, <|endoftext|>
        ("llama", "sp"): (1, 2, 1023),  # <s>, </s>, <pad>
        ("llava", "sp"): (1, 2, 1023),
    }[arch, tokenizer]
    assert (generation.get("bos_token_id"), generation["eos_token_id"], generation["pad_token_id"]) == expected
    assert (tok.bos_token_id, tok.pad_token_id) == (expected[0], expected[2])


def test_overrides_pass_through(tmp_path):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256}  # fmt: skip
    model_dir = make_tiny_model(tmp_path / "m", "llama", rope_scaling=rope, tie_word_embeddings=True, vocab_size=1040)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["rope_scaling"] == rope and config["vocab_size"] == 1040 and config["torch_dtype"] == "float32"
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert f.get_tensor("model.embed_tokens.weight").shape == (1040, 64)
    model = load(model_dir, "llama")
    assert model.config.rope_parameters["rope_type"] == "llama3"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with pytest.raises(ValueError):
        make_tiny_model(tmp_path / "bad", "llama", hidden_sizes=3)


def test_llava_processor_and_vision_tower(tiny_model_factory):
    model_dir = tiny_model_factory("llava", "bpe")
    config = transformers.AutoConfig.from_pretrained(model_dir)
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == 16
    # Without torchvision, transformers 5 falls back to CLIPImageProcessorPil.
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    assert type(processor.image_processor).__name__.startswith("CLIPImageProcessor")
    image = Image.fromarray((np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3))
    inputs = processor(images=image, text="<image>\nWhat is this?", return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert (inputs["input_ids"] == config.image_token_index).sum() == 16
    pixels = transformers.AutoImageProcessor.from_pretrained(model_dir)(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, inputs["pixel_values"])

    model = load(model_dir, "llava")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
        other = model(**{**inputs, "pixel_values": inputs["pixel_values"].flip(-1)}).logits[0, -1]
    assert (logits - other).abs().max() > 0.1  # the image matters


def test_cli_writes_a_model(tmp_path):
    from scripts.make_tiny_model import main

    main(["--arch", "llama", "--tokenizer", "sp", "--out", str(tmp_path / "m"), "--shards", "2", "--dtype", "float16"])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["torch_dtype"] == "float16"
    assert (tmp_path / "m" / "model-00002-of-00002.safetensors").exists()
