"""The tokenizers of the tiny models: a byte-level BPE (Llama-3 / Qwen2 style) and a
SentencePiece-like BPE with byte fallback (Llama-2 style), trained locally on a built-in corpus
with spaces, numbers, code, CJK and emoji, and written as tokenizer.json + tokenizer_config.json
+ special_tokens_map.json that transformers' own classes load unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache

from llm_core.testing.chat_templates import chat_template

VOCAB_SIZE = 1024  # every tiny tokenizer, special tokens included (splits evenly over 2/4/8 ranks)


def dumps(obj: dict) -> str:
    """Deterministic JSON text (sorted keys, no timestamps)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


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
        "chat_template": chat_template(style.kind, style.eos),
    }
    if style.kind == "sp":
        config["legacy"] = False
    special_map = {key: {"content": t, **entry} for key, t in named.items() if t is not None}
    files = {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": dumps(config),
        "special_tokens_map.json": dumps(special_map),
    }
    return files, ids
