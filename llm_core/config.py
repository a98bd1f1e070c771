"""Engine configuration: one frozen dataclass, validated once, and the one table of its environment variables.

Every engine switch is a field of EngineConfig. `ENV_VARS` names the environment variable of each field;
`engine_config_from_env` (the CLI, the benchmarks) and the serving settings (`serving/settings.py`) read the
environment through it, once, when a config is built. Nothing below the config reads the environment.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields

_DTYPES = ("float32", "float16", "bfloat16", "auto")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model_dir: str | None = None  # Hugging Face directory (config.json, *.safetensors, tokenizer)
    device: str = "cpu"  # "cpu" or "cuda"
    tp: int = 1
    dtype: str = "auto"  # auto: fp32 on cpu, else the config's torch_dtype (bf16/fp16)
    load_format: str = "safetensors"  # "safetensors" | "dummy" (random weights from config.json)
    max_total_tokens: int | None = None  # KV pool size in tokens; None: size from mem_fraction
    mem_fraction: float = 0.85  # of device memory for weights + KV (CUDA only)
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192  # tokens of one prefill step; longer prompts are prefilled in chunks
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    seed: int = 0
    # Router policy
    decode_steps_per_prefill: int = 2  # run a prefill at most every N decode steps while decoding
    # Mixed steps: a prefill due while requests decode carries them along (one token each) and at most this
    # many prefill tokens; 0: prefill and decode steps stay separate.
    mixed_prefill_tokens: int = 4096
    # Overlapped loop: the host schedules and queues step N+1 while the device runs step N (the sampled ids
    # stay on the device). tp == 1 with exact admission; elsewhere each step is finished before the next.
    overlap_schedule: bool = True
    optimistic_admission: bool = False  # estimate remaining output instead of max_tokens
    optimistic_ratio: float = 0.5  # fraction of max_tokens assumed when optimistic
    # Keep finished requests' tokens in the KV pool (a radix tree, evicted LRU when slots run short)
    # and let later requests that start with the same tokens (and images) skip prefilling them.
    prefix_cache: bool = True
    force_torch_ops: bool = False  # keep the plain-torch path on CUDA (A/B checks)
    dist_port: int | None = None  # torch.distributed rendezvous port for tp > 1 (None: pick free)
    # CUDA graphs (device "cuda" with the Triton ops only; ignored on CPU and with force_torch_ops; False turns
    # all of them off): decode steps replay whole-step graphs captured per batch-size bucket, at every tp; prefill
    # and mixed steps of up to cuda_graph_max_tokens tokens (0: none; capped at the largest step the limits above
    # allow) replay graphs of everything but attention per token-count bucket (worker/cuda_graph.py), at tp 1
    # (unmeasured at tp > 1: eager there).
    cuda_graph: bool = True
    cuda_graph_max_batch: int = 256  # decode batches above min(this, max_running_requests) run eagerly
    cuda_graph_max_tokens: int = 1024  # larger steps take the GPU about as long as the host takes to launch them
    # Before the engine reports ready, compile every Triton kernel variant a step can launch (a few prefill
    # shapes) and capture every CUDA-graph bucket (decode, prefill), so no request pays for compilation.
    warmup: bool = True
    # tp > 1 on CUDA: small all-reduces over symmetric memory (NVLink P2P) instead of NCCL (collectives.py):
    # those of o_proj/down_proj (up to 64 rows) fused with the residual add and RMSNorm in one kernel, the other
    # ones up to 1 MiB (bf16/fp32) through torch's one-shot kernel; larger ones (prefill) through NCCL. Bit-identical
    # to NCCL at tp=2 (a sum of two); decode steps 0.75x -> 0.71x of tp=1 (benchmarks/RESULTS.md).
    symm_mem_all_reduce: bool = True
    # Kernel switches (CUDA, Triton ops), for A/B runs: batch-1 linear layers on our GEMV kernel
    # (kernels/gemv.py; else cuBLAS), programmatic dependent launch on Hopper for the GEMV and for the
    # kernels after it (kernels/_checks.py), and the weight bytes each GEMV may prefetch into L2 under PDL.
    gemv: bool = True
    pdl: bool = True
    pdl_followers: bool = True
    gemv_prefetch_mb: float = 4.0
    # Processes
    cpu_threads: int | None = None  # torch threads per rank on CPU (None: half the cores / tp)
    start_timeout_s: float = 600.0  # worker start-up (weights, KV pool, warm-up) before the engine gives up
    dump_stacks_s: float = 0.0  # > 0: every rank prints its Python stacks this often (debugging hangs)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.load_format not in ("safetensors", "dummy"):
            raise ValueError(f"load_format must be 'safetensors' or 'dummy', got {self.load_format!r}")
        if self.tp < 1:
            raise ValueError(f"tp must be >= 1, got {self.tp}")
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise ValueError(f"max_total_tokens must be >= 1, got {self.max_total_tokens}")
        if not 0.0 < self.mem_fraction <= 1.0:
            raise ValueError(f"mem_fraction must be in (0, 1], got {self.mem_fraction}")
        if self.max_running_requests < 1 or self.max_prefill_tokens < 1:
            raise ValueError("max_running_requests and max_prefill_tokens must be >= 1")
        if self.decode_steps_per_prefill < 1:
            raise ValueError(f"decode_steps_per_prefill must be >= 1, got {self.decode_steps_per_prefill}")
        if self.mixed_prefill_tokens < 0:
            raise ValueError(f"mixed_prefill_tokens must be >= 0, got {self.mixed_prefill_tokens}")
        if self.cuda_graph_max_batch < 1:
            raise ValueError(f"cuda_graph_max_batch must be >= 1, got {self.cuda_graph_max_batch}")
        if self.cuda_graph_max_tokens < 0:
            raise ValueError(f"cuda_graph_max_tokens must be >= 0, got {self.cuda_graph_max_tokens}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
        if self.start_timeout_s <= 0 or self.gemv_prefetch_mb < 0 or self.dump_stacks_s < 0:
            raise ValueError("start_timeout_s must be > 0, gemv_prefetch_mb and dump_stacks_s >= 0")
        if self.model_dir is None:
            raise ValueError("model_dir is required (a Hugging Face model directory)")

    @property
    def overlaps_steps(self) -> bool:
        """Whether the rank-0 loop overlaps steps: not at tp > 1 (the other ranks would need the device ids)
        nor with optimistic admission (a pause would re-queue a request whose last id is not seen yet)."""
        return self.overlap_schedule and self.tp == 1 and not self.optimistic_admission

    @property
    def torch_dtype_name(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float32" if self.device == "cpu" else "bfloat16"


# EngineConfig field -> environment variable. Unset or empty variables keep the field's default.
ENV_VARS = {
    "model_dir": "LLM_MODEL_DIR",
    "device": "LLM_DEVICE",
    "tp": "LLM_TP",
    "dtype": "LLM_DTYPE",
    "max_total_tokens": "LLM_MAX_TOTAL_TOKENS",
    "max_model_len": "LLM_MAX_MODEL_LEN",
    "max_running_requests": "LLM_MAX_RUNNING",
    "max_prefill_tokens": "LLM_MAX_PREFILL_TOKENS",
    "decode_steps_per_prefill": "LLM_DECODE_STEPS_PER_PREFILL",
    "mixed_prefill_tokens": "LLM_MIXED_PREFILL_TOKENS",
    "overlap_schedule": "LLM_OVERLAP_SCHEDULE",
    "mem_fraction": "LLM_MEM_FRACTION",
    "prefix_cache": "LLM_PREFIX_CACHE",
    "force_torch_ops": "LLM_FORCE_TORCH_OPS",
    "cuda_graph": "LLM_CUDA_GRAPH",
    "cuda_graph_max_batch": "LLM_CUDA_GRAPH_MAX_BATCH",
    "cuda_graph_max_tokens": "LLM_CUDA_GRAPH_MAX_TOKENS",
    "warmup": "LLM_WARMUP",
    "symm_mem_all_reduce": "LLM_SYMM_MEM_ALL_REDUCE",
    "gemv": "LLM_GEMV",
    "pdl": "LLM_PDL",
    "pdl_followers": "LLM_PDL_FOLLOWERS",
    "gemv_prefetch_mb": "LLM_GEMV_PREFETCH_MB",
    "cpu_threads": "LLM_CPU_THREADS",
    "start_timeout_s": "LLM_START_TIMEOUT",
    "dump_stacks_s": "LLM_DUMP_STACKS_S",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_setting(name: str, env_name: str, kind: str, value: str) -> object:
    """`value` converted to the annotated type `kind` ("bool", "int | None", ...); errors name both keys."""
    if "bool" in kind:
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(f"setting {name} ({env_name}) must be 1 or 0, got {value!r}")
        return value.lower() in _TRUE
    try:
        return int(value) if "int" in kind else float(value) if "float" in kind else value
    except ValueError:
        raise ValueError(f"setting {name} ({env_name}) must be a {kind}, got {value!r}") from None


def read_settings(
    table: Mapping[str, str], kinds: Mapping[str, str], env: Mapping[str, str], parameters: Mapping[str, str]
) -> dict[str, object]:
    """{field: typed value} for each field of `table` set in `env` (first) or `parameters` (a config.pbtxt's)."""
    out: dict[str, object] = {}
    for name, env_name in table.items():
        value = (env.get(env_name) or parameters.get(name, "")).strip()
        if value and not value.startswith("${"):  # ${...}: an unfilled template
            out[name] = parse_setting(name, env_name, kinds[name], value)
    return out


ENGINE_FIELD_KINDS = {f.name: str(f.type) for f in fields(EngineConfig)}


def engine_config_from_env(env: Mapping[str, str] | None = None, **overrides: typing.Any) -> EngineConfig:
    """An EngineConfig from the environment (ENV_VARS); keyword arguments win over it."""
    values = read_settings(ENV_VARS, ENGINE_FIELD_KINDS, os.environ if env is None else env, {})
    return EngineConfig(**(values | overrides))
