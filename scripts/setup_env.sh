#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) and install everything the
# server, the clients and the tests need. Safe to run again; fast when nothing changed.
# On a host whose python3 already has torch (a GPU image, NVIDIA's container) the venv is made
# with --system-site-packages so that torch build is reused, never replaced
# (LLM_VENV_SYSTEM_SITE=1 forces this, =0 turns it off; default: auto).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
  SYSTEM_SITE="${LLM_VENV_SYSTEM_SITE:-auto}"
  if [[ "$SYSTEM_SITE" == "auto" ]]; then
    if "$PY" -c "import torch" >/dev/null 2>&1; then SYSTEM_SITE=1; else SYSTEM_SITE=0; fi
  fi
  if [[ "$SYSTEM_SITE" == "1" ]]; then
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
STAMP="$VENV/.llm_core_installed"
HASH="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  exit 0
fi
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch: keep whatever build is importable (CUDA hosts); otherwise the CPU build from PyPI.
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
fi
"$VPY" -m pip install -q -e "$ROOT[serve,test]" 2>&1 | grep -E "^(ERROR|error)" || true
"$VPY" -c "import torch, numpy, transformers, tokenizers, safetensors, tritonclient.grpc, zmq; assert numpy.__version__ < '2', numpy.__version__" \
  && "$VENV/bin/locust" --version >/dev/null 2>&1 \
  || { echo "setup_env: dependency check failed" >&2; exit 1; }
echo "$HASH" > "$STAMP"
