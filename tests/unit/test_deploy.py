"""deploy/: the Dockerfile lints clean (hadolint) and the Kubernetes manifests validate against
the Kubernetes schemas, strictly (kubernetes-validate; unknown fields are errors)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e .[test])")
    return str(path)


def test_dockerfile_lints_clean():
    result = subprocess.run([_tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_manifests_validate(version):
    manifests = sorted(p for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
    assert len(manifests) >= 6
    cmd = [_tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *map(str, manifests)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
