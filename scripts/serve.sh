#!/usr/bin/env bash
# Start tritonserver on model_repository/ (see `scripts/serve.sh --help`).
# Creates/refreshes .venv first. Without --model-dir or LLM_MODEL_DIR it serves a tiny LLaVA
# built on first use under models/tiny-llava. Extra tritonserver arguments go after `--`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${LLM_VENV:-$ROOT/.venv}/bin/python" -m llm_core.serving.launcher "$@"
