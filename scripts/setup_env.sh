#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) and install everything the
# server, the clients and the tests need. Safe to run again; fast when nothing changed.
#
# Two kinds of venv, chosen when it is created:
# - host: the python that makes it ($PYTHON, default python3) already imports torch (a GPU
#   host's CUDA build, in its system python, a venv or a conda env). That torch is reused, never
#   replaced: scripts/host_site.py links the host's site-packages into a folder next to the venv
#   ($VENV's parent/.llm_host_site_<name>), less numpy and what is built for numpy 2 (scipy,
#   scikit-learn, ...), and a .pth appends it after the venv's own packages. The venv gets
#   numpy<2 (the Python backend stub of tritonserver 2.51 needs it) and what the host lacks.
#   The link folder is rebuilt on every run, so a change in the host environment is followed.
# - isolated: otherwise; torch==2.13.0 (CPU) from the package index.
# LLM_VENV_SYSTEM_SITE=1 forces host, =0 isolated (default: auto, i.e. host where torch imports).
# Then `python -I -m llm_core.serving.env_check` imports exactly what the models import, as
# isolated as the stubs run, and names the package and the fix when one fails.
#
# Environment: PYTHON, LLM_VENV (default .venv), LLM_EXTRAS (pyproject extras, default
# serve,test), LLM_WHEELS (a folder of wheels: install offline from it, no index),
# LLM_TORCH (what to install where no torch imports, default torch==2.13.0),
# LLM_HOST_HIDE (more host distributions to keep out of the venv, space-separated).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
EXTRAS="${LLM_EXTRAS-serve,test}"
WHEELS="${LLM_WHEELS:-}"
HOST_FILE="$VENV/.llm_core_host"   # the host python's path, in a host venv
VIEW="$(dirname "$VENV")/.llm_host_site_$(basename "$VENV" | tr -cd 'A-Za-z0-9_-')"
die() { echo "setup_env: $*" >&2; exit 1; }

make_venv() {  # make_venv HOST(0/1)
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV" > /dev/null 2>&1; then
    # e.g. Debian/Ubuntu pythons without python3-venv (ensurepip): a venv without pip, then the
    # host's pip installs pip into it
    "$PY" -m venv --without-pip "$VENV" && "$PY" -m pip --python "$VENV/bin/python" install -q pip \
      || die "'$PY -m venv' failed (Debian/Ubuntu: apt-get install python3-venv) and the host's pip could not help"
  fi
  if [[ "$1" == 1 ]]; then "$PY" -c "import sys; print(sys.executable)" > "$HOST_FILE"; fi
}

if [[ ! -x "$VENV/bin/python" ]]; then
  HOST="${LLM_VENV_SYSTEM_SITE:-auto}"
  if [[ "$HOST" == "auto" ]]; then
    if "$PY" -c "import torch" > /dev/null 2>&1; then HOST=1; else HOST=0; fi
  fi
  make_venv "$HOST"
fi
VPY="$VENV/bin/python"
VSP="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
FINGERPRINT=isolated
if [[ -f "$HOST_FILE" ]]; then
  HOST_PY="$(cat "$HOST_FILE")"
  [[ -x "$HOST_PY" ]] || die "$VENV was made over $HOST_PY, which is gone: remove $VENV and run again"
  # shellcheck disable=SC2086  # LLM_HOST_HIDE is a space-separated list
  VIEW_JSON="$("$HOST_PY" "$ROOT/scripts/host_site.py" "$VIEW" "$VSP" --hide ${LLM_HOST_HIDE:-})" \
    || die "linking the host's site-packages ($HOST_PY) failed"
  FINGERPRINT="$(echo "$VIEW_JSON" | "$VPY" -c 'import json, sys; print(json.load(sys.stdin)["fingerprint"])')"
fi

STAMP="$VENV/.llm_core_installed"
HASH="$( (cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/host_site.py" \
  "$ROOT/llm_core/serving/env_check.py"; echo "$EXTRAS $FINGERPRINT ${LLM_HOST_HIDE:-}") | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  exit 0
fi
if [[ -f "$HOST_FILE" ]]; then
  echo "setup_env: venv over the host python $HOST_PY (its torch reused); left out of it:" \
    "$(echo "$VIEW_JSON" | "$VPY" -c 'import json, sys; print(" ".join(json.load(sys.stdin)["hidden"]))')" >&2
fi
PIP=("$VPY" -m pip install -q)
if [[ -n "$WHEELS" ]]; then
  PIP+=(--no-index --find-links "$WHEELS")
  # Offline, pip's isolated build of the project would need setuptools in the wheelhouse: build with
  # the venv's own (the host's, where it has one; else from the wheelhouse).
  if ! "$VPY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2> /dev/null \
    && ! "${PIP[@]}" "setuptools>=68" > /dev/null 2>&1; then
    die "offline setup needs setuptools>=68: in the host python or in $WHEELS (pip download setuptools)"
  fi
  PIP+=(--no-build-isolation)
else
  "$VPY" -m pip install -q --upgrade pip > /dev/null 2>&1 || true
fi
pip_install() {  # pip_install ARGS...: quiet unless it fails
  local log="$VENV/.llm_core_pip.log"
  if ! "${PIP[@]}" "$@" > "$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -20 >&2
    die "pip install $* failed (log: $log)"
  fi
}
# torch: a host venv must see the host's; an isolated one gets the CPU build.
if ! TORCH_ERR="$("$VPY" -c "import torch" 2>&1)"; then
  if [[ -f "$HOST_FILE" ]]; then
    die "$HOST_PY has torch but $VENV cannot import it through $VIEW: $(echo "$TORCH_ERR" | tail -1)"
  fi
  pip_install "${LLM_TORCH:-torch==2.13.0}"
fi
pip_install -e "$ROOT${EXTRAS:+[$EXTRAS]}"
CHECK_ARGS=()
[[ ",$EXTRAS," == *",serve,"* ]] && CHECK_ARGS+=(--clients)
(cd "$ROOT" && "$VPY" -I -m llm_core.serving.env_check "${CHECK_ARGS[@]}" >&2) \
  || die "the environment cannot run the models (above: the package and the fix)"
if [[ ",$EXTRAS," == *",test,"* ]]; then
  "$VENV/bin/locust" --version > /dev/null 2>&1 || die "locust does not start"
fi
echo "$HASH" > "$STAMP"
