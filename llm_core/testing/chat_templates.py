"""Chat templates of the tiny models, one per tokenizer family (written into tokenizer_config.json).

They follow the real families' formats: Llama-3 headers (here plain text: the tiny vocabulary
has no header tokens) and `<|eot_id|>` (a generation stop token), Qwen2's ChatML, Llama-2's
`[INST]`. `<image>` tags inside a message's content pass through unchanged.
"""

from __future__ import annotations

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA2 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>>\n{{ message['content'] | trim }}\n<</SYS>>\n\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] | trim }} [/INST]"
    "{% else %} {{ message['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}"
)


def chat_template(kind: str, eos: str) -> str:
    """`kind`: "bpe" or "sp" (TokenizerStyle.kind); `eos`: the style's eos token."""
    if kind == "sp":
        return LLAMA2
    return CHATML if eos == "<|endoftext|>" else LLAMA3
