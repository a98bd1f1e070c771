"""Find a tritonserver binary and build the environment its Python backend needs.

Two installations are supported:
- a `tritonserver` already on PATH (NVIDIA's container): used as is, its own backends;
- the binary inside the `nvidia-pytriton` wheel. That one needs (docs/SERVING.md): the Python stub for
  the running interpreter next to `libtriton_python.so`, `LD_LIBRARY_PATH` starting with the
  interpreter's LIBDIR then `nvidia_pytriton.libs`, and the virtual environment's `bin/` first on
  PATH (the stub takes its Python from the first `python3` there).

The wheel ships stubs for several Python versions in `python_backend_stubs/<ver>/`. Instead of
copying one into site-packages, we build a backends directory of symlinks under the virtual
environment (`<sys.prefix>/share/llm_core/triton_backends`): nothing outside the project is
modified and a fresh `scripts/setup_env.sh` recreates it on the first launch.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

_STUB = "triton_python_backend_stub"


@dataclass(frozen=True, slots=True)
class TritonInstall:
    binary: Path
    backend_dir: Path | None  # None: the binary's built-in default (/opt/tritonserver/backends)
    lib_dirs: tuple[Path, ...]  # prepended to LD_LIBRARY_PATH
    from_wheel: bool


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _pytriton_root() -> Path | None:
    for base in sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]:
        root = Path(base) / "pytriton" / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return root
    return None


def _wheel_backends(root: Path) -> Path:
    """A backends dir whose python/ has the stub for this interpreter (symlinks, idempotent)."""
    python_dir = root / "backends" / "python"
    if (python_dir / _STUB).is_file():
        return root / "backends"
    stub = root / "python_backend_stubs" / _python_version() / _STUB
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {_python_version()}")
    local = Path(sys.prefix) / "share" / "llm_core" / "triton_backends"
    local_python = local / "python"
    local_python.mkdir(parents=True, exist_ok=True)
    links = {entry.name: entry for entry in python_dir.iterdir() if entry.name != "__pycache__"}
    links[_STUB] = stub
    for name, target in links.items():
        link = local_python / name
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())
    for sibling in (root / "backends").iterdir():  # other backends, if the wheel ever ships any
        if sibling.name != "python" and not (local / sibling.name).exists():
            (local / sibling.name).symlink_to(sibling.resolve())
    return local


def libpython_dir() -> Path | None:
    """The folder holding this interpreter's libpython3.X.so, which the stub must load.

    Usually sysconfig's LIBDIR; relocatable builds (python-build-standalone, uv's pythons) report
    their build machine's LIBDIR instead, so also look next to the real base executable."""
    name = f"libpython{_python_version()}.so"
    base = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    for folder in (Path(sysconfig.get_config_var("LIBDIR") or "/nonexistent"), base.parent.parent / "lib"):
        if any(folder.glob(name + "*")):
            return folder
    return None


def find_tritonserver() -> TritonInstall:
    """Prefer a `tritonserver` on PATH, else the one inside nvidia-pytriton."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), None, (), from_wheel=False)
    root = _pytriton_root()
    if root is None:
        raise RuntimeError("no tritonserver on PATH and nvidia-pytriton is not installed: run scripts/setup_env.sh")
    wheel_libs = root.parent.parent / "nvidia_pytriton.libs"
    lib_dirs = tuple(p for p in (libpython_dir(), wheel_libs) if p is not None and p.is_dir())
    return TritonInstall(root / "bin" / "tritonserver", _wheel_backends(root), lib_dirs, from_wheel=True)


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver (and thus every Python stub) must start with."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin] + [p for p in env.get("PATH", "").split(os.pathsep) if p])
    if install.lib_dirs:
        old = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(p) for p in install.lib_dirs] + old)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
