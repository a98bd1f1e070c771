"""Build a Llama-3-8B-shaped model directory with random bf16 weights (copied from ../shared/anchor/make_model.py;
used by scripts/device/gpu_setup_check.sh).

Writes config.json, generation_config.json, tokenizer.json (+ tokenizer_config.json,
special_tokens_map.json), safetensors shards and model.safetensors.index.json.

The tokenizer is a tokenizers WordLevel model over exactly `vocab` ids:
ids 0..127999 are the words "w0".."w127999" (split on whitespace, decoded joined
by spaces, so decode->encode round-trips exactly), ids 128000.. are Llama-3-style
special tokens. A post-processor prepends <|begin_of_text|> like Llama 3.

Usage: python3 make_model.py --out /tmp/llama8b [--device cuda] [--layers 32] ...
Small shapes (e.g. --layers 2 --hidden 256 ...) are for CPU smoke tests.
"""

import argparse
import json
import os
import time

import torch
from safetensors.torch import save_file


def build_tokenizer(out, vocab):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    n_words = 128000 if vocab > 128000 else vocab - 16
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    reserved = 0
    named = {
        4: "<|finetune_right_pad_id|>",
        6: "<|start_header_id|>",
        7: "<|end_header_id|>",
        8: "<|eom_id|>",
        9: "<|eot_id|>",
        10: "<|python_tag|>",
    }
    for k in range(2, vocab - n_words):
        if k in named:
            specials.append(named[k])
        else:
            specials.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    vocab_map = {f"w{i}": i for i in range(n_words)}
    for j, s in enumerate(specials):
        vocab_map[s] = n_words + j
    assert len(vocab_map) == vocab, len(vocab_map)
    unk = specials[-1]
    tok = Tokenizer(models.WordLevel(vocab=vocab_map, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = specials[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, n_words)]
    )
    tok.save(os.path.join(out, "tokenizer.json"))
    eos = "<|eot_id|>" if "<|eot_id|>" in vocab_map else specials[1]
    tcfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    json.dump(tcfg, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)
    json.dump({"bos_token": bos, "eos_token": eos}, open(os.path.join(out, "special_tokens_map.json"), "w"), indent=2)
    return vocab_map[bos], [vocab_map[specials[1]], vocab_map.get("<|eom_id|>", n_words + 1), vocab_map[eos]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/llama8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv_heads", type=int, default=8)
    ap.add_argument("--inter", type=int, default=14336)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--max_pos", type=int, default=8192)
    ap.add_argument("--layers_per_shard", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config_only", action="store_true", help="rewrite tokenizer/config files, keep weights")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    bos_id, eos_ids = build_tokenizer(args.out, args.vocab)
    H, L, NH, KV, INTER, V = args.hidden, args.layers, args.heads, args.kv_heads, args.inter, args.vocab
    D = H // NH
    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids,
        "head_dim": D,
        "hidden_act": "silu",
        "hidden_size": H,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "max_position_embeddings": args.max_pos,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": NH,
        "num_hidden_layers": L,
        "num_key_value_heads": KV,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": V,
    }
    json.dump(config, open(os.path.join(args.out, "config.json"), "w"), indent=2)
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_ids, "do_sample": True, "temperature": 0.6, "top_p": 0.9}
    json.dump(gen, open(os.path.join(args.out, "generation_config.json"), "w"), indent=2)
    if args.config_only:
        print(f"rewrote config/tokenizer in {args.out} (max_position_embeddings={args.max_pos})", flush=True)
        return

    g = torch.Generator(device=args.device)
    g.manual_seed(args.seed)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=args.device, dtype=torch.float32) * 0.02).to(torch.bfloat16)

    def ones(n):
        return torch.ones(n, device=args.device, dtype=torch.bfloat16)

    per_shard = args.layers_per_shard
    groups = [("layers", list(range(s, min(L, s + per_shard)))) for s in range(0, L, per_shard)]
    groups = [("pre", None)] + groups + [("post", None)]
    nshards = len(groups)
    weight_map = {}
    total = 0
    for si, (kind, layers) in enumerate(groups):
        t = {}
        if kind == "pre":
            t["model.embed_tokens.weight"] = rnd(V, H)
        elif kind == "post":
            t["model.norm.weight"] = ones(H)
            t["lm_head.weight"] = rnd(V, H)
        else:
            for i in layers:
                p = f"model.layers.{i}."
                t[p + "self_attn.q_proj.weight"] = rnd(NH * D, H)
                t[p + "self_attn.k_proj.weight"] = rnd(KV * D, H)
                t[p + "self_attn.v_proj.weight"] = rnd(KV * D, H)
                t[p + "self_attn.o_proj.weight"] = rnd(H, NH * D)
                t[p + "mlp.gate_proj.weight"] = rnd(INTER, H)
                t[p + "mlp.up_proj.weight"] = rnd(INTER, H)
                t[p + "mlp.down_proj.weight"] = rnd(H, INTER)
                t[p + "input_layernorm.weight"] = ones(H)
                t[p + "post_attention_layernorm.weight"] = ones(H)
        name = f"model-{si + 1:05d}-of-{nshards:05d}.safetensors"
        cpu = {k: v.cpu().contiguous() for k, v in t.items()}
        save_file(cpu, os.path.join(args.out, name), metadata={"format": "pt"})
        for k, v in cpu.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
        del t, cpu
    json.dump(
        {"metadata": {"total_size": total}, "weight_map": weight_map},
        open(os.path.join(args.out, "model.safetensors.index.json"), "w"),
        indent=2,
    )
    print(f"wrote {args.out}: {total / 1e9:.2f} GB in {nshards} shards, {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
