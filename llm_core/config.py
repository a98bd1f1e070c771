"""Engine configuration: one frozen dataclass, validated once."""

from __future__ import annotations

from dataclasses import dataclass

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
    decode_steps_per_prefill: int = 4  # run a prefill at most every N decode steps while decoding
    optimistic_admission: bool = False  # estimate remaining output instead of max_tokens
    optimistic_ratio: float = 0.5  # fraction of max_tokens assumed when optimistic
    # Keep finished requests' tokens in the KV pool (a radix tree, evicted LRU when slots run short)
    # and let later requests that start with the same tokens (and images) skip prefilling them.
    prefix_cache: bool = True
    force_torch_ops: bool = False  # keep the plain-torch path on CUDA (A/B checks)
    dist_port: int | None = None  # torch.distributed rendezvous port for tp > 1 (None: pick free)
    # CUDA graphs (device "cuda" with the Triton ops only; ignored on CPU and with force_torch_ops).
    # Decode steps replay CUDA graphs; verified on one GPU (scripts/device/gpu_engine.sh) and at tp=2
    # (scripts/device/gpu_tp_check.py, benchmarks/tp_decode.py; benchmarks/RESULTS.md). cuda_graph_tp
    # turns them off at tp > 1 alone.
    cuda_graph: bool = True
    cuda_graph_tp: bool = True
    cuda_graph_max_batch: int = 256  # decode batches above min(this, max_running_requests) run eagerly
    # tp > 1 on CUDA: small all-reduces over symmetric memory (NVLink P2P) instead of NCCL (models/all_reduce.py):
    # those of o_proj/down_proj (up to 64 rows) fused with the residual add and RMSNorm in one kernel, the other
    # ones up to 1 MiB (bf16/fp32) through torch's one-shot kernel; larger ones (prefill) through NCCL. Bit-identical
    # to NCCL at tp=2 (a sum of two); decode steps 0.75x -> 0.71x of tp=1 (benchmarks/RESULTS.md).
    symm_mem_all_reduce: bool = True

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
            raise ValueError("decode_steps_per_prefill must be >= 1")
        if self.cuda_graph_max_batch < 1:
            raise ValueError(f"cuda_graph_max_batch must be >= 1, got {self.cuda_graph_max_batch}")
        if self.model_dir is None:
            raise ValueError("model_dir is required (a Hugging Face model directory)")

    @property
    def torch_dtype_name(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float32" if self.device == "cpu" else "bfloat16"
