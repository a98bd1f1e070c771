"""Config parsing, checkpoint formats and names, dtypes, dummy weights, image preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

from llm_core.models import VisionEncoder, build_model, load_model_config, load_weights, preprocess_images

TEXT = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip


def write_json(path, data) -> None:
    path.write_text(json.dumps(data))


def text_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a, b) -> None:
    sa, sb = text_state(a), text_state(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], atol=0, rtol=0, msg=name)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TEXT)).save_pretrained(path)
    return path


def load(path, dtype=torch.float32, load_format="safetensors"):
    model = build_model(load_model_config(path), dtype, "cpu")
    load_weights(model, path, load_format)
    return model


# ---------------------------------------------------------------- config.json


def test_legacy_rope_and_eos_union(tmp_path):
    write_json(tmp_path / "config.json", {
        "model_type": "llama", **TEXT, "rope_theta": 500000.0, "eos_token_id": [128001, 128009],
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "torch_dtype": "bfloat16", "tie_word_embeddings": True,
    })  # fmt: skip
    write_json(tmp_path / "generation_config.json", {"eos_token_id": [128001, 128008]})
    cfg = load_model_config(tmp_path)
    assert cfg.eos_token_ids == (128001, 128009, 128008)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling.rope_type == "llama3"
    assert cfg.rope_scaling.factor == 8.0 and cfg.torch_dtype == "bfloat16" and cfg.tie_word_embeddings
    assert (cfg.head_dim, cfg.num_kv_heads, cfg.qkv_bias) == (8, 2, False)


def test_qwen2_config(tmp_path):
    transformers.Qwen2Config(**TEXT, tie_word_embeddings=True, eos_token_id=5).save_pretrained(tmp_path)
    write_json(tmp_path / "generation_config.json", {"eos_token_id": 7})
    cfg = load_model_config(tmp_path)
    assert cfg.arch == "qwen2" and cfg.qkv_bias and not cfg.o_proj_bias and cfg.tie_word_embeddings
    assert cfg.eos_token_ids == (5, 7)


def test_old_llava_config_takes_family_defaults(tmp_path):
    # llava-1.5-hf style: sub-configs list only what differs from LlamaConfig / CLIPVisionConfig.
    write_json(tmp_path / "config.json", {
        "model_type": "llava", "image_token_index": 32000, "projector_hidden_act": "gelu",
        "text_config": {"model_type": "llama", "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                        "vocab_size": 32064, "torch_dtype": "float16"},
        "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                          "model_type": "clip_vision_model", "num_attention_heads": 16,
                          "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    })  # fmt: skip
    cfg = load_model_config(tmp_path)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.head_dim) == (4096, 32, 32, 128)
    assert cfg.num_image_tokens == 576 and cfg.image_token_index == 32000 and cfg.torch_dtype == "float16"
    assert cfg.vision.hidden_act == "quick_gelu" and cfg.vision_feature_layers == (-2,)


def test_unsupported_configs_raise(tmp_path):
    write_json(tmp_path / "config.json", {"model_type": "mixtral"})
    with pytest.raises(ValueError):
        load_model_config(tmp_path)
    write_json(tmp_path / "config.json", {"model_type": "llama", "rope_scaling": {"type": "yarn", "factor": 2}})
    with pytest.raises(NotImplementedError):
        load_model_config(tmp_path)


# ---------------------------------------------------------------- weights


def test_sharded_checkpoint_equals_single_file(llama_dir, tmp_path):
    hf = transformers.LlamaForCausalLM.from_pretrained(llama_dir)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    assert_same_params(load(tmp_path), load(llama_dir))


def test_stored_bf16_is_cast_to_model_dtype(llama_dir, tmp_path):
    hf = transformers.LlamaForCausalLM.from_pretrained(llama_dir).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    ours = load(tmp_path, torch.float32)
    expected = load(llama_dir, torch.float32)
    for (name, a), b in zip(ours.named_parameters(), expected.parameters(), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b.to(torch.bfloat16).float(), atol=0, rtol=0, msg=name)


def test_dummy_weights_are_deterministic(llama_dir):
    a = load(llama_dir, load_format="dummy")
    b = build_model(load_model_config(llama_dir), torch.float32, "cpu")
    load_weights(b, "/nonexistent", "dummy")
    assert_same_params(a, b)
    assert torch.all(a.model.norm.weight == 1) and 0.01 < a.lm_head.weight.std() < 0.03


def test_missing_tensor_raises(llama_dir, tmp_path):
    tensors = load_file(llama_dir / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((llama_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="down_proj"):
        load(tmp_path)


LLAVA_RENAMES = {  # transformers 5 in-memory names, and original llava-hf names
    "v5": (
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ),
    "llava-hf": (("vision_tower.", "vision_tower.vision_model."),),
}


def _tiny_vision_config() -> transformers.CLIPVisionConfig:
    return transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=8, patch_size=4
    )


@pytest.mark.parametrize("naming", list(LLAVA_RENAMES))
def test_llava_checkpoint_namings(tmp_path, naming):
    vision = _tiny_vision_config()
    hf_cfg = transformers.LlavaConfig(
        text_config=transformers.LlamaConfig(**TEXT).to_dict(),
        vision_config=vision.to_dict(),
        image_token_index=3,
    )
    saved, renamed = tmp_path / "saved", tmp_path / "renamed"
    transformers.LlavaForConditionalGeneration(hf_cfg).save_pretrained(saved)
    tensors = {}
    for name, tensor in load_file(saved / "model.safetensors").items():
        for old, new in LLAVA_RENAMES[naming]:
            name = new + name.removeprefix(old) if name.startswith(old) else name
        tensors[name] = tensor
    renamed.mkdir()
    save_file(tensors, renamed / "model.safetensors")
    (renamed / "config.json").write_text((saved / "config.json").read_text())
    assert_same_params(load(renamed), load(saved))
    a, b = (VisionEncoder.from_pretrained(d, "cpu", torch.float32) for d in (renamed, saved))
    assert_same_params(a, b)
    pixels = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(a.encode(pixels), b.encode(pixels), atol=0, rtol=0)


def test_vision_encoder_dummy_bf16(tmp_path):
    vision = _tiny_vision_config()
    transformers.LlavaConfig(text_config=TEXT, vision_config=vision.to_dict()).save_pretrained(tmp_path)
    encoder = VisionEncoder.from_pretrained(tmp_path, "cpu", torch.bfloat16, load_format="dummy")
    out = encoder.encode(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 4, 32) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# ---------------------------------------------------------------- image preprocessing


def random_image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode)


@pytest.mark.parametrize("processor", ["CLIPImageProcessorPil", "LlavaImageProcessorPil", "no-resize"])
def test_preprocess_matches_transformers(tmp_path, processor):
    kwargs = {"size": {"shortest_edge": 20}, "crop_size": {"height": 16, "width": 16}}
    if processor == "no-resize":  # images smaller than the crop are zero-padded
        kwargs["do_resize"] = False
    if processor.startswith("Llava"):
        from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil as cls

        kwargs["do_pad"] = True
    else:
        cls = transformers.CLIPImageProcessorPil
    cls(**kwargs).save_pretrained(tmp_path)
    reference = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    images = [
        random_image("RGB", (37, 23), 0),
        random_image("RGBA", (20, 50), 1),
        random_image("L", (64, 64), 2),
        random_image("RGB", (9, 12), 3),
    ]
    expected = reference(images, return_tensors="pt")["pixel_values"]
    ours = preprocess_images(images, tmp_path)
    assert ours.dtype == torch.float32 and ours.shape == (4, 3, 16, 16)
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)
