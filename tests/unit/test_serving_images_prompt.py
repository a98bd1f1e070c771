"""Image decoding (raw / base64 / data URI) and prompt encoding with <image> expansion."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from llm_core.models import load_model_config
from llm_core.serving.images import decode_image
from llm_core.serving.preprocess import Preprocessor, with_image_embeds
from llm_core.serving.prompt import PromptEncoder, PromptLimits
from llm_core.serving.request import InputError


def _png(color=(10, 200, 30), size=(20, 12), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def test_three_encodings_decode_to_the_same_md5():
    raw = _png()
    b64 = base64.b64encode(raw)
    forms = [
        raw,
        b64,
        b"data:image/png;base64," + b64,
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        b64[:10] + b"\n" + b64[10:],
    ]
    decoded = [decode_image(f) for f in forms]
    assert len({d.md5 for d in decoded}) == 1
    assert decoded[0].image.size == (20, 12)
    assert decode_image(_png(fmt="JPEG")).image.format == "JPEG"


@pytest.mark.parametrize(
    "element,problem",
    [
        (b"@@@not base64@@@", "invalid base64"),
        (base64.b64encode(b"hello, not pixels"), "not a decodable image"),
        (b"\x00\x01\x02binary junk\xff", "not a decodable image"),
        (b"data:image/png,abc", "data URI"),
        (b"data:image/png;base64,%%%", "invalid base64"),
        (_png()[:40], "not a decodable image"),  # truncated file
        (b"", "empty"),
    ],
)
def test_bad_images(element, problem):
    with pytest.raises(InputError) as info:
        decode_image(element, index=2)
    assert str(info.value).startswith("image[2]") and problem in str(info.value)


@pytest.fixture(scope="module")
def llava_tokenizer(tiny_llava):
    return AutoTokenizer.from_pretrained(str(tiny_llava))


def _encoder(tiny_llava, tokenizer, max_len=None) -> PromptEncoder:
    cfg = load_model_config(tiny_llava)
    return PromptEncoder(
        tokenizer, PromptLimits(max_len or cfg.max_position_embeddings, cfg.image_token_index, cfg.num_image_tokens)
    )


def test_image_expansion_matches_transformers_processor(tiny_llava, llava_tokenizer):
    encoder = _encoder(tiny_llava, llava_tokenizer)
    processor = AutoProcessor.from_pretrained(str(tiny_llava))
    image = Image.new("RGB", (33, 17), (1, 2, 3))
    for text, num in [("<image>\nWhat is it?", 1), ("A <image> and <image>, compare.", 2), ("no image", 0)]:
        want = processor(text=text, images=[image] * num or None, return_tensors="np")["input_ids"][0].tolist()
        assert encoder.encode(text, num) == want


def test_expansion_without_a_tag_token(tiny_llava, llava_tokenizer):
    """A tokenizer that does not know `<image>` as one token: tokenize around the tags."""
    cfg = load_model_config(tiny_llava)

    class SplittingTokenizer:
        def __call__(self, text, add_special_tokens=True):
            ids = llava_tokenizer(text.replace("<image>", "<img>"), add_special_tokens=add_special_tokens)
            return {"input_ids": ids["input_ids"]}

    encoder = PromptEncoder(SplittingTokenizer(), PromptLimits(1024, cfg.image_token_index, 3))
    ids = encoder.encode("a <image> b", 1)
    assert ids.count(cfg.image_token_index) == 3


def test_fast_backend_gives_the_tokenizers_ids(tiny_llava, tiny_llama, llava_tokenizer):
    """The encoder calls a fast tokenizer's backend directly: the same ids as `tokenizer(text)`, with and
    without special tokens; a backend that keeps truncation settings is not called directly."""
    llama_tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    texts = ["Hello world", "  leading spaces and\nnew lines\t", "</s> <s> special-looking", "é ü 中文 🙂", "x " * 300]
    for tokenizer in (llava_tokenizer, llama_tokenizer):
        encoder = PromptEncoder(tokenizer, PromptLimits(4096, None))
        assert encoder.backend is not None
        for text in texts:
            for special in (True, False):
                assert encoder._tokenize(text, special) == tokenizer(text, add_special_tokens=special)["input_ids"]
    truncating = AutoTokenizer.from_pretrained(str(tiny_llama))
    truncating.backend_tokenizer.enable_truncation(max_length=4)
    assert PromptEncoder(truncating, PromptLimits(4096, None)).backend is None
    assert len(PromptEncoder(truncating, PromptLimits(4096, None)).encode("x " * 50, 0)) > 4


@pytest.mark.parametrize(
    "text,num,field,problem",
    [
        ("", 0, "text_input", "empty"),
        ("<image> <image>", 1, "image", "2 <image> tag(s) but 1 image(s)"),
        ("<image>", 2, "text_input", "1 <image> tag(s) but 2 image(s)"),
        ("none", 1, "text_input", "0 <image> tag(s) but 1 image(s)"),
    ],
)
def test_prompt_errors(tiny_llava, llava_tokenizer, text, num, field, problem):
    with pytest.raises(InputError) as info:
        _encoder(tiny_llava, llava_tokenizer).encode(text, num)
    assert str(info.value).startswith(field) and problem in str(info.value)


def test_context_limits(tiny_llava, llava_tokenizer):
    encoder = _encoder(tiny_llava, llava_tokenizer, max_len=32)
    with pytest.raises(InputError, match="^text_input: prompt is .* tokens long"):
        encoder.check_context(len(encoder.encode("word " * 40, 0)), 1)
    with pytest.raises(InputError, match="^text_input"):  # 16 image tokens + text overflow 32
        encoder.check_context(len(encoder.encode("<image> <image>", 2)), 1)
    ids = encoder.encode("short", 0)
    encoder.check_context(len(ids), 32 - len(ids))
    with pytest.raises(InputError, match=r"^max_tokens: \d+ exceeds the room left in the model's context"):
        encoder.check_context(len(ids), 33 - len(ids))


def test_text_only_model_refuses_images(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    encoder = PromptEncoder(tokenizer, PromptLimits(1024, None))
    with pytest.raises(InputError, match="^image: this model does not take images"):
        encoder.encode("<image> hi", 1)
    assert encoder.encode("<image> is plain text here", 0)


def test_preprocessor_outputs(tiny_llava, llava_tokenizer):
    pre = Preprocessor(tiny_llava, llava_tokenizer, default_max_tokens=8)
    png = _png()
    inputs = {
        "text_input": np.array([[b"<image> hi"]], np.object_),
        "image": np.array([[base64.b64encode(png)]], np.object_),
        "stream": np.array([[True]]),
    }
    out = pre.run(inputs, {"temperature": 0})
    assert out["input_ids"].shape == (1, 1 + 16 + len(llava_tokenizer(" hi", add_special_tokens=False)["input_ids"]))
    assert out["pixel_values"].shape == (1, 1, 3, 32, 32) and out["pixel_values"].dtype == np.float32
    assert out["image_md5"].shape == (1, 1) and out["stream"].tolist() == [[True]]
    text_only = pre.run({"text_input": np.array([[b"hi"]], np.object_)}, {})
    assert text_only["pixel_values"].shape == (1, 0, 3, 32, 32) and text_only["image_md5"].shape == (1, 0)


def test_only_a_request_with_images_calls_the_visual_model(tiny_llava, llava_tokenizer):
    """What the preprocess adapter hands the llm step: the visual model's embeddings of a request's images
    (VisualService, which the adapter calls through BLS), and for a text request an empty tensor without
    calling it."""
    from llm_core.serving.llm_io import parse_llm_request
    from llm_core.serving.metrics import RecordingSink
    from llm_core.serving.settings import load_settings
    from llm_core.serving.visual import VisualService

    pre = Preprocessor(tiny_llava, llava_tokenizer)
    visual = VisualService(load_settings({"model_dir": str(tiny_llava)}, env={}), RecordingSink())
    calls = []

    def encode(pixel_values, image_md5):
        calls.append(image_md5.reshape(-1).tolist())
        return visual.run([{"pixel_values": pixel_values, "image_md5": image_md5}])[0]

    image = pre.run({"text_input": np.array([[b"<image> hi"]], np.object_), "image": np.array([[_png()]])}, {})
    out = with_image_embeds(image, encode)
    assert sorted(out) == sorted(set(image) - {"pixel_values", "image_md5"} | {"image_embeds"})
    assert calls == [image["image_md5"].reshape(-1).tolist()]
    assert out["image_embeds"].shape == (1, 16, visual.hidden_size)
    np.testing.assert_array_equal(out["input_ids"], image["input_ids"])
    assert parse_llm_request(out, 16).image_embeds.shape == (16, visual.hidden_size)

    text = with_image_embeds(pre.run({"text_input": np.array([[b"hi"]], np.object_)}, {}), encode)
    assert len(calls) == 1 and text["image_embeds"].shape == (1, 0, 0)
    assert parse_llm_request(text, 16).image_embeds is None


def test_huge_prompt_is_refused_before_tokenizing(tiny_llava, llava_tokenizer):
    import time

    pre = Preprocessor(tiny_llava, llava_tokenizer, default_max_tokens=8)
    huge = {"text_input": np.array([[b"word " * 1_600_000]], np.object_)}  # 8 MB
    start = time.monotonic()
    with pytest.raises(InputError, match=r"^text_input: prompt is 8000000 bytes; the model's context"):
        pre.run(huge, {})
    assert time.monotonic() - start < 1.0  # tokenizing it took 11.9 s


def test_missing_text_input_and_non_utf8_are_named(tiny_llava, llava_tokenizer):
    pre = Preprocessor(tiny_llava, llava_tokenizer, default_max_tokens=8)
    with pytest.raises(InputError, match="^text_input: is required"):
        pre.run({"max_tokens": np.array([[4]], np.int32)}, {"prompt": "hi"})
    with pytest.raises(InputError, match="^text_input: is not valid UTF-8"):
        pre.run({"text_input": np.array([[b"caf\xe9 latte"]], np.object_)}, {})
    with pytest.raises(InputError, match="^stop_words: is not valid UTF-8"):
        pre.run({"text_input": np.array([[b"hi"]], np.object_), "stop_words": np.array([[b"\xff"]], np.object_)}, {})
