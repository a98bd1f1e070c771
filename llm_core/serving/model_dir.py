"""Which Hugging Face model directory the server serves.

Order: an explicit value (launcher flag or config.pbtxt parameter), then `LLM_MODEL_DIR`, then the
built-in default: a tiny LLaVA under `<repo>/models/tiny-llava`, built on first use by
`llm_core.testing.tiny_model.make_tiny_model`. Building takes a file lock, so the four Triton
models (or several launchers) may ask at once when tritonserver is started without the launcher.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

ENV_MODEL_DIR = "LLM_MODEL_DIR"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "tiny-llava"


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _is_current_default(path: Path) -> bool:
    """A default model built before it shipped a chat template is rebuilt (same weights: seeded)."""
    config = path / "tokenizer_config.json"
    return _is_model_dir(path) and config.is_file() and '"chat_template"' in config.read_text()


def build_default_model(path: Path = DEFAULT_MODEL_DIR) -> Path:
    """Create the default tiny LLaVA at `path` unless it is there (idempotent, process-safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_current_default(path):
            from llm_core.testing.tiny_model import make_tiny_model

            built = Path(make_tiny_model(path, "llava"))
            if built.resolve() != path.resolve():
                raise RuntimeError(f"make_tiny_model wrote {built}, expected {path}")
    return path


def resolve_model_dir(explicit: str | None = None, build_default: bool = True) -> Path:
    chosen = explicit or os.environ.get(ENV_MODEL_DIR)
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not _is_model_dir(path):
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
        return path
    if _is_current_default(DEFAULT_MODEL_DIR) or not build_default:
        return DEFAULT_MODEL_DIR
    return build_default_model()
