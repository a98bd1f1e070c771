#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs lint, unit, kernel (Triton
# interpreter on CPU) and end-to-end (real tritonserver) tests. Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
VPY="${LLM_VENV:-$ROOT/.venv}/bin/python"
"$VPY" -m ruff check llm_core model_repository clients scripts tests benchmarks
"$VPY" -m pytest -q -p no:cacheprovider "$@"
