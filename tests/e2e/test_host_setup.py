"""The README setup over a "host" environment shaped like a GPU image (issue 17), on CPU.

host venv: torch + numpy 2 + scipy + scikit-learn + transformers (built once, cached under
build/, as the GPU machine's /opt/torch/.venv is preinstalled; its torch is this test venv's, hard-linked).
Then, as a user would:
`PYTHON=host/bin/python bash scripts/setup_env.sh` makes a fresh project venv, which must reuse the
host's torch (no torch download), hold numpy<2 and none of the packages built for numpy 2, import
`AutoTokenizer`, and run the launcher: the default model is served and answers a request, every
Python stub running on the project venv's numpy 1.x.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import psutil
import pytest
from e2e_helpers import grpc_stream
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from llm_core.serving.server_process import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HOST_PACKAGES = ("torch==2.13.0", "numpy>=2", "scipy", "scikit-learn", "transformers")
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _run(cmd: list[str], env: dict | None = None, timeout: float = 900) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}"
    return proc.stdout + proc.stderr


def _python_of_base() -> str:
    """A plain interpreter (not this test's venv) to make the host venv from."""
    return getattr(sys, "_base_executable", sys.executable)


def _install_by_links(name: str, site: Path) -> None:
    """Put the installed distribution `name` and everything it requires into `site` as hard links of this
    interpreter's files (copies across file systems), dist-info included, so pip counts them as installed.
    Unpacking torch's 750 MB wheel again took most of a minute on 2 cores."""
    todo, seen = [name], set()
    while todo:
        dist = metadata.distribution(todo.pop())
        if (key := canonicalize_name(dist.metadata["Name"])) in seen:
            continue
        seen.add(key)
        todo += [
            r.name for r in map(Requirement, dist.requires or []) if not r.marker or r.marker.evaluate({"extra": ""})
        ]
        for file in dist.files or []:
            if file.parts[0] == "..":  # console scripts in bin/: not needed
                continue
            src, dst = Path(dist.locate_file(file)), site / file
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except FileExistsError:
                pass
            except OSError:
                shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def host_python() -> Path:
    """bin/python of the cached host venv."""
    pinned = HOST_PACKAGES[0].split("==")[1]
    assert Version(metadata.version("torch")).public == pinned, "this test venv's torch is not the pinned one"
    key = hashlib.sha256(" ".join(HOST_PACKAGES + (PY_VERSION,)).encode()).hexdigest()[:12]
    host = ROOT / "build" / f"test-host-venv-{key}"
    if not (host / ".complete").exists():
        tmp = host.with_name(host.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _run([_python_of_base(), "-m", "venv", str(tmp)])
        site = _value(tmp / "bin" / "python", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        _install_by_links("torch", Path(site))
        _run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *HOST_PACKAGES])
        shutil.rmtree(host, ignore_errors=True)
        tmp.rename(host)  # only bin/python is used, which does not depend on the venv's path
        (host / ".complete").touch()
    return host / "bin" / "python"


def _value(python: Path, code: str) -> str:
    return _run([str(python), "-I", "-c", code]).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def project_venv(host_python, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("setup") / "venv"
    env = {**os.environ, "PYTHON": str(host_python), "LLM_VENV": str(venv), "LLM_EXTRAS": "serve"}
    env.pop("LLM_VENV_SYSTEM_SITE", None)
    log = _run(["bash", str(ROOT / "scripts" / "setup_env.sh")], env=env)
    assert "env_check: ok" in log, log
    return venv


def test_setup_reuses_host_torch_and_hides_numpy2_builds(host_python, project_venv):
    vpy = project_venv / "bin" / "python"
    host_site = Path(_value(host_python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")).resolve()
    torch_file = Path(_value(vpy, "import os, torch; print(os.path.realpath(torch.__file__))"))
    assert host_site in torch_file.parents, f"torch from {torch_file}, not the host's {host_site}"
    own_site = Path(_value(vpy, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    assert not (own_site / "torch").exists(), "setup installed a torch of its own"
    assert _value(vpy, "import numpy; print(numpy.__version__)").startswith("1.")
    assert _value(host_python, "import numpy; print(numpy.__version__)").startswith("2."), "the host was changed"
    assert _value(vpy, "from transformers import AutoTokenizer; print(AutoTokenizer.__name__)") == "AutoTokenizer"
    for module in ("sklearn", "scipy"):  # present in the host, built for numpy 2: left out
        assert _value(host_python, f"import {module}; print('ok')") == "ok"
        assert _value(vpy, f"import importlib.util; print(importlib.util.find_spec('{module}'))") == "None"


def _stub_numpy_paths(server: ServerProcess) -> dict[int, list[str]]:
    """numpy's C module each Python stub mapped (pid -> paths)."""
    found = {}
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "triton_python_backend_stub" not in " ".join(proc.cmdline()):
                continue
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        except (psutil.Error, OSError):
            continue
        found[proc.pid] = sorted({line.split()[-1] for line in maps.splitlines() if "_multiarray_umath" in line})
    return found


def test_launcher_serves_default_model_on_host_torch(project_venv, tmp_path):
    server = ServerProcess(None, log_path=tmp_path / "server.log", python=project_venv / "bin" / "python")
    server.start()
    try:
        result = grpc_stream(server.grpc_url, {"text_input": "Hello world", "max_tokens": 8, "temperature": 0.0})
        assert result.error is None, result.error
        assert result.num_output_tokens > 0
        stubs = _stub_numpy_paths(server)
        assert stubs, "no Python stub found in the server's process tree"
        for pid, paths in stubs.items():
            assert paths and all(str(project_venv) in p for p in paths), f"stub {pid} maps numpy {paths}"
    finally:
        code = server.stop(signal.SIGTERM, timeout=45.0)
    assert code == 0, server._tail()
