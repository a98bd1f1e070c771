#!/usr/bin/env bash
# Build the wheels scripts/setup_env.sh would download, for a host without internet (the GPU
# machine: Python 3.12 venv /opt/torch/.venv with torch, transformers, pillow, aiohttp). Run on
# the CPU machine, in the checkout root; it writes .whl/wheelhouse.tar.xz (git-ignored; a device
# call carries it with carry [".whl"], and scripts/device/gpu_setup_check.sh unpacks it and runs
# the setup with LLM_WHEELS pointing there):
#   bash scripts/make_wheelhouse.sh
# What goes in: the closure of `.[serve]` for cp$PYV manylinux x86_64 with numpy<2 (pip download),
# less what the host already has at a version every requirement in that closure accepts (HOST_PACKAGES:
# the host's `pip list`, with a "# hidden: ..." line naming what setup_env.sh keeps out of the venv
# there, which the wheelhouse must then carry; numpy always stays in: the host's is numpy 2), and less
# torch, triton, nvidia-*. Two things keep it under the 64 MiB a device call carries: nvidia-pytriton is
# slimmed to the stub of Python $PYV (the other stubs and the bundled libpython3.13 are dropped, RECORD
# rewritten), and the wheels are stored uncompressed inside one xz tarball (~2/3 of their zipped size).
# Environment: PYV (default 3.12), OUTDIR (default .whl), HOST_PACKAGES (default: the GPU machine's,
# scripts/device/h200_host_packages.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYV="${PYV:-3.12}"
OUTDIR="${OUTDIR:-$ROOT/.whl}"
HOST_PACKAGES="${HOST_PACKAGES:-$ROOT/scripts/device/h200_host_packages.txt}"
TARGET=(--only-binary=:all: --implementation cp --python-version "$PYV" --abi "cp${PYV/./}"
  --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "numpy<2" > "$TMP/constraints.txt"
python3 -m pip download -q "${TARGET[@]}" -c "$TMP/constraints.txt" "$ROOT[serve]" -d "$TMP/all" 2>&1 \
  | grep -v "^WARNING: Location" || true
rm -f "$TMP"/all/llm_core*
python3 - "$TMP/all" "$HOST_PACKAGES" "$TMP/stage" "$PYV" <<'EOF'
import collections, os, re, sys, zipfile
from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version
src, host_file, stage, pyv = sys.argv[1:]
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
host, hidden = {}, {"numpy"}
for line in open(host_file).read().splitlines():
    if line.startswith("# hidden:"):
        hidden |= {canon(n) for n in line.split(":", 1)[1].split()}
    elif len(parts := line.split()) >= 2 and not line.startswith(("#", "Package", "---")):
        host[canon(parts[0])] = parts[1]
specifiers = collections.defaultdict(list)  # every requirement on a distribution within the closure
for wheel in os.listdir(src):
    with zipfile.ZipFile(os.path.join(src, wheel)) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                req = Requirement(line.split(":", 1)[1].strip())
                specifiers[canon(req.name)].append(req.specifier)
def host_has(name):
    if name not in host or name in hidden:
        return False
    try:
        version = Version(host[name])
    except InvalidVersion:
        return False
    return all(spec.contains(version, prereleases=True) for spec in specifiers[name])
os.makedirs(stage)
for wheel in sorted(os.listdir(src)):
    name = canon(wheel.split("-")[0])
    if host_has(name) or name in ("torch", "triton") or name.startswith("nvidia-") and name != "nvidia-pytriton":
        print(f"  host provides {wheel}")
        continue
    def keep(path):  # nvidia-pytriton: only this Python's stub, and no bundled libpython
        if name != "nvidia-pytriton":
            return True
        stub = re.match(r"pytriton/tritonserver/python_backend_stubs/([^/]+)/", path)
        return not (stub and stub.group(1) != pyv) and not os.path.basename(path).startswith("libpython")
    with zipfile.ZipFile(os.path.join(src, wheel)) as zin, \
         zipfile.ZipFile(os.path.join(stage, wheel), "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if not keep(info.filename):
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(l for l in data.decode().splitlines(True) if keep(l.split(",")[0])).encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_STORED)
    print(f"  carry {wheel}")
EOF
mkdir -p "$OUTDIR"
tar -cf - -C "$TMP/stage" . | xz -T0 -6 > "$OUTDIR/wheelhouse.tar.xz.part"
mv "$OUTDIR/wheelhouse.tar.xz.part" "$OUTDIR/wheelhouse.tar.xz"
python3 - "$OUTDIR/wheelhouse.tar.xz" "$ROOT" <<'EOF'
import os, subprocess, sys
carry = os.path.getsize(sys.argv[1]) / 2**20
files = subprocess.run(["git", "-C", sys.argv[2], "ls-files", "-co", "--exclude-standard", "-z"],
                       capture_output=True, text=True).stdout.split("\0")
checkout = sum(os.path.getsize(os.path.join(sys.argv[2], f)) for f in files if f and os.path.isfile(
    os.path.join(sys.argv[2], f))) / 2**20
print(f"{sys.argv[1]}: {carry:.1f} MiB + checkout {checkout:.1f} MiB = {carry + checkout:.1f} MiB (limit 64)")
sys.exit(0 if carry + checkout < 64 else 1)
EOF
