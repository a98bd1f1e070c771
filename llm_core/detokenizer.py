"""Exact incremental detokenization and stop strings (docs/SERVING.md, postprocess).

Text of a token sequence is `decode(ids)` with special tokens skipped and no clean-up of
spaces. Streaming emits, per chunk of new ids, `stable(context + new) - stable(context)`
(the full decode of context + new instead of `stable` for the last chunk), where:

- `stable(ids)` holds back what later tokens could still change: a trailing run of
  byte-fallback tokens `<0xNN>` (SentencePiece-style tokenizers decode a whole run at once and
  turn every byte of an invalid run into U+FFFD) and trailing U+FFFD characters (an
  incomplete UTF-8 sequence at the end, byte-level BPE).
- the context must contain an *anchor*: a position j where ctx[j] is not a byte-fallback
  token and stable(ctx[j:]) is non-empty and does not begin with U+FFFD. At an anchor UTF-8
  decoding is in its initial state and any byte run is closed, so whatever the context decodes
  to before it (U+FFFD for a character cut by the context's start, a cut byte run) is a common
  prefix of both decodes, and SentencePiece's strip of the first leading space hits the same
  character in both; so the delta equals the delta of decoding the whole sequence.

Guarantee: if every chunk's context contains an anchor, or reaches back to the start of the
sequence (the first chunk with empty context does), the deltas concatenate to exactly
`decode(all_ids)`. `context_window` returns such a context: the last `DEFAULT_CONTEXT` ids,
extended back to the last anchor, at most `MAX_CONTEXT` ids. Only when the
last `MAX_CONTEXT` ids hold no anchor at all (e.g. one run of more than `MAX_CONTEXT`
byte-fallback tokens, or that many tokens of invalid UTF-8) can the text differ.
A plain fixed context of the last `DEFAULT_CONTEXT` (8) ids is enough for byte-level BPE and
valid UTF-8: a character spans at most 4 tokens, so 3 tokens of an incomplete character plus
the 4 of the complete one before it always hold an anchor (7 ids). SentencePiece byte runs
(consecutive characters missing from the vocabulary) can be longer: use `context_window`.

The text of the output of a request is `full_text(tokenizer, prompt_ids, output_ids)`: the
delta of the output ids after a context window of the prompt, so a SentencePiece output keeps
the leading space of its first token.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tokenizers

DEFAULT_CONTEXT = 8  # context ids sent with each streamed chunk (extended when needed)
MAX_CONTEXT = 256
_REPLACEMENT = "\ufffd"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class TextCodec:
    """Decoding view of a `tokenizers.Tokenizer` or a Hugging Face tokenizer (fast or slow)."""

    def __init__(self, tokenizer: Any) -> None:
        backend = tokenizer if isinstance(tokenizer, tokenizers.Tokenizer) else None
        backend = backend or getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            self._decode = lambda ids: backend.decode(ids, skip_special_tokens=True)
            added = backend.get_added_tokens_decoder()
            self.special_ids = frozenset(i for i, tok in added.items() if tok.special)
            vocab = backend.get_vocab(with_added_tokens=False)
        else:
            self._decode = lambda ids: tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            self.special_ids = frozenset(tokenizer.all_special_ids)
            vocab = tokenizer.get_vocab()
        # Byte-fallback pieces; treating an unrelated token as one only delays its text.
        self.byte_ids = frozenset(i for tok, i in vocab.items() if _BYTE_TOKEN.fullmatch(tok))

    def decode(self, ids: Sequence[int]) -> str:
        return self._decode(list(ids))

    def drop_special(self, ids: Sequence[int]) -> list[int]:
        # Skipped special tokens are invisible to decoding, so the logic below ignores them.
        return [i for i in ids if i not in self.special_ids]

    def stable(self, ids: list[int]) -> str:
        """decode(ids) minus what later tokens could still change (ids: no special tokens)."""
        end = len(ids)
        while end and ids[end - 1] in self.byte_ids:
            end -= 1
        return self.decode(ids[:end]).rstrip(_REPLACEMENT) if end else ""

    def last_anchor(self, ids: list[int]) -> int | None:
        """Index of the last anchor in ids (see the module docstring), or None."""
        for j in range(len(ids) - 1, -1, -1):
            if ids[j] not in self.byte_ids and ids[j] not in self.special_ids:
                text = self.stable(self.drop_special(ids[j:]))
                if text and text[0] != _REPLACEMENT:
                    return j
        return None


_CODECS: dict[int, tuple[Any, TextCodec]] = {}


def codec_for(tokenizer: Any) -> TextCodec:
    if isinstance(tokenizer, TextCodec):
        return tokenizer
    cached = _CODECS.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        cached = (tokenizer, TextCodec(tokenizer))
        _CODECS[id(tokenizer)] = cached
    return cached[1]


def decode_delta(tokenizer: Any, context_ids: Sequence[int], new_ids: Sequence[int], final: bool) -> str:
    """The text that `new_ids` add after `context_ids` (see the module docstring)."""
    codec = codec_for(tokenizer)
    ctx = codec.drop_special(context_ids)
    new = codec.drop_special(new_ids)
    if not new and not final:
        return ""
    before = codec.stable(ctx)
    after = codec.decode(ctx + new) if final else codec.stable(ctx + new)
    if not after.startswith(before):  # only for decoders that rewrite earlier text
        before = os.path.commonprefix([before, after])
    return after[len(before) :]


def context_window(
    tokenizer: Any, ids: Sequence[int], min_len: int = DEFAULT_CONTEXT, max_len: int = MAX_CONTEXT
) -> list[int]:
    """The context to send with the chunk that follows `ids`: the last `min_len` ids, or more
    back to the last anchor; all of `ids` (the exact start) or the last `max_len` without one."""
    tail = list(ids[-max_len:])
    anchor = codec_for(tokenizer).last_anchor(tail)
    size = len(tail) if anchor is None else max(min_len, len(tail) - anchor)
    return tail[-size:] if size else []


def full_text(tokenizer: Any, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> str:
    """The non-streamed text of `output_ids`; streaming with IncrementalDetokenizer equals it."""
    return decode_delta(tokenizer, context_window(tokenizer, prompt_ids), output_ids, final=True)


class IncrementalDetokenizer:
    """Stateful convenience over decode_delta: push ids, get text; finish() flushes."""

    def __init__(self, tokenizer: Any, prompt_tail_ids: Sequence[int] = ()) -> None:
        self._codec = codec_for(tokenizer)
        self._history = list(prompt_tail_ids)[-MAX_CONTEXT:]

    def context(self) -> list[int]:
        return context_window(self._codec, self._history)

    def push(self, new_ids: Sequence[int]) -> str:
        delta = decode_delta(self._codec, self.context(), new_ids, final=False)
        self._history = (self._history + list(new_ids))[-MAX_CONTEXT:]
        return delta

    def finish(self) -> str:
        return decode_delta(self._codec, self.context(), (), final=True)


@dataclass(frozen=True, slots=True)
class Released:
    token_ids: list[int]  # tokens that may be streamed now
    matched: bool = False  # a stop string matched: the request ends with these tokens
    text_trim: int = 0  # characters to drop from the end of the text of all streamed tokens


class StopStringChecker:
    """Holds back tokens whose text could begin a stop string; finds the first stop string.

    Stop strings are matched on the output text only (prompt_tail_ids is decoding context).
    The first stop string to complete wins; among those completing at the same character,
    the one that begins first. On a match, the tokens up to the one whose text contains the
    stop string's first character are released, and `text_trim` says how many characters of
    their (final) text begin at or after the stop string.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_tail_ids: Sequence[int] = ()) -> None:
        assert all(stop), "stop strings must be non-empty"
        self._codec = codec_for(tokenizer)
        self._stop = tuple(stop)
        self._keep = max((len(s) for s in self._stop), default=1) - 1  # chars a match may reach back
        self._history = list(prompt_tail_ids)[-MAX_CONTEXT:]  # ids, for decoding context
        self._text = ""  # output text from absolute offset self._text_start on
        self._text_start = 0
        self._pending: list[tuple[int, int]] = []  # held (token id, absolute end of its text)
        self._released_end = 0  # absolute end of the text of released tokens
        self._matched = False

    @property
    def text_end(self) -> int:
        return self._text_start + len(self._text)

    def push(self, token_id: int) -> Released:
        assert not self._matched, "push after a stop string matched"
        old_end = self.text_end
        context = context_window(self._codec, self._history)
        self._text += decode_delta(self._codec, context, [token_id], final=False)
        self._history.append(token_id)
        self._pending.append((token_id, self.text_end))
        match_start = self._find_stop(old_end)
        if match_start is not None:
            return self._release_match(match_start)
        held_from = self._stop_prefix_start()
        num = sum(1 for _, end in self._pending if end <= held_from)
        return self._release(num)

    def flush(self) -> Released:
        """Release everything (the request ends). The final decode may still complete a stop
        string (text held back as an incomplete character or an open byte run)."""
        old_end = self.text_end
        self._text += decode_delta(self._codec, context_window(self._codec, self._history), (), final=True)
        if self._pending:
            self._pending[-1] = (self._pending[-1][0], self.text_end)
        match_start = self._find_stop(old_end)
        if match_start is not None:
            return self._release_match(match_start, final=True)
        return self._release(len(self._pending))

    def _find_stop(self, old_end: int) -> int | None:
        # -> absolute start of the earliest-ending stop string occurrence that ends after old_end.
        best: tuple[int, int] | None = None  # (end, start)
        for stop in self._stop:
            search_from = max(old_end - len(stop) + 1 - self._text_start, 0)
            pos = self._text.find(stop, search_from)
            if pos >= 0:
                candidate = (self._text_start + pos + len(stop), self._text_start + pos)
                best = candidate if best is None else min(best, candidate)
        return None if best is None else best[1]

    def _stop_prefix_start(self) -> int:
        # -> absolute start of the longest suffix of the text that is a proper prefix of a stop.
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:size]):
                    longest = size
                    break
        return self.text_end - longest

    def _release_match(self, match_start: int, final: bool = False) -> Released:
        # The stop string begins in the text of pending token num - 1 (num = 0: the final
        # decode's tail of tokens already released).
        num = next((n for n, (_, end) in enumerate(self._pending, 1) if end > match_start), 0)
        text_end = self._pending[num - 1][1] if num else self.text_end
        if not final:
            # Text that an incomplete character at the end of that token adds in the final decode.
            history = self._history[: len(self._history) - (len(self._pending) - num)]
            text_end += len(decode_delta(self._codec, context_window(self._codec, history), (), final=True))
        self._matched = True
        released = self._release(num)
        return Released(released.token_ids, True, text_end - match_start)

    def _release(self, num: int) -> Released:
        tokens = [token for token, _ in self._pending[:num]]
        if num:
            self._released_end = self._pending[num - 1][1]
        del self._pending[:num]
        # Keep only the text a later match or a held token can still need.
        keep_from = min(self._released_end, self.text_end - self._keep)
        if keep_from > self._text_start:
            self._text = self._text[keep_from - self._text_start :]
            self._text_start = keep_from
        self._history = self._history[-(MAX_CONTEXT + len(self._pending)) :]
        return Released(tokens)


def load_tokenizer_in_background(model_dir: str) -> concurrent.futures.Future:
    """load_tokenizer on a thread: AutoTokenizer takes seconds of Python (2-3 s for a small tokenizer on
    2 cores), which can overlap the engine's worker start-up and a worker's weight loading."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm_core-tokenizer")
    future = pool.submit(load_tokenizer, model_dir)
    pool.shutdown(wait=False)  # the thread ends when the tokenizer is loaded
    return future


def load_tokenizer(model_dir: str) -> Any | None:
    """The model directory's Hugging Face tokenizer, or None if it ships none."""
    if not any(os.path.exists(os.path.join(model_dir, f)) for f in ("tokenizer.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Its decoding tables now, not on the first response: for a 128k vocabulary they take ~0.1 s of Python that
    # would hold the GIL while the llm step sends that response and takes the next requests.
    codec_for(tokenizer)
    return tokenizer
