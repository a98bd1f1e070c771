from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llm_core.detokenizer import (
    DEFAULT_CONTEXT,
    IncrementalDetokenizer,
    StopStringChecker,
    codec_for,
    context_window,
    decode_delta,
    full_text,
)

CORPUS = [
    "hello world, the quick brown fox jumps over the lazy dog.",
    "中文 文本 测试 你好 世界 🙂 emoji 😀😀 done",
    "naïve café über straße",
] * 20
# Characters for generated text: common ones, and ones the tokenizers never saw (byte pieces).
ALPHABET = list("abcdefghij ,.\n") + list("中文你好界") + list("éü") + list("龘𠀀✓€") + ["🙂", "😀", "🦀"]


def byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def sentencepiece_style() -> Tokenizer:
    # Llama-2 style: Metaspace pieces, BPE with byte fallback, <0x00>..<0xFF> in the vocab.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=40)
    tok.train_from_iterator(CORPUS, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    return Tokenizer.from_str(json.dumps(spec))


def as_hf(tok: Tokenizer):
    from transformers import PreTrainedTokenizerFast

    eos = "<|eos|>" if tok.token_to_id("<|eos|>") is not None else "</s>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos)


BPE = byte_level_bpe()
SP = sentencepiece_style()
TOKENIZERS = {"bpe": BPE, "sp": SP, "bpe_hf": as_hf(BPE), "sp_hf": as_hf(SP)}
ALL = pytest.mark.parametrize("name", list(TOKENIZERS))


def decode(tok, ids) -> str:
    # The tokenizer's own decode: the text streaming must reproduce.
    if isinstance(tok, Tokenizer):
        return tok.decode(ids, skip_special_tokens=True)
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def stream(tok, ids, cuts, context_fn) -> str:
    # Concatenated deltas for ids split at `cuts`, each chunk's context from context_fn(prefix).
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(ids))), len(ids)]
    pieces = []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        final = i == len(bounds) - 2
        pieces.append(decode_delta(tok, context_fn(ids[:lo]), ids[lo:hi], final=final))
    return "".join(pieces)


texts = st.text(alphabet=st.sampled_from(ALPHABET), max_size=40)
cut_lists = st.lists(st.integers(min_value=0, max_value=60), max_size=12)
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


def encode(tok, text) -> list[int]:
    return tok.encode(text).ids if isinstance(tok, Tokenizer) else tok(text)["input_ids"]


@ALL
@SETTINGS
@given(text=texts, cuts=cut_lists)
def test_text_split_anywhere(name, text, cuts):
    tok = TOKENIZERS[name]
    ids = encode(tok, text)
    expected = decode(tok, ids)
    assert stream(tok, ids, cuts, lambda prefix: context_window(tok, prefix)) == expected
    if name.startswith("bpe"):  # valid UTF-8, byte-level: a fixed context always holds an anchor
        assert stream(tok, ids, cuts, lambda prefix: prefix[-DEFAULT_CONTEXT:]) == expected


def test_fixed_context_covers_four_byte_characters():
    # 𠀀 is 4 one-byte tokens in the byte-level tokenizer: the 3 tokens of an incomplete one and
    # the 4 of the one before must fit in the context.
    ids = encode(BPE, "a𠀀𠀀𠀀b")
    assert len(ids) == 14
    cuts = list(range(len(ids)))
    assert stream(BPE, ids, cuts, lambda prefix: prefix[-DEFAULT_CONTEXT:]) == "a𠀀𠀀𠀀b"
    assert stream(BPE, ids, cuts, lambda prefix: prefix[-6:]) != "a𠀀𠀀𠀀b"
    # context_window extends a too-short context back to the last anchor.
    assert stream(BPE, ids, cuts, lambda prefix: context_window(BPE, prefix, min_len=1)) == "a𠀀𠀀𠀀b"


@ALL
@SETTINGS
@given(data=st.data(), cuts=cut_lists)
def test_any_token_sequence(name, data, cuts):
    # Arbitrary ids: invalid UTF-8, byte runs cut anywhere, special tokens in between.
    tok = TOKENIZERS[name]
    ids = data.draw(st.lists(token_ids(tok), max_size=50))
    min_len = data.draw(st.sampled_from([1, 2, DEFAULT_CONTEXT]))
    context_fn = lambda prefix: context_window(tok, prefix, min_len=min_len)
    assert stream(tok, ids, cuts, context_fn) == decode(tok, ids)


def token_ids(tok) -> st.SearchStrategy[int]:
    # Any id, biased toward single-byte tokens (long byte runs, invalid UTF-8).
    byte_ids = sorted(codec_for(tok).byte_ids) or list(range(1, 257))
    return st.one_of(st.sampled_from(byte_ids), st.integers(0, len(tok.get_vocab()) - 1))


@ALL
@SETTINGS
@given(data=st.data(), prompt_text=texts)
def test_incremental_equals_full_text(name, data, prompt_text):
    tok = TOKENIZERS[name]
    prompt = encode(tok, prompt_text)
    output = data.draw(st.lists(token_ids(tok), max_size=30))
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=len(output), max_size=len(output)))
    detok = IncrementalDetokenizer(tok, prompt)
    pieces, i = [], 0
    for size in sizes:
        pieces.append(detok.push(output[i : i + size]))
        i += size
    pieces.append(detok.finish())
    assert "".join(pieces) == full_text(tok, prompt, output)
    if not prompt:
        assert full_text(tok, prompt, output) == decode(tok, output)


@pytest.mark.parametrize("name", ["bpe", "sp"])
def test_output_text_follows_prompt(name):
    tok = TOKENIZERS[name]
    whole_ids = encode(tok, "hello world 🦀 done")
    cut = next(k for k in range(len(whole_ids)) if decode(tok, whole_ids[:k]) == "hello")
    prompt, output = whole_ids[:cut], whole_ids[cut:]
    whole = decode(tok, whole_ids)
    # SentencePiece: the leading space of the first output token survives.
    assert full_text(tok, prompt, output) == whole[len(decode(tok, prompt)) :]
    assert full_text(tok, prompt, output).startswith(" ")


def test_emoji_as_byte_tokens_longer_than_context():
    # 🦀 is four <0xNN> pieces in the SentencePiece tokenizer; a 2-id context still works
    # through context_window, which extends back to an anchor.
    tok = SP
    ids = encode(tok, "a 🦀🦀🦀 b")
    assert sum(i in codec_for(tok).byte_ids for i in ids) == 12
    detok_text = stream(tok, ids, list(range(len(ids))), lambda p: context_window(tok, p, min_len=2))
    assert detok_text == decode(tok, ids) == "a 🦀🦀🦀 b"
    # Streaming token by token: nothing of a character is shown before it is complete.
    detok = IncrementalDetokenizer(tok)
    assert all("\ufffd" not in detok.push([i]) for i in ids)


def test_special_tokens_are_not_text():
    tok = TOKENIZERS["bpe_hf"]
    eos = tok.eos_token_id
    ids = encode(tok, "hi 中") + [eos]
    assert full_text(tok, [], ids) == "hi 中"
    assert decode_delta(tok, ids[:-1], [eos], final=True) == ""


def stop_reference(text: str, stops: tuple[str, ...]) -> str:
    # The first stop string to complete (ties: the one starting first) ends the text.
    found = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    return text[: min(found)[1]] if found else text


def run_checker(tok, prompt, output, stops) -> tuple[str, bool]:
    checker = StopStringChecker(tok, stops, prompt)
    detok = IncrementalDetokenizer(tok, prompt)
    pieces = []
    pushes = (checker.push(token) for token in output)
    for released in itertools.chain(pushes, (checker.flush() for _ in [0])):  # lazily: stop at a match
        pieces.append(detok.push(released.token_ids))
        if released.matched:
            break
    pieces[-1] += detok.finish()
    assert 0 <= released.text_trim <= len(pieces[-1])  # trimmed from the last chunk only
    text = "".join(pieces)
    return text[: len(text) - released.text_trim], released.matched


@pytest.mark.parametrize("name", ["bpe", "sp_hf"])
@settings(max_examples=80, deadline=None, derandomize=True)
@given(data=st.data(), text=texts, prompt_text=texts)
def test_stop_strings(name, data, text, prompt_text):
    tok = TOKENIZERS[name]
    prompt = encode(tok, prompt_text)
    if data.draw(st.booleans()):
        output = encode(tok, text)
    else:  # arbitrary ids
        output = data.draw(st.lists(token_ids(tok), max_size=30))
    whole = full_text(tok, prompt, output)
    stops = []
    for _ in range(data.draw(st.integers(1, 3))):
        if whole and data.draw(st.booleans()):
            start = data.draw(st.integers(0, len(whole) - 1))
            stops.append(whole[start : start + data.draw(st.integers(1, 5))])
        else:
            stops.append(data.draw(st.text(alphabet=st.sampled_from(ALPHABET), min_size=1, max_size=3)))
    stops = tuple(s for s in stops if "\ufffd" not in s)  # U+FFFD may only appear at flush
    text_out, matched = run_checker(tok, prompt, output, stops)
    assert text_out == stop_reference(whole, stops)
    assert matched == any(s in whole for s in stops)


def test_stop_string_starting_mid_token():
    tok = BPE
    output = encode(tok, "the quick brown fox")
    text, matched = run_checker(tok, [], output, ("ick br", "zzz"))
    assert matched and text == "the qu"


def test_stop_checker_holds_possible_prefix():
    checker = StopStringChecker(BPE, ("fox!",), [])
    ids = encode(BPE, "brown fox jumps")
    released: list[int] = []
    for i, token in enumerate(ids):
        result = checker.push(token)
        assert not result.matched and result.text_trim == 0
        released += result.token_ids
        pushed_text = decode(BPE, ids[: i + 1])
        if pushed_text.endswith("fox"):  # could still become "fox!": held back
            assert decode(BPE, released) == pushed_text[: -len("fox")]
    assert released == ids and checker.flush().token_ids == []


def test_load_tokenizer_builds_the_codec(tmp_path, monkeypatch):
    # The codec's tables (~0.1 s at a 128k vocabulary) are built with the tokenizer, before the server is
    # ready, never on a request's first response.
    from llm_core import detokenizer

    as_hf(byte_level_bpe()).save_pretrained(tmp_path)
    tok = detokenizer.load_tokenizer(str(tmp_path))
    built, init = [], detokenizer.TextCodec.__init__
    monkeypatch.setattr(detokenizer.TextCodec, "__init__", lambda self, t: built.append(t) or init(self, t))
    assert decode_delta(tok, [], tok.encode("hello world", add_special_tokens=False), final=True) == "hello world"
    assert built == []
